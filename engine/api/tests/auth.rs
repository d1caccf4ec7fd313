//! Keys and tenants: 401s and 403s, tenant isolation, and failing closed
//! when the auth projection has failed.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use spool_api::keys;
use spool_log::{Append, NewEvent};
use spool_schemas::{Event, KeyCreated, KeyId, Scope, StreamName};
use tower::ServiceExt;

use support::*;

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
    // Revoked behind the API's back (as the CLI would): it holds once the
    // auth cache's entry for the key is over.
    tokio::time::sleep(spool_api::ApiOptions::default().auth_cache_ttl).await;
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
