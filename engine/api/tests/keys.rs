//! `/v1/keys` through the real router: issuing (shown once, checksummed,
//! working at once), listing and showing without secrets, revoking, rolling
//! with a grace period, expiry, scopes, modes, and tenant isolation.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use spool_api::ApiOptions;
use spool_api::keys::{self, Mode};
use spool_log::{Append, NewEvent};
use spool_schemas::{Event, KeyCreated, KeyId, Scope, StreamName, TenantId};

use support::*;

async fn call(h: &Harness, key: &Key, method: Method, uri: &str, body: Option<Value>) -> Response {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    };
    h.send(request.unwrap()).await
}

async fn create(h: &Harness, admin: &Key, body: Value) -> Response {
    call(h, admin, Method::POST, "/v1/keys", Some(body)).await
}

/// The key a `201` of `POST /v1/keys` issued, as a client holds it.
fn issued(response: &Response, tenant: TenantId) -> Key {
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    Key {
        tenant,
        key_id: response.json["id"].as_str().unwrap().parse().unwrap(),
        secret: response.json["secret"].as_str().unwrap().to_owned(),
    }
}

fn assert_problem(response: &Response, status: StatusCode, slug: &str, mentions: &str) {
    assert_eq!(response.status, status, "{}", response.json);
    assert_eq!(response.problem_type(), format!("https://spool.dev/problems/{slug}"));
    let detail = response.json["detail"].as_str().unwrap();
    assert!(detail.contains(mentions), "{detail:?} does not mention {mentions:?}");
}

async fn key_events(h: &Harness) -> Vec<spool_log::StoredEvent> {
    h.read_all().await.into_iter().filter(|event| event.type_name.starts_with("key.")).collect()
}

