//! Rate limits as events: named tiers an admin defines for a tenant, and
//! which tier (or a limit of its own) each key follows.
//!
//! A limit is GCRA's two numbers told the way people state them: `requests`
//! per `window_seconds` (the sustained rate; one request's cost, the
//! emission interval, is `window_seconds / requests`), and `burst`, how
//! many requests may arrive at once after a quiet spell.
//!
//! Streams: `ratelimit/tier/<tier>` for a tier, `ratelimit/key/<key_id>` for
//! a key; each event replaces what the stream said before, so a fold needs
//! no other order than each stream's own.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::Payload;
use crate::ids::KeyId;
use crate::names::{NameError, StreamName};

/// The name of a tier within a tenant, such as `default` or `gold`:
/// `^[a-z0-9][a-z0-9_-]{0,63}$`, so it is also a valid quoted policy name in
/// the `RateLimit-Policy` header. `custom` is taken: it names the policy of
/// a key with a limit of its own.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct TierName(#[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$"))] String);

impl TierName {
    /// The tier every key follows until an admin assigns it another. A
    /// tenant may redefine it; until then the server's built-in default
    /// applies.
    pub const DEFAULT: &'static str = "default";
    /// The policy name of a key's own limit; not a tier name.
    pub const CUSTOM: &'static str = "custom";

    pub fn new(name: impl Into<String>) -> Result<TierName, NameError> {
        let name = name.into();
        let error = |rule| NameError { kind: "tier name", value: name.clone(), rule };
        if name.is_empty() || name.len() > 64 {
            return Err(error("must be 1 to 64 characters long"));
        }
        let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !valid(name.as_bytes()[0]) || !name.bytes().all(|b| valid(b) || matches!(b, b'_' | b'-'))
        {
            return Err(error(
                "must start with a lowercase letter or digit and hold only those, '_' and '-'",
            ));
        }
        if name == TierName::CUSTOM {
            return Err(error("is reserved for limits of a key's own"));
        }
        Ok(TierName(name))
    }

    /// The `default` tier.
    pub fn default_tier() -> TierName {
        TierName(TierName::DEFAULT.to_owned())
    }

