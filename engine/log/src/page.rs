//! Reading a bounded page of events: the loop every reader of the log that
//! answers "the next N matching events after P" needs, since one
//! [`Log::read`] examines only a window of the log and may return fewer
//! matches than asked while more follow.

use spool_schemas::Position;

use crate::{Filter, Log, Result, StoredEvent};

/// One page of events, and where to read on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The kept events, in log order, at most the page's limit.
    pub events: Vec<StoredEvent>,
    /// Every event up to here was examined: read the next page after it.
    pub next: Position,
    /// Whether the log held events past `next` when the page was read
    /// (they may or may not match).
    pub more: bool,
}

/// Up to `limit` events after `after` that match `filter`, taking at most
/// `max_reads` reads of the log (so that a sparse filter over a long log
/// answers in bounded time, with `more` set). Stops at the head the log had
/// when the page began.
pub async fn read_page(
    log: &dyn Log,
    after: Position,
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
    mut after: Position,
    limit: usize,
    filter: &Filter,
    max_reads: usize,
    keep: impl Fn(&StoredEvent) -> bool + Send,
) -> Result<Page> {
    let head = *log.head().borrow();
    let mut events = Vec::new();
    let mut reads = 0;
    while events.len() < limit && after < head && reads < max_reads {
        // Asking for no more than the page still needs keeps `scanned_to`
        // at the last kept event when the page fills, so nothing is skipped.
        let batch = log.read(after, limit - events.len(), filter).await?;
        reads += 1;
        events.extend(batch.events.into_iter().filter(|event| keep(event)));
        if batch.scanned_to <= after {
            break;
        }
        after = batch.scanned_to;
    }
    Ok(Page { events, next: after, more: after < head })
}

#[cfg(test)]
mod tests {
    use spool_schemas::{AppEvent, AppEventType, Event, StreamName, TenantId};

    use super::*;
    use crate::{Append, MemoryLog, NewEvent, TypeFilter};

    fn app(tenant: TenantId, event_type: &str) -> NewEvent {
        NewEvent::new(
            tenant,
            StreamName::new("s").unwrap(),
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

        let mut after = Position::ZERO;
        let mut seen = Vec::new();
        loop {
            let page = read_page(&log, after, 4, &filter, usize::MAX).await.unwrap();
            assert!(page.events.len() <= 4);
            seen.extend(page.events.iter().map(|event| event.position.0));
            after = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (0..25).step_by(3).map(|n| n + 1).collect::<Vec<u64>>());
        assert_eq!(after, Position(25));

        let kept = read_page_where(&log, Position::ZERO, 3, &Filter::default(), 100, |event| {
            event.type_name == "b.x"
        })
        .await
        .unwrap();
        let positions: Vec<u64> = kept.events.iter().map(|event| event.position.0).collect();
        assert_eq!(positions, [2, 3, 5]);
        assert!(kept.more);
    }
}
