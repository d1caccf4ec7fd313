//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the request/response types, served at `/openapi.json` (and `/docs`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::problem::{ProblemBody, ProblemKind};
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
        routes::ops::healthz,
        routes::ops::readyz,
        routes::ops::metrics,
    ),
    components(schemas(ProblemBody)),
    modifiers(&ApiKeyScheme, &ProblemTypes),
    tags(
        (name = "events", description = "App events: ingest, list, follow"),
        (name = "stats", description = "Read models over the events"),
        (name = "ops", description = "Health, readiness and metrics; no key needed"),
    ),
)]
struct ApiDoc;

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

/// The document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
