//! Per tenant, how many events of each type were recorded in each minute
//! (UTC, by `recorded_at`). Counts every event, Spool's and apps' alike.
//!
//! Table `event_counts` (stable within version 1):
//! `tenant` TEXT (`ten_…`), `minute` INTEGER (Unix seconds of the minute's
//! start), `event_type` TEXT, `count` INTEGER; primary key
//! `(tenant, minute, event_type)`.
//!
//! The fold reads only envelope fields, never the payload, and sums each
//! batch in memory before writing, so a batch costs a few upserts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use spool_log::{StoredEvent, TypeFilter};
use spool_schemas::TenantId;
use sqlx::{QueryBuilder, Row};

use crate::views::{Connection, Database, Views};
use crate::{Error, Projection, Result, Table, Tables};

pub const NAME: &str = "event_counts";
const TABLE: &str = "event_counts";

/// Rows per upsert statement: 4 parameters each, well under SQLite's limit.
const ROWS_PER_STATEMENT: usize = 500;

static TABLES: [Table; 1] = [Table {
    name: TABLE,
    create: &["CREATE TABLE {table} (
        tenant     TEXT NOT NULL,
        minute     INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        count      INTEGER NOT NULL,
        PRIMARY KEY (tenant, minute, event_type)
    )"],
}];

/// The projection.
#[derive(Debug, Default)]
pub struct EventCounts;

#[async_trait::async_trait]
impl Projection for EventCounts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [Table] {
        &TABLES
    }

    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        let mut sums: HashMap<(TenantId, i64, &str), i64> = HashMap::new();
        for event in events {
            let minute = event.recorded_at.timestamp().div_euclid(60) * 60;
            *sums.entry((event.tenant, minute, event.type_name.as_str())).or_default() += 1;
        }
        // Sorted, so that the rows and their write order never depend on
        // the hash map's iteration order.
        let mut sums: Vec<_> = sums.into_iter().collect();
        sums.sort_unstable();
        let table = tables.get(TABLE);
        for chunk in sums.chunks(ROWS_PER_STATEMENT) {
            let mut upsert = QueryBuilder::<Database>::new(format!(
                "INSERT INTO {table} (tenant, minute, event_type, count) "
            ));
            upsert.push_values(chunk, |mut row, ((tenant, minute, event_type), count)| {
                row.push_bind(tenant.to_string())
                    .push_bind(*minute)
                    .push_bind(*event_type)
                    .push_bind(*count);
            });
            upsert.push(
                " ON CONFLICT (tenant, minute, event_type) \
                 DO UPDATE SET count = count + excluded.count",
            );
            upsert.build().execute(&mut *connection).await?;
        }
        Ok(())
    }
}

/// Which counts to return. Everything of the tenant by default.
#[derive(Clone, Debug, Default)]
pub struct EventCountsQuery {
    /// Minutes starting at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Minutes starting before this instant.
    pub to: Option<DateTime<Utc>>,
    /// An exact type name, or a prefix written `order.*`.
    pub event_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MinuteCount {
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    pub event_type: String,
    pub count: u64,
}

/// Per-minute counts for one tenant, ordered by minute then type. `from`
/// is inclusive and `to` exclusive, both compared with a minute's start.
pub async fn query(
    views: &Views,
    tenant: TenantId,
    query: &EventCountsQuery,
) -> Result<Vec<MinuteCount>> {
    let mut sql = QueryBuilder::<Database>::new(format!(
        "SELECT minute, event_type, count FROM {TABLE} WHERE tenant = "
    ));
    sql.push_bind(tenant.to_string());
    if let Some(from) = query.from {
        sql.push(" AND minute >= ").push_bind(ceil_seconds(from));
    }
    if let Some(to) = query.to {
        sql.push(" AND minute < ").push_bind(ceil_seconds(to));
    }
    match query.event_type.as_deref().map(TypeFilter::parse) {
        None => {}
        Some(TypeFilter::Exact(name)) => {
            sql.push(" AND event_type = ").push_bind(name);
        }
        Some(TypeFilter::Prefix(prefix)) if prefix.is_empty() => {}
        Some(TypeFilter::Prefix(prefix)) => {
            sql.push(" AND substr(event_type, 1, ")
                .push_bind(prefix.chars().count() as i64)
                .push(") = ")
                .push_bind(prefix);
        }
    }
    sql.push(" ORDER BY minute, event_type");
    let rows = sql.build().fetch_all(views.pool()).await?;
    rows.iter()
        .map(|row| {
            let minute: i64 = row.try_get(0)?;
            let count: i64 = row.try_get(2)?;
            Ok(MinuteCount {
                minute: DateTime::from_timestamp(minute, 0).ok_or_else(|| Error::Corrupt {
                    table: TABLE,
                    message: format!("minute {minute} is out of range"),
                })?,
                event_type: row.try_get(1)?,
                count: count as u64,
            })
        })
        .collect()
}

/// The smallest whole second at or after `instant`: a minute start (whole
/// seconds) is `>= instant` exactly when it is `>=` this.
fn ceil_seconds(instant: DateTime<Utc>) -> i64 {
    let seconds = instant.timestamp();
    if instant.timestamp_subsec_nanos() > 0 { seconds + 1 } else { seconds }
}
