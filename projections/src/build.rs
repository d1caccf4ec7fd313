//! Applying batches with their checkpoint, building a generation in shadow
//! tables and swapping it in, and the operator's `rebuild`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_log::{Log, StoredEvent};
use spool_schemas::Position;
use tokio::sync::watch;

use crate::feed::{Batch, Feed};
use crate::registry::{self, Build};
use crate::views::Views;
use crate::{Error, Projection, Result, Tables};

/// How many events a rebuild reads and applies per transaction.
const REBUILD_BATCH: usize = 5_000;

/// Where a rebuild stands, reported after every batch.
#[derive(Clone, Debug)]
pub struct RebuildProgress {
    pub name: String,
    /// Every event up to here is in the shadow tables.
    pub applied: Position,
    /// The log's head: the rebuild is done when `applied` reaches it.
    pub head: Position,
}

/// What a finished rebuild did.
#[derive(Clone, Debug)]
pub struct RebuildReport {
    pub events: u64,
    pub elapsed: Duration,
}

/// Rebuilds `projection` from position zero into shadow tables while its
/// current tables keep serving reads, then swaps them in atomically (one
/// transaction) and drops the old ones. `progress` hears after every batch.
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
    let mut feed = Feed::start(log.clone(), build.checkpoint, REBUILD_BATCH);
    let mut events = 0;
    let (_never_stop, no_shutdown) = watch::channel(false);
    build_and_swap(&log, views, projection.as_ref(), &mut feed, build, no_shutdown, |batch| {
        events += batch.events.len() as u64;
        progress(RebuildProgress {
            name: projection.name().to_owned(),
            applied: batch.scanned_to,
            head: batch.head,
        });
    })
    .await?;
    Ok(RebuildReport { events, elapsed: started.elapsed() })
}

/// Applies `build`'s projection from its checkpoint until it has caught up
/// with the log, then swaps it in. Returns the swapped build, or `None`
/// when `shutdown` turned true first (the build resumes on the next start).
pub(crate) async fn build_and_swap(
    log: &Arc<dyn Log>,
    views: &Views,
    projection: &dyn Projection,
    feed: &mut Feed,
    mut build: Build,
    mut shutdown: watch::Receiver<bool>,
    mut on_batch: impl FnMut(&Batch) + Send,
) -> Result<Option<Build>> {
    let head = log.head(0);
    let tables = Tables { generation: build.generation };
    // An empty log is caught up before the first batch.
    if build.checkpoint < *head.borrow() {
        loop {
            let Some(batch) = next_batch(feed, &mut shutdown).await? else {
                return Ok(None);
            };
            apply_batch(views, projection, tables, &batch, true).await?;
            build.checkpoint = batch.scanned_to;
            on_batch(&batch);
            // Caught up as of the batch's read: close enough to swap, and
            // the live loop carries on from here. Waiting for an exact
            // match with a moving head could wait forever.
            if batch.caught_up() {
                break;
            }
        }
    }
    registry::swap(views, projection, build).await?;
    Ok(Some(build))
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

/// Applies one batch and moves the checkpoint, in one transaction.
pub(crate) async fn apply_batch(
    views: &Views,
    projection: &dyn Projection,
    tables: Tables,
    batch: &Batch,
    building: bool,
) -> Result<()> {
    let mut write = views.write().await?;
    if !batch.events.is_empty() {
        projection
            .apply(write.connection(), tables, &batch.events)
            .await
            .map_err(|error| attribute(projection.name(), &batch.events, error))?;
    }
    registry::checkpoint(write.connection(), projection.name(), batch.scanned_to, building).await?;
    write.commit().await
}

/// A store error while applying a batch is charged to the batch's first
/// event, so that the failure always names a position.
fn attribute(projection: &'static str, events: &[StoredEvent], error: Error) -> Error {
    match error {
        Error::Sql(sql) => {
            let first = events.first().map_or(Position::ZERO, |e| e.position);
            let last = events.last().map_or(Position::ZERO, |e| e.position);
            Error::apply(
                projection,
                first,
                format!("while applying positions {first}..={last}: {sql}"),
            )
        }
        other => other,
    }
}
