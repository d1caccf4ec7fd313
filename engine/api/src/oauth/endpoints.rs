//! `POST /oauth/token` (RFC 6749 §4.4), `POST /oauth/introspect` (RFC 7662),
//! `POST /oauth/revoke` (RFC 7009) and `GET /.well-known/jwks.json`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use spool_log::{Append, NewEvent};
use spool_projections::oauth::ClientRecord;
use spool_schemas::{Event, OAuthTokenRevoked, Scope, StreamName, TenantId, TokenId};
use utoipa::ToSchema;
use utoipa::openapi::security::{
    ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes, SecurityScheme,
};

use super::client_auth;
use super::error::{EndpointError, ErrorCode, OAuthError, OAuthErrorBody, no_store};
use super::form::Form;
use super::signing::Signer;
use super::token::{self, AccessClaims};
use crate::problem::{Problem, ProblemBody};
use crate::{AppState, Caller, Shared};

/// The state of the token endpoints: the app's, and this instance's keys.
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) state: Shared,
    pub(crate) signer: Signer,
}

/// A token request (RFC 6749 §4.4.2), form encoded.
#[derive(ToSchema)]
#[schema(example = json!({"grant_type": "client_credentials", "scope": "events:read"}))]
#[allow(dead_code)]
pub struct TokenRequest {
    /// Always `client_credentials`.
    pub grant_type: String,
    /// Space-separated scopes, a subset of the client's; absent: all of them.
    pub scope: Option<String>,
    /// With `client_secret`, instead of HTTP Basic.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// A token (RFC 6749 §5.1).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImtpZF8wMTkzLi4uIn0.eyJpc3MiOi4uLn0.c2lnbmF0dXJl",
    "token_type": "Bearer",
    "expires_in": 3600,
    "scope": "events:read"
}))]
pub struct TokenResponse {
    /// A JWT (RFC 9068); send it as `Authorization: Bearer <token>`.
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The scopes granted, space separated.
    pub scope: String,
}

