//! Deciding an append: which events are new, whether the expected stream
//! versions hold, and which position and stream version each new event gets.
//!
//! Pure, so every backend decides the same way; the backend supplies what
//! is already stored and performs the writes.

use std::collections::HashMap;

use spool_schemas::{EventId, Position, StreamName, TenantId};

use crate::{Append, Appended, Error, Result, VersionConflict};

/// The decision for one append; borrows stream names from it.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    /// One per event of the append, in order.
    pub(crate) results: Vec<Appended>,
    /// Indexes into `append.events` of the events to write, in position order.
    pub(crate) writes: Vec<usize>,
    /// The new version of every stream the append writes to.
    pub(crate) stream_versions: HashMap<(TenantId, &'a StreamName), u64>,
}

/// Plans `append`, all of whose streams live in `partition`, with its first
/// new event at `next`.
///
/// `stored` answers whether an id is already in the log (including appends
/// planned earlier in the same group); `version_of` gives a stream's current
/// version, 0 if it does not exist.
pub(crate) fn plan<'a>(
    append: &'a Append,
    partition: u32,
    next: Position,
    stored: impl Fn(&EventId) -> Option<Appended>,
    mut version_of: impl FnMut(TenantId, &StreamName) -> u64,
) -> Result<Plan<'a>> {
    let previously_stored: Vec<Option<Appended>> =
        append.events.iter().map(|event| stored(&event.id)).collect();
    if previously_stored.iter().all(Option::is_some) {
        // A retry of an append that went through: answer as it was answered.
        let results = previously_stored
            .into_iter()
            .flatten()
            .map(|found| Appended { already_stored: true, ..found })
            .collect();
        return Ok(Plan { results, ..Plan::default() });
    }

    for expected in &append.expected {
        let actual = version_of(expected.tenant, &expected.stream);
        if actual != expected.version {
            return Err(Error::Conflict(Box::new(VersionConflict {
                tenant: expected.tenant,
                stream: expected.stream.clone(),
                expected: expected.version,
                actual,
            })));
        }
    }

    let mut plan = Plan { results: Vec::with_capacity(append.events.len()), ..Plan::default() };
    let mut position = next;
    let mut in_this_append: HashMap<EventId, Appended> = HashMap::new();
    for (index, (event, earlier)) in append.events.iter().zip(previously_stored).enumerate() {
        if let Some(found) = earlier.or_else(|| in_this_append.get(&event.id).copied()) {
            plan.results.push(Appended { already_stored: true, ..found });
            continue;
        }
        let version = plan
            .stream_versions
            .entry((event.tenant, &event.stream))
            .or_insert_with(|| version_of(event.tenant, &event.stream));
        *version += 1;
        let appended = Appended {
            id: event.id,
            partition,
            position,
            stream_version: *version,
            already_stored: false,
        };
        in_this_append.insert(event.id, appended);
        plan.results.push(appended);
        plan.writes.push(index);
        position = position.next();
    }
    Ok(plan)
}
