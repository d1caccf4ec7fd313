//! Usage analytics: per tenant, key, route, status class and minute, how
//! many API requests there were, how many failed, and a mergeable latency
//! sketch, folded from `api.call` events. Percentiles over any range come
//! from adding the range's sketches ([`sketch`]), never from averaging
//! percentiles.
//!
//! Tables (stable within version 1; analysts query them with SQL):
//!
//! `usage_minutes`, one row per tenant × key × method × route × status
//! class × minute:
//! - `tenant` TEXT (`ten_…`): the caller's tenant. A test-mode key's tenant
//!   is its live tenant's test twin, so test traffic is counted apart.
//!   Requests that presented no valid key (`401`s) are counted under the
//!   system tenant `ten_00000000000000000000000000000000`, so a flood of
//!   bad keys shows up; no customer's tenant ever sees them.
//! - `livemode` BIGINT: 1 for live traffic, 0 for test mode.
//! - `key_id` TEXT: the credential that authenticated the request: an API
//!   key (`key_…`) or, for an OAuth access token, its client
//!   (`client_…`); `''` when none did.
//! - `method` TEXT (`GET`, `POST`…) and `route` TEXT: the route template,
//!   such as `/v1/events`, never the raw path (`<unmatched>` for paths no
//!   route matched).
//! - `status_class` TEXT: `2xx`, `3xx`, `4xx` or `5xx` (`4xx` includes the
//!   `499` recorded when the client went away before the answer).
//! - `minute` BIGINT: Unix seconds of the minute's start (UTC), from the
//!   `api.call`'s `recorded_at`, when the request finished.
//! - `requests` BIGINT; `errors` BIGINT: requests answered with a status of
//!   400 or above (with this row's `status_class`, all or none of them).
//! - `latency_us_sum` BIGINT, `latency_us_max` BIGINT: the sum (for means)
//!   and the largest of the requests' latencies, in microseconds.
//!
//! Primary key `(tenant, minute, key_id, method, route, status_class)`.
//!
//! `usage_latency_buckets`, the latency sketch of each `usage_minutes` row,
//! one row per bucket holding at least one request:
//! - `tenant`, `livemode`, `key_id`, `method`, `route`, `status_class`,
//!   `minute`: as in `usage_minutes`, whose row this bucket belongs to.
//! - `bucket` BIGINT: the bucket's index `i`; it holds latencies in
//!   `(1.0202…^(i-1), 1.0202…^i]` µs (1 µs is bucket 0; below 1 µs counts
//!   as 1 µs).
//! - `lower_us`, `upper_us` DOUBLE PRECISION: those bounds, in µs.
//! - `value_us` DOUBLE PRECISION: the bucket's estimate, within 1% of every
//!   latency in the bucket; a percentile is the `value_us` of the bucket
//!   where the running count first reaches the percentile's rank.
//! - `count` BIGINT: requests in this bucket.
//!
//! Primary key `(tenant, minute, key_id, method, route, status_class,
//! bucket)`. Rows of a range merge by adding `count` per `bucket`.
//!
//! The fold decodes only `api.call` events and reads nothing but them (not
//! the clock). It aggregates each batch in memory and writes it in a few
//! multi-row upserts, so a batch of 1,000 calls costs a handful of
//! statements. Sums and maxima commute, so the rows do not depend on how
//! partitions interleave.

mod query;
pub mod sketch;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use spool_log::StoredEvent;
use spool_schemas::{ApiCall, Event, Payload, TenantId};

use crate::views::Connection;
use crate::{Error, Projection, Result, Table, Tables};

pub use query::{Credential, Granularity, GroupBy, InvalidUsageQuery, UsageQuery, UsageRow, query};
pub use sketch::LatencySketch;

pub const NAME: &str = "usage";
const MINUTES: &str = "usage_minutes";
const BUCKETS: &str = "usage_latency_buckets";

/// Rows per upsert statement. Numbers go into the statement as literals
/// and each distinct string is bound once, so a statement has a few
/// parameters however many rows it holds (SQLite's cost of binding grows
/// with the square of a statement's parameters; see `event_counts`).
const ROWS_PER_STATEMENT: usize = 250;

