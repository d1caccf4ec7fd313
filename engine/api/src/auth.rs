//! API-key authentication: `Authorization: Bearer spk_live_…` (or
//! `spk_test_…`). The key text is checked offline first (prefix, length,
//! checksum: see `keys`), then looked up by its SHA-256 among the secrets
//! of the auth read model, then checked for revocation, expiry (the key's,
//! and the secret's own end once a roll replaced it) and scope.
//!
//! A key found is kept in the [`AuthCache`](crate::AuthCache) for at most
//! `ApiOptions::auth_cache_ttl` (500 ms by default), so most requests cost
//! no query. A revocation still holds on every instance within a second:
//! the `auth` projection applies it within milliseconds, and a cached
//! record is read again once its TTL is over; the instance that revoked
//! (or rolled) the key drops it from its cache at once. Misses are never
//! cached (a new key works at once), and expiry is checked against the
//! clock on every request, from the cached record. Looking up by digest
//! is what keeps the comparison constant-time: the database (or the cache)
//! compares SHA-256 digests, never the secret.
//!
//! A request that outlives its authentication (a live event stream) checks
//! again with [`recheck`], from the read model rather than the cache:
//! through the same secret's digest, kept in the
//! [`Caller`] (never the secret itself), so that a roll ending that secret
//! ends the stream too, not only a revocation or the key's expiry.

use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use spool_projections::ProjectionState;
use spool_projections::auth::SecretMatch;
use spool_schemas::{KeyId, Scope, TenantId};

use crate::keys;
use crate::problem::{Problem, ProblemKind};
use crate::{AppState, Shared};

/// Who is calling: an authenticated, unrevoked, unexpired key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: KeyId,
    /// The key's tenant: for a test-mode key, the live tenant's sandbox
    /// twin, so everything keyed by it is test data (`tenant.is_test()`).
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    /// When the credential stops working (the key's expiry, or the end of
    /// a rolled secret's grace period, whichever comes first); `None`:
    /// never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when the caller presented an OAuth access token rather than an
    /// API key: its client and token id. `key_id` then carries the client's
    /// UUID, so that what is kept per credential is kept per client.
    pub token: Option<crate::oauth::TokenGrant>,
    /// For an API key: the digest of the very secret presented, so that a
    /// long request can check that secret again (a roll may end it while
    /// the key lives on).
    pub(crate) secret_hash: Option<SecretHash>,
}

/// The SHA-256 (lowercase hex) of a key's secret, as the `auth` read model
/// looks secrets up. Not the secret; still left out of `Debug`, since a
/// caller may be logged and the digest is what finds the key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretHash(String);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SecretHash(…)")
    }
}

impl Caller {
    /// Whether the caller acts in test mode (sandbox).
    pub fn is_test(&self) -> bool {
        self.tenant.is_test()
    }

    /// Refuses with `403` unless the key holds `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            return Ok(());
        }
        Err(Problem::new(
            ProblemKind::INSUFFICIENT_SCOPE,
            format!("this request needs the scope `{scope}`"),
        ))
    }
}

/// Filled by authentication, read by the `api.call` recorder once the
/// response is ready: the recorder wraps the handler and cannot see its
/// extractors otherwise.
#[derive(Clone, Default)]
pub(crate) struct CallerSlot(Arc<OnceLock<Caller>>);

impl CallerSlot {
    pub(crate) fn get(&self) -> Option<&Caller> {
        self.0.get()
    }
}

/// The outcome of authenticating a request, kept in its extensions so that
/// the rate limiter (which authenticates first, to limit per key) and the
/// handler's extractors share one lookup.
#[derive(Clone)]
struct Authenticated(Result<Caller, Problem>);

impl FromRequestParts<Shared> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Problem> {
        if let Some(Authenticated(outcome)) = parts.extensions.get::<Authenticated>() {
            return outcome.clone();
        }
        let outcome = authenticate(parts, state).await;
        if let (Ok(caller), Some(slot)) = (&outcome, parts.extensions.get::<CallerSlot>()) {
            let _ = slot.0.set(caller.clone());
        }
        parts.extensions.insert(Authenticated(outcome.clone()));
        outcome
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, Problem> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(Problem::new(
            ProblemKind::MISSING_KEY,
            "send the API key as `Authorization: Bearer <key>`",
        ));
    };
    let invalid = || Problem::new(ProblemKind::INVALID_KEY, "the API key is not recognised");
    let secret = value
        .to_str()
        .ok()
        .and_then(|text| {
            let (scheme, token) = text.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| {
            Problem::new(
                ProblemKind::INVALID_KEY,
                "the Authorization header must be `Bearer <key>`",
            )
        })?;
    if crate::oauth::looks_like_jwt(secret) {
        return crate::oauth::authenticate(state, secret).await;
    }
    let mode = keys::parse(secret)
        .map_err(|error| Problem::new(ProblemKind::INVALID_KEY, error.to_string()))?;
    auth_available(state)?;
    let hash = SecretHash(keys::hash_secret(secret));
    let found = lookup(state, &hash).await?.ok_or_else(invalid)?;
    // The prefix is part of what the digest covers, so a mismatch means a
    // key stored in the wrong mode: refuse rather than cross modes.
    if keys::Mode::of(found.key.tenant) != mode {
        tracing::error!(key = %found.key.key_id, "a key's text and its tenant disagree on the mode");
        return Err(invalid());
    }
    let expires_at = check_secret(&found, Utc::now())?;
    let record = found.key;
    Ok(Caller {
        key_id: record.key_id,
        tenant: record.tenant,
        scopes: record.scopes,
        expires_at,
        token: None,
        secret_hash: Some(hash),
    })
}

