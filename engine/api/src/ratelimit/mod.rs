//! Rate limiting per key (GCRA), with the IETF `RateLimit-Policy` and
//! `RateLimit` headers on every `/v1` response and `429` + `Retry-After` +
//! a `quota-exceeded` problem when a key goes over its limit.
//!
//! *Where limits come from* (`policies.rs`): a key follows a tier of its
//! tenant (`default` unless an admin assigned another) or a limit of its
//! own, both set by admins as `ratelimit.*` events and read from the
//! `rate_limits` read model. Tiers are the tenant's tool to share out
//! capacity within the operator's ceiling: the admin routes refuse any
//! limit above [`RateLimitOptions::max_limit`] (`422
//! limit-above-ceiling`), so no tenant admin can lift its own keys past
//! what the server allows. A tenant's tiers and key limits are cached
//! per tenant for [`RateLimitOptions::policy_ttl`] (1 s), so a request
//! costs no SQL beyond the auth lookup; once an entry is older, one
//! request of the tenant reads them again while the others go on with
//! the old entry. The admin routes drop the tenant's entry once their
//! change is projected, so on the instance that took the change it
//! applies from the next request, and on the others within the TTL.
//!
//! *Where the state lives*: in this process by default (`local.rs`, the
//! `governor` crate: one keyed limiter per distinct limit, keyed by key
//! id, on a sharded map, so one key's traffic never waits on another's),
//! or in Redis (`store.rs`) when [`RateLimitOptions::store`] is set, so
//! that the limit holds across instances: GCRA in one Lua script, the
//! theoretical arrival time stored per key with an expiry. When Redis
//! fails or is slower than [`RateLimitOptions::store_timeout`], the request
//! is limited in-process instead (fail over, not open: each instance still
//! enforces the limit on its own share), with a warning, the metric
//! `spool_rate_limit_store_errors_total`, and Redis left alone for
//! [`RateLimitOptions::store_retry`] before it is tried again.
//!
//! *Requests without a valid credential* are not limited per key (they
//! have none) but per client address (`ConnectInfo`; one shared bucket
//! when the server does not provide it), in-process, with policy
//! `anonymous`: a client flooding bad keys gets `429`s, while the same
//! address's valid keys keep their own limits. An IPv4 address is one
//! bucket; an IPv6 address counts by its /64 prefix, since one host
//! usually holds a whole /64 and could otherwise spread its requests over
//! 2^64 buckets. The address is the TCP peer's: behind a reverse proxy
//! that is the proxy, so all anonymous clients share one bucket there
//! (limit them at the proxy). Each such request still costs one indexed
//! lookup and one `api.call` record; floods beyond that belong to a proxy
//! in front.
//!
//! *Headers* (draft-ietf-httpapi-ratelimit-headers-11, structured fields):
//! `RateLimit-Policy: "gold";q=100;w=60;spool-burst=20` (the policy's
//! name, `q` requests per `w` seconds sustained, bursts of up to
//! `spool-burst`) and `RateLimit: "gold";r=19;t=1` (`r` requests may be
//! sent right now; `t` seconds until the full burst is available again).
//! A refused request gets `r=0` with `t` equal to `Retry-After`: the
//! seconds until one more request is allowed.

mod docs;
mod local;
mod policies;
mod store;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use spool_projections::Views;
use spool_schemas::{KeyId, RateLimit, TenantId};
use utoipa::ToSchema;

use crate::problem::{ProblemBody, ProblemKind};
use crate::{Caller, Shared};

pub use store::{SharedStore, StoreError};

pub(crate) use docs::RateLimitDocs;
pub(crate) use policies::{Policy, resolve};

/// `RateLimit-Policy`: the policy a request counts against.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of it.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The policy of requests without a valid credential.
pub const ANONYMOUS_POLICY: &str = "anonymous";

