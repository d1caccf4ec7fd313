//! `/v1/keys`: a tenant's API keys, managed with an `admin` key. Create
//! (the secret is answered once), list, show, revoke, and roll (a new
//! secret, the old one valid for a stated grace period).
//!
//! A key sees only keys of its own tenant: a live key those of its tenant
//! and of its sandbox twin (test mode), a test key only test keys. Any
//! other key id is `404`, exactly like one that does not exist.
//!
//! Reads come from the `auth` read model. Changes are decided on the key's
//! stream in the log (the authority; the read model may lag) and appended
//! expecting the version they were decided on; the answer comes once this
//! instance's `auth` projection has applied them, so the change already
//! holds for the next request. Neither answers nor errors ever carry a
//! secret's hash, and a secret appears only in the answer that issued it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spool_log::{Appended, NewEvent};
use spool_projections::auth::{self, KeyRecord};
use spool_schemas::{KeyId, Scope, TenantId};
use utoipa::{IntoParams, ToSchema};

use crate::commands::{self, KeyOptions, KeyState};
use crate::keys::Mode;
use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::routes::query;
use crate::{AppState, Caller, Shared};

/// The longest grace period a roll may give the old secret: 7 days.
pub const MAX_GRACE_PERIOD_SECONDS: u64 = 7 * 24 * 3600;
/// The longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// How long an answer waits for this instance's `auth` projection to apply
/// the change before answering anyway (the change is stored either way).
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a change that lost a race with another change of the same
/// key is decided again.
const CHANGE_ATTEMPTS: usize = 3;

/// The body of `POST /v1/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// 1 to 128 characters, for people: what the key is for.
    #[schema(example = "ci deploys")]
    pub name: String,
    /// At least one of `events:read`, `events:write`, `usage:read`,
    /// `webhooks:read`, `webhooks:write`, `registry:read`,
    /// `registry:write`, `workflows:read`, `workflows:write`, `admin`
    /// (`admin` implies all).
    #[schema(example = json!(["events:read", "events:write"]))]
    pub scopes: Vec<String>,
    /// RFC 3339, in the future; the key stops working then. Never, when
    /// absent.
    #[schema(value_type = Option<String>, example = "2027-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
    /// `live` or `test` (sandbox: the key reads and writes test data only).
    /// The calling key's mode by default; a test key creates test keys only.
    #[schema(example = "live")]
    pub mode: Option<String>,
}

/// The body of `POST /v1/keys/{id}/roll`; may be empty.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollKeyRequest {
    /// How long the old secret keeps working, 0 (the default: it stops at
    /// once) to 604800 (7 days).
    #[schema(example = 3600)]
    pub grace_period_seconds: Option<u64>,
}