    pub fn is_default(&self) -> bool {
        self.0 == TierName::DEFAULT
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for TierName {
    type Err = NameError;

    fn from_str(value: &str) -> Result<TierName, NameError> {
        TierName::new(value)
    }
}

impl<'de> Deserialize<'de> for TierName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TierName, D::Error> {
        TierName::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A rate limit: `requests` per `window_seconds` sustained, up to `burst`
/// at once. Built only through [`RateLimit::new`] (or by decoding, which
/// checks the same rules), so every limit turns into a valid GCRA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RateLimitFields")]
pub struct RateLimit {
    requests: NonZeroU32,
    window_seconds: NonZeroU32,
    burst: NonZeroU32,
}

/// What a limit is decoded from, before its rules are checked.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RateLimitFields {
    requests: NonZeroU32,
    window_seconds: NonZeroU32,
    burst: NonZeroU32,
}

impl TryFrom<RateLimitFields> for RateLimit {
    type Error = RateLimitError;

    fn try_from(fields: RateLimitFields) -> Result<RateLimit, RateLimitError> {
        RateLimit::new(fields.requests.get(), fields.window_seconds.get(), fields.burst.get())
    }
}

/// A limit outside what Spool enforces; the message says which rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit: {0}")]
pub struct RateLimitError(pub &'static str);

impl RateLimit {
    /// The most `requests` or `burst` a limit may name.
    pub const MAX_REQUESTS: u32 = 1_000_000;
    /// The longest window: a day.
    pub const MAX_WINDOW_SECONDS: u32 = 86_400;
    /// The longest time an empty burst may take to refill: a year. Beyond
    /// it, GCRA's tolerance no longer fits its nanosecond arithmetic.
    pub const MAX_REFILL_SECONDS: u64 = 365 * 86_400;

    pub fn new(
        requests: u32,
        window_seconds: u32,
        burst: u32,
    ) -> Result<RateLimit, RateLimitError> {
        let nonzero = |n, what| NonZeroU32::new(n).ok_or(RateLimitError(what));
        let limit = RateLimit {
            requests: nonzero(requests, "`requests` must be at least 1")?,
            window_seconds: nonzero(window_seconds, "`window_seconds` must be at least 1")?,
            burst: nonzero(burst, "`burst` must be at least 1")?,
        };
        if requests > RateLimit::MAX_REQUESTS || burst > RateLimit::MAX_REQUESTS {
            return Err(RateLimitError("`requests` and `burst` must be at most 1000000"));
        }
        if window_seconds > RateLimit::MAX_WINDOW_SECONDS {
            return Err(RateLimitError("`window_seconds` must be at most 86400 (a day)"));
        }
        if limit.refill().as_secs() > RateLimit::MAX_REFILL_SECONDS {
            return Err(RateLimitError(
                "`burst` × `window_seconds` ÷ `requests` (the time an empty burst takes to \
                 refill) must be at most a year",
            ));
        }
        Ok(limit)
    }

    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    pub fn window_seconds(&self) -> u32 {
        self.window_seconds.get()
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// GCRA's emission interval: what one request costs, `window / requests`.
    pub fn interval(&self) -> Duration {
        let window_nanos = u64::from(self.window_seconds()) * 1_000_000_000;
        Duration::from_nanos(window_nanos / u64::from(self.requests())).max(Duration::from_nanos(1))
    }

    /// How long an empty burst takes to refill: `burst × interval`.
    pub fn refill(&self) -> Duration {
        self.interval() * self.burst()
    }
}

/// An admin defined (or redefined) a tier of the tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitTierSet {
    pub tier: TierName,
    pub limit: RateLimit,
}

/// An admin put a key on a tier (`default` included: back to the default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitKeyAssigned {
    pub key_id: KeyId,
    pub tier: TierName,
}

/// An admin gave a key a limit of its own, whatever the tiers say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitKeyLimitSet {
    pub key_id: KeyId,
    pub limit: RateLimit,
}

impl Payload for RateLimitTierSet {
    const TYPE: &'static str = "ratelimit.tier_set";
    const VERSION: u32 = 1;
}

impl Payload for RateLimitKeyAssigned {
    const TYPE: &'static str = "ratelimit.key_assigned";
    const VERSION: u32 = 1;
}

impl Payload for RateLimitKeyLimitSet {
    const TYPE: &'static str = "ratelimit.key_limit_set";
    const VERSION: u32 = 1;
}

/// The stream of a tier's events: `ratelimit/tier/<tier>`.
pub fn tier_stream(tier: &TierName) -> StreamName {
    StreamName::new(format!("ratelimit/tier/{tier}")).expect("tier names make valid streams")
}

/// The stream of a key's rate-limit events: `ratelimit/key/<key_id>`.
pub fn key_limit_stream(key_id: KeyId) -> StreamName {
    StreamName::new(format!("ratelimit/key/{key_id}")).expect("key ids make valid streams")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_are_lowercase_tokens_and_custom_is_reserved() {
        for good in ["default", "gold", "tier-2", "a_b", "9"] {
            assert!(TierName::new(good).is_ok(), "{good}");
        }
        let long = "a".repeat(65);
        for bad in ["", "Gold", "-x", "has space", "q\"uote", "custom", long.as_str()] {
            assert!(TierName::new(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<TierName>("\"Gold\"").is_err());
    }

    #[test]
    fn limits_decode_only_when_valid_and_know_their_interval() {
        let limit = RateLimit::new(100, 60, 20).unwrap();
        assert_eq!(limit.interval(), Duration::from_millis(600));
        assert_eq!(limit.refill(), Duration::from_secs(12));
        let json = serde_json::to_value(limit).unwrap();
        assert_eq!(json, serde_json::json!({"requests": 100, "window_seconds": 60, "burst": 20}));
        assert_eq!(serde_json::from_value::<RateLimit>(json).unwrap(), limit);

        for bad in [
            serde_json::json!({"requests": 0, "window_seconds": 60, "burst": 1}),
            serde_json::json!({"requests": 1, "window_seconds": 86401, "burst": 1}),
            serde_json::json!({"requests": 1, "window_seconds": 86400, "burst": 1000}),
            serde_json::json!({"requests": 1, "window_seconds": 1, "burst": 1, "extra": 1}),
        ] {
            assert!(serde_json::from_value::<RateLimit>(bad.clone()).is_err(), "{bad}");
        }
        assert!(RateLimit::new(1_000_000, 1, 1_000_000).is_ok());
        assert_eq!(RateLimit::new(1, 1, 0), Err(RateLimitError("`burst` must be at least 1")));
    }
}
