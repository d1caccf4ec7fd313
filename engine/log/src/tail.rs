//! Following the end of the log: read what is there, then wait on the
//! log's head watch for more. No sleeping, no polling within a process.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use spool_schemas::Position;
use tokio::sync::watch;

use crate::{Cursor, Filter, Log, Result, StoredEvent};

/// Moves `head` to `to` if that is further: publishers that race (outside
/// a lock, or several processes) must never move a head back.
pub(crate) fn advance_head(head: &watch::Sender<Position>, to: Position) {
    head.send_if_modified(|current| {
        let grew = to > *current;
        if grew {
            *current = to;
        }
        grew
    });
}

/// How many events one read fetches while catching up.
const TAIL_BATCH: usize = 1_000;

struct Tail {
    log: Arc<dyn Log>,
    partition: u32,
    after: Position,
    filter: Filter,
    head: watch::Receiver<Position>,
    buffer: VecDeque<StoredEvent>,
    failed: bool,
}

/// The events after `after` that match `filter`, then every matching event
/// appended later, as they are appended: each partition's in its order,
/// partitions interleaved as their events arrive. Ends after yielding an
/// error, or when the log is dropped.
pub fn tail(
    log: Arc<dyn Log>,
    after: Cursor,
    filter: Filter,
) -> impl Stream<Item = Result<StoredEvent>> + Send + 'static {
    let partitions = (0..log.partitions())
        .map(|partition| {
            Box::pin(tail_partition(log.clone(), partition, after.get(partition), filter.clone()))
        })
        .collect::<Vec<_>>();
    futures::stream::select_all(partitions)
}

fn tail_partition(
    log: Arc<dyn Log>,
    partition: u32,
    after: Position,
    filter: Filter,
) -> impl Stream<Item = Result<StoredEvent>> + Send + 'static {
    let head = log.head(partition);
    let state =
        Tail { log, partition, after, filter, head, buffer: VecDeque::new(), failed: false };
    futures::stream::unfold(state, |mut tail| async move {
        if tail.failed {
            return None;
        }
        loop {
            if let Some(event) = tail.buffer.pop_front() {
                return Some((Ok(event), tail));
            }
            let head = *tail.head.borrow_and_update();
            if tail.after < head {
                match tail.log.read(tail.partition, tail.after, TAIL_BATCH, &tail.filter).await {
                    Ok(batch) => {
                        tail.after = batch.scanned_to.max(tail.after);
                        tail.buffer.extend(batch.events);
                        continue;
                    }
                    Err(error) => {
                        tail.failed = true;
                        return Some((Err(error), tail));
                    }
                }
            }
            // Woken by the next append (or another process's, see SqliteLog).
            if tail.head.changed().await.is_err() {
                return None;
            }
        }
    })
}
