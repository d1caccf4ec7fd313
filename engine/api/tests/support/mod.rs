//! Shared by the API tests: the router over an in-memory log, real views
//! in a temp dir and a running projection runner, driven one request at a
//! time through `tower::ServiceExt::oneshot`; plus a partitioned variant, a
//! faulty log and SSE readers.

#![allow(dead_code, unreachable_pub)]

pub mod postgres;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use spool_api::{ApiOptions, AppState, Recorder, RecorderOptions, keys};
use spool_log::{Append, Filter, Log, MemoryLog, NewEvent, StoredEvent, TypeFilter};
use spool_projections::{Location, Runner, RunnerHandle, RunnerOptions, Views};
use spool_schemas::{
    ApiCall, Event, KeyCreated, KeyId, KeyRevoked, Position, Scope, StreamName, TenantCreated,
    TenantId,
};
use tokio::sync::watch;
use tower::ServiceExt;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    pub app: Router,
    /// The log the projections follow, where tenants and keys are appended.
    pub log: Arc<dyn Log>,
    /// The log the API reads and appends to: `log` itself, or what
    /// [`harness_with`]'s `app_log` made of it.
    pub api_log: Arc<dyn Log>,
    pub runner: RunnerHandle,
    /// What the router serves: another `spool_api::router(state.clone())`
    /// is a second instance over the same log and read models.
    pub state: AppState,
    /// Where the read models are: `Views::open` it again for a second
    /// instance with a pool of its own.
    pub views_location: Location,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
    _schema: Option<postgres::Schema>,
}

