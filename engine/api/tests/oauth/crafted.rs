//! Crafted access tokens: each flaw a forged or stale token can have is
//! refused, through the real router, with a problem naming it.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use spool_log::NewEvent;
use spool_schemas::{
    Event, OAuthSigningKeyPublished, OAuthTokenRevoked, PublicJwk, Scope, SigningKeyId, StreamName,
    TenantId, TokenId,
};

use crate::support::{Harness, harness};
use crate::{Auth, ISSUER, bearer, create_client, post_form};

/// A signing key the test holds, published as an instance would.
struct TestKey {
    kid: SigningKeyId,
    private: EncodingKey,
    public_x: String,
}

impl TestKey {
    fn new() -> TestKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        TestKey {
            kid: SigningKeyId::new(),
            private: EncodingKey::from_ed_der(pair.to_pkcs8().unwrap().as_ref()),
            public_x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }
    }

    async fn publish(&self, h: &Harness) {
        let now = Utc::now();
        self.publish_as(h, TenantId::SYSTEM, now + Duration::hours(1), now + Duration::hours(2))
            .await;
    }

    /// Published by `tenant`, signing until `signs_until` and verifying
    /// until `verify_until`.
    async fn publish_as(
        &self,
        h: &Harness,
        tenant: TenantId,
        signs_until: DateTime<Utc>,
        verify_until: DateTime<Utc>,
    ) {
        let published = OAuthSigningKeyPublished {
            kid: self.kid,
            jwk: PublicJwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                alg: "EdDSA".into(),
                x: self.public_x.clone(),
            },
            signs_until,
            verify_until,
        };
        let stream = StreamName::new(format!("oauth/{}", self.kid)).unwrap();
        h.append(vec![NewEvent::new(tenant, stream, Event::OAuthSigningKeyPublished(published))])
            .await;
    }

    fn sign(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.private).unwrap()
    }
}

fn header_for(kid: SigningKeyId) -> Header {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.to_string());
    header
}

#[tokio::test]
async fn crafted_tokens_are_refused_for_every_flaw() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let key = TestKey::new();
    key.publish(&h).await;
    let now = Utc::now().timestamp();
    let jti = TokenId::new();
    let claims = json!({
        "iss": ISSUER, "aud": "spool-api", "sub": client.id, "client_id": client.id,
        "iat": now, "exp": now + 600, "jti": jti, "scope": "events:read", "tenant": admin.tenant,
    });
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims.clone();
        change(&mut claims);
        claims
    };
    let read = |token: String| {
        let h = &h;
        let caller = bearer(admin.tenant, &token);
        async move { h.get(Some(&caller), "/v1/events").await }
    };

    // The baseline verifies, so each refusal below is the flaw's alone.
    let introspect = |token: &str| {
        let (h, token, admin_key) = (&h, token.to_owned(), admin.secret.clone());
        async move {
            post_form(h, "/oauth/introspect", Auth::Bearer(&admin_key), &[("token", &token)]).await
        }
    };
    let baseline = key.sign(header_for(key.kid), &claims);
    assert_eq!(introspect(&baseline).await.json["active"], true);
    let accepted = read(baseline).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.json);

    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let encode_header = |header: Value| URL_SAFE_NO_PAD.encode(header.to_string());
    let unsigned = format!(
        "{}.{body}.",
        encode_header(json!({"alg": "none", "typ": "at+jwt", "kid": key.kid}))
    );
    let hmac_with_public_key = jsonwebtoken::encode(
        &{
            let mut header = Header::new(Algorithm::HS256);
            header.typ = Some("at+jwt".into());
            header.kid = Some(key.kid.to_string());
            header
        },
        &claims,
        &EncodingKey::from_secret(key.public_x.as_bytes()),
    )
    .unwrap();
    let wrong_type = {
        let mut header = header_for(key.kid);
        header.typ = Some("JWT".into());
        key.sign(header, &claims)
    };
    let no_type = {
        let mut header = header_for(key.kid);
        header.typ = None;
        key.sign(header, &claims)
    };
    let unpublished = TestKey::new();
    let unknown_kid = unpublished.sign(header_for(unpublished.kid), &claims);
    let forged = unpublished.sign(header_for(key.kid), &claims);
    let tampered = {
        let token = key.sign(header_for(key.kid), &claims);
        let parts: Vec<&str> = token.split('.').collect();
        let more = with(&|claims| claims["scope"] = json!("admin"));
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(more.to_string()), parts[2])
    };
    let cases = [
        ("alg none", unsigned, "EdDSA"),
        ("HS256 keyed with the public key", hmac_with_public_key, "EdDSA"),
        ("typ JWT", wrong_type, "`typ`"),
        ("no typ", no_type, "`typ`"),
        ("unknown kid", unknown_kid, "`kid`"),
        ("signed by another key", forged, "signature"),
        ("claims changed after signing", tampered, "signature"),
        (
            "wrong iss",
            key.sign(header_for(key.kid), &with(&|c| c["iss"] = json!("https://evil.example"))),
            "`iss`",
        ),
        (
            "wrong aud",
            key.sign(header_for(key.kid), &with(&|c| c["aud"] = json!("another-api"))),
            "`aud`",
        ),
        (
            "expired",
            key.sign(header_for(key.kid), &with(&|c| c["exp"] = json!(now - 1))),
            "expired",
        ),
        (
            "expiring now",
            key.sign(header_for(key.kid), &with(&|c| c["exp"] = json!(now))),
            "expired",
        ),
        (
            "no exp",
            key.sign(
                header_for(key.kid),
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "well-formed",
        ),
        (
            "unknown client",
            key.sign(
                header_for(key.kid),
                &with(&|c| {
                    c["sub"] = json!("client_0193a0c1d27e7a3a9f1b2c3d4e5f6071");
                    c["client_id"] = c["sub"].clone();
                }),
            ),
            "deleted",
        ),
        (
            "another tenant",
            key.sign(header_for(key.kid), &with(&|c| c["tenant"] = json!(TenantId::new()))),
            "deleted",
        ),
        (
            "unknown scope",
            key.sign(header_for(key.kid), &with(&|c| c["scope"] = json!("events:read everything"))),
            "well-formed",
        ),
    ];
    for (flaw, token, named) in cases {
        let introspected = introspect(&token).await;
        assert_eq!(introspected.json, json!({"active": false}), "{flaw}");
        let response = read(token).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{flaw}: {}", response.json);
        let expected_type = if named == "expired" { "expired-token" } else { "invalid-token" };
        assert_eq!(
            response.problem_type(),
            format!("https://spool.dev/problems/{expected_type}"),
            "{flaw}"
        );
        assert!(
            response.json["detail"].as_str().unwrap().contains(named),
            "{flaw}: {}",
            response.json
        );
    }

    // A revoked jti, on a token that is otherwise fine.
    let revoked = key.sign(header_for(key.kid), &claims);
    let stream = StreamName::new(format!("oauth/{}", client.id)).unwrap();
    let revocation = OAuthTokenRevoked { jti, exp: Utc::now() + chrono::Duration::minutes(10) };
    h.append(vec![NewEvent::new(admin.tenant, stream, Event::OAuthTokenRevoked(revocation))]).await;
    // Appended behind the API's back: it holds once the auth cache's entry
    // for this `jti` (from the checks above) is over.
    tokio::time::sleep(spool_api::ApiOptions::default().auth_cache_ttl).await;
    assert_eq!(introspect(&revoked).await.json, json!({"active": false}));
    let response = read(revoked).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(response.json["detail"].as_str().unwrap().contains("revoked"), "{}", response.json);
}

