//! Rate limits: the headers on every `/v1` response, `429` with
//! `Retry-After` and a `quota-exceeded` problem, tiers and custom limits
//! set through `/v1/rate-limits`, isolation between keys and tenants, the
//! per-address limit of requests without a key, and the Redis store
//! shared by two routers (and what happens when Redis is down).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use spool_api::{ApiOptions, AppState, RateLimitOptions, SharedStore};
use spool_log::NewEvent;
use spool_schemas::{Event, KeyCreated, RateLimit, Scope, TenantId, key_limit_stream};
use tower::ServiceExt;

use support::*;

/// The Redis the machine runs; the tests write only under a prefix of
/// their own.
/// The Redis the shared-store tests use, set by `scripts/services`.
fn redis_url() -> String {
    std::env::var("SPOOL_TEST_REDIS")
        .expect("SPOOL_TEST_REDIS is not set: run the tests through scripts/test")
}

/// A key's `RateLimit` header, parsed: (policy, r, t).
fn remaining(response: &Response) -> (String, u64, u64) {
    let value = response
        .headers
        .get("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit header: {:?}", response.headers))
        .to_str()
        .unwrap();
    let mut parts = value.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_owned();
    let mut r = None;
    let mut t = None;
    for part in parts {
        match part.split_once('=') {
            Some(("r", n)) => r = Some(n.parse().unwrap()),
            Some(("t", n)) => t = Some(n.parse().unwrap()),
            other => panic!("unexpected parameter {other:?} in {value}"),
        }
    }
    (name, r.expect("r"), t.expect("t"))
}

fn policy(response: &Response) -> &str {
    response
        .headers
        .get("ratelimit-policy")
        .unwrap_or_else(|| panic!("no RateLimit-Policy header: {:?}", response.headers))
        .to_str()
        .unwrap()
}