#[tokio::test]
async fn an_admin_key_issues_a_key_that_works_at_once_and_whose_secret_is_shown_once() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let response = create(
        &h,
        &admin,
        json!({"name": "ci", "scopes": ["events:read", "usage:read", "events:read"]}),
    )
    .await;
    assert_eq!(response.headers[header::CACHE_CONTROL], "no-store");
    let reader = issued(&response, admin.tenant);
    assert_eq!(keys::parse(&reader.secret), Ok(Mode::Live));
    assert_eq!(response.json["mode"], "live");
    assert_eq!(response.json["livemode"], true);
    assert_eq!(response.json["scopes"], json!(["events:read", "usage:read"]));
    assert_eq!(response.json["revoked"], false);
    assert_eq!(response.json["expires_at"], Value::Null);

    // Usable on the very next request, with exactly its scopes.
    assert_eq!(h.get(Some(&reader), "/v1/events").await.status, StatusCode::OK);
    let write = h.post_json(&reader, json!({"type": "a.b"})).await;
    assert_problem(&write, StatusCode::FORBIDDEN, "insufficient-scope", "events:write");

    // Listed and shown, never with its secret or its hash.
    let hash = keys::hash_secret(&reader.secret);
    let list = call(&h, &admin, Method::GET, "/v1/keys", None).await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<&str> =
        list.json["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [admin.key_id.to_string(), reader.key_id.to_string()]);
    let shown = call(&h, &admin, Method::GET, &format!("/v1/keys/{}", reader.key_id), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["name"], "ci");
    for text in [list.json.to_string(), shown.json.to_string()] {
        assert!(!text.contains(&reader.secret) && !text.contains(&hash), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    // The log holds the hash, never the secret.
    let events = key_events(&h).await;
    assert!(events.iter().any(|event| event.data.contains(&hash)));
    assert!(events.iter().all(|event| !event.data.contains(&reader.secret)));
}

#[tokio::test]
async fn bad_key_requests_are_refused_naming_what_is_wrong_and_store_nothing() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let before = key_events(&h).await.len();
    let cases = [
        (
            json!({"name": "x", "scopes": ["events:read", "events:delete"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-scope",
            "`events:delete`",
        ),
        (
            json!({"name": "x", "scopes": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "scopes",
        ),
        (
            json!({"name": "  ", "scopes": ["admin"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "name",
        ),
        (
            json!({"name": "x".repeat(129), "scopes": ["admin"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "name",
        ),
        (json!({"scopes": ["admin"]}), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "name"),
        (
            json!({"name": "x", "scopes": ["admin"], "expires_at": "2020-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["admin"], "expires_at": "tomorrow"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["admin"], "mode": "prod"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "mode",
        ),
        (
            json!({"name": "x", "scopes": ["admin"], "secret": "mine"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "secret",
        ),
        (
            json!({"name": 5, "scopes": ["admin"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "name",
        ),
        (
            json!({"name": "x", "scopes": "admin"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "scopes",
        ),
    ];
    for (body, status, slug, mentions) in cases {
        let response = create(&h, &admin, body.clone()).await;
        assert_problem(&response, status, slug, mentions);
    }
    let malformed = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/keys")
                .header(header::AUTHORIZATION, format!("Bearer {}", admin.secret))
                .body(Body::from("{\"name\": "))
                .unwrap(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.problem_type(), "https://spool.dev/problems/malformed-json");
    let empty = call(&h, &admin, Method::POST, "/v1/keys", None).await;
    assert_problem(&empty, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "name");

    assert_eq!(key_events(&h).await.len(), before, "a refused request stored nothing");
    assert_eq!(h.get(Some(&admin), "/v1/events").await.status, StatusCode::OK);
}

#[tokio::test]
async fn every_key_route_needs_the_admin_scope_and_says_so() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let almost =
        h.key(admin.tenant, &[Scope::EventsRead, Scope::EventsWrite, Scope::UsageRead], None).await;
    let id = admin.key_id;
    let routes = [
        (Method::POST, "/v1/keys".to_owned(), Some(json!({"name": "x", "scopes": ["admin"]}))),
        (Method::GET, "/v1/keys".to_owned(), None),
        (Method::GET, format!("/v1/keys/{id}"), None),
        (Method::DELETE, format!("/v1/keys/{id}"), None),
        (Method::POST, format!("/v1/keys/{id}/roll"), Some(json!({}))),
    ];
    let before = key_events(&h).await.len();
    for (method, uri, body) in routes {
        let response = call(&h, &almost, method.clone(), &uri, body).await;
        assert_problem(&response, StatusCode::FORBIDDEN, "insufficient-scope", "`admin`");
    }
    assert_eq!(key_events(&h).await.len(), before);
    assert_eq!(h.get(Some(&admin), "/v1/events").await.status, StatusCode::OK, "not revoked");
}

#[tokio::test]
async fn another_tenants_key_is_not_found_exactly_like_a_missing_one() {
    let h = harness().await;
    let acme = h.tenant(&[Scope::Admin]).await;
    let globex = h.tenant(&[Scope::Admin]).await;
    let acme_reader = h.key(acme.tenant, &[Scope::EventsRead], None).await;
    let missing = KeyId::new();
    let before = key_events(&h).await.len();

    for id in [acme_reader.key_id.to_string(), missing.to_string(), "not-a-key-id".to_owned()] {
        let routes = [
            (Method::GET, format!("/v1/keys/{id}"), None),
            (Method::DELETE, format!("/v1/keys/{id}"), None),
            (
                Method::POST,
                format!("/v1/keys/{id}/roll"),
                Some(json!({"grace_period_seconds": 60})),
            ),
        ];
        for (method, uri, body) in routes {
            let response = call(&h, &globex, method, &uri, body).await;
            assert_eq!(response.status, StatusCode::NOT_FOUND, "{uri}: {}", response.json);
            assert_eq!(response.problem_type(), "https://spool.dev/problems/not-found");
            // The same words whether the key exists elsewhere or nowhere.
            assert_eq!(response.json["detail"], format!("no key {id}"));
        }
    }
    let list = call(&h, &globex, Method::GET, "/v1/keys", None).await;
    assert!(!list.json.to_string().contains(&acme_reader.key_id.to_string()), "{}", list.json);

    assert_eq!(key_events(&h).await.len(), before, "nothing changed");
    assert_eq!(h.get(Some(&acme_reader), "/v1/events").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once_and_revoking_again_changes_nothing() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let reader = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    assert_eq!(h.get(Some(&reader), "/v1/events").await.status, StatusCode::OK);

    let uri = format!("/v1/keys/{}", reader.key_id);
    let revoked = call(&h, &admin, Method::DELETE, &uri, None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.json);
    assert_eq!(revoked.json["revoked"], true);
    let refused = h.get(Some(&reader), "/v1/events").await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "revoked-key", &reader.key_id.to_string());

    let again = call(&h, &admin, Method::DELETE, &uri, None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["revoked"], true);
    let revocations = key_events(&h).await.iter().filter(|e| e.type_name == "key.revoked").count();
    assert_eq!(revocations, 1);
    let shown = call(&h, &admin, Method::GET, &uri, None).await;
    assert_eq!(shown.json["revoked"], true);

    let roll = call(&h, &admin, Method::POST, &format!("{uri}/roll"), None).await;
    assert_problem(&roll, StatusCode::CONFLICT, "conflict", "revoked");
}

async fn until_status(h: &Harness, key: &Key, status: StatusCode, within: Duration) -> Response {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let response = h.get(Some(key), "/v1/events").await;
        if response.status == status {
            return response;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {}", response.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_rolled_key_keeps_its_old_secret_for_the_grace_period_then_only_the_new_one_works() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let old = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let uri = format!("/v1/keys/{}/roll", old.key_id);

    let too_long =
        call(&h, &admin, Method::POST, &uri, Some(json!({"grace_period_seconds": 604_801}))).await;
    assert_problem(
        &too_long,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "grace_period_seconds",
    );
    let negative =
        call(&h, &admin, Method::POST, &uri, Some(json!({"grace_period_seconds": -1}))).await;
    assert_problem(
        &negative,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "grace_period_seconds",
    );
    assert!(key_events(&h).await.iter().all(|e| e.type_name != "key.rolled"));

    let asked_at = Utc::now();
    let rolled =
        call(&h, &admin, Method::POST, &uri, Some(json!({"grace_period_seconds": 2}))).await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.json);
    assert_eq!(rolled.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(rolled.json["id"], old.key_id.to_string());
    let new = Key { secret: rolled.json["secret"].as_str().unwrap().to_owned(), ..old.clone() };
    assert_eq!(keys::parse(&new.secret), Ok(Mode::Live));
    assert_ne!(new.secret, old.secret);
    let ends: DateTime<Utc> =
        rolled.json["previous_secret_expires_at"].as_str().unwrap().parse().unwrap();
    let grace = ends - asked_at;
    assert!(
        grace >= chrono::Duration::seconds(2) && grace < chrono::Duration::seconds(3),
        "{grace}"
    );

    // During the grace period both work; after it only the new one.
    assert_eq!(h.get(Some(&old), "/v1/events").await.status, StatusCode::OK);
    assert_eq!(h.get(Some(&new), "/v1/events").await.status, StatusCode::OK);
    let expired = until_status(&h, &old, StatusCode::UNAUTHORIZED, Duration::from_secs(5)).await;
    assert!(Utc::now() >= ends, "the old secret stopped before its stated end");
    assert_problem(&expired, StatusCode::UNAUTHORIZED, "expired-key", "roll");
    assert_eq!(h.get(Some(&new), "/v1/events").await.status, StatusCode::OK);

    // Rolling again without a grace period ends the current one at once.
    let newest = call(&h, &admin, Method::POST, &uri, None).await;
    assert_eq!(newest.status, StatusCode::OK, "{}", newest.json);
    let newest = Key { secret: newest.json["secret"].as_str().unwrap().to_owned(), ..old.clone() };
    assert_eq!(h.get(Some(&new), "/v1/events").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get(Some(&newest), "/v1/events").await.status, StatusCode::OK);

    // The log records hashes only.
    let events = key_events(&h).await;
    assert_eq!(events.iter().filter(|e| e.type_name == "key.rolled").count(), 2);
    for secret in [&old.secret, &new.secret, &newest.secret] {
        assert!(events.iter().all(|event| !event.data.contains(secret.as_str())));
    }
}

#[tokio::test]
async fn a_key_stops_working_at_its_expiry() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let expires_at = Utc::now() + chrono::Duration::milliseconds(1500);
    let response = create(
        &h,
        &admin,
        json!({"name": "brief", "scopes": ["events:read"], "expires_at": expires_at.to_rfc3339()}),
    )
    .await;
    let brief = issued(&response, admin.tenant);
    assert_eq!(
        response.json["expires_at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(),
        expires_at
    );
    assert_eq!(h.get(Some(&brief), "/v1/events").await.status, StatusCode::OK);
    let expired = until_status(&h, &brief, StatusCode::UNAUTHORIZED, Duration::from_secs(5)).await;
    assert!(Utc::now() >= expires_at);
    assert_problem(&expired, StatusCode::UNAUTHORIZED, "expired-key", "expired");
}

/// The checksum is checked before anything is looked up: with the auth read
/// model failed, a lookup would answer 503, a mistyped key still gets 401.
#[tokio::test]
async fn a_mistyped_key_is_refused_by_its_checksum_without_a_lookup() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    let mut typo = key.secret.clone().into_bytes();
    typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
    let typo = Key { secret: String::from_utf8(typo).unwrap(), ..key.clone() };
    let refused = h.get(Some(&typo), "/v1/events").await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "invalid-key", "checksum");

    // Two keys with one secret hash stop the auth projection.
    let hash = keys::generate().secret_hash;
    let twins: Vec<NewEvent> = (0..2)
        .map(|_| {
            let key_id = KeyId::new();
            NewEvent::new(
                key.tenant,
                StreamName::for_key(key_id),
                Event::KeyCreated(KeyCreated {
                    key_id,
                    name: "twin".into(),
                    secret_hash: hash.clone(),
                    scopes: vec![Scope::EventsRead],
                    expires_at: None,
                }),
            )
        })
        .collect();
    let appended = h.log.append(Append::new(twins)).await.unwrap();
    let failed = tokio::time::timeout(WAIT, h.runner.wait_for_projection("auth", &appended)).await;
    assert!(failed.unwrap().is_err(), "the auth projection failed");
    assert_eq!(h.get(Some(&key), "/v1/events").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let refused = h.get(Some(&typo), "/v1/events").await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "invalid-key", "checksum");
}

#[tokio::test]
async fn a_test_key_manages_test_keys_only_and_a_live_key_both() {
    let h = harness().await;
    let live_admin = h.tenant(&[Scope::Admin]).await;
    let twin = live_admin.tenant.test_twin();

    let response =
        create(&h, &live_admin, json!({"name": "sandbox", "scopes": ["admin"], "mode": "test"}))
            .await;
    let test_admin = issued(&response, twin);
    assert_eq!(keys::parse(&test_admin.secret), Ok(Mode::Test));
    assert_eq!(
        (&response.json["mode"], &response.json["livemode"]),
        (&json!("test"), &json!(false))
    );

    // A test key asking for a live key is refused; by default it makes test keys.
    let refused =
        create(&h, &test_admin, json!({"name": "x", "scopes": ["admin"], "mode": "live"})).await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "live-mode-required", "test-mode key");
    let response = create(&h, &test_admin, json!({"name": "t", "scopes": ["events:read"]})).await;
    let test_reader = issued(&response, twin);
    assert!(test_reader.secret.starts_with("spk_test_"));
    let stored = key_events(&h).await;
    let created =
        stored.iter().find(|e| e.stream.as_str() == format!("key/{}", test_reader.key_id));
    assert_eq!(created.unwrap().tenant, twin, "a test key belongs to the sandbox twin");

    // The test admin sees test keys only; live ones are not found.
    let listed = call(&h, &test_admin, Method::GET, "/v1/keys", None).await;
    let modes: Vec<&str> = listed.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["test", "test"]);
    for (method, suffix) in [(Method::GET, ""), (Method::DELETE, ""), (Method::POST, "/roll")] {
        let uri = format!("/v1/keys/{}{suffix}", live_admin.key_id);
        let response = call(&h, &test_admin, method, &uri, None).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{uri}");
    }

    // The live admin sees both modes, filters by mode, and manages test keys.
    let listed = call(&h, &live_admin, Method::GET, "/v1/keys", None).await;
    assert_eq!(listed.json["keys"].as_array().unwrap().len(), 3);
    let tests = call(&h, &live_admin, Method::GET, "/v1/keys?mode=test", None).await;
    assert_eq!(tests.json["keys"].as_array().unwrap().len(), 2);
    let bad = call(&h, &live_admin, Method::GET, "/v1/keys?mode=prod", None).await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "invalid-query", "mode");
    let uri = format!("/v1/keys/{}/roll", test_reader.key_id);
    let rolled = call(&h, &live_admin, Method::POST, &uri, None).await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.json);
    assert!(
        rolled.json["secret"].as_str().unwrap().starts_with("spk_test_"),
        "a roll keeps the mode"
    );
    let revoked =
        call(&h, &live_admin, Method::DELETE, &format!("/v1/keys/{}", test_admin.key_id), None)
            .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(h.get(Some(&test_admin), "/v1/events").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_openapi_document_describes_every_key_route_with_its_scope_errors_and_examples() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let operations = [
        ("/v1/keys", "post", "201"),
        ("/v1/keys", "get", "200"),
        ("/v1/keys/{id}", "get", "200"),
        ("/v1/keys/{id}", "delete", "200"),
        ("/v1/keys/{id}/roll", "post", "200"),
    ];
    for (path, method, success) in operations {
        let operation = &document["paths"][path][method];
        assert_eq!(
            operation["security"],
            json!([{"api_key": ["admin"]}, {"oauth2": ["admin"]}]),
            "{method} {path}"
        );
        let responses = &operation["responses"];
        assert!(responses[success].is_object(), "{method} {path}");
        for status in ["401", "403"] {
            let problem = &responses[status]["content"]["application/problem+json"];
            assert!(problem.is_object(), "{method} {path} {status}");
        }
        if path != "/v1/keys" {
            assert!(responses["404"].is_object(), "{method} {path}");
        }
    }
    let create = &document["paths"]["/v1/keys"]["post"];
    assert!(create["requestBody"]["content"]["application/json"]["example"].is_object());
    let created = &create["responses"]["201"]["content"]["application/json"]["example"];
    assert!(keys::parse(created["secret"].as_str().unwrap()).is_ok(), "a valid example key");
    let description = document["info"]["description"].as_str().unwrap();
    for slug in ["unknown-scope", "live-mode-required"] {
        assert!(description.contains(slug), "{slug}");
    }
}

/// A harness whose auth cache trusts an entry for `ttl`.
async fn cached_for(ttl: Duration) -> Harness {
    harness_with(ApiOptions { auth_cache_ttl: ttl, ..ApiOptions::default() }, |log| log).await
}

/// Longer than any test: only an invalidation, or the clock, ends an entry.
const LONG_TTL: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_cached_key_revoked_through_the_route_fails_on_the_very_next_request() {
    let h = cached_for(LONG_TTL).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let reader = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    assert_eq!(h.get(Some(&reader), "/v1/events").await.status, StatusCode::OK);

    let uri = format!("/v1/keys/{}", reader.key_id);
    assert_eq!(call(&h, &admin, Method::DELETE, &uri, None).await.status, StatusCode::OK);
    let refused = h.get(Some(&reader), "/v1/events").await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "revoked-key", &reader.key_id.to_string());

    // A roll without grace ends the cached old secret at once too.
    let other = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    assert_eq!(h.get(Some(&other), "/v1/events").await.status, StatusCode::OK);
    let uri = format!("/v1/keys/{}/roll", other.key_id);
    assert_eq!(call(&h, &admin, Method::POST, &uri, None).await.status, StatusCode::OK);
    let ended = h.get(Some(&other), "/v1/events").await;
    assert_problem(&ended, StatusCode::UNAUTHORIZED, "expired-key", "roll");
}

#[tokio::test]
async fn a_key_revoked_behind_the_cache_s_back_fails_within_the_ttl() {
    let ttl = ApiOptions::default().auth_cache_ttl;
    assert_eq!(ttl, Duration::from_millis(500));
    let h = cached_for(ttl).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let reader = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    assert_eq!(h.get(Some(&reader), "/v1/events").await.status, StatusCode::OK);

    // As the CLI or another instance would: straight into the log, then
    // waiting until the projection has applied it.
    h.revoke(&reader).await;
    let applied = std::time::Instant::now();
    let refused = until_status(&h, &reader, StatusCode::UNAUTHORIZED, ttl * 2).await;
    assert!(applied.elapsed() <= ttl + Duration::from_millis(300), "{:?}", applied.elapsed());
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "revoked-key", &reader.key_id.to_string());
}

#[tokio::test]
async fn the_cache_serves_a_key_until_its_ttl_which_is_why_the_ttl_is_short() {
    let h = cached_for(LONG_TTL).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let reader = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    assert_eq!(h.get(Some(&reader), "/v1/events").await.status, StatusCode::OK);
    h.revoke(&reader).await;
    // Cached: the read model is not asked again within the TTL.
    assert_eq!(h.get(Some(&reader), "/v1/events").await.status, StatusCode::OK);

    // Never a miss: a key unknown a moment ago works as soon as it exists.
    let unknown = Key { key_id: KeyId::new(), ..reader.clone() };
    let generated = keys::generate();
    let later = Key { secret: generated.secret.clone(), ..unknown };
    assert_eq!(h.get(Some(&later), "/v1/events").await.status, StatusCode::UNAUTHORIZED);
    h.append(vec![NewEvent::new(
        admin.tenant,
        StreamName::new(format!("key/{}", generated.key_id)).unwrap(),
        Event::KeyCreated(KeyCreated {
            key_id: generated.key_id,
            name: "later".into(),
            secret_hash: generated.secret_hash,
            scopes: vec![Scope::EventsRead],
            expires_at: None,
        }),
    )])
    .await;
    assert_eq!(h.get(Some(&later), "/v1/events").await.status, StatusCode::OK);
}

#[tokio::test]
async fn expiry_is_checked_on_every_request_from_a_cached_key() {
    let h = cached_for(LONG_TTL).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let expires_at = Utc::now() + chrono::Duration::milliseconds(1500);
    let brief = h.key(admin.tenant, &[Scope::EventsRead], Some(expires_at)).await;
    assert_eq!(h.get(Some(&brief), "/v1/events").await.status, StatusCode::OK);
    let expired = until_status(&h, &brief, StatusCode::UNAUTHORIZED, Duration::from_secs(5)).await;
    assert!(Utc::now() >= expires_at);
    assert_problem(&expired, StatusCode::UNAUTHORIZED, "expired-key", "expired");

    // A rolled secret's grace end, likewise.
    let old = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    assert_eq!(h.get(Some(&old), "/v1/events").await.status, StatusCode::OK);
    let uri = format!("/v1/keys/{}/roll", old.key_id);
    let rolled = call(&h, &admin, Method::POST, &uri, Some(json!({"grace_period_seconds": 1})));
    assert_eq!(rolled.await.status, StatusCode::OK);
    assert_eq!(h.get(Some(&old), "/v1/events").await.status, StatusCode::OK);
    let ended = until_status(&h, &old, StatusCode::UNAUTHORIZED, Duration::from_secs(5)).await;
    assert_problem(&ended, StatusCode::UNAUTHORIZED, "expired-key", "roll");
}
