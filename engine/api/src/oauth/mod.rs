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
//!   made when the instance first signs and signs for
//!   [`OAuthOptions::key_rotation`]; its successor is published in the
//!   background ahead of that end, so no token request waits for a
//!   rotation. A new key is visible in the read model before it signs
//!   anything, and an old one stays there until the last token it signed
//!   has expired, so rotation needs no downtime. Only the system tenant's
//!   keys count: the read model passes over any other tenant's.
//! - *Verification* (`token.rs`): a bearer token shaped like a JWT is
//!   checked here instead of as an API key. It is refused for an `alg`
//!   other than `EdDSA` (`none` included), a `typ` other than `at+jwt`, an
//!   unknown `kid`, a bad signature, a wrong `iss` or `aud`, expiry, an
//!   `iat` after its key's `signs_until` or a key past its `verify_until`,
//!   a revoked `jti` or a deleted client. Public keys are kept in memory
//!   once read (`verifying.rs`: a published key never changes); revocations
//!   and deletions are read from the read model (one query), and a token
//!   found standing is trusted for `ApiOptions::auth_cache_ttl` (see
//!   `auth_cache`), so they hold on every instance within a second.
//! - `POST /oauth/introspect` (a client of the tenant, or an `admin`
//!   bearer) and `POST /oauth/revoke` (the token's own client).
//! - *Waiting for the read model*: a route whose change must hold when it
//!   answers (a new client, a deletion, a revocation, a new signing key)
//!   waits on this instance's projection runner, and reads the row back
//!   only when another instance projects its partition.
//!
//! A deliberate deviation from RFC 7009 §2.1: revoking a token issued to
//! another client answers `200` and leaves the token alone, exactly like an
//! unknown token, instead of refusing the request. A refusal would tell a
//! client that a token it holds is live and someone else's (possibly
//! another tenant's), which introspection never tells it either.
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
mod verifying;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::post;
use chrono::{DateTime, Utc};
use spool_log::Appended;
use spool_projections::ProjectionState;
use spool_schemas::{ClientId, TokenId};

use crate::problem::{Problem, ProblemKind};
use crate::{AppState, Shared, record};

pub use error::OAuthErrorBody;
pub use token::looks_like_jwt;
pub(crate) use token::{authenticate, recheck};
pub use verifying::VerifyingKeys;

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
    /// The token's `exp`.
    pub expires_at: DateTime<Utc>,
}

/// `/oauth/token`, `/oauth/introspect` and `/oauth/revoke`, with the
/// signing keys of this instance (one set per router, so per instance).
/// They live outside `/v1` (their paths are fixed by convention) but are
/// recorded as `api.call`s like `/v1` routes.
pub(crate) fn token_routes(state: &Shared) -> Router<Shared> {
    let endpoints =
        endpoints::Endpoints { state: state.clone(), signer: signing::Signer::new(state.clone()) };
    Router::new()
        .route("/oauth/token", post(endpoints::token))
        .route("/oauth/introspect", post(endpoints::introspect))
        .route("/oauth/revoke", post(endpoints::revoke))
        .method_not_allowed_fallback(crate::routes::ops::method_not_allowed)
        .with_state(endpoints)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), record::recorded))
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

/// Waits, for at most `wait`, until this instance's `oauth` projection has
/// applied `appended` and `visible` holds in the read model. `Ok(false)`
/// when it did not in time: the append is stored and will show, but later
/// than the caller hoped.
///
/// Waiting on the runner costs no query, and then one query finds the
/// rows. Only when they are still not there, because another instance of
/// a scale-out deployment projects that partition, is the read model asked
/// again, at growing intervals.
async fn until_applied<F, Fut>(
    state: &AppState,
    appended: &[Appended],
    wait: Duration,
    mut visible: F,
) -> Result<bool, Problem>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = spool_projections::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let runner = state.runner.get();
    let applied = runner.wait_for_projection(spool_projections::oauth::NAME, appended);
    // Whatever came of it (applied, out of time, or no such projection in
    // a runner that has no partitions yet), the read model has the word:
    // another instance may have written the rows.
    if let Ok(Err(error)) = tokio::time::timeout_at(deadline, applied).await {
        tracing::debug!(%error, "cannot wait for this instance's oauth projection");
    }
    let mut pause = FIRST_POLL;
    loop {
        if visible().await? {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep_until((now + pause).min(deadline)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// How [`until_applied`] polls a read model another instance writes.
const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(500);