async fn put(h: &Harness, key: &Key, uri: &str, body: Value) -> Response {
    h.send(
        Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await
}

/// Defines tier `name` of `admin`'s tenant.
async fn set_tier(h: &Harness, admin: &Key, name: &str, body: Value) {
    let response = put(h, admin, &format!("/v1/rate-limits/tiers/{name}"), body).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
}

async fn set_key(h: &Harness, admin: &Key, key: &Key, body: Value) -> Response {
    put(h, admin, &format!("/v1/rate-limits/keys/{}", key.key_id), body).await
}

/// `GET /v1/stats/events` through `app`, as `key`.
async fn get_through(app: &Router, key: &Key) -> Response {
    let request = Request::builder()
        .uri("/v1/stats/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .body(Body::empty())
        .unwrap();
    respond(app.clone().oneshot(request).await.unwrap()).await
}

async fn respond(response: axum::response::Response) -> Response {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Response { status, headers, json }
}

fn options_with(limits: RateLimitOptions) -> ApiOptions {
    ApiOptions { rate_limits: limits, ..ApiOptions::default() }
}

/// Another router over the same log and read models, as a second
/// instance would be, with rate limits of `limits`.
fn instance(h: &Harness, limits: RateLimitOptions) -> Router {
    spool_api::router(AppState { options: options_with(limits), ..h.state.clone() })
}

/// A prefix no other test run uses.
fn unique_prefix() -> String {
    format!("spool-test:{}:", spool_schemas::EventId::new())
}

#[tokio::test]
async fn every_v1_response_names_its_policy_and_what_is_left() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let reader = h.key(admin.tenant, &[Scope::EventsRead], None).await;

    let ok = h.get(Some(&reader), "/v1/stats/events").await;
    assert_eq!(ok.status, StatusCode::OK);
    // The built-in default: 1,000 per second, bursts of 5,000.
    assert_eq!(policy(&ok), "\"default\";q=1000;w=1;spool-burst=5000");
    let (name, r, t) = remaining(&ok);
    assert_eq!((name.as_str(), t), ("default", 1));
    assert!((4_990..=4_999).contains(&r), "{r}");

    // Errors of the handler carry them too: a missing scope, an unknown
    // route.
    let forbidden = h.post_json(&reader, json!({"type": "a.b"})).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(remaining(&forbidden).0, "default");
    let unknown = h.get(Some(&reader), "/v1/nothing-here").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(remaining(&unknown).0, "default");

    // A request without a valid key counts against its address instead.
    let anonymous = h.get(None, "/v1/stats/events").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(policy(&anonymous), "\"anonymous\";q=20;w=1;spool-burst=100");

    // Ops routes are neither limited nor labelled.
    let health = h.get(None, "/healthz").await;
    assert!(!health.headers.contains_key("ratelimit"));
}

#[tokio::test]
async fn a_key_over_its_tier_gets_429_with_retry_after_and_the_429_is_recorded() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    // One request per 10 s, in bursts of 3.
    set_tier(&h, &admin, "tiny", json!({"requests": 6, "window_seconds": 60, "burst": 3})).await;
    let assigned = set_key(&h, &admin, &key, json!({"tier": "tiny"})).await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.json);
    assert_eq!(
        assigned.json,
        json!({"key_id": key.key_id.to_string(), "policy": "tiny", "requests": 6,
               "window_seconds": 60, "burst": 3, "assigned": true})
    );

    let started = Instant::now();
    for (r, t) in [(2, 10), (1, 20), (0, 30)] {
        let response = h.get(Some(&key), "/v1/stats/events").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.json);
        assert_eq!(policy(&response), "\"tiny\";q=6;w=60;spool-burst=3");
        assert_eq!(remaining(&response), ("tiny".to_owned(), r, t));
    }
    let refused = h.get(Some(&key), "/v1/stats/events").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    // GCRA: the fourth request may come one interval (10 s) after the
    // first, less the time the four took.
    let retry_after: u64 = refused.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    let elapsed = started.elapsed().as_secs();
    assert!((9 - elapsed.min(9)..=10).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(remaining(&refused), ("tiny".to_owned(), 0, retry_after));
    assert_eq!(refused.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/quota-exceeded");
    assert_eq!(refused.json["status"], 429);
    assert_eq!(refused.json["violated-policies"], json!(["tiny"]));
    let detail = refused.json["detail"].as_str().unwrap();
    assert!(detail.contains("\"tiny\"") && detail.contains(&key.key_id.to_string()), "{detail}");
    assert!(!detail.contains(&key.secret));

    // The admin's own key is on the default tier, untouched.
    let admin_tiers = h.get(Some(&admin), "/v1/rate-limits/tiers").await;
    assert_eq!(admin_tiers.status, StatusCode::OK);
    assert_eq!(remaining(&admin_tiers).0, "default");
    assert_eq!(
        admin_tiers.json,
        json!({"tiers": [
            {"tier": "default", "requests": 1000, "window_seconds": 1, "burst": 5000, "built_in": true},
            {"tier": "tiny", "requests": 6, "window_seconds": 60, "burst": 3, "built_in": false},
        ]})
    );

    // The refused request is an api.call like any other, with its key.
    let calls = h.api_calls(7).await;
    let recorded: Vec<u16> = calls
        .iter()
        .filter(|(_, call)| call.key_id == Some(key.key_id))
        .map(|(_, call)| call.status)
        .collect();
    assert_eq!(recorded, [200, 200, 200, 429]);
}

#[tokio::test]
async fn a_changed_tier_applies_from_the_next_request() {
    a_changed_tier_applies(harness().await).await;
}

#[tokio::test]
async fn a_changed_tier_applies_with_the_read_models_in_postgresql() {
    a_changed_tier_applies(postgres_harness(ApiOptions::default(), |log| log).await).await;
}

async fn a_changed_tier_applies(h: Harness) {
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    set_tier(&h, &admin, "tiny", json!({"requests": 1, "window_seconds": 3600})).await;
    set_key(&h, &admin, &key, json!({"tier": "tiny"})).await;
    assert_eq!(h.get(Some(&key), "/v1/stats/events").await.status, StatusCode::OK);
    assert_eq!(h.get(Some(&key), "/v1/stats/events").await.status, StatusCode::TOO_MANY_REQUESTS);

    set_tier(&h, &admin, "tiny", json!({"requests": 100, "window_seconds": 1, "burst": 50})).await;
    let response = h.get(Some(&key), "/v1/stats/events").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    assert_eq!(policy(&response), "\"tiny\";q=100;w=1;spool-burst=50");

    // Redefining `default` moves every key that has no tier of its own.
    let other = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    set_tier(&h, &admin, "default", json!({"requests": 10, "window_seconds": 1})).await;
    let response = h.get(Some(&other), "/v1/stats/events").await;
    assert_eq!(policy(&response), "\"default\";q=10;w=1;spool-burst=10");
    let tiers = h.get(Some(&admin), "/v1/rate-limits/tiers").await;
    assert_eq!(tiers.json["tiers"][0]["built_in"], false);

    // Every change is an event of the tenant, on the tier's stream.
    let changes: Vec<_> = h
        .non_api_call_events()
        .await
        .into_iter()
        .filter(|event| event.type_name.starts_with("ratelimit."))
        .map(|event| (event.type_name, event.stream.as_str().to_owned(), event.tenant))
        .collect();
    assert_eq!(
        changes,
        [
            ("ratelimit.tier_set".to_owned(), "ratelimit/tier/tiny".to_owned(), admin.tenant),
            (
                "ratelimit.key_assigned".to_owned(),
                key_limit_stream(key.key_id).as_str().to_owned(),
                admin.tenant
            ),
            ("ratelimit.tier_set".to_owned(), "ratelimit/tier/tiny".to_owned(), admin.tenant),
            ("ratelimit.tier_set".to_owned(), "ratelimit/tier/default".to_owned(), admin.tenant),
        ]
    );
}

#[tokio::test]
async fn a_custom_limit_holds_for_its_key_alone_until_it_goes_back_to_default() {
    a_custom_limit_holds(harness().await).await;
}

#[tokio::test]
async fn a_custom_limit_holds_with_the_read_models_in_postgresql() {
    a_custom_limit_holds(postgres_harness(ApiOptions::default(), |log| log).await).await;
}

async fn a_custom_limit_holds(h: Harness) {
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let neighbour = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let custom =
        set_key(&h, &admin, &key, json!({"limit": {"requests": 2, "window_seconds": 60}})).await;
    assert_eq!(custom.json["policy"], "custom");

    for _ in 0..2 {
        let response = h.get(Some(&key), "/v1/stats/events").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(policy(&response), "\"custom\";q=2;w=60;spool-burst=2");
    }
    let refused = h.get(Some(&key), "/v1/stats/events").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json["violated-policies"], json!(["custom"]));
    let neighbour_response = h.get(Some(&neighbour), "/v1/stats/events").await;
    assert_eq!(neighbour_response.status, StatusCode::OK);
    assert_eq!(remaining(&neighbour_response).0, "default");

    let shown = h.get(Some(&admin), &format!("/v1/rate-limits/keys/{}", key.key_id)).await;
    assert_eq!(shown.json["policy"], "custom");
    assert_eq!(shown.json["assigned"], true);
    let unassigned =
        h.get(Some(&admin), &format!("/v1/rate-limits/keys/{}", neighbour.key_id)).await;
    assert_eq!(
        unassigned.json,
        json!({"key_id": neighbour.key_id.to_string(), "policy": "default", "requests": 1000,
               "window_seconds": 1, "burst": 5000, "assigned": false})
    );

    let back = set_key(&h, &admin, &key, json!({"tier": "default"})).await;
    assert_eq!(back.json["policy"], "default");
    let response = h.get(Some(&key), "/v1/stats/events").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(remaining(&response).0, "default");
}

