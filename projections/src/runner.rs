//! The runner: one task per projection, each building its current version
//! if the stored one differs, then following the log batch by batch, one
//! partition's batch at a time.

use std::future::Future;
use std::sync::Arc;

use spool_log::{Appended, Cursor, Log};
use spool_schemas::Position;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::build::{Building, apply_batch, next_batch};
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
    checkpoint: Cursor,
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
    /// The partitions this runner applies, ascending.
    owned: Arc<[u32]>,
}

impl Runner {
    /// A runner of `projections` over every partition of `log`.
    pub fn new(
        log: Arc<dyn Log>,
        views: Views,
        projections: Vec<Arc<dyn Projection>>,
        options: RunnerOptions,
    ) -> Runner {
        let partitions = log.partitions();
        let entries = projections
            .into_iter()
            .map(|projection| Entry {
                projection,
                progress: watch::Sender::new(Progress {
                    checkpoint: Cursor::start(partitions),
                    state: ProjectionState::Building,
                }),
            })
            .collect();
        let owned = (0..partitions).collect();
        Runner { log, views, entries, options, owned }
    }

    /// Applies only `partitions` of the log (by default, every one): the
    /// foundation for several instances sharing the partitions of a log,
    /// each owning some, with no event applied twice. Call before
    /// [`Runner::handle`].
    ///
    /// Nothing distributes the partitions yet, so the caller must give each
    /// partition to one runner. Two runners applying the same partition of
    /// the same store are caught, not trusted: a batch commits only if its
    /// partition's checkpoint is still where the batch began
    /// ([`Error::CheckpointMoved`] otherwise). Building a new version
    /// (shadow tables and swap) needs every partition, so a runner owning
    /// fewer only follows projections whose stored version is current; it
    /// fails a projection that needs a build.
    pub fn owning(mut self, partitions: impl IntoIterator<Item = u32>) -> Result<Runner> {
        let mut owned: Vec<u32> = partitions.into_iter().collect();
        owned.sort_unstable();
        owned.dedup();
        let count = self.log.partitions();
        if owned.is_empty() || owned.iter().any(|&partition| partition >= count) {
            return Err(Error::Invalid(format!(
                "a runner must own some of the log's partitions 0..{count}, not {owned:?}"
            )));
        }
        self.owned = owned.into();
        Ok(self)
    }

