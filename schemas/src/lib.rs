//! Spool's shared vocabulary: typed ids, validated names, the closed event
//! enum with its versions, and the envelope events are stored in.
//!
//! This crate knows nothing about storage, HTTP or time sources: it only
//! says what an event is and how it reads and writes as JSON.

mod compat;
mod envelope;
mod events;
mod ids;
mod names;
mod rate_limits;

pub use envelope::{Envelope, Position};
pub use events::{
    APP_EVENT_VERSION, ApiCall, AppEvent, DecodeError, Event, KeyCreated, KeyRevoked, KeyRolled,
    OAuthClientCreated, OAuthClientDeleted, OAuthSigningKeyPublished, OAuthTokenRevoked, Payload,
    PublicJwk, TenantCreated,
};
pub use ids::{ClientId, EventId, IdError, KeyId, SigningKeyId, TenantId, TokenId};
pub use names::{AppEventType, NameError, RESERVED_NAMESPACES, Scope, StreamName};
pub use rate_limits::{
    RateLimit, RateLimitError, RateLimitKeyAssigned, RateLimitKeyLimitSet, RateLimitTierSet,
    TierName, key_limit_stream, tier_stream,
};

/// The JSON Schema files under `schemas/json/`, generated from the Rust
/// types: `(file name, pretty JSON)`. A test fails when the files drift.
pub fn json_schemas() -> Vec<(String, String)> {
    fn render(schema: schemars::Schema) -> String {
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        text.push('\n');
        text
    }
    fn payload<P: Payload>() -> (String, String) {
        let mut schema = schemars::schema_for!(P);
        schema.insert("title".into(), format!("{} v{}", P::TYPE, P::VERSION).into());
        (format!("{}.schema.json", P::TYPE), render(schema))
    }
    vec![
        ("envelope.schema.json".to_owned(), render(schemars::schema_for!(envelope::EnvelopeJson))),
        payload::<TenantCreated>(),
        payload::<KeyCreated>(),
        payload::<KeyRolled>(),
        payload::<KeyRevoked>(),
        payload::<ApiCall>(),
        payload::<OAuthClientCreated>(),
        payload::<OAuthClientDeleted>(),
        payload::<OAuthSigningKeyPublished>(),
        payload::<OAuthTokenRevoked>(),
        payload::<RateLimitTierSet>(),
        payload::<RateLimitKeyAssigned>(),
        payload::<RateLimitKeyLimitSet>(),
    ]
}
