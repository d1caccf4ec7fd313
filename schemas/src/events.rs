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
use crate::ids::{ClientId, KeyId, SigningKeyId, TokenId};
use crate::names::{AppEventType, Scope};
use crate::rate_limits::{RateLimitKeyAssigned, RateLimitKeyLimitSet, RateLimitTierSet};

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

/// An API key got a new secret. Its earlier secrets keep working until
/// `previous_secrets_expire_at` (the end of the grace period the caller
/// asked for; an earlier end an old secret already had stays), so clients
/// can move to the new secret without downtime. Only the SHA-256 of the new
/// secret is recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRolled {
    pub key_id: KeyId,
    /// Lowercase hex SHA-256 of the whole new key text.
    pub secret_hash: String,
    /// When every earlier secret of the key stops authenticating.
    pub previous_secrets_expire_at: DateTime<Utc>,
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
    /// The API key that authenticated the request; absent when none did
    /// (no valid credential, or an OAuth access token).
    pub key_id: Option<KeyId>,
    /// The OAuth client whose access token authenticated the request.
    pub client_id: Option<ClientId>,
    pub method: String,
    /// The route template, such as `/v1/events/{id}`, never the raw path.
    pub route: String,
    pub status: u16,
    pub latency_us: u64,
}

/// An OAuth 2.0 client was registered for the client credentials grant.
/// Only the SHA-256 of its secret is recorded. Stream `oauth/<client_id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientCreated {
    pub client_id: ClientId,
    pub name: String,
    /// Lowercase hex SHA-256 of the whole client secret.
    pub secret_hash: String,
    /// What its tokens may carry; a token request may ask for fewer.
    pub scopes: Vec<Scope>,
}

/// An OAuth client was deleted: it gets no more tokens, and the tokens it
/// holds stop working. Stream `oauth/<client_id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientDeleted {
    pub client_id: ClientId,
}

/// A server instance published the public half of a key it signs access
/// tokens with; the private half never leaves that instance's memory.
/// Tenant: the system tenant. Stream `oauth/<kid>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthSigningKeyPublished {
    pub kid: SigningKeyId,
    pub jwk: PublicJwk,
    /// The instance signs nothing with the key from this instant on.
    pub signs_until: DateTime<Utc>,
    /// Every token the key signed has expired by then (`signs_until` plus
    /// the token lifetime), so verifiers may forget the key.
    pub verify_until: DateTime<Utc>,
}

/// The public part of a signing key as a JSON Web Key (RFC 7517, RFC 8037):
/// `{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": <base64url>}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub alg: String,
    /// The public key, base64url without padding.
    pub x: String,
}

/// An access token was revoked before it expired. Only its id and expiry
/// are recorded, never its text. Stream: its client's `oauth/<client_id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthTokenRevoked {
    pub jti: TokenId,
    /// The token's own expiry; past it, the revocation no longer matters.
    pub exp: DateTime<Utc>,
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

impl Payload for KeyRolled {
    const TYPE: &'static str = "key.rolled";
    const VERSION: u32 = 1;
}

impl Payload for KeyRevoked {
    const TYPE: &'static str = "key.revoked";
    const VERSION: u32 = 1;
}

impl Payload for ApiCall {
    const TYPE: &'static str = "api.call";
    // v1 had no client_id; see `compat`.
    const VERSION: u32 = 2;
}

impl Payload for OAuthClientCreated {
    const TYPE: &'static str = "oauth.client_created";
    const VERSION: u32 = 1;
}

impl Payload for OAuthClientDeleted {
    const TYPE: &'static str = "oauth.client_deleted";
    const VERSION: u32 = 1;
}

impl Payload for OAuthSigningKeyPublished {
    const TYPE: &'static str = "oauth.signing_key_published";
    const VERSION: u32 = 1;
}

impl Payload for OAuthTokenRevoked {
    const TYPE: &'static str = "oauth.token_revoked";
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
    KeyRolled(KeyRolled),
    KeyRevoked(KeyRevoked),
    ApiCall(ApiCall),
    OAuthClientCreated(OAuthClientCreated),
    OAuthClientDeleted(OAuthClientDeleted),
    OAuthSigningKeyPublished(OAuthSigningKeyPublished),
    OAuthTokenRevoked(OAuthTokenRevoked),
    RateLimitTierSet(RateLimitTierSet),
    RateLimitKeyAssigned(RateLimitKeyAssigned),
    RateLimitKeyLimitSet(RateLimitKeyLimitSet),
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
    pub const SPOOL_TYPES: [&'static str; 12] = [
        TenantCreated::TYPE,
        KeyCreated::TYPE,
        KeyRolled::TYPE,
        KeyRevoked::TYPE,
        ApiCall::TYPE,
        OAuthClientCreated::TYPE,
        OAuthClientDeleted::TYPE,
        OAuthSigningKeyPublished::TYPE,
        OAuthTokenRevoked::TYPE,
        RateLimitTierSet::TYPE,
        RateLimitKeyAssigned::TYPE,
        RateLimitKeyLimitSet::TYPE,
    ];

