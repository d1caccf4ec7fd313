//! The rule every reader of a Kafka partition applies, so that all agree on
//! which events are in the log without Kafka transactions or a leader.
//!
//! Writers claim: each record carries the stream version it claims, and
//! belongs to an append *part* (the events of one append that fall in this
//! partition) whose records all carry the part's id and count. A part is
//! decided when its last record is read, in partition order, against the
//! events accepted before that point:
//!
//! - if any of its event ids was accepted before, the part is void (a
//!   retry of an append that went through, or two writers with one id);
//! - else if each record claims exactly the next version of its stream
//!   (counting the part's earlier records), every record is accepted, in
//!   the part's order, at the next positions of the partition;
//! - else the part is void: another writer claimed those versions first.
//!
//! Nothing else decides, so every instance reading the partition from the
//! start reaches the same positions and versions. A writer acknowledges only
//! after its part's decision.
//!
//! Records are applied strictly in offset order. A writer knows the records
//! it produced and their offsets (from the delivery reports), so where every
//! offset up to its own is one of its records, it applies them without
//! waiting to read them back ([`Arbiter::offer_own`]); any other writer's
//! record in between makes it wait for the read ([`Arbiter::apply_read`]).
//! Either way each offset is applied once, to the same decision.

use std::collections::HashMap;

use spool_schemas::{EventId, Position, StreamName, TenantId};

use crate::{Appended, StoredEvent};

/// Identifies one append part across its records.
pub(super) type PartId = [u8; 16];

/// One record of the partition, decoded.
pub(super) struct Record {
    pub(super) part: PartId,
    /// This record's place in its part, from 0.
    pub(super) index: u32,
    /// How many records the part has.
    pub(super) count: u32,
    /// The event; `stream_version` is the claimed version, `position` unset.
    pub(super) event: StoredEvent,
}

/// How a part was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Accepted: where each record of the part now is, in part order.
    Accepted(Vec<Appended>),
    /// Void: one of its ids was accepted earlier.
    Duplicate,
    /// Void: `stream` was at `actual` when the part claimed `claimed`.
    Conflict { tenant: TenantId, stream: StreamName, claimed: u64, actual: u64 },
}

/// The accepted events of one partition and what deciding needs.
pub(super) struct Arbiter {
    partition: u32,
    /// Accepted events; position `n` is at index `n - 1`.
    events: Vec<StoredEvent>,
    ids: HashMap<EventId, usize>,
    /// Per stream, the indexes of its events: its version is the length.
    streams: HashMap<TenantId, HashMap<StreamName, Vec<usize>>>,
    /// Parts whose records have not all been read yet.
    pending: HashMap<PartId, Vec<Option<StoredEvent>>>,
    /// The offset of the next record to apply.
    next_offset: i64,
    /// Records this instance produced at offsets not applied yet.
    own: HashMap<i64, Record>,
}

impl Arbiter {
    pub(super) fn new(partition: u32) -> Arbiter {
        Arbiter {
            partition,
            events: Vec::new(),
            ids: HashMap::new(),
            streams: HashMap::new(),
            pending: HashMap::new(),
            next_offset: 0,
            own: HashMap::new(),
        }
    }

