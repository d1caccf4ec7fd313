//! The newest published events, kept in memory, so that readers following
//! the head (projections, live streams) are served without SQLite.
//!
//! Caught up, each projection reads what was just appended, twenty times a
//! second. Through SQLite every such read encoded its rows as JSON on a
//! pool thread and parsed them back on the caller's: under the load
//! benchmark, the largest share of the server's CPU after HTTP and the
//! writer. The syncer holds the events it is about to publish anyway, so it
//! keeps the newest of them here before it publishes the head that makes
//! them readable.
//!
//! **Invariant:** the window holds consecutive positions, each event as
//! SQLite would return it. A read is served from the window only if the
//! window holds every position the read examines; otherwise SQLite serves
//! all of it. A gap (another process's appends, a group whose fsync failed)
//! starts the window over after it.

use std::collections::VecDeque;
use std::sync::RwLock;

use spool_schemas::Position;

use crate::{Filter, ReadBatch, StoredEvent};

/// At most this many events are kept; at the load benchmark's rate that is
/// over a second of appends, twenty times what a projection reads at once.
const MAX_EVENTS: usize = 32_768;

/// At most about this many bytes are kept, whatever the events' sizes.
const MAX_BYTES: usize = 16 << 20;

pub(super) struct Recent {
    window: RwLock<Window>,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Window {
    /// Consecutive positions, ascending.
    events: VecDeque<StoredEvent>,
    bytes: usize,
}

impl Window {
    fn first(&self) -> Option<Position> {
        self.events.front().map(|event| event.position)
    }

    fn last(&self) -> Option<Position> {
        self.events.back().map(|event| event.position)
    }
}

fn size_of(event: &StoredEvent) -> usize {
    std::mem::size_of::<StoredEvent>()
        + event.data.len()
        + event.type_name.len()
        + event.stream.as_str().len()
}

impl Default for Recent {
    fn default() -> Self {
        Recent::with_bounds(MAX_EVENTS, MAX_BYTES)
    }
}

impl Recent {
    fn with_bounds(max_events: usize, max_bytes: usize) -> Recent {
        Recent { window: RwLock::default(), max_events, max_bytes }
    }

    /// Adds `events`, consecutive and ascending, to the window, dropping its
    /// oldest events beyond the bounds. Events that do not follow the
    /// window's last position start it over.
    pub(super) fn extend(&self, events: impl IntoIterator<Item = StoredEvent>) {
        let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
        for event in events {
            if window.last().is_some_and(|last| last.next() != event.position) {
                *window = Window::default();
            }
            window.bytes += size_of(&event);
            window.events.push_back(event);
        }
        while window.events.len() > self.max_events || window.bytes > self.max_bytes {
            let Some(oldest) = window.events.pop_front() else { break };
            window.bytes -= size_of(&oldest);
        }
    }

    /// What `Log::read` answers for the positions after `after` up to
    /// `upper` (both at or below the published head), if the window holds
    /// every one of them: the events matching `filter`, at most `limit`
    /// (at least one), and how far that examined.
    pub(super) fn read(
        &self,
        after: Position,
        upper: Position,
        limit: usize,
        filter: &Filter,
    ) -> Option<ReadBatch> {
        let window = self.window.read().unwrap_or_else(|p| p.into_inner());
        let (first, last) = (window.first()?, window.last()?);
        if after.next() < first || upper > last {
            return None;
        }
        let start = (after.next().0 - first.0) as usize;
        // Unfiltered, every position examined is an event returned.
        let mut events = match filter == &Filter::default() {
            true => Vec::with_capacity(limit.min((upper.0 - after.0) as usize)),
            false => Vec::new(),
        };
        for event in window.events.range(start..) {
            if event.position > upper {
                break;
            }
            if filter.matches(event) {
                events.push(event.clone());
                if events.len() == limit {
                    let scanned_to = event.position;
                    return Some(ReadBatch { events, scanned_to });
                }
            }
        }
        Some(ReadBatch { events, scanned_to: upper })
    }
}

#[cfg(test)]
mod tests {
    use spool_schemas::{EventId, StreamName, TenantId};

