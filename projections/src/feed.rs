//! Reading the log ahead of the projection: one reader task per partition
//! fetches the next batches while the current one is applied, so reading
//! and writing use every core. Caught up, a reader waits on its
//! partition's head watch; it never sleep-polls (it only gathers for
//! [`LIVE_GATHER`] once the head moved).
//!
//! Every batch holds events of one partition. The readers of a feed share
//! one channel, so batches of different partitions arrive interleaved in
//! whatever order the reads finish; within a partition they are always
//! consecutive.
//!
//! Reads are issued speculatively: while catching up, a reader runs up to
//! [`PARALLEL_READS`] reads at once (shared among the partitions of the
//! feed), each starting where the one before it should end
//! (`after + batch`). A read whose start turns out not to be where the
//! previous one ended is thrown away and issued again, so the batches
//! handed on are always consecutive, whatever the backend returns.

use std::collections::VecDeque;
use std::sync::Arc;

use spool_log::{Cursor, Filter, Log, ReadBatch, StoredEvent, TypeFilter};
use spool_schemas::Position;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Error, Projection, Result};

/// How many batches each partition's reader may run ahead of the projection.
const READ_AHEAD: usize = 2;

/// How many reads of the log may run at once while catching up, over all
/// partitions of a feed. Decoding rows is most of a rebuild's work; the
/// SQLite log serves reads on several connections, each on its own thread.
const PARALLEL_READS: usize = 3;

/// How long a caught-up reader waits, once the head moved, before reading.
/// Under load the head moves with every group commit, thousands of times a
/// second; read each time, every projection would run a read and a
/// transaction per commit, a few events each, and that work grew with the
/// request rate of the API until it was a fifth of the server's CPU. This
/// bounds it to twenty per second per projection, for a read model at most
/// this much later. At 10 ms (a hundred per second), the reads and
/// transactions of the five built-in projections were still about a sixth
/// of the CPU per `POST /v1/events` under the load benchmark; 100 ms
/// saved nothing more.
const LIVE_GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// Consecutive events of one partition of the log.
pub(crate) struct Batch {
    pub(crate) partition: u32,
    /// Where the batch starts: every position of the partition up to here
    /// was in an earlier batch (or before the feed's start).
    pub(crate) after: Position,
    pub(crate) events: Vec<StoredEvent>,
    /// Every position of the partition up to here is in this or an earlier
    /// batch.
    pub(crate) scanned_to: Position,
    /// The partition's head when the batch was read: `scanned_to >= head`
    /// means the reader had caught up.
    pub(crate) head: Position,
}

impl Batch {
    pub(crate) fn caught_up(&self) -> bool {
        self.scanned_to >= self.head
    }
}

/// The batches of some partitions after a cursor, as the log grows.
/// Dropping it stops the reader tasks.
pub(crate) struct Feed {
    batches: mpsc::Receiver<Result<Batch>>,
    readers: Vec<JoinHandle<()>>,
}

impl Feed {
    /// Reads each of `partitions` after its position in `from`: the events
    /// of `projection`'s types (see [`Projection::event_types`]).
    pub(crate) fn start(
        log: Arc<dyn Log>,
        projection: &dyn Projection,
        from: &Cursor,
        partitions: &[u32],
        batch_size: usize,
    ) -> Feed {
        let filter = Arc::new(Filter {
            types: projection
                .event_types()
                .unwrap_or_default()
                .iter()
                .map(|name| TypeFilter::Exact((*name).to_owned()))
                .collect(),
            ..Filter::default()
        });
        let readers_count = partitions.len().max(1);
        let (sender, batches) = mpsc::channel(READ_AHEAD * readers_count);
        let parallel_reads = (PARALLEL_READS / readers_count).max(1);
        let readers = partitions
            .iter()
            .map(|&partition| {
                tokio::spawn(read(
                    log.clone(),
                    filter.clone(),
                    partition,
                    from.get(partition),
                    batch_size.max(1),
                    parallel_reads,
                    sender.clone(),
                ))
            })
            .collect();
        Feed { batches, readers }
    }

    /// The next batch of any partition; `None` when the log was dropped.
    pub(crate) async fn next(&mut self) -> Option<Result<Batch>> {
        self.batches.recv().await
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// One read in flight: where it starts, the head it was issued under.
struct InFlight {
    after: Position,
    head: Position,
    read: JoinHandle<spool_log::Result<ReadBatch>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.read.abort();
    }
}

/// Reads `partition` after `after` into `sender`, until the log or the
/// receiver is dropped.
async fn read(
    log: Arc<dyn Log>,
    filter: Arc<Filter>,
    partition: u32,
    after: Position,
    batch_size: usize,
    parallel_reads: usize,
    sender: mpsc::Sender<Result<Batch>>,
) {
    let mut head_watch: watch::Receiver<Position> = log.head(partition);
    // Where the next batch handed on must start.
    let mut expected = after;
    // Where the next read to issue starts.
    let mut next_read = after;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        let head = *head_watch.borrow_and_update();
        while in_flight.len() < parallel_reads && next_read < head {
            let (read_log, filter) = (log.clone(), filter.clone());
            let start = next_read;
            in_flight.push_back(InFlight {
                after: start,
                head,
                read: tokio::spawn(async move {
                    read_log.read(partition, start, batch_size, &filter).await
                }),
            });
            next_read = Position((start.0 + batch_size as u64).min(head.0));
        }
        let Some(mut oldest) = in_flight.pop_front() else {
            if head_watch.changed().await.is_err() {
                return;
            }
            // Caught up: let the appends that follow land too, so that one
            // read, and one transaction of the projection, covers them all.
            tokio::time::sleep(LIVE_GATHER).await;
            continue;
        };
        let read = match (&mut oldest.read).await {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
            Err(panic) => {
                tracing::error!(%panic, partition, "a log read panicked");
                let _ = sender.send(Err(Error::Stopped)).await;
                return;
            }
        };
        // The oldest read always starts at `expected`: reads that would not
        // are dropped below before they are reached.
        let batch = Batch {
            partition,
            after: expected,
            scanned_to: read.scanned_to.max(oldest.after),
            events: read.events,
            head: oldest.head,
        };
        // A backend that examined nothing new (its own view of the head
        // lagging the watch) is asked again once the head moves.
        if batch.scanned_to <= expected {
            in_flight.clear();
            next_read = expected;
            if head_watch.changed().await.is_err() {
                return;
            }
            continue;
        }
        expected = batch.scanned_to;
        if sender.send(Ok(batch)).await.is_err() {
            return;
        }
        // The speculation held while the next read starts where this one
        // ended; otherwise the reads after it are reissued from there.
        if in_flight.front().is_some_and(|next| next.after != expected)
            || (in_flight.is_empty() && next_read != expected)
        {
            in_flight.clear();
            next_read = expected;
        }
    }
}
