//! `GET /v1/stats/events`: per-minute counts and the filters they accept.

mod support;

use axum::http::StatusCode;
use serde_json::json;
use spool_schemas::{Position, Scope};

use support::*;

#[tokio::test]
async fn stats_count_events_per_minute_for_the_callers_tenant() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let response = h
        .post_json(
            &key,
            json!({"events": [
                {"type": "order.created"}, {"type": "order.created"}, {"type": "order.paid"},
            ]}),
        )
        .await;
    let last = response.json["events"][2]["position"].as_u64().unwrap();
    h.runner.wait_for(Position(last)).await.unwrap();

    let stats = h.get(Some(&key), "/v1/stats/events?type=order.*").await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.json);
    let mut totals = std::collections::BTreeMap::new();
    for count in stats.json["counts"].as_array().unwrap() {
        assert!(count["minute"].as_str().unwrap().ends_with(":00Z"), "{count}");
        *totals.entry(count["type"].as_str().unwrap().to_owned()).or_insert(0) +=
            count["count"].as_u64().unwrap();
    }
    assert_eq!(totals.get("order.created"), Some(&2));
    assert_eq!(totals.get("order.paid"), Some(&1));

    let future = h.get(Some(&key), "/v1/stats/events?from=2999-01-01T00:00:00Z").await;
    assert_eq!(future.json["counts"], json!([]));
    let bad = h.get(Some(&key), "/v1/stats/events?from=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.problem_type(), "https://spool.dev/problems/invalid-query");

    let other = h.tenant(&[Scope::EventsRead]).await;
    let theirs = h.get(Some(&other), "/v1/stats/events?type=order.*").await;
    assert_eq!(theirs.json["counts"], json!([]), "counts are per tenant");
}

#[tokio::test]
async fn stats_refuse_type_filters_that_events_refuse() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    for uri in ["/v1/stats/events?type=api.*", "/v1/stats/events?type=has%20space"] {
        let response = h.get(Some(&key), uri).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{uri}: {}", response.json);
        assert_eq!(response.problem_type(), "https://spool.dev/problems/invalid-query");
    }
    assert_eq!(h.get(Some(&key), "/v1/stats/events?type=order.*").await.status, StatusCode::OK);
}
