//! `Idempotency-Key` through the real router: replays byte for byte, the
//! `422` and `409` refusals, scoping per tenant and key, expiry and lease
//! takeover (on an injected clock), a panicking handler, sealed storage,
//! bad header values. Every scenario runs on SQLite and on PostgreSQL
//! (`SPOOL_TEST_POSTGRES`); one that only PostgreSQL can show (writes
//! beside a projection batch) runs there alone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use spool_api::idempotency::{Clock, IdempotencyOptions};
use spool_api::{ApiOptions, AppState};
use spool_log::{Append, Filter, Log, ReadBatch, StoredEvent};
use spool_schemas::{Event, Position, Scope, StreamName, TenantId};
use sqlx::Row;
use tokio::sync::watch;
use tower::ServiceExt;

use support::*;

#[derive(Clone, Copy, Debug)]
enum Store {
    Sqlite,
    Postgres,
}

impl Store {
    async fn harness(self, options: ApiOptions) -> Harness {
        self.harness_with(options, |log| log).await
    }

    async fn harness_with(
        self,
        options: ApiOptions,
        app_log: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
    ) -> Harness {
        match self {
            Store::Sqlite => harness_with(options, app_log).await,
            Store::Postgres => postgres_harness(options, app_log).await,
        }
    }

    /// A harness whose first `to_hold` appends of app events wait until
    /// the gate opens.
    async fn gated(self, options: ApiOptions, to_hold: usize) -> (Harness, Arc<Gate>) {
        let gate = Arc::new(OnceLock::new());
        let h = self
            .harness_with(options, {
                let gate = gate.clone();
                move |log| {
                    let made = Gate::new(log, to_hold);
                    let _ = gate.set(made.clone());
                    made
                }
            })
            .await;
        let gate = gate.get().expect("the harness made the gate").clone();
        (h, gate)
    }

    /// A harness whose first `to_panic` appends of app events panic, as a
    /// handler with a bug would.
    async fn panicking(self, options: ApiOptions, to_panic: usize) -> Harness {
        self.harness_with(options, move |log| {
            let gate = Gate::new(log, 0);
            gate.to_panic.store(to_panic, Ordering::SeqCst);
            gate
        })
        .await
    }
}

/// Runs each scenario on both stores, as `sqlite::name` and `postgres::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Store::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Store::Postgres).await
            })*
        }
    };
}

on_both_stores!(
    a_repeat_gets_the_first_response_byte_for_byte_and_runs_once,
    a_4xx_response_is_kept_and_replayed,
    a_5xx_response_is_not_kept_so_a_retry_runs_again,
    the_same_key_with_another_request_is_refused_and_the_first_response_kept,
    a_replay_needs_the_same_credential,
    a_repeat_while_the_first_runs_gets_409,
    of_racing_repeats_exactly_one_runs,
    another_instance_sees_the_key_in_flight_and_replays_it,
    a_request_whose_client_went_away_still_completes_and_is_kept,
    tenants_and_keys_never_share_an_idempotency_key,
    entries_expire_after_24_hours,
    expired_entries_are_purged,
    a_lapsed_lease_is_taken_over_by_the_same_request_only,
    a_handler_that_panics_frees_its_key_at_once,
    bad_header_values_are_refused_and_store_nothing,
    a_key_secret_shown_once_is_replayed_but_never_stored_readable,
);

// The scenarios.