#[tokio::test]
async fn keys_and_tenants_stay_apart() {
    let h = harness().await;
    let admin_a = h.tenant(&[Scope::Admin]).await;
    let admin_b = h.tenant(&[Scope::Admin]).await;
    let key_a = h.key(admin_a.tenant, &[Scope::EventsRead], None).await;
    let key_b = h.key(admin_b.tenant, &[Scope::EventsRead], None).await;
    // The admin keeps a limit of its own, off the default it is about to
    // tighten.
    set_key(&h, &admin_a, &admin_a, json!({"limit": {"requests": 100, "window_seconds": 1}})).await;
    set_tier(&h, &admin_a, "default", json!({"requests": 1, "window_seconds": 3600})).await;

    // Tenant A's default is not tenant B's.
    assert_eq!(h.get(Some(&key_a), "/v1/stats/events").await.status, StatusCode::OK);
    assert_eq!(h.get(Some(&key_a), "/v1/stats/events").await.status, StatusCode::TOO_MANY_REQUESTS);
    let b = h.get(Some(&key_b), "/v1/stats/events").await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(policy(&b), "\"default\";q=1000;w=1;spool-burst=5000");
    let tiers_b = h.get(Some(&admin_b), "/v1/rate-limits/tiers").await;
    assert_eq!(tiers_b.json["tiers"].as_array().unwrap().len(), 1);
    assert_eq!(tiers_b.json["tiers"][0]["built_in"], true);

    // Another tenant's key is as missing as a key that does not exist.
    let theirs = format!("/v1/rate-limits/keys/{}", key_b.key_id);
    for response in [
        h.get(Some(&admin_a), &theirs).await,
        put(&h, &admin_a, &theirs, json!({"tier": "default"})).await,
        h.get(Some(&admin_a), "/v1/rate-limits/keys/key_00000000000000000000000000000000").await,
        h.get(Some(&admin_a), "/v1/rate-limits/keys/not-a-key").await,
    ] {
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{}", response.json);
        assert_eq!(response.problem_type(), "https://spool.dev/problems/not-found");
    }
    // Keys without `admin` may not look.
    let response = h.get(Some(&key_b), "/v1/rate-limits/tiers").await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert!(response.json["detail"].as_str().unwrap().contains("admin"));
    // Nothing of tenant B changed.
    let b_events: Vec<_> = h
        .non_api_call_events()
        .await
        .into_iter()
        .filter(|event| event.tenant == admin_b.tenant && event.type_name.starts_with("ratelimit"))
        .collect();
    assert!(b_events.is_empty(), "{b_events:?}");
}

