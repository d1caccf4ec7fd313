//! What goes into the log and what comes out of it.

use chrono::{DateTime, SubsecRound, Utc};
use spool_schemas::{DecodeError, Envelope, Event, EventId, Position, StreamName, TenantId};

/// An event to append. The log assigns its position and stream version.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: EventId,
    pub tenant: TenantId,
    pub stream: StreamName,
    /// Stored with microsecond precision.
    pub recorded_at: DateTime<Utc>,
    pub causation_id: Option<EventId>,
    pub correlation_id: Option<EventId>,
    pub event: Event,
}

impl NewEvent {
    /// An event with a fresh id, recorded now, with no causation.
    pub fn new(tenant: TenantId, stream: StreamName, event: Event) -> Self {
        NewEvent {
            id: EventId::new(),
            tenant,
            stream,
            recorded_at: Utc::now().trunc_subsecs(6),
            causation_id: None,
            correlation_id: None,
            event,
        }
    }
}

/// The version a stream must be at for an append to go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub tenant: TenantId,
    pub stream: StreamName,
    /// The stream's current version; 0 means the stream must not exist yet.
    pub version: u64,
}

/// One atomic append: its events, and the versions it expects its streams
/// to be at. Streams without an expectation accept any version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Append {
    pub events: Vec<NewEvent>,
    pub expected: Vec<Expected>,
}

impl Append {
    pub fn new(events: Vec<NewEvent>) -> Self {
        Append { events, expected: Vec::new() }
    }

    pub fn expect(mut self, tenant: TenantId, stream: StreamName, version: u64) -> Self {
        self.expected.push(Expected { tenant, stream, version });
        self
    }
}

/// Where one appended event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub id: EventId,
    /// The partition the event's stream lives in.
    pub partition: u32,
    pub position: Position,
    pub stream_version: u64,
    /// The id was already stored; this is where the earlier copy is.
    pub already_stored: bool,
}

/// An event as stored, with its payload still as JSON text so that readers
/// which need only the envelope (most projections) skip decoding it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// The partition the event's stream lives in; `position` counts within it.
    pub partition: u32,
    pub position: Position,
    pub id: EventId,
    pub tenant: TenantId,
    pub stream: StreamName,
    pub stream_version: u64,
    pub recorded_at: DateTime<Utc>,
    pub causation_id: Option<EventId>,
    pub correlation_id: Option<EventId>,
    pub type_name: String,
    pub version: u32,
    pub data: String,
}

impl StoredEvent {
    pub(crate) fn from_new(event: &NewEvent, appended: Appended) -> Self {
        let Appended { partition, position, stream_version, .. } = appended;
        StoredEvent {
            partition,
            position,
            id: event.id,
            tenant: event.tenant,
            stream: event.stream.clone(),
            stream_version,
            // Every backend keeps microseconds, as SQLite stores them.
            recorded_at: event.recorded_at.trunc_subsecs(6),
            causation_id: event.causation_id,
            correlation_id: event.correlation_id,
            type_name: event.event.type_name().to_owned(),
            version: event.event.version(),
            data: event.event.data_json(),
        }
    }

    /// The typed payload, upgraded from older versions.
    pub fn event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.type_name, self.version, &self.data)
    }

    /// The full envelope with the typed payload.
    pub fn envelope(&self) -> Result<Envelope, DecodeError> {
        Ok(Envelope {
            id: self.id,
            tenant: self.tenant,
            stream: self.stream.clone(),
            stream_version: self.stream_version,
            recorded_at: self.recorded_at,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            position: Some(self.position),
            event: self.event()?,
        })
    }
}

/// The answer to [`crate::Log::read`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadBatch {
    pub events: Vec<StoredEvent>,
    /// Every event up to here was examined: continue reading after it.
    /// Equals the last event's position when the limit was reached.
    pub scanned_to: Position,
}
