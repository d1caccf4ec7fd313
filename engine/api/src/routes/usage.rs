//! `GET /v1/usage`: the caller's API usage from the `usage` read model:
//! requests, errors and latency percentiles per minute, hour or day,
//! grouped by any of key, route and status class. JSON by default, CSV
//! with `Accept: text/csv`.
//!
//! The caller's tenant only: a test-mode key sees its test traffic, a live
//! key its live traffic (`livemode` in the answer says which). Percentiles
//! are in milliseconds (to the microsecond), computed from the merged
//! latency sketches of the range, so they are within 1% of the exact
//! percentile however long the range.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use spool_projections::Views;
use spool_projections::usage::{
    self, Granularity, GroupBy, InvalidUsageQuery, UsageQuery, UsageRow,
};
use spool_schemas::{Scope, TenantId};
use utoipa::{IntoParams, ToSchema};

use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::routes::query;
use crate::{Caller, Shared};

/// The query string. Times are parsed here rather than by serde, so that
/// an error names the parameter.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Required. RFC 3339; minutes starting at or after this instant.
    #[param(example = "2026-03-01T00:00:00Z")]
    pub from: Option<String>,
    /// Required. RFC 3339; minutes starting before this instant. At most 1
    /// day after `from` at `granularity=minute`, 31 days at `hour`, 366
    /// days at `day`.
    #[param(example = "2026-03-02T00:00:00Z")]
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day` (UTC days).
    #[param(example = "hour")]
    pub granularity: Option<String>,
    /// A comma-separated list of `key`, `route` (method and route
    /// template) and `status` (status class); none: one row per period.
    #[param(example = "key,route")]
    pub group_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(example = "hour")]
    pub granularity: &'static str,
    /// The grouping asked for, in the order `key`, `route`, `status`.
    pub group_by: Vec<&'static str>,
    /// `false` when the caller is a test-mode key: the rows count its test
    /// traffic only.
    pub livemode: bool,
    /// Ordered by `start`, then the group columns.
    pub rows: Vec<UsageRowView>,
}

/// One period (and group). Group columns appear only when grouped by.
#[derive(Serialize, ToSchema)]
pub struct UsageRowView {
    /// The start of the minute, hour or UTC day.
    pub start: DateTime<Utc>,
    /// With `group_by=key`: the API key (`key_…`) or OAuth client
    /// (`client_…`) that authenticated the requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")]
    pub key_id: Option<Option<String>>,
    /// With `group_by=route`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "GET")]
    pub method: Option<String>,
    /// With `group_by=route`: the route template.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/v1/events")]
    pub route: Option<String>,
    /// With `group_by=status`: `2xx`, `3xx`, `4xx` or `5xx`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2xx")]
    pub status_class: Option<String>,
    pub requests: u64,
    /// Requests answered with a status of 400 or above.
    pub errors: u64,
    /// Latency percentiles in milliseconds (to the microsecond), within
    /// 1% of the exact value.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

const CSV: &str = "text/csv; charset=utf-8";

/// API usage of the caller's tenant.
///
/// Requests, errors (status 400 or above) and latency percentiles p50, p95
/// and p99 in milliseconds per minute, hour or UTC day, optionally grouped
/// by key, route and status class. A period at either end of the range
/// holds only its minutes inside the range. Percentiles come from merging
/// the range's latency sketches (1% relative accuracy), never from
/// averaging percentiles. A test-mode key sees test-mode traffic only.
/// Answers CSV (RFC 4180, with a header row) for `Accept: text/csv`. The
/// same query asked again by the same tenant within a second may get the
/// same answer: answers are cached that long.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "Usage per period and group", content(
            (UsageReport = "application/json", example = json!({
                "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z",
                "granularity": "hour", "group_by": ["route"], "livemode": true,
                "rows": [{"start": "2026-03-01T10:00:00Z", "method": "POST", "route": "/v1/events",
                          "requests": 1200, "errors": 3, "p50_ms": 0.612, "p95_ms": 1.874, "p99_ms": 4.102}]
            })),
            (String = "text/csv", example = json!(
                "start,method,route,requests,errors,p50_ms,p95_ms,p99_ms\n2026-03-01T10:00:00Z,POST,/v1/events,1200,3,0.612,1.874,4.102\n"
            )),
        )),
        (status = 400, description = "A parameter is missing or invalid; `detail` names it", body = ProblemBody, content_type = "application/problem+json",
            example = json!({"type": "https://spool.dev/problems/invalid-query", "title": "The query string is invalid", "status": 400, "detail": "at granularity=minute, `to` may be at most 1 day after `from`"})),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `usage:read`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["usage:read"]), ("oauth2" = ["usage:read"])),
)]
pub(crate) async fn usage(
    State(state): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Response, Problem> {
    caller.require(Scope::UsageRead)?;
    let usage_query = usage_query(query(params)?)?;
    let format = if wants_csv(&headers) { Format::Csv } else { Format::Json };
    let body = state.usage_cache.answer(&state.views, caller.tenant, &usage_query, format).await?;
    let content_type = match format {
        Format::Csv => CSV,
        Format::Json => "application/json",
    };
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response())
}

/// How an answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Format {
    Json,
    Csv,
}

/// Recent answers, per tenant, query and format, kept for
/// `ApiOptions::usage_cache_ttl` (1 s by default; zero: none). Dashboards
/// poll the same ranges, and an answer sums every latency bucket of its
/// range (an hour of minutes is tens of thousands of rows): computed and
/// written once, however many ask at the same time, it serves them all as
/// it is. Usage is already as old as the projection's lag; this adds at
/// most the TTL.
#[derive(Clone)]
pub struct UsageCache(Option<Cache<(TenantId, UsageQuery, Format), Bytes>>);

impl UsageCache {
    pub fn new(ttl: Duration) -> UsageCache {
        UsageCache(
            (!ttl.is_zero())
                .then(|| Cache::builder().max_capacity(1_000).time_to_live(ttl).build()),
        )
    }

    /// The body of the answer to `query`.
    async fn answer(
        &self,
        views: &Views,
        tenant: TenantId,
        query: &UsageQuery,
        format: Format,
    ) -> Result<Bytes, Problem> {
        let written = write_answer(views, tenant, query, format);
        match &self.0 {
            None => written.await,
            Some(cache) => cache
                .try_get_with((tenant, *query, format), written)
                .await
                .map_err(|problem| Problem::clone(&problem)),
        }
    }
}

async fn write_answer(
    views: &Views,
    tenant: TenantId,
    query: &UsageQuery,
    format: Format,
) -> Result<Bytes, Problem> {
    let rows = usage::query(views, tenant, query).await?;
    let rows = row_views(&rows, query.group_by());
    let body = match format {
        Format::Csv => csv(query.group_by(), &rows).map_err(|error| Problem::internal(&error))?,
        Format::Json => serde_json::to_vec(&UsageReport {
            from: query.from(),
            to: query.to(),
            granularity: query.granularity().as_str(),
            group_by: group_by_names(query.group_by()),
            livemode: !tenant.is_test(),
            rows,
        })
        .map_err(|error| Problem::internal(&error))?,
    };
    Ok(Bytes::from(body))
}

fn usage_query(params: UsageParams) -> Result<UsageQuery, Problem> {
    let invalid = |detail: String| Problem::new(ProblemKind::INVALID_QUERY, detail);
    let time = |name: &str, text: Option<String>| {
        let text = text.ok_or_else(|| invalid(format!("`{name}` is required (RFC 3339)")))?;
        DateTime::parse_from_rfc3339(text.trim()).map(|time| time.to_utc()).map_err(|error| {
            invalid(format!(
                "`{name}` must be an RFC 3339 time such as 2026-03-01T00:00:00Z: {error}"
            ))
        })
    };
    let from = time("from", params.from)?;
    let to = time("to", params.to)?;
    let not_valid = |error: InvalidUsageQuery| invalid(error.to_string());
    let granularity = match params.granularity {
        Some(text) => text.parse().map_err(not_valid)?,
        None => Granularity::default(),
    };
    let group_by: GroupBy = params.group_by.unwrap_or_default().parse().map_err(not_valid)?;
    UsageQuery::new(from, to, granularity, group_by).map_err(not_valid)
}

fn group_by_names(group_by: GroupBy) -> Vec<&'static str> {
    [(group_by.key, "key"), (group_by.route, "route"), (group_by.status, "status")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
}

/// The rows as the API shows them; `spool usage` shows them so too.
pub fn row_views(rows: &[UsageRow], group_by: GroupBy) -> Vec<UsageRowView> {
    rows.iter().map(|row| row_view(row, group_by)).collect()
}

fn row_view(row: &UsageRow, group_by: GroupBy) -> UsageRowView {
    UsageRowView {
        start: row.start,
        key_id: group_by.key.then(|| row.key.map(|key| key.to_string())),
        method: row.method.clone(),
        route: row.route.clone(),
        status_class: row.status_class.clone(),
        requests: row.requests,
        errors: row.errors,
        p50_ms: milliseconds(row.percentile_us(50)),
        p95_ms: milliseconds(row.percentile_us(95)),
        p99_ms: milliseconds(row.percentile_us(99)),
    }
}

/// Microseconds as milliseconds, rounded to the microsecond.
fn milliseconds(microseconds: f64) -> f64 {
    microseconds.round() / 1_000.0
}

/// Whether the client prefers CSV: `text/csv` is acceptable (`q > 0`) and
/// at least as welcome as JSON (`application/json`, `application/*` or
/// `*/*`). Without an `Accept` header, JSON.
fn wants_csv(headers: &HeaderMap) -> bool {
    let (mut csv, mut json) = (0.0_f32, 0.0_f32);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for range in text.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|parameter| parameter.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media_type.as_str() {
                "text/csv" => csv = csv.max(quality),
                "application/json" | "application/*" | "*/*" => json = json.max(quality),
                _ => {}
            }
        }
    }
    csv > 0.0 && csv >= json
}

/// The rows as CSV (RFC 4180) with a header row: `start`, the group
/// columns asked for, `requests`, `errors`, `p50_ms`, `p95_ms`, `p99_ms`.
pub fn csv(group_by: GroupBy, rows: &[UsageRowView]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["start"];
    if group_by.key {
        header.push("key_id");
    }
    if group_by.route {
        header.extend(["method", "route"]);
    }
    if group_by.status {
        header.push("status_class");
    }
    header.extend(["requests", "errors", "p50_ms", "p95_ms", "p99_ms"]);
    writer.write_record(&header)?;
    for row in rows {
        let mut record = vec![row.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)];
        if let Some(key_id) = &row.key_id {
            record.push(key_id.clone().unwrap_or_default());
        }
        record.extend(row.method.clone());
        record.extend(row.route.clone());
        record.extend(row.status_class.clone());
        record.extend([row.requests, row.errors].map(|n| n.to_string()));
        record.extend([row.p50_ms, row.p95_ms, row.p99_ms].map(|ms| ms.to_string()));
        writer.write_record(&record)?;
    }
    writer.into_inner().map_err(|error| error.into_error().into())
}