static TABLES: [Table; 2] = [
    Table {
        name: MINUTES,
        create: &["CREATE TABLE {table} (
            tenant         TEXT NOT NULL,
            livemode       BIGINT NOT NULL,
            key_id         TEXT NOT NULL,
            method         TEXT NOT NULL,
            route          TEXT NOT NULL,
            status_class   TEXT NOT NULL,
            minute         BIGINT NOT NULL,
            requests       BIGINT NOT NULL,
            errors         BIGINT NOT NULL,
            latency_us_sum BIGINT NOT NULL,
            latency_us_max BIGINT NOT NULL,
            PRIMARY KEY (tenant, minute, key_id, method, route, status_class)
        )"],
    },
    Table {
        name: BUCKETS,
        create: &["CREATE TABLE {table} (
            tenant       TEXT NOT NULL,
            livemode     BIGINT NOT NULL,
            key_id       TEXT NOT NULL,
            method       TEXT NOT NULL,
            route        TEXT NOT NULL,
            status_class TEXT NOT NULL,
            minute       BIGINT NOT NULL,
            bucket       BIGINT NOT NULL,
            lower_us     DOUBLE PRECISION NOT NULL,
            upper_us     DOUBLE PRECISION NOT NULL,
            value_us     DOUBLE PRECISION NOT NULL,
            count        BIGINT NOT NULL,
            PRIMARY KEY (tenant, minute, key_id, method, route, status_class, bucket)
        )"],
    },
];

/// The projection.
#[derive(Debug, Default)]
pub struct Usage;

#[async_trait::async_trait]
impl Projection for Usage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [Table] {
        &TABLES
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&[ApiCall::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        let mut calls = Vec::new();
        for event in events.iter().filter(|event| event.type_name == ApiCall::TYPE) {
            match event.event() {
                Ok(Event::ApiCall(call)) => calls.push((event, call)),
                Ok(other) => {
                    let message = format!("decoded as {}", other.type_name());
                    return Err(Error::apply(NAME, event, message));
                }
                Err(error) => return Err(Error::apply(NAME, event, error)),
            }
        }
        if calls.is_empty() {
            return Ok(());
        }
        let rows = aggregate(&calls);
        write_minutes(connection, &tables.get(MINUTES), &rows).await?;
        write_buckets(connection, &tables.get(BUCKETS), &rows).await
    }
}

/// What one row of `usage_minutes` is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RowKey<'a> {
    tenant: TenantId,
    minute: i64,
    credential: Option<Credential>,
    method: &'a str,
    route: &'a str,
    /// The status divided by 100.
    class: u16,
}

/// One batch's share of a row.
#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    errors: u64,
    latency_us_sum: u64,
    latency_us_max: u64,
    sketch: LatencySketch,
}

/// The batch's calls summed per row, in key order (so the statements are
/// the same however often the fold runs).
fn aggregate<'a>(calls: &'a [(&StoredEvent, ApiCall)]) -> BTreeMap<RowKey<'a>, Totals> {
    let mut rows: BTreeMap<RowKey<'a>, Totals> = BTreeMap::new();
    for (event, call) in calls {
        let key = RowKey {
            tenant: event.tenant,
            minute: event.recorded_at.timestamp().div_euclid(60) * 60,
            credential: call.key_id.map(Credential::Key).or(call.client_id.map(Credential::Client)),
            method: &call.method,
            route: &call.route,
            class: call.status / 100,
        };
        let totals = rows.entry(key).or_default();
        totals.requests += 1;
        totals.errors += u64::from(call.status >= 400);
        totals.latency_us_sum = totals.latency_us_sum.saturating_add(call.latency_us);
        totals.latency_us_max = totals.latency_us_max.max(call.latency_us);
        totals.sketch.add(call.latency_us);
    }
    rows
}

async fn write_minutes(
    connection: &mut Connection,
    table: &str,
    rows: &BTreeMap<RowKey<'_>, Totals>,
) -> Result<()> {
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut statement = Statement::new(format!(
            "INSERT INTO {table} (tenant, livemode, key_id, method, route, status_class, minute, \
             requests, errors, latency_us_sum, latency_us_max) VALUES "
        ));
        for (index, (key, totals)) in chunk.iter().enumerate() {
            let dimensions = statement.dimensions(key);
            let separator = if index == 0 { "" } else { ", " };
            statement.push(&format!(
                "{separator}({dimensions}, {}, {}, {}, {})",
                totals.requests,
                totals.errors,
                clamp(totals.latency_us_sum),
                clamp(totals.latency_us_max),
            ));
        }
        // PostgreSQL needs the existing row's columns qualified; a CASE is
        // the maximum both databases spell alike.
        statement.push(&format!(
            " ON CONFLICT (tenant, minute, key_id, method, route, status_class) DO UPDATE SET \
             requests = {table}.requests + excluded.requests, \
             errors = {table}.errors + excluded.errors, \
             latency_us_sum = {table}.latency_us_sum + excluded.latency_us_sum, \
             latency_us_max = CASE WHEN excluded.latency_us_max > {table}.latency_us_max \
             THEN excluded.latency_us_max ELSE {table}.latency_us_max END"
        ));
        statement.execute(connection).await?;
    }
    Ok(())
}

