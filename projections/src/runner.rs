//! The runner: one task per projection, each building its current version
//! if the stored one differs, then following the log batch by batch.

use std::future::Future;
use std::sync::Arc;

use spool_log::Log;
use spool_schemas::Position;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::build::{apply_batch, build_and_swap, next_batch};
use crate::feed::Feed;
use crate::registry;
use crate::status::{ProjectionState, ProjectionStatus, lag, record_metrics};
use crate::views::Views;
use crate::{Error, Projection, Result, Tables};

#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// How many events one transaction applies at most.
    pub batch: usize,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions { batch: 1_000 }
    }
}

/// What one projection task publishes after every batch.
#[derive(Clone, Debug)]
struct Progress {
    checkpoint: Position,
    state: ProjectionState,
}

struct Entry {
    projection: Arc<dyn Projection>,
    progress: watch::Sender<Progress>,
}

/// Drives projections: see [`Runner::run`].
pub struct Runner {
    log: Arc<dyn Log>,
    views: Views,
    entries: Vec<Entry>,
    options: RunnerOptions,
}

impl Runner {
    pub fn new(
        log: Arc<dyn Log>,
        views: Views,
        projections: Vec<Arc<dyn Projection>>,
        options: RunnerOptions,
    ) -> Runner {
        let entries = projections
            .into_iter()
            .map(|projection| Entry {
                projection,
                progress: watch::Sender::new(Progress {
                    checkpoint: Position::ZERO,
                    state: ProjectionState::Building,
                }),
            })
            .collect();
        Runner { log, views, entries, options }
    }

    pub fn handle(&self) -> RunnerHandle {
        RunnerHandle {
            head: self.log.head(0),
            entries: self
                .entries
                .iter()
                .map(|entry| HandleEntry {
                    name: entry.projection.name(),
                    version: entry.projection.version(),
                    progress: entry.progress.subscribe(),
                })
                .collect(),
        }
    }

