//! Validated names: streams, app event types, and key scopes.
//!
//! Parse, don't validate: a `StreamName` or `AppEventType` can only be built
//! by checking the text, so code that holds one never checks again.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, TenantId};

/// A name that breaks the rules of its kind; the message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

/// Event type namespaces that belong to Spool itself. App events may not use
/// them, so an app event can never be mistaken for one of Spool's own.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "spool",
    "tenant",
    "key",
    "api",
    "oauth",
    "usage",
    "webhook",
    "delivery",
    "workflow",
    "run",
    "step",
    "registry",
    "integration",
    "schedule",
    "ratelimit",
];

/// The stream (aggregate) an event belongs to within its tenant, such as
/// `order/42`: 1 to 256 printable ASCII characters without spaces.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct StreamName(#[schemars(regex(pattern = r"^[!-~]{1,256}$"))] String);

impl StreamName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let rule = if name.is_empty() || name.len() > 256 {
            Some("must be 1 to 256 characters long")
        } else if !name.bytes().all(|b| b.is_ascii_graphic()) {
            Some("may hold only printable ASCII characters without spaces")
        } else {
            None
        };
        match rule {
            Some(rule) => Err(NameError { kind: "stream name", value: name, rule }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream of a tenant's own lifecycle events: `tenant/<id>`.
    pub fn for_tenant(tenant: TenantId) -> Self {
        Self(format!("tenant/{tenant}"))
    }

    /// The stream of one API key's events: `key/<id>`.
    pub fn for_key(key_id: KeyId) -> Self {
        Self(format!("key/{key_id}"))
    }

    /// The stream of the `api.call` records of one key (`api/<id>`), or of
    /// requests that presented no valid key (`api/anonymous`).
    pub fn for_api_calls(key_id: Option<KeyId>) -> Self {
        match key_id {
            Some(key_id) => Self(format!("api/{key_id}")),
            None => Self("api/anonymous".to_owned()),
        }
    }

    /// Whether the name lies in a namespace of Spool's own streams
    /// (`tenant/…`, `key/…`, `api/…`, any of [`RESERVED_NAMESPACES`] followed
    /// by `/`, in any case). App events may not be appended to such a stream.
    pub fn is_reserved(&self) -> bool {
        match self.0.split_once('/') {
            Some((namespace, _)) => {
                RESERVED_NAMESPACES.contains(&namespace.to_ascii_lowercase().as_str())
            }
            None => false,
        }
    }
}

/// Lets maps keyed by stream name be searched with a `&str`, without
/// allocating a key per lookup on the append path.
impl std::borrow::Borrow<str> for StreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The type name of an app event, chosen by the customer, such as
/// `order.created`: `^[a-zA-Z0-9_.-]{1,128}$`, outside Spool's namespaces.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct AppEventType(#[schemars(regex(pattern = r"^[a-zA-Z0-9_.-]{1,128}$"))] String);

impl AppEventType {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let error = |rule| NameError { kind: "event type", value: name.clone(), rule };
        if name.is_empty() || name.len() > 128 {
            return Err(error("must be 1 to 128 characters long"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(error("may hold only letters, digits, '_', '.' and '-'"));
        }
        let namespace = name.split('.').next().unwrap_or_default();
        if name.contains('.')
            && RESERVED_NAMESPACES.contains(&namespace.to_ascii_lowercase().as_str())
        {
            return Err(error("uses a namespace reserved for Spool's own events"));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_traits {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_traits!(StreamName);
string_newtype_traits!(AppEventType);

/// What a key or token may do. The set is closed: a scope the server does
/// not know is an error, never silently ignored.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Scope {
    #[serde(rename = "events:read")]
    EventsRead,
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "usage:read")]
    UsageRead,
    #[serde(rename = "webhooks:read")]
    WebhooksRead,
    #[serde(rename = "webhooks:write")]
    WebhooksWrite,
    #[serde(rename = "registry:read")]
    RegistryRead,
    #[serde(rename = "registry:write")]
    RegistryWrite,
    #[serde(rename = "workflows:read")]
    WorkflowsRead,
    #[serde(rename = "workflows:write")]
    WorkflowsWrite,
    /// Everything, including managing tenants and keys.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 10] = [
        Scope::EventsRead,
        Scope::EventsWrite,
        Scope::UsageRead,
        Scope::WebhooksRead,
        Scope::WebhooksWrite,
        Scope::RegistryRead,
        Scope::RegistryWrite,
        Scope::WorkflowsRead,
        Scope::WorkflowsWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsRead => "events:read",
            Scope::EventsWrite => "events:write",
            Scope::UsageRead => "usage:read",
            Scope::WebhooksRead => "webhooks:read",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::RegistryRead => "registry:read",
            Scope::RegistryWrite => "registry:write",
            Scope::WorkflowsRead => "workflows:read",
            Scope::WorkflowsWrite => "workflows:write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = NameError;

    fn from_str(value: &str) -> Result<Self, NameError> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == value).ok_or_else(|| NameError {
            kind: "scope",
            value: value.to_owned(),
            rule: "is not one of Spool's scopes",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_event_types_follow_the_pattern_and_stay_out_of_spool_namespaces() {
        for good in ["order.created", "a", "Order_Created-v2", "keys.rotated", "apis.called"] {
            assert!(AppEventType::new(good).is_ok(), "{good}");
        }
        let long = "x".repeat(129);
        for bad in ["", "order created", "order/created", "über", long.as_str()] {
            assert!(AppEventType::new(bad).is_err(), "{bad}");
        }
        let reserved = AppEventType::new("api.call").unwrap_err();
        assert!(reserved.rule.contains("reserved"), "{reserved}");
        assert!(AppEventType::new("Tenant.created").is_err());
    }

    #[test]
    fn stream_names_refuse_spaces_and_control_characters() {
        assert!(StreamName::new("order/42").is_ok());
        assert!(StreamName::new("").is_err());
        assert!(StreamName::new("order 42").is_err());
        assert!(StreamName::new("order\n42").is_err());
        assert!(StreamName::new("x".repeat(257)).is_err());
    }

    #[test]
    fn typed_stream_constructors_name_reserved_streams() {
        let (tenant, key) = (TenantId::new(), KeyId::new());
        assert_eq!(StreamName::for_tenant(tenant).as_str(), format!("tenant/{tenant}"));
        assert_eq!(StreamName::for_key(key).as_str(), format!("key/{key}"));
        assert_eq!(StreamName::for_api_calls(Some(key)).as_str(), format!("api/{key}"));
        assert_eq!(StreamName::for_api_calls(None).as_str(), "api/anonymous");
        for reserved in [
            StreamName::for_tenant(tenant),
            StreamName::for_key(key),
            StreamName::for_api_calls(None),
            StreamName::new("Key/whatever").unwrap(),
            StreamName::new("workflow/").unwrap(),
        ] {
            assert!(reserved.is_reserved(), "{reserved}");
        }
        for free in ["order/42", "key", "keys/1", "api.call", "order/key/1"] {
            assert!(!StreamName::new(free).unwrap().is_reserved(), "{free}");
        }
    }

    #[test]
    fn scopes_round_trip_and_unknown_scopes_are_refused() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
        assert!("events:delete".parse::<Scope>().is_err());
    }
}
