//! Reading the log ahead of the projection: reader tasks fetch the next
//! batches while the current one is applied, so reading and writing use
//! every core. Caught up, the feed waits on the log's head watch; it never
//! sleep-polls.
//!
//! Reads are issued speculatively: while catching up, up to
//! [`PARALLEL_READS`] reads run at once, each starting where the one before
//! it should end (`after + batch`). A read whose start turns out not to be
//! where the previous one ended is thrown away and issued again, so the
//! batches handed on are always consecutive, whatever the backend returns.

use std::collections::VecDeque;
use std::sync::Arc;

use spool_log::{Filter, Log, ReadBatch, StoredEvent};
use spool_schemas::Position;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// How many batches the reader may run ahead of the projection.
const READ_AHEAD: usize = 2;

/// How many reads of the log may run at once while catching up. Decoding
/// rows is most of a rebuild's work; the SQLite log serves reads on several
/// connections, each on its own thread.
const PARALLEL_READS: usize = 3;

/// Consecutive events of the log.
pub(crate) struct Batch {
    pub(crate) events: Vec<StoredEvent>,
    /// Every position up to here is in this or an earlier batch.
    pub(crate) scanned_to: Position,
    /// The log's head when the batch was read: `scanned_to >= head` means
    /// the reader had caught up.
    pub(crate) head: Position,
}

impl Batch {
    pub(crate) fn caught_up(&self) -> bool {
        self.scanned_to >= self.head
    }
}

/// The batches after a position, as the log grows. Dropping it stops the
/// reader task.
pub(crate) struct Feed {
    batches: mpsc::Receiver<Result<Batch>>,
    reader: JoinHandle<()>,
}

impl Feed {
    pub(crate) fn start(log: Arc<dyn Log>, after: Position, batch_size: usize) -> Feed {
        let (sender, batches) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read(log, after, batch_size.max(1), sender));
        Feed { batches, reader }
    }

    /// The next batch; `None` when the log was dropped.
    pub(crate) async fn next(&mut self) -> Option<Result<Batch>> {
        self.batches.recv().await
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.reader.abort();
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

async fn read(
    log: Arc<dyn Log>,
    after: Position,
    batch_size: usize,
    sender: mpsc::Sender<Result<Batch>>,
) {
    let mut head_watch: watch::Receiver<Position> = log.head(0);
    // Where the next batch handed on must start.
    let mut expected = after;
    // Where the next read to issue starts.
    let mut next_read = after;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        let head = *head_watch.borrow_and_update();
        while in_flight.len() < PARALLEL_READS && next_read < head {
            let read_log = log.clone();
            let start = next_read;
            in_flight.push_back(InFlight {
                after: start,
                head,
                read: tokio::spawn(async move {
                    read_log.read(0, start, batch_size, &Filter::default()).await
                }),
            });
            next_read = Position((start.0 + batch_size as u64).min(head.0));
        }
        let Some(mut oldest) = in_flight.pop_front() else {
            if head_watch.changed().await.is_err() {
                return;
            }
            continue;
        };
        let read = match (&mut oldest.read).await {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
            Err(panic) => {
                tracing::error!(%panic, "a log read panicked");
                let _ = sender.send(Err(Error::Stopped)).await;
                return;
            }
        };
        let batch = Batch {
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
