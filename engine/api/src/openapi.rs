//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the request/response types, served at `/openapi.json` (and `/docs`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::deprecation::Deprecations;
use crate::idempotency::IdempotencyHeader;
use crate::oauth;
use crate::oauth::endpoints::OAuthSchemes;
use crate::problem::{ProblemBody, ProblemKind};
use crate::ratelimit::RateLimitDocs;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spool API",
        description = "Spool's public REST API. Authenticate with `Authorization: Bearer <API key>`. \
                       Errors are RFC 9457 `application/problem+json` documents whose `type` is stable.",
    ),
    paths(
        routes::events::ingest,
        routes::events::list,
        routes::stream::stream,
        routes::stats::event_counts,
        routes::usage::usage,
        routes::keys::create,
        routes::keys::list,
        routes::keys::show,
        routes::keys::revoke,
        routes::keys::roll,
        routes::rate_limits::list_tiers,
        routes::rate_limits::set_tier,
        routes::rate_limits::show_key,
        routes::rate_limits::set_key,
        routes::ops::healthz,
        routes::ops::readyz,
        routes::ops::metrics,
        oauth::clients::create,
        oauth::clients::list,
        oauth::clients::get,
        oauth::clients::delete,
        oauth::endpoints::token,
        oauth::endpoints::introspect,
        oauth::endpoints::revoke,
        oauth::endpoints::jwks,
    ),
    components(schemas(ProblemBody)),
    modifiers(&ApiKeyScheme, &ProblemTypes, &OAuthSchemes, &IdempotencyHeader, &RateLimitDocs),
    tags(
        (name = "events", description = "App events: ingest, list, follow"),
        (name = "stats", description = "Read models over the events"),
        (name = "usage", description = "API usage analytics: requests, errors, latency percentiles (needs `usage:read`)"),
        (name = "keys", description = "API keys: issue, list, roll, revoke; live and test mode (needs `admin`)"),
        (name = "oauth", description = "OAuth 2.0 client credentials: clients, tokens (JWT), introspection, revocation, keys"),
        (name = "rate-limits", description = "Rate-limit tiers and per-key limits (needs `admin`); every /v1 response carries `RateLimit-Policy` and `RateLimit`"),
        (name = "ops", description = "Health, readiness and metrics; no key needed"),
    ),
)]
pub(crate) struct ApiDoc;

/// The `api_key` security scheme the `/v1` routes name.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key")
                    .description(Some(
                        "An API key (`spk_live_…`), sent as `Authorization: Bearer <key>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Lists every problem `type` in the document's description.
struct ProblemTypes;

impl Modify for ProblemTypes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut text = openapi.info.description.take().unwrap_or_default();
        text.push_str("\n\nProblem types:\n");
        for kind in ProblemKind::ALL {
            text.push_str(&format!(
                "\n- `{}` ({}): {}",
                kind.type_uri(),
                kind.status.as_u16(),
                kind.title
            ));
        }
        openapi.info.description = Some(text);
    }
}

/// The document, with the built-in deprecations marked.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi_with(&Deprecations::builtin())
}

/// The document with the operations of `deprecations` marked deprecated.
pub(crate) fn openapi_with(deprecations: &Deprecations) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    for missing in deprecations.mark(&mut document) {
        tracing::warn!(route = %missing, "a deprecated route is not in the OpenAPI document");
    }
    document
}
