//! Ops routes (`/healthz`, `/readyz`, `/metrics`), unauthenticated and not
//! recorded, and the problem answers for unknown routes and methods.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use spool_projections::ProjectionState;
use utoipa::ToSchema;

use crate::Shared;
use crate::problem::{Problem, ProblemKind};

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "The process is up", body = Health, example = json!({"status": "ok"}))),
)]
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
        (status = 200, description = "Ready", body = Readiness,
            example = json!({"status": "ready", "partitions": [0], "projections": [{"name": "auth", "version": 2, "checkpoint": "120", "head": "120", "lag": 0, "state": "live"}]})),
        (status = 503, description = "A projection is building or failed", body = Readiness,
            example = json!({"status": "not ready", "partitions": [0], "projections": [{"name": "usage", "version": 1, "checkpoint": "40", "head": "120", "lag": 80, "state": "building"}]})),
    ),
)]
pub(crate) async fn readyz(State(state): State<Shared>) -> impl IntoResponse {
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
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String,
        example = json!("# TYPE spool_events_ingested_total counter\nspool_events_ingested_total 1200\n"))),
)]
pub(crate) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let text = state.metrics.as_ref().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(ProblemKind::NOT_FOUND, "no route matches this path")
}

pub(crate) async fn method_not_allowed() -> Problem {
    Problem::new(ProblemKind::METHOD_NOT_ALLOWED, "this route does not accept this method")
}
