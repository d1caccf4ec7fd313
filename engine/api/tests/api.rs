//! The API driven in-process: the router over an in-memory log, real views
//! in a temp dir and a running projection runner, one request at a time
//! through `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use spool_api::{ApiOptions, AppState, Recorder, RecorderOptions, keys};
use spool_log::{Append, Filter, Log, MemoryLog, NewEvent, StoredEvent, TypeFilter};
use spool_projections::{Runner, RunnerHandle, RunnerOptions, Views};
use spool_schemas::{
    ApiCall, Event, KeyCreated, KeyId, KeyRevoked, Position, Scope, StreamName, TenantCreated,
    TenantId,
};
use tokio::sync::watch;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    app: Router,
    log: Arc<dyn Log>,
    runner: RunnerHandle,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A key of a tenant, as a client holds it.
#[derive(Clone)]
struct Key {
    tenant: TenantId,
    key_id: KeyId,
    secret: String,
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Response {
    fn problem_type(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
}

async fn harness() -> Harness {
    harness_with(ApiOptions::default(), |log| log).await
}

/// A harness whose API (and recorder) use `app_log(log)`, while the
/// projections follow the log itself.
async fn harness_with(
    options: ApiOptions,
    app_log: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let api_log = app_log(log.clone());
    let views = Views::open(dir.path().join("views.db")).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let runner = Runner::new(
        log.clone(),
        views.clone(),
        spool_projections::builtin(),
        RunnerOptions::default(),
    );
    let runner_handle = runner.handle();
    let mut runner_stopped = stopped.clone();
    tokio::spawn(runner.run(async move {
        let _ = runner_stopped.wait_for(|stopped| *stopped).await;
    }));
    let recorder = Recorder::new(api_log.clone(), RecorderOptions::default());
    let state = AppState {
        log: api_log,
        views,
        runner: runner_handle.clone(),
        recorder: recorder.handle(),
        metrics: None,
        shutdown: stopped.clone(),
        options,
    };
    let mut recorder_stopped = stopped;
    tokio::spawn(recorder.run(async move {
        let _ = recorder_stopped.wait_for(|stopped| *stopped).await;
    }));
    Harness { app: spool_api::router(state), log, runner: runner_handle, stop, _dir: dir }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Harness {
    /// A new tenant with one key holding `scopes`, visible to the API.
    async fn tenant(&self, scopes: &[Scope]) -> Key {
        let tenant = TenantId::new();
        let created = NewEvent::new(
            tenant,
            StreamName::new(format!("tenant/{tenant}")).unwrap(),
            Event::TenantCreated(TenantCreated { name: "test".into() }),
        );
        let key = self.append(vec![created]).await;
        let _ = key;
        self.key(tenant, scopes, None).await
    }

    async fn key(
        &self,
        tenant: TenantId,
        scopes: &[Scope],
        expires_at: Option<DateTime<Utc>>,
    ) -> Key {
        let generated = keys::generate();
        self.append(vec![NewEvent::new(
            tenant,
            StreamName::new(format!("key/{}", generated.key_id)).unwrap(),
            Event::KeyCreated(KeyCreated {
                key_id: generated.key_id,
                name: "test".into(),
                secret_hash: generated.secret_hash.clone(),
                scopes: scopes.to_vec(),
                expires_at,
            }),
        )])
        .await;
        Key { tenant, key_id: generated.key_id, secret: generated.secret }
    }

    async fn revoke(&self, key: &Key) {
        self.append(vec![NewEvent::new(
            key.tenant,
            StreamName::new(format!("key/{}", key.key_id)).unwrap(),
            Event::KeyRevoked(KeyRevoked { key_id: key.key_id }),
        )])
        .await;
    }

    /// Appends and waits until the read models have applied the events.
    async fn append(&self, events: Vec<NewEvent>) -> Position {
        let appended = self.log.append(Append::new(events)).await.unwrap();
        let last = appended.last().unwrap().position;
        tokio::time::timeout(WAIT, self.runner.wait_for(last)).await.unwrap().unwrap();
        last
    }

    async fn send(&self, request: Request<Body>) -> Response {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Response { status, headers, json }
    }

    async fn post(&self, key: &Key, content_type: &str, body: impl Into<Body>) -> Response {
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/events")
                .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
                .header(header::CONTENT_TYPE, content_type)
                .body(body.into())
                .unwrap(),
        )
        .await
    }

    async fn post_json(&self, key: &Key, body: Value) -> Response {
        self.post(key, "application/json", body.to_string()).await
    }

    async fn get(&self, key: Option<&Key>, uri: &str) -> Response {
        let mut request = Request::builder().uri(uri);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Every stored event that is not an `api.call` record.
    async fn non_api_call_events(&self) -> Vec<StoredEvent> {
        self.read_all().await.into_iter().filter(|event| event.type_name != "api.call").collect()
    }

    async fn read_all(&self) -> Vec<StoredEvent> {
        let head = *self.log.head().borrow();
        let mut events = Vec::new();
        let mut after = Position::ZERO;
        while after < head {
            let batch = self.log.read(after, 10_000, &Filter::default()).await.unwrap();
            events.extend(batch.events);
            after = batch.scanned_to;
        }
        events
    }

    /// Waits until at least `n` `api.call` records are stored, and returns
    /// them (with their tenants) in log order.
    async fn api_calls(&self, n: usize) -> Vec<(TenantId, ApiCall)> {
        let filter =
            Filter { types: vec![TypeFilter::Exact("api.call".into())], ..Filter::default() };
        let mut head = self.log.head();
        tokio::time::timeout(WAIT, async {
            loop {
                let batch = self.log.read(Position::ZERO, 100_000, &filter).await.unwrap();
                if batch.events.len() >= n {
                    return batch
                        .events
                        .into_iter()
                        .map(|event| match event.event().unwrap() {
                            Event::ApiCall(call) => (event.tenant, call),
                            other => panic!("not an api.call: {other:?}"),
                        })
                        .collect();
                }
                head.changed().await.unwrap();
            }
        })
        .await
        .expect("the api.call records were appended")
    }
}

fn stored_ids(response: &Response) -> Vec<String> {
    response.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect()
}

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

/// Reads SSE text from `body` until `done` says it has enough.
async fn read_sse(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while !done(&text) {
            let chunk = body.next().await.expect("the stream stays open").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no expected SSE data; got {text:?}"));
    text
}

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

#[tokio::test]
async fn missing_wrong_revoked_and_expired_keys_get_401_and_a_missing_scope_403() {
    let h = harness().await;
    let writer = h.tenant(&[Scope::EventsWrite]).await;
    let body = json!({"type": "a.b"}).to_string();
    let unauthenticated = |authorization: Option<String>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/events")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(Body::from(body.clone())).unwrap()
    };
    let missing = h.send(unauthenticated(None)).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.problem_type(), "https://spool.dev/problems/missing-key");
    assert!(missing.headers.contains_key(header::WWW_AUTHENTICATE));

    let wrong_key = format!("Bearer {}", keys::generate().secret);
    for authorization in [wrong_key, "Bearer nonsense".into(), "Basic abc".into()] {
        let wrong = h.send(unauthenticated(Some(authorization.clone()))).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{authorization}");
        assert_eq!(wrong.problem_type(), "https://spool.dev/problems/invalid-key");
    }

    let expired = h
        .key(writer.tenant, &[Scope::EventsWrite], Some("2020-01-01T00:00:00Z".parse().unwrap()))
        .await;
    let response = h.post_json(&expired, json!({"type": "a.b"})).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.problem_type(), "https://spool.dev/problems/expired-key");

    let read_only = h.key(writer.tenant, &[Scope::EventsRead], None).await;
    let response = h.post_json(&read_only, json!({"type": "a.b"})).await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(response.problem_type(), "https://spool.dev/problems/insufficient-scope");
    assert!(response.json["detail"].as_str().unwrap().contains("events:write"));
    let response = h.get(Some(&writer), "/v1/events").await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert!(response.json["detail"].as_str().unwrap().contains("events:read"));
    let admin = h.key(writer.tenant, &[Scope::Admin], None).await;
    assert_eq!(h.get(Some(&admin), "/v1/events").await.status, StatusCode::OK);

    assert_eq!(h.post_json(&writer, json!({"type": "a.b"})).await.status, StatusCode::CREATED);
    h.revoke(&writer).await;
    let response = h.post_json(&writer, json!({"type": "a.b"})).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.problem_type(), "https://spool.dev/problems/revoked-key");

