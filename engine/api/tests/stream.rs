//! `GET /v1/events/stream`: live SSE delivery, resuming, and how a stream
//! ends.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use serde_json::{Value, json};
use spool_api::ApiOptions;
use spool_schemas::Scope;
use tower::ServiceExt;

use support::*;

#[tokio::test]
async fn the_sse_stream_delivers_live_events_and_resumes_from_last_event_id() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let stream_request = |last_event_id: Option<u64>| {
        let mut request = Request::builder()
            .uri("/v1/events/stream?type=order.*")
            .header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        request.body(Body::empty()).unwrap()
    };
    let response = h.app.clone().oneshot(stream_request(None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream")
    );
    let mut body = response.into_body().into_data_stream();

    let first = h
        .post_json(
            &key,
            json!({"events": [
                {"type": "invoice.sent", "data": "not for this filter"},
                {"type": "order.created", "data": {"n": 1}},
            ]}),
        )
        .await;
    let first_position = first.json["events"][1]["position"].as_u64().unwrap();
    let text = read_sse(&mut body, |text| text.contains("\n\n")).await;
    assert!(text.contains(&format!("id: {first_position}\n")), "{text}");
    assert!(text.contains("event: order.created\n"), "{text}");
    assert!(!text.contains("invoice.sent"), "{text}");
    let data_line = text.lines().find(|line| line.starts_with("data: ")).unwrap();
    let envelope: Value = serde_json::from_str(&data_line["data: ".len()..]).unwrap();
    assert_eq!(envelope["data"], json!({"n": 1}));
    assert_eq!(envelope["position"], first_position);
    drop(body);

    let second = h.post_json(&key, json!({"type": "order.paid", "data": 2})).await;
    let second_position = second.json["events"][0]["position"].as_u64().unwrap();
    let resumed = h.app.clone().oneshot(stream_request(Some(first_position))).await.unwrap();
    let mut body = resumed.into_body().into_data_stream();
    let text = read_sse(&mut body, |text| text.contains("\n\n")).await;
    assert!(
        text.starts_with(&format!("id: {second_position}\nevent: order.paid\n")),
        "resumes right after Last-Event-ID: {text}"
    );
}

/// Regression: the key of a live stream was checked once, at connect, so
/// a revoked or expired key kept receiving events.
#[tokio::test]
async fn an_open_event_stream_ends_when_its_key_is_revoked_or_expires() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let response = h.app.clone().oneshot(stream_request(&key, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    h.post_json(&key, json!({"type": "order.created"})).await;
    read_sse(&mut body, |text| text.contains("event: order.created")).await;
    h.revoke(&key).await;
    // Rechecked every 2 s by default.
    read_to_end(&mut body, Duration::from_secs(5)).await;

    let expiring = h
        .key(key.tenant, &[Scope::EventsRead], Some(Utc::now() + chrono::Duration::seconds(1)))
        .await;
    let response =
        h.app.clone().oneshot(stream_request(&expiring, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    read_to_end(&mut body, Duration::from_secs(4)).await;
}

/// Regression: an event that could not be rendered was skipped silently.
#[tokio::test]
async fn an_unrenderable_event_ends_the_stream_with_an_error_naming_its_position() {
    let h = harness_with(ApiOptions::default(), |log| Faulty::new(log, 0)).await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let response = h.app.clone().oneshot(stream_request(&key, "/v1/events/stream")).await.unwrap();
    let mut body = response.into_body().into_data_stream();
    let stored = h
        .post_json(
            &key,
            json!({"events": [{"type": "good.one"}, {"type": "bad.data"}, {"type": "good.two"}]}),
        )
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.json);
    let bad_position = stored.json["events"][1]["position"].as_u64().unwrap();

    let text = read_to_end(&mut body, WAIT).await;
    assert!(text.contains("event: good.one\n"), "{text}");
    assert!(!text.contains("good.two"), "nothing after the failure: {text}");
    let error = text.split("\n\n").find(|message| message.contains("event: error")).expect(&text);
    assert!(!error.contains("id:"), "the error does not move Last-Event-ID: {error}");
    let data = error.lines().find_map(|line| line.strip_prefix("data: ")).unwrap();
    let problem: Value = serde_json::from_str(data).unwrap();
    assert_eq!(problem["type"], "https://spool.dev/problems/internal");
    assert!(
        problem["detail"].as_str().unwrap().contains(&format!("position {bad_position}")),
        "{problem}"
    );
}
