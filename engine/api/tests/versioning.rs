//! API versioning: every public route is under `/v1` (a few standard
//! locations aside), and a deprecated route announces itself in its
//! responses (`Deprecation`, `Sunset`, `Link`) and in the OpenAPI
//! document, both driven by one table, injected here.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use spool_api::{ApiOptions, DeprecatedRoute, Deprecations};
use spool_schemas::Scope;

use support::*;

/// `GET /v1/stats/events` deprecated, as a test table: nothing is
/// deprecated in the built-in one.
const STATS_DEPRECATED: DeprecatedRoute = DeprecatedRoute {
    method: "GET",
    route: "/v1/stats/events",
    deprecated_at: "2026-01-01T00:00:00Z",
    sunset_at: "2026-07-01T12:00:00Z",
    successor: Some("/v1/usage"),
    documentation: Some("https://spool.dev/docs/deprecations#stats-events"),
};

async fn harness_deprecating(routes: &[DeprecatedRoute]) -> Harness {
    let deprecations = Deprecations::new(routes).unwrap();
    harness_with(ApiOptions { deprecations, ..ApiOptions::default() }, |log| log).await
}

#[tokio::test]
async fn a_deprecated_route_announces_its_deprecation_sunset_and_successor() {
    let h = harness_deprecating(&[STATS_DEPRECATED]).await;
    let key = h.tenant(&[Scope::EventsRead]).await;

    let answered = h.get(Some(&key), "/v1/stats/events").await;
    assert_eq!(answered.status, StatusCode::OK, "the route still works: {}", answered.json);
    assert_eq!(answered.headers["deprecation"], "@1767225600");
    assert_eq!(answered.headers["sunset"], "Wed, 01 Jul 2026 12:00:00 GMT");
    let links: Vec<_> =
        answered.headers.get_all("link").iter().map(|link| link.to_str().unwrap()).collect();
    assert_eq!(
        links,
        [
            "</v1/usage>; rel=\"successor-version\"",
            "<https://spool.dev/docs/deprecations#stats-events>; rel=\"deprecation\"; type=\"text/html\"",
        ]
    );

    let refused = h.get(None, "/v1/stats/events").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers["deprecation"], "@1767225600",
        "errors of a deprecated route say so too"
    );
}

#[tokio::test]
async fn other_routes_and_methods_are_untouched() {
    let h = harness_deprecating(&[STATS_DEPRECATED]).await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let listed = h.get(Some(&key), "/v1/events").await;
    assert_eq!(listed.status, StatusCode::OK);
    let posted = h
        .send(
            axum::http::Request::builder()
                .method(Method::POST)
                .uri("/v1/stats/events")
                .header("authorization", format!("Bearer {}", key.secret))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(posted.status, StatusCode::METHOD_NOT_ALLOWED);
    for response in [listed, posted] {
        for name in ["deprecation", "sunset", "link"] {
            assert!(!response.headers.contains_key(name), "{name} on a route not deprecated");
        }
    }
}

#[tokio::test]
async fn the_openapi_document_marks_the_deprecated_operation() {
    let h = harness_deprecating(&[STATS_DEPRECATED]).await;
    let document = h.get(None, "/openapi.json").await.json;
    let operation = &document["paths"]["/v1/stats/events"]["get"];
    assert_eq!(operation["deprecated"], true);
    let description = operation["description"].as_str().unwrap();
    assert!(
        description.starts_with(
            "**Deprecated** since 2026-01-01; it may stop answering after 2026-07-01. \
             Use `/v1/usage` instead."
        ),
        "{description}"
    );
    assert_eq!(deprecated_operations(&document), ["GET /v1/stats/events"]);
}

#[tokio::test]
async fn nothing_is_deprecated_by_default() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    let answered = h.get(Some(&key), "/v1/stats/events").await;
    assert!(!answered.headers.contains_key("deprecation"));
    let document = h.get(None, "/openapi.json").await.json;
    assert_eq!(deprecated_operations(&document), Vec::<String>::new());
}

#[tokio::test]
async fn every_public_route_is_versioned_under_v1() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    // Outside /v1 only what has a standard place of its own: the ops
    // routes, OAuth's endpoints (RFC 6749, 7662, 7009) and well-known URIs
    // (RFC 8615).
    let unversioned: Vec<_> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|path| {
            !path.starts_with("/v1/")
                && !["/healthz", "/readyz", "/metrics"].contains(&path.as_str())
                && !path.starts_with("/oauth/")
                && !path.starts_with("/.well-known/")
        })
        .collect();
    assert_eq!(unversioned, Vec::<&String>::new());
}

/// `METHOD path` of every operation marked deprecated.
fn deprecated_operations(document: &Value) -> Vec<String> {
    let mut deprecated = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("deprecated") == Some(&Value::Bool(true)) {
                deprecated.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    deprecated
}
