//! `GET /v1/events`: filtering by type and stream, and paging.

mod support;

use axum::http::StatusCode;
use serde_json::json;
use spool_schemas::Scope;

use support::*;

#[tokio::test]
async fn listing_filters_by_type_prefix_and_stream_and_pages_with_the_next_cursor() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let mut batch = Vec::new();
    for n in 0..7 {
        batch.push(
            json!({"type": "order.created", "subject": format!("order/{}", n % 2), "data": n}),
        );
        batch.push(json!({"type": "invoice.sent", "data": n}));
    }
    batch.push(json!({"type": "order.shipped.late", "subject": "order/0", "data": 99}));
    assert_eq!(h.post_json(&key, json!({"events": batch})).await.status, StatusCode::CREATED);

    let mut seen = Vec::new();
    let mut uri = "/v1/events?type=order.*&limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = h.get(Some(&key), &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.json);
        pages += 1;
        for event in page.json["events"].as_array().unwrap() {
            assert!(event["type"].as_str().unwrap().starts_with("order."));
            seen.push(event["data"].as_i64().unwrap());
        }
        if page.json["has_more"] == false {
            break;
        }
        assert!(pages < 10, "paging terminates");
        uri = format!("/v1/events?type=order.*&limit=3&after={}", page.json["next"]);
    }
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6, 99], "every order event once, in order");
    assert_eq!(pages, 3);

    let stream = h.get(Some(&key), "/v1/events?stream=order/0&limit=1000").await;
    let data: Vec<i64> = stream.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [0, 2, 4, 6, 99]);

    let both = h.get(Some(&key), "/v1/events?type=invoice.sent,order.shipped.late").await;
    assert_eq!(both.json["events"].as_array().unwrap().len(), 8);
}
