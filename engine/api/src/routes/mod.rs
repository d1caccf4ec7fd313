//! The handlers, one module per resource, and what they share: the event
//! view of the wire format, filter and cursor parsing, and query-string
//! errors.

pub mod events;
pub mod keys;
pub mod ops;
pub mod rate_limits;
pub mod stats;
pub mod stream;
pub mod usage;

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, QueryRejection};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spool_log::{Cursor, Filter, Log, StoredEvent, TypeFilter};
use spool_schemas::{AppEventType, EventId, StreamName, TenantId};
use utoipa::ToSchema;

use crate::MAX_BODY_BYTES;
use crate::problem::{Problem, ProblemKind};

/// The request body: `413` past [`MAX_BODY_BYTES`], `400` when it could
/// not be read to its end.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            Problem::new(
                ProblemKind::BODY_TOO_LARGE,
                format!("the request body may hold at most {MAX_BODY_BYTES} bytes"),
            )
        }
        // The client sent a body that could not be read to its end (a
        // broken chunked encoding, a connection reset): not a size problem.
        BytesRejection::FailedToBufferBody(_) => {
            Problem::new(ProblemKind::UNREADABLE_BODY, "the request body could not be read")
        }
        other => Problem::new(ProblemKind::INVALID_BODY, other.body_text()),
    })
}

/// A JSON body as `T`: `400` when it is not JSON, `422` when it is not a
/// `T`, naming the field at fault (`grace_period_seconds: invalid value…`),
/// which serde's own message does not.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    parse_json(&body_bytes(body)?)
}

/// Like [`json_body`], for bodies that may be left out: `None` when empty.
pub(crate) fn optional_json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, Problem> {
    let body = body_bytes(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_json(&body).map(Some)
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| Problem::new(ProblemKind::MALFORMED_JSON, error.to_string()))?;
    serde_path_to_error::deserialize(json).map_err(|error| {
        let detail = match error.path().to_string().as_str() {
            "." => error.into_inner().to_string(),
            path => format!("{path}: {}", error.into_inner()),
        };
        Problem::new(ProblemKind::INVALID_BODY, detail)
    })
}

/// An event as the API shows it: the envelope's fields, flat.
#[derive(Serialize, ToSchema)]
pub struct EventView {
    #[schema(value_type = String, example = "evt_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")]
    pub id: EventId,
    /// The log partition the event's stream lives in (0 on a one-partition
    /// log). Order and positions are per partition.
    pub partition: u32,
    /// The event's position within its partition, from 1 and gap-free.
    pub position: u64,
    #[serde(rename = "type")]
    #[schema(example = "order.created")]
    pub event_type: String,
    /// The stream (the event's subject) within the tenant.
    pub stream: String,
    pub stream_version: u64,
    pub recorded_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub causation_id: Option<EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub correlation_id: Option<EventId>,
    /// The body the client sent.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Whether the event is live data (`false`: sent with a test-mode key,
    /// visible to test-mode keys only).
    pub livemode: bool,
}

impl EventView {
    pub(crate) fn from_stored(event: StoredEvent) -> Result<EventView, Problem> {
        let data = serde_json::from_str(&event.data).map_err(|error| {
            Problem::internal(&format!(
                "stored event at position {} of partition {} has malformed data: {error}",
                event.position, event.partition
            ))
        })?;
        Ok(EventView {
            id: event.id,
            partition: event.partition,
            position: event.position.0,
            event_type: event.type_name,
            stream: event.stream.as_str().to_owned(),
            stream_version: event.stream_version,
            recorded_at: event.recorded_at,
            causation_id: event.causation_id,
            correlation_id: event.correlation_id,
            data,
            livemode: !event.tenant.is_test(),
        })
    }
}

/// The API shows app events only: Spool's own events (keys, tenants,
/// `api.call` records) live in the same log but are not part of this view.
pub(crate) fn is_app_event(event: &StoredEvent) -> bool {
    AppEventType::new(event.type_name.as_str()).is_ok()
}

/// The query string, or a `400` naming what is wrong with it.
pub(crate) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| Problem::new(ProblemKind::INVALID_QUERY, rejection.body_text()))
}

/// `text` as a cursor of the log (one position per partition, `"120"` on a
/// one-partition log, `"120.0.37"` on three), or a `400` naming `source`
/// (the parameter or header it came from) and what is wrong with it.
pub(crate) fn cursor(text: &str, log: &dyn Log, source: &str) -> Result<Cursor, Problem> {
    Cursor::parse_for(text.trim(), log).map_err(|error| {
        let reason = match error {
            spool_log::Error::Invalid(reason) => reason,
            other => other.to_string(),
        };
        Problem::new(ProblemKind::INVALID_QUERY, format!("{source}: {reason}"))
    })
}

/// The filter of the event routes: the caller's tenant, an optional stream,
/// and a comma-separated list of type names or `prefix.*` patterns.
pub(crate) fn event_filter(
    tenant: TenantId,
    types: Option<&str>,
    stream: Option<&str>,
) -> Result<Filter, Problem> {
    let mut filter = Filter::tenant(tenant);
    if let Some(stream) = stream {
        filter.stream = Some(
            StreamName::new(stream)
                .map_err(|error| Problem::new(ProblemKind::INVALID_QUERY, error.to_string()))?,
        );
    }
    for pattern in types.into_iter().flat_map(|types| types.split(',')) {
        filter.types.push(type_filter(pattern)?);
    }
    Ok(filter)
}

/// One app event type name or `prefix.*` pattern, or a `400`.
pub(crate) fn type_filter(pattern: &str) -> Result<TypeFilter, Problem> {
    let pattern = pattern.trim();
    let type_filter = TypeFilter::parse(pattern);
    // A prefix is checked as a name that starts with it, so `order.*`
    // passes and `api.*` (a Spool namespace) does not.
    let example = match &type_filter {
        TypeFilter::Exact(name) => name.clone(),
        TypeFilter::Prefix(prefix) => format!("{prefix}x"),
    };
    AppEventType::new(example).map_err(|error| {
        Problem::new(ProblemKind::INVALID_QUERY, format!("type filter {pattern:?}: {}", error.rule))
    })?;
    Ok(type_filter)
}