#[tokio::test]
async fn a_test_mode_key_has_limits_apart_from_live_ones() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let twin: TenantId = admin.tenant.test_twin();
    let test_admin = test_key(&h, twin, &[Scope::Admin]).await;
    let test_key = test_key(&h, twin, &[Scope::EventsRead]).await;
    set_tier(&h, &admin, "gold", json!({"requests": 5, "window_seconds": 1})).await;

    // The live tier is not the sandbox's: a test key cannot be put on it…
    let response = set_key(&h, &admin, &test_key, json!({"tier": "gold"})).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", response.json);
    assert_eq!(response.problem_type(), "https://spool.dev/problems/unknown-tier");
    // …until the sandbox defines its own, which the live admin may use.
    set_tier(&h, &test_admin, "gold", json!({"requests": 7, "window_seconds": 1})).await;
    let response = set_key(&h, &admin, &test_key, json!({"tier": "gold"})).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    let used = h.get(Some(&test_key), "/v1/stats/events").await;
    assert_eq!(policy(&used), "\"gold\";q=7;w=1;spool-burst=7");
    // A test key manages test keys only.
    let live_key = format!("/v1/rate-limits/keys/{}", admin.key_id);
    assert_eq!(h.get(Some(&test_admin), &live_key).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_noisy_key_never_slows_another() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let noisy = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let quiet = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    set_key(&h, &admin, &noisy, json!({"limit": {"requests": 1, "window_seconds": 3600}})).await;

    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (app, noisy) = (h.app.clone(), noisy.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..150 {
                    statuses.push(get_through(&app, &noisy).await.status);
                }
                statuses
            })
        })
        .collect();
    let mut quiet_latencies = Vec::new();
    for n in 0..60u64 {
        let started = Instant::now();
        let response = get_through(&h.app, &quiet).await;
        quiet_latencies.push(started.elapsed());
        assert_eq!(response.status, StatusCode::OK, "{}", response.json);
        // The quiet key's budget reflects its own requests only.
        let (name, r, _) = remaining(&response);
        assert_eq!(name, "default");
        assert!(r >= 4_999 - n, "request {n}: r={r}");
    }
    let mut refused = 0;
    let mut allowed = 0;
    for task in flood {
        for status in task.await.unwrap() {
            match status {
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                StatusCode::OK => allowed += 1,
                other => panic!("the noisy key got {other}"),
            }
        }
    }
    assert_eq!((allowed, refused), (1, 599));
    // Refusals never queue: a key over its limit is answered at once, and
    // no other key ever waits on its limiter. Generous, for a busy machine.
    let slowest = quiet_latencies.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(2), "the quiet key waited {slowest:?}");
}