/// How the API limits requests.
#[derive(Clone, Debug)]
pub struct RateLimitOptions {
    /// The limit of keys whose tenant has not defined a `default` tier:
    /// by default 1,000 requests per second sustained, in bursts of up to
    /// 5,000.
    pub default_limit: RateLimit,
    /// The limit per client address (IPv4) or /64 prefix (IPv6) of
    /// requests that present no valid credential: by default 20 per
    /// second, in bursts of up to 100. Behind a proxy, every anonymous
    /// client shares one bucket: the proxy's address.
    pub anonymous_limit: RateLimit,
    /// The ceiling of every limit a tenant admin may set (tiers, keys'
    /// own limits): at most this sustained rate and this burst. By
    /// default 100,000 requests per second, in bursts of up to 100,000.
    /// Limits set before a ceiling was lowered stay as they were.
    pub max_limit: RateLimit,
    /// Where limits are counted: this process (`None`), or Redis, shared
    /// by every instance.
    pub store: Option<SharedStore>,
    /// How long a tenant's tiers and key limits are cached.
    pub policy_ttl: Duration,
    /// The longest a request waits for the shared store before it is
    /// limited in-process instead.
    pub store_timeout: Duration,
    /// After the shared store failed, how long requests are limited
    /// in-process before it is tried again.
    pub store_retry: Duration,
}

impl Default for RateLimitOptions {
    fn default() -> Self {
        RateLimitOptions {
            default_limit: RateLimit::new(1_000, 1, 5_000).expect("a valid limit"),
            anonymous_limit: RateLimit::new(20, 1, 100).expect("a valid limit"),
            max_limit: RateLimit::new(100_000, 1, 100_000).expect("a valid limit"),
            store: None,
            policy_ttl: Duration::from_secs(1),
            store_timeout: Duration::from_millis(250),
            store_retry: Duration::from_secs(1),
        }
    }
}

/// The limiter of one router: cheap to clone.
#[derive(Clone)]
pub struct RateLimiter(Arc<Inner>);

struct Inner {
    policies: policies::Policies,
    keys: local::Local<KeyId>,
    anonymous: local::Local<Option<IpAddr>>,
    anonymous_policy: Arc<Policy>,
    store: Option<store::Store>,
    started: Instant,
    /// When (ms after `started`) housekeeping is due. Atomic: every
    /// request reads it.
    next_housekeeping: AtomicU64,
}

/// How often idle limiter state and cached policies are dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// What one request gets from its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Let through: `remaining` more may go right now, and the full burst
    /// is back after `reset`.
    Allowed { remaining: u32, reset: Duration },
    /// Over the limit: one more request is allowed after `retry_after`.
    Refused { retry_after: Duration },
}

/// The policy a request counted against, and the outcome.
pub(crate) struct Decision {
    policy: Arc<Policy>,
    outcome: Outcome,
}

impl RateLimiter {
    pub fn new(options: &RateLimitOptions, views: Views) -> RateLimiter {
        RateLimiter(Arc::new(Inner {
            policies: policies::Policies::new(views, options.default_limit, options.policy_ttl),
            keys: local::Local::default(),
            anonymous: local::Local::default(),
            anonymous_policy: Arc::new(Policy::new(ANONYMOUS_POLICY, options.anonymous_limit)),
            store: options.store.clone().map(|shared| {
                store::Store::new(shared, options.store_timeout, options.store_retry)
            }),
            started: Instant::now(),
            next_housekeeping: AtomicU64::new(HOUSEKEEPING.as_millis() as u64),
        }))
    }

    /// Counts a request of an authenticated caller against its key's policy.
    pub(crate) async fn check(&self, caller: &Caller) -> Decision {
        self.housekeeping();
        let policy = self.0.policies.policy(caller.tenant, caller.key_id).await;
        let shared = match &self.0.store {
            Some(store) => store.check(caller.key_id, policy.limit).await,
            None => None,
        };
        let outcome = shared.unwrap_or_else(|| self.0.keys.check(&caller.key_id, policy.limit));
        Decision { policy, outcome }
    }