    pub fn handle(&self) -> RunnerHandle {
        RunnerHandle {
            heads: (0..self.log.partitions()).map(|partition| self.log.head(partition)).collect(),
            owned: self.owned.clone(),
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
    /// was never built) is first built from position zero of every
    /// partition into shadow tables while the old ones serve, then swapped
    /// in; an interrupted build of the same version resumes. Then each task
    /// follows the log, woken by the partitions' head watches. A projection
    /// that fails stops alone, marked `Failed` (also in the registry) while
    /// the others go on; `run` still waits for `shutdown`, then returns the
    /// first failure.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for entry in self.entries {
            let task = Task {
                log: self.log.clone(),
                views: self.views.clone(),
                entry,
                batch_size: self.options.batch,
                owned: self.owned.clone(),
            };
            tasks.spawn(task.drive(stopped.clone()));
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

/// One projection's task.
struct Task {
    log: Arc<dyn Log>,
    views: Views,
    entry: Entry,
    batch_size: usize,
    owned: Arc<[u32]>,
}

impl Task {
    /// Runs the projection until `stopped` turns true or it fails,
    /// publishing its progress and recording a failure in the registry.
    async fn drive(self, stopped: watch::Receiver<bool>) -> Result<()> {
        let name = self.entry.projection.name();
        let result = self.follow(stopped).await;
        if let Err(error) = &result {
            let message = error.to_string();
            tracing::error!(projection = name, %message, "projection stopped");
            self.entry.progress.send_modify(|progress| {
                progress.state = ProjectionState::Failed(message.clone());
            });
            if let Err(record) = registry::set_error(&self.views, name, Some(&message)).await {
                tracing::warn!(projection = name, %record, "could not record the failure");
            }
        }
        result
    }

    fn publish(&self, checkpoint: &Cursor, state: ProjectionState) {
        let name = self.entry.projection.name();
        record_metrics(name, checkpoint, &Cursor::heads(self.log.as_ref()), &self.owned);
        self.entry.progress.send_replace(Progress { checkpoint: checkpoint.clone(), state });
    }

    async fn follow(&self, mut stopped: watch::Receiver<bool>) -> Result<()> {
        let views = &self.views;
        let projection = self.entry.projection.as_ref();
        let name = projection.name();

        registry::install(views, projection).await?;
        let stored = registry::load(views, name).await?.ok_or(Error::NotInstalled(name))?;
        if stored.error.is_some() {
            registry::set_error(views, name, None).await?;
        }
        let current = stored.version == projection.version() && stored.version != 0;
        let live = if current {
            self.resume(&stored).await?
        } else {
            match self.build(&stored, stopped.clone()).await? {
                Some(live) => live,
                None => return Ok(()),
            }
        };

        let Live { mut feed, generation, mut checkpoint } = live;
        self.publish(&checkpoint, ProjectionState::Live);
        let tables = Tables { generation };
        while let Some(batch) = next_batch(&mut feed, &mut stopped).await? {
            apply_batch(views, projection, tables, &batch).await?;
            checkpoint.set(batch.partition, batch.scanned_to);
            self.publish(&checkpoint, ProjectionState::Live);
        }
        Ok(())
    }

    /// Follows the serving generation from its checkpoint.
    async fn resume(&self, stored: &registry::Stored) -> Result<Live> {
        let (log, views) = (&self.log, &self.views);
        let projection = self.entry.projection.as_ref();
        if let Some(stale) = stored.build {
            // A rebuild of the serving version that stopped half way (an
            // interrupted `spool projections rebuild`): nothing resumes it,
            // and the serving tables are current, so it only wastes space
            // and would show the projection as building forever.
            tracing::info!(
                projection = projection.name(),
                version = stale.version,
                "dropping an unfinished rebuild of the serving version"
            );
            registry::discard_build(views, projection).await?;
        }
        let checkpoint =
            registry::checkpoint(views, projection.name(), stored.generation, log.partitions())
                .await?;
        let feed = Feed::start(log.clone(), projection, &checkpoint, &self.owned, self.batch_size);
        Ok(Live { feed, generation: stored.generation, checkpoint })
    }

    /// Builds the code's version in shadow tables (resuming a build of the
    /// same version) and swaps it in; `None` when stopped first.
    async fn build(
        &self,
        stored: &registry::Stored,
        stopped: watch::Receiver<bool>,
    ) -> Result<Option<Live>> {
        let (log, views) = (&self.log, &self.views);
        let projection = self.entry.projection.as_ref();
        let (name, partitions) = (projection.name(), log.partitions());
        if self.owned.len() != partitions as usize {
            return Err(Error::Invalid(format!(
                "projection {name} v{} must be built from every partition of the log, but \
                 this runner owns only partitions {:?} of 0..{partitions}",
                projection.version(),
                self.owned
            )));
        }
        let build = match stored.build {
            Some(build) if build.version == projection.version() => build,
            _ => registry::start_build(views, projection).await?,
        };
        let mut checkpoint =
            registry::checkpoint(views, name, build.generation, partitions).await?;
        tracing::info!(
            projection = name,
            version = build.version,
            from = %checkpoint,
            "building projection in shadow tables"
        );
        self.publish(&checkpoint, ProjectionState::Building);
        let mut feed =
            Feed::start(log.clone(), projection, &checkpoint, &self.owned, self.batch_size);
        let building = Building { projection, build, partitions: &self.owned };
        let swapped = building
            .build_and_swap(log, views, &mut feed, &mut checkpoint, stopped, |_, checkpoint| {
                self.publish(checkpoint, ProjectionState::Building)
            })
            .await?;
        let Some(build) = swapped else {
            return Ok(None);
        };
        tracing::info!(projection = name, at = %checkpoint, "projection swapped in");
        Ok(Some(Live { feed, generation: build.generation, checkpoint }))
    }
}

/// A projection ready to follow the log: its feed, the generation it
/// writes, and where that generation's checkpoint is.
struct Live {
    feed: Feed,
    generation: u64,
    checkpoint: Cursor,
}

/// How far a wait of [`RunnerHandle`] must reach.
///
/// A position alone names a place only in a log of one partition (the
/// embedded SQLite log); on a partitioned log, waiting for one is refused.
/// Wait for a [`Cursor`] or for what an append returned instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A position of a one-partition log.
    Position(Position),
    /// Every partition at or past its position in the cursor.
    Cursor(Cursor),
}

impl From<Position> for Target {
    fn from(position: Position) -> Target {
        Target::Position(position)
    }
}

impl From<Cursor> for Target {
    fn from(cursor: Cursor) -> Target {
        Target::Cursor(cursor)
    }
}

impl From<&Cursor> for Target {
    fn from(cursor: &Cursor) -> Target {
        Target::Cursor(cursor.clone())
    }
}

/// Every event of an append: each partition it wrote at or past the last
/// position it wrote there.
impl From<&[Appended]> for Target {
    fn from(appended: &[Appended]) -> Target {
        let partitions = appended.iter().map(|a| a.partition + 1).max().unwrap_or(1);
        let mut cursor = Cursor::start(partitions);
        for a in appended {
            cursor.set(a.partition, cursor.get(a.partition).max(a.position));
        }
        Target::Cursor(cursor)
    }
}

impl From<&Vec<Appended>> for Target {
    fn from(appended: &Vec<Appended>) -> Target {
        Target::from(appended.as_slice())
    }
}

impl Target {
    /// The target as a cursor over a log of `partitions` partitions.
    fn cursor(self, partitions: u32) -> Result<Cursor> {
        match self {
            Target::Position(position) if partitions == 1 => {
                let mut cursor = Cursor::start(1);
                cursor.set(0, position);
                Ok(cursor)
            }
            Target::Position(position) => Err(Error::Invalid(format!(
                "position {position} names no place in a log of {partitions} partitions: \
                 wait for a cursor"
            ))),
            Target::Cursor(cursor) if cursor.partitions() > partitions => {
                Err(Error::Invalid(format!(
                    "cursor {cursor} has more positions than the log's {partitions} partitions"
                )))
            }
            Target::Cursor(cursor) => Ok(cursor),
        }
    }
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

/// The runner serving now. One instance of a scale-out deployment starts a
/// new [`Runner`] whenever the partitions it owns change; readers of its
/// progress follow whichever runs.
#[derive(Clone)]
pub struct CurrentRunner(watch::Receiver<RunnerHandle>);

impl CurrentRunner {
    /// Always `handle`: the one runner of a process that owns every partition.
    pub fn fixed(handle: RunnerHandle) -> CurrentRunner {
        CurrentRunner(watch::channel(handle).1)
    }

    /// Whichever handle `handles` holds now.
    pub fn following(handles: watch::Receiver<RunnerHandle>) -> CurrentRunner {
        CurrentRunner(handles)
    }

    pub fn get(&self) -> RunnerHandle {
        self.0.borrow().clone()
    }
}

/// A cheap-to-clone view of a [`Runner`]'s progress.
#[derive(Clone)]
pub struct RunnerHandle {
    /// One head watch per partition of the log.
    heads: Arc<[watch::Receiver<Position>]>,
    owned: Arc<[u32]>,
    entries: Arc<[HandleEntry]>,
}

impl std::fmt::Debug for RunnerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

impl RunnerHandle {
    /// Every projection's state. `head` covers every partition of the log;
    /// `lag` only the partitions this runner owns.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let mut head = Cursor::start(self.heads.len() as u32);
        for (partition, watch) in self.heads.iter().enumerate() {
            head.set(partition as u32, *watch.borrow());
        }
        self.entries
            .iter()
            .map(|entry| {
                let progress = entry.progress.borrow().clone();
                ProjectionStatus {
                    name: entry.name.to_owned(),
                    version: entry.version,
                    lag: lag(&head, &progress.checkpoint, self.owned.iter().copied()),
                    checkpoint: progress.checkpoint,
                    head: head.clone(),
                    state: progress.state,
                }
            })
            .collect()
    }

    /// The partitions this runner applies.
    pub fn owned_partitions(&self) -> &[u32] {
        &self.owned
    }

    /// The state of the projection named `name`, if this runner drives it.
    pub fn state(&self, name: &str) -> Option<ProjectionState> {
        self.entries
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.progress.borrow().state.clone())
    }

    /// Waits until the projection named `name` is live with its checkpoint
    /// at or past `target` in every partition this runner owns, so that
    /// reads of its tables see those events; the others may still be
    /// building or have failed. Fails when it has failed, the runner stops
    /// first, this runner does not drive it, or `target` does not fit the
    /// log (see [`Target`]).
    pub async fn wait_for_projection(&self, name: &str, target: impl Into<Target>) -> Result<()> {
        let entry = self
            .entries
            .iter()
            .find(|entry| entry.name == name)
            .ok_or_else(|| Error::UnknownProjection(name.to_owned()))?;
        let target = target.into().cursor(self.heads.len() as u32)?;
        self.wait_for_entry(entry, &target).await
    }

    /// Waits until every projection is live with its checkpoint at or past
    /// `target` in every partition this runner owns, so that reads through
    /// the views see those events. Fails when a projection has failed, the
    /// runner stops first, or `target` does not fit the log.
    pub async fn wait_for(&self, target: impl Into<Target>) -> Result<()> {
        let target = target.into().cursor(self.heads.len() as u32)?;
        for entry in self.entries.iter() {
            self.wait_for_entry(entry, &target).await?;
        }
        Ok(())
    }

    async fn wait_for_entry(&self, entry: &HandleEntry, target: &Cursor) -> Result<()> {
        let mut progress = entry.progress.clone();
        let reached = progress
            .wait_for(|progress| {
                matches!(progress.state, ProjectionState::Failed(_))
                    || (progress.state == ProjectionState::Live
                        && self.owned.iter().all(|&p| progress.checkpoint.get(p) >= target.get(p)))
            })
            .await
            .map_err(|_| Error::Stopped)?;
        if let ProjectionState::Failed(message) = &reached.state {
            return Err(Error::Failed { projection: entry.name, message: message.clone() });
        }
        Ok(())
    }
}
