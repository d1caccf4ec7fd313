//! The typed query of the usage read model: one tenant's requests, errors
//! and latency percentiles per minute, hour or day, grouped by any of key,
//! route and status class. SQL sums the counts and the sketches' buckets
//! per time bucket and group; the percentiles come from the merged
//! buckets, so they are as accurate over a month as over a minute.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use spool_schemas::{ClientId, KeyId, TenantId};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sketch::LatencySketch;
use super::{BUCKETS, MINUTES};
use crate::views::Views;
use crate::{Error, Result};

/// How long each row of an answer spans; days are UTC days.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Granularity {
    Minute,
    #[default]
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    /// The longest range one query may span at this granularity: a day of
    /// minutes, 31 days of hours, 366 days of days (at most 1,440 rows per
    /// group).
    pub fn max_span(self) -> Duration {
        match self {
            Granularity::Minute => Duration::days(1),
            Granularity::Hour => Duration::days(31),
            Granularity::Day => Duration::days(366),
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Granularity {
    type Err = InvalidUsageQuery;

    fn from_str(text: &str) -> Result<Granularity, InvalidUsageQuery> {
        Granularity::ALL
            .into_iter()
            .find(|granularity| granularity.as_str() == text.trim())
            .ok_or_else(|| InvalidUsageQuery::Granularity(text.to_owned()))
    }
}

/// Which columns split the rows, besides time. None: one row per bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupBy {
    /// By `key_id`.
    pub key: bool,
    /// By `method` and `route`.
    pub route: bool,
    /// By `status_class`.
    pub status: bool,
}

impl std::str::FromStr for GroupBy {
    type Err = InvalidUsageQuery;

    /// A comma-separated list of `key`, `route` and `status`, in any order;
    /// empty for none.
    fn from_str(text: &str) -> Result<GroupBy, InvalidUsageQuery> {
        let mut group_by = GroupBy::default();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            match name {
                "key" => group_by.key = true,
                "route" => group_by.route = true,
                "status" => group_by.status = true,
                other => return Err(InvalidUsageQuery::GroupBy(other.to_owned())),
            }
        }
        Ok(group_by)
    }
}

impl GroupBy {
    /// The read model's columns these groups select, in answer order.
    fn columns(self) -> Vec<&'static str> {
        let mut columns = Vec::new();
        if self.key {
            columns.push("key_id");
        }
        if self.route {
            columns.extend(["method", "route"]);
        }
        if self.status {
            columns.push("status_class");
        }
        columns
    }
}

/// A parameter of a usage query that does not make sense; the message
/// names it as the API spells it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUsageQuery {
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error("`from` must not be before 1970-01-01T00:00:00Z")]
    BeforeEpoch,
    #[error(
        "at granularity={granularity}, `to` may be at most {} after `from`",
        days(.granularity.max_span())
    )]
    TooLong { granularity: Granularity },
    #[error("`granularity` must be minute, hour or day, not {0:?}")]
    Granularity(String),
    #[error("`group_by` takes key, route and status, not {0:?}")]
    GroupBy(String),
}

impl InvalidUsageQuery {
    /// The query parameter at fault.
    pub fn parameter(&self) -> &'static str {
        match self {
            InvalidUsageQuery::EmptyRange | InvalidUsageQuery::TooLong { .. } => "to",
            InvalidUsageQuery::BeforeEpoch => "from",
            InvalidUsageQuery::Granularity(_) => "granularity",
            InvalidUsageQuery::GroupBy(_) => "group_by",
        }
    }
}

/// `1 day`, `31 days`.
fn days(span: Duration) -> String {
    match span.num_days() {
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}

/// A checked usage query: only [`UsageQuery::new`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UsageQuery {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
    group_by: GroupBy,
}

impl UsageQuery {
    /// Minutes starting at or after `from` and before `to`, in rows of
    /// `granularity` (labelled by the start of their minute, hour or UTC
    /// day; a row at either end holds only its minutes inside the range).
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Granularity,
        group_by: GroupBy,
    ) -> Result<UsageQuery, InvalidUsageQuery> {
        if from >= to {
            return Err(InvalidUsageQuery::EmptyRange);
        }
        // Time buckets are cut by integer division, which rounds towards
        // zero: right for every minute since 1970 only.
        if from < DateTime::UNIX_EPOCH {
            return Err(InvalidUsageQuery::BeforeEpoch);
        }
        if to - from > granularity.max_span() {
            return Err(InvalidUsageQuery::TooLong { granularity });
        }
        Ok(UsageQuery { from, to, granularity, group_by })
    }

    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    pub fn group_by(&self) -> GroupBy {
        self.group_by
    }
}

