//! Tenant isolation on every route: tenant A (and its sandbox twin) makes
//! one of everything (events, keys, an idempotent request, OAuth clients
//! and tokens, rate-limit tiers and key limits, usage); tenant B, and A's
//! own test-mode key for A's live objects, then use every route with A's
//! ids. Each answer is exactly the `404` an unknown id gets, no listing,
//! stream or report shows anything of A's, and nothing B does (revoke,
//! roll, delete, set limits, revoke tokens) changes what A has.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde_json::{Value, json};
use spool_api::ApiOptions;
use spool_schemas::{ClientId, KeyId, Scope};
use tower::ServiceExt;

use support::*;

const FORM: &str = "application/x-www-form-urlencoded";

async fn call(h: &Harness, key: &Key, method: Method, uri: &str, body: Option<Value>) -> Response {
    call_with(h, key, method, uri, body, None).await
}

async fn call_with(
    h: &Harness,
    key: &Key,
    method: Method,
    uri: &str,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> Response {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
    h.send(request.body(body).unwrap()).await
}

/// An OAuth client as its owner holds it.
struct Client {
    id: String,
    secret: String,
}

/// A form post to `/oauth/*`, the client authenticating by HTTP Basic.
async fn oauth_post(h: &Harness, uri: &str, client: &Client, fields: &[(&str, &str)]) -> Response {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        form.append_pair(name, value);
    }
    let credentials = STANDARD.encode(format!("{}:{}", client.id, client.secret));
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, FORM)
        .header(header::AUTHORIZATION, format!("Basic {credentials}"))
        .body(Body::from(form.finish()))
        .unwrap();
    h.send(request).await
}

async fn token(h: &Harness, client: &Client) -> String {
    let response =
        oauth_post(h, "/oauth/token", client, &[("grant_type", "client_credentials")]).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    response.json["access_token"].as_str().unwrap().to_owned()
}

fn introspection_active(response: &Response) -> bool {
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    response.json["active"].as_bool().unwrap()
}