#[tokio::test]
async fn requests_without_a_key_are_limited_per_address() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let from = |address: &str, key: Option<&Key>| {
        let peer: SocketAddr = address.parse().unwrap();
        let mut request = Request::builder().uri("/v1/stats/events").extension(ConnectInfo(peer));
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
        }
        request.body(Body::empty()).unwrap()
    };
    let mut first_refusal = None;
    for n in 0..300 {
        let response = h.send(from("192.0.2.1:5000", None)).await;
        if response.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.json["violated-policies"], json!(["anonymous"]));
            assert!(response.headers.contains_key(header::RETRY_AFTER));
            first_refusal = Some(n);
            break;
        }
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    }
    let first_refusal = first_refusal.expect("an address flooding without a key was limited");
    assert!(first_refusal >= 100, "refused after {first_refusal} requests, inside the burst");
    // Another address, and a valid key from the same one, are not limited.
    assert_eq!(h.send(from("192.0.2.2:5000", None)).await.status, StatusCode::UNAUTHORIZED);
    let keyed = h.send(from("192.0.2.1:5001", Some(&admin))).await;
    assert_eq!(keyed.status, StatusCode::OK);
    assert_eq!(remaining(&keyed).0, "default");
}

#[tokio::test]
async fn bad_limits_name_what_is_wrong_and_store_nothing() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let key_uri = format!("/v1/rate-limits/keys/{}", key.key_id);
    for (uri, body, status, problem, says) in [
        (
            "/v1/rate-limits/tiers/Gold",
            json!({"requests": 1, "window_seconds": 1}),
            400,
            "invalid-tier-name",
            "lowercase",
        ),
        (
            "/v1/rate-limits/tiers/custom",
            json!({"requests": 1, "window_seconds": 1}),
            400,
            "invalid-tier-name",
            "reserved",
        ),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": 0, "window_seconds": 1}),
            422,
            "invalid-body",
            "`requests`",
        ),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": 1, "window_seconds": 86401}),
            422,
            "invalid-body",
            "`window_seconds`",
        ),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": 1, "window_seconds": 86400, "burst": 400}),
            422,
            "invalid-body",
            "a year",
        ),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": 1, "window": 1}),
            422,
            "invalid-body",
            "window",
        ),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": -1, "window_seconds": 1}),
            422,
            "invalid-body",
            "requests: invalid value",
        ),
        (key_uri.as_str(), json!({}), 422, "invalid-body", "exactly one"),
        (
            key_uri.as_str(),
            json!({"tier": "default", "limit": {"requests": 1, "window_seconds": 1}}),
            422,
            "invalid-body",
            "exactly one",
        ),
        (key_uri.as_str(), json!({"tier": "platinum"}), 422, "unknown-tier", "platinum"),
        (
            key_uri.as_str(),
            json!({"limit": {"requests": 1, "window_seconds": 1, "burst": 0}}),
            422,
            "invalid-body",
            "`burst`",
        ),
        (
            key_uri.as_str(),
            json!({"limit": {"requests": 1, "window_seconds": "soon"}}),
            422,
            "invalid-body",
            "limit.window_seconds",
        ),
    ] {
        let response = put(&h, &admin, uri, body.clone()).await;
        assert_eq!(response.status.as_u16(), status, "{uri} {body}: {}", response.json);
        assert_eq!(response.problem_type(), format!("https://spool.dev/problems/{problem}"));
        let detail = response.json["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{uri} {body}: {detail}");
    }
    let malformed = h
        .send(
            Request::builder()
                .method(Method::PUT)
                .uri("/v1/rate-limits/tiers/gold")
                .header(header::AUTHORIZATION, format!("Bearer {}", admin.secret))
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.problem_type(), "https://spool.dev/problems/malformed-json");
    let not_admin =
        put(&h, &key, "/v1/rate-limits/tiers/gold", json!({"requests": 1, "window_seconds": 1}))
            .await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);

    let stored: Vec<_> = h
        .non_api_call_events()
        .await
        .into_iter()
        .filter(|event| event.type_name.starts_with("ratelimit"))
        .collect();
    assert!(stored.is_empty(), "{stored:?}");
    let tiers = h.get(Some(&admin), "/v1/rate-limits/tiers").await;
    assert_eq!(tiers.json["tiers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_openapi_document_covers_the_routes_and_the_429_everywhere() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    for (path, method) in [
        ("/v1/rate-limits/tiers", "get"),
        ("/v1/rate-limits/tiers/{tier}", "put"),
        ("/v1/rate-limits/keys/{id}", "get"),
        ("/v1/rate-limits/keys/{id}", "put"),
    ] {
        let operation = &document["paths"][path][method];
        assert_eq!(
            operation["security"],
            json!([{"api_key": ["admin"]}, {"oauth2": ["admin"]}]),
            "{path} {method}"
        );
        assert!(operation["responses"]["403"].is_object(), "{path} {method}");
    }
    let ingest = &document["paths"]["/v1/events"]["post"]["responses"];
    assert!(ingest["429"]["headers"]["Retry-After"].is_object(), "{ingest}");
    assert!(ingest["201"]["headers"]["RateLimit-Policy"].is_object(), "{ingest}");
    assert!(document["components"]["schemas"]["QuotaExceeded"].is_object());
}