    let app_events: Vec<_> = h
        .non_api_call_events()
        .await
        .into_iter()
        .filter(|event| event.type_name == "a.b")
        .collect();
    assert_eq!(app_events.len(), 1, "only the authorised request stored an event");
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_events() {
    let h = harness().await;
    let a = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let b = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let stored =
        h.post_json(&a, json!({"type": "secret.made", "subject": "shared/1", "data": "a's"})).await;
    let position = stored.json["events"][0]["position"].as_u64().unwrap();
    h.post_json(&b, json!({"type": "other.made", "subject": "shared/1", "data": "b's"})).await;

    for uri in ["/v1/events", "/v1/events?type=secret.made", "/v1/events?stream=shared/1"] {
        let page = h.get(Some(&b), uri).await;
        let data: Vec<&Value> =
            page.json["events"].as_array().unwrap().iter().map(|e| &e["data"]).collect();
        assert!(!data.contains(&&json!("a's")), "{uri}: {}", page.json);
    }
    let page = h.get(Some(&b), "/v1/events?stream=shared/1").await;
    assert_eq!(page.json["events"][0]["stream_version"], 1, "streams are per tenant");

    // B's live stream from before A's event does not carry it either.
    let request = Request::builder()
        .uri(format!("/v1/events/stream?after={}", position - 1))
        .header(header::AUTHORIZATION, format!("Bearer {}", b.secret))
        .body(Body::empty())
        .unwrap();
    let mut body = h.app.clone().oneshot(request).await.unwrap().into_body().into_data_stream();
    let text = read_sse(&mut body, |text| text.contains("\n\n")).await;
    assert!(text.contains("event: other.made"), "{text}");
    assert!(!text.contains("secret.made"), "{text}");
}

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
            (TenantId::SYSTEM, None, "GET", spool_api::UNMATCHED_ROUTE, 404),
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
    assert_eq!(*log.head().borrow(), Position(4));
}

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
            assert_eq!(paths[path][method]["security"], json!([{"api_key": []}]), "{path}");
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
}