/// A key issued through `POST /v1/keys` by `admin`.
async fn create_key(h: &Harness, admin: &Key, body: Value) -> Key {
    let created = call(h, admin, Method::POST, "/v1/keys", Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    key_of(admin, &created)
}

fn key_of(admin: &Key, created: &Response) -> Key {
    let tenant =
        if created.json["livemode"] == true { admin.tenant } else { admin.tenant.test_twin() };
    Key {
        tenant,
        key_id: created.json["id"].as_str().unwrap().parse().unwrap(),
        secret: created.json["secret"].as_str().unwrap().to_owned(),
    }
}

async fn create_client(h: &Harness, admin: &Key, name: &str) -> Client {
    let body = json!({"name": name, "scopes": ["events:read", "events:write"]});
    let created = call(h, admin, Method::POST, "/v1/oauth/clients", Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    Client {
        id: created.json["id"].as_str().unwrap().to_owned(),
        secret: created.json["client_secret"].as_str().unwrap().to_owned(),
    }
}

/// The body of `POST /v1/keys` A sends with an `Idempotency-Key`, which B
/// then sends too.
fn worker_key_request() -> Value {
    json!({"name": "worker", "scopes": ["events:read", "events:write"]})
}
const IDEMPOTENCY_KEY: &str = "create-worker-1";

/// What tenant A holds, live and in its sandbox.
struct TenantA {
    admin: Key,
    test_admin: Key,
    /// Made by `POST /v1/keys` with an `Idempotency-Key`; on tier `gold`.
    worker: Key,
    test_worker: Key,
    client: Client,
    test_client: Client,
    token: String,
    /// The ids of A's live and test events.
    event_ids: Vec<String>,
}

/// Tenant A makes one of everything, and checks it all works.
async fn tenant_a(h: &Harness) -> TenantA {
    let admin = h.tenant(&[Scope::Admin]).await;
    let test_admin = create_key(
        h,
        &admin,
        json!({"name": "sandbox admin", "scopes": ["admin"], "mode": "test"}),
    )
    .await;
    assert!(test_admin.tenant.is_test());

    let created = call_with(
        h,
        &admin,
        Method::POST,
        "/v1/keys",
        Some(worker_key_request()),
        Some(IDEMPOTENCY_KEY),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    let worker = key_of(&admin, &created);
    let replayed = call_with(
        h,
        &admin,
        Method::POST,
        "/v1/keys",
        Some(worker_key_request()),
        Some(IDEMPOTENCY_KEY),
    )
    .await;
    assert_eq!(replayed.json, created.json, "A's own retry replays A's answer");
    let test_worker = create_key(h, &test_admin, worker_key_request()).await;

    let mut event_ids = Vec::new();
    for key in [&worker, &test_worker] {
        let body = json!({"type": "a.order.created", "subject": "order/1", "id": "order-1-created", "data": {"owner": "a"}});
        let response = h.post_json(key, body).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
        event_ids.push(response.json["events"][0]["id"].as_str().unwrap().to_owned());
    }

    let client = create_client(h, &admin, "a sync").await;
    let test_client = create_client(h, &test_admin, "a sandbox sync").await;
    let token = token(h, &client).await;
    let as_token = Key { tenant: admin.tenant, key_id: KeyId::new(), secret: token.clone() };
    assert_eq!(h.get(Some(&as_token), "/v1/events").await.status, StatusCode::OK);

    let tier = json!({"requests": 100, "window_seconds": 60, "burst": 20});
    let set = call(h, &admin, Method::PUT, "/v1/rate-limits/tiers/gold", Some(tier)).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.json);
    let uri = format!("/v1/rate-limits/keys/{}", worker.key_id);
    let assigned = call(h, &admin, Method::PUT, &uri, Some(json!({"tier": "gold"}))).await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.json);

    TenantA { admin, test_admin, worker, test_worker, client, test_client, token, event_ids }
}

/// Everything of A's still works as A left it.
async fn assert_a_untouched(h: &Harness, a: &TenantA) {
    for key in [&a.worker, &a.test_worker] {
        let response = h.post_json(key, json!({"type": "a.still.works", "data": 1})).await;
        assert_eq!(
            response.status,
            StatusCode::CREATED,
            "A's key {} still works: {}",
            key.key_id,
            response.json
        );
        let shown = call(h, &a.admin, Method::GET, &format!("/v1/keys/{}", key.key_id), None).await;
        assert_eq!(shown.json["revoked"], false, "{}", shown.json);
    }
    let limit =
        call(h, &a.admin, Method::GET, &format!("/v1/rate-limits/keys/{}", a.worker.key_id), None)
            .await;
    assert_eq!(
        (limit.json["policy"].clone(), limit.json["requests"].clone()),
        (json!("gold"), json!(100)),
        "{}",
        limit.json
    );
    let tiers = call(h, &a.admin, Method::GET, "/v1/rate-limits/tiers", None).await;
    let gold =
        tiers.json["tiers"].as_array().unwrap().iter().find(|tier| tier["tier"] == "gold").cloned();
    assert_eq!(
        gold.map(|tier| tier["requests"].clone()),
        Some(json!(100)),
        "A's tier is A's: {}",
        tiers.json
    );

    for client in [&a.client, &a.test_client] {
        let shown =
            call(h, &a.admin, Method::GET, &format!("/v1/oauth/clients/{}", client.id), None).await;
        // The test client is the sandbox's: A's live admin does not see it.
        if client.id == a.client.id {
            assert_eq!(shown.status, StatusCode::OK, "{}", shown.json);
        }
        token(h, client).await;
    }
    let introspected = oauth_post(h, "/oauth/introspect", &a.client, &[("token", &a.token)]).await;
    assert!(
        introspection_active(&introspected),
        "A's token is still active: {}",
        introspected.json
    );
    let as_token = Key { tenant: a.admin.tenant, key_id: KeyId::new(), secret: a.token.clone() };
    assert_eq!(h.get(Some(&as_token), "/v1/events").await.status, StatusCode::OK);
}

/// A `/v1` route that takes an id, with a body that would change A's
/// object if the route let the caller at it.
struct IdRoute {
    method: Method,
    template: &'static str,
    body: Option<fn() -> Value>,
}

/// Every `/v1` route with an `{id}` (the tier routes take a name, which
/// each tenant has its own of: see below).
fn id_routes() -> Vec<IdRoute> {
    let route =
        |method: Method, template, body: Option<fn() -> Value>| IdRoute { method, template, body };
    vec![
        route(Method::GET, "/v1/keys/{id}", None),
        route(Method::DELETE, "/v1/keys/{id}", None),
        route(Method::POST, "/v1/keys/{id}/roll", Some(|| json!({"grace_period_seconds": 0}))),
        route(Method::GET, "/v1/oauth/clients/{id}", None),
        route(Method::DELETE, "/v1/oauth/clients/{id}", None),
        route(Method::GET, "/v1/rate-limits/keys/{id}", None),
        route(
            Method::PUT,
            "/v1/rate-limits/keys/{id}",
            Some(|| json!({"limit": {"requests": 1, "window_seconds": 86400}})),
        ),
    ]
}

#[tokio::test]
async fn the_id_routes_table_covers_every_documented_route_with_an_id() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let table: Vec<(String, String)> = id_routes()
        .iter()
        .map(|route| (route.method.to_string(), route.template.to_owned()))
        .collect();
    for (path, item) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") || !path.contains("{id}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let route = (method.to_uppercase(), path.clone());
            assert!(table.contains(&route), "{route:?} is missing from id_routes()");
        }
    }
}