/// The key whose secret has the digest `hash`: from the cache when read
/// within the TTL, else from the read model (and then cached if it stands).
async fn lookup(state: &AppState, hash: &SecretHash) -> Result<Option<SecretMatch>, Problem> {
    let ttl = state.options.auth_cache_ttl;
    if let Some(found) = state.auth_cache.key(&hash.0, ttl) {
        return Ok(Some(found));
    }
    let epoch = state.auth_cache.key_epoch();
    let found = spool_projections::auth::secret_by_hash(&state.views, &hash.0).await?;
    if let Some(found) = found.as_ref().filter(|found| !found.key.revoked) {
        state.auth_cache.insert_key(hash.0.clone(), found.clone(), epoch, ttl);
    }
    Ok(found)
}

/// Whether `caller`'s credential still authenticates, for requests that
/// outlive the moment they were authenticated (live streams): `Ok` with
/// when it stops working now (a roll since may have brought that closer),
/// `Err` once it was revoked, has expired, or cannot be checked.
pub(crate) async fn recheck(
    state: &AppState,
    caller: &Caller,
) -> Result<Option<DateTime<Utc>>, Problem> {
    let invalid = || Problem::new(ProblemKind::INVALID_KEY, "the API key is not recognised");
    match (caller.token, &caller.secret_hash) {
        (Some(grant), _) => {
            crate::oauth::recheck(state, grant).await?;
            Ok(Some(grant.expires_at))
        }
        (None, Some(hash)) => {
            auth_available(state)?;
            let found = spool_projections::auth::secret_by_hash(&state.views, &hash.0)
                .await?
                .filter(|found| found.key.key_id == caller.key_id)
                .ok_or_else(invalid)?;
            check_secret(&found, Utc::now())
        }
        // Every caller is made with one or the other; fail closed anyway.
        (None, None) => Err(invalid()),
    }
}

/// Fails closed: with the auth read model stopped, a revocation appended
/// since would never reach it, so no key can be trusted.
fn auth_available(state: &AppState) -> Result<(), Problem> {
    if let Some(ProjectionState::Failed(message)) =
        state.runner.get().state(spool_projections::auth::NAME)
    {
        tracing::warn!(%message, "refusing a request: the auth projection has failed");
        return Err(Problem::new(
            ProblemKind::UNAVAILABLE,
            "authentication is unavailable right now; try again later",
        ));
    }
    Ok(())
}

/// Refuses a revoked or expired key, or a secret a roll has ended, at
/// `now`; otherwise says when the secret stops working (the key's expiry,
/// or the end of a rolled secret's grace period, whichever comes first).
fn check_secret(found: &SecretMatch, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Problem> {
    let SecretMatch { key: record, secret_expires_at } = found;
    if record.revoked {
        return Err(Problem::new(
            ProblemKind::REVOKED_KEY,
            format!("key {} was revoked", record.key_id),
        ));
    }
    if let Some(expires_at) = record.expires_at
        && expires_at <= now
    {
        return Err(Problem::new(
            ProblemKind::EXPIRED_KEY,
            format!("key {} expired at {}", record.key_id, expires_at.to_rfc3339()),
        ));
    }
    if let Some(ended) = *secret_expires_at
        && ended <= now
    {
        return Err(Problem::new(
            ProblemKind::EXPIRED_KEY,
            format!(
                "this secret of key {} was replaced by a roll and stopped working at {}; use \
                 the new secret",
                record.key_id,
                ended.to_rfc3339()
            ),
        ));
    }
    Ok(match (record.expires_at, *secret_expires_at) {
        (Some(key), Some(secret)) => Some(key.min(secret)),
        (key, secret) => key.or(secret),
    })
}
