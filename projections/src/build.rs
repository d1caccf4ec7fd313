//! Applying batches with their checkpoint, building a generation in shadow
//! tables and swapping it in, and the operator's `rebuild`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_log::{Cursor, Log};
use spool_schemas::Position;
use tokio::sync::watch;

use crate::feed::{Batch, Feed};
use crate::registry::{self, Build};
use crate::status::events_before;
use crate::views::Views;
use crate::{Error, Projection, Result, Tables};

/// How many events a rebuild reads and applies per transaction.
const REBUILD_BATCH: usize = 5_000;

/// Where a rebuild stands, reported after every batch.
#[derive(Clone, Debug)]
pub struct RebuildProgress {
    pub name: String,
    /// Every event up to here, in each partition, is in the shadow tables.
    pub applied: Cursor,
    /// The log's heads as last read: the rebuild is done when `applied`
    /// reaches them in every partition.
    pub head: Cursor,
}

impl RebuildProgress {
    /// How many events (of every partition) the shadow tables hold.
    pub fn applied_events(&self) -> u64 {
        events_before(&self.applied)
    }

    /// How many events the log held (of every partition), as last read.
    pub fn head_events(&self) -> u64 {
        events_before(&self.head)
    }
}

/// What a finished rebuild did.
#[derive(Clone, Debug)]
pub struct RebuildReport {
    pub events: u64,
    pub elapsed: Duration,
}

/// Rebuilds `projection` from position zero of every partition into shadow
/// tables while its current tables keep serving reads, then swaps them in
/// atomically (one transaction) and drops the old ones. `progress` hears
/// after every batch.
///
/// Must not run while a [`crate::Runner`] drives the same projection on the
/// same views: both would write its registry row. Stop the server first, or
/// bump the projection's version and let the runner rebuild it.
pub async fn rebuild(
    log: Arc<dyn Log>,
    views: &Views,
    projection: Arc<dyn Projection>,
    mut progress: impl FnMut(RebuildProgress) + Send,
) -> Result<RebuildReport> {
    let started = Instant::now();
    registry::install(views, projection.as_ref()).await?;
    let build = registry::start_build(views, projection.as_ref()).await?;
    let partitions: Vec<u32> = (0..log.partitions()).collect();
    let mut checkpoint = Cursor::start(log.partitions());
    let mut feed =
        Feed::start(log.clone(), projection.as_ref(), &checkpoint, &partitions, REBUILD_BATCH);
    let mut head = Cursor::heads(log.as_ref());
    let mut events = 0;
    let (_never_stop, no_shutdown) = watch::channel(false);
    let building = Building { projection: projection.as_ref(), build, partitions: &partitions };
    building
        .build_and_swap(&log, views, &mut feed, &mut checkpoint, no_shutdown, |batch, applied| {
            events += batch.events.len() as u64;
            head.set(batch.partition, head.get(batch.partition).max(batch.head));
            progress(RebuildProgress {
                name: projection.name().to_owned(),
                applied: applied.clone(),
                head: head.clone(),
            });
        })
        .await?;
    Ok(RebuildReport { events, elapsed: started.elapsed() })
}

/// A build of a projection into shadow tables, from every partition.
pub(crate) struct Building<'a> {
    pub(crate) projection: &'a dyn Projection,
    pub(crate) build: Build,
    /// The partitions `feed` reads: every partition of the log.
    pub(crate) partitions: &'a [u32],
}

impl Building<'_> {
    /// Applies the build's projection from `checkpoint` until every
    /// partition has caught up with the log, then swaps it in. Returns the
    /// swapped build, or `None` when `shutdown` turned true first (the
    /// build resumes on the next start from its stored checkpoint).
    pub(crate) async fn build_and_swap(
        self,
        log: &Arc<dyn Log>,
        views: &Views,
        feed: &mut Feed,
        checkpoint: &mut Cursor,
        mut shutdown: watch::Receiver<bool>,
        mut on_batch: impl FnMut(&Batch, &Cursor) + Send,
    ) -> Result<Option<Build>> {
        let tables = Tables { generation: self.build.generation };
        // Partitions already caught up (an empty log is) need no batch.
        let mut behind: BTreeSet<u32> = self
            .partitions
            .iter()
            .copied()
            .filter(|&partition| checkpoint.get(partition) < *log.head(partition).borrow())
            .collect();
        while !behind.is_empty() {
            let Some(batch) = next_batch(feed, &mut shutdown).await? else {
                return Ok(None);
            };
            apply_batch(views, self.projection, tables, &batch).await?;
            checkpoint.set(batch.partition, batch.scanned_to);
            on_batch(&batch, checkpoint);
            // Caught up as of the batch's read: close enough to swap, and
            // the live loop carries on from here. Waiting for an exact
            // match with a moving head could wait forever.
            if batch.caught_up() {
                behind.remove(&batch.partition);
            }
        }
        registry::swap(views, self.projection, self.build).await?;
        Ok(Some(self.build))
    }
}

/// The next batch of `feed`, or `None` once `shutdown` turns true.
pub(crate) async fn next_batch(
    feed: &mut Feed,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Batch>> {
    if *shutdown.borrow_and_update() {
        return Ok(None);
    }
    let stop_requested = async {
        let closed = shutdown.wait_for(|stop| *stop).await.is_err();
        if closed {
            // Nobody can ask for a stop any more: run to the end.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        () = stop_requested => Ok(None),
        batch = feed.next() => match batch {
            Some(batch) => batch.map(Some),
            // The log was dropped: nothing more will come.
            None => Err(Error::Stopped),
        },
    }
}

/// Applies one batch (of one partition) to `tables` and moves that
/// partition's checkpoint of the same generation, in one transaction.
pub(crate) async fn apply_batch(
    views: &Views,
    projection: &dyn Projection,
    tables: Tables,
    batch: &Batch,
) -> Result<()> {
    let mut write = views.write().await?;
    if !batch.events.is_empty() {
        projection
            .apply(write.connection(), tables, &batch.events)
            .await
            .map_err(|error| attribute(projection.name(), batch, error))?;
    }
    registry::advance(
        write.connection(),
        projection.name(),
        tables.generation,
        batch.partition,
        batch.after,
        batch.scanned_to,
    )
    .await?;
    write.commit().await
}

/// A store error while applying a batch is charged to the batch's first
/// event, so that the failure always names a position.
fn attribute(projection: &'static str, batch: &Batch, error: Error) -> Error {
    match error {
        Error::Sql(sql) => {
            let first = batch.events.first().map_or(Position::ZERO, |e| e.position);
            let last = batch.events.last().map_or(Position::ZERO, |e| e.position);
            Error::Apply {
                projection,
                partition: batch.partition,
                position: first,
                message: format!("while applying positions {first}..={last}: {sql}"),
            }
        }
        other => other,
    }
}
