//! Where each projection stands: checkpoint, lag behind the log's heads,
//! and whether it is live, building or failed; with the lag gauges.

use serde::{Serialize, Serializer};
use spool_log::{Cursor, Log};

use crate::views::Views;
use crate::{Result, registry};

/// One projection's state, for `/metrics`, the API and `spool projections`.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// The version serving reads, or being built while `Building`.
    pub version: u32,
    /// Every event up to here, in each partition, is applied: to the
    /// serving tables while `Live`, to the shadow tables while `Building`.
    /// Serialized as the cursor's text (`"120.0.37"`).
    #[serde(serialize_with = "as_text")]
    pub checkpoint: Cursor,
    /// The log's head in each partition, serialized as text too.
    #[serde(serialize_with = "as_text")]
    pub head: Cursor,
    /// Events not yet applied: the sum over partitions of
    /// `head - checkpoint` (over the partitions a runner owns, for a
    /// runner's status).
    pub lag: u64,
    pub state: ProjectionState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ProjectionState {
    /// Serving reads and following the log.
    Live,
    /// A new version is being built in shadow tables from position zero
    /// (or nothing was ever built); the old tables, if any, still serve.
    Building,
    /// Stopped at an event it could not apply; the message names it.
    Failed(String),
}

/// The stored state of every built-in projection, for the CLI when no runner
/// runs in the process. A version that differs from the code's is rebuilt
/// when the runner next starts.
pub async fn status(views: &Views, log: &dyn Log) -> Result<Vec<ProjectionStatus>> {
    let partitions = log.partitions();
    let head = Cursor::heads(log);
    let mut statuses = Vec::new();
    for projection in crate::builtin() {
        let name = projection.name();
        let stored = registry::load(views, name).await?;
        let (version, checkpoint, state) = match stored {
            None => (projection.version(), Cursor::start(partitions), ProjectionState::Building),
            Some(stored) => {
                let state = match (&stored.error, &stored.build, stored.version) {
                    (Some(error), _, _) => ProjectionState::Failed(error.clone()),
                    (None, Some(_), _) | (None, None, 0) => ProjectionState::Building,
                    (None, None, _) => ProjectionState::Live,
                };
                let (version, generation) = match (&state, stored.build) {
                    (ProjectionState::Building, Some(build)) => (build.version, build.generation),
                    _ => (stored.version, stored.generation),
                };
                let checkpoint = registry::checkpoint(views, name, generation, partitions).await?;
                (version, checkpoint, state)
            }
        };
        statuses.push(ProjectionStatus {
            name: name.to_owned(),
            version,
            lag: lag(&head, &checkpoint, 0..partitions),
            checkpoint,
            head: head.clone(),
            state,
        });
    }
    Ok(statuses)
}

/// The events of `partitions` at or before `head` and after `checkpoint`.
pub(crate) fn lag(
    head: &Cursor,
    checkpoint: &Cursor,
    partitions: impl Iterator<Item = u32>,
) -> u64 {
    partitions.map(|p| head.get(p).0.saturating_sub(checkpoint.get(p).0)).sum()
}

/// How many events lie at or before `cursor`, over all its partitions:
/// positions are gap-free from 1 in every partition.
pub(crate) fn events_before(cursor: &Cursor) -> u64 {
    (0..cursor.partitions()).map(|p| cursor.get(p).0).sum()
}

/// Sets the gauges `spool_projection_lag_events` (labelled by projection;
/// the sum over `partitions`) and `spool_projection_checkpoint` (labelled
/// by projection and partition).
pub(crate) fn record_metrics(
    name: &'static str,
    checkpoint: &Cursor,
    head: &Cursor,
    partitions: &[u32],
) {
    metrics::gauge!("spool_projection_lag_events", "projection" => name).set(lag(
        head,
        checkpoint,
        partitions.iter().copied(),
    ) as f64);
    for &partition in partitions {
        metrics::gauge!(
            "spool_projection_checkpoint",
            "projection" => name,
            "partition" => partition.to_string()
        )
        .set(checkpoint.get(partition).0 as f64);
    }
}

fn as_text<S: Serializer>(cursor: &Cursor, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(cursor)
}