/// A test-mode key (`spk_test_…`) of `twin`, a live tenant's sandbox.
async fn test_key(h: &Harness, twin: TenantId, scopes: &[Scope]) -> Key {
    let generated = spool_api::keys::generate_in(spool_api::keys::Mode::Test);
    h.append(vec![NewEvent::new(
        twin,
        spool_schemas::StreamName::for_key(generated.key_id),
        Event::KeyCreated(KeyCreated {
            key_id: generated.key_id,
            name: "test mode".into(),
            secret_hash: generated.secret_hash.clone(),
            scopes: scopes.to_vec(),
            expires_at: None,
        }),
    )])
    .await;
    Key { tenant: twin, key_id: generated.key_id, secret: generated.secret }
}

// ---- the shared store -------------------------------------------------

/// The key of `key`, appended to another harness's log too, so that both
/// authenticate it.
async fn mirror_key(into: &Harness, key: &Key, scopes: &[Scope]) {
    into.append(vec![NewEvent::new(
        key.tenant,
        spool_schemas::StreamName::for_key(key.key_id),
        Event::KeyCreated(KeyCreated {
            key_id: key.key_id,
            name: "mirrored".into(),
            secret_hash: spool_api::keys::hash_secret(&key.secret),
            scopes: scopes.to_vec(),
            expires_at: None,
        }),
    )])
    .await;
}

