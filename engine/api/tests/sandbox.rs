//! Test mode (sandbox): a `spk_test_` key reads and writes only its
//! tenant's test data and a live key only live data, in listings and in
//! live streams; every event view says which it is (`livemode`).

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use spool_schemas::Scope;
use tower::ServiceExt;

use support::*;

/// A live admin key and a test key of the same tenant, the test key
/// issued through `POST /v1/keys` with `mode: test`.
async fn live_and_test_keys(h: &Harness) -> (Key, Key) {
    let live = h.tenant(&[Scope::Admin]).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/keys")
        .header(header::AUTHORIZATION, format!("Bearer {}", live.secret))
        .body(Body::from(
            json!({"name": "sandbox", "scopes": ["events:read", "events:write"], "mode": "test"})
                .to_string(),
        ))
        .unwrap();
    let created = h.send(request).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    let test = Key {
        tenant: live.tenant.test_twin(),
        key_id: created.json["id"].as_str().unwrap().parse().unwrap(),
        secret: created.json["secret"].as_str().unwrap().to_owned(),
    };
    (live, test)
}

fn datas(page: &Response) -> Vec<(Value, Value)> {
    page.json["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", page.json))
        .iter()
        .map(|event| (event["data"].clone(), event["livemode"].clone()))
        .collect()
}

#[tokio::test]
async fn test_and_live_events_never_appear_in_each_others_listings() {
    let h = harness().await;
    let (live, test) = live_and_test_keys(&h).await;
    let sent = |key: Key, data: &'static str| {
        let h = &h;
        async move {
            let body = json!({"type": "order.placed", "subject": "order/1", "data": data});
            let response = h.post_json(&key, body).await;
            assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
            response.json["events"][0]["stream_version"].clone()
        }
    };
    assert_eq!(sent(live.clone(), "live 1").await, 1);
    assert_eq!(sent(test.clone(), "test 1").await, 1, "the sandbox has streams of its own");
    assert_eq!(sent(live.clone(), "live 2").await, 2);

    for uri in ["/v1/events", "/v1/events?type=order.*", "/v1/events?stream=order/1"] {
        let live_page = h.get(Some(&live), uri).await;
        assert_eq!(
            datas(&live_page),
            [(json!("live 1"), json!(true)), (json!("live 2"), json!(true))],
            "{uri}"
        );
        let test_page = h.get(Some(&test), uri).await;
        assert_eq!(datas(&test_page), [(json!("test 1"), json!(false))], "{uri}");
    }

    // The test key's requests are recorded in the sandbox too.
    let calls = h.api_calls(7).await;
    let by_test: Vec<_> =
        calls.iter().filter(|(_, call)| call.key_id == Some(test.key_id)).collect();
    assert!(!by_test.is_empty());
    assert!(by_test.iter().all(|(tenant, _)| *tenant == test.tenant && tenant.is_test()));
}

#[tokio::test]
async fn test_and_live_events_never_appear_in_each_others_streams() {
    let h = harness().await;
    let (live, test) = live_and_test_keys(&h).await;
    let open = |key: &Key| {
        let request = stream_request(key, "/v1/events/stream");
        let app = h.app.clone();
        async move { app.oneshot(request).await.unwrap().into_body().into_data_stream() }
    };
    let (mut live_stream, mut test_stream) = (open(&live).await, open(&test).await);

    for (key, data) in [(&test, "test 1"), (&live, "live 1"), (&test, "test 2")] {
        let response = h.post_json(key, json!({"type": "order.placed", "data": data})).await;
        assert_eq!(response.status, StatusCode::CREATED);
    }
    // A marker last, so that reading up to it shows everything before.
    h.post_json(&live, json!({"type": "marker.sent", "data": "end"})).await;
    h.post_json(&test, json!({"type": "marker.sent", "data": "end"})).await;

    let marker_seen = |text: &str| {
        sse_messages(text).iter().any(|message| message.event.as_deref() == Some("marker.sent"))
    };
    let seen = |text: &str| -> Vec<(Value, Value)> {
        sse_messages(text)
            .iter()
            .map(|message| {
                let view = message.json();
                (view["data"].clone(), view["livemode"].clone())
            })
            .collect()
    };
    let live_text = read_sse(&mut live_stream, marker_seen).await;
    assert_eq!(
        seen(&live_text),
        [(json!("live 1"), json!(true)), (json!("end"), json!(true))],
        "{live_text}"
    );
    let test_text = read_sse(&mut test_stream, marker_seen).await;
    assert_eq!(
        seen(&test_text),
        [
            (json!("test 1"), json!(false)),
            (json!("test 2"), json!(false)),
            (json!("end"), json!(false))
        ],
        "{test_text}"
    );
}