async fn a_repeat_gets_the_first_response_byte_for_byte_and_runs_once(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created", "data": {"total": 12}}"#;

    let first = send(&h.app, post(&key, Some("order-1"), body)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert!(!first.headers.contains_key("idempotent-replayed"));

    let again = send(&h.app, post(&key, Some("order-1"), body)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the body is replayed byte for byte");
    assert_eq!(again.headers["content-type"], first.headers["content-type"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app_events(&h).await, 1, "the request ran once");

    let without_key = send(&h.app, post(&key, None, body)).await;
    assert_eq!(without_key.status, StatusCode::CREATED);
    assert_ne!(without_key.body, first.body, "without the header every request runs");
    assert_eq!(app_events(&h).await, 2);
}

async fn a_4xx_response_is_kept_and_replayed(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "not a type!"}"#;
    let first = send(&h.app, post(&key, Some("bad-1"), body)).await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(first.problem_type(), "https://spool.dev/problems/invalid-event-type");

    let again = send(&h.app, post(&key, Some("bad-1"), body)).await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["content-type"], "application/problem+json");
    assert_eq!(again.headers["idempotent-replayed"], "true");
}

async fn a_5xx_response_is_not_kept_so_a_retry_runs_again(store: Store) {
    // The API's first append (this request's) fails on storage.
    let h = store.harness_with(ApiOptions::default(), |log| Faulty::new(log, 1)).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let failed = send(&h.app, post(&key, Some("retry-me"), body)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", failed.text());

    let retried = send(&h.app, post(&key, Some("retry-me"), body)).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text());
    assert!(!retried.headers.contains_key("idempotent-replayed"), "the retry ran");
    assert_eq!(app_events(&h).await, 1);
    let replayed = send(&h.app, post(&key, Some("retry-me"), body)).await;
    assert_eq!(replayed.body, retried.body);
}

async fn the_same_key_with_another_request_is_refused_and_the_first_response_kept(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created", "data": 1}"#;
    let first = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let other_body =
        send(&h.app, post(&key, Some("k"), r#"{"type": "order.created", "data": 2}"#)).await;
    let mut other_path = post(&key, Some("k"), body);
    *other_path.uri_mut() = "/v1/events?x=1".parse().unwrap();
    let other_path = send(&h.app, other_path).await;
    let mut other_media_type = post(&key, Some("k"), body);
    other_media_type
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
    let other_media_type = send(&h.app, other_media_type).await;
    for refused in [other_body, other_path, other_media_type] {
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.text());
        assert_eq!(refused.problem_type(), "https://spool.dev/problems/idempotency-key-reused");
        assert_eq!(refused.headers["content-type"], "application/problem+json");
    }
    assert_eq!(app_events(&h).await, 1, "nothing ran again");
    let again = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(again.body, first.body, "the first response is still kept");
}

async fn a_replay_needs_the_same_credential(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let first = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The same key, presented differently: the response is sealed under
    // the header value as sent, so this caller cannot open it.
    let mut differently = post(&key, Some("k"), body);
    differently.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("bearer {}", key.secret)).unwrap(),
    );
    let refused = send(&h.app, differently).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.text());
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/idempotency-key-reused");
    assert!(!refused.text().contains("order.created"));
}

