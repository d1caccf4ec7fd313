//! `/v1/rate-limits`: a tenant's rate-limit tiers and which tier (or limit
//! of its own) each key follows; `admin` keys only.
//!
//! Tiers belong to the caller's tenant (a test-mode key's are its sandbox
//! twin's, apart from live ones). A key's limit is kept with the key's
//! tenant: a live admin key may set those of its test-mode keys too, on
//! that mode's tiers. Any other key id is `404`, exactly like one that does
//! not exist.
//!
//! Tiers are the tenant's tool to share out capacity within the
//! operator's ceiling (`RateLimitOptions::max_limit`, by default 100,000
//! requests per second in bursts of up to 100,000): a limit above it is
//! refused with `422 limit-above-ceiling`, naming the ceiling.
//!
//! Changes are appended as `ratelimit.*` events; the answer comes once this
//! instance's `rate_limits` projection has applied them and the limiter has
//! dropped its cached copy, so the next request here counts against the
//! new limit (other instances follow within the limiter's cache TTL, 1 s).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use spool_log::{Append, Appended, NewEvent};
use spool_projections::rate_limits::{self as read_model, KeyLimit, TierRecord};
use spool_schemas::{
    Event, KeyId, RateLimit, RateLimitKeyAssigned, RateLimitKeyLimitSet, RateLimitTierSet, Scope,
    TenantId, TierName, key_limit_stream, tier_stream,
};
use utoipa::ToSchema;

use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::ratelimit::{self, RateLimiter};
use crate::{AppState, Caller, Shared};

/// How long an answer waits for this instance's `rate_limits` projection
/// to apply the change before answering anyway (it is stored either way).
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A limit as requests send it: `requests` per `window_seconds` sustained,
/// up to `burst` at once (`requests` when absent). Both stay within the
/// server's ceiling (by default 100,000 per second, bursts of 100,000).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    /// 1 to 1,000,000.
    #[schema(example = 100)]
    pub requests: u32,
    /// 1 to 86,400 (a day).
    #[schema(example = 60)]
    pub window_seconds: u32,
    /// 1 to 1,000,000; `requests` when absent. An empty burst must refill
    /// (`burst × window_seconds ÷ requests`) within a year.
    #[schema(example = 20)]
    pub burst: Option<u32>,
}

/// The body of `PUT /v1/rate-limits/keys/{id}`: a tier, or a limit of the
/// key's own.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitRequest {
    /// A tier of the key's tenant; `default` puts the key back on the
    /// default tier.
    #[schema(example = "gold")]
    pub tier: Option<String>,
    /// A limit for this key alone (policy `custom`).
    pub limit: Option<LimitRequest>,
}

/// A tier as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct TierView {
    #[schema(example = "gold")]
    pub tier: String,
    #[schema(example = 100)]
    pub requests: u32,
    #[schema(example = 60)]
    pub window_seconds: u32,
    #[schema(example = 20)]
    pub burst: u32,
    /// `true` for the server's default, which applies while the tenant
    /// has not defined a `default` tier of its own.
    pub built_in: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TierList {
    /// Sorted by name; `default` always among them.
    pub tiers: Vec<TierView>,
}

/// The limit a key's requests count against.
#[derive(Serialize, ToSchema)]
pub struct KeyLimitView {
    #[schema(example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")]
    pub key_id: String,
    /// The policy named in the key's `RateLimit-Policy` header: its tier,
    /// or `custom` for a limit of its own.
    #[schema(example = "gold")]
    pub policy: String,
    #[schema(example = 100)]
    pub requests: u32,
    #[schema(example = 60)]
    pub window_seconds: u32,
    #[schema(example = 20)]
    pub burst: u32,
    /// Whether an admin set the key's tier or limit; `false`: it follows
    /// `default` because nothing was set.
    pub assigned: bool,
}

impl TierView {
    fn new(tier: &str, limit: RateLimit, built_in: bool) -> TierView {
        TierView {
            tier: tier.to_owned(),
            requests: limit.requests(),
            window_seconds: limit.window_seconds(),
            burst: limit.burst(),
            built_in,
        }
    }
}

impl KeyLimitView {
    fn new(key_id: KeyId, (policy, limit): (String, RateLimit), assigned: bool) -> KeyLimitView {
        KeyLimitView {
            key_id: key_id.to_string(),
            policy,
            requests: limit.requests(),
            window_seconds: limit.window_seconds(),
            burst: limit.burst(),
            assigned,
        }
    }
}