    /// Counts a request without a valid credential against its address.
    pub(crate) fn check_anonymous(&self, peer: Option<IpAddr>) -> Decision {
        self.housekeeping();
        let policy = self.0.anonymous_policy.clone();
        let outcome = self.0.anonymous.check(&peer, policy.limit);
        Decision { policy, outcome }
    }

    /// Forgets what is cached of `tenant`'s limits: called once a change
    /// to them is projected, so that the next request reads them again.
    pub(crate) fn invalidate(&self, tenant: TenantId) {
        self.0.policies.invalidate(tenant);
    }

    /// The default policy of keys whose tenant has no `default` tier.
    pub(crate) fn builtin_default(&self) -> RateLimit {
        self.0.policies.builtin_default()
    }

    /// Drops idle state now and then, so that memory follows the keys in
    /// use, not every key ever seen.
    fn housekeeping(&self) {
        let now = self.0.started.elapsed().as_millis() as u64;
        let due = self.0.next_housekeeping.load(Ordering::Relaxed);
        // One request does it: the one that moves the due time on.
        if now < due
            || self
                .0
                .next_housekeeping
                .compare_exchange(
                    due,
                    now + HOUSEKEEPING.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        self.0.keys.housekeeping();
        self.0.anonymous.housekeeping();
        self.0.policies.housekeeping(HOUSEKEEPING);
    }
}

impl Decision {
    fn is_refused(&self) -> bool {
        matches!(self.outcome, Outcome::Refused { .. })
    }

    /// `RateLimit-Policy` and `RateLimit`, for any response.
    fn write_headers(&self, headers: &mut HeaderMap) {
        let (remaining, window) = match self.outcome {
            Outcome::Allowed { remaining, reset } => (remaining, whole_seconds(reset)),
            Outcome::Refused { retry_after } => (0, whole_seconds(retry_after).max(1)),
        };
        headers.insert(RATELIMIT_POLICY, self.policy.header.clone());
        let state = format!("\"{}\";r={remaining};t={window}", self.policy.name);
        headers.insert(RATELIMIT, HeaderValue::try_from(state).expect("policy names are tokens"));
    }

    /// The `429` of a refused request: `Retry-After`, the headers, and a
    /// `quota-exceeded` problem naming the policy (as the draft's
    /// `violated-policies` member too).
    fn refusal(&self, who: &str) -> Response {
        let Outcome::Refused { retry_after } = self.outcome else {
            unreachable!("only a refused decision is answered with 429");
        };
        let retry_after = whole_seconds(retry_after).max(1);
        let limit = self.policy.limit;
        let detail = format!(
            "{who} sent more requests than its rate-limit policy \"{}\" allows ({} per {} s, \
             in bursts of up to {}); retry in {retry_after} s",
            self.policy.name,
            limit.requests(),
            limit.window_seconds(),
            limit.burst(),
        );
        let kind = ProblemKind::QUOTA_EXCEEDED;
        let body = QuotaExceeded {
            problem: ProblemBody {
                type_uri: kind.type_uri(),
                title: kind.title,
                status: kind.status.as_u16(),
                detail,
            },
            violated_policies: vec![self.policy.name.clone()],
        };
        let body = serde_json::to_vec(&body).expect("problems serialize");
        let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        self.write_headers(headers);
        response
    }
}

/// The body of a `429`: a problem with the draft's `violated-policies`.
#[derive(Serialize, ToSchema)]
pub struct QuotaExceeded {
    #[serde(flatten)]
    pub problem: ProblemBody,
    /// The policies the request went over: its key's tier (`default`,
    /// `gold`…), `custom` for a key's own limit, or `anonymous`.
    #[serde(rename = "violated-policies")]
    #[schema(example = json!(["default"]))]
    pub violated_policies: Vec<String>,
}

/// Which bucket a request without a valid credential from `peer` counts
/// in: an IPv4 address (also when written IPv4-mapped, as a dual-stack
/// socket shows it), or an IPv6 address's /64 prefix.
fn anonymous_bucket(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(address) => {
            let prefix = u128::from(address) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        ipv4 => ipv4,
    }
}

/// Whether `limit` stays within `ceiling`: no faster sustained rate (the
/// rates compared as fractions, exactly) and no larger burst.
pub(crate) fn within(limit: RateLimit, ceiling: RateLimit) -> bool {
    let rate = u64::from(limit.requests()) * u64::from(ceiling.window_seconds());
    let ceiling_rate = u64::from(ceiling.requests()) * u64::from(limit.window_seconds());
    rate <= ceiling_rate && limit.burst() <= ceiling.burst()
}

/// Whole seconds, rounded up: a client that waits this long is not early.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_micros().div_ceil(1_000_000) as u64
}