/// Regression: verification ignored a key's `signs_until` and
/// `verify_until`, and the read model took signing keys from any tenant's
/// events. A token is now refused when issued after its key stopped
/// signing or presented after the key stopped verifying, and a key only
/// counts when Spool (the system tenant) published it.
#[tokio::test]
async fn tokens_are_refused_outside_their_key_s_windows_and_keys_only_come_from_spool() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let now = Utc::now();
    let claims = |iat: DateTime<Utc>| {
        json!({
            "iss": ISSUER, "aud": "spool-api", "sub": client.id, "client_id": client.id,
            "iat": iat.timestamp(), "exp": (now + Duration::minutes(10)).timestamp(),
            "jti": TokenId::new(), "scope": "events:read", "tenant": admin.tenant,
        })
    };
    let read = |token: String| {
        let caller = bearer(admin.tenant, &token);
        let h = &h;
        async move { h.get(Some(&caller), "/v1/events").await }
    };
    let refused = |response: crate::support::Response, named: &str| {
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{named}: {}", response.json);
        assert_eq!(response.problem_type(), "https://spool.dev/problems/invalid-token");
        let detail = response.json["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(named), "{detail:?} does not name {named:?}");
    };

    // Stopped signing an hour ago, still verifying: what it signed before
    // then works, a token issued since was not made by Spool.
    let retiring = TestKey::new();
    let signs_until = now - Duration::hours(1);
    retiring.publish_as(&h, TenantId::SYSTEM, signs_until, now + Duration::hours(1)).await;
    let in_time = retiring.sign(header_for(retiring.kid), &claims(signs_until));
    assert_eq!(read(in_time).await.status, StatusCode::OK);
    let late = retiring.sign(header_for(retiring.kid), &claims(now));
    refused(read(late).await, "stopped signing");

    // No longer verifying at all, though the token has not expired.
    let retired = TestKey::new();
    retired
        .publish_as(&h, TenantId::SYSTEM, now - Duration::hours(2), now - Duration::seconds(1))
        .await;
    let token = retired.sign(header_for(retired.kid), &claims(now - Duration::hours(3)));
    refused(read(token).await, "no longer verifies");

    // Published by a tenant, or by its sandbox twin: not a key of Spool's.
    for tenant in [admin.tenant, admin.tenant.test_twin()] {
        let foreign = TestKey::new();
        foreign.publish_as(&h, tenant, now + Duration::hours(1), now + Duration::hours(2)).await;
        let token = foreign.sign(header_for(foreign.kid), &claims(now));
        refused(read(token).await, "`kid`");
        let jwks = h.get(None, "/.well-known/jwks.json").await.json;
        assert!(!jwks.to_string().contains(&foreign.kid.to_string()), "{jwks}");
    }
}