/// Get an access token.
///
/// The client credentials grant: the client authenticates with HTTP Basic
/// (`client_id:client_secret`, each form encoded) or with `client_id` and
/// `client_secret` in the body, never both. `scope` narrows the token to
/// some of the client's scopes. There is no refresh token: ask again.
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The token; never cached (`Cache-Control: no-store`)", body = TokenResponse),
        (status = 400, description = "`invalid_request`, `invalid_scope` or `unsupported_grant_type`", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`: unknown or deleted client, wrong secret, or no client authentication", body = OAuthErrorBody,
            example = json!({"error": "invalid_client", "error_description": "client authentication failed"})),
        (status = 503, description = "A new signing key is not yet visible, or storage is unavailable", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("client_basic" = []), ()),
)]
pub(crate) async fn token(
    State(endpoints): State<Endpoints>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, EndpointError> {
    let form = Form::parse(&headers, body)?;
    let presented = client_auth::presented(&headers, &form)?.ok_or_else(client_auth::missing)?;
    let client = client_auth::authenticate(&endpoints.state, &presented).await?;
    let grant_type = form.require("grant_type")?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            "this server grants `client_credentials` only",
        )
        .into());
    }
    let scopes = granted_scopes(&client, form.get("scope"))?;
    let options = &endpoints.state.options.oauth;
    let lifetime = options.token_lifetime.as_secs();
    let now = Utc::now();
    let iat = now.timestamp();
    let scope = scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" ");
    let claims = AccessClaims {
        iss: super::issuer(&endpoints.state).to_owned(),
        aud: options.audience.clone(),
        sub: client.client_id,
        client_id: client.client_id,
        iat,
        exp: iat.saturating_add_unsigned(lifetime),
        jti: TokenId::new(),
        scope: scope.clone(),
        tenant: client.tenant,
    };
    let access_token = endpoints.signer.sign(&claims, now).await?;
    let body = TokenResponse { access_token, token_type: "Bearer", expires_in: lifetime, scope };
    let mut response = Json(body).into_response();
    no_store(&mut response);
    Ok(response)
}

/// The scopes `requested` (space separated), each one the client holds
/// (`admin` holds them all); all of the client's when none are asked for.
fn granted_scopes(
    client: &ClientRecord,
    requested: Option<&str>,
) -> Result<Vec<Scope>, OAuthError> {
    let mut scopes = Vec::new();
    for name in requested.unwrap_or_default().split(' ').filter(|name| !name.is_empty()) {
        let scope: Scope = name.parse().map_err(|_| {
            OAuthError::new(ErrorCode::InvalidScope, format!("`{name}` is not a scope of Spool"))
        })?;
        if !(client.scopes.contains(&scope) || client.scopes.contains(&Scope::Admin)) {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!("the client may not ask for `{scope}`"),
            ));
        }
        scopes.push(scope);
    }
    if scopes.is_empty() {
        scopes = client.scopes.clone();
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// A token to introspect or revoke (RFC 7662 §2.1, RFC 7009 §2.1).
#[derive(ToSchema)]
#[schema(example = json!({"token": "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCJ9.eyJpc3MiOi4uLn0.c2ln"}))]
#[allow(dead_code)]
pub struct TokenParameter {
    pub token: String,
    /// Accepted and ignored: access tokens are the only kind there is.
    pub token_type_hint: Option<String>,
    /// With `client_secret`, instead of HTTP Basic.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// What introspection says of a token. Inactive: exactly `{"active": false}`.
#[derive(Serialize, ToSchema, Default)]
#[schema(example = json!({
    "active": true, "scope": "events:read", "client_id": "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071",
    "sub": "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071", "exp": 1767229200, "iat": 1767225600,
    "iss": "https://spool.example.com", "aud": "spool-api",
    "jti": "tok_0193a0c1d27e7a3a9f1b2c3d4e5f6072", "token_type": "Bearer"
}))]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
}

impl Introspection {
    fn active(claims: AccessClaims) -> Introspection {
        Introspection {
            active: true,
            scope: Some(claims.scope),
            client_id: Some(claims.client_id.to_string()),
            sub: Some(claims.sub.to_string()),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            jti: Some(claims.jti.to_string()),
            token_type: Some("Bearer"),
        }
    }
}

/// Introspect a token.
///
/// The caller authenticates as a client (HTTP Basic or form body) or with
/// a bearer API key (or token) holding `admin`. A token that is unknown,
/// malformed, expired, revoked, of a deleted client or of another tenant
/// than the caller's answers exactly `{"active": false}`.
#[utoipa::path(
    post,
    path = "/oauth/introspect",
    tag = "oauth",
    request_body(content = TokenParameter, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Whether the token is active, and its claims if so", body = Introspection),
        (status = 400, description = "`invalid_request`: no `token`, or a malformed body", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`, or (problem+json) a bearer key that does not authenticate", body = OAuthErrorBody),
        (status = 403, description = "The bearer key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("client_basic" = []), ("api_key" = ["admin"]), ("oauth2" = ["admin"]), ()),
)]
pub(crate) async fn introspect(
    State(endpoints): State<Endpoints>,
    mut parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, EndpointError> {
    let state = &endpoints.state;
    let form = Form::parse(&parts.headers, body)?;
    let tenant = match client_auth::presented(&parts.headers, &form)? {
        Some(presented) => client_auth::authenticate(state, &presented).await?.tenant,
        None if has_bearer(&parts.headers) => {
            let caller = Caller::from_request_parts(&mut parts, state).await?;
            caller.require(Scope::Admin)?;
            caller.tenant
        }
        None => return Err(client_auth::missing().into()),
    };
    let token = form.require("token")?;
    let introspection = match token::verify(state, token, Utc::now()).await? {
        Ok(verified) if verified.claims.tenant == tenant => Introspection::active(verified.claims),
        _ => Introspection::default(),
    };
    let mut response = Json(introspection).into_response();
    no_store(&mut response);
    Ok(response)
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

/// Revoke a token.
///
/// The token's own client authenticates (HTTP Basic or form body). The
/// answer is `200` whatever the token was (unknown, malformed, expired,
/// already revoked, or another client's, which is left alone), so it
/// tells nothing about tokens the caller does not hold. A revoked token is
/// refused on every instance from the moment this answers.
///
/// A deliberate deviation from RFC 7009 §2.1, which refuses a token issued
/// to another client: a refusal would tell a client that the token it
/// holds is live and someone else's (of another tenant, perhaps), where
/// introspection tells it only `{"active": false}`. The token is left
/// alone either way.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    operation_id = "revoke_token",
    tag = "oauth",
    request_body(content = TokenParameter, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke"),
        (status = 400, description = "`invalid_request`: no `token`, or a malformed body", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`", body = OAuthErrorBody),
    ),
    security(("client_basic" = []), ()),
)]
pub(crate) async fn revoke(
    State(endpoints): State<Endpoints>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, EndpointError> {
    let state = &endpoints.state;
    let form = Form::parse(&headers, body)?;
    let presented = client_auth::presented(&headers, &form)?.ok_or_else(client_auth::missing)?;
    let client = client_auth::authenticate(state, &presented).await?;
    let token = form.require("token")?;
    if let Ok(verified) = token::verify(state, token, Utc::now()).await?
        && verified.claims.client_id == client.client_id
    {
        append_revocation(state, client.tenant, &verified.claims).await?;
    }
    let mut response = ().into_response();
    no_store(&mut response);
    Ok(response)
}

/// Appends `oauth.token_revoked` (the token's id and expiry, never its
/// text) and waits until the read model has it, so that the token is
/// refused from the moment revocation answers.
async fn append_revocation(
    state: &AppState,
    tenant: TenantId,
    claims: &AccessClaims,
) -> Result<(), Problem> {
    let jti = claims.jti;
    let exp = DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now);
    let stream = StreamName::new(format!("oauth/{}", claims.client_id))
        .expect("a client id is a valid stream name");
    let event =
        NewEvent::new(tenant, stream, Event::OAuthTokenRevoked(OAuthTokenRevoked { jti, exp }));
    let appended = state.log.append(Append::new(vec![event])).await?;
    let views = &state.views;
    let wait = state.options.oauth.visible_wait;
    let seen = super::until_applied(state, &appended, wait, || async move {
        spool_projections::oauth::token_revoked(views, jti).await
    })
    .await?;
    state.auth_cache.invalidate_token(jti);
    if !seen {
        tracing::warn!(%jti, "a token revocation is stored but not yet in the oauth read model");
    }
    Ok(())
}

/// A JSON Web Key Set (RFC 7517 §5).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
    "kid": "kid_0193a0c1d27e7a3a9f1b2c3d4e5f6073", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}))]
pub struct JwkSet {
    pub keys: Vec<JwkView>,
}

/// One public signing key.
#[derive(Serialize, ToSchema)]
pub struct JwkView {
    pub kty: String,
    pub crv: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: &'static str,
    pub kid: String,
    pub x: String,
}

/// The public keys that verify access tokens.
///
/// Every key any instance has published whose tokens may still be valid;
/// a rotated key stays until the last token it signed has expired. A
/// verifier that meets an unknown `kid` should fetch this again: a new key
/// signs as soon as it is published.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "oauth",
    responses((status = 200, description = "The key set", body = JwkSet)),
)]
pub(crate) async fn jwks(State(state): State<Shared>) -> Result<Response, Problem> {
    let keys = spool_projections::oauth::signing_keys(&state.views, Utc::now()).await?;
    let keys = keys
        .into_iter()
        .map(|key| JwkView {
            kty: key.jwk.kty,
            crv: key.jwk.crv,
            alg: key.jwk.alg,
            key_use: "sig",
            kid: key.kid.to_string(),
            x: key.jwk.x,
        })
        .collect();
    let mut response = Json(JwkSet { keys }).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    Ok(response)
}

/// The security schemes of the OAuth routes: `oauth2` (tokens from the
/// client credentials grant, usable wherever `api_key` is) and
/// `client_basic` (client authentication at the token endpoints).
pub(crate) struct OAuthSchemes;

impl utoipa::Modify for OAuthSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scopes = Scopes::from_iter(Scope::ALL.iter().map(|scope| {
            let description = match scope {
                Scope::Admin => "everything, including keys and clients",
                other => other.as_str(),
            };
            (scope.as_str(), description)
        }));
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::with_description(
                [Flow::ClientCredentials(ClientCredentials::new("/oauth/token", scopes))],
                "A JWT access token (RFC 9068) from `POST /oauth/token`, sent as \
                 `Authorization: Bearer <token>`.",
            )),
        );
        components.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "An OAuth client's `client_id:client_secret`, each form encoded. \
                         The form body's `client_id` and `client_secret` work too.",
                    ))
                    .build(),
            ),
        );
    }
}
