//! `GET /v1/stats/events`: per-minute counts of the tenant's events, from
//! the `event_counts` read model. Every type is counted, Spool's own
//! (`api.call`, `key.created`…) included, since they are the tenant's usage
//! too; the `type` parameter takes app type names and patterns, as
//! `GET /v1/events` does.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spool_projections::event_counts::{self, EventCountsQuery};
use spool_schemas::Scope;
use utoipa::{IntoParams, ToSchema};

use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::routes::{query, type_filter};
use crate::{Caller, Shared};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// RFC 3339; minutes starting at or after this instant.
    #[param(value_type = Option<String>, example = "2026-01-01T00:00:00Z")]
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339; minutes starting before this instant.
    #[param(value_type = Option<String>, example = "2026-01-02T00:00:00Z")]
    pub to: Option<DateTime<Utc>>,
    /// Only this app event type, or `prefix.*` for a family of them.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "order.*")]
    pub event_type: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventCounts {
    pub counts: Vec<MinuteCountView>,
}

#[derive(Serialize, ToSchema)]
pub struct MinuteCountView {
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub count: u64,
}

/// Per-minute event counts.
///
/// Counts every event of the caller's tenant, including Spool's own records
/// of it (such as `api.call`, one per API request, and `key.created`);
/// filter with `type` to see app events only. `type` takes one app event
/// type name or `prefix.*` pattern, validated as `GET /v1/events` does.
#[utoipa::path(
    get,
    path = "/v1/stats/events",
    tag = "stats",
    params(StatsQuery),
    responses(
        (status = 200, description = "Counts per minute and type", body = EventCounts,
            example = json!({"counts": [{"minute": "2026-03-01T10:00:00Z", "type": "order.created", "count": 42}]})),
        (status = 400, description = "Invalid query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `events:read`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["events:read"]), ("oauth2" = ["events:read"])),
)]
pub(crate) async fn event_counts(
    State(state): State<Shared>,
    caller: Caller,
    stats_query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<EventCounts>, Problem> {
    caller.require(Scope::EventsRead)?;
    let stats_query = query(stats_query)?;
    if let Some(pattern) = &stats_query.event_type {
        type_filter(pattern)?;
    }
    if let (Some(from), Some(to)) = (stats_query.from, stats_query.to)
        && from > to
    {
        return Err(Problem::new(ProblemKind::INVALID_QUERY, "`from` must not be after `to`"));
    }
    let counts = event_counts::query(
        &state.views,
        caller.tenant,
        &EventCountsQuery {
            from: stats_query.from,
            to: stats_query.to,
            event_type: stats_query.event_type.map(|pattern| pattern.trim().to_owned()),
        },
    )
    .await?;
    let counts = counts
        .into_iter()
        .map(|count| MinuteCountView {
            minute: count.minute,
            event_type: count.event_type,
            count: count.count,
        })
        .collect();
    Ok(Json(EventCounts { counts }))
}
