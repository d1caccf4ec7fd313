//! Ops routes (`/healthz`, `/readyz`, `/metrics`), unauthenticated and not
//! recorded, and the problem answers for unknown routes and methods.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use spool_projections::ProjectionState;
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::{Problem, ProblemKind};

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: &'static str,
    /// The log partitions this instance projects: all of them, unless
    /// several instances share the work (Kafka log, PostgreSQL read
    /// models), when each projects those its consumer group assigned it.
    #[schema(example = json!([0, 1, 2, 3]))]
    pub partitions: Vec<u32>,
    pub projections: Vec<ProjectionView>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectionView {
    pub name: String,
    pub version: u32,
    /// Where the projection is in each partition of the log: positions
    /// joined by dots (`120.0.37`; one partition: `120`).
    #[schema(example = "120.0.37")]
    pub checkpoint: String,
    /// The log's head in each partition, written as `checkpoint` is.
    #[schema(example = "120.3.37")]
    pub head: String,
    /// Events not yet applied, summed over partitions.
    pub lag: u64,
    /// `live`, `building` or `failed`. Why a projection failed is in the
    /// server's log and `spool projections status`, not here: this route
    /// needs no key.
    pub state: &'static str,
}

/// Ready when no projection is building or failed.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A projection is building or failed", body = Readiness),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let runner = state.runner.get();
    let projections: Vec<ProjectionView> = runner
        .status()
        .into_iter()
        .map(|status| {
            let state = match status.state {
                ProjectionState::Live => "live",
                ProjectionState::Building => "building",
                ProjectionState::Failed(_) => "failed",
            };
            ProjectionView {
                name: status.name,
                version: status.version,
                checkpoint: status.checkpoint.to_string(),
                head: status.head.to_string(),
                lag: status.lag,
                state,
            }
        })
        .collect();
    let ready = projections.iter().all(|projection| projection.state == "live");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let partitions = runner.owned_partitions().to_vec();
    let body =
        Readiness { status: if ready { "ready" } else { "not ready" }, partitions, projections };
    (status, Json(body))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.as_ref().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(ProblemKind::NOT_FOUND, "no route matches this path")
}

pub(crate) async fn method_not_allowed() -> Problem {
    Problem::new(ProblemKind::METHOD_NOT_ALLOWED, "this route does not accept this method")
}