fn shared(prefix: &str, default_limit: RateLimit) -> RateLimitOptions {
    RateLimitOptions {
        default_limit,
        store: Some(SharedStore::redis(&redis_url()).unwrap().with_prefix(prefix)),
        ..RateLimitOptions::default()
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_allow_what_one_limit_allows() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    let other = h.key(key.tenant, &[Scope::EventsRead], None).await;
    // Ten per minute, one every 6 s: nothing refills during the test.
    let limit = RateLimit::new(10, 60, 10).unwrap();
    let prefix = unique_prefix();
    let (first, second) =
        (instance(&h, shared(&prefix, limit)), instance(&h, shared(&prefix, limit)));

    let mut allowed = Vec::new();
    let mut refused = 0;
    for n in 0..20 {
        let app = if n % 2 == 0 { &first } else { &second };
        let response = get_through(app, &key).await;
        assert_eq!(policy(&response), "\"default\";q=10;w=60;spool-burst=10");
        match response.status {
            StatusCode::OK => allowed.push(remaining(&response).1),
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let retry_after: u64 =
                    response.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
                assert!((5..=6).contains(&retry_after), "Retry-After {retry_after}");
            }
            other => panic!("{other}: {}", response.json),
        }
    }
    // Together they allowed ten, counting down one budget, not two.
    assert_eq!(allowed, (0..10).rev().collect::<Vec<u64>>());
    assert_eq!(refused, 10);
    // Another key has a budget of its own, in either instance.
    assert_eq!(get_through(&second, &other).await.status, StatusCode::OK);
    // What Redis holds: one TAT per key, expiring, under the prefix.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}{}", key.key_id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");

    // A second harness (another log and read models, the same key) on the
    // same Redis and prefix is the same budget too.
    let elsewhere = harness().await;
    mirror_key(&elsewhere, &key, &[Scope::EventsRead]).await;
    let third = instance(&elsewhere, shared(&prefix, limit));
    assert_eq!(get_through(&third, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn with_redis_unreachable_each_instance_limits_on_its_own() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    // Nothing listens on port 1.
    let options = RateLimitOptions {
        default_limit: RateLimit::new(3, 60, 3).unwrap(),
        store: Some(
            SharedStore::redis("redis://127.0.0.1:1").unwrap().with_prefix(unique_prefix()),
        ),
        ..RateLimitOptions::default()
    };
    let app = instance(&h, options);
    let started = Instant::now();
    let statuses: Vec<StatusCode> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let response = get_through(&app, &key).await;
            assert_eq!(policy(&response), "\"default\";q=3;w=60;spool-burst=3");
            statuses.push(response.status);
        }
        statuses
    };
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_redis_that_hangs_costs_one_timeout_then_nothing() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let options = RateLimitOptions {
        default_limit: RateLimit::new(3, 60, 3).unwrap(),
        store: Some(SharedStore::redis(&format!("redis://{address}")).unwrap()),
        store_timeout: Duration::from_millis(200),
        store_retry: Duration::from_secs(30),
        ..RateLimitOptions::default()
    };
    let app = instance(&h, options);
    let first = Instant::now();
    assert_eq!(get_through(&app, &key).await.status, StatusCode::OK);
    let first = first.elapsed();
    assert!(first >= Duration::from_millis(200) && first < Duration::from_secs(2), "{first:?}");
    // Marked down: the next requests do not wait on it, and the limit
    // still holds in-process.
    let rest = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get_through(&app, &key).await.status);
    }
    assert!(rest.elapsed() < Duration::from_millis(200 * 4), "{:?}", rest.elapsed());
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    held.abort();
}

/// Review finding 9: the store cut the emission interval to whole
/// microseconds, so limits above 100,000/s were up to twice as loose.
#[tokio::test]
async fn the_shared_store_counts_intervals_below_a_microsecond_exactly() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    // 400,000 per second: each request costs 2.5 µs; bursts of 2.5 s.
    let limit = RateLimit::new(400_000, 1, 1_000_000).unwrap();
    let prefix = unique_prefix();
    let app = instance(&h, shared(&prefix, limit));
    // The key's TAT, put two seconds ahead of Redis's clock: while it is
    // ahead, each request moves it by exactly one interval, however long
    // the requests take.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let (seconds, micros): (u64, u64) =
        redis::cmd("TIME").query_async(&mut connection).await.unwrap();
    let start = seconds * 1_000_000 + micros + 2_000_000;
    let tat_key = format!("{prefix}{}", key.key_id);
    let () = redis::cmd("SET")
        .arg(&tat_key)
        .arg(start)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    for _ in 0..4 {
        let response = get_through(&app, &key).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    }
    let tat: String = redis::cmd("GET").arg(&tat_key).query_async(&mut connection).await.unwrap();
    let moved = tat.parse::<f64>().unwrap() - start as f64;
    assert_eq!(moved, 10.0, "four requests of 2.5 µs each moved the TAT {moved} µs");
}

