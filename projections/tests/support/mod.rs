//! Shared helpers for the projection tests: events, logs and views in temp dirs.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use spool_log::{Append, Log, MemoryLog, NewEvent};
use spool_projections::event_counts::{self, EventCountsQuery, MinuteCount};
use spool_projections::{Runner, RunnerHandle, RunnerOptions, Views};
use spool_schemas::{
    AppEvent, AppEventType, Event, KeyCreated, KeyId, KeyRevoked, Position, Scope, StreamName,
    TenantCreated, TenantId,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("a valid RFC 3339 time")
}

pub fn app(tenant: TenantId, event_type: &str, recorded_at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new("order/1").expect("valid stream"),
        Event::App(AppEvent {
            event_type: AppEventType::new(event_type).expect("valid type"),
            data: serde_json::json!({"total": 1}),
        }),
    );
    event.recorded_at = recorded_at;
    event
}

pub fn tenant_created(tenant: TenantId, name: &str, recorded_at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new("tenant").expect("valid stream"),
        Event::TenantCreated(TenantCreated { name: name.into() }),
    );
    event.recorded_at = recorded_at;
    event
}

pub fn key_created(
    tenant: TenantId,
    key_id: KeyId,
    secret_hash: &str,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new(format!("key/{key_id}")).expect("valid stream"),
        Event::KeyCreated(KeyCreated {
            key_id,
            name: "ci".into(),
            secret_hash: secret_hash.into(),
            scopes,
            expires_at,
        }),
    );
    event.recorded_at = recorded_at;
    event
}

pub fn key_revoked(tenant: TenantId, key_id: KeyId, recorded_at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new(format!("key/{key_id}")).expect("valid stream"),
        Event::KeyRevoked(KeyRevoked { key_id }),
    );
    event.recorded_at = recorded_at;
    event
}

/// `n` app events of a few types spread over a few minutes, round-robin
/// over `tenants`.
pub fn traffic(tenants: &[TenantId], n: usize, start: DateTime<Utc>) -> Vec<NewEvent> {
    let types = ["order.created", "order.shipped", "invoice.paid"];
    (0..n)
        .map(|i| {
            app(
                tenants[i % tenants.len()],
                types[i % types.len()],
                start + Duration::seconds(i as i64 * 7),
            )
        })
        .collect()
}

pub async fn append(log: &dyn Log, events: Vec<NewEvent>) -> Position {
    let appended = log.append(Append::new(events)).await.expect("append");
    appended.last().map_or(Position::ZERO, |a| a.position)
}

pub fn memory_log() -> Arc<dyn Log> {
    Arc::new(MemoryLog::new())
}

pub struct TempViews {
    pub views: Views,
    pub dir: tempfile::TempDir,
}

pub async fn temp_views() -> TempViews {
    let dir = tempfile::tempdir().expect("tempdir");
    let views = Views::open(dir.path().join("views.db")).await.expect("open views");
    TempViews { views, dir }
}

/// A runner in the background, stopped by [`Running::stop`].
pub struct Running {
    pub handle: RunnerHandle,
    stop: oneshot::Sender<()>,
    task: JoinHandle<spool_projections::Result<()>>,
}

impl Running {
    pub fn start(
        log: Arc<dyn Log>,
        views: &Views,
        projections: Vec<Arc<dyn spool_projections::Projection>>,
        batch: usize,
    ) -> Running {
        let runner = Runner::new(log, views.clone(), projections, RunnerOptions { batch });
        let handle = runner.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(runner.run(async {
            let _ = stopped.await;
        }));
        Running { handle, stop, task }
    }

    pub async fn stop(self) -> spool_projections::Result<()> {
        let _ = self.stop.send(());
        self.task.await.expect("runner task")
    }
}

pub async fn counts(views: &Views, tenant: TenantId) -> Vec<MinuteCount> {
    event_counts::query(views, tenant, &EventCountsQuery::default())
        .await
        .expect("query event counts")
}

/// The physical tables in the views file, sorted.
pub async fn physical_tables(views: &Views) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'spool_%' \
         AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(views.pool())
    .await
    .expect("list tables")
}
