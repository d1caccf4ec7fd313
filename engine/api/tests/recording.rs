//! `api.call` records: what is recorded, and the recorder's batching,
//! backpressure and retries.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use spool_api::{Recorder, RecorderOptions};
use spool_log::{Log, MemoryLog, NewEvent};
use spool_schemas::{ApiCall, Event, KeyId, Position, Scope, StreamName, TenantId};
use tower::ServiceExt;

use support::*;

#[tokio::test]
async fn every_v1_request_is_recorded_as_an_api_call_and_ops_routes_are_not() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    // First, so that were they recorded, their records would come first.
    for ops in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(h.get(None, ops).await.status, StatusCode::OK, "{ops}");
    }
    h.post_json(&key, json!({"type": "a.b"})).await;
    h.get(Some(&key), "/v1/events?limit=5").await;
    h.get(None, "/v1/events").await;
    h.get(Some(&key), "/v1/nowhere/42").await;
    h.send(
        Request::builder().method(Method::DELETE).uri("/v1/events").body(Body::empty()).unwrap(),
    )
    .await;

    let calls = h.api_calls(5).await;
    let summary: Vec<(TenantId, Option<KeyId>, &str, &str, u16)> = calls
        .iter()
        .map(|(tenant, call)| {
            (*tenant, call.key_id, call.method.as_str(), call.route.as_str(), call.status)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (key.tenant, Some(key.key_id), "POST", "/v1/events", 201),
            (key.tenant, Some(key.key_id), "GET", "/v1/events", 200),
            (TenantId::SYSTEM, None, "GET", "/v1/events", 401),
            // A valid key is known even on an unknown route: the rate
            // limiter authenticates every `/v1` request, to count it.
            (key.tenant, Some(key.key_id), "GET", spool_api::UNMATCHED_ROUTE, 404),
            (TenantId::SYSTEM, None, "DELETE", "/v1/events", 405),
        ]
    );
    let streams: Vec<String> = h
        .read_all()
        .await
        .into_iter()
        .filter(|event| event.type_name == "api.call")
        .map(|event| event.stream.as_str().to_owned())
        .collect();
    assert_eq!(streams[0], format!("api/{}", key.key_id));
    assert_eq!(streams[2], "api/anonymous");
    assert_eq!(h.api_calls(0).await.len(), 5, "ops routes are not recorded");
}

#[tokio::test]
async fn the_recorder_appends_what_is_queued_in_one_append_and_applies_backpressure() {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let recorder = Recorder::new(
        log.clone(),
        RecorderOptions { capacity: 3, max_batch: 1_000, ..RecorderOptions::default() },
    );
    let handle = recorder.handle();
    let record = || {
        NewEvent::new(
            TenantId::SYSTEM,
            StreamName::new("api/anonymous").unwrap(),
            Event::ApiCall(ApiCall {
                key_id: None,
                client_id: None,
                method: "GET".into(),
                route: "/v1/events".into(),
                status: 401,
                latency_us: 1,
            }),
        )
    };
    for _ in 0..3 {
        handle.record(record()).await;
    }
    let sender = handle.clone();
    drop(handle);
    let mut fourth = Box::pin(async move { sender.record(record()).await });
    assert!(futures::poll!(&mut fourth).is_pending(), "a full queue makes the sender wait");
    let (report, ()) = tokio::join!(recorder.run(std::future::pending()), async move {
        // Completing drops the last handle, which ends the recorder.
        fourth.await;
    });
    assert_eq!(report.recorded, 4);
    assert_eq!(report.failed, 0);
    assert!(report.appends <= 2, "queued records share appends: {report:?}");
    assert_eq!(*log.head(0).borrow(), Position(4));
}

/// Regression: a request whose client disconnected before the response was
/// ready left no `api.call` record (the middleware's future was dropped).
#[tokio::test]
async fn a_request_whose_client_went_away_is_recorded_with_status_499() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let never_ending =
        Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .body(never_ending)
        .unwrap();
    let abandoned =
        tokio::time::timeout(Duration::from_millis(300), h.app.clone().oneshot(request));
    assert!(abandoned.await.is_err(), "the handler waits for the body");

    let calls = h.api_calls(1).await;
    assert_eq!(calls[0].0, key.tenant);
    assert_eq!(calls[0].1.key_id, Some(key.key_id));
    assert_eq!(calls[0].1.status, spool_api::record::CLIENT_CLOSED_REQUEST);
    assert_eq!((calls[0].1.method.as_str(), calls[0].1.route.as_str()), ("POST", "/v1/events"));
}

#[tokio::test]
async fn a_nonstandard_method_is_recorded_as_other() {
    let h = harness().await;
    let request = Request::builder()
        .method(Method::from_bytes(b"PURGE-12345").unwrap())
        .uri("/v1/events")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.send(request).await.status, StatusCode::METHOD_NOT_ALLOWED);
    let calls = h.api_calls(1).await;
    assert_eq!(calls[0].1.method, "OTHER");
}

/// Regression: one failed append dropped the whole batch of records.
#[tokio::test]
async fn the_recorder_retries_a_failed_append_until_it_is_stored() {
    let memory: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let log = Faulty::new(memory.clone(), 3);
    let options = RecorderOptions {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(10),
        ..RecorderOptions::default()
    };
    let recorder = Recorder::new(log, options);
    let handle = recorder.handle();
    for status in [200, 201, 401] {
        handle.record(record_of(status)).await;
    }
    drop(handle);
    let report = tokio::time::timeout(WAIT, recorder.run(std::future::pending())).await.unwrap();
    assert_eq!((report.recorded, report.retries, report.failed), (3, 3, 0), "{report:?}");
    assert_eq!(*memory.head(0).borrow(), Position(3));
}

fn record_of(status: u16) -> NewEvent {
    NewEvent::new(
        TenantId::SYSTEM,
        StreamName::for_api_calls(None),
        Event::ApiCall(ApiCall {
            key_id: None,
            client_id: None,
            method: "GET".into(),
            route: "/v1/usage".into(),
            status,
            latency_us: 1,
        }),
    )
}

/// Records that arrive within the linger share one append (one commit),
/// and a record is appended once the linger is over even if no other
/// comes.
#[tokio::test]
async fn records_arriving_within_the_linger_share_one_append() {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let options =
        RecorderOptions { linger: Duration::from_millis(300), ..RecorderOptions::default() };
    let recorder = Recorder::new(log.clone(), options);
    let handle = recorder.handle();
    let running = tokio::spawn(recorder.run(std::future::pending()));

    handle.record(record_of(200)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.record(record_of(201)).await;
    handle.record(record_of(404)).await;
    // Past the linger of the first record: appended without a fourth.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(*log.head(0).borrow(), Position(3), "the lingering records were not appended");

    drop(handle);
    let report = tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    assert_eq!((report.recorded, report.appends), (3, 1), "{report:?}");
}
