//! The in-memory backend, for unit tests: every guarantee except surviving
//! the process.

use std::collections::HashMap;
use std::sync::Mutex;

use spool_schemas::{EventId, Position, StreamName, TenantId};
use tokio::sync::watch;

use crate::plan::plan;
use crate::{Append, Appended, Error, Filter, Log, ReadBatch, Result, StoredEvent};

/// How many positions one [`Log::read`] examines at most.
const READ_WINDOW: u64 = 10_000;

#[derive(Default)]
struct State {
    events: Vec<StoredEvent>,
    by_id: HashMap<EventId, usize>,
    streams: HashMap<TenantId, HashMap<StreamName, Vec<usize>>>,
    closed: bool,
}

pub struct MemoryLog {
    state: Mutex<State>,
    head: watch::Sender<Position>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog { state: Mutex::default(), head: watch::Sender::new(Position::ZERO) }
    }
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written:
        // appends mutate only after planning succeeded.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Log for MemoryLog {
    async fn append(&self, append: Append) -> Result<Vec<Appended>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Closed);
        }
        let next = Position(state.events.len() as u64 + 1);
        let decided = plan(
            &append,
            next,
            |id| {
                state.by_id.get(id).map(|&index| {
                    let event = &state.events[index];
                    Appended {
                        id: event.id,
                        position: event.position,
                        stream_version: event.stream_version,
                        already_stored: true,
                    }
                })
            },
            |tenant, stream| {
                state
                    .streams
                    .get(&tenant)
                    .and_then(|s| s.get(stream.as_str()))
                    .map_or(0, |v| v.len() as u64)
            },
        )?;
        for &index in &decided.writes {
            let new = &append.events[index];
            let result = decided.results[index];
            let slot = state.events.len();
            state.events.push(StoredEvent::from_new(new, result.position, result.stream_version));
            state.by_id.insert(new.id, slot);
            state
                .streams
                .entry(new.tenant)
                .or_default()
                .entry(new.stream.clone())
                .or_default()
                .push(slot);
        }
        let head = Position(state.events.len() as u64);
        drop(state);
        if !decided.writes.is_empty() {
            self.head.send_replace(head);
        }
        Ok(decided.results)
    }

    async fn read(&self, after: Position, limit: usize, filter: &Filter) -> Result<ReadBatch> {
        let state = self.lock();
        let end = after.0.saturating_add(READ_WINDOW).min(state.events.len() as u64);
        let mut batch = ReadBatch { events: Vec::new(), scanned_to: Position(end.max(after.0)) };
        for event in
            state.events.iter().skip(after.0 as usize).take((end.saturating_sub(after.0)) as usize)
        {
            if batch.events.len() == limit {
                break;
            }
            if filter.matches(event) {
                batch.events.push(event.clone());
            }
        }
        if batch.events.len() == limit
            && let Some(last) = batch.events.last()
        {
            batch.scanned_to = last.position;
        }
        Ok(batch)
    }

    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let state = self.lock();
        let Some(indexes) = state.streams.get(&tenant).and_then(|s| s.get(stream.as_str())) else {
            return Ok(Vec::new());
        };
        let skip = from_version.saturating_sub(1) as usize;
        Ok(indexes.iter().skip(skip).take(limit).map(|&i| state.events[i].clone()).collect())
    }

    async fn find(&self, id: EventId) -> Result<Option<StoredEvent>> {
        let state = self.lock();
        Ok(state.by_id.get(&id).map(|&index| state.events[index].clone()))
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }

    async fn close(&self) -> Result<()> {
        self.lock().closed = true;
        Ok(())
    }
}