    /// The offset of the next record to apply: everything before it is.
    pub(super) fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Applies the record read at `offset` (`None`: not a Spool record,
    /// which decides nothing), then any of this instance's records that
    /// follow it; returns the parts decided.
    pub(super) fn apply_read(
        &mut self,
        offset: i64,
        record: Option<Record>,
    ) -> Vec<(PartId, Outcome)> {
        if offset < self.next_offset {
            // Applied already, from this instance's own delivery.
            return Vec::new();
        }
        // Offsets may skip (a transaction marker, records removed by
        // retention before this instance read them): nothing was there.
        self.own.retain(|&own, _| own > offset);
        self.next_offset = offset + 1;
        let mut decided: Vec<_> =
            record.and_then(|record| self.apply(record)).into_iter().collect();
        self.drain_own(&mut decided);
        decided
    }

    /// Takes a record this instance produced, delivered at `offset`, and
    /// applies every record now known up to the first unknown offset.
    pub(super) fn offer_own(&mut self, offset: i64, record: Record) -> Vec<(PartId, Outcome)> {
        let mut decided = Vec::new();
        if offset >= self.next_offset {
            self.own.insert(offset, record);
            self.drain_own(&mut decided);
        }
        decided
    }

    fn drain_own(&mut self, decided: &mut Vec<(PartId, Outcome)>) {
        while let Some(record) = self.own.remove(&self.next_offset) {
            self.next_offset += 1;
            decided.extend(self.apply(record));
        }
    }

    pub(super) fn head(&self) -> Position {
        Position(self.events.len() as u64)
    }

    pub(super) fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    pub(super) fn version(&self, tenant: TenantId, stream: &StreamName) -> u64 {
        self.stream_indexes(tenant, stream).map_or(0, |indexes| indexes.len() as u64)
    }

    pub(super) fn stream_indexes(&self, tenant: TenantId, stream: &StreamName) -> Option<&[usize]> {
        self.streams.get(&tenant).and_then(|s| s.get(stream.as_str())).map(Vec::as_slice)
    }

    pub(super) fn stored(&self, id: &EventId) -> Option<Appended> {
        self.ids.get(id).map(|&index| appended(&self.events[index], true))
    }

    /// Applies the next record of the partition; returns the decision of
    /// its part if this record completed it.
    fn apply(&mut self, record: Record) -> Option<(PartId, Outcome)> {
        let Record { part, index, count, event } = record;
        if count == 0 || index >= count {
            return None;
        }
        let records = if count == 1 {
            vec![Some(event)]
        } else {
            let slots = self.pending.entry(part).or_insert_with(|| vec![None; count as usize]);
            if slots.len() != count as usize {
                return None;
            }
            slots[index as usize] = Some(event);
            if slots.iter().any(Option::is_none) {
                return None;
            }
            self.pending.remove(&part).unwrap_or_default()
        };
        let events: Vec<StoredEvent> = records.into_iter().flatten().collect();
        Some((part, self.decide(events)))
    }

    fn decide(&mut self, events: Vec<StoredEvent>) -> Outcome {
        if events.iter().any(|event| self.ids.contains_key(&event.id)) {
            return Outcome::Duplicate;
        }
        let mut claimed: HashMap<(TenantId, &StreamName), u64> = HashMap::new();
        for event in &events {
            let current = match claimed.get(&(event.tenant, &event.stream)) {
                Some(&version) => version,
                None => self.version(event.tenant, &event.stream),
            };
            if event.stream_version != current + 1 {
                return Outcome::Conflict {
                    tenant: event.tenant,
                    stream: event.stream.clone(),
                    claimed: event.stream_version,
                    actual: current,
                };
            }
            claimed.insert((event.tenant, &event.stream), current + 1);
        }
        let mut accepted = Vec::with_capacity(events.len());
        for mut event in events {
            let index = self.events.len();
            event.partition = self.partition;
            event.position = Position(index as u64 + 1);
            accepted.push(appended(&event, false));
            self.ids.insert(event.id, index);
            self.streams
                .entry(event.tenant)
                .or_default()
                .entry(event.stream.clone())
                .or_default()
                .push(index);
            self.events.push(event);
        }
        Outcome::Accepted(accepted)
    }
}

fn appended(event: &StoredEvent, already_stored: bool) -> Appended {
    Appended {
        id: event.id,
        partition: event.partition,
        position: event.position,
        stream_version: event.stream_version,
        already_stored,
    }
}

#[cfg(test)]
mod tests {
    use spool_schemas::{AppEvent, AppEventType, Event};

    use super::*;
    use crate::NewEvent;