/// List the tenant's rate-limit tiers.
///
/// Every key follows the `default` tier unless an admin put it on another
/// or gave it a limit of its own. Until the tenant defines `default`, the
/// server's built-in default applies (`built_in: true`).
#[utoipa::path(
    get,
    path = "/v1/rate-limits/tiers",
    tag = "rate-limits",
    responses(
        (status = 200, description = "The tiers, by name", body = TierList,
            example = json!({"tiers": [{"tier": "default", "requests": 1000, "window_seconds": 1, "burst": 5000, "built_in": true}, {"tier": "gold", "requests": 100, "window_seconds": 60, "burst": 20, "built_in": false}]})),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The calling key is over its own limit", body = ratelimit::QuotaExceeded, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn list_tiers(
    State(state): State<Shared>,
    Extension(limiter): Extension<RateLimiter>,
    caller: Caller,
) -> Result<Json<TierList>, Problem> {
    caller.require(Scope::Admin)?;
    let tiers = read_model::tiers(&state.views, caller.tenant).await?;
    let mut views: Vec<TierView> =
        tiers.iter().map(|tier| TierView::new(tier.tier.as_str(), tier.limit, false)).collect();
    if !tiers.iter().any(|tier| tier.tier.is_default()) {
        views.push(TierView::new(TierName::DEFAULT, limiter.builtin_default(), true));
        views.sort_by(|a, b| a.tier.cmp(&b.tier));
    }
    Ok(Json(TierList { tiers: views }))
}

