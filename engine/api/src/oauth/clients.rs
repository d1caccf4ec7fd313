//! `POST/GET /v1/oauth/clients` and `GET/DELETE /v1/oauth/clients/{id}`:
//! managing a tenant's OAuth clients (scope `admin`). A client of another
//! tenant answers `404`, exactly like one that does not exist.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spool_log::{Append, NewEvent};
use spool_projections::oauth::ClientRecord;
use spool_schemas::{
    ClientId, Event, OAuthClientCreated, OAuthClientDeleted, Scope, StreamName, TenantId,
};
use utoipa::ToSchema;

use super::client_auth::ClientSecret;
use super::error::no_store;
use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::{AppState, Caller, Shared};

/// The longest client name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "billing-sync", "scopes": ["events:read", "usage:read"]}))]
pub struct CreateClient {
    /// For people: 1 to 200 characters.
    pub name: String,
    /// What the client's tokens may carry (at least one).
    #[schema(value_type = Vec<String>, example = json!(["events:read"]))]
    pub scopes: Vec<String>,
}

/// A client, as listed: never its secret nor the secret's hash.
#[derive(Serialize, ToSchema)]
pub struct ClientView {
    #[schema(value_type = String, example = "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071")]
    pub id: ClientId,
    pub name: String,
    #[schema(value_type = Vec<String>, example = json!(["events:read"]))]
    pub scopes: Vec<Scope>,
    /// `false` for a client of a test-mode (sandbox) tenant.
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

/// A client just created, with its secret: shown this once, never again.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071", "name": "billing-sync",
    "scopes": ["events:read"], "livemode": true, "created_at": "2026-01-01T00:00:00Z",
    "client_secret": "spcs_V2l0aG91dFJlYWxTZWNyZXRzSGVyZUF0QWxsMTI"
}))]
pub struct CreatedClient {
    #[serde(flatten)]
    pub client: ClientView,
    /// The secret, for `POST /oauth/token`. Store it now.
    pub client_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    pub clients: Vec<ClientView>,
}

impl ClientView {
    fn from_record(record: ClientRecord) -> ClientView {
        ClientView {
            id: record.client_id,
            name: record.name,
            scopes: record.scopes,
            livemode: !record.tenant.is_test(),
            created_at: record.created_at,
        }
    }
}

