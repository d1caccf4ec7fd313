//! The in-memory backend, for unit tests: every guarantee except surviving
//! the process. It can have several partitions, so that code written for a
//! partitioned log (Kafka) is tested without a broker.

use std::collections::HashMap;
use std::sync::Mutex;

use spool_schemas::{EventId, Position, StreamName, TenantId};
use tokio::sync::watch;

use crate::partition::split;
use crate::plan::{Plan, plan};
use crate::{Append, Error, Filter, Log, ReadBatch, Result, StoredEvent, partition_for};

/// How many positions one [`Log::read`] examines at most.
const READ_WINDOW: u64 = 10_000;

#[derive(Default)]
struct State {
    /// Per partition, in position order.
    partitions: Vec<Vec<StoredEvent>>,
    /// Where each id is: partition and index.
    by_id: HashMap<EventId, (u32, usize)>,
    streams: HashMap<TenantId, HashMap<StreamName, Vec<usize>>>,
    closed: bool,
}

pub struct MemoryLog {
    state: Mutex<State>,
    heads: Vec<watch::Sender<Position>>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::with_partitions(1)
    }
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A log of `partitions` partitions (at least 1).
    pub fn with_partitions(partitions: u32) -> Self {
        let partitions = partitions.max(1) as usize;
        MemoryLog {
            state: Mutex::new(State {
                partitions: vec![Vec::new(); partitions],
                ..State::default()
            }),
            heads: (0..partitions).map(|_| watch::Sender::new(Position::ZERO)).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written:
        // appends mutate only after planning succeeded.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Log for MemoryLog {
    fn partitions(&self) -> u32 {
        self.heads.len() as u32
    }

    async fn append(&self, append: Append) -> Result<Vec<Appended>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Closed);
        }
        // Every part is planned before any is written, so the whole append
        // is atomic here, though a partitioned log need only keep each
        // part atomic.
        let parts = split(&append, self.partitions());
        let mut plans: Vec<(u32, &Append, &[usize], Plan<'_>)> = Vec::new();
        for part in &parts {
            let partition = part.partition;
            let next = Position(state.partitions[partition as usize].len() as u64 + 1);
            let state = &*state;
            let decided = plan(
                &part.append,
                partition,
                next,
                |id| {
                    state.by_id.get(id).map(|&(p, index)| {
                        let event = &state.partitions[p as usize][index];
                        Appended {
                            id: event.id,
                            partition: p,
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
            plans.push((partition, &part.append, &part.indexes, decided));
        }
        let mut results = vec![None; append.events.len()];
        let mut grown = Vec::new();
        for (partition, part, indexes, decided) in plans {
            for &index in &decided.writes {
                let new = &part.events[index];
                let events = &mut state.partitions[partition as usize];
                let slot = events.len();
                events.push(StoredEvent::from_new(new, decided.results[index]));
                state.by_id.insert(new.id, (partition, slot));
                state
                    .streams
                    .entry(new.tenant)
                    .or_default()
                    .entry(new.stream.clone())
                    .or_default()
                    .push(slot);
            }
            if !decided.writes.is_empty() {
                grown.push((partition, state.partitions[partition as usize].len() as u64));
            }
            for (result, &index) in decided.results.into_iter().zip(indexes) {
                results[index] = Some(result);
            }
        }
        drop(state);
        // Outside the lock a later append may publish first: never go back.
        for (partition, head) in grown {
            crate::tail::advance_head(&self.heads[partition as usize], Position(head));
        }
        Ok(results.into_iter().map(|result| result.expect("every event was planned")).collect())
    }

    async fn read(
        &self,
        partition: u32,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> Result<ReadBatch> {
        let state = self.lock();
        let events = state
            .partitions
            .get(partition as usize)
            .ok_or_else(|| Error::no_partition(partition))?;
        Ok(read_window(events, after, limit, filter))
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
        let events = &state.partitions[partition_for(tenant, stream, self.partitions()) as usize];
        Ok(stream_window(events, indexes, from_version, limit))
    }

    async fn find(&self, id: EventId) -> Result<Option<StoredEvent>> {
        let state = self.lock();
        Ok(state.by_id.get(&id).map(|&(p, index)| state.partitions[p as usize][index].clone()))
    }

    fn head(&self, partition: u32) -> watch::Receiver<Position> {
        self.heads[partition as usize].subscribe()
    }

    async fn close(&self) -> Result<()> {
        self.lock().closed = true;
        Ok(())
    }
}

/// The events of one stream from `from_version`, given the indexes of its
/// events (version `v` at `indexes[v - 1]`) in a partition held in memory.
pub(crate) fn stream_window(
    events: &[StoredEvent],
    indexes: &[usize],
    from_version: u64,
    limit: usize,
) -> Vec<StoredEvent> {
    let skip = from_version.saturating_sub(1) as usize;
    indexes.iter().skip(skip).take(limit).map(|&i| events[i].clone()).collect()
}

/// One read of a partition held in memory, where position `n` is at index
/// `n - 1`: at most [`READ_WINDOW`] positions examined, as every backend's
/// `read` does.
pub(crate) fn read_window(
    events: &[StoredEvent],
    after: Position,
    limit: usize,
    filter: &Filter,
) -> ReadBatch {
    let end = after.0.saturating_add(READ_WINDOW).min(events.len() as u64);
    let mut batch = ReadBatch { events: Vec::new(), scanned_to: Position(end.max(after.0)) };
    for event in events.iter().skip(after.0 as usize).take(end.saturating_sub(after.0) as usize) {
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
    batch
}

use crate::Appended;
