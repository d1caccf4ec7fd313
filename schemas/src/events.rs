//! The closed set of event payloads and how each is named and versioned.
//!
//! Stored and on the wire an event is three fields: `type` (a dotted name),
//! `v` (the payload version) and `data` (the payload). Spool's own payloads
//! are structs; an app event is the customer's type name and JSON body.
//! Decoding goes through [`Event::decode`], the one place where an old
//! payload version is upgraded (see `compat`) before it is read.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::compat;
use crate::ids::KeyId;
use crate::names::{AppEventType, Scope};

/// A Spool payload: its dotted type name and current version.
pub trait Payload: Serialize + DeserializeOwned + JsonSchema {
    const TYPE: &'static str;
    const VERSION: u32;
}

/// A tenant came into being.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreated {
    pub name: String,
}

/// An API key was issued. Only the SHA-256 of the secret is recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreated {
    pub key_id: KeyId,
    pub name: String,
    /// Lowercase hex SHA-256 of the whole key text.
    pub secret_hash: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key stopped being valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRevoked {
    pub key_id: KeyId,
}

/// One request to the public API, successful or not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiCall {
    /// The key that authenticated the request; absent when none did.
    pub key_id: Option<KeyId>,
    pub method: String,
    /// The route template, such as `/v1/events/{id}`, never the raw path.
    pub route: String,
    pub status: u16,
    pub latency_us: u64,
}

/// An event a customer sent: their own type name and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct AppEvent {
    pub event_type: AppEventType,
    pub data: serde_json::Value,
}

impl Payload for TenantCreated {
    const TYPE: &'static str = "tenant.created";
    const VERSION: u32 = 1;
}

impl Payload for KeyCreated {
    const TYPE: &'static str = "key.created";
    // v1 had neither scopes nor expiry; see `compat`.
    const VERSION: u32 = 2;
}

impl Payload for KeyRevoked {
    const TYPE: &'static str = "key.revoked";
    const VERSION: u32 = 1;
}

impl Payload for ApiCall {
    const TYPE: &'static str = "api.call";
    const VERSION: u32 = 1;
}

/// The version every app event is stored with. The body is the customer's;
/// Spool never upgrades it.
pub const APP_EVENT_VERSION: u32 = 1;

/// Every event Spool stores.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    TenantCreated(TenantCreated),
    KeyCreated(KeyCreated),
    KeyRevoked(KeyRevoked),
    ApiCall(ApiCall),
    App(AppEvent),
}

/// A stored event that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event type {0:?} is neither one of Spool's nor a valid app event type")]
    UnknownType(String),
    #[error("{type_name} v{version} is newer than this build understands (v{known})")]
    FutureVersion { type_name: String, version: u32, known: u32 },
    #[error("{type_name} v{version} has no upgrade to the next version")]
    NoUpgrade { type_name: String, version: u32 },
    #[error("{type_name} v{version} payload is malformed: {source}")]
    Malformed {
        type_name: String,
        version: u32,
        #[source]
        source: serde_json::Error,
    },
}

impl Event {
    /// The type names of Spool's own payloads, for schema generation and docs.
    pub const SPOOL_TYPES: [&'static str; 4] =
        [TenantCreated::TYPE, KeyCreated::TYPE, KeyRevoked::TYPE, ApiCall::TYPE];

    pub fn type_name(&self) -> &str {
        match self {
            Event::TenantCreated(_) => TenantCreated::TYPE,
            Event::KeyCreated(_) => KeyCreated::TYPE,
            Event::KeyRevoked(_) => KeyRevoked::TYPE,
            Event::ApiCall(_) => ApiCall::TYPE,
            Event::App(app) => app.event_type.as_str(),
        }
    }

    pub fn version(&self) -> u32 {
        match self {
            Event::TenantCreated(_) => TenantCreated::VERSION,
            Event::KeyCreated(_) => KeyCreated::VERSION,
            Event::KeyRevoked(_) => KeyRevoked::VERSION,
            Event::ApiCall(_) => ApiCall::VERSION,
            Event::App(_) => APP_EVENT_VERSION,
        }
    }

    /// The payload as JSON text, as stored in the log.
    pub fn data_json(&self) -> String {
        let result = match self {
            Event::TenantCreated(p) => serde_json::to_string(p),
            Event::KeyCreated(p) => serde_json::to_string(p),
            Event::KeyRevoked(p) => serde_json::to_string(p),
            Event::ApiCall(p) => serde_json::to_string(p),
            Event::App(app) => serde_json::to_string(&app.data),
        };
        // Our payloads hold only strings, numbers and ids, and a `Value`
        // always serializes, so this cannot fail.
        result.expect("event payloads always serialize")
    }

    /// The payload as a JSON value, for the wire.
    pub fn data_value(&self) -> serde_json::Value {
        let result = match self {
            Event::TenantCreated(p) => serde_json::to_value(p),
            Event::KeyCreated(p) => serde_json::to_value(p),
            Event::KeyRevoked(p) => serde_json::to_value(p),
            Event::ApiCall(p) => serde_json::to_value(p),
            Event::App(app) => Ok(app.data.clone()),
        };
        result.expect("event payloads always serialize")
    }

    /// Reads a stored payload, upgrading old versions first.
    pub fn decode(type_name: &str, version: u32, data: &str) -> Result<Event, DecodeError> {
        Ok(match type_name {
            TenantCreated::TYPE => Event::TenantCreated(decode_payload(version, data)?),
            KeyCreated::TYPE => Event::KeyCreated(decode_payload(version, data)?),
            KeyRevoked::TYPE => Event::KeyRevoked(decode_payload(version, data)?),
            ApiCall::TYPE => Event::ApiCall(decode_payload(version, data)?),
            other => {
                let event_type = AppEventType::new(other)
                    .map_err(|_| DecodeError::UnknownType(other.to_owned()))?;
                let data = serde_json::from_str(data).map_err(|source| DecodeError::Malformed {
                    type_name: other.to_owned(),
                    version,
                    source,
                })?;
                Event::App(AppEvent { event_type, data })
            }
        })
    }

    /// Like [`Event::decode`], from a payload already parsed as JSON.
    pub fn decode_value(
        type_name: &str,
        version: u32,
        data: serde_json::Value,
    ) -> Result<Event, DecodeError> {
        // Small payloads; going through text keeps one decoding path.
        Event::decode(type_name, version, &data.to_string())
    }
}

fn decode_payload<P: Payload>(version: u32, data: &str) -> Result<P, DecodeError> {
    let malformed =
        |source| DecodeError::Malformed { type_name: P::TYPE.to_owned(), version, source };
    if version == P::VERSION {
        return serde_json::from_str(data).map_err(malformed);
    }
    if version > P::VERSION {
        return Err(DecodeError::FutureVersion {
            type_name: P::TYPE.to_owned(),
            version,
            known: P::VERSION,
        });
    }
    let old: serde_json::Value = serde_json::from_str(data).map_err(malformed)?;
    let upgraded = compat::upgrade(P::TYPE, version, P::VERSION, old)?;
    serde_json::from_value(upgraded).map_err(malformed)
}