async fn write_buckets(
    connection: &mut Connection,
    table: &str,
    rows: &BTreeMap<RowKey<'_>, Totals>,
) -> Result<()> {
    let buckets: Vec<_> = rows
        .iter()
        .flat_map(|(key, totals)| totals.sketch.buckets().map(move |bucket| (key, bucket)))
        .collect();
    for chunk in buckets.chunks(ROWS_PER_STATEMENT) {
        let mut statement = Statement::new(format!(
            "INSERT INTO {table} (tenant, livemode, key_id, method, route, status_class, minute, \
             bucket, lower_us, upper_us, value_us, count) VALUES "
        ));
        for (index, (key, (bucket, count))) in chunk.iter().enumerate() {
            let dimensions = statement.dimensions(key);
            let (lower, upper) = sketch::bounds(*bucket);
            let separator = if index == 0 { "" } else { ", " };
            // `{:?}` writes the shortest text that reads back as the same
            // double, with a point or an exponent, so both databases read
            // it as a number with a fraction, never as an integer.
            statement.push(&format!(
                "{separator}({dimensions}, {bucket}, {lower:?}, {upper:?}, {:?}, {count})",
                sketch::value(*bucket),
            ));
        }
        statement.push(&format!(
            " ON CONFLICT (tenant, minute, key_id, method, route, status_class, bucket) \
             DO UPDATE SET count = {table}.count + excluded.count"
        ));
        statement.execute(connection).await?;
    }
    Ok(())
}

/// A multi-row statement being written: numbers go into its text, and each
/// distinct string is bound once as a numbered parameter, which both
/// databases let a statement use many times.
struct Statement {
    sql: String,
    bound: Vec<String>,
    numbers: HashMap<String, usize>,
}

impl Statement {
    fn new(sql: String) -> Statement {
        Statement { sql, bound: Vec::new(), numbers: HashMap::new() }
    }

    fn push(&mut self, text: &str) {
        self.sql.push_str(text);
    }

    /// `$n`, the parameter bound to `text`.
    fn parameter(&mut self, text: &str) -> String {
        let number = match self.numbers.get(text) {
            Some(&number) => number,
            None => {
                self.bound.push(text.to_owned());
                self.numbers.insert(text.to_owned(), self.bound.len());
                self.bound.len()
            }
        };
        format!("${number}")
    }

    /// The values of the columns both tables start with: `tenant`,
    /// `livemode`, `key_id`, `method`, `route`, `status_class`, `minute`.
    fn dimensions(&mut self, key: &RowKey<'_>) -> String {
        let mut text = String::new();
        let tenant = self.parameter(&key.tenant.to_string());
        let key_id = self.parameter(
            &key.credential.map(|credential| credential.to_string()).unwrap_or_default(),
        );
        let method = self.parameter(key.method);
        let route = self.parameter(key.route);
        let class = self.parameter(&status_class(key.class));
        let livemode = i64::from(!key.tenant.is_test());
        write!(text, "{tenant}, {livemode}, {key_id}, {method}, {route}, {class}, {}", key.minute)
            .expect("writing to a string");
        text
    }

    async fn execute(self, connection: &mut Connection) -> Result<()> {
        // Not kept prepared: with its numbers written in, each text is run
        // once, and keeping it would only push useful statements out of
        // the connection's cache.
        let mut query = sqlx::query(&self.sql).persistent(false);
        for text in self.bound {
            query = query.bind(text);
        }
        query.execute(connection).await?;
        Ok(())
    }
}

/// `2xx` for class 2 (statuses 200 to 299), and so on.
fn status_class(class: u16) -> String {
    format!("{class}xx")
}

/// A sum of microseconds as a `BIGINT`: 292,000 years of latency fit.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