/// A key as the API shows it: never its secret, never a hash of it.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    #[schema(example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")]
    pub id: String,
    pub name: String,
    #[schema(example = json!(["events:read", "events:write"]))]
    pub scopes: Vec<String>,
    /// `live` or `test`.
    #[schema(example = "live")]
    pub mode: &'static str,
    /// Whether the key acts on live data (`false`: test mode).
    pub livemode: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/keys`: the new key and, this once, its secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The key text, shown only now: store it.
    #[schema(example = "spk_live_0123456789abcdefghijABCDEFGHIJkl0eQbCY")]
    pub secret: String,
}

/// `POST /v1/keys/{id}/roll`: the key, its new secret (shown only now),
/// and when the old one stops working.
#[derive(Serialize, ToSchema)]
pub struct RolledKey {
    #[serde(flatten)]
    pub key: KeyView,
    #[schema(example = "spk_live_0123456789abcdefghijABCDEFGHIJkl0eQbCY")]
    pub secret: String,
    /// When the secrets the key had before this roll stop working.
    pub previous_secret_expires_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Oldest first; revoked keys included.
    pub keys: Vec<KeyView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Only keys of this mode: `live` or `test`.
    #[param(example = "test")]
    pub mode: Option<String>,
}

impl KeyView {
    fn from_record(record: KeyRecord) -> KeyView {
        let mode = Mode::of(record.tenant);
        KeyView {
            id: record.key_id.to_string(),
            name: record.name,
            scopes: record.scopes.iter().map(|scope| scope.as_str().to_owned()).collect(),
            mode: mode.as_str(),
            livemode: mode == Mode::Live,
            expires_at: record.expires_at,
            revoked: record.revoked,
            created_at: record.created_at,
        }
    }

    fn from_state(state: &KeyState) -> KeyView {
        KeyView::from_record(KeyRecord {
            key_id: state.key_id,
            tenant: state.tenant,
            name: state.name.clone(),
            scopes: state.scopes.clone(),
            expires_at: state.expires_at,
            revoked: state.revoked,
            created_at: state.created_at,
        })
    }
}

/// Issue a key.
///
/// The answer holds the key's secret, which Spool does not keep: it is
/// shown this once. The key works as soon as the answer arrives.
#[utoipa::path(
    post,
    path = "/v1/keys",
    operation_id = "create_key",
    tag = "keys",
    request_body(
        content = CreateKeyRequest,
        example = json!({"name": "ci deploys", "scopes": ["events:read", "events:write"], "expires_at": "2027-01-01T00:00:00Z", "mode": "test"}),
    ),
    responses(
        (status = 201, description = "Issued; `secret` is shown only now", body = CreatedKey,
            example = json!({"id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "name": "ci deploys", "scopes": ["events:read", "events:write"], "mode": "test", "livemode": false, "expires_at": "2027-01-01T00:00:00Z", "revoked": false, "created_at": "2026-03-01T10:00:00Z", "secret": "spk_test_0123456789abcdefghijABCDEFGHIJkl2hlK27"})),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`, or is a test key asking for a live key (`live-mode-required`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name, mode or expiry (`invalid-body`), or a scope that does not exist (`unknown-scope`)", body = ProblemBody, content_type = "application/problem+json",
            example = json!({"type": "https://spool.dev/problems/unknown-scope", "title": "A scope named in the request does not exist", "status": 422, "detail": "scopes[1]: `events:delete` is not a scope; the scopes are events:read, …"})),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn create(
    State(state): State<Shared>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    caller.require(Scope::Admin)?;
    let request: CreateKeyRequest = super::optional_json_body(body)?
        .ok_or_else(|| invalid("send a JSON object with `name` and `scopes`"))?;
    let options = key_options(&caller, request)?;
    let (key, event) = commands::new_key(caller.tenant, options);
    let appended = state.log.append(spool_log::Append::new(vec![event])).await?;
    wait_applied(&state, &appended).await;
    let stored = find_key(&state, &caller, key.key_id)
        .await?
        .ok_or_else(|| Problem::internal(&format!("key {} is stored but not found", key.key_id)))?;
    let created = CreatedKey { key: KeyView::from_state(&stored), secret: key.secret };
    Ok(no_store((StatusCode::CREATED, Json(created))))
}

/// The request, checked, as what [`commands::new_key`] takes.
fn key_options(caller: &Caller, request: CreateKeyRequest) -> Result<KeyOptions, Problem> {
    let name = request.name.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "`name` must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    if request.scopes.is_empty() {
        return Err(invalid("`scopes` must name at least one scope"));
    }
    let scopes = request
        .scopes
        .iter()
        .enumerate()
        .map(|(index, text)| parse_scope(index, text))
        .collect::<Result<Vec<_>, _>>()?;
    let expires_at = match &request.expires_at {
        None => None,
        Some(text) => {
            let expires_at = DateTime::parse_from_rfc3339(text)
                .map_err(|error| invalid(format!("`expires_at` is not RFC 3339: {error}")))?
                .with_timezone(&Utc);
            if expires_at <= Utc::now() {
                return Err(invalid("`expires_at` must be in the future"));
            }
            Some(expires_at)
        }
    };
    let mode = match request.mode.as_deref() {
        None => Mode::of(caller.tenant),
        Some(text) => parse_mode(text)?,
    };
    if caller.is_test() && mode == Mode::Live {
        return Err(Problem::new(
            ProblemKind::LIVE_MODE_REQUIRED,
            "a test-mode key creates test-mode keys only; use a live key",
        ));
    }
    Ok(KeyOptions { name, scopes, expires_at, mode })
}