/// What authenticated a request: an API key, or an OAuth client's access
/// token. Written as the id (`key_…`, `client_…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Credential {
    Key(KeyId),
    Client(ClientId),
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key(key_id) => key_id.fmt(f),
            Credential::Client(client_id) => client_id.fmt(f),
        }
    }
}

impl std::str::FromStr for Credential {
    type Err = spool_schemas::IdError;

    fn from_str(text: &str) -> Result<Credential, Self::Err> {
        match text.parse() {
            Ok(key_id) => Ok(Credential::Key(key_id)),
            Err(_) if text.starts_with("client_") => text.parse().map(Credential::Client),
            Err(error) => Err(error),
        }
    }
}

/// One row of an answer. The group fields are `None` unless grouped by;
/// `key` is `None` too for requests no credential authenticated.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    /// The start of the row's minute, hour or day.
    pub start: DateTime<Utc>,
    pub key: Option<Credential>,
    pub method: Option<String>,
    pub route: Option<String>,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status_class: Option<String>,
    pub requests: u64,
    /// Requests answered with a status of 400 or above.
    pub errors: u64,
    /// The merged latency sketch of the row's requests.
    pub latency: LatencySketch,
}

impl UsageRow {
    /// The `percent`th percentile latency in microseconds, within 1%.
    pub fn percentile_us(&self, percent: u8) -> f64 {
        // Every row has requests, and every request a latency.
        self.latency.percentile(percent).unwrap_or_default()
    }
}

/// What identifies a row: its start and its group columns' text.
type Group = (i64, Vec<String>);

/// One tenant's usage, ordered by start, then key, method, route and status
/// class.
pub async fn query(views: &Views, tenant: TenantId, query: &UsageQuery) -> Result<Vec<UsageRow>> {
    let columns = query.group_by.columns();
    let mut rows: BTreeMap<Group, UsageRow> = BTreeMap::new();
    for row in select(views, tenant, query, &columns).await? {
        let (group, next) = group_of(&row, columns.len())?;
        let mut usage = usage_row(&group, &row, next, query.group_by)?;
        let buckets: Option<String> = row.try_get(next + 2)?;
        for pair in buckets.as_deref().unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
            let (bucket, count) = parse_bucket(pair).ok_or_else(|| Error::Corrupt {
                table: BUCKETS,
                message: format!("cannot read latency bucket '{pair}' of {group:?}"),
            })?;
            usage.latency.add_bucket(bucket, count);
        }
        rows.insert(group, usage);
    }
    // Ordered by the map (start, then the group text compared as bytes),
    // not by SQL: PostgreSQL would order text by its collation.
    Ok(rows.into_values().collect())
}

/// `bucket:count`, as [`select`] aggregates them. A negative count can only
/// be a corrupt row: `None`, so that the caller reports it, never zero.
fn parse_bucket(pair: &str) -> Option<(i64, u64)> {
    let (bucket, count) = pair.split_once(':')?;
    Some((bucket.parse().ok()?, count.parse().ok()?))
}

/// The answer's row of `group`, from its minutes' sums (from column
/// `sums` on: `requests`, `errors`), without latencies yet.
fn usage_row(group: &Group, row: &AnyRow, sums: usize, group_by: GroupBy) -> Result<UsageRow> {
    let start = DateTime::from_timestamp(group.0, 0).ok_or_else(|| Error::Corrupt {
        table: MINUTES,
        message: format!("minute {} is out of range", group.0),
    })?;
    let mut usage = UsageRow {
        start,
        key: None,
        method: None,
        route: None,
        status_class: None,
        requests: count(row, sums)?,
        errors: count(row, sums + 1)?,
        latency: LatencySketch::default(),
    };
    let mut values = group.1.iter();
    if group_by.key {
        let key = values.next().expect("one value per column");
        usage.key = (!key.is_empty())
            .then(|| key.parse())
            .transpose()
            .map_err(|error| Error::Corrupt { table: MINUTES, message: format!("{error}") })?;
    }
    if group_by.route {
        usage.method = values.next().cloned();
        usage.route = values.next().cloned();
    }
    if group_by.status {
        usage.status_class = values.next().cloned();
    }
    Ok(usage)
}