/// A key of a tenant, as a client holds it.
#[derive(Clone)]
pub struct Key {
    pub tenant: TenantId,
    pub key_id: KeyId,
    pub secret: String,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Response {
    pub fn problem_type(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
}

pub async fn harness() -> Harness {
    harness_with(ApiOptions::default(), |log| log).await
}

/// A harness whose API serves a [`MemoryLog`] of `partitions` partitions
/// (`api_log`): app events and `api.call` records go there and are listed
/// and streamed from there.
///
/// Tenants and keys stay on the one-partition log the projections follow
/// (`log`), so that auth works whichever partitions the projections read;
/// these tests are about how the API reads a partitioned log.
pub async fn partitioned_harness(partitions: u32) -> Harness {
    harness_with(ApiOptions::default(), |_| Arc::new(MemoryLog::with_partitions(partitions))).await
}

/// A harness whose API (and recorder) use `app_log(log)`, while the
/// projections follow the log itself.
pub async fn harness_with(
    options: ApiOptions,
    app_log: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let views = Location::Sqlite(dir.path().join("views.db"));
    harness_on(views, dir, None, options, app_log).await
}

/// [`harness_with`] with the read models in a schema of their own in the
/// PostgreSQL of `SPOOL_TEST_POSTGRES` (dropped afterwards).
pub async fn postgres_harness(
    options: ApiOptions,
    app_log: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
) -> Harness {
    let schema = postgres::Schema::create().await;
    let views = Location::Postgres(schema.url());
    harness_on(views, tempfile::tempdir().unwrap(), Some(schema), options, app_log).await
}

async fn harness_on(
    views_location: Location,
    dir: tempfile::TempDir,
    schema: Option<postgres::Schema>,
    options: ApiOptions,
    app_log: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
) -> Harness {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let app_log = app_log(log.clone());
    let views = Views::open(views_location.clone()).await.unwrap();
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
    let recorder = Recorder::new(app_log.clone(), RecorderOptions::default());
    let state = AppState {
        log: app_log.clone(),
        views,
        runner: spool_projections::CurrentRunner::fixed(runner_handle.clone()),
        recorder: recorder.handle(),
        metrics: None,
        shutdown: stopped.clone(),
        usage_cache: spool_api::UsageCache::new(options.usage_cache_ttl),
        options,
        oauth_keys: Default::default(),
        auth_cache: Default::default(),
    };
    let mut recorder_stopped = stopped;
    tokio::spawn(recorder.run(async move {
        let _ = recorder_stopped.wait_for(|stopped| *stopped).await;
    }));
    Harness {
        app: spool_api::router(state.clone()),
        log,
        api_log: app_log,
        runner: runner_handle,
        state,
        views_location,
        stop,
        _dir: dir,
        _schema: schema,
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Harness {
    /// A new tenant with one key holding `scopes`, visible to the API.
    pub async fn tenant(&self, scopes: &[Scope]) -> Key {
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

    pub async fn key(
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

    pub async fn revoke(&self, key: &Key) {
        self.append(vec![NewEvent::new(
            key.tenant,
            StreamName::new(format!("key/{}", key.key_id)).unwrap(),
            Event::KeyRevoked(KeyRevoked { key_id: key.key_id }),
        )])
        .await;
    }

    /// Appends and waits until the read models have applied the events.
    pub async fn append(&self, events: Vec<NewEvent>) -> Position {
        let appended = self.log.append(Append::new(events)).await.unwrap();
        let last = appended.last().unwrap().position;
        tokio::time::timeout(WAIT, self.runner.wait_for(last)).await.unwrap().unwrap();
        last
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
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

    pub async fn post(&self, key: &Key, content_type: &str, body: impl Into<Body>) -> Response {
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

    pub async fn post_json(&self, key: &Key, body: Value) -> Response {
        self.post(key, "application/json", body.to_string()).await
    }

    pub async fn get(&self, key: Option<&Key>, uri: &str) -> Response {
        let mut request = Request::builder().uri(uri);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Every stored event that is not an `api.call` record.
    pub async fn non_api_call_events(&self) -> Vec<StoredEvent> {
        self.read_all().await.into_iter().filter(|event| event.type_name != "api.call").collect()
    }

    pub async fn read_all(&self) -> Vec<StoredEvent> {
        let head = *self.log.head(0).borrow();
        let mut events = Vec::new();
        let mut after = Position::ZERO;
        while after < head {
            let batch = self.log.read(0, after, 10_000, &Filter::default()).await.unwrap();
            events.extend(batch.events);
            after = batch.scanned_to;
        }
        events
    }

    /// Waits until at least `n` `api.call` records are stored, and returns
    /// them (with their tenants) in log order.
    pub async fn api_calls(&self, n: usize) -> Vec<(TenantId, ApiCall)> {
        let filter =
            Filter { types: vec![TypeFilter::Exact("api.call".into())], ..Filter::default() };
        let mut head = self.log.head(0);
        tokio::time::timeout(WAIT, async {
            loop {
                let batch = self.log.read(0, Position::ZERO, 100_000, &filter).await.unwrap();
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

/// Where an event is stored, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stored {
    pub id: String,
    pub partition: u64,
    pub position: u64,
}

impl Stored {
    /// From an event of a response: an ingest answer's or an event view.
    pub fn of(event: &Value) -> Stored {
        Stored {
            id: event["id"].as_str().unwrap_or_else(|| panic!("no id: {event}")).to_owned(),
            partition: event["partition"]
                .as_u64()
                .unwrap_or_else(|| panic!("no partition: {event}")),
            position: event["position"].as_u64().unwrap_or_else(|| panic!("no position: {event}")),
        }
    }
}

/// Posts `n` app events of type `spread.made` whose data counts from
/// `first`, over 13 subjects (so over every partition of a small log), in
/// batches of up to 9; returns where each was stored, in the order sent.
pub async fn post_spread(h: &Harness, key: &Key, first: u64, n: u64) -> Vec<Stored> {
    let mut stored = Vec::new();
    let numbers: Vec<u64> = (first..first + n).collect();
    for batch in numbers.chunks(9) {
        let events: Vec<Value> = batch
            .iter()
            .map(|n| {
                // Up to 64 streams: with the tenant's random id deciding
                // where each goes, 60 events leave one of four partitions
                // empty once in millions of runs (13 streams: one in ten).
                serde_json::json!({"type": "spread.made", "subject": format!("spread/{}", n % 64), "data": n})
            })
            .collect();
        let response = h.post_json(key, serde_json::json!({ "events": events })).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
        stored.extend(response.json["events"].as_array().unwrap().iter().map(Stored::of));
    }
    stored
}

pub fn stored_ids(response: &Response) -> Vec<String> {
    response.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads SSE text from `body` until `done` says it has enough.
pub async fn read_sse(
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

/// A log that delegates to another, except that its first
/// `failing_appends` appends fail as storage failures, and events of type
/// `bad.data` read back with data that is not JSON.
pub struct Faulty {
    inner: Arc<dyn Log>,
    failing_appends: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Log>, failing_appends: usize) -> Arc<Faulty> {
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

    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn read(
        &self,
        partition: u32,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> spool_log::Result<spool_log::ReadBatch> {
        let mut batch = self.inner.read(partition, after, limit, filter).await?;
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

    fn head(&self, partition: u32) -> watch::Receiver<Position> {
        self.inner.head(partition)
    }

    async fn close(&self) -> spool_log::Result<()> {
        self.inner.close().await
    }
}

pub fn stream_request(key: &Key, uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .body(Body::empty())
        .unwrap()
}

/// One message of an SSE stream: its `id`, `event` and `data` fields.
#[derive(Clone, Debug, Default)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseMessage {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|error| panic!("{error}: {self:?}"))
    }
}

/// The complete messages of SSE `text` (each ended by a blank line), in
/// order; keep-alive comments and an unfinished last message are left out,
/// as a client would.
pub fn sse_messages(text: &str) -> Vec<SseMessage> {
    let Some(complete) = text.rfind("\n\n") else {
        return Vec::new();
    };
    let mut messages = Vec::new();
    for block in text[..complete].split("\n\n") {
        let mut message = SseMessage::default();
        let mut data_lines = Vec::new();
        for line in block.lines() {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "id" => message.id = Some(value.to_owned()),
                "event" => message.event = Some(value.to_owned()),
                "data" => data_lines.push(value),
                // A comment (`: keep-alive`) or a field not used here.
                _ => {}
            }
        }
        message.data = data_lines.join("\n");
        if message.id.is_some() || message.event.is_some() || !data_lines.is_empty() {
            messages.push(message);
        }
    }
    messages
}

/// Reads SSE text until the server ends the stream, failing after `within`.
pub async fn read_to_end(
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