/// `response`'s status, media type and body, with `id` written as `{id}`:
/// what must be the same for another tenant's id and an unknown one.
fn shape(response: &Response, id: &str) -> (StatusCode, String, String) {
    let content_type =
        response.headers.get(header::CONTENT_TYPE).map(|value| value.to_str().unwrap().to_owned());
    (
        response.status,
        content_type.unwrap_or_default(),
        response.json.to_string().replace(id, "{id}"),
    )
}

/// B (an admin of another tenant) and A's own test-mode admin use every
/// id route with A's ids: each gets exactly the `404` of an unknown id,
/// and A's objects keep working.
#[tokio::test]
async fn another_tenant_gets_the_unknown_id_404_on_every_id_route_and_changes_nothing() {
    unknown_id_404s(&harness().await).await;
}

#[tokio::test]
async fn the_same_holds_with_the_read_models_in_postgresql() {
    let h = postgres_harness(ApiOptions::default(), |log| log).await;
    unknown_id_404s(&h).await;
    reads_show_nothing_of_a(&h).await;
}

async fn unknown_id_404s(h: &Harness) {
    let a = tenant_a(h).await;
    let b = h.tenant(&[Scope::Admin]).await;

    // (caller, A's objects it must not reach): B reaches neither A's live
    // nor A's test objects; A's sandbox does not reach A's live ones.
    let live_keys = [a.admin.key_id.to_string(), a.worker.key_id.to_string()];
    let test_keys = [a.test_admin.key_id.to_string(), a.test_worker.key_id.to_string()];
    let callers = [
        (
            "tenant B",
            &b,
            [&live_keys[..], &test_keys[..]].concat(),
            vec![a.client.id.clone(), a.test_client.id.clone()],
        ),
        ("A's sandbox", &a.test_admin, live_keys.to_vec(), vec![a.client.id.clone()]),
    ];
    let mut checked = 0;
    for (who, caller, key_ids, client_ids) in &callers {
        for route in id_routes() {
            let (ids, unknown) = if route.template.starts_with("/v1/oauth/clients") {
                (client_ids, ClientId::new().to_string())
            } else {
                (key_ids, KeyId::new().to_string())
            };
            let body = route.body.map(|body| body());
            let uri = route.template.replace("{id}", &unknown);
            let expected = call(h, caller, route.method.clone(), &uri, body.clone()).await;
            assert_eq!(
                expected.status,
                StatusCode::NOT_FOUND,
                "{} {uri}: {}",
                route.method,
                expected.json
            );
            for id in ids {
                let uri = route.template.replace("{id}", id);
                let response = call(h, caller, route.method.clone(), &uri, body.clone()).await;
                assert_eq!(
                    shape(&response, id),
                    shape(&expected, &unknown),
                    "{who}: {} {} with A's id answers exactly as for an unknown id",
                    route.method,
                    route.template
                );
                checked += 1;
            }
        }
    }
    // B: 5 key routes × 4 keys and 2 client routes × 2 clients; the
    // sandbox: 5 × 2 live keys and 2 × 1 live client.
    assert_eq!(checked, 5 * 4 + 2 * 2 + 5 * 2 + 2, "every route with every id");
    assert_a_untouched(h, &a).await;
}

/// B's listings, streams, statistics and usage show nothing of A's, and
/// A's sandbox shows nothing of A's live data.
#[tokio::test]
async fn another_tenant_reads_none_of_a_s_data_in_lists_streams_stats_and_usage() {
    reads_show_nothing_of_a(&harness().await).await;
}

