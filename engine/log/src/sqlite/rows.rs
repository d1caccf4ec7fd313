//! Reading `events` rows back as [`StoredEvent`]s, a batch at a time.
//!
//! sqlx hands every row and every column value across a channel from its
//! SQLite thread, which cost more than the rest of a read put together.
//! SQLite instead folds a whole batch into one JSON array of rows
//! (`json_group_array`), which crosses once and parses at memory speed.
//! Stream names, which never change once assigned, come from a cache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use spool_schemas::{EventId, Position, StreamName, TenantId};
use sqlx::Row as _;
use sqlx::sqlite::SqlitePool;

use crate::{Error, Result, StoredEvent};

/// Wraps a query selecting from `events e` (its `WHERE`, `ORDER BY` and
/// `LIMIT`) so that it returns one JSON array of rows.
pub(super) fn batch_query(from_where_order_limit: &str) -> String {
    format!(
        "SELECT json_group_array(json_array(position, hex(id), stream_id, stream_version, \
         recorded_at, hex(causation_id), hex(correlation_id), type, v, data)) \
         FROM (SELECT e.* FROM events e {from_where_order_limit})"
    )
}

/// One row as `batch_query` encodes it.
type JsonRow<'a> = (u64, &'a str, i64, u64, i64, &'a str, &'a str, Cow<'a, str>, u32, Cow<'a, str>);

/// Where stream ids map to tenants and names. Entries never change once a
/// stream exists, so a cached entry is never stale.
#[derive(Default)]
pub(super) struct StreamNames {
    names: RwLock<HashMap<i64, (TenantId, StreamName)>>,
}

/// Bound on cached stream names; past it the cache starts over.
const MAX_CACHED_NAMES: usize = 200_000;

impl StreamNames {
    /// The names of `ids`, from the cache or the `streams` table. The batch
    /// decodes from the map returned, so another reader evicting the cache
    /// meanwhile cannot take a name away from it.
    async fn resolve(
        &self,
        pool: &SqlitePool,
        ids: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, (TenantId, StreamName)>> {
        let mut resolved = HashMap::new();
        let mut missing = Vec::new();
        {
            let names = self.names.read().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                if resolved.contains_key(&id) {
                    continue;
                }
                match names.get(&id) {
                    Some(name) => {
                        resolved.insert(id, name.clone());
                    }
                    None => missing.push(id),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(500) {
            let sql = format!(
                "SELECT stream_id, tenant, name FROM streams WHERE stream_id IN ({})",
                vec!["?"; chunk.len()].join(",")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(pool).await? {
                let tenant = TenantId::from_bytes(id_bytes(row.try_get(1)?)?);
                let name: String = row.try_get(2)?;
                let name = StreamName::new(name).map_err(|e| Error::Invalid(e.to_string()))?;
                resolved.insert(row.try_get(0)?, (tenant, name));
            }
        }
        if !missing.is_empty() {
            let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
            if names.len() + missing.len() > MAX_CACHED_NAMES {
                names.clear();
            }
            for id in &missing {
                if let Some(name) = resolved.get(id) {
                    names.insert(*id, name.clone());
                }
            }
        }
        Ok(resolved)
    }
}

fn id_bytes(bytes: &[u8]) -> Result<[u8; 16]> {
    bytes.try_into().map_err(|_| Error::Invalid(format!("a stored id has {} bytes", bytes.len())))
}

fn hex_id(text: &str, position: u64) -> Result<Option<EventId>> {
    if text.is_empty() {
        return Ok(None);
    }
    let mut bytes = [0_u8; 16];
    let valid = text.len() == 32
        && bytes.iter_mut().enumerate().all(|(i, byte)| {
            u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map(|b| *byte = b).is_ok()
        });
    if !valid {
        return Err(Error::Invalid(format!("stored event at position {position} has a bad id")));
    }
    Ok(Some(EventId::from_bytes(bytes)))
}

/// Runs a query made by [`batch_query`] and decodes its rows, in order.
pub(super) async fn fetch_batch<'q>(
    pool: &SqlitePool,
    names: &StreamNames,
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
) -> Result<Vec<StoredEvent>> {
    let json: String = query.fetch_one(pool).await?.try_get(0)?;
    let mut rows: Vec<JsonRow<'_>> = serde_json::from_str(&json)
        .map_err(|e| Error::Invalid(format!("events batch does not parse: {e}")))?;
    // SQLite aggregates in the subquery's order; sorting (already sorted,
    // so linear) makes that a guarantee rather than an observation.
    rows.sort_by_key(|row| row.0);
    let names = names.resolve(pool, rows.iter().map(|row| row.2)).await?;
    let mut events = Vec::with_capacity(rows.len());
    for (
        position,
        id,
        stream_id,
        stream_version,
        recorded_us,
        causation,
        correlation,
        type_name,
        v,
        data,
    ) in rows
    {
        let (tenant, stream) = names.get(&stream_id).ok_or_else(|| {
            Error::Invalid(format!("stored event at position {position} names an unknown stream"))
        })?;
        events.push(StoredEvent {
            partition: 0,
            position: Position(position),
            id: hex_id(id, position)?.ok_or_else(|| {
                Error::Invalid(format!("stored event at position {position} has no id"))
            })?,
            tenant: *tenant,
            stream: stream.clone(),
            stream_version,
            recorded_at: DateTime::<Utc>::from_timestamp_micros(recorded_us)
                .ok_or_else(|| Error::Invalid(format!("bad timestamp at position {position}")))?,
            causation_id: hex_id(causation, position)?,
            correlation_id: hex_id(correlation, position)?,
            type_name: type_name.into_owned(),
            version: v,
            data: data.into_owned(),
        });
    }
    Ok(events)
}
