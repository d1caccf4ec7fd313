//! API-key authentication: `Authorization: Bearer spk_live_…`, looked up by
//! the SHA-256 of the key text in the auth read model, then checked for
//! revocation, expiry and scope.

use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::Utc;
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
    let hash = keys::hash_secret(secret);
    let record = spool_projections::auth::key_by_secret_hash(&state.views, &hash)
        .await?
        .ok_or_else(invalid)?;
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
    Ok(Caller { key_id: record.key_id, tenant: record.tenant, scopes: record.scopes })
}