/// Define or change a tier.
///
/// The change applies to every key on the tier from its next request
/// (other instances: within a second). Defining `default` replaces the
/// server's built-in default for the tenant's keys.
#[utoipa::path(
    put,
    path = "/v1/rate-limits/tiers/{tier}",
    tag = "rate-limits",
    params(("tier" = String, Path, description = "`^[a-z0-9][a-z0-9_-]{0,63}$`, not `custom`", example = "gold")),
    request_body(content = LimitRequest, example = json!({"requests": 100, "window_seconds": 60, "burst": 20})),
    responses(
        (status = 200, description = "The tier as stored", body = TierView,
            example = json!({"tier": "gold", "requests": 100, "window_seconds": 60, "burst": 20, "built_in": false})),
        (status = 400, description = "Malformed JSON, or an invalid tier name (`invalid-tier-name`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A limit out of range (`invalid-body`), or above the server's ceiling (`limit-above-ceiling`)", body = ProblemBody, content_type = "application/problem+json",
            example = json!({"type": "https://spool.dev/problems/limit-above-ceiling", "title": "The rate limit is above this server's ceiling", "status": 422, "detail": "this server allows at most 100000 requests per 1 s, in bursts of up to 100000; ask its operator for more"})),
        (status = 429, description = "The calling key is over its own limit", body = ratelimit::QuotaExceeded, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn set_tier(
    State(state): State<Shared>,
    Extension(limiter): Extension<RateLimiter>,
    caller: Caller,
    Path(tier): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TierView>, Problem> {
    caller.require(Scope::Admin)?;
    let tier = TierName::new(tier)
        .map_err(|error| Problem::new(ProblemKind::INVALID_TIER_NAME, error.to_string()))?;
    let request: LimitRequest = super::json_body(body)?;
    let limit = rate_limit(&request, state.options.rate_limits.max_limit)?;
    let event = NewEvent::new(
        caller.tenant,
        tier_stream(&tier),
        Event::RateLimitTierSet(RateLimitTierSet { tier: tier.clone(), limit }),
    );
    apply(&state, &limiter, caller.tenant, event).await?;
    Ok(Json(TierView::new(tier.as_str(), limit, false)))
}

/// Show the limit a key's requests count against.
#[utoipa::path(
    get,
    path = "/v1/rate-limits/keys/{id}",
    tag = "rate-limits",
    params(("id" = String, Path, description = "The key's id", example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")),
    responses(
        (status = 200, description = "The key's policy", body = KeyLimitView,
            example = json!({"key_id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "policy": "default", "requests": 1000, "window_seconds": 1, "burst": 5000, "assigned": false})),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant (another tenant's keys included)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The calling key is over its own limit", body = ratelimit::QuotaExceeded, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn show_key(
    State(state): State<Shared>,
    Extension(limiter): Extension<RateLimiter>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyLimitView>, Problem> {
    caller.require(Scope::Admin)?;
    let (key_id, tenant) = visible_key(&state, &caller, &id).await?;
    let tiers = read_model::tiers(&state.views, tenant).await?;
    let set = read_model::key_limit(&state.views, tenant, key_id).await?.map(|record| record.limit);
    let policy = ratelimit::resolve(&tiers, set.as_ref(), limiter.builtin_default());
    Ok(Json(KeyLimitView::new(key_id, policy, set.is_some())))
}

/// Put a key on a tier, or give it a limit of its own.
///
/// Send exactly one of `tier` (`default` included) and `limit`. The change
/// applies from the key's next request (other instances: within a second).
#[utoipa::path(
    put,
    path = "/v1/rate-limits/keys/{id}",
    tag = "rate-limits",
    params(("id" = String, Path, description = "The key's id", example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")),
    request_body(content = KeyLimitRequest, example = json!({"tier": "gold"})),
    responses(
        (status = 200, description = "The key's policy now", body = KeyLimitView,
            example = json!({"key_id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "policy": "gold", "requests": 100, "window_seconds": 60, "burst": 20, "assigned": true})),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant (another tenant's keys included)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Neither or both of `tier` and `limit`, or a limit out of range (`invalid-body`); a limit above the server's ceiling (`limit-above-ceiling`); a tier the key's tenant does not have (`unknown-tier`)", body = ProblemBody, content_type = "application/problem+json",
            example = json!({"type": "https://spool.dev/problems/unknown-tier", "title": "The rate-limit tier does not exist", "status": 422, "detail": "no tier \"platinum\"; define it with PUT /v1/rate-limits/tiers/platinum first"})),
        (status = 429, description = "The calling key is over its own limit", body = ratelimit::QuotaExceeded, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn set_key(
    State(state): State<Shared>,
    Extension(limiter): Extension<RateLimiter>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<KeyLimitView>, Problem> {
    caller.require(Scope::Admin)?;
    let (key_id, tenant) = visible_key(&state, &caller, &id).await?;
    let request: KeyLimitRequest = super::json_body(body)?;
    let tiers = read_model::tiers(&state.views, tenant).await?;
    let (set, event) = match (request.tier, request.limit) {
        (Some(tier), None) => {
            let tier = known_tier(&tiers, &tier)?;
            let event =
                Event::RateLimitKeyAssigned(RateLimitKeyAssigned { key_id, tier: tier.clone() });
            (KeyLimit::Tier(tier), event)
        }
        (None, Some(limit)) => {
            let limit = rate_limit(&limit, state.options.rate_limits.max_limit)?;
            (
                KeyLimit::Custom(limit),
                Event::RateLimitKeyLimitSet(RateLimitKeyLimitSet { key_id, limit }),
            )
        }
        _ => return Err(invalid("send exactly one of `tier` and `limit`")),
    };
    let event = NewEvent::new(tenant, key_limit_stream(key_id), event);
    apply(&state, &limiter, tenant, event).await?;
    let policy = ratelimit::resolve(&tiers, Some(&set), limiter.builtin_default());
    Ok(Json(KeyLimitView::new(key_id, policy, true)))
}

/// Appends `event`, waits until this instance's `rate_limits` projection
/// has applied it, then drops the limiter's cached copy of the tenant's
/// limits, so that the next request reads the new ones.
async fn apply(
    state: &AppState,
    limiter: &RateLimiter,
    tenant: TenantId,
    event: NewEvent,
) -> Result<(), Problem> {
    let appended: Vec<Appended> = state.log.append(Append::new(vec![event])).await?;
    let runner = state.runner.get();
    let applied = runner.wait_for_projection(read_model::NAME, &appended);
    match tokio::time::timeout(APPLY_WAIT, applied).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "a rate-limit change is stored but not applied here")
        }
        Err(_) => {
            tracing::warn!("a rate-limit change is stored but was not applied here within 5 s")
        }
    }
    limiter.invalidate(tenant);
    Ok(())
}

/// The key `id` names and its tenant, if `caller` may manage it: a key of
/// its tenant or, for a live key, of its sandbox twin. Anything else is
/// `404`, as a key that does not exist.
async fn visible_key(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(KeyId, TenantId), Problem> {
    let not_found = || Problem::new(ProblemKind::NOT_FOUND, format!("no key {id}"));
    let key_id: KeyId = id.parse().map_err(|_| not_found())?;
    let record = spool_projections::auth::key(&state.views, key_id).await?.ok_or_else(not_found)?;
    let visible = record.tenant == caller.tenant
        || (!caller.is_test() && record.tenant == caller.tenant.test_twin());
    if !visible {
        return Err(not_found());
    }
    Ok((key_id, record.tenant))
}

/// `name` as a tier of `tiers` (or `default`, which always exists).
fn known_tier(tiers: &[TierRecord], name: &str) -> Result<TierName, Problem> {
    let unknown = || {
        Problem::new(
            ProblemKind::UNKNOWN_TIER,
            format!("no tier {name:?}; define it with PUT /v1/rate-limits/tiers/{name} first"),
        )
    };
    let tier = TierName::new(name).map_err(|_| unknown())?;
    if tier.is_default() || tiers.iter().any(|known| known.tier == tier) {
        Ok(tier)
    } else {
        Err(unknown())
    }
}

/// The limit `request` states, if valid and within `ceiling`.
fn rate_limit(request: &LimitRequest, ceiling: RateLimit) -> Result<RateLimit, Problem> {
    let burst = request.burst.unwrap_or(request.requests);
    let limit = RateLimit::new(request.requests, request.window_seconds, burst)
        .map_err(|error| invalid(error.to_string()))?;
    if !ratelimit::within(limit, ceiling) {
        return Err(Problem::new(
            ProblemKind::LIMIT_ABOVE_CEILING,
            format!(
                "this server allows at most {} requests per {} s, in bursts of up to {}; ask its \
                 operator for more",
                ceiling.requests(),
                ceiling.window_seconds(),
                ceiling.burst()
            ),
        ));
    }
    Ok(limit)
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::INVALID_BODY, detail)
}
