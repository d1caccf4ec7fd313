//! `POST /v1/events` (ingest app events, plain or CloudEvents) and
//! `GET /v1/events` (read them back, filtered and paged).
//!
//! CloudEvents 1.0 structured mode (`application/cloudevents+json`, and
//! `application/cloudevents-batch+json` for a JSON array) is accepted:
//! `type` becomes the event type, `subject` the stream, `data` the body, and
//! `source` with `id` the idempotency key (a CloudEvent is identified by the
//! pair). `specversion` must be `"1.0"`; `time` must be RFC 3339,
//! `datacontenttype` a JSON media type; `time`, `datacontenttype` and
//! `dataschema` are checked but not kept (the envelope records the server's
//! time). `data_base64` and extension attributes are refused.

use std::collections::HashSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spool_log::{Append, Cursor, NewEvent};
use spool_schemas::{AppEvent, AppEventType, Event, EventId, Scope, StreamName, TenantId};
use utoipa::{IntoParams, ToSchema};

use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::routes::{EventView, cursor, event_filter, is_app_event, query};
use crate::{AppState, Caller, DEFAULT_PAGE, MAX_BATCH_EVENTS, MAX_PAGE, Shared};

/// How many reads one page may take before it answers with what it has
/// (and `has_more`), so a sparse filter over a long log stays bounded.
const MAX_READS_PER_PAGE: usize = 100;

/// The longest client-chosen id.
const MAX_CLIENT_ID_LEN: usize = 256;

/// One app event, named with CloudEvents' attribute names.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppEventRequest {
    /// `^[a-zA-Z0-9_.-]{1,128}$`, outside Spool's namespaces (`api.`, `key.`…).
    #[serde(rename = "type")]
    #[schema(example = "order.created")]
    pub event_type: String,
    /// Any JSON; `null` when absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The stream the event belongs to, such as `order/42`; defaults to the
    /// type name. May not start with a Spool namespace and `/`.
    #[schema(example = "order/42")]
    pub subject: Option<String>,
    /// A client-chosen id (1 to 256 characters): sending the same id again
    /// stores nothing new and answers with the stored event.
    #[schema(example = "order-42-created")]
    pub id: Option<String>,
}

/// Several app events, stored atomically (all or none).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 events.
    pub events: Vec<AppEventRequest>,
}

/// The body of `POST /v1/events` (`application/json`).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Documentation only: the body is parsed by hand.
pub enum IngestRequest {
    One(AppEventRequest),
    Batch(BatchRequest),
}