    fn claim(
        part: u8,
        index: u32,
        count: u32,
        stream: &str,
        version: u64,
        tenant: TenantId,
    ) -> Record {
        let new = NewEvent::new(
            tenant,
            StreamName::new(stream).unwrap(),
            Event::App(AppEvent {
                event_type: AppEventType::new("t.x").unwrap(),
                data: serde_json::json!({}),
            }),
        );
        let event = StoredEvent::from_new(
            &new,
            Appended {
                id: new.id,
                partition: 0,
                position: Position::ZERO,
                stream_version: version,
                already_stored: false,
            },
        );
        Record { part: [part; 16], index, count, event }
    }

    #[test]
    fn own_records_are_applied_in_offset_order_once_and_only_up_to_a_gap() {
        let tenant = TenantId::new();
        let mut arbiter = Arbiter::new(0);
        // Offset 1 is ours but offset 0 is unknown: nothing can be decided.
        assert!(arbiter.offer_own(1, claim(2, 0, 1, "s", 2, tenant)).is_empty());
        // Another writer's record at 0, read: it and then ours are decided.
        let decided = arbiter.apply_read(0, Some(claim(1, 0, 1, "s", 1, tenant)));
        assert_eq!(decided.len(), 2);
        assert!(decided.iter().all(|(_, outcome)| matches!(outcome, Outcome::Accepted(_))));
        // Reading our own record back later changes nothing.
        assert!(arbiter.apply_read(1, Some(claim(2, 0, 1, "s", 2, tenant))).is_empty());
        assert_eq!((arbiter.head(), arbiter.next_offset()), (Position(2), 2));
        // Ours at 2 and 3 with nothing between: decided without reading.
        assert_eq!(arbiter.offer_own(2, claim(3, 0, 1, "s", 3, tenant)).len(), 1);
        assert_eq!(arbiter.offer_own(3, claim(4, 0, 1, "s", 4, tenant)).len(), 1);
        assert_eq!(arbiter.head(), Position(4));
    }

    #[test]
    fn the_first_claim_of_a_version_wins_and_later_ones_are_void() {
        let tenant = TenantId::new();
        let mut arbiter = Arbiter::new(0);
        let first = arbiter.apply(claim(1, 0, 1, "s", 1, tenant)).unwrap().1;
        assert!(matches!(first, Outcome::Accepted(ref a) if a[0].position == Position(1)));
        let second = arbiter.apply(claim(2, 0, 1, "s", 1, tenant)).unwrap().1;
        assert!(matches!(second, Outcome::Conflict { claimed: 1, actual: 1, .. }), "{second:?}");
        assert_eq!(arbiter.head(), Position(1));
        assert_eq!(arbiter.version(tenant, &StreamName::new("s").unwrap()), 1);
    }

    #[test]
    fn a_part_is_decided_whole_when_its_last_record_arrives() {
        let tenant = TenantId::new();
        let mut arbiter = Arbiter::new(0);
        assert_eq!(arbiter.apply(claim(1, 0, 2, "a", 1, tenant)), None);
        // Another writer's claim interleaves and takes stream b's version 1.
        assert!(matches!(
            arbiter.apply(claim(2, 0, 1, "b", 1, tenant)),
            Some((_, Outcome::Accepted(_)))
        ));
        let decided = arbiter.apply(claim(1, 1, 2, "b", 1, tenant)).unwrap().1;
        assert!(matches!(decided, Outcome::Conflict { claimed: 1, actual: 1, .. }), "{decided:?}");
        // Nothing of the void part was accepted, not even its stream a.
        assert_eq!(arbiter.version(tenant, &StreamName::new("a").unwrap()), 0);
        assert_eq!(arbiter.head(), Position(1));
    }

    #[test]
    fn a_part_repeating_an_accepted_id_is_void() {
        let tenant = TenantId::new();
        let mut arbiter = Arbiter::new(0);
        let record = claim(1, 0, 1, "s", 1, tenant);
        let mut retry = claim(2, 0, 1, "s", 2, tenant);
        retry.event.id = record.event.id;
        arbiter.apply(record);
        assert_eq!(arbiter.apply(retry).unwrap().1, Outcome::Duplicate);
        assert_eq!(arbiter.head(), Position(1));
    }
}
