//! OAuth 2.0 client credentials through the real router: clients, the token
//! endpoint (RFC 6749 §4.4), JWT access tokens (RFC 9068) used on `/v1`,
//! introspection (RFC 7662), revocation (RFC 7009), the JWKS, key rotation,
//! and (in `crafted`) every way a crafted token must be refused.

#[path = "../support/mod.rs"]
mod support;

mod cache;
mod crafted;
mod rotation;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use spool_api::{ApiOptions, OAuthOptions, keys};
use spool_log::NewEvent;
use spool_schemas::{Event, KeyCreated, KeyId, Scope, StreamName, TenantId};
use support::{
    Harness, Key, Response, harness, harness_with, postgres_harness, read_sse, read_to_end,
};
use tower::ServiceExt;

/// The issuer of the harness's tokens: the default public URL.
const ISSUER: &str = spool_api::DEFAULT_PUBLIC_URL;
const FORM: &str = "application/x-www-form-urlencoded";

/// Form fields of a request, by name.
type Fields<'a> = &'a [(&'a str, &'a str)];

/// A client as its owner holds it after creating it.
struct Client {
    id: String,
    secret: String,
}

async fn create_client(h: &Harness, admin: &Key, scopes: &[&str]) -> Client {
    let response = send_json(
        h,
        admin,
        Method::POST,
        "/v1/oauth/clients",
        Some(json!({"name": "sync", "scopes": scopes})),
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.json);
    // The answer holds the client's secret: no cache may keep it.
    assert_eq!(response.headers[header::CACHE_CONTROL], "no-store");
    Client {
        id: response.json["id"].as_str().unwrap().to_owned(),
        secret: response.json["client_secret"].as_str().unwrap().to_owned(),
    }
}