async fn a_repeat_while_the_first_runs_gets_409(store: Store) {
    let (h, gate) = store.gated(ApiOptions::default(), 1).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let first = tokio::spawn(send(h.app.clone(), post(&key, Some("slow"), body)));
    gate.wait_held(1).await;

    let in_flight = send(&h.app, post(&key, Some("slow"), body)).await;
    assert_eq!(in_flight.status, StatusCode::CONFLICT, "{}", in_flight.text());
    assert_eq!(in_flight.problem_type(), "https://spool.dev/problems/idempotency-key-in-flight");
    assert_eq!(in_flight.headers["retry-after"], "1");
    let other = send(&h.app, post(&key, Some("slow"), r#"{"type": "order.paid"}"#)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "another request is 422 even now");

    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(&h.app, post(&key, Some("slow"), body)).await;
    assert_eq!(again.body, first.body);
    assert_eq!(app_events(&h).await, 1);
}

async fn of_racing_repeats_exactly_one_runs(store: Store) {
    const N: usize = 16;
    let (h, gate) = store.gated(ApiOptions::default(), N).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let instances = [h.app.clone(), second_instance(&h).await];
    let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..N {
        let app = instances[n % 2].clone();
        let (request, sender) = (post(&key, Some("race"), body), sender.clone());
        tokio::spawn(async move { sender.send(send(app, request).await).unwrap() });
    }
    gate.wait_held(1).await;
    let mut refused = 0;
    while refused < N - 1 {
        let answer = tokio::time::timeout(WAIT, answers.recv()).await.unwrap().unwrap();
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text());
        refused += 1;
    }
    gate.open();
    let winner = tokio::time::timeout(WAIT, answers.recv()).await.unwrap().unwrap();
    assert_eq!(winner.status, StatusCode::CREATED);
    assert_eq!(gate.held(), 1, "one request reached the log");
    assert_eq!(app_events(&h).await, 1);
}

async fn another_instance_sees_the_key_in_flight_and_replays_it(store: Store) {
    let (h, gate) = store.gated(ApiOptions::default(), 1).await;
    let other_instance = second_instance(&h).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let first = tokio::spawn(send(h.app.clone(), post(&key, Some("k"), body)));
    gate.wait_held(1).await;
    let in_flight = send(&other_instance, post(&key, Some("k"), body)).await;
    assert_eq!(in_flight.status, StatusCode::CONFLICT);
    gate.open();
    let first = first.await.unwrap();
    let replayed = send(&other_instance, post(&key, Some("k"), body)).await;
    assert_eq!(replayed.status, StatusCode::CREATED);
    assert_eq!(replayed.body, first.body);
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
}

async fn a_request_whose_client_went_away_still_completes_and_is_kept(store: Store) {
    let (h, gate) = store.gated(ApiOptions::default(), 1).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let client = tokio::spawn(send(h.app.clone(), post(&key, Some("k"), body)));
    gate.wait_held(1).await;
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    gate.open();

    let retried = tokio::time::timeout(WAIT, async {
        loop {
            let retried = send(&h.app, post(&key, Some("k"), body)).await;
            if retried.status != StatusCode::CONFLICT {
                return retried;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the abandoned request finished");
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text());
    assert_eq!(retried.headers["idempotent-replayed"], "true", "the retry got the kept response");
    assert_eq!(app_events(&h).await, 1);
}

async fn tenants_and_keys_never_share_an_idempotency_key(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let tenant_a = h.tenant(&[Scope::EventsWrite]).await;
    let tenant_a_other_key = h.key(tenant_a.tenant, &[Scope::EventsWrite], None).await;
    let tenant_b = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let mut bodies = Vec::new();
    for key in [&tenant_a, &tenant_a_other_key, &tenant_b] {
        let response = send(&h.app, post(key, Some("shared"), body)).await;
        assert_eq!(response.status, StatusCode::CREATED);
        assert!(!response.headers.contains_key("idempotent-replayed"));
        bodies.push(response.body);
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 3, "three requests, three responses");
    assert_eq!(app_events(&h).await, 3);
}

async fn entries_expire_after_24_hours(store: Store) {
    let clock = ManualClock::new();
    let h = store.harness(clock.options()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let (body_a, body_b) = (r#"{"type": "order.created"}"#, r#"{"type": "order.paid"}"#);
    let first = send(&h.app, post(&key, Some("daily"), body_a)).await;
    assert_eq!(first.status, StatusCode::CREATED);

    clock.advance(Duration::from_secs(24 * 3600 - 60));
    let within_a_day = send(&h.app, post(&key, Some("daily"), body_a)).await;
    assert_eq!(within_a_day.body, first.body);
    let reused = send(&h.app, post(&key, Some("daily"), body_b)).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);

    clock.advance(Duration::from_secs(120));
    let next_day = send(&h.app, post(&key, Some("daily"), body_b)).await;
    assert_eq!(next_day.status, StatusCode::CREATED, "{}", next_day.text());
    assert!(!next_day.headers.contains_key("idempotent-replayed"), "the key was forgotten");
    let again = send(&h.app, post(&key, Some("daily"), body_b)).await;
    assert_eq!(again.body, next_day.body);
    assert_eq!(app_events(&h).await, 2);
}

async fn expired_entries_are_purged(store: Store) {
    let clock = ManualClock::new();
    let h = store.harness(clock.options()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    assert_eq!(send(&h.app, post(&key, Some("old"), body)).await.status, StatusCode::CREATED);
    assert_eq!(stored_keys(&h).await, ["old"]);

    clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(send(&h.app, post(&key, Some("new"), body)).await.status, StatusCode::CREATED);
    tokio::time::timeout(WAIT, async {
        while stored_keys(&h).await != ["new"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the expired entry was purged, the new one kept");
}

async fn a_lapsed_lease_is_taken_over_by_the_same_request_only(store: Store) {
    let clock = ManualClock::new();
    // Only the first request's append hangs, as in a process that died
    // holding the key (its lease is not renewed on the test's clock).
    let (h, gate) = store.gated(clock.options(), 1).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let stuck = tokio::spawn(send(h.app.clone(), post(&key, Some("k"), body)));
    gate.wait_held(1).await;
    assert_eq!(send(&h.app, post(&key, Some("k"), body)).await.status, StatusCode::CONFLICT);

    clock.advance(Duration::from_secs(61));
    let other = send(&h.app, post(&key, Some("k"), r#"{"type": "order.paid"}"#)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "a lapsed lease is no free key");
    let taken_over = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(taken_over.status, StatusCode::CREATED, "{}", taken_over.text());
    assert!(!taken_over.headers.contains_key("idempotent-replayed"));

    // The stuck request finishes after all, but its lease is gone: its
    // response goes to its client and is not kept.
    gate.open();
    let stuck = stuck.await.unwrap();
    assert_eq!(stuck.status, StatusCode::CREATED);
    assert_ne!(stuck.body, taken_over.body);
    let replayed = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(replayed.body, taken_over.body, "the kept response is the one that held the lease");
}

/// Review finding 10: a handler that panicked left its key claimed for
/// the whole lease (60 s), so every retry got `409` meanwhile.
async fn a_handler_that_panics_frees_its_key_at_once(store: Store) {
    let h = store.panicking(ApiOptions::default(), 1).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let failed = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", failed.text());
    assert_eq!(failed.problem_type(), "https://spool.dev/problems/internal");
    assert!(stored_keys(&h).await.is_empty(), "the entry was released");

    let retried = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text());
    assert!(!retried.headers.contains_key("idempotent-replayed"), "the retry ran");
    assert_eq!(app_events(&h).await, 1);
    let replayed = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(replayed.body, retried.body);
}

async fn bad_header_values_are_refused_and_store_nothing(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let body = r#"{"type": "order.created"}"#;
    let too_long = "a".repeat(256);
    let bad: [&[u8]; 4] = [b"", too_long.as_bytes(), "caf\u{e9}".as_bytes(), b"a\tb"];
    for value in bad {
        let mut request = post(&key, None, body);
        request.headers_mut().insert("idempotency-key", HeaderValue::from_bytes(value).unwrap());
        let refused = send(&h.app, request).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{value:?}: {}", refused.text());
        assert_eq!(refused.problem_type(), "https://spool.dev/problems/invalid-idempotency-key");
        assert!(refused.json()["detail"].as_str().unwrap().contains("Idempotency-Key"));
    }
    let mut twice = post(&key, Some("a"), body);
    twice.headers_mut().append("idempotency-key", HeaderValue::from_static("b"));
    let refused = send(&h.app, twice).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["detail"].as_str().unwrap().contains("one Idempotency-Key"));
    assert_eq!(app_events(&h).await, 0);
    assert!(stored_keys(&h).await.is_empty());

    let longest = "~".repeat(255);
    let accepted = send(&h.app, post(&key, Some(&longest), body)).await;
    assert_eq!(accepted.status, StatusCode::CREATED);
    let mut get = Request::builder()
        .uri("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .body(Body::empty())
        .unwrap();
    get.headers_mut().insert("idempotency-key", HeaderValue::from_static(""));
    assert_eq!(send(&h.app, get).await.status, StatusCode::OK, "GET ignores the header");
}

async fn a_key_secret_shown_once_is_replayed_but_never_stored_readable(store: Store) {
    let h = store.harness(ApiOptions::default()).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/keys")
            .header(header::AUTHORIZATION, format!("Bearer {}", admin.secret))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "new-reader-key")
            .body(Body::from(json!({"name": "reader", "scopes": ["events:read"]}).to_string()))
            .unwrap()
    };
    let created = send(&h.app, request()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let secret = created.json()["secret"].as_str().expect("the secret is shown").to_owned();

    let replayed = send(&h.app, request()).await;
    assert_eq!(replayed.body, created.body, "the retry shows the same key and secret");
    assert_eq!(replayed.headers["idempotent-replayed"], "true");

    let rows = sqlx::query(
        "SELECT tenant, principal, idempotency_key, fingerprint, response FROM spool_idempotency",
    )
    .fetch_all(h.state.views.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    let secret_body = secret.rsplit('_').next().unwrap();
    for column in 0..5 {
        let text: String = rows[0].try_get(column).unwrap();
        assert!(!text.contains(secret_body), "column {column} holds the secret");
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&text) {
            assert!(
                !bytes.windows(secret_body.len()).any(|window| window == secret_body.as_bytes()),
                "column {column} holds the secret, base64 encoded"
            );
            assert!(!bytes.windows(6).any(|window| window == b"reader"), "nor the key's name");
        }
    }
}

// Not per store.

/// Review finding 12: every idempotent request took the projections'
/// writer turn for its whole transaction, so it queued behind projection
/// batches (and held up the `auth` projection). PostgreSQL runs writers
/// side by side, so there nothing but the row itself may hold a request
/// up. (SQLite has one writer per file, so there it does wait for a
/// batch's commit, through the busy timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_does_not_queue_behind_a_projection_batch() {
    let h = Store::Postgres.harness(ApiOptions::default()).await;
    let key = h.tenant(&[Scope::EventsWrite]).await;
    // A projection whose first batch stalls, holding the writer turn of
    // the router's read-model store as a long batch would.
    let stall = Arc::new(Stall::default());
    let runner = spool_projections::Runner::new(
        h.log.clone(),
        h.state.views.clone(),
        vec![stall.clone()],
        spool_projections::RunnerOptions::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(WAIT, stall.entered.notified()).await.expect("the batch stalled");

    let body = r#"{"type": "order.created"}"#;
    let first = tokio::time::timeout(WAIT, send(&h.app, post(&key, Some("k"), body)))
        .await
        .expect("the idempotent request waited for the projection batch");
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let again = send(&h.app, post(&key, Some("k"), body)).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);

    stall.release.add_permits(1);
    let _ = stop.send(());
    tokio::time::timeout(WAIT, running).await.expect("the runner stopped").unwrap().unwrap();
}

/// A projection whose first `apply` waits until released.
struct Stall {
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
    stalled: std::sync::atomic::AtomicBool,
}

impl Default for Stall {
    fn default() -> Self {
        Stall {
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
            stalled: false.into(),
        }
    }
}

#[async_trait::async_trait]
impl spool_projections::Projection for Stall {
    fn name(&self) -> &'static str {
        "stall"
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [spool_projections::Table] {
        &[spool_projections::Table {
            name: "stall_rows",
            create: &["CREATE TABLE {table} (n BIGINT)"],
        }]
    }

    async fn apply(
        &self,
        _connection: &mut spool_projections::Connection,
        _tables: spool_projections::Tables,
        _events: &[StoredEvent],
    ) -> spool_projections::Result<()> {
        if !self.stalled.swap(true, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.acquire().await.expect("open semaphore").forget();
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_openapi_document_names_the_header_on_every_post() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let mut posts = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let Some(post) = item.get("post").filter(|_| path.starts_with("/v1/")) else {
            continue;
        };
        posts += 1;
        let parameters = post["parameters"].as_array().unwrap();
        assert!(
            parameters.iter().any(|parameter| parameter["name"] == "Idempotency-Key"
                && parameter["in"] == "header"
                && parameter["required"] == false),
            "POST {path}: {parameters:?}"
        );
        for status in ["409", "422"] {
            assert!(post["responses"].get(status).is_some(), "POST {path} lacks {status}");
        }
    }
    assert!(posts >= 1);
}

// Helpers.

/// A response as the client got it: status, headers, body bytes.
#[derive(Debug)]
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn problem_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }
}

async fn send(app: impl std::borrow::Borrow<Router>, request: Request<Body>) -> Raw {
    let response = app.borrow().clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Raw { status, headers, body }
}

fn post(key: &Key, idempotency_key: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

/// Another instance over the same log and read models, with a pool of its
/// own (so no lock in memory is shared either).
async fn second_instance(h: &Harness) -> Router {
    let views = spool_projections::Views::open(h.views_location.clone()).await.unwrap();
    spool_api::router(AppState { views, ..h.state.clone() })
}

/// How many app events the log holds.
async fn app_events(h: &Harness) -> usize {
    let events = h.read_all().await;
    events.iter().filter(|event| matches!(event.event(), Ok(Event::App(_)))).count()
}

/// The idempotency keys stored, sorted.
async fn stored_keys(h: &Harness) -> Vec<String> {
    let rows = sqlx::query("SELECT idempotency_key FROM spool_idempotency")
        .fetch_all(h.state.views.pool())
        .await
        .unwrap();
    let mut keys: Vec<String> = rows.iter().map(|row| row.try_get(0).unwrap()).collect();
    keys.sort();
    keys
}

/// A clock the test moves.
#[derive(Clone)]
struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    fn new() -> ManualClock {
        ManualClock(Arc::new(Mutex::new(Utc::now())))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += chrono::TimeDelta::from_std(by).unwrap();
    }

    fn options(&self) -> ApiOptions {
        let clock = self.clone();
        ApiOptions {
            idempotency: IdempotencyOptions {
                clock: Clock::from_fn(move || *clock.0.lock().unwrap()),
                ..IdempotencyOptions::default()
            },
            ..ApiOptions::default()
        }
    }
}

/// A log whose first `to_hold` appends of app events wait until
/// [`Gate::open`]: a handler held mid-request; or whose first `to_panic`
/// ones panic.
struct Gate {
    inner: Arc<dyn Log>,
    to_hold: AtomicUsize,
    to_panic: AtomicUsize,
    held: watch::Sender<usize>,
    opened: watch::Sender<bool>,
}

impl Gate {
    fn new(inner: Arc<dyn Log>, to_hold: usize) -> Arc<Gate> {
        Arc::new(Gate {
            inner,
            to_hold: to_hold.into(),
            to_panic: 0.into(),
            held: watch::channel(0).0,
            opened: watch::channel(false).0,
        })
    }

    async fn wait_held(&self, n: usize) {
        let mut held = self.held.subscribe();
        tokio::time::timeout(WAIT, held.wait_for(|held| *held >= n))
            .await
            .expect("the requests reached the log")
            .unwrap();
    }

    fn held(&self) -> usize {
        *self.held.borrow()
    }

    fn open(&self) {
        self.opened.send_replace(true);
    }
}

#[async_trait::async_trait]
impl Log for Gate {
    async fn append(&self, append: Append) -> spool_log::Result<Vec<spool_log::Appended>> {
        let app_events = append.events.iter().any(|event| matches!(event.event, Event::App(_)));
        if app_events
            && self
                .to_panic
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("a bug in the log backend");
        }
        if app_events
            && self
                .to_hold
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.held.send_modify(|held| *held += 1);
            let mut opened = self.opened.subscribe();
            let _ = opened.wait_for(|opened| *opened).await;
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
    ) -> spool_log::Result<ReadBatch> {
        self.inner.read(partition, after, limit, filter).await
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
