//! `POST /v1/events`: plain and CloudEvents bodies, batches, idempotent
//! retries, and the problems bad input gets.

mod support;

use axum::body::Body;
use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use spool_schemas::Scope;

use support::*;

#[tokio::test]
async fn a_single_event_is_stored_and_listed() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let response = h
        .post_json(
            &key,
            json!({"type": "order.created", "data": {"total": 12}, "subject": "order/1"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    let stored = &response.json["events"][0];
    assert!(stored["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(stored["stream"], "order/1");
    assert_eq!(stored["stream_version"], 1);
    assert_eq!(stored["duplicate"], false);

    let page = h.get(Some(&key), "/v1/events").await;
    assert_eq!(page.status, StatusCode::OK);
    let events = page.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only app events are listed: {}", page.json);
    assert_eq!(events[0]["type"], "order.created");
    assert_eq!(events[0]["data"], json!({"total": 12}));
    assert_eq!(events[0]["position"], stored["position"]);
    assert_eq!(events[0]["id"], stored["id"]);

    let without_subject = h.post_json(&key, json!({"type": "user.signed_up"})).await;
    assert_eq!(without_subject.status, StatusCode::CREATED);
    assert_eq!(
        without_subject.json["events"][0]["stream"], "user.signed_up",
        "without a subject the stream is the type name"
    );
}

#[tokio::test]
async fn a_batch_is_stored_in_order() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let response = h
        .post_json(
            &key,
            json!({"events": [
                {"type": "order.created", "subject": "order/7", "data": 1},
                {"type": "order.paid", "subject": "order/7", "data": 2},
                {"type": "invoice.sent", "data": 3},
            ]}),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    let events = response.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[1] == w[0] + 1), "{positions:?}");
    assert_eq!(events[1]["stream_version"], 2);
    let stored = h.non_api_call_events().await;
    let types: Vec<&str> = stored.iter().map(|e| e.type_name.as_str()).collect();
    assert_eq!(
        types,
        ["tenant.created", "key.created", "order.created", "order.paid", "invoice.sent"]
    );
}

#[tokio::test]
async fn cloudevents_structured_mode_and_batches_are_accepted() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let cloud_event = json!({
        "specversion": "1.0",
        "id": "A-1",
        "source": "/shop",
        "type": "com.example.order.created",
        "subject": "order/9",
        "time": "2026-01-01T10:00:00Z",
        "datacontenttype": "application/json",
        "data": {"n": 1},
    });
    let response = h.post(&key, "application/cloudevents+json", cloud_event.to_string()).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    assert_eq!(response.json["events"][0]["stream"], "order/9");

    let retry = h.post(&key, "application/cloudevents+json", cloud_event.to_string()).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.json["events"][0]["duplicate"], true, "source + id identify it");
    assert_eq!(stored_ids(&retry), stored_ids(&response));

    let batch = json!([
        {"specversion": "1.0", "id": "B-1", "source": "/shop", "type": "cart.emptied"},
        {"specversion": "1.0", "id": "A-1", "source": "/other", "type": "cart.emptied", "data": [1]},
    ]);
    let response = h.post(&key, "application/cloudevents-batch+json", batch.to_string()).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    assert_eq!(response.json["events"][1]["duplicate"], false);

    let page = h.get(Some(&key), "/v1/events?type=cart.emptied").await;
    assert_eq!(page.json["events"].as_array().unwrap().len(), 2);
    assert_eq!(page.json["events"][1]["data"], json!([1]));

    let wrong_version = h
        .post(
            &key,
            "application/cloudevents+json",
            json!({"specversion": "0.3", "id": "x", "source": "/s", "type": "a.b"}).to_string(),
        )
        .await;
    assert_eq!(wrong_version.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_version.problem_type(), "https://spool.dev/problems/invalid-cloudevent");
    let missing_source = h
        .post(
            &key,
            "application/cloudevents+json",
            json!({"specversion": "1.0", "id": "x", "type": "a.b"}).to_string(),
        )
        .await;
    assert_eq!(missing_source.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(missing_source.json["detail"].as_str().unwrap().contains("source"));
}

#[tokio::test]
async fn a_retry_with_the_same_id_returns_the_stored_event_and_stores_nothing() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let body = json!({"events": [
        {"type": "order.created", "id": "order-1", "data": {"n": 1}},
        {"type": "order.created", "id": "order-2", "data": {"n": 2}},
    ]});
    let first = h.post_json(&key, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let before = h.non_api_call_events().await.len();

    let retry = h.post_json(&key, body).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(stored_ids(&retry), stored_ids(&first));
    assert_eq!(retry.json["events"][0]["position"], first.json["events"][0]["position"]);
    assert!(retry.json["events"].as_array().unwrap().iter().all(|e| e["duplicate"] == true));
    assert_eq!(h.non_api_call_events().await.len(), before);

    // The same client id in another tenant is another event.
    let other = h.tenant(&[Scope::EventsWrite]).await;
    let elsewhere = h.post_json(&other, json!({"type": "order.created", "id": "order-1"})).await;
    assert_eq!(elsewhere.json["events"][0]["duplicate"], false);
    assert_ne!(stored_ids(&elsewhere)[0], stored_ids(&first)[0]);
}

#[tokio::test]
async fn bad_input_gets_a_problem_with_the_right_status_and_stores_nothing() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let too_many: Vec<Value> = (0..1_001).map(|_| json!({"type": "a.b"})).collect();
    let too_large = json!({"type": "a.b", "data": "x".repeat(spool_api::MAX_BODY_BYTES)});
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "application/json",
            "{\"type\": ".into(),
            StatusCode::BAD_REQUEST,
            "malformed-json",
        ),
        (
            "unknown field",
            "application/json",
            json!({"type": "a.b", "colour": 1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "missing type",
            "application/json",
            json!({"data": 1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "invalid type",
            "application/json",
            json!({"type": "order created"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-event-type",
        ),
        (
            "reserved type",
            "application/json",
            json!({"type": "api.call"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-event-type",
        ),
        (
            "one bad event spoils the batch",
            "application/json",
            json!({"events": [{"type": "a.b"}, {"type": "key.created"}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-event-type",
        ),
        (
            "invalid subject",
            "application/json",
            json!({"type": "a.b", "subject": "has space"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-subject",
        ),
        (
            "reserved subject",
            "application/json",
            json!({"type": "a.b", "subject": "key/key_1"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-subject",
        ),
        (
            "empty batch",
            "application/json",
            json!({"events": []}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-many-events",
        ),
        (
            "batch over 1,000",
            "application/json",
            json!({"events": too_many}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-many-events",
        ),
        (
            "same id twice",
            "application/json",
            json!({"events": [{"type": "a.b", "id": "1"}, {"type": "a.c", "id": "1"}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate-event-id",
        ),
        (
            "body over 1 MiB",
            "application/json",
            too_large.to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
        ),
        (
            "form body",
            "application/x-www-form-urlencoded",
            "type=a.b".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
    ];
    let before = h.non_api_call_events().await;
    for (n, (name, content_type, body, status, slug)) in cases.into_iter().enumerate() {
        let response = h.post(&key, content_type, body).await;
        assert_eq!(response.status, status, "{name}: {}", response.json);
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/problem+json", "{name}");
        assert_eq!(response.problem_type(), format!("https://spool.dev/problems/{slug}"), "{name}");
        assert_eq!(response.json["status"], status.as_u16(), "{name}");
        assert!(response.json["title"].is_string(), "{name}");
        assert!(!response.json["detail"].as_str().unwrap().is_empty(), "{name}");
        // The request's own record is the only thing it added.
        h.api_calls(n + 1).await;
        assert_eq!(h.non_api_call_events().await, before, "{name} stored something");
    }

    // A single event's errors name the field directly; a batch's also say
    // which event.
    for (body, expected) in [
        (json!({"type": "api.call"}), "invalid event type \"api.call\": "),
        (json!({"type": "a.b", "subject": "has space"}), "invalid stream name \"has space\": "),
        (json!({"type": "a.b", "id": ""}), "`id` must be"),
        (json!({"events": [{"type": "api.call"}]}), "events[0]: invalid event type \"api.call\": "),
        (
            json!({"events": [{"type": "a.b"}, {"type": "api.call"}]}),
            "events[1]: invalid event type \"api.call\": ",
        ),
    ] {
        let response = h.post_json(&key, body.clone()).await;
        assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", response.json);
        let detail = response.json["detail"].as_str().unwrap();
        assert!(detail.starts_with(expected), "{body}: {detail}");
        if body.get("events").is_none() {
            assert!(!detail.contains("events["), "{body}: {detail}");
        }
    }

    for (uri, name) in [
        ("/v1/events?limit=0", "zero limit"),
        ("/v1/events?limit=1001", "limit over 1,000"),
        ("/v1/events?after=minus", "non-numeric after"),
        ("/v1/events?colour=red", "unknown parameter"),
        ("/v1/events?type=api.*", "a Spool namespace"),
    ] {
        let response = h.get(Some(&key), uri).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{name}: {}", response.json);
        assert_eq!(response.problem_type(), "https://spool.dev/problems/invalid-query", "{name}");
    }
}

/// Regression: a plain id and a CloudEvent's `source` + `id` were joined
/// with a newline, so different events could share an event id.
#[tokio::test]
async fn client_ids_of_different_kinds_or_splits_never_collide() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let cloud_event = |source: &str, id: &str| {
        json!({"specversion": "1.0", "id": id, "source": source, "type": "a.b"}).to_string()
    };
    let mut ids = Vec::new();
    for body in
        [cloud_event("/shop", "A-1"), cloud_event("/shop\nA", "1"), cloud_event("/shop", "A\n1")]
    {
        let response = h.post(&key, "application/cloudevents+json", body).await;
        assert_eq!(response.json["events"][0]["duplicate"], false, "{}", response.json);
        ids.extend(stored_ids(&response));
    }
    let plain = h.post_json(&key, json!({"type": "a.b", "id": "/shop\nA-1"})).await;
    assert_eq!(plain.json["events"][0]["duplicate"], false, "{}", plain.json);
    ids.extend(stored_ids(&plain));
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
}

/// Regression: a retry naming another subject was answered with that
/// subject, not the stream the event is stored in.
#[tokio::test]
async fn a_duplicate_reports_the_stored_events_stream() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let first = h.post_json(&key, json!({"type": "a.b", "id": "x", "subject": "order/1"})).await;
    let retry = h.post_json(&key, json!({"type": "a.b", "id": "x", "subject": "order/2"})).await;
    assert_eq!(retry.json["events"][0]["duplicate"], true);
    assert_eq!(retry.json["events"][0]["stream"], "order/1");
    assert_eq!(retry.json["events"][0]["position"], first.json["events"][0]["position"]);
}

/// Regression: any failure to read the body was answered `413`.
#[tokio::test]
async fn a_body_that_cannot_be_read_is_a_400_not_a_413() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let broken = Body::from_stream(futures::stream::iter([
        Ok(b"{\"type\":".to_vec()),
        Err(std::io::Error::other("connection reset")),
    ]));
    let response = h.post(&key, "application/json", broken).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{}", response.json);
    assert_eq!(response.problem_type(), "https://spool.dev/problems/unreadable-body");
}