/// List the tenant's keys.
///
/// A live key lists the keys of both modes; a test key the test keys only.
#[utoipa::path(
    get,
    path = "/v1/keys",
    operation_id = "list_keys",
    tag = "keys",
    params(ListKeysQuery),
    responses(
        (status = 200, description = "The keys, oldest first, without secrets", body = KeyList,
            example = json!({"keys": [{"id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "name": "ci deploys", "scopes": ["events:read"], "mode": "live", "livemode": true, "expires_at": null, "revoked": false, "created_at": "2026-03-01T10:00:00Z"}]})),
        (status = 400, description = "Invalid query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn list(
    State(state): State<Shared>,
    caller: Caller,
    list_query: Result<Query<ListKeysQuery>, QueryRejection>,
) -> Result<Json<KeyList>, Problem> {
    caller.require(Scope::Admin)?;
    let list_query = query(list_query)?;
    let only = match list_query.mode.as_deref() {
        None => None,
        Some(text) => Some(
            parse_mode(text)
                .map_err(|problem| Problem::new(ProblemKind::INVALID_QUERY, problem.detail))?,
        ),
    };
    let mut records = Vec::new();
    for tenant in visible_tenants(&caller) {
        if only.is_none_or(|mode| mode == Mode::of(tenant)) {
            records.extend(auth::keys(&state.views, tenant).await?);
        }
    }
    records.sort_by(|a, b| {
        (a.created_at, a.key_id.to_string()).cmp(&(b.created_at, b.key_id.to_string()))
    });
    Ok(Json(KeyList { keys: records.into_iter().map(KeyView::from_record).collect() }))
}

/// Show one key.
#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    operation_id = "get_key",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id", example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")),
    responses(
        (status = 200, description = "The key, without its secret", body = KeyView,
            example = json!({"id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "name": "ci deploys", "scopes": ["events:read"], "mode": "live", "livemode": true, "expires_at": null, "revoked": false, "created_at": "2026-03-01T10:00:00Z"})),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant (another tenant's keys included)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn show(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, Problem> {
    caller.require(Scope::Admin)?;
    let key_id = key_id(&id)?;
    let record = auth::key(&state.views, key_id)
        .await?
        .filter(|record| visible_tenants(&caller).contains(&record.tenant))
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(KeyView::from_record(record)))
}

/// Revoke a key.
///
/// The key stops working on every instance within a second; revoking a
/// revoked key changes nothing and answers the same.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    operation_id = "revoke_key",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id", example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")),
    responses(
        (status = 200, description = "Revoked", body = KeyView,
            example = json!({"id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "name": "ci deploys", "scopes": ["events:read"], "mode": "live", "livemode": true, "expires_at": null, "revoked": true, "created_at": "2026-03-01T10:00:00Z"})),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant (another tenant's keys included)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The key kept changing while being revoked; try again", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn revoke(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, Problem> {
    caller.require(Scope::Admin)?;
    let key_id = key_id(&id)?;
    let (mut key, _) = change_key(&state, &caller, &id, key_id, |key| {
        Ok((!key.revoked).then(|| (commands::key_revoked(key.tenant, key.key_id), ())))
    })
    .await?;
    key.revoked = true;
    Ok(Json(KeyView::from_state(&key)))
}

/// Roll a key: give it a new secret.
///
/// The old secret keeps working for `grace_period_seconds` (0 by default,
/// at most 7 days), so clients can move over without downtime; the answer
/// says when it stops. The new secret is shown only in this answer.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/roll",
    operation_id = "roll_key",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id", example = "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80")),
    request_body(content = Option<RollKeyRequest>, example = json!({"grace_period_seconds": 3600})),
    responses(
        (status = 200, description = "Rolled; `secret` is shown only now", body = RolledKey,
            example = json!({"id": "key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80", "name": "ci deploys", "scopes": ["events:read"], "mode": "live", "livemode": true, "expires_at": null, "revoked": false, "created_at": "2026-03-01T10:00:00Z", "secret": "spk_live_0123456789abcdefghijABCDEFGHIJkl0eQbCY", "previous_secret_expires_at": "2026-03-02T11:00:00Z"})),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant (another tenant's keys included)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked or expired, or kept changing while being rolled", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`grace_period_seconds` out of range", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn roll(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    caller.require(Scope::Admin)?;
    let request: RollKeyRequest = super::optional_json_body(body)?.unwrap_or_default();
    let grace = request.grace_period_seconds.unwrap_or(0);
    if grace > MAX_GRACE_PERIOD_SECONDS {
        return Err(invalid(format!(
            "`grace_period_seconds` must be 0 to {MAX_GRACE_PERIOD_SECONDS} (7 days)"
        )));
    }
    let key_id = key_id(&id)?;
    let (key, rolled) = change_key(&state, &caller, &id, key_id, |key| {
        let now = Utc::now();
        if key.revoked {
            return Err(Problem::new(ProblemKind::CONFLICT, format!("key {id} is revoked")));
        }
        if let Some(expires_at) = key.expires_at
            && expires_at <= now
        {
            return Err(Problem::new(
                ProblemKind::CONFLICT,
                format!("key {id} expired at {}", expires_at.to_rfc3339()),
            ));
        }
        let ends = now + chrono::Duration::seconds(grace as i64);
        let (rolled, event) = commands::roll_key(key, ends);
        Ok(Some((event, (rolled, ends))))
    })
    .await?;
    let (rolled, ends) = rolled.expect("a roll always appends");
    let answer = RolledKey {
        key: KeyView::from_state(&key),
        secret: rolled.secret,
        previous_secret_expires_at: ends,
    };
    Ok(no_store((StatusCode::OK, Json(answer))))
}

/// The tenants whose keys `caller` may see and change: its own, and for a
/// live key its sandbox twin too.
fn visible_tenants(caller: &Caller) -> Vec<TenantId> {
    if caller.is_test() {
        vec![caller.tenant]
    } else {
        vec![caller.tenant, caller.tenant.test_twin()]
    }
}

/// The key as the log holds it, if `caller` may see it.
async fn find_key(
    state: &AppState,
    caller: &Caller,
    key_id: KeyId,
) -> Result<Option<KeyState>, Problem> {
    for tenant in visible_tenants(caller) {
        if let Some(key) = commands::read_key(&*state.log, tenant, key_id).await? {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Reads the key from the log, lets `decide` choose the event to append
/// (`None`: nothing to change), and appends it expecting the version read;
/// decides again if another change of the key came first. Answers the key
/// as read and what `decide` returned beside the event (`None` when
/// nothing changed), once the change is applied here.
async fn change_key<T>(
    state: &AppState,
    caller: &Caller,
    id: &str,
    key_id: KeyId,
    mut decide: impl FnMut(&KeyState) -> Result<Option<(NewEvent, T)>, Problem>,
) -> Result<(KeyState, Option<T>), Problem> {
    for _ in 0..CHANGE_ATTEMPTS {
        let key = find_key(state, caller, key_id).await?.ok_or_else(|| not_found(id))?;
        let Some((event, decided)) = decide(&key)? else {
            return Ok((key, None));
        };
        match state.log.append(key.change(event)).await {
            Ok(appended) => {
                wait_applied(state, &appended).await;
                // Only once applied: a lookup in between would cache the
                // key as it was again.
                state.auth_cache.invalidate_key(key_id);
                return Ok((key, Some(decided)));
            }
            Err(spool_log::Error::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(Problem::new(
        ProblemKind::CONFLICT,
        format!("key {id} kept changing while this request was handled; try again"),
    ))
}

/// Waits (a bounded time) until this instance's `auth` projection has
/// applied `appended`, so that the caller's next request sees the change.
/// On a scale-out deployment another instance may own the partition; the
/// change then holds as soon as that instance applies it.
async fn wait_applied(state: &AppState, appended: &[Appended]) {
    let runner = state.runner.get();
    let applied = runner.wait_for_projection(auth::NAME, appended);
    match tokio::time::timeout(APPLY_WAIT, applied).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "a key change is stored but not applied here"),
        Err(_) => tracing::warn!("a key change is stored but was not applied here within 5 s"),
    }
}

/// A secret in the answer: no cache may keep it.
fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A key id from the path. One that does not even parse is as missing as
/// one that does not exist.
fn key_id(id: &str) -> Result<KeyId, Problem> {
    id.parse().map_err(|_| not_found(id))
}

fn not_found(id: &str) -> Problem {
    Problem::new(ProblemKind::NOT_FOUND, format!("no key {id}"))
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::INVALID_BODY, detail)
}

fn parse_mode(text: &str) -> Result<Mode, Problem> {
    match text {
        "live" => Ok(Mode::Live),
        "test" => Ok(Mode::Test),
        _ => Err(invalid(format!("`mode` must be `live` or `test`, not {text:?}"))),
    }
}

/// The scope `scopes[index]` names, or a `422` naming it and the scopes
/// there are.
fn parse_scope(index: usize, text: &str) -> Result<Scope, Problem> {
    text.parse().map_err(|_| {
        let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
        Problem::new(
            ProblemKind::UNKNOWN_SCOPE,
            format!(
                "scopes[{index}]: `{text}` is not a scope; the scopes are {}",
                known.join(", ")
            ),
        )
    })
}
