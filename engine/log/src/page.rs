//! Reading a bounded page of events: the loop every reader of the log that
//! answers "the next N matching events after this cursor" needs, since one
//! [`Log::read`] examines only a window of one partition and may return
//! fewer matches than asked while more follow.

use std::collections::VecDeque;

use spool_schemas::Position;

use crate::{Cursor, Filter, Log, Result, StoredEvent};

/// One page of events, and where to read on.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The kept events, at most the page's limit: each partition's in its
    /// order, partitions interleaved by recording time.
    pub events: Vec<StoredEvent>,
    /// Every event up to here was examined: read the next page after it.
    pub next: Cursor,
    /// Whether the log held events past `next` when the page was read
    /// (they may or may not match).
    pub more: bool,
}

/// Up to `limit` events after `after` that match `filter`, taking at most
/// `max_reads` reads of each partition (so that a sparse filter over a long
/// log answers in bounded time, with `more` set). Stops at the heads the log
/// had when the page began.
pub async fn read_page(
    log: &dyn Log,
    after: &Cursor,
    limit: usize,
    filter: &Filter,
    max_reads: usize,
) -> Result<Page> {
    read_page_where(log, after, limit, filter, max_reads, |_| true).await
}

/// Like [`read_page`], keeping only the matching events for which `keep`
/// holds; the others are passed over and do not count toward `limit`.
pub async fn read_page_where(
    log: &dyn Log,
    after: &Cursor,
    limit: usize,
    filter: &Filter,
    max_reads: usize,
    keep: impl Fn(&StoredEvent) -> bool + Send + Sync,
) -> Result<Page> {
    let mut parts = Vec::new();
    for partition in 0..log.partitions() {
        let part =
            partition_page(log, partition, after.get(partition), limit, filter, max_reads, &keep)
                .await?;
        parts.push(part);
    }
    // Merge, keeping each partition's order: take the partition whose next
    // event was recorded first, until the page is full.
    let mut next = after.clone();
    let mut more = false;
    let mut queues: Vec<VecDeque<StoredEvent>> = Vec::with_capacity(parts.len());
    for (partition, part) in parts.into_iter().enumerate() {
        next.set(partition as u32, part.next);
        more |= part.more;
        queues.push(part.events.into());
    }
    let mut events = Vec::new();
    while events.len() < limit {
        let earliest = queues
            .iter()
            .enumerate()
            .filter_map(|(partition, queue)| {
                queue.front().map(|event| (event.recorded_at, partition))
            })
            .min();
        let Some((_, partition)) = earliest else { break };
        events.extend(queues[partition].pop_front());
    }
    // A partition whose events did not all fit resumes after its last one
    // on the page (or where it started, if none fit).
    for (partition, queue) in queues.iter().enumerate() {
        if !queue.is_empty() {
            let partition = partition as u32;
            let last = events.iter().rev().find(|event| event.partition == partition);
            next.set(partition, last.map_or(after.get(partition), |event| event.position));
            more = true;
        }
    }
    Ok(Page { events, next, more })
}

struct PartitionPage {
    events: Vec<StoredEvent>,
    next: Position,
    more: bool,
}

async fn partition_page(
    log: &dyn Log,
    partition: u32,
    mut after: Position,
    limit: usize,
    filter: &Filter,
    max_reads: usize,
    keep: &(impl Fn(&StoredEvent) -> bool + Send + Sync),
) -> Result<PartitionPage> {
    let head = *log.head(partition).borrow();
    let mut events = Vec::new();
    let mut reads = 0;
    while events.len() < limit && after < head && reads < max_reads {
        // Asking for no more than the page still needs keeps `scanned_to`
        // at the last kept event when the page fills, so nothing is skipped.
        let batch = log.read(partition, after, limit - events.len(), filter).await?;
        reads += 1;
        events.extend(batch.events.into_iter().filter(|event| keep(event)));
        if batch.scanned_to <= after {
            break;
        }
        after = batch.scanned_to;
    }
    Ok(PartitionPage { events, next: after, more: after < head })
}

#[cfg(test)]
mod tests {
    use spool_schemas::{AppEvent, AppEventType, Event, StreamName, TenantId};

    use super::*;
    use crate::{Append, MemoryLog, NewEvent, TypeFilter};

    fn app(tenant: TenantId, event_type: &str) -> NewEvent {
        on_stream(tenant, "s", event_type)
    }

    fn on_stream(tenant: TenantId, stream: &str, event_type: &str) -> NewEvent {
        NewEvent::new(
            tenant,
            StreamName::new(stream).unwrap(),
            Event::App(AppEvent {
                event_type: AppEventType::new(event_type).unwrap(),
                data: serde_json::Value::Null,
            }),
        )
    }

    #[tokio::test]
    async fn pages_cover_every_match_once_and_stop_at_the_head() {
        let log = MemoryLog::new();
        let tenant = TenantId::new();
        let events = (0..25).map(|n| app(tenant, if n % 3 == 0 { "a.x" } else { "b.x" })).collect();
        log.append(Append::new(events)).await.unwrap();
        let filter = Filter { types: vec![TypeFilter::parse("a.*")], ..Filter::tenant(tenant) };

        let mut after = Cursor::start(1);
        let mut seen = Vec::new();
        loop {
            let page = read_page(&log, &after, 4, &filter, usize::MAX).await.unwrap();
            assert!(page.events.len() <= 4);
            seen.extend(page.events.iter().map(|event| event.position.0));
            after = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (0..25).step_by(3).map(|n| n + 1).collect::<Vec<u64>>());
        assert_eq!(after.get(0), Position(25));

        let kept = read_page_where(&log, &Cursor::start(1), 3, &Filter::default(), 100, |event| {
            event.type_name == "b.x"
        })
        .await
        .unwrap();
        let positions: Vec<u64> = kept.events.iter().map(|event| event.position.0).collect();
        assert_eq!(positions, [2, 3, 5]);
        assert!(kept.more);
    }

    #[tokio::test]
    async fn pages_of_a_partitioned_log_cover_every_event_once_in_partition_order() {
        let log = MemoryLog::with_partitions(4);
        let tenant = TenantId::new();
        for n in 0..60 {
            let event = on_stream(tenant, &format!("s{}", n % 9), "a.x");
            log.append(Append::new(vec![event])).await.unwrap();
        }
        let mut after = Cursor::start(4);
        let mut seen: Vec<(u32, u64)> = Vec::new();
        loop {
            let page = read_page(&log, &after, 7, &Filter::default(), usize::MAX).await.unwrap();
            assert!(page.events.len() <= 7);
            seen.extend(page.events.iter().map(|event| (event.partition, event.position.0)));
            after = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen.len(), 60, "every event exactly once");
        for partition in 0..4 {
            let positions: Vec<u64> = seen
                .iter()
                .filter(|(p, _)| *p == partition)
                .map(|(_, position)| *position)
                .collect();
            let head = log.head(partition).borrow().0;
            assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "partition {partition} in order");
        }
        assert_eq!(after, Cursor::heads(&log));
    }
}
