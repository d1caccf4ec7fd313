//! Per tenant, how many events of each type were recorded in each minute
//! (UTC, by `recorded_at`). Counts every event, Spool's and apps' alike.
//!
//! Table `event_counts` (stable within version 1):
//! `tenant` TEXT (`ten_…`), `minute` BIGINT (Unix seconds of the minute's
//! start), `event_type` TEXT, `count` BIGINT; primary key
//! `(tenant, minute, event_type)`.
//!
//! The fold reads only envelope fields, never the payload, and sums each
//! batch in memory before writing, so a batch costs a few upserts. Sums
//! commute, so the rows do not depend on how partitions interleave.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use spool_log::{StoredEvent, TypeFilter};
use spool_schemas::TenantId;
use sqlx::Row;

use crate::views::{Connection, Views};
use crate::{Error, Projection, Result, Table, Tables};

pub const NAME: &str = "event_counts";
const TABLE: &str = "event_counts";

/// Rows per upsert statement, 4 parameters each. Small on purpose: SQLite looks each `$N` parameter's
/// name up by walking a list, so binding costs grow with the square of a
/// statement's parameters (at 500 rows a rebuild ran at 135k events/s,
/// at 50 rows 296k; `cargo bench --bench projection_rebuild`).
const ROWS_PER_STATEMENT: usize = 50;

// The column types read the same in both stores; in SQLite files built
// before PostgreSQL was supported they are `INTEGER`, which SQLite treats
// alike, so the version did not change.
static TABLES: [Table; 1] = [Table {
    name: TABLE,
    create: &["CREATE TABLE {table} (
        tenant     TEXT NOT NULL,
        minute     BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        count      BIGINT NOT NULL,
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
            let mut sql =
                format!("INSERT INTO {table} (tenant, minute, event_type, count) VALUES ");
            for row in 0..chunk.len() {
                let first = row * 4;
                let separator = if row == 0 { "" } else { ", " };
                write!(
                    sql,
                    "{separator}(${}, ${}, ${}, ${})",
                    first + 1,
                    first + 2,
                    first + 3,
                    first + 4
                )
                .expect("writing to a string");
            }
            // PostgreSQL needs the existing row's column qualified.
            write!(
                sql,
                " ON CONFLICT (tenant, minute, event_type) \
                 DO UPDATE SET count = {table}.count + excluded.count"
            )
            .expect("writing to a string");
            let mut upsert = sqlx::query(&sql);
            for ((tenant, minute, event_type), count) in chunk {
                upsert =
                    upsert.bind(tenant.to_string()).bind(*minute).bind(*event_type).bind(*count);
            }
            upsert.execute(&mut *connection).await?;
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
    let from = query.from.map(ceil_seconds);
    let to = query.to.map(ceil_seconds);
    let event_type = match query.event_type.as_deref().map(TypeFilter::parse) {
        Some(TypeFilter::Prefix(prefix)) if prefix.is_empty() => None,
        other => other,
    };
    // Conditions and their parameters, numbered in the order bound below.
    let mut sql = format!("SELECT minute, event_type, count FROM {TABLE} WHERE tenant = $1");
    let mut parameters = 1;
    let mut next = || {
        parameters += 1;
        parameters
    };
    if from.is_some() {
        write!(sql, " AND minute >= ${}", next()).expect("writing to a string");
    }
    if to.is_some() {
        write!(sql, " AND minute < ${}", next()).expect("writing to a string");
    }
    match &event_type {
        None => {}
        Some(TypeFilter::Exact(_)) => {
            write!(sql, " AND event_type = ${}", next()).expect("writing to a string");
        }
        Some(TypeFilter::Prefix(_)) => {
            let (length, prefix) = (next(), next());
            write!(sql, " AND substr(event_type, 1, ${length}) = ${prefix}")
                .expect("writing to a string");
        }
    }
    let mut select = sqlx::query(&sql).bind(tenant.to_string());
    if let Some(from) = from {
        select = select.bind(from);
    }
    if let Some(to) = to {
        select = select.bind(to);
    }
    let rows = match event_type {
        None => select.fetch_all(views.pool()).await?,
        Some(TypeFilter::Exact(name)) => select.bind(name).fetch_all(views.pool()).await?,
        // PostgreSQL's substr takes an `integer` length, not a `bigint`.
        Some(TypeFilter::Prefix(prefix)) => {
            let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
            select.bind(length).bind(prefix).fetch_all(views.pool()).await?
        }
    };
    let mut counts = rows
        .iter()
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
        .collect::<Result<Vec<_>>>()?;
    // Sorted here, not by SQL: PostgreSQL would order the types by its
    // collation, SQLite by their bytes.
    counts.sort_by(|a, b| (a.minute, &a.event_type).cmp(&(b.minute, &b.event_type)));
    Ok(counts)
}

/// The smallest whole second at or after `instant`: a minute start (whole
/// seconds) is `>= instant` exactly when it is `>=` this.
fn ceil_seconds(instant: DateTime<Utc>) -> i64 {
    let seconds = instant.timestamp();
    if instant.timestamp_subsec_nanos() > 0 { seconds + 1 } else { seconds }
}