async fn reads_show_nothing_of_a(h: &Harness) {
    let a = tenant_a(h).await;
    let b = h.tenant(&[Scope::Admin]).await;
    let a_ids: Vec<String> = [&a.admin, &a.worker, &a.test_admin, &a.test_worker]
        .iter()
        .map(|key| key.key_id.to_string())
        .chain([a.client.id.clone(), a.test_client.id.clone()])
        .chain(a.event_ids.clone())
        .collect();
    let a_live_ids: Vec<String> = [
        a.admin.key_id.to_string(),
        a.worker.key_id.to_string(),
        a.client.id.clone(),
        a.event_ids[0].clone(),
    ]
    .into();
    // B's own traffic, so that its answers are not empty by accident.
    let marker = h
        .post_json(
            &b,
            json!({"type": "b.order.created", "subject": "order/1", "data": {"owner": "b"}}),
        )
        .await;
    assert_eq!(marker.status, StatusCode::CREATED);
    let b_event = marker.json["events"][0]["id"].as_str().unwrap().to_owned();
    create_client(h, &b, "b sync").await;
    // The api.call records of B's requests, and the projections of all.
    tokio::time::timeout(WAIT, async {
        while h.api_calls(1).await.iter().filter(|(tenant, _)| *tenant == b.tenant).count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B's requests were recorded");
    let head = *h.log.head(0).borrow();
    tokio::time::timeout(WAIT, h.runner.wait_for(head)).await.unwrap().unwrap();

    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    let usage = format!(
        "/v1/usage?from={}&to={}&group_by=key,route,status",
        (now - hour).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + hour).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let reads = [
        "/v1/events",
        "/v1/events?after=0&limit=1000",
        "/v1/events?type=a.*",
        "/v1/events?stream=order/1",
        "/v1/stats/events",
        "/v1/stats/events?type=a.*",
        "/v1/keys",
        "/v1/keys?mode=test",
        "/v1/oauth/clients",
        "/v1/rate-limits/tiers",
        usage.as_str(),
    ];
    for (who, caller, hidden) in
        [("tenant B", &b, &a_ids), ("A's sandbox", &a.test_admin, &a_live_ids)]
    {
        for uri in reads {
            let response = call(h, caller, Method::GET, uri, None).await;
            assert_eq!(response.status, StatusCode::OK, "{who} {uri}: {}", response.json);
            let text = response.json.to_string();
            for id in hidden.iter() {
                assert!(!text.contains(id.as_str()), "{who} {uri} shows A's {id}: {text}");
            }
            assert!(
                !text.contains("a.order.created") || caller.tenant == a.test_admin.tenant,
                "{who} {uri}: {text}"
            );
            assert!(!text.contains("\"gold\""), "{who} {uri} shows A's tier: {text}");
        }
    }
    // The answers were not empty: B sees its own.
    let events = call(h, &b, Method::GET, "/v1/events?after=0", None).await;
    assert_eq!(stored_ids(&events), [b_event.as_str()]);
    let usage = call(h, &b, Method::GET, &usage, None).await;
    let usage_keys: Vec<&Value> =
        usage.json["rows"].as_array().unwrap().iter().map(|row| &row["key_id"]).collect();
    assert!(
        !usage_keys.is_empty() && usage_keys.iter().all(|key| **key == json!(b.key_id.to_string())),
        "{usage_keys:?}"
    );
    let sandbox_events = call(h, &a.test_admin, Method::GET, "/v1/events?after=0", None).await;
    assert_eq!(
        stored_ids(&sandbox_events),
        [a.event_ids[1].clone()],
        "the sandbox sees its own event only"
    );

    // A stream from the start of the log shows B its own event, and none
    // of A's (appended before it).
    for (caller, own) in [(&b, &b_event), (&a.test_admin, &a.event_ids[1])] {
        let response = h
            .app
            .clone()
            .oneshot(stream_request(caller, "/v1/events/stream?after=0"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body().into_data_stream();
        let text = read_sse(&mut body, |text| text.contains(own.as_str())).await;
        let hidden = if caller.key_id == b.key_id { &a_ids } else { &a_live_ids };
        for id in hidden {
            assert!(!text.contains(id.as_str()), "the stream shows A's {id}: {text}");
        }
    }
}

/// The same `Idempotency-Key` and body from B runs B's own request: B gets
/// a key of its own, never A's stored answer (which holds A's secret).
#[tokio::test]
async fn another_tenant_with_the_same_idempotency_key_gets_its_own_answer() {
    let h = harness().await;
    let a = tenant_a(&h).await;
    let b = h.tenant(&[Scope::Admin]).await;
    let response = call_with(
        &h,
        &b,
        Method::POST,
        "/v1/keys",
        Some(worker_key_request()),
        Some(IDEMPOTENCY_KEY),
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    assert!(response.headers.get("idempotent-replayed").is_none(), "not a replay");
    assert_ne!(response.json["id"], json!(a.worker.key_id.to_string()));
    assert_ne!(response.json["secret"], json!(a.worker.secret));
    let b_worker = key_of(&b, &response);
    let shown = call(&h, &b, Method::GET, &format!("/v1/keys/{}", b_worker.key_id), None).await;
    assert_eq!(shown.status, StatusCode::OK, "the key is B's");
    let hidden =
        call(&h, &a.admin, Method::GET, &format!("/v1/keys/{}", b_worker.key_id), None).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    // The same holds between A's live tenant and its sandbox.
    let sandbox = call_with(
        &h,
        &a.test_admin,
        Method::POST,
        "/v1/keys",
        Some(worker_key_request()),
        Some(IDEMPOTENCY_KEY),
    )
    .await;
    assert_eq!(sandbox.status, StatusCode::CREATED, "{}", sandbox.json);
    assert_eq!(sandbox.json["livemode"], false);
    assert_ne!(sandbox.json["secret"], json!(a.worker.secret));

    // And a client-chosen event id names an event of the caller's tenant
    // only: B's event with A's id is a new event, not A's duplicate.
    let body = json!({"type": "b.order.created", "subject": "order/1", "id": "order-1-created", "data": {}});
    let ingested = h.post_json(&b, body).await;
    assert_eq!(ingested.json["events"][0]["duplicate"], false, "{}", ingested.json);
    assert!(!a.event_ids.contains(&ingested.json["events"][0]["id"].as_str().unwrap().to_owned()));
    assert_a_untouched(&h, &a).await;
}

/// B's rate-limit changes are B's: its tier of the same name is its own,
/// and A's tier is not one B's keys can be put on.
#[tokio::test]
async fn another_tenants_rate_limit_tiers_are_its_own() {
    let h = harness().await;
    let a = tenant_a(&h).await;
    let b = h.tenant(&[Scope::Admin]).await;
    let uri = format!("/v1/rate-limits/keys/{}", b.key_id);
    let refused = call(&h, &b, Method::PUT, &uri, Some(json!({"tier": "gold"}))).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "A's tier is not B's: {}",
        refused.json
    );
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/unknown-tier");

    let tier = json!({"requests": 1, "window_seconds": 86400, "burst": 1});
    let set = call(&h, &b, Method::PUT, "/v1/rate-limits/tiers/gold", Some(tier)).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.json);
    let sandbox_tier = json!({"requests": 2, "window_seconds": 86400, "burst": 2});
    let set =
        call(&h, &a.test_admin, Method::PUT, "/v1/rate-limits/tiers/gold", Some(sandbox_tier))
            .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.json);
    // A's worker, on A's `gold`, is not limited by B's or the sandbox's.
    for _ in 0..5 {
        let response = h.post_json(&a.worker, json!({"type": "a.still.works", "data": 1})).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    }
    assert_a_untouched(&h, &a).await;
}

/// Tokens: B's client introspecting or revoking A's token learns nothing
/// (the answers of an unknown token) and changes nothing; B's client id
/// with A's secret, or A's id with B's secret, authenticates no one.
#[tokio::test]
async fn another_tenants_client_can_neither_see_nor_revoke_a_s_tokens() {
    let h = harness().await;
    let a = tenant_a(&h).await;
    let b = h.tenant(&[Scope::Admin]).await;
    let b_client = create_client(&h, &b, "b sync").await;
    let b_token = token(&h, &b_client).await;
    let unknown = "eyJhbGciOiJFZERTQSJ9.e30.c2lnbmF0dXJl";

    let introspected = oauth_post(&h, "/oauth/introspect", &b_client, &[("token", &a.token)]).await;
    assert_eq!(introspected.json, json!({"active": false}), "exactly inactive");
    let as_admin = Request::builder()
        .method(Method::POST)
        .uri("/oauth/introspect")
        .header(header::CONTENT_TYPE, FORM)
        .header(header::AUTHORIZATION, format!("Bearer {}", b.secret))
        .body(Body::from(format!("token={}", a.token)))
        .unwrap();
    let introspected = h.send(as_admin).await;
    assert_eq!(introspected.json, json!({"active": false}), "B's admin key sees no A token");

    let for_unknown = oauth_post(&h, "/oauth/revoke", &b_client, &[("token", unknown)]).await;
    let for_a = oauth_post(&h, "/oauth/revoke", &b_client, &[("token", &a.token)]).await;
    assert_eq!((for_a.status, for_a.json.clone()), (for_unknown.status, for_unknown.json.clone()));

    // B's token on A's client routes: the unknown-id 404.
    let b_bearer = Key { tenant: b.tenant, key_id: KeyId::new(), secret: b_token };
    let b_admin_client = create_client_with_admin_scope(&h, &b).await;
    let b_admin_token =
        Key { tenant: b.tenant, key_id: KeyId::new(), secret: token(&h, &b_admin_client).await };
    for method in [Method::GET, Method::DELETE] {
        let unknown_id = ClientId::new().to_string();
        let expected = call(
            &h,
            &b_admin_token,
            method.clone(),
            &format!("/v1/oauth/clients/{unknown_id}"),
            None,
        )
        .await;
        assert_eq!(expected.status, StatusCode::NOT_FOUND, "{}", expected.json);
        let response = call(
            &h,
            &b_admin_token,
            method.clone(),
            &format!("/v1/oauth/clients/{}", a.client.id),
            None,
        )
        .await;
        assert_eq!(shape(&response, &a.client.id), shape(&expected, &unknown_id), "{method}");
    }
    let events = call(&h, &b_bearer, Method::GET, "/v1/events?after=0", None).await;
    assert_eq!(events.status, StatusCode::OK);
    assert!(!events.json.to_string().contains(&a.event_ids[0]));

    // Mixed credentials authenticate no one.
    for mixed in [
        Client { id: a.client.id.clone(), secret: b_client.secret.clone() },
        Client { id: b_client.id.clone(), secret: a.client.secret.clone() },
    ] {
        let response =
            oauth_post(&h, "/oauth/token", &mixed, &[("grant_type", "client_credentials")]).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{}", response.json);
        assert_eq!(response.json["error"], "invalid_client");
    }
    assert_a_untouched(&h, &a).await;
}

async fn create_client_with_admin_scope(h: &Harness, admin: &Key) -> Client {
    let body = json!({"name": "b admin", "scopes": ["admin"]});
    let created = call(h, admin, Method::POST, "/v1/oauth/clients", Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    Client {
        id: created.json["id"].as_str().unwrap().to_owned(),
        secret: created.json["client_secret"].as_str().unwrap().to_owned(),
    }
}

/// Regression: `GET /v1/usage` read its minute rows and its latency
/// buckets in two statements, each seeing the latest commit; a group the
/// `usage` projection committed in between had buckets without a minute
/// row, and the report failed with `500` (found by the scans above, which
/// read usage while their own requests were being projected).
#[tokio::test]
async fn usage_reads_one_snapshot_while_requests_are_being_projected() {
    usage_reads_one_snapshot(&harness_with(uncached_usage(), |log| log).await).await;
}

#[tokio::test]
async fn usage_reads_one_snapshot_in_postgresql_too() {
    usage_reads_one_snapshot(&postgres_harness(uncached_usage(), |log| log).await).await;
}

/// Every report read from the read model as the projection moves it (a
/// cached answer would be read once a second), and at a pace the default
/// rate limit allows.
fn uncached_usage() -> ApiOptions {
    ApiOptions { usage_cache_ttl: Duration::ZERO, ..ApiOptions::default() }
}

async fn usage_reads_one_snapshot(h: &Harness) {
    let reader = h.tenant(&[Scope::UsageRead]).await;
    let log = h.log.clone();
    let tenant = reader.tenant;
    let writer = tokio::spawn(async move {
        for n in 0..400u64 {
            // A new key each time: a new group in the report.
            let key_id = KeyId::new();
            let call = spool_log::NewEvent::new(
                tenant,
                spool_schemas::StreamName::for_api_calls(Some(key_id)),
                spool_schemas::Event::ApiCall(spool_schemas::ApiCall {
                    key_id: Some(key_id),
                    client_id: None,
                    method: "GET".into(),
                    route: "/v1/events".into(),
                    status: 200,
                    latency_us: 100 + n,
                }),
            );
            log.append(spool_log::Append::new(vec![call])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let now = Utc::now();
    let uri = format!(
        "/v1/usage?granularity=minute&group_by=key&from={}&to={}",
        (now - chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let mut n_reports = 0;
    while !writer.is_finished() {
        let report = h.get(Some(&reader), &uri).await;
        assert_eq!(report.status, StatusCode::OK, "{}", report.json);
        n_reports += 1;
    }
    writer.await.unwrap();
    assert!(n_reports > 10, "the reports ran while the projection applied calls: {n_reports}");
}
