//! The ops routes: the OpenAPI document, docs, health and readiness.

mod support;

use axum::http::StatusCode;
use serde_json::json;
use spool_schemas::Scope;

use support::*;

#[tokio::test]
async fn the_openapi_document_lists_every_v1_route_and_the_bearer_scheme() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    let paths = document.json["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/events", "post"),
        ("/v1/events", "get"),
        ("/v1/events/stream", "get"),
        ("/v1/stats/events", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path}");
        if path.starts_with("/v1") {
            let security = &paths[path][method]["security"];
            assert_eq!(
                security[0]["api_key"].as_array().map(Vec::len),
                Some(1),
                "{path}: {security}"
            );
        }
    }
    let scheme = &document.json["components"]["securitySchemes"]["api_key"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert!(document.json["openapi"].as_str().unwrap().starts_with("3.1"));

    let docs = h.get(None, "/docs/").await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.json.as_str().unwrap_or_default().contains("swagger"), "interactive docs");
}

#[tokio::test]
async fn health_and_readiness_report_the_projections() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let _ = key;
    let health = h.get(None, "/healthz").await;
    assert_eq!(health.json, json!({"status": "ok"}));
    let ready = h.get(None, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.json);
    let names: Vec<&str> = ready.json["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"auth") && names.contains(&"event_counts"), "{names:?}");
    // Checkpoint and head are cursors, as text: one position per partition
    // of the log, joined by dots; the harness's SQLite log has one.
    for projection in ready.json["projections"].as_array().unwrap() {
        for field in ["checkpoint", "head"] {
            let cursor = projection[field].as_str().unwrap_or_default();
            assert!(cursor.parse::<u64>().is_ok(), "{field}: {projection}");
        }
        assert!(projection["lag"].is_u64(), "{projection}");
    }
}
