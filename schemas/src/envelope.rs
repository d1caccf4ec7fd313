//! The envelope every stored event travels in.
//!
//! Its JSON form is flat: the envelope's own fields beside `type`, `v` and
//! `data`, so any Kafka client or `jq` reads it without knowing Rust.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::ids::{EventId, TenantId};
use crate::names::StreamName;

/// Where an event sits in the log: gap-free and totally ordered. The first
/// stored event is at position 1.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event: reading "after ZERO" reads from the start.
    pub const ZERO: Position = Position(0);

    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One event with everything the log knows about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub id: EventId,
    pub tenant: TenantId,
    /// The aggregate the event belongs to, within its tenant.
    pub stream: StreamName,
    /// 1 for the first event of a stream, then gap-free.
    pub stream_version: u64,
    pub recorded_at: DateTime<Utc>,
    /// The event that caused this one, if any.
    pub causation_id: Option<EventId>,
    /// The event that started the chain this one belongs to, if any.
    pub correlation_id: Option<EventId>,
    /// Set once the event is stored.
    pub position: Option<Position>,
    pub event: Event,
}

/// The JSON shape of [`Envelope`]. Kept private so that the Rust type and
/// the wire format change only together, and the JSON Schema is generated
/// from exactly what is serialized.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Spool event envelope")]
pub(crate) struct EnvelopeJson {
    id: EventId,
    tenant: TenantId,
    stream: StreamName,
    #[schemars(range(min = 1))]
    stream_version: u64,
    recorded_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causation_id: Option<EventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<EventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
    /// Spool's dotted type name (see the per-type schemas) or an app event's own.
    #[serde(rename = "type")]
    type_name: String,
    /// The payload version.
    v: u32,
    /// The payload, described by the schema of its type.
    data: serde_json::Value,
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EnvelopeJson {
            id: self.id,
            tenant: self.tenant,
            stream: self.stream.clone(),
            stream_version: self.stream_version,
            recorded_at: self.recorded_at,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            position: self.position,
            type_name: self.event.type_name().to_owned(),
            v: self.event.version(),
            data: self.event.data_value(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = EnvelopeJson::deserialize(deserializer)?;
        let event = Event::decode_value(&json.type_name, json.v, json.data)
            .map_err(serde::de::Error::custom)?;
        Ok(Envelope {
            id: json.id,
            tenant: json.tenant,
            stream: json.stream,
            stream_version: json.stream_version,
            recorded_at: json.recorded_at,
            causation_id: json.causation_id,
            correlation_id: json.correlation_id,
            position: json.position,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ApiCall, AppEvent};
    use crate::names::AppEventType;

    fn envelope(event: Event) -> Envelope {
        Envelope {
            id: EventId::new(),
            tenant: TenantId::new(),
            stream: StreamName::new("order/1").unwrap(),
            stream_version: 3,
            recorded_at: "2026-11-21T10:00:00.123456Z".parse().unwrap(),
            causation_id: None,
            correlation_id: Some(EventId::new()),
            position: Some(Position(42)),
            event,
        }
    }

    #[test]
    fn envelopes_round_trip_through_flat_json() {
        let app = envelope(Event::App(AppEvent {
            event_type: AppEventType::new("order.created").unwrap(),
            data: serde_json::json!({"total": 12.5, "lines": [1, 2]}),
        }));
        let call = envelope(Event::ApiCall(ApiCall {
            key_id: None,
            client_id: None,
            method: "POST".into(),
            route: "/v1/events".into(),
            status: 401,
            latency_us: 120,
        }));
        for original in [app, call] {
            let json = serde_json::to_value(&original).unwrap();
            assert_eq!(json["type"], original.event.type_name());
            assert_eq!(json["position"], 42);
            assert!(json.get("causation_id").is_none(), "absent ids are omitted: {json}");
            let back: Envelope = serde_json::from_value(json).unwrap();
            assert_eq!(back, original);
        }
    }

    #[test]
    fn an_envelope_with_an_unknown_field_is_refused() {
        let mut json = serde_json::to_value(envelope(Event::App(AppEvent {
            event_type: AppEventType::new("x").unwrap(),
            data: serde_json::Value::Null,
        })))
        .unwrap();
        json["extra"] = serde_json::json!(1);
        let error = serde_json::from_value::<Envelope>(json).unwrap_err();
        assert!(error.to_string().contains("extra"), "{error}");
    }
}
