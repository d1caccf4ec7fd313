//! Typed, prefixed identifiers: `evt_…`, `ten_…`, `key_…`.
//!
//! Each id wraps a UUID and prints as its prefix followed by the 32 lowercase
//! hex digits of the UUID, so ids sort in creation order (UUIDv7) and say
//! what they name when they turn up in a log line.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// An id string that does not parse as the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}: expected `{prefix}_` followed by 32 hex digits")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(value: &str) -> Result<Self, IdError> {
                let error = || IdError { kind: $kind, prefix: $prefix, value: value.to_owned() };
                let hex = value
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or_else(error)?;
                if hex.len() != 32 {
                    return Err(error());
                }
                Uuid::try_parse(hex).map(Self).map_err(|_| error())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": concat!("^", $prefix, "_[0-9a-f]{32}$"),
                    "description": concat!("A ", $kind, " id: `", $prefix, "_` and 32 hex digits."),
                })
            }
        }
    };
}

typed_id!(
    /// The id of one event. UUIDv7 when Spool mints it; a name-based UUIDv5
    /// (namespace: the tenant) when derived from a client-chosen id, so that
    /// a client's retry maps to the same event id.
    EventId, "evt", "event"
);
typed_id!(
    /// A tenant: the unit of isolation. Nothing crosses tenants.
    TenantId, "ten", "tenant"
);
typed_id!(
    /// An API key. The key's secret is never part of its id.
    KeyId, "key", "key"
);
typed_id!(
    /// An OAuth 2.0 client (client credentials grant). Its secret is never
    /// part of its id; the id is the `client_id` of the token endpoint.
    ClientId, "client", "client"
);
typed_id!(
    /// One access token: the `jti` claim. A revocation names the token by
    /// this id alone, never by its text.
    TokenId, "tok", "token"
);
typed_id!(
    /// A token signing key: the `kid` of its JWK and of the tokens it signs.
    SigningKeyId, "kid", "signing key"
);

impl EventId {
    /// The event id for a client-chosen id within one tenant. The same
    /// `(tenant, client_id)` always gives the same event id; two tenants
    /// never share one.
    pub fn from_client_id(tenant: TenantId, client_id: &str) -> Self {
        Self(Uuid::new_v5(tenant.as_uuid(), client_id.as_bytes()))
    }
}

impl TenantId {
    /// The tenant that owns what belongs to no customer, such as the
    /// `api.call` records of requests that presented no valid key.
    pub const SYSTEM: TenantId = TenantId(Uuid::nil());

    /// The sandbox twin of a live tenant: where its test-mode data lives
    /// (`spk_test_` keys, their events, their usage). It is the same UUID
    /// with version 8 instead of 7, so the mode is read off the id itself,
    /// a twin maps back to its live tenant, and test-mode data can never
    /// share a tenant with live data. The twin of a twin is itself.
    pub fn test_twin(self) -> TenantId {
        self.with_version(8)
    }

    /// The live tenant of a sandbox twin; a live tenant is its own.
    pub fn live(self) -> TenantId {
        if self.is_test() { self.with_version(7) } else { self }
    }

    /// Whether this is a sandbox twin (test mode).
    pub fn is_test(self) -> bool {
        self.0.get_version_num() == 8
    }

    fn with_version(self, version: u8) -> TenantId {
        let mut bytes = *self.0.as_bytes();
        bytes[6] = (bytes[6] & 0x0f) | (version << 4);
        TenantId(Uuid::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = EventId::new();
        let text = id.to_string();
        assert!(text.starts_with("evt_") && text.len() == 36, "{text}");
        assert_eq!(text.parse::<EventId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
    }

    #[test]
    fn an_id_of_another_kind_is_refused_with_its_kind_named() {
        let key = KeyId::new().to_string();
        let error = key.parse::<EventId>().unwrap_err();
        assert_eq!(error.kind, "event");
        assert!(error.to_string().contains("evt_"));
        assert!("evt_xyz".parse::<EventId>().is_err());
        assert!("evt_0123456789abcdef0123456789abcdeg".parse::<EventId>().is_err());
    }

    #[test]
    fn a_test_twin_is_its_own_tenant_and_maps_back_to_the_live_one() {
        let live = TenantId::new();
        let twin = live.test_twin();
        assert_ne!(twin, live);
        assert!(twin.is_test() && !live.is_test());
        assert_eq!(twin.live(), live);
        assert_eq!(live.live(), live);
        assert_eq!(twin.test_twin(), twin);
        assert_eq!(twin.to_string().parse::<TenantId>().unwrap(), twin);
    }

    #[test]
    fn client_ids_are_stable_per_tenant_and_distinct_across_tenants() {
        let (a, b) = (TenantId::new(), TenantId::new());
        assert_eq!(EventId::from_client_id(a, "order-1"), EventId::from_client_id(a, "order-1"));
        assert_ne!(EventId::from_client_id(a, "order-1"), EventId::from_client_id(b, "order-1"));
        assert_ne!(EventId::from_client_id(a, "order-1"), EventId::from_client_id(a, "order-2"));
    }
}
