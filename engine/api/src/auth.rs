//! API-key authentication: `Authorization: Bearer spk_live_…`, looked up by
//! the SHA-256 of the key text in the auth read model, then checked for
//! revocation, expiry and scope.

use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use spool_projections::ProjectionState;
use spool_projections::auth::KeyRecord;
use spool_schemas::{KeyId, Scope, TenantId};

use crate::AppState;
use crate::keys;
use crate::problem::{Problem, ProblemKind};

/// Who is calling: an authenticated, unrevoked, unexpired key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: KeyId,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    /// When the key stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Caller {
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let caller = authenticate(parts, state).await?;
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            let _ = slot.0.set(caller.clone());
        }
        Ok(caller)
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
    if !keys::looks_like_key(secret) {
        return Err(invalid());
    }
    auth_available(state)?;
    let hash = keys::hash_secret(secret);
    let record = spool_projections::auth::key_by_secret_hash(&state.views, &hash)
        .await?
        .ok_or_else(invalid)?;
    check_record(&record)?;
    Ok(Caller {
        key_id: record.key_id,
        tenant: record.tenant,
        scopes: record.scopes,
        expires_at: record.expires_at,
    })
}

/// Whether `caller`'s key still authenticates, for requests that outlive
/// the moment they were authenticated (live streams): `Err` once it was
/// revoked, has expired, or cannot be checked.
pub(crate) async fn recheck(state: &AppState, caller: &Caller) -> Result<(), Problem> {
    auth_available(state)?;
    let record = spool_projections::auth::key(&state.views, caller.key_id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::INVALID_KEY, "the API key is not recognised"))?;
    check_record(&record)
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

fn check_record(record: &KeyRecord) -> Result<(), Problem> {
    if record.revoked {
        return Err(Problem::new(
            ProblemKind::REVOKED_KEY,
            format!("key {} was revoked", record.key_id),
        ));
    }
    if let Some(expires_at) = record.expires_at
        && expires_at <= Utc::now()
    {
        return Err(Problem::new(
            ProblemKind::EXPIRED_KEY,
            format!("key {} expired at {}", record.key_id, expires_at.to_rfc3339()),
        ));
    }
    Ok(())
}