    pub fn type_name(&self) -> &str {
        match self {
            Event::TenantCreated(_) => TenantCreated::TYPE,
            Event::KeyCreated(_) => KeyCreated::TYPE,
            Event::KeyRolled(_) => KeyRolled::TYPE,
            Event::KeyRevoked(_) => KeyRevoked::TYPE,
            Event::ApiCall(_) => ApiCall::TYPE,
            Event::OAuthClientCreated(_) => OAuthClientCreated::TYPE,
            Event::OAuthClientDeleted(_) => OAuthClientDeleted::TYPE,
            Event::OAuthSigningKeyPublished(_) => OAuthSigningKeyPublished::TYPE,
            Event::OAuthTokenRevoked(_) => OAuthTokenRevoked::TYPE,
            Event::RateLimitTierSet(_) => RateLimitTierSet::TYPE,
            Event::RateLimitKeyAssigned(_) => RateLimitKeyAssigned::TYPE,
            Event::RateLimitKeyLimitSet(_) => RateLimitKeyLimitSet::TYPE,
            Event::App(app) => app.event_type.as_str(),
        }
    }

    pub fn version(&self) -> u32 {
        match self {
            Event::TenantCreated(_) => TenantCreated::VERSION,
            Event::KeyCreated(_) => KeyCreated::VERSION,
            Event::KeyRolled(_) => KeyRolled::VERSION,
            Event::KeyRevoked(_) => KeyRevoked::VERSION,
            Event::ApiCall(_) => ApiCall::VERSION,
            Event::OAuthClientCreated(_) => OAuthClientCreated::VERSION,
            Event::OAuthClientDeleted(_) => OAuthClientDeleted::VERSION,
            Event::OAuthSigningKeyPublished(_) => OAuthSigningKeyPublished::VERSION,
            Event::OAuthTokenRevoked(_) => OAuthTokenRevoked::VERSION,
            Event::RateLimitTierSet(_) => RateLimitTierSet::VERSION,
            Event::RateLimitKeyAssigned(_) => RateLimitKeyAssigned::VERSION,
            Event::RateLimitKeyLimitSet(_) => RateLimitKeyLimitSet::VERSION,
            Event::App(_) => APP_EVENT_VERSION,
        }
    }

    /// The payload as JSON text, as stored in the log.
    pub fn data_json(&self) -> String {
        let result = match self {
            Event::TenantCreated(p) => serde_json::to_string(p),
            Event::KeyCreated(p) => serde_json::to_string(p),
            Event::KeyRolled(p) => serde_json::to_string(p),
            Event::KeyRevoked(p) => serde_json::to_string(p),
            Event::ApiCall(p) => serde_json::to_string(p),
            Event::OAuthClientCreated(p) => serde_json::to_string(p),
            Event::OAuthClientDeleted(p) => serde_json::to_string(p),
            Event::OAuthSigningKeyPublished(p) => serde_json::to_string(p),
            Event::OAuthTokenRevoked(p) => serde_json::to_string(p),
            Event::RateLimitTierSet(p) => serde_json::to_string(p),
            Event::RateLimitKeyAssigned(p) => serde_json::to_string(p),
            Event::RateLimitKeyLimitSet(p) => serde_json::to_string(p),
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
            Event::KeyRolled(p) => serde_json::to_value(p),
            Event::KeyRevoked(p) => serde_json::to_value(p),
            Event::ApiCall(p) => serde_json::to_value(p),
            Event::OAuthClientCreated(p) => serde_json::to_value(p),
            Event::OAuthClientDeleted(p) => serde_json::to_value(p),
            Event::OAuthSigningKeyPublished(p) => serde_json::to_value(p),
            Event::OAuthTokenRevoked(p) => serde_json::to_value(p),
            Event::RateLimitTierSet(p) => serde_json::to_value(p),
            Event::RateLimitKeyAssigned(p) => serde_json::to_value(p),
            Event::RateLimitKeyLimitSet(p) => serde_json::to_value(p),
            Event::App(app) => Ok(app.data.clone()),
        };
        result.expect("event payloads always serialize")
    }

    /// Reads a stored payload, upgrading old versions first.
    pub fn decode(type_name: &str, version: u32, data: &str) -> Result<Event, DecodeError> {
        Ok(match type_name {
            TenantCreated::TYPE => Event::TenantCreated(decode_payload(version, data)?),
            KeyCreated::TYPE => Event::KeyCreated(decode_payload(version, data)?),
            KeyRolled::TYPE => Event::KeyRolled(decode_payload(version, data)?),
            KeyRevoked::TYPE => Event::KeyRevoked(decode_payload(version, data)?),
            ApiCall::TYPE => Event::ApiCall(decode_payload(version, data)?),
            OAuthClientCreated::TYPE => Event::OAuthClientCreated(decode_payload(version, data)?),
            OAuthClientDeleted::TYPE => Event::OAuthClientDeleted(decode_payload(version, data)?),
            OAuthSigningKeyPublished::TYPE => {
                Event::OAuthSigningKeyPublished(decode_payload(version, data)?)
            }
            OAuthTokenRevoked::TYPE => Event::OAuthTokenRevoked(decode_payload(version, data)?),
            RateLimitTierSet::TYPE => Event::RateLimitTierSet(decode_payload(version, data)?),
            RateLimitKeyAssigned::TYPE => {
                Event::RateLimitKeyAssigned(decode_payload(version, data)?)
            }
            RateLimitKeyLimitSet::TYPE => {
                Event::RateLimitKeyLimitSet(decode_payload(version, data)?)
            }
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