async fn send_json(
    h: &Harness,
    key: &Key,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> Response {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
        .header(header::CONTENT_TYPE, "application/json");
    let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
    h.send(request.body(body).unwrap()).await
}

/// How a request authenticates its client at the token endpoints.
enum Auth<'a> {
    Basic(&'a Client),
    Form(&'a Client),
    Bearer(&'a str),
    None,
}

async fn post_form(h: &Harness, uri: &str, auth: Auth<'_>, fields: &[(&str, &str)]) -> Response {
    let mut form = form_urlencoded::Serializer::new(String::new());
    let mut request =
        Request::builder().method(Method::POST).uri(uri).header(header::CONTENT_TYPE, FORM);
    match auth {
        Auth::Basic(client) => {
            let credentials = STANDARD.encode(format!("{}:{}", client.id, client.secret));
            request = request.header(header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        Auth::Form(client) => {
            form.append_pair("client_id", &client.id);
            form.append_pair("client_secret", &client.secret);
        }
        Auth::Bearer(secret) => {
            request = request.header(header::AUTHORIZATION, format!("Bearer {secret}"));
        }
        Auth::None => {}
    }
    for (name, value) in fields {
        form.append_pair(name, value);
    }
    h.send(request.body(Body::from(form.finish())).unwrap()).await
}

async fn token(h: &Harness, client: &Client, scope: Option<&str>) -> String {
    let mut fields = vec![("grant_type", "client_credentials")];
    fields.extend(scope.map(|scope| ("scope", scope)));
    let response = post_form(h, "/oauth/token", Auth::Basic(client), &fields).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    response.json["access_token"].as_str().unwrap().to_owned()
}

/// A token held as a bearer credential, to reuse the harness's helpers.
fn bearer(tenant: TenantId, token: &str) -> Key {
    Key { tenant, key_id: KeyId::new(), secret: token.to_owned() }
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_client_gets_tokens_uses_them_and_loses_them_when_revoked() {
    client_lifecycle(&harness().await).await;
}

#[tokio::test]
async fn the_client_lifecycle_holds_with_the_read_models_in_postgresql() {
    client_lifecycle(&postgres_harness(ApiOptions::default(), |log| log).await).await;
}

/// A client created, tokens got by both kinds of client authentication and
/// used, narrowed, introspected, revoked and then refused.
async fn client_lifecycle(h: &Harness) {
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(h, &admin, &["events:read", "events:write"]).await;
    assert!(client.secret.starts_with("spcs_"), "{}", client.secret);

    // HTTP Basic.
    let response =
        post_form(h, "/oauth/token", Auth::Basic(&client), &[("grant_type", "client_credentials")])
            .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    assert_eq!(response.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(response.headers[header::PRAGMA], "no-cache");
    assert_eq!(response.json["token_type"], "Bearer");
    assert_eq!(response.json["expires_in"], 3600);
    assert_eq!(response.json["scope"], "events:read events:write");
    assert!(response.json.get("refresh_token").is_none(), "{}", response.json);
    let access_token = response.json["access_token"].as_str().unwrap().to_owned();
    let header = decode_part(&access_token, 0);
    assert_eq!((header["alg"].as_str(), header["typ"].as_str()), (Some("EdDSA"), Some("at+jwt")));
    assert!(header["kid"].as_str().unwrap().starts_with("kid_"), "{header}");
    let claims = decode_part(&access_token, 1);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "spool-api");
    assert_eq!(claims["sub"], client.id.as_str());
    assert_eq!(claims["client_id"], client.id.as_str());
    assert_eq!(claims["tenant"], admin.tenant.to_string());
    assert_eq!(claims["scope"], "events:read events:write");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    assert!(claims["jti"].as_str().unwrap().starts_with("tok_"), "{claims}");

    // Form-body client authentication, and the token at work on /v1.
    let response =
        post_form(h, "/oauth/token", Auth::Form(&client), &[("grant_type", "client_credentials")])
            .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    let caller = bearer(admin.tenant, &access_token);
    let posted = h.post_json(&caller, json!({"type": "order.created", "data": {"n": 1}})).await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.json);
    let listed = h.get(Some(&caller), "/v1/events").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json);
    assert_eq!(listed.json["events"][0]["type"], "order.created");

    // Narrowed to `events:write`, it may not read.
    let write_only = token(h, &client, Some("events:write")).await;
    let refused = h.get(Some(&bearer(admin.tenant, &write_only)), "/v1/events").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/insufficient-scope");
    assert!(refused.json["detail"].as_str().unwrap().contains("`events:read`"), "{}", refused.json);

    let introspected =
        post_form(h, "/oauth/introspect", Auth::Basic(&client), &[("token", &access_token)]).await;
    assert_eq!(introspected.status, StatusCode::OK, "{}", introspected.json);
    assert_eq!(introspected.headers[header::CACHE_CONTROL], "no-store");
    let expected = json!({
        "active": true,
        "scope": "events:read events:write",
        "client_id": client.id,
        "sub": client.id,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "iss": ISSUER,
        "aud": "spool-api",
        "jti": claims["jti"],
        "token_type": "Bearer",
    });
    assert_eq!(introspected.json, expected);
    let by_admin_key =
        post_form(h, "/oauth/introspect", Auth::Bearer(&admin.secret), &[("token", &access_token)])
            .await;
    assert_eq!(by_admin_key.json, expected);

    let revoked = post_form(
        h,
        "/oauth/revoke",
        Auth::Form(&client),
        &[("token", &access_token), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.json);
    let refused = h.get(Some(&caller), "/v1/events").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.json);
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/invalid-token");
    assert!(refused.json["detail"].as_str().unwrap().contains("revoked"), "{}", refused.json);
    let introspected =
        post_form(h, "/oauth/introspect", Auth::Basic(&client), &[("token", &access_token)]).await;
    assert_eq!(introspected.json, json!({"active": false}));
    // The revocation names the token by id and expiry only.
    let revocation = h
        .read_all()
        .await
        .into_iter()
        .find(|event| event.type_name == "oauth.token_revoked")
        .expect("a revocation event");
    let data: Value = serde_json::from_str(&revocation.data).unwrap();
    assert_eq!(data, json!({"jti": claims["jti"], "exp": data["exp"]}));
    assert_eq!(revocation.tenant, admin.tenant);

    // Revoking an unknown or malformed token still answers 200.
    for garbage in ["not-a-token", "eyJhbGciOiJub25lIn0.e30."] {
        let response =
            post_form(h, "/oauth/revoke", Auth::Basic(&client), &[("token", garbage)]).await;
        assert_eq!(response.status, StatusCode::OK, "{garbage}: {}", response.json);
    }
}

#[tokio::test]
async fn client_routes_need_admin_and_stay_inside_their_tenant() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let reader = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let other_admin = h.tenant(&[Scope::Admin]).await;

    let refused = send_json(
        &h,
        &reader,
        Method::POST,
        "/v1/oauth/clients",
        Some(json!({"name": "x", "scopes": ["events:read"]})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert!(refused.json["detail"].as_str().unwrap().contains("`admin`"), "{}", refused.json);
    let refused = h.get(Some(&reader), "/v1/oauth/clients").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let client = create_client(&h, &admin, &["usage:read", "events:read", "usage:read"]).await;
    let listed = h.get(Some(&admin), "/v1/oauth/clients").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json);
    let clients = listed.json["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["id"], client.id.as_str());
    assert_eq!(clients[0]["scopes"], json!(["events:read", "usage:read"]));
    assert_eq!(clients[0]["livemode"], true);
    assert!(!listed.json.to_string().contains("secret"), "{}", listed.json);
    let one = h.get(Some(&admin), &format!("/v1/oauth/clients/{}", client.id)).await;
    assert_eq!(one.json["name"], "sync");

    // Another tenant sees nothing and can delete nothing: 404 as if absent.
    assert_eq!(h.get(Some(&other_admin), "/v1/oauth/clients").await.json, json!({"clients": []}));
    let path = format!("/v1/oauth/clients/{}", client.id);
    for method in [Method::GET, Method::DELETE] {
        let response = send_json(&h, &other_admin, method.clone(), &path, None).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{method}: {}", response.json);
        let missing = send_json(
            &h,
            &admin,
            method.clone(),
            "/v1/oauth/clients/client_0193a0c1d27e7a3a9f1b2c3d4e5f6071",
            None,
        )
        .await;
        assert_eq!((missing.status, &missing.json), (response.status, &response.json));
    }

    // Deleting the client ends its tokens and its credentials.
    let access_token = token(&h, &client, None).await;
    let caller = bearer(admin.tenant, &access_token);
    assert_eq!(h.get(Some(&caller), "/v1/events").await.status, StatusCode::OK);
    let deleted = send_json(&h, &admin, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.json);
    let refused = h.get(Some(&caller), "/v1/events").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.json["detail"].as_str().unwrap().contains("client was deleted"),
        "{}",
        refused.json
    );
    let response = post_form(
        &h,
        "/oauth/token",
        Auth::Basic(&client),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.json["error"], "invalid_client");
    assert_eq!(h.get(Some(&admin), &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send_json(&h, &admin, Method::DELETE, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.get(Some(&admin), "/v1/oauth/clients").await.json, json!({"clients": []}));
}

#[tokio::test]
async fn bad_client_definitions_are_refused_naming_what_is_wrong_and_store_nothing() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let before = h.non_api_call_events().await.len();
    let cases = [
        (
            json!({"name": "", "scopes": ["events:read"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`name`",
        ),
        (
            json!({"name": "x".repeat(201), "scopes": ["events:read"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`name`",
        ),
        (json!({"name": "x", "scopes": []}), StatusCode::UNPROCESSABLE_ENTITY, "`scopes`"),
        (
            json!({"name": "x", "scopes": ["events:read", "events:delete"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`events:delete`",
        ),
        (json!({"name": "x"}), StatusCode::UNPROCESSABLE_ENTITY, "scopes"),
        (
            json!({"name": "x", "scopes": ["admin"], "secret": "mine"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret",
        ),
    ];
    for (body, status, named) in cases {
        let response =
            send_json(&h, &admin, Method::POST, "/v1/oauth/clients", Some(body.clone())).await;
        assert_eq!(response.status, status, "{body}: {}", response.json);
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(
            response.json["detail"].as_str().unwrap().contains(named),
            "{body}: {}",
            response.json
        );
    }
    let malformed = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/oauth/clients")
                .header(header::AUTHORIZATION, format!("Bearer {}", admin.secret))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"name\":"))
                .unwrap(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.problem_type(), "https://spool.dev/problems/malformed-json");
    assert_eq!(h.non_api_call_events().await.len(), before, "nothing was stored");
}

#[tokio::test]
async fn the_token_endpoint_answers_rfc_6749_errors() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read", "usage:read"]).await;
    let grant = [("grant_type", "client_credentials")];

    let wrong_secret = Client { id: client.id.clone(), secret: format!("{}x", client.secret) };
    let unknown = Client {
        id: "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071".into(),
        secret: client.secret.clone(),
    };
    for bad in [&wrong_secret, &unknown] {
        let basic = post_form(&h, "/oauth/token", Auth::Basic(bad), &grant).await;
        assert_eq!(basic.status, StatusCode::UNAUTHORIZED, "{}", basic.json);
        assert_eq!(basic.json["error"], "invalid_client");
        assert!(basic.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic"));
        assert_eq!(basic.headers[header::CACHE_CONTROL], "no-store");
        let form = post_form(&h, "/oauth/token", Auth::Form(bad), &grant).await;
        assert_eq!(form.status, StatusCode::UNAUTHORIZED);
        assert_eq!(form.json["error"], "invalid_client");
        // The same answer for an unknown client and a wrong secret.
        assert_eq!(form.json["error_description"], "client authentication failed");
    }
    let none = post_form(&h, "/oauth/token", Auth::None, &grant).await;
    assert_eq!(
        (none.status, none.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );

    // Both methods at once.
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/oauth/token")
        .header(header::CONTENT_TYPE, FORM)
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(format!("{}:{}", client.id, client.secret))),
        );
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        client.id, client.secret
    );
    let both = h.send(request.body(Body::from(body)).unwrap()).await;
    assert_eq!(
        (both.status, both.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    // (form fields, error code, what the description names)
    let cases: [(Fields, &str, &str); 6] = [
        (&[], "invalid_request", "`grant_type`"),
        (&[("grant_type", "password")], "unsupported_grant_type", "client_credentials"),
        (
            &[("grant_type", "client_credentials"), ("scope", "events:read admin")],
            "invalid_scope",
            "`admin`",
        ),
        (
            &[("grant_type", "client_credentials"), ("scope", "events:write")],
            "invalid_scope",
            "`events:write`",
        ),
        (
            &[("grant_type", "client_credentials"), ("scope", "events:delete")],
            "invalid_scope",
            "`events:delete`",
        ),
        (
            &[("grant_type", "client_credentials"), ("grant_type", "client_credentials")],
            "invalid_request",
            "`grant_type`",
        ),
    ];
    for (fields, error, named) in cases {
        let response = post_form(&h, "/oauth/token", Auth::Basic(&client), fields).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{fields:?}: {}", response.json);
        assert_eq!(response.json["error"], error, "{fields:?}");
        assert!(
            response.json["error_description"].as_str().unwrap().contains(named),
            "{}",
            response.json
        );
    }

    // Scope narrowing: a subset, in any order, repeated names once.
    let narrowed = post_form(
        &h,
        "/oauth/token",
        Auth::Basic(&client),
        &[("grant_type", "client_credentials"), ("scope", "usage:read usage:read")],
    )
    .await;
    assert_eq!(narrowed.json["scope"], "usage:read");

    request = Request::builder()
        .method(Method::POST)
        .uri("/oauth/token")
        .header(header::CONTENT_TYPE, "application/json");
    let json_body =
        h.send(request.body(Body::from("{\"grant_type\":\"client_credentials\"}")).unwrap()).await;
    assert_eq!(
        (json_body.status, json_body.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let get = h.send(Request::builder().uri("/oauth/token").body(Body::empty()).unwrap()).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn another_tenants_token_introspects_inactive_and_reads_only_its_own_data() {
    let h = harness().await;
    let alice = h.tenant(&[Scope::Admin]).await;
    let bob = h.tenant(&[Scope::Admin]).await;
    let alice_client = create_client(&h, &alice, &["events:read", "events:write"]).await;
    let bob_client = create_client(&h, &bob, &["events:read"]).await;
    let alice_token = token(&h, &alice_client, None).await;
    h.post_json(&bob, json!({"type": "bob.secret"})).await;
    h.post_json(&alice, json!({"type": "alice.event"})).await;

    for auth in [Auth::Basic(&bob_client), Auth::Bearer(&bob.secret)] {
        let response = post_form(&h, "/oauth/introspect", auth, &[("token", &alice_token)]).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.json);
        assert_eq!(response.json, json!({"active": false}));
    }
    // Nor may Bob's client revoke it.
    post_form(&h, "/oauth/revoke", Auth::Basic(&bob_client), &[("token", &alice_token)]).await;
    let listed = h.get(Some(&bearer(alice.tenant, &alice_token)), "/v1/events").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json);
    let types: Vec<&str> = listed.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["alice.event"]);

    // Introspection needs a caller: none, or a key without `admin`, is refused.
    let anonymous =
        post_form(&h, "/oauth/introspect", Auth::None, &[("token", &alice_token)]).await;
    assert_eq!(
        (anonymous.status, anonymous.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let reader = h.key(alice.tenant, &[Scope::EventsRead], None).await;
    let weak = post_form(
        &h,
        "/oauth/introspect",
        Auth::Bearer(&reader.secret),
        &[("token", &alice_token)],
    )
    .await;
    assert_eq!(weak.status, StatusCode::FORBIDDEN, "{}", weak.json);
    let missing = post_form(&h, "/oauth/introspect", Auth::Basic(&alice_client), &[]).await;
    assert_eq!(
        (missing.status, missing.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    for garbage in ["", "garbage", "eyJhbGciOiJub25lIn0.e30."] {
        let response =
            post_form(&h, "/oauth/introspect", Auth::Basic(&alice_client), &[("token", garbage)])
                .await;
        if !garbage.is_empty() {
            assert_eq!(response.json, json!({"active": false}), "{garbage}");
        }
    }
}

#[tokio::test]
async fn the_jwks_serves_the_key_that_verifies_a_token() {
    let h = harness().await;
    assert_eq!(h.get(None, "/.well-known/jwks.json").await.json, json!({"keys": []}));
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let access_token = token(&h, &client, None).await;
    let kid = decode_part(&access_token, 0)["kid"].as_str().unwrap().to_owned();

    let jwks = h.get(None, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    let keys = jwks.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{}", jwks.json);
    let jwk = &keys[0];
    assert_eq!(jwk["kid"], kid.as_str());
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str(), jwk["use"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
    );
    assert_eq!(jwk.as_object().unwrap().len(), 6, "a public key only: {jwk}");

    // What an outside resource server would do with it.
    let public: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&["spool-api"]);
    let verified = jsonwebtoken::decode::<Value>(
        &access_token,
        &DecodingKey::from_jwk(&public).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(verified.claims["client_id"], client.id.as_str());
}

#[tokio::test]
async fn a_rotated_key_keeps_its_tokens_valid_until_they_expire() {
    let options = ApiOptions {
        oauth: OAuthOptions {
            key_rotation: Duration::from_millis(100),
            token_lifetime: Duration::from_secs(2),
            ..OAuthOptions::default()
        },
        ..ApiOptions::default()
    };
    let h = harness_with(options, |log| log).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let first = token(&h, &client, None).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = token(&h, &client, None).await;
    let kid = |token: &str| decode_part(token, 0)["kid"].as_str().unwrap().to_owned();
    assert_ne!(kid(&first), kid(&second), "the second token is signed by a new key");

    for token in [&first, &second] {
        let response = h.get(Some(&bearer(admin.tenant, token)), "/v1/events").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    }
    let jwks_kids = || async {
        let jwks = h.get(None, "/.well-known/jwks.json").await.json;
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    };
    let mut both = vec![kid(&first), kid(&second)];
    both.sort();
    assert_eq!(jwks_kids().await, both);

    // Once every token the first key signed has expired, it leaves the set.
    let first_exp = decode_part(&first, 1)["exp"].as_i64().unwrap();
    let key_done = first_exp + 1;
    while Utc::now().timestamp() <= key_done {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = h.get(Some(&bearer(admin.tenant, &first)), "/v1/events").await;
    assert_eq!(refused.problem_type(), "https://spool.dev/problems/expired-token");
    assert!(!jwks_kids().await.contains(&kid(&first)), "the first key is gone from the JWKS");
}

#[tokio::test]
async fn a_token_from_one_instance_verifies_on_another() {
    let h = harness().await;
    let other_instance = spool_api::router(h.state.clone());
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let from_first = token(&h, &client, None).await;

    let token_request = Request::builder()
        .method(Method::POST)
        .uri("/oauth/token")
        .header(header::CONTENT_TYPE, FORM)
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(format!("{}:{}", client.id, client.secret))),
        )
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    let response = other_instance.clone().oneshot(token_request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let from_second = serde_json::from_slice::<Value>(&bytes).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        decode_part(&from_first, 0)["kid"],
        decode_part(&from_second, 0)["kid"],
        "each instance has its own key"
    );

    let on_second = other_instance
        .clone()
        .oneshot(support::stream_request(&bearer(admin.tenant, &from_first), "/v1/events"))
        .await
        .unwrap();
    assert_eq!(on_second.status(), StatusCode::OK);
    let on_first = h.get(Some(&bearer(admin.tenant, &from_second)), "/v1/events").await;
    assert_eq!(on_first.status, StatusCode::OK, "{}", on_first.json);
}

#[tokio::test]
async fn an_event_stream_opened_with_a_token_ends_when_the_token_is_revoked() {
    let options =
        ApiOptions { sse_key_recheck: Duration::from_millis(100), ..ApiOptions::default() };
    let h = harness_with(options, |log| log).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let access_token = token(&h, &client, None).await;
    let caller = bearer(admin.tenant, &access_token);
    let response =
        h.app.clone().oneshot(support::stream_request(&caller, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    h.post_json(&admin, json!({"type": "order.created"})).await;
    read_sse(&mut body, |text| text.contains("event: order.created")).await;
    post_form(&h, "/oauth/revoke", Auth::Basic(&client), &[("token", &access_token)]).await;
    read_to_end(&mut body, Duration::from_secs(5)).await;
}

/// Regression: a stream opened with a token woke at the token's `exp`,
/// found it neither revoked nor of a deleted client, and spun on the read
/// model instead of ending. Rechecks are slowed down here, so that the
/// stream can only end by the token's expiry.
#[tokio::test]
async fn an_event_stream_opened_with_a_token_ends_when_the_token_expires() {
    let options = ApiOptions {
        sse_key_recheck: Duration::from_secs(60),
        oauth: OAuthOptions { token_lifetime: Duration::from_secs(2), ..OAuthOptions::default() },
        ..ApiOptions::default()
    };
    let h = harness_with(options, |log| log).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let access_token = token(&h, &client, None).await;
    let exp = decode_part(&access_token, 1)["exp"].as_i64().unwrap();
    let caller = bearer(admin.tenant, &access_token);
    let response =
        h.app.clone().oneshot(support::stream_request(&caller, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    h.post_json(&admin, json!({"type": "order.created"})).await;
    read_sse(&mut body, |text| text.contains("event: order.created")).await;
    read_to_end(&mut body, Duration::from_secs(5)).await;
    assert!(Utc::now().timestamp() >= exp, "the stream ended before the token expired");
}

#[tokio::test]
async fn a_test_mode_key_makes_test_mode_clients_whose_tokens_see_test_data() {
    let h = harness().await;
    let live_admin = h.tenant(&[Scope::Admin]).await;
    let sandbox = live_admin.tenant.test_twin();
    let generated = keys::generate_in(keys::Mode::Test);
    h.append(vec![NewEvent::new(
        sandbox,
        StreamName::new(format!("key/{}", generated.key_id)).unwrap(),
        Event::KeyCreated(KeyCreated {
            key_id: generated.key_id,
            name: "test".into(),
            secret_hash: generated.secret_hash.clone(),
            scopes: vec![Scope::Admin],
            expires_at: None,
        }),
    )])
    .await;
    let test_admin = Key { tenant: sandbox, key_id: generated.key_id, secret: generated.secret };

    let created = send_json(
        &h,
        &test_admin,
        Method::POST,
        "/v1/oauth/clients",
        Some(json!({"name": "t", "scopes": ["events:read"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert_eq!(created.json["livemode"], false);
    let client = Client {
        id: created.json["id"].as_str().unwrap().to_owned(),
        secret: created.json["client_secret"].as_str().unwrap().to_owned(),
    };
    assert_eq!(h.get(Some(&live_admin), "/v1/oauth/clients").await.json, json!({"clients": []}));
    let access_token = token(&h, &client, None).await;
    assert_eq!(decode_part(&access_token, 1)["tenant"], sandbox.to_string());

    h.post_json(&test_admin, json!({"type": "sandbox.event"})).await;
    h.post_json(&live_admin, json!({"type": "live.event"})).await;
    let listed = h.get(Some(&bearer(sandbox, &access_token)), "/v1/events").await;
    let types: Vec<&str> = listed.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["sandbox.event"]);
    let introspected = post_form(
        &h,
        "/oauth/introspect",
        Auth::Bearer(&live_admin.secret),
        &[("token", &access_token)],
    )
    .await;
    assert_eq!(introspected.json, json!({"active": false}), "a live key does not see test tokens");
}

#[tokio::test]
async fn no_secret_reaches_the_log_or_the_read_models_and_token_calls_are_recorded() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let access_token = token(&h, &client, None).await;
    post_form(&h, "/oauth/introspect", Auth::Basic(&client), &[("token", &access_token)]).await;
    post_form(&h, "/oauth/revoke", Auth::Basic(&client), &[("token", &access_token)]).await;
    let failed = post_form(
        &h,
        "/oauth/token",
        Auth::Form(&Client { id: client.id.clone(), secret: format!("{}x", client.secret) }),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert!(!failed.json.to_string().contains(&client.secret), "an error body names no secret");

    let calls = h.api_calls(5).await;
    let routes: Vec<&str> = calls.iter().map(|(_, call)| call.route.as_str()).collect();
    for route in ["/oauth/token", "/oauth/introspect", "/oauth/revoke"] {
        assert!(routes.contains(&route), "{route} recorded: {routes:?}");
    }

    let signature = access_token.rsplit('.').next().unwrap();
    let secrets = [client.secret.as_str(), access_token.as_str(), signature];
    for event in h.read_all().await {
        for secret in secrets {
            assert!(!event.data.contains(secret), "{} holds a secret", event.type_name);
        }
    }
    for table in ["oauth_clients", "oauth_signing_keys", "oauth_revoked_tokens"] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(h.state.views.pool())
            .await
            .unwrap();
        assert!(!rows.is_empty(), "{table} has rows");
        for row in rows {
            use sqlx::Row;
            for column in 0..row.len() {
                let text: Option<String> = row.try_get(column).ok();
                for secret in secrets {
                    assert!(
                        !text.as_deref().unwrap_or_default().contains(secret),
                        "{table} holds a secret"
                    );
                }
            }
        }
    }
    // The published key is a 32-byte public key, nothing more.
    let published = h
        .read_all()
        .await
        .into_iter()
        .find(|e| e.type_name == "oauth.signing_key_published")
        .unwrap();
    let data: Value = serde_json::from_str(&published.data).unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(data["jwk"]["x"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(data["jwk"].as_object().unwrap().len(), 4, "{data}");
}

#[tokio::test]
async fn the_openapi_document_describes_the_oauth_routes_and_their_security() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let paths = &document["paths"];
    for (path, method, security) in [
        ("/v1/oauth/clients", "post", json!([{"api_key": ["admin"]}, {"oauth2": ["admin"]}])),
        ("/v1/oauth/clients", "get", json!([{"api_key": ["admin"]}, {"oauth2": ["admin"]}])),
        ("/v1/oauth/clients/{id}", "get", json!([{"api_key": ["admin"]}, {"oauth2": ["admin"]}])),
        (
            "/v1/oauth/clients/{id}",
            "delete",
            json!([{"api_key": ["admin"]}, {"oauth2": ["admin"]}]),
        ),
        ("/oauth/token", "post", json!([{"client_basic": []}, {}])),
        ("/oauth/revoke", "post", json!([{"client_basic": []}, {}])),
    ] {
        let operation = &paths[path][method];
        assert_eq!(operation["security"], security, "{method} {path}");
        assert!(operation["responses"].as_object().unwrap().len() >= 3, "{method} {path}");
    }
    let token = &paths["/oauth/token"]["post"];
    assert!(token["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object());
    let body = &token["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/TokenResponse");
    let example = &document["components"]["schemas"]["TokenResponse"]["example"];
    assert_eq!(example["token_type"], "Bearer", "{example}");
    assert!(paths["/.well-known/jwks.json"]["get"].is_object());
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["oauth2"]["flows"]["clientCredentials"]["tokenUrl"], "/oauth/token");
    let scopes = schemes["oauth2"]["flows"]["clientCredentials"]["scopes"].as_object().unwrap();
    assert_eq!(scopes.len(), Scope::ALL.len());
    assert_eq!(schemes["client_basic"]["scheme"], "basic");
}
