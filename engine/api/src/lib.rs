//! Spool's HTTP API: the axum router, API-key auth, problem+json errors,
//! the `api.call` recorder and the generated OpenAPI document.
//!
//! This is the only crate that knows HTTP shapes. Its request and response
//! types are its own, converted by hand from the log's and the read models'
//! types, so an internal refactor never changes the wire format by accident.
//!
//! Limits, part of the contract: a request body is at most
//! [`MAX_BODY_BYTES`] (1 MiB, larger ones get `413`), a batch holds at most
//! [`MAX_BATCH_EVENTS`] events, and a page of `GET /v1/events` at most
//! [`MAX_PAGE`] events.
//!
//! Across `/v1`: every request is rate limited per key, with
//! `RateLimit-Policy`/`RateLimit` headers ([`ratelimit`]),
//! `Idempotency-Key` makes POST and PATCH safe to retry ([`idempotency`]),
//! and deprecated routes announce their sunset ([`deprecation`]).

mod auth;
mod auth_cache;
pub mod commands;
pub mod deprecation;
pub mod idempotency;
pub mod keys;
pub mod oauth;
mod openapi;
mod platform;
pub mod problem;
pub mod ratelimit;
pub mod record;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use spool_log::Log;
use spool_projections::{CurrentRunner, Views};
use tokio::sync::watch;

pub use auth::Caller;
pub use auth_cache::AuthCache;
pub use deprecation::{DeprecatedRoute, Deprecations};
pub use idempotency::IdempotencyOptions;
pub use oauth::OAuthOptions;
pub use openapi::openapi;
pub use problem::{Problem, ProblemKind};
pub use ratelimit::{RateLimitOptions, RateLimiter, SharedStore};
pub use record::{Recorder, RecorderHandle, RecorderOptions, UNMATCHED_ROUTE};
pub use routes::usage::UsageCache;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most events one `POST /v1/events` may carry.
pub const MAX_BATCH_EVENTS: usize = 1_000;
/// The default and largest page of `GET /v1/events`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1_000;

/// The public URL when none is configured: the default listen address.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// Tunables of the API that are not part of its contract.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// How often an idle Server-Sent Events stream gets a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// How often an open Server-Sent Events stream checks that its key is
    /// still valid (not revoked, not expired); the stream ends when not.
    /// A key that expires ends its streams at its expiry regardless.
    pub sse_key_recheck: Duration,
    /// `Idempotency-Key` handling: retention, lease, clock.
    pub idempotency: IdempotencyOptions,
    /// The deprecated routes: [`deprecation::DEPRECATED_ROUTES`], or a
    /// table a test injects.
    pub deprecations: Deprecations,
    /// The base URL clients reach this server at, such as
    /// `https://spool.example.com`: the `iss` of the access tokens it
    /// issues and accepts. Every instance sharing a log must agree on it.
    pub public_url: String,
    /// OAuth 2.0 token issuing and checking.
    pub oauth: OAuthOptions,
    /// Rate limiting: built-in limits, the shared store.
    pub rate_limits: RateLimitOptions,
    /// How long a successful credential lookup (an API key's record, an
    /// access token's standing) is trusted before the read model is asked
    /// again: the longest a revocation made elsewhere (another instance,
    /// the CLI) waits here once projected. Zero: no cache.
    pub auth_cache_ttl: Duration,
    /// How long an answer of `GET /v1/usage` is served again to the same
    /// tenant asking the same query. Zero: no cache.
    pub usage_cache_ttl: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            sse_keep_alive: Duration::from_secs(15),
            sse_key_recheck: Duration::from_secs(2),
            idempotency: IdempotencyOptions::default(),
            deprecations: Deprecations::builtin(),
            public_url: DEFAULT_PUBLIC_URL.to_owned(),
            oauth: OAuthOptions::default(),
            rate_limits: RateLimitOptions::default(),
            auth_cache_ttl: Duration::from_millis(500),
            usage_cache_ttl: Duration::from_secs(1),
        }
    }
}

/// Everything a handler needs. [`router`] shares one among all requests
/// (see [`Shared`]).
#[derive(Clone)]
pub struct AppState {
    pub log: Arc<dyn Log>,
    pub views: Views,
    /// The running projections, for `/readyz`.
    pub runner: CurrentRunner,
    /// Where `api.call` records go.
    pub recorder: RecorderHandle,
    /// Renders `/metrics`; `None` answers `/metrics` with an empty page.
    pub metrics: Option<PrometheusHandle>,
    /// Turns `true` when the server shuts down, ending live streams so that
    /// graceful shutdown does not wait on them forever.
    pub shutdown: watch::Receiver<bool>,
    pub options: ApiOptions,
    /// The public keys that verify access tokens, kept once read
    /// (`VerifyingKeys::default()`; clones of one state share it).
    pub oauth_keys: oauth::VerifyingKeys,
    /// Recent successful credential lookups (`AuthCache::default()`;
    /// clones of one state share it): see [`auth_cache`].
    pub auth_cache: AuthCache,
    /// Recent answers of `GET /v1/usage`
    /// (`UsageCache::new(options.usage_cache_ttl)`; clones share it).
    pub usage_cache: UsageCache,
}

/// The state as handlers and middleware get it: one clone per request and
/// layer, so one reference count instead of a copy of every field (which
/// was a tenth of a request's CPU under the load bench).
pub type Shared = Arc<AppState>;

/// The whole API: `/v1` routes (authenticated, each request recorded as an
/// `api.call` event), the OAuth token endpoints (`/oauth/*`, recorded, with
/// this router's own signing keys: see [`oauth`]) and the ops routes
/// (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`,
/// `/.well-known/jwks.json`; neither authenticated nor recorded).
pub fn router(state: AppState) -> Router {
    let state: Shared = Arc::new(state);
    let limiter = RateLimiter::new(&state.options.rate_limits, state.views.clone());
    let recorded = Router::new()
        .route("/v1/events", post(routes::events::ingest).get(routes::events::list))
        .route("/v1/events/stream", get(routes::stream::stream))
        .route("/v1/stats/events", get(routes::stats::event_counts))
        .route("/v1/usage", get(routes::usage::usage))
        .route("/v1/keys", post(routes::keys::create).get(routes::keys::list))
        .route("/v1/keys/{id}", get(routes::keys::show).delete(routes::keys::revoke))
        .route("/v1/keys/{id}/roll", post(routes::keys::roll))
        .route("/v1/oauth/clients", post(oauth::clients::create).get(oauth::clients::list))
        .route("/v1/oauth/clients/{id}", get(oauth::clients::get).delete(oauth::clients::delete))
        .route("/v1/rate-limits/tiers", get(routes::rate_limits::list_tiers))
        .route("/v1/rate-limits/tiers/{tier}", put(routes::rate_limits::set_tier))
        .route(
            "/v1/rate-limits/keys/{id}",
            get(routes::rate_limits::show_key).put(routes::rate_limits::set_key),
        )
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::new(platform::Platform {
                state: state.clone(),
                limiter,
                idempotency: idempotency::Idempotency::new(state.clone()),
            }),
            platform::platform,
        ));
    let ops = Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/.well-known/jwks.json", get(oauth::endpoints::jwks))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/openapi.json", openapi::openapi_with(&state.options.deprecations)),
        );
    recorded.merge(oauth::token_routes(&state)).merge(ops).with_state(state)
}
