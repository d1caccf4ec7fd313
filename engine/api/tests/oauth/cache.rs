//! The auth cache with access tokens: a token found standing is trusted for
//! `ApiOptions::auth_cache_ttl`, yet this instance's revocations and client
//! deletions hold on the very next request, and one made behind its back
//! (straight into the log) within the TTL.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use spool_api::ApiOptions;
use spool_log::NewEvent;
use spool_schemas::{Event, OAuthTokenRevoked, Scope, StreamName, TokenId};

use super::support::{Harness, Key, harness_with};
use super::{Auth, bearer, create_client, decode_part, post_form, token};

async fn cached_for(ttl: Duration) -> Harness {
    harness_with(ApiOptions { auth_cache_ttl: ttl, ..ApiOptions::default() }, |log| log).await
}

/// Longer than any test: only an invalidation, or the clock, ends an entry.
const LONG_TTL: Duration = Duration::from_secs(600);

async fn status(h: &Harness, bearer: &Key) -> StatusCode {
    h.get(Some(bearer), "/v1/events").await.status
}

#[tokio::test]
async fn a_cached_token_revoked_or_whose_client_is_deleted_here_fails_on_the_next_request() {
    let h = cached_for(LONG_TTL).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;

    let revoked = token(&h, &client, None).await;
    let revoked_bearer = bearer(admin.tenant, &revoked);
    assert_eq!(status(&h, &revoked_bearer).await, StatusCode::OK);
    let answer = post_form(&h, "/oauth/revoke", Auth::Basic(&client), &[("token", &revoked)]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let refused = h.get(Some(&revoked_bearer), "/v1/events").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.json["detail"].as_str().unwrap().contains("revoked"), "{}", refused.json);

    let orphan = bearer(admin.tenant, &token(&h, &client, None).await);
    assert_eq!(status(&h, &orphan).await, StatusCode::OK);
    let uri = format!("/v1/oauth/clients/{}", client.id);
    let deleted = h
        .send(
            axum::http::Request::delete(&uri)
                .header("authorization", format!("Bearer {}", admin.secret))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.json);
    let refused = h.get(Some(&orphan), "/v1/events").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.json["detail"].as_str().unwrap().contains("deleted"), "{}", refused.json);
}

#[tokio::test]
async fn a_token_revoked_behind_the_cache_s_back_fails_within_the_ttl() {
    let ttl = ApiOptions::default().auth_cache_ttl;
    let h = cached_for(ttl).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let access_token = token(&h, &client, None).await;
    let held = bearer(admin.tenant, &access_token);
    assert_eq!(status(&h, &held).await, StatusCode::OK);

    let claims = decode_part(&access_token, 1);
    let jti: TokenId = claims["jti"].as_str().unwrap().parse().unwrap();
    h.append(vec![NewEvent::new(
        admin.tenant,
        StreamName::new(format!("oauth/{}", client.id)).unwrap(),
        Event::OAuthTokenRevoked(OAuthTokenRevoked {
            jti,
            exp: Utc::now() + chrono::Duration::hours(1),
        }),
    )])
    .await;
    let applied = Instant::now();
    while status(&h, &held).await != StatusCode::UNAUTHORIZED {
        assert!(applied.elapsed() < ttl * 2, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied.elapsed() <= ttl + Duration::from_millis(300), "{:?}", applied.elapsed());
}
