//! `GET /v1/events/stream`: the tenant's app events as Server-Sent Events,
//! live. Each SSE event carries `id: <cursor>`, `event: <type>` and the
//! event as JSON; a client that reconnects with `Last-Event-ID` resumes
//! right after the last event it saw.
//!
//! The log is partitioned and each partition has its own positions, so an
//! SSE id is a [`Cursor`]: one position per partition, the stream's start
//! cursor with the partition of every event delivered so far set to that
//! event's position. Resuming from it delivers exactly the events not yet
//! seen, whichever partitions they are in. On a one-partition log the id is
//! the event's position.
//!
//! The stream ends when the server stops, when its credential ends (the
//! key's expiry, the end of a rolled secret's grace period, the access
//! token's `exp`), or within [`crate::ApiOptions::sse_key_recheck`] (2 s)
//! of the key being revoked or rolled (or the token revoked, or its client
//! deleted).
//! An event that cannot be shown, or a failed read of the log, ends it with
//! one `event: error` whose data is a problem document naming the position;
//! no event is ever skipped silently.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use chrono::Utc;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use spool_log::{Cursor, StoredEvent};
use spool_schemas::Scope;
use utoipa::IntoParams;

use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::routes::{EventView, cursor, event_filter, is_app_event, query};
use crate::{Caller, Shared, auth};

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
    /// Start after this cursor: an SSE event's `id`, or a page's `next`
    /// (`120.0.37`, one position per log partition; `120` on a
    /// one-partition log). Without it (and without `Last-Event-ID`) the
    /// stream starts at the current end of the log.
    #[param(example = "120")]
    pub after: Option<String>,
}

/// Follow the tenant's app events live.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor: the `id` of the last SSE event received; overrides `after`"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id: <cursor>` (where to resume after this event), `event: <type>`, `data: <event JSON>`; keep-alive comments while idle. Ends at the credential's end (the key's expiry, the token's `exp`, the end of a rolled secret's grace period) and within 2 s of a revocation, a roll without grace, or the deletion of the token's client; a failure ends it with `event: error` and a problem document as data", content_type = "text/event-stream", body = String,
            example = json!("id: 120\nevent: order.created\ndata: {\"id\":\"evt_6373d625f1425e69b5e188349f2411a9\",\"type\":\"order.created\",\"data\":{\"order\":42},\"stream\":\"order/42\",\"stream_version\":1,\"partition\":0,\"position\":120,\"recorded_at\":\"2026-03-01T10:00:00.123456Z\",\"livemode\":true}\n\n: keep-alive\n\n")),
        (status = 400, description = "Invalid query, or a malformed `after` or `Last-Event-ID` cursor (or one for another number of partitions)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `events:read`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["events:read"]), ("oauth2" = ["events:read"])),
)]
pub(crate) async fn stream(
    State(state): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    stream_query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    caller.require(Scope::EventsRead)?;
    let stream_query = query(stream_query)?;
    let log = &*state.log;
    // Both are checked, though `Last-Event-ID` wins: a malformed `after`
    // is a client bug worth reporting even on a reconnect.
    let after = match &stream_query.after {
        Some(text) => Some(cursor(text, log, "after")?),
        None => None,
    };
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                Problem::new(
                    ProblemKind::INVALID_QUERY,
                    "Last-Event-ID: a cursor is positions separated by dots, such as \"120\"",
                )
            })?;
            Some(cursor(text, log, "Last-Event-ID")?)
        }
    };
    let filter =
        event_filter(caller.tenant, stream_query.types.as_deref(), stream_query.stream.as_deref())?;
    let after = last_event_id.or(after).unwrap_or_else(|| Cursor::heads(log));

    let mut shutdown = state.shutdown.clone();
    let server_stopping = async move {
        // Also ends when the sender is gone: the server is stopping either way.
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    };
    let key_invalid = key_invalid(state.clone(), caller);
    let ended = futures::future::select(Box::pin(server_stopping), Box::pin(key_invalid));
    let events = spool_log::tail(state.log.clone(), after.clone(), filter)
        .take_until(ended)
        .filter(|event| {
            futures::future::ready(match event {
                Ok(event) => is_app_event(event),
                Err(_) => true,
            })
        })
        // The state is the cursor of the events delivered so far, `None`
        // once an error was sent: the stream ends then rather than skip an
        // event.
        .scan(Some(after), |delivered, event| {
            let Some(last) = delivered.take() else {
                return futures::future::ready(None);
            };
            let sse = match event {
                Ok(event) => {
                    let (partition, position) = (event.partition, event.position);
                    let mut next = last;
                    next.set(partition, position);
                    match render(event, &next) {
                        Ok(sse) => {
                            *delivered = Some(next);
                            sse
                        }
                        Err(problem) => error_event(&Problem::new(
                            problem.kind,
                            format!(
                                "the event at position {position} of partition {partition} \
                                 cannot be shown; the stream ends before it"
                            ),
                        )),
                    }
                }
                Err(error) => {
                    tracing::error!(%error, after = %last, "event stream failed");
                    error_event(&Problem::new(
                        ProblemKind::INTERNAL,
                        format!(
                            "reading the log after cursor {last} failed; reconnect with \
                             Last-Event-ID: {last} to resume"
                        ),
                    ))
                }
            };
            futures::future::ready(Some(Ok(sse)))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.options.sse_keep_alive)))
}

/// One event as an SSE event: `id: <cursor>` (`after`, the cursor once
/// this event is delivered), `event: <type>`, the view.
fn render(event: StoredEvent, after: &Cursor) -> Result<SseEvent, Problem> {
    let (partition, position) = (event.partition, event.position);
    let event_type = event.type_name.clone();
    let view = EventView::from_stored(event)?;
    SseEvent::default().id(after.to_string()).event(event_type).json_data(view).map_err(|error| {
        Problem::internal(&format!(
            "event at position {position} of partition {partition} cannot be rendered: {error}"
        ))
    })
}

/// `event: error` with a problem document, the stream's last message.
fn error_event(problem: &Problem) -> SseEvent {
    let body = serde_json::to_string(&problem.body()).expect("problems serialize");
    SseEvent::default().event("error").data(body)
}

/// Resolves once the caller's credential stops authenticating: when its
/// end has passed (a key's expiry, a rolled secret's grace, a token's
/// `exp`), or at the first periodic check that finds it revoked, rolled
/// away, deleted (or cannot tell). Each check also learns the end anew,
/// since a roll after the stream opened brings it closer.
async fn key_invalid(state: Shared, caller: Caller) {
    let interval = state.options.sse_key_recheck;
    let mut ends_at = caller.expires_at;
    loop {
        let until_end = match ends_at {
            None => None,
            Some(ends_at) => match (ends_at - Utc::now()).to_std() {
                Ok(left) if !left.is_zero() => Some(left),
                // Ended: stop here rather than ask the read model again,
                // which may not know (a token's expiry is its own).
                _ => {
                    tracing::info!(key = %caller.key_id, %ends_at, "ending an event stream: ended");
                    return;
                }
            },
        };
        tokio::time::sleep(until_end.map_or(interval, |left| left.min(interval))).await;
        match auth::recheck(&state, &caller).await {
            Ok(end) => ends_at = end,
            Err(problem) => {
                tracing::info!(key = %caller.key_id, reason = %problem, "ending an event stream");
                return;
            }
        }
    }
}
