//! Turning `events` rows into [`StoredEvent`]s.

use chrono::{DateTime, Utc};
use spool_schemas::{EventId, Position, StreamName, TenantId};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Error, Result, StoredEvent};

/// Every read selects the same columns; the `CROSS JOIN` makes SQLite walk
/// `events` in position order and look each stream up, never the reverse.
pub(super) const SELECT_EVENTS: &str = "SELECT e.position, e.id, s.tenant, s.name, \
    e.stream_version, e.recorded_at, e.causation_id, e.correlation_id, e.type, e.v, e.data \
    FROM events e CROSS JOIN streams s ON s.stream_id = e.stream_id";

fn id_bytes(bytes: &[u8], position: i64) -> Result<[u8; 16]> {
    bytes.try_into().map_err(|_| {
        Error::Invalid(format!(
            "stored event at position {position} has an id of {} bytes",
            bytes.len()
        ))
    })
}

pub(super) fn decode_row(row: &SqliteRow) -> Result<StoredEvent> {
    let position: i64 = row.try_get(0)?;
    let optional_id = |index: usize| -> Result<Option<EventId>> {
        let bytes: Option<&[u8]> = row.try_get(index)?;
        bytes.map(|b| id_bytes(b, position).map(EventId::from_bytes)).transpose()
    };
    let recorded_us: i64 = row.try_get(5)?;
    let name: String = row.try_get(3)?;
    Ok(StoredEvent {
        position: Position(position as u64),
        id: EventId::from_bytes(id_bytes(row.try_get(1)?, position)?),
        tenant: TenantId::from_bytes(id_bytes(row.try_get(2)?, position)?),
        stream: StreamName::new(name).map_err(|e| Error::Invalid(e.to_string()))?,
        stream_version: row.try_get::<i64, _>(4)? as u64,
        recorded_at: DateTime::<Utc>::from_timestamp_micros(recorded_us)
            .ok_or_else(|| Error::Invalid(format!("bad timestamp at position {position}")))?,
        causation_id: optional_id(6)?,
        correlation_id: optional_id(7)?,
        type_name: row.try_get(8)?,
        version: row.try_get::<i64, _>(9)? as u32,
        data: row.try_get(10)?,
    })
}
