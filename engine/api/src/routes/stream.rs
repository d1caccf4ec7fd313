//! `GET /v1/events/stream`: the tenant's app events as Server-Sent Events,
//! live. Each SSE event carries `id: <position>`, `event: <type>` and the
//! event as JSON; a client that reconnects with `Last-Event-ID` resumes
//! right after the last event it saw.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use spool_schemas::{Position, Scope};
use utoipa::IntoParams;

use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::routes::{EventView, event_filter, is_app_event, query};
use crate::{AppState, Caller};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated type names or `prefix.*` patterns.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "order.*")]
    pub types: Option<String>,
    /// Only events of this stream (subject).
    pub stream: Option<String>,
    /// Start after this position; without it (and without
    /// `Last-Event-ID`) the stream starts at the current end of the log.
    pub after: Option<u64>,
}

/// Follow the tenant's app events live.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position; overrides `after`"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id: <position>`, `event: <type>`, `data: <event JSON>`; keep-alive comments while idle", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid query or Last-Event-ID", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `events:read`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    stream_query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    caller.require(Scope::EventsRead)?;
    let stream_query = query(stream_query)?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            Some(value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok()).ok_or_else(
                || {
                    Problem::new(
                        ProblemKind::INVALID_QUERY,
                        "Last-Event-ID must be an event position (a number)",
                    )
                },
            )?)
        }
    };
    let filter =
        event_filter(caller.tenant, stream_query.types.as_deref(), stream_query.stream.as_deref())?;
    let after = match last_event_id.or(stream_query.after) {
        Some(position) => Position(position),
        None => *state.log.head().borrow(),
    };

    let mut shutdown = state.shutdown.clone();
    let stopped = async move {
        // Also ends when the sender is gone: the server is stopping either way.
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    };
    let events = spool_log::tail(state.log.clone(), after, filter)
        .take_until(stopped)
        .filter_map(|event| async move {
            match event {
                Ok(event) if is_app_event(&event) => Some(event),
                Ok(_) => None,
                Err(error) => {
                    tracing::error!(%error, "event stream failed");
                    None
                }
            }
        })
        .filter_map(|event| async move {
            let position = event.position;
            let event_type = event.type_name.clone();
            let view = EventView::from_stored(event).ok()?;
            let sse = SseEvent::default()
                .id(position.to_string())
                .event(event_type)
                .json_data(view)
                .ok()?;
            Some(Ok(sse))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.options.sse_keep_alive)))
}
