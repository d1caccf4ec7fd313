//! OAuth 2.0 client credentials (RFC 6749 §4.4) with JWT access tokens
//! (RFC 9068), token introspection (RFC 7662) and revocation (RFC 7009).
//!
//! - *Clients* (`clients.rs`): `POST/GET/DELETE /v1/oauth/clients`, scope
//!   `admin`, the caller's tenant only (a test-mode key's clients live in
//!   its tenant's sandbox twin). The secret is shown once; only its SHA-256
//!   is stored, in `oauth.client_created`. `oauth.client_deleted` ends the
//!   client and every token it holds.
//! - *Tokens* (`endpoints.rs`): `POST /oauth/token` authenticates the client
//!   by HTTP Basic or by `client_id`/`client_secret` in the form body (one of
//!   them, never both), and answers a JWT signed with Ed25519 (`EdDSA`),
//!   header `typ: at+jwt`, claims `iss` (the public URL), `aud`, `sub` and
//!   `client_id` (the client), `iat`, `exp`, `jti`, `scope` and `tenant`. No
//!   refresh token: a client asks again. Errors are RFC 6749 §5.2 JSON.
//! - *Signing keys* (`signing.rs`): each instance makes its own Ed25519 key
//!   pair, kept in memory only, and appends the public half as
//!   `oauth.signing_key_published` (its JWK, until when it signs and until
//!   when it verifies). The `oauth` read model holds every published key,
//!   so a token from any instance verifies on every instance sharing the
//!   log; `/.well-known/jwks.json` serves the keys still needed. A key is
//!   made when the instance first signs, and replaced once it is older than
//!   [`OAuthOptions::key_rotation`]; a new key is visible in the read model
//!   before it signs anything, and an old one stays there until the last
//!   token it signed has expired, so rotation needs no downtime.
//! - *Verification* (`token.rs`): a bearer token shaped like a JWT is
//!   checked here instead of as an API key. It is refused for an `alg`
//!   other than `EdDSA` (`none` included), a `typ` other than `at+jwt`, an
//!   unknown `kid`, a bad signature, a wrong `iss` or `aud`, expiry, a
//!   revoked `jti` or a deleted client. Revocations and deletions are read
//!   from the read model on every request, so they hold on every instance.
//! - `POST /oauth/introspect` (a client of the tenant, or an `admin`
//!   bearer) and `POST /oauth/revoke` (the token's own client).
//!
//! Secrets (client secrets, tokens, private keys) are never logged, stored
//! or put in an error; client secrets are compared as SHA-256 digests in
//! constant time.

mod client_auth;
pub mod clients;
pub mod endpoints;
mod error;
mod form;
mod signing;
mod token;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::post;
use spool_projections::ProjectionState;
use spool_schemas::{ClientId, TokenId};

use crate::problem::{Problem, ProblemKind};
use crate::{AppState, record};

pub use error::OAuthErrorBody;
pub use token::looks_like_jwt;
pub(crate) use token::{authenticate, recheck};

/// The audience of every access token, unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "spool-api";
/// The largest body the token, introspection and revocation endpoints read.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// How tokens are issued and checked.
#[derive(Clone, Debug)]
pub struct OAuthOptions {
    /// The `aud` of the tokens this server issues and accepts.
    pub audience: String,
    /// How long an access token is valid (`expires_in`).
    pub token_lifetime: Duration,
    /// How long an instance signs with one key before it makes a new one.
    pub key_rotation: Duration,
    /// How long an append waits to become visible in the `oauth` read model
    /// (a new client, a revocation, a new signing key) before answering.
    pub visible_wait: Duration,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        OAuthOptions {
            audience: DEFAULT_AUDIENCE.to_owned(),
            token_lifetime: Duration::from_secs(60 * 60),
            key_rotation: Duration::from_secs(24 * 60 * 60),
            visible_wait: Duration::from_secs(10),
        }
    }
}

/// What a caller authenticated by an access token holds besides its
/// scopes: the client the token was issued to and the token's id, so that
/// a long request (an event stream) can notice a revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub client_id: ClientId,
    pub jti: TokenId,
}

/// `/oauth/token`, `/oauth/introspect` and `/oauth/revoke`, with the
/// signing keys of this instance (one set per router, so per instance).
/// They live outside `/v1` (their paths are fixed by convention) but are
/// recorded as `api.call`s like `/v1` routes.
pub(crate) fn token_routes(state: &AppState) -> Router<AppState> {
    let endpoints = endpoints::Endpoints {
        state: state.clone(),
        signer: signing::Signer::new(
            state.log.clone(),
            state.views.clone(),
            state.options.oauth.clone(),
        ),
    };
    Router::new()
        .route("/oauth/token", post(endpoints::token))
        .route("/oauth/introspect", post(endpoints::introspect))
        .route("/oauth/revoke", post(endpoints::revoke))
        .method_not_allowed_fallback(crate::routes::ops::method_not_allowed)
        .with_state(endpoints)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), record::record_call))
}

/// The issuer: the public base URL, without a trailing slash, so that
/// `iss` compares equal however the option was written.
pub(crate) fn issuer(state: &AppState) -> &str {
    state.options.public_url.trim_end_matches('/')
}

/// Fails closed: with the `oauth` read model stopped, a revocation or a
/// deleted client appended since would never reach it.
fn available(state: &AppState) -> Result<(), Problem> {
    if let Some(ProjectionState::Failed(message)) =
        state.runner.get().state(spool_projections::oauth::NAME)
    {
        tracing::warn!(%message, "refusing an OAuth request: the oauth projection has failed");
        return Err(Problem::new(
            ProblemKind::UNAVAILABLE,
            "token checks are unavailable right now; try again later",
        ));
    }
    Ok(())
}

/// Waits until `visible` holds, polling the read model, for at most
/// `wait`. `Ok(false)` when it did not hold in time: the append is stored
/// and will show, but later than the caller hoped.
async fn until_visible<F, Fut>(wait: Duration, mut visible: F) -> Result<bool, Problem>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = spool_projections::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if visible().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How often [`until_visible`] looks.
const POLL: Duration = Duration::from_millis(5);