/// Create an OAuth client.
///
/// Answers the client's secret once. A test-mode key creates a test-mode
/// client, whose tokens see test-mode data only.
#[utoipa::path(
    post,
    path = "/v1/oauth/clients",
    operation_id = "create_client",
    tag = "oauth",
    request_body = CreateClient,
    responses(
        (status = 201, description = "Created; the secret is in this answer only, which is never cached (`Cache-Control: no-store`)", body = CreatedClient),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown, revoked or expired key or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A missing or too long name, no scopes, or an unknown scope", body = ProblemBody, content_type = "application/problem+json",
            example = json!({"type": "https://spool.dev/problems/invalid-body", "title": "The request body does not have the expected shape", "status": 422, "detail": "unknown scope `events:delete`"})),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn create(
    State(state): State<Shared>,
    caller: Caller,
    body: Result<Json<CreateClient>, JsonRejection>,
) -> Result<Response, Problem> {
    caller.require(Scope::Admin)?;
    let Json(request) = body.map_err(json_problem)?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Problem::new(
            ProblemKind::INVALID_BODY,
            format!("`name` must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let scopes = parse_scopes(&request.scopes)?;
    let client_id = ClientId::new();
    let secret = ClientSecret::generate();
    let event = NewEvent::new(
        caller.tenant,
        client_stream(client_id),
        Event::OAuthClientCreated(OAuthClientCreated {
            client_id,
            name: name.to_owned(),
            secret_hash: secret.hash(),
            scopes: scopes.clone(),
        }),
    );
    let created_at = event.recorded_at;
    let appended = state.log.append(Append::new(vec![event])).await?;
    // Shown whatever happens next: the client exists now, and its secret
    // is in no other place.
    let views = &state.views;
    let wait = state.options.oauth.visible_wait;
    let seen = super::until_applied(&state, &appended, wait, || async move {
        Ok(spool_projections::oauth::client(views, client_id).await?.is_some())
    })
    .await
    // A failed read was logged where it failed; the answer goes out anyway.
    .unwrap_or(false);
    if !seen {
        tracing::warn!(%client_id, "a new OAuth client is stored but not yet in the read model");
    }
    let client = ClientView {
        id: client_id,
        name: name.to_owned(),
        scopes,
        livemode: !caller.tenant.is_test(),
        created_at,
    };
    let created = CreatedClient { client, client_secret: secret.expose().to_owned() };
    // The secret is in the body: no cache may keep it.
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    no_store(&mut response);
    Ok(response)
}

/// List the tenant's OAuth clients.
#[utoipa::path(
    get,
    path = "/v1/oauth/clients",
    operation_id = "list_clients",
    tag = "oauth",
    responses(
        (status = 200, description = "The clients that are not deleted, oldest first", body = ClientList,
            example = json!({"clients": [{"id": "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071", "name": "sync", "scopes": ["events:read"], "livemode": true, "created_at": "2026-03-01T10:00:00Z"}]})),
        (status = 401, description = "Missing, unknown, revoked or expired key or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn list(
    State(state): State<Shared>,
    caller: Caller,
) -> Result<Json<ClientList>, Problem> {
    caller.require(Scope::Admin)?;
    let clients = spool_projections::oauth::clients(&state.views, caller.tenant).await?;
    Ok(Json(ClientList { clients: clients.into_iter().map(ClientView::from_record).collect() }))
}

/// Get one OAuth client.
#[utoipa::path(
    get,
    path = "/v1/oauth/clients/{id}",
    operation_id = "get_client",
    tag = "oauth",
    params(("id" = String, Path, description = "The client id", example = "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071")),
    responses(
        (status = 200, description = "The client", body = ClientView,
            example = json!({"id": "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071", "name": "sync", "scopes": ["events:read"], "livemode": true, "created_at": "2026-03-01T10:00:00Z"})),
        (status = 401, description = "Missing, unknown, revoked or expired key or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such client in this tenant (or it was deleted)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn get(
    State(state): State<Shared>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ClientView>, Problem> {
    caller.require(Scope::Admin)?;
    let client = own_client(&state, caller.tenant, id).await?;
    Ok(Json(ClientView::from_record(client)))
}

/// Delete an OAuth client.
///
/// It gets no more tokens, and every token it holds is refused from the
/// moment this answers.
#[utoipa::path(
    delete,
    path = "/v1/oauth/clients/{id}",
    operation_id = "delete_client",
    tag = "oauth",
    params(("id" = String, Path, description = "The client id", example = "client_0193a0c1d27e7a3a9f1b2c3d4e5f6071")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, unknown, revoked or expired key or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks `admin`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such client in this tenant (or it was deleted)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"]), ("oauth2" = ["admin"])),
)]
pub(crate) async fn delete(
    State(state): State<Shared>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    caller.require(Scope::Admin)?;
    let client = own_client(&state, caller.tenant, id).await?;
    let client_id = client.client_id;
    let event = NewEvent::new(
        caller.tenant,
        client_stream(client_id),
        Event::OAuthClientDeleted(OAuthClientDeleted { client_id }),
    );
    let appended = state.log.append(Append::new(vec![event])).await?;
    let views = &state.views;
    let wait = state.options.oauth.visible_wait;
    let seen = super::until_applied(&state, &appended, wait, || async move {
        Ok(spool_projections::oauth::client(views, client_id).await?.is_none_or(|c| c.deleted))
    })
    .await?;
    state.auth_cache.invalidate_client(client_id);
    if !seen {
        tracing::warn!(%client_id, "a client deletion is stored but not yet in the read model");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The stream of one client's events: `oauth/<client_id>`.
pub(crate) fn client_stream(client_id: ClientId) -> StreamName {
    StreamName::new(format!("oauth/{client_id}")).expect("a client id is a valid stream name")
}

/// The client `id` of `tenant`, not deleted; anything else is `404`.
async fn own_client(
    state: &AppState,
    tenant: TenantId,
    id: Result<Path<String>, PathRejection>,
) -> Result<ClientRecord, Problem> {
    let not_found = || Problem::new(ProblemKind::NOT_FOUND, "no such OAuth client");
    let Ok(Path(id)) = id else { return Err(not_found()) };
    let Ok(client_id) = id.parse::<ClientId>() else { return Err(not_found()) };
    match spool_projections::oauth::client(&state.views, client_id).await? {
        Some(client) if client.tenant == tenant && !client.deleted => Ok(client),
        _ => Err(not_found()),
    }
}

/// Sorted and deduplicated; at least one; each one of Spool's.
fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, Problem> {
    let mut scopes = names
        .iter()
        .map(|name| {
            name.parse::<Scope>().map_err(|_| {
                Problem::new(ProblemKind::INVALID_BODY, format!("unknown scope `{name}`"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err(Problem::new(
            ProblemKind::INVALID_BODY,
            "`scopes` must name at least one scope",
        ));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonSyntaxError(_) => {
            Problem::new(ProblemKind::MALFORMED_JSON, "the request body is not valid JSON")
        }
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            ProblemKind::UNSUPPORTED_MEDIA_TYPE,
            "send the body as `Content-Type: application/json`",
        ),
        other => Problem::new(ProblemKind::INVALID_BODY, other.body_text()),
    }
}