/// Part of the middleware around the recorded `/v1` routes (see
/// [`crate::platform`]), inside the recorder
/// (so a `429` is still recorded as an `api.call`, with its key): it
/// authenticates the request once (the handler's `Caller` extractor reuses
/// the outcome), counts it against its key's policy or, without a valid
/// credential, its address's, and either refuses it or adds the headers to
/// whatever the handler answers.
pub(crate) async fn limit<Fut: Future<Output = Response>>(
    state: &Shared,
    limiter: &RateLimiter,
    request: Request,
    next: impl FnOnce(Request) -> Fut,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = Caller::from_request_parts(&mut parts, state).await;
    let decision = match &caller {
        Ok(caller) => limiter.check(caller).await,
        Err(_) => {
            let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
            limiter.check_anonymous(peer.map(|info| anonymous_bucket(info.0.ip())))
        }
    };
    if decision.is_refused() {
        let kind = if caller.is_ok() { "key" } else { ANONYMOUS_POLICY };
        metrics::counter!("spool_rate_limited_total", "kind" => kind).increment(1);
        let who = match &caller {
            Ok(caller) => format!("key {}", caller.key_id),
            Err(_) => "this address, without a valid credential,".to_owned(),
        };
        return decision.refusal(&who);
    }
    let mut response = next(Request::from_parts(parts, body)).await;
    decision.write_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_micros(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn anonymous_buckets_are_ipv4_addresses_and_ipv6_prefixes() {
        let bucket = |address: &str| anonymous_bucket(address.parse().unwrap()).to_string();
        assert_eq!(bucket("192.0.2.7"), "192.0.2.7");
        assert_eq!(bucket("::ffff:192.0.2.7"), "192.0.2.7", "IPv4-mapped is IPv4");
        assert_eq!(bucket("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(bucket("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(bucket("2001:db8:1:3::1"), "2001:db8:1:3::");
    }

    #[test]
    fn limits_within_a_ceiling_compare_rates_across_windows() {
        let ceiling = RateLimit::new(100, 1, 100).unwrap();
        let limit = |requests, window, burst| RateLimit::new(requests, window, burst).unwrap();
        assert!(within(limit(100, 1, 100), ceiling));
        assert!(within(limit(6_000, 60, 100), ceiling), "the same rate per minute");
        assert!(!within(limit(6_001, 60, 100), ceiling), "a hair faster");
        assert!(!within(limit(1, 1, 101), ceiling), "a larger burst");
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let policy = Arc::new(Policy::new("gold", RateLimit::new(100, 60, 20).unwrap()));
        let allowed = Decision {
            policy: policy.clone(),
            outcome: Outcome::Allowed { remaining: 19, reset: Duration::from_millis(600) },
        };
        let mut headers = HeaderMap::new();
        allowed.write_headers(&mut headers);
        assert_eq!(headers[RATELIMIT_POLICY], "\"gold\";q=100;w=60;spool-burst=20");
        assert_eq!(headers[RATELIMIT], "\"gold\";r=19;t=1");

        let refused =
            Decision { policy, outcome: Outcome::Refused { retry_after: Duration::from_secs(9) } };
        let response = refused.refusal("key key_x");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "9");
        assert_eq!(response.headers()[RATELIMIT], "\"gold\";r=0;t=9");
    }
}