/// A CloudEvents 1.0 event in structured mode.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudEventRequest {
    #[schema(example = "1.0")]
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// Refused: only JSON data is supported.
    pub data_base64: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestResponse {
    /// One per event sent, in order.
    pub events: Vec<IngestedEvent>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestedEvent {
    #[schema(value_type = String)]
    pub id: EventId,
    /// The log partition the event's stream lives in (0 on a one-partition
    /// log).
    pub partition: u32,
    /// The event's position within its partition.
    pub position: u64,
    pub stream: String,
    pub stream_version: u64,
    /// The event was already stored (a retry with the same `id`).
    pub duplicate: bool,
}

/// An event ready to append, checked.
struct Incoming {
    event_type: AppEventType,
    data: serde_json::Value,
    stream: StreamName,
    /// The idempotency key: a client-chosen id, or a CloudEvent's
    /// `source` and `id`.
    client_id: Option<ClientId>,
}

/// What identifies an event across retries. Encoded for
/// [`EventId::from_client_id`] as a JSON array tagged by kind, so that no
/// plain id can collide with a CloudEvent's pair, nor two pairs with each
/// other (`("a\nb", "c")` and `("a", "b\nc")` encode differently).
enum ClientId {
    Plain(String),
    CloudEvent { source: String, id: String },
}

impl ClientId {
    fn event_id(&self, tenant: TenantId) -> EventId {
        let key = match self {
            ClientId::Plain(id) => serde_json::json!(["id", id]),
            ClientId::CloudEvent { source, id } => serde_json::json!(["ce", source, id]),
        };
        EventId::from_client_id(tenant, &key.to_string())
    }
}

/// Ingest one app event or a batch.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "ingest_events",
    tag = "events",
    request_body(
        description = "An app event, `{\"events\": [...]}`, or a CloudEvent (`application/cloudevents+json`, `application/cloudevents-batch+json`). At most 1 MiB.",
        content(
            (IngestRequest = "application/json",
                example = json!({"type": "order.created", "subject": "order/42", "id": "order-42-created", "data": {"order": 42, "total": "19.90"}})),
            (CloudEventRequest = "application/cloudevents+json",
                example = json!({"specversion": "1.0", "id": "order-42-created", "source": "https://shop.example.com", "type": "order.created", "subject": "order/42", "data": {"order": 42}})),
            (Vec<CloudEventRequest> = "application/cloudevents-batch+json",
                example = json!([{"specversion": "1.0", "id": "order-42-created", "source": "https://shop.example.com", "type": "order.created", "subject": "order/42", "data": {"order": 42}}])),
        ),
    ),
    responses(
        (status = 201, description = "Stored (or already stored)", body = IngestResponse,
            example = json!({"events": [{"id": "evt_6373d625f1425e69b5e188349f2411a9", "partition": 0, "position": 120, "stream": "order/42", "stream_version": 1, "duplicate": false}]})),
        (status = 400, description = "Malformed JSON, or a body that could not be read", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `events:write`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported media type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid event", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["events:write"]), ("oauth2" = ["events:write"])),
)]
pub(crate) async fn ingest(
    State(state): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IngestResponse>), Problem> {
    caller.require(Scope::EventsWrite)?;
    let body = super::body_bytes(body)?;
    let incoming = parse_body(&headers, &body)?;
    let tenant = caller.tenant;

    let mut seen = HashSet::new();
    let mut events = Vec::with_capacity(incoming.len());
    for (index, event) in incoming.into_iter().enumerate() {
        let id = match &event.client_id {
            Some(client_id) => client_id.event_id(tenant),
            None => EventId::new(),
        };
        if !seen.insert(id) {
            return Err(Problem::new(
                ProblemKind::DUPLICATE_EVENT_ID,
                format!("events[{index}] repeats the id of an earlier event of the batch"),
            ));
        }
        let mut new_event = NewEvent::new(
            tenant,
            event.stream,
            Event::App(AppEvent { event_type: event.event_type, data: event.data }),
        );
        new_event.id = id;
        events.push(new_event);
    }
    let streams: Vec<String> =
        events.iter().map(|event| event.stream.as_str().to_owned()).collect();
    let appended = state.log.append(Append::new(events)).await?;
    metrics::counter!("spool_events_ingested_total")
        .increment(appended.iter().filter(|a| !a.already_stored).count() as u64);
    let mut events = Vec::with_capacity(appended.len());
    for (appended, requested_stream) in appended.into_iter().zip(streams) {
        // A retry may name another subject than the stored event has; the
        // answer describes what is stored.
        let stream = if appended.already_stored {
            let stored = state.log.find(appended.id).await?.ok_or_else(|| {
                Problem::internal(&format!("event {} is stored but not found", appended.id))
            })?;
            stored.stream.as_str().to_owned()
        } else {
            requested_stream
        };
        events.push(IngestedEvent {
            id: appended.id,
            partition: appended.partition,
            position: appended.position.0,
            stream,
            stream_version: appended.stream_version,
            duplicate: appended.already_stored,
        });
    }
    Ok((StatusCode::CREATED, Json(IngestResponse { events })))
}

enum BodyFormat {
    Plain,
    CloudEvent,
    CloudEventBatch,
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Incoming>, Problem> {
    let format = match headers.get(header::CONTENT_TYPE) {
        None => BodyFormat::Plain,
        Some(value) => {
            let essence = value
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            match essence.as_str() {
                "application/json" => BodyFormat::Plain,
                "application/cloudevents+json" => BodyFormat::CloudEvent,
                "application/cloudevents-batch+json" => BodyFormat::CloudEventBatch,
                _ => {
                    return Err(Problem::new(
                        ProblemKind::UNSUPPORTED_MEDIA_TYPE,
                        "send application/json, application/cloudevents+json or \
                         application/cloudevents-batch+json",
                    ));
                }
            }
        }
    };
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| Problem::new(ProblemKind::MALFORMED_JSON, error.to_string()))?;
    let incoming = match format {
        // A single event's errors name the field directly; a batch's say
        // which event (`events[i]: …`).
        BodyFormat::Plain if json.get("events").is_some() => {
            let requests = typed::<BatchRequest>(json, ProblemKind::INVALID_BODY)?.events;
            check_batch_size(requests.len())?;
            requests
                .into_iter()
                .enumerate()
                .map(|(index, request)| {
                    incoming_app_event(request).map_err(|problem| at_index(problem, index))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        BodyFormat::Plain => {
            vec![incoming_app_event(typed(json, ProblemKind::INVALID_BODY)?)?]
        }
        BodyFormat::CloudEvent => {
            vec![incoming_cloud_event(typed(json, ProblemKind::INVALID_CLOUDEVENT)?)?]
        }
        BodyFormat::CloudEventBatch => {
            let requests: Vec<CloudEventRequest> = typed(json, ProblemKind::INVALID_CLOUDEVENT)?;
            check_batch_size(requests.len())?;
            requests
                .into_iter()
                .enumerate()
                .map(|(index, request)| {
                    incoming_cloud_event(request).map_err(|problem| at_index(problem, index))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(incoming)
}

fn typed<T: DeserializeOwned>(json: serde_json::Value, kind: ProblemKind) -> Result<T, Problem> {
    serde_json::from_value(json).map_err(|error| Problem::new(kind, error.to_string()))
}

fn at_index(problem: Problem, index: usize) -> Problem {
    Problem::new(problem.kind, format!("events[{index}]: {}", problem.detail))
}

fn check_batch_size(n_events: usize) -> Result<(), Problem> {
    if n_events == 0 || n_events > MAX_BATCH_EVENTS {
        return Err(Problem::new(
            ProblemKind::TOO_MANY_EVENTS,
            format!("a batch holds 1 to {MAX_BATCH_EVENTS} events, this one holds {n_events}"),
        ));
    }
    Ok(())
}

fn incoming_app_event(request: AppEventRequest) -> Result<Incoming, Problem> {
    if let Some(id) = &request.id
        && (id.is_empty() || id.len() > MAX_CLIENT_ID_LEN)
    {
        return Err(Problem::new(
            ProblemKind::INVALID_BODY,
            format!("`id` must be 1 to {MAX_CLIENT_ID_LEN} bytes long"),
        ));
    }
    let (event_type, stream) = type_and_stream(request.event_type, request.subject)?;
    Ok(Incoming {
        event_type,
        data: request.data,
        stream,
        client_id: request.id.map(ClientId::Plain),
    })
}

fn incoming_cloud_event(request: CloudEventRequest) -> Result<Incoming, Problem> {
    let invalid = |detail: String| Problem::new(ProblemKind::INVALID_CLOUDEVENT, detail);
    if request.specversion != "1.0" {
        return Err(invalid(format!(
            "specversion {:?} is not supported; send \"1.0\"",
            request.specversion
        )));
    }
    if request.id.is_empty() || request.source.is_empty() {
        return Err(invalid("`id` and `source` must not be empty".to_owned()));
    }
    if request.source.len() + request.id.len() > MAX_CLIENT_ID_LEN * 4 {
        return Err(invalid("`source` and `id` are too long".to_owned()));
    }
    if request.data_base64.is_some() {
        return Err(invalid("`data_base64` is not supported; send JSON `data`".to_owned()));
    }
    if let Some(time) = &request.time {
        chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|error| invalid(format!("`time` is not RFC 3339: {error}")))?;
    }
    if request.dataschema.as_deref() == Some("") {
        return Err(invalid("`dataschema` must not be empty".to_owned()));
    }
    if let Some(content_type) = &request.datacontenttype {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(invalid(format!(
                "datacontenttype {content_type:?} is not supported; only JSON data is"
            )));
        }
    }
    let (event_type, stream) = type_and_stream(request.event_type, request.subject)?;
    Ok(Incoming {
        event_type,
        data: request.data.unwrap_or(serde_json::Value::Null),
        stream,
        client_id: Some(ClientId::CloudEvent { source: request.source, id: request.id }),
    })
}

fn type_and_stream(
    event_type: String,
    subject: Option<String>,
) -> Result<(AppEventType, StreamName), Problem> {
    let event_type = AppEventType::new(event_type)
        .map_err(|error| Problem::new(ProblemKind::INVALID_EVENT_TYPE, error.to_string()))?;
    let stream = match subject {
        None => StreamName::new(event_type.as_str()).expect("event types are stream names"),
        Some(subject) => {
            let stream = StreamName::new(subject)
                .map_err(|error| Problem::new(ProblemKind::INVALID_SUBJECT, error.to_string()))?;
            // Spool's own streams (`tenant/…`, `key/…`, `api/…`) share the
            // tenant's stream names; an app event must not join one.
            if stream.is_reserved() {
                return Err(Problem::new(
                    ProblemKind::INVALID_SUBJECT,
                    format!("subject {stream} uses a namespace reserved for Spool's own streams"),
                ));
            }
            stream
        }
    };
    Ok((event_type, stream))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Comma-separated type names or `prefix.*` patterns.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "order.*")]
    pub types: Option<String>,
    /// Only events of this stream (subject).
    pub stream: Option<String>,
    /// Start after this cursor: the `next` of the previous page. A cursor
    /// holds one position per log partition, joined by dots (`120.0.37`);
    /// on a one-partition log it is a plain position (`120`). From the
    /// start of the log by default.
    #[param(example = "120")]
    pub after: Option<String>,
    /// 1 to 1,000; 100 by default.
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// The cursor after this page: pass it as `after` to read on (also to
    /// poll for newer events). Opaque to clients; a string even on a
    /// one-partition log, where it reads as a position (`"120"`).
    #[schema(example = "120")]
    pub next: String,
    /// Whether more events may follow `next` already.
    pub has_more: bool,
}

/// The tenant's app events, oldest first.
///
/// Each log partition's events come in their order; partitions are
/// interleaved by recording time. Page with `next`: every event is on
/// exactly one page.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "list_events",
    tag = "events",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage,
            example = json!({"events": [{"id": "evt_6373d625f1425e69b5e188349f2411a9", "type": "order.created", "data": {"order": 42, "total": "19.90"}, "stream": "order/42", "stream_version": 1, "partition": 0, "position": 120, "recorded_at": "2026-03-01T10:00:00.123456Z", "livemode": true}], "next": "121", "has_more": false})),
        (status = 400, description = "Invalid query, such as a malformed `after` cursor or one for another number of partitions", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `events:read`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["events:read"]), ("oauth2" = ["events:read"])),
)]
pub(crate) async fn list(
    State(state): State<Shared>,
    caller: Caller,
    list_query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EventPage>, Problem> {
    caller.require(Scope::EventsRead)?;
    let list_query = query(list_query)?;
    let limit = list_query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::new(
            ProblemKind::INVALID_QUERY,
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let filter =
        event_filter(caller.tenant, list_query.types.as_deref(), list_query.stream.as_deref())?;
    let after = match &list_query.after {
        Some(text) => cursor(text, &*state.log, "after")?,
        None => Cursor::start(state.log.partitions()),
    };
    let page = read_page(&state, caller.tenant, filter, &after, limit).await?;
    Ok(Json(page))
}

async fn read_page(
    state: &AppState,
    tenant: TenantId,
    filter: spool_log::Filter,
    after: &Cursor,
    limit: usize,
) -> Result<EventPage, Problem> {
    debug_assert_eq!(filter.tenant, Some(tenant));
    let page = spool_log::read_page_where(
        &*state.log,
        after,
        limit,
        &filter,
        MAX_READS_PER_PAGE,
        is_app_event,
    )
    .await?;
    let events = page.events.into_iter().map(EventView::from_stored).collect::<Result<_, _>>()?;
    Ok(EventPage { events, next: page.next.to_string(), has_more: page.more })
}
