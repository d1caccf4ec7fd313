//! The baseline of the load benchmark (`benches/load/run`): a bare axum
//! server answering `POST /v1/events` and `GET /v1/usage` with the same
//! request parsing and answer shapes as Spool's, but no auth, no rate
//! limiting, no `api.call` recording and no storage.
//!
//! Measured in the same run as `spool serve`, on the same runtime setup
//! (`#[tokio::main]`, one worker per core), it says how much of the
//! server's throughput the platform around the handlers costs: the HTTP
//! stack and JSON alone are what remains here.
//!
//! Usage: `bare_axum [ADDRESS]` (default `127.0.0.1:0`, a free port);
//! prints `listening on <address>` once it accepts connections.

use std::io::Write;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// The allocator `spool` runs on, so that the ratio measures the platform
// around the handlers, not a choice of allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One app event, as `POST /v1/events` takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEventRequest {
    #[serde(rename = "type")]
    event_type: String,
    subject: Option<String>,
    // Parsed as Spool parses them; a handler that stores nothing has no use
    // for them.
    #[serde(default)]
    #[allow(dead_code)]
    data: Value,
    #[allow(dead_code)]
    id: Option<String>,
}

/// The answer's shape for one stored event, as Spool sends it.
#[derive(Serialize)]
struct IngestedEvent {
    id: String,
    partition: u32,
    position: u64,
    stream: String,
    stream_version: u64,
    duplicate: bool,
}

#[derive(Serialize)]
struct IngestResponse {
    events: Vec<IngestedEvent>,
}

/// Parses the event and answers as if it were stored: an id is minted
/// (UUIDv7, as Spool does) but nothing is kept.
async fn ingest(Json(event): Json<AppEventRequest>) -> (StatusCode, Json<IngestResponse>) {
    let stream = event.subject.unwrap_or(event.event_type);
    let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    let stored = IngestedEvent {
        id,
        partition: 0,
        position: 1,
        stream,
        stream_version: 1,
        duplicate: false,
    };
    (StatusCode::CREATED, Json(IngestResponse { events: vec![stored] }))
}

/// The query string of `GET /v1/usage`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    group_by: Option<String>,
}

/// Parses the range as Spool does and answers with no rows.
async fn usage(Query(params): Query<UsageParams>) -> Result<Json<Value>, StatusCode> {
    let parse = |text: Option<&str>| {
        text.and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc))
            .ok_or(StatusCode::BAD_REQUEST)
    };
    let from = parse(params.from.as_deref())?;
    let to = parse(params.to.as_deref())?;
    let group_by: Vec<&str> =
        params.group_by.as_deref().map(|list| list.split(',').collect()).unwrap_or_default();
    Ok(Json(json!({
        "from": from,
        "to": to,
        "granularity": params.granularity.as_deref().unwrap_or("hour"),
        "group_by": group_by,
        "livemode": true,
        "rows": [],
    })))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let app = Router::new().route("/v1/events", post(ingest)).route("/v1/usage", get(usage));
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, app).await
}