/// A log that delegates to another, except that its first
/// `failing_appends` appends fail as storage failures, and events of type
/// `bad.data` read back with data that is not JSON.
struct Faulty {
    inner: Arc<dyn Log>,
    failing_appends: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn new(inner: Arc<dyn Log>, failing_appends: usize) -> Arc<Faulty> {
        Arc::new(Faulty { inner, failing_appends: failing_appends.into() })
    }
}

#[async_trait::async_trait]
impl Log for Faulty {
    async fn append(&self, append: Append) -> spool_log::Result<Vec<spool_log::Appended>> {
        use std::sync::atomic::Ordering;
        let failing = self
            .failing_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        self.inner.append(append).await
    }

    async fn read(
        &self,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> spool_log::Result<spool_log::ReadBatch> {
        let mut batch = self.inner.read(after, limit, filter).await?;
        for event in &mut batch.events {
            if event.type_name == "bad.data" {
                event.data = "not json".into();
            }
        }
        Ok(batch)
    }

    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> spool_log::Result<Vec<StoredEvent>> {
        self.inner.read_stream(tenant, stream, from_version, limit).await
    }

    async fn find(&self, id: spool_schemas::EventId) -> spool_log::Result<Option<StoredEvent>> {
        self.inner.find(id).await
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.inner.head()
    }

    async fn close(&self) -> spool_log::Result<()> {
        self.inner.close().await
    }
}

fn stream_request(key: &Key, uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .body(Body::empty())
        .unwrap()
}

/// Reads SSE text until the server ends the stream, failing after `within`.
async fn read_to_end(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    within: Duration,
) -> String {
    let mut text = String::new();
    tokio::time::timeout(within, async {
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream did not end within {within:?}; got {text:?}"));
    text
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

/// Regression: with the auth read model stopped, revocations never reached
/// it and revoked keys kept working (auth failed open).
#[tokio::test]
async fn authenticated_routes_answer_503_once_the_auth_projection_has_failed() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    assert_eq!(h.get(Some(&key), "/v1/events").await.status, StatusCode::OK);

    // Two keys with one secret hash: the auth projection's unique index
    // refuses the second, and the projection stops there.
    let generated = keys::generate();
    let twins: Vec<NewEvent> = (0..2)
        .map(|_| {
            let key_id = KeyId::new();
            NewEvent::new(
                key.tenant,
                StreamName::for_key(key_id),
                Event::KeyCreated(KeyCreated {
                    key_id,
                    name: "twin".into(),
                    secret_hash: generated.secret_hash.clone(),
                    scopes: vec![Scope::EventsRead],
                    expires_at: None,
                }),
            )
        })
        .collect();
    let appended = h.log.append(Append::new(twins)).await.unwrap();
    let failed = tokio::time::timeout(
        WAIT,
        h.runner.wait_for_projection("auth", appended.last().unwrap().position),
    )
    .await
    .unwrap();
    assert!(failed.is_err(), "the auth projection failed");

    let refused = h.get(Some(&key), "/v1/events").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.json);
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/unavailable");
    assert_eq!(
        h.post_json(&key, json!({"type": "a.b"})).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let ready = h.get(None, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let auth = ready.json["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|projection| projection["name"] == "auth")
        .unwrap();
    assert_eq!(auth["state"], "failed");
    assert!(auth.get("error").is_none(), "no internals on an open route: {auth}");
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
        handle
            .record(NewEvent::new(
                TenantId::SYSTEM,
                StreamName::for_api_calls(None),
                Event::ApiCall(ApiCall {
                    key_id: None,
                    method: "GET".into(),
                    route: "/v1/events".into(),
                    status,
                    latency_us: 1,
                }),
            ))
            .await;
    }
    drop(handle);
    let report = tokio::time::timeout(WAIT, recorder.run(std::future::pending())).await.unwrap();
    assert_eq!((report.recorded, report.retries, report.failed), (3, 3, 0), "{report:?}");
    assert_eq!(*memory.head().borrow(), Position(3));
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