    /// Runs every projection (one task each) until `shutdown` resolves.
    ///
    /// A projection whose stored version differs from its code's (or that
    /// was never built) is first built from position zero into shadow
    /// tables while the old ones serve, then swapped in; an interrupted
    /// build of the same version resumes. Then each task follows the log,
    /// woken by its head watch. A projection that fails stops alone, marked
    /// `Failed` (also in the registry) while the others go on; `run` still
    /// waits for `shutdown`, then returns the first failure.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for entry in self.entries {
            tasks.spawn(drive(
                self.log.clone(),
                self.views.clone(),
                entry,
                self.options.batch,
                stopped.clone(),
            ));
        }
        shutdown.await;
        let _ = stop.send(true);
        let mut first_failure = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|panic| {
                tracing::error!(%panic, "a projection task panicked");
                Err(Error::Stopped)
            });
            if let Err(error) = result {
                first_failure.get_or_insert(error);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// Runs one projection until `stopped` turns true or it fails, publishing
/// its progress and recording a failure in the registry.
async fn drive(
    log: Arc<dyn Log>,
    views: Views,
    entry: Entry,
    batch_size: usize,
    stopped: watch::Receiver<bool>,
) -> Result<()> {
    let name = entry.projection.name();
    let result = follow(&log, &views, &entry, batch_size, stopped).await;
    if let Err(error) = &result {
        let message = error.to_string();
        tracing::error!(projection = name, %message, "projection stopped");
        entry.progress.send_modify(|progress| {
            progress.state = ProjectionState::Failed(message.clone());
        });
        if let Err(record) = registry::set_error(&views, name, Some(&message)).await {
            tracing::warn!(projection = name, %record, "could not record the failure");
        }
    }
    result
}

async fn follow(
    log: &Arc<dyn Log>,
    views: &Views,
    entry: &Entry,
    batch_size: usize,
    mut stopped: watch::Receiver<bool>,
) -> Result<()> {
    let projection = entry.projection.as_ref();
    let name = projection.name();
    let head = log.head(0);
    let publish = |checkpoint: Position, state: ProjectionState| {
        record_metrics(name, checkpoint, *head.borrow());
        entry.progress.send_replace(Progress { checkpoint, state });
    };

    registry::install(views, projection).await?;
    let stored = registry::load(views, name).await?.ok_or(Error::NotInstalled(name))?;
    if stored.error.is_some() {
        registry::set_error(views, name, None).await?;
    }

    let (mut feed, generation, mut checkpoint) = if stored.version == projection.version()
        && stored.version != 0
    {
        if let Some(stale) = stored.build {
            // A rebuild of the serving version that stopped half way (an
            // interrupted `spool projections rebuild`): nothing resumes it,
            // and the serving tables are current, so it only wastes space
            // and would show the projection as building forever.
            tracing::info!(
                projection = name,
                version = stale.version,
                at = %stale.checkpoint,
                "dropping an unfinished rebuild of the serving version"
            );
            registry::discard_build(views, projection).await?;
        }
        let feed = Feed::start(log.clone(), stored.checkpoint, batch_size);
        (feed, stored.generation, stored.checkpoint)
    } else {
        let build = match stored.build {
            Some(build) if build.version == projection.version() => build,
            _ => registry::start_build(views, projection).await?,
        };
        tracing::info!(
            projection = name,
            version = build.version,
            from = %build.checkpoint,
            "building projection in shadow tables"
        );
        publish(build.checkpoint, ProjectionState::Building);
        let mut feed = Feed::start(log.clone(), build.checkpoint, batch_size);
        let swapped =
            build_and_swap(log, views, projection, &mut feed, build, stopped.clone(), |batch| {
                publish(batch.scanned_to, ProjectionState::Building)
            })
            .await?;
        let Some(build) = swapped else {
            return Ok(());
        };
        tracing::info!(projection = name, at = %build.checkpoint, "projection swapped in");
        (feed, build.generation, build.checkpoint)
    };

    publish(checkpoint, ProjectionState::Live);
    let tables = Tables { generation };
    while let Some(batch) = next_batch(&mut feed, &mut stopped).await? {
        apply_batch(views, projection, tables, &batch, false).await?;
        checkpoint = batch.scanned_to;
        publish(checkpoint, ProjectionState::Live);
    }
    Ok(())
}

struct HandleEntry {
    name: &'static str,
    version: u32,
    progress: watch::Receiver<Progress>,
}

impl Clone for HandleEntry {
    fn clone(&self) -> Self {
        HandleEntry { name: self.name, version: self.version, progress: self.progress.clone() }
    }
}

/// A cheap-to-clone view of a [`Runner`]'s progress.
#[derive(Clone)]
pub struct RunnerHandle {
    head: watch::Receiver<Position>,
    entries: Arc<[HandleEntry]>,
}

impl std::fmt::Debug for RunnerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

impl RunnerHandle {
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let head = *self.head.borrow();
        self.entries
            .iter()
            .map(|entry| {
                let progress = entry.progress.borrow().clone();
                ProjectionStatus {
                    name: entry.name.to_owned(),
                    version: entry.version,
                    checkpoint: progress.checkpoint,
                    head,
                    lag: lag(head, progress.checkpoint),
                    state: progress.state,
                }
            })
            .collect()
    }

    /// The state of the projection named `name`, if this runner drives it.
    pub fn state(&self, name: &str) -> Option<ProjectionState> {
        self.entries
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.progress.borrow().state.clone())
    }

    /// Waits until the projection named `name` is live with its checkpoint
    /// at or past `position`, so that reads of its tables see that event;
    /// the others may still be building or have failed. Fails when it has
    /// failed, the runner stops first, or this runner does not drive it.
    pub async fn wait_for_projection(&self, name: &str, position: Position) -> Result<()> {
        let entry = self
            .entries
            .iter()
            .find(|entry| entry.name == name)
            .ok_or_else(|| Error::UnknownProjection(name.to_owned()))?;
        wait_for_entry(entry, position).await
    }

    /// Waits until every projection is live with its checkpoint at or past
    /// `position`, so that reads through the views see that event. Fails
    /// when a projection has failed or the runner stops first.
    pub async fn wait_for(&self, position: Position) -> Result<()> {
        for entry in self.entries.iter() {
            wait_for_entry(entry, position).await?;
        }
        Ok(())
    }
}

async fn wait_for_entry(entry: &HandleEntry, position: Position) -> Result<()> {
    let mut progress = entry.progress.clone();
    let reached = progress
        .wait_for(|progress| {
            matches!(progress.state, ProjectionState::Failed(_))
                || (progress.state == ProjectionState::Live && progress.checkpoint >= position)
        })
        .await
        .map_err(|_| Error::Stopped)?;
    if let ProjectionState::Failed(message) = &reached.state {
        return Err(Error::Failed { projection: entry.name, message: message.clone() });
    }
    Ok(())
}