    use super::*;
    use crate::TypeFilter;

    fn event(position: u64, type_name: &str) -> StoredEvent {
        StoredEvent {
            partition: 0,
            position: Position(position),
            id: EventId::new(),
            tenant: TenantId::from_bytes([1; 16]),
            stream: StreamName::new("s").unwrap(),
            stream_version: position,
            recorded_at: chrono::DateTime::from_timestamp_micros(1).unwrap(),
            causation_id: None,
            correlation_id: None,
            type_name: type_name.to_owned(),
            version: 1,
            data: "{}".to_owned(),
        }
    }

    fn positions(batch: &ReadBatch) -> Vec<u64> {
        batch.events.iter().map(|event| event.position.0).collect()
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let recent = Recent::default();
        let all = Filter::default();
        assert!(recent.read(Position(0), Position(1), 10, &all).is_none());
        recent.extend((5..=9).map(|p| event(p, "a")));
        // Position 4 is not held, so neither is a read that examines it.
        assert!(recent.read(Position(3), Position(9), 10, &all).is_none());
        assert!(recent.read(Position(5), Position(10), 10, &all).is_none());
        let batch = recent.read(Position(4), Position(9), 10, &all).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![5, 6, 7, 8, 9], Position(9)));
        let batch = recent.read(Position(6), Position(8), 10, &all).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![7, 8], Position(8)));
    }

    #[test]
    fn filters_and_stops_at_the_limit_where_sqlite_would() {
        let recent = Recent::default();
        recent.extend((1..=6).map(|p| event(p, if p % 2 == 0 { "even" } else { "odd" })));
        let even = Filter { types: vec![TypeFilter::Exact("even".into())], ..Filter::default() };
        let batch = recent.read(Position(0), Position(6), 2, &even).unwrap();
        // The limit reached: continue after the last event returned.
        assert_eq!((positions(&batch), batch.scanned_to), (vec![2, 4], Position(4)));
        let batch = recent.read(Position(4), Position(6), 2, &even).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![6], Position(6)));
        let none = Filter { types: vec![TypeFilter::Prefix("x.".into())], ..Filter::default() };
        let batch = recent.read(Position(0), Position(5), 2, &none).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![], Position(5)));
        let other_tenant = Filter::tenant(TenantId::new());
        assert!(recent.read(Position(0), Position(6), 9, &other_tenant).unwrap().events.is_empty());
    }

    #[test]
    fn a_gap_starts_the_window_over() {
        let recent = Recent::default();
        recent.extend((1..=3).map(|p| event(p, "a")));
        // Positions 4 and 5 were another process's appends.
        recent.extend((6..=7).map(|p| event(p, "a")));
        assert!(recent.read(Position(2), Position(7), 10, &Filter::default()).is_none());
        let batch = recent.read(Position(5), Position(7), 10, &Filter::default()).unwrap();
        assert_eq!(positions(&batch), vec![6, 7]);
    }

    #[test]
    fn drops_the_oldest_events_beyond_either_bound() {
        let by_count = Recent::with_bounds(3, usize::MAX);
        by_count.extend((1..=5).map(|p| event(p, "a")));
        assert!(by_count.read(Position(1), Position(5), 10, &Filter::default()).is_none());
        assert!(by_count.read(Position(2), Position(5), 10, &Filter::default()).is_some());

        let one_event = size_of(&event(1, "a"));
        let by_bytes = Recent::with_bounds(usize::MAX, 2 * one_event);
        by_bytes.extend((1..=5).map(|p| event(p, "a")));
        assert!(by_bytes.read(Position(2), Position(5), 10, &Filter::default()).is_none());
        assert!(by_bytes.read(Position(3), Position(5), 10, &Filter::default()).is_some());
    }
}