/// The minutes in range, summed per time bucket and group, one row each:
/// `start`, the group columns, `requests`, `errors`, and the group's
/// latency buckets summed too, as one text `bucket:count,…` (NULL if it
/// has none). One row per group rather than one per latency bucket:
/// answers with a few hundred groups held tens of thousands of bucket
/// rows, and turning each into a driver row was most of a request's time.
/// `string_agg` is PostgreSQL's, and SQLite's since 3.44.
///
/// One statement, so one snapshot: read by two, the projection could
/// commit between them a group whose buckets then had no minute row, or
/// counts out of step with their percentiles. It runs in a transaction
/// holding both tables ([`Views::read_holding`]), so that it cannot
/// deadlock with a rebuild's swap.
async fn select(
    views: &Views,
    tenant: TenantId,
    query: &UsageQuery,
    columns: &[&str],
) -> Result<Vec<AnyRow>> {
    let (mut groups, mut m_groups, mut join) = (String::new(), String::new(), String::new());
    for column in columns {
        write!(groups, ", {column}").expect("writing to a string");
        write!(m_groups, ", m.{column}").expect("writing to a string");
        write!(join, " AND b.{column} = m.{column}").expect("writing to a string");
    }
    let range = "tenant = $1 AND minute >= $3 AND minute < $4";
    let sql = format!(
        "WITH m AS (SELECT (minute / $2) * $2 AS start{groups}, \
                SUM(requests) AS requests, SUM(errors) AS errors \
                FROM {MINUTES} WHERE {range} GROUP BY 1{groups}), \
         b AS (SELECT (minute / $2) * $2 AS start{groups}, bucket, SUM(count) AS n \
                FROM {BUCKETS} WHERE {range} GROUP BY 1{groups}, bucket) \
         SELECT m.start{m_groups}, CAST(m.requests AS BIGINT), CAST(m.errors AS BIGINT), \
                string_agg(CAST(b.bucket AS TEXT) || ':' || CAST(b.n AS TEXT), ',') \
         FROM m LEFT JOIN b ON b.start = m.start{join} \
         GROUP BY m.start{m_groups}, m.requests, m.errors"
    );
    let (views, seconds) = (views.clone(), query.granularity.seconds());
    let (from, to) = (ceil_seconds(query.from), ceil_seconds(query.to));
    // On a task of its own: a request cancelled (its client gone) part-way
    // through the transaction could otherwise hand its connection back to
    // the pool still inside it, where sqlx refuses the next `BEGIN` (seen
    // as every projection failing on "non-zero transaction depth").
    let read = tokio::spawn(async move {
        let mut read = views.read_holding(&[MINUTES, BUCKETS]).await?;
        let rows = sqlx::query(&sql)
            .bind(tenant.to_string())
            .bind(seconds)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *read)
            .await?;
        read.commit().await?;
        Ok::<_, Error>(rows)
    });
    read.await.map_err(|error| Error::Invalid(format!("the usage query stopped: {error}")))?
}

/// The row's start and group values, and the index of its next column.
fn group_of(row: &AnyRow, n_columns: usize) -> Result<(Group, usize)> {
    let start: i64 = row.try_get(0)?;
    let values = (1..=n_columns).map(|index| row.try_get(index)).collect::<Result<_, _>>()?;
    Ok(((start, values), n_columns + 1))
}

fn count(row: &AnyRow, index: usize) -> Result<u64> {
    let count: i64 = row.try_get(index)?;
    Ok(count.max(0) as u64)
}

/// The smallest whole second at or after `instant`: a minute start (whole
/// seconds) is `>= instant` exactly when it is `>=` this.
fn ceil_seconds(instant: DateTime<Utc>) -> i64 {
    let seconds = instant.timestamp();
    if instant.timestamp_subsec_nanos() > 0 { seconds + 1 } else { seconds }
}

#[cfg(test)]
mod tests {
    use super::parse_bucket;

    #[test]
    fn a_bucket_pair_is_read_and_a_negative_or_malformed_one_is_refused() {
        assert_eq!(parse_bucket("-12:3"), Some((-12, 3)));
        assert_eq!(parse_bucket("7:0"), Some((7, 0)));
        assert_eq!(parse_bucket("7:-3"), None);
        assert_eq!(parse_bucket("7"), None);
        assert_eq!(parse_bucket("x:1"), None);
    }
}
