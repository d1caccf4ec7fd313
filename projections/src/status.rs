//! Where each projection stands: checkpoint, lag behind the log's head, and
//! whether it is live, building or failed; with the lag gauges.

use serde::Serialize;
use spool_log::Log;
use spool_schemas::Position;

use crate::views::Views;
use crate::{Result, registry};

/// One projection's state, for `/metrics`, the API and `spool projections`.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// The version serving reads, or being built while `Building`.
    pub version: u32,
    /// Every event up to here is applied: to the serving tables while
    /// `Live`, to the shadow tables while `Building`.
    pub checkpoint: Position,
    pub head: Position,
    /// `head - checkpoint`, in events.
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
    let head = *log.head(0).borrow();
    let mut statuses = Vec::new();
    for projection in crate::builtin() {
        let stored = registry::load(views, projection.name()).await?;
        let (version, checkpoint, state) = match stored {
            None => (projection.version(), Position::ZERO, ProjectionState::Building),
            Some(stored) => {
                let state = match (&stored.error, &stored.build, stored.version) {
                    (Some(error), _, _) => ProjectionState::Failed(error.clone()),
                    (None, Some(_), _) | (None, None, 0) => ProjectionState::Building,
                    (None, None, _) => ProjectionState::Live,
                };
                match (state, stored.build) {
                    (ProjectionState::Building, Some(build)) => {
                        (build.version, build.checkpoint, ProjectionState::Building)
                    }
                    (state, _) => (stored.version, stored.checkpoint, state),
                }
            }
        };
        statuses.push(ProjectionStatus {
            name: projection.name().to_owned(),
            version,
            checkpoint,
            head,
            lag: lag(head, checkpoint),
            state,
        });
    }
    Ok(statuses)
}

pub(crate) fn lag(head: Position, checkpoint: Position) -> u64 {
    head.0.saturating_sub(checkpoint.0)
}

/// Sets the gauges `spool_projection_lag_events` and
/// `spool_projection_checkpoint`, labelled by projection.
pub(crate) fn record_metrics(name: &'static str, checkpoint: Position, head: Position) {
    metrics::gauge!("spool_projection_lag_events", "projection" => name)
        .set(lag(head, checkpoint) as f64);
    metrics::gauge!("spool_projection_checkpoint", "projection" => name).set(checkpoint.0 as f64);
}