/// Review finding 4: requests without a key counted per exact address,
/// so an IPv6 client, which holds a whole /64, had 2^64 buckets.
#[tokio::test]
async fn requests_without_a_key_count_per_ipv6_64_prefix() {
    let h = harness().await;
    let from = |address: String| {
        let peer: SocketAddr = address.parse().unwrap();
        Request::builder()
            .uri("/v1/stats/events")
            .extension(ConnectInfo(peer))
            .body(Body::empty())
            .unwrap()
    };
    let mut first_refusal = None;
    for n in 0..300u32 {
        // Another address of the same /64 every time.
        let address = format!("[2001:db8:0:1:{:x}:{:x}::1]:5000", n / 7, n);
        let response = h.send(from(address)).await;
        if response.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.json["violated-policies"], json!(["anonymous"]));
            first_refusal = Some(n);
            break;
        }
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    }
    let first_refusal = first_refusal.expect("a /64 spreading over its addresses was limited");
    assert!(first_refusal >= 100, "refused after {first_refusal} requests, inside the burst");
    // Another /64, and IPv4 clients seen through a dual-stack socket, are
    // buckets of their own.
    for address in ["[2001:db8:0:2::1]:5000", "[::ffff:192.0.2.1]:5000", "192.0.2.2:5000"] {
        let response = h.send(from(address.to_owned())).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{address}");
    }
}

/// Review finding 3: any tenant admin could lift its own keys' limits to
/// 1,000,000 requests per second. Limits above the server's ceiling are
/// refused, naming it.
#[tokio::test]
async fn limits_above_the_servers_ceiling_are_refused_and_store_nothing() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let key_uri = format!("/v1/rate-limits/keys/{}", key.key_id);
    for (uri, body) in [
        ("/v1/rate-limits/tiers/default", json!({"requests": 1_000_000, "window_seconds": 1})),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": 100_001, "window_seconds": 1, "burst": 1}),
        ),
        (
            "/v1/rate-limits/tiers/gold",
            json!({"requests": 1, "window_seconds": 1, "burst": 100_001}),
        ),
        (key_uri.as_str(), json!({"limit": {"requests": 1_000_000, "window_seconds": 1}})),
    ] {
        let response = put(&h, &admin, uri, body.clone()).await;
        assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {body}");
        assert_eq!(response.problem_type(), "https://spool.dev/problems/limit-above-ceiling");
        let detail = response.json["detail"].as_str().unwrap();
        assert!(
            detail.contains("at most 100000 requests per 1 s, in bursts of up to 100000"),
            "{detail}"
        );
    }
    let stored = h.non_api_call_events().await;
    assert!(!stored.iter().any(|event| event.type_name.starts_with("ratelimit")), "{stored:?}");
    // The ceiling itself is allowed.
    set_tier(&h, &admin, "gold", json!({"requests": 100_000, "window_seconds": 1})).await;

    // An operator's lower ceiling, compared as a rate whatever the window.
    let lowered = RateLimitOptions {
        max_limit: RateLimit::new(60, 60, 10).unwrap(),
        ..RateLimitOptions::default()
    };
    let h = harness_with(options_with(lowered), |log| log).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    for (body, status) in [
        (json!({"requests": 2, "window_seconds": 1, "burst": 1}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"requests": 1, "window_seconds": 1, "burst": 11}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"requests": 1, "window_seconds": 1, "burst": 10}), StatusCode::OK),
        (json!({"requests": 3_600, "window_seconds": 3_600, "burst": 1}), StatusCode::OK),
    ] {
        let response = put(&h, &admin, "/v1/rate-limits/tiers/gold", body.clone()).await;
        assert_eq!(response.status, status, "{body}: {}", response.json);
    }
}
