//! Rebuilds: into shadow tables while the old ones serve, swapped in one
//! transaction, equal to what the live runner builds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;
use spool_log::StoredEvent;
use spool_projections::event_counts::EventCounts;
use spool_projections::{Connection, Projection, Result, Table, Tables};
use spool_schemas::{Position, TenantId};
use tokio::sync::{Notify, Semaphore};

/// `event_counts` that, once armed, pauses in its next `apply` until let go.
struct Paused {
    armed: AtomicBool,
    entered: Notify,
    release: Semaphore,
}

impl Default for Paused {
    fn default() -> Self {
        Paused { armed: AtomicBool::new(false), entered: Notify::new(), release: Semaphore::new(0) }
    }
}

#[async_trait::async_trait]
impl Projection for Paused {
    fn name(&self) -> &'static str {
        EventCounts.name()
    }
    fn version(&self) -> u32 {
        EventCounts.version()
    }
    fn tables(&self) -> &'static [Table] {
        EventCounts.tables()
    }
    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.acquire().await.expect("open semaphore").forget();
        }
        EventCounts.apply(connection, tables, events).await
    }
}

pub(crate) async fn old_tables_serve_while_a_rebuild_fills_shadow_tables_then_swap(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let start = at("2026-03-01T10:00:00Z");
    append(log.as_ref(), traffic(&[tenant], 90, start)).await;
    let paused = Arc::new(Paused::default());
    spool_projections::rebuild(log.clone(), &store.views, paused.clone(), |_| {})
        .await
        .expect("first build");
    let old = counts(&store.views, tenant).await;
    assert_eq!(old.iter().map(|c| c.count).sum::<u64>(), 90);

    append(log.as_ref(), traffic(&[tenant], 60, start)).await;
    paused.armed.store(true, Ordering::SeqCst);
    let rebuilding = tokio::spawn({
        let (log, views, paused) = (log.clone(), store.views.clone(), paused.clone());
        async move {
            let mut reports = Vec::new();
            let report =
                spool_projections::rebuild(log, &views, paused, |progress| reports.push(progress))
                    .await;
            (report, reports)
        }
    });
    paused.entered.notified().await;
    // Mid-build: the old generation still answers, and both exist.
    assert_eq!(counts(&store.views, tenant).await, old);
    // Other projections' placeholder tables are left out: only these change.
    let ours = |tables: Vec<String>| -> Vec<String> {
        tables.into_iter().filter(|t| t.starts_with("auth_") || t.starts_with("event_")).collect()
    };
    let during = ours(physical_tables(&store.views).await);
    assert_eq!(
        during,
        [
            "auth_key_secrets_g0",
            "auth_keys_g0",
            "auth_tenants_g0",
            "event_counts_g1",
            "event_counts_g2"
        ]
    );

    paused.release.add_permits(1);
    let (report, progress) = rebuilding.await.expect("rebuild task");
    let report = report.expect("rebuild");
    assert_eq!(report.events, 150);
    let last = progress.last().expect("progress reported");
    assert_eq!(
        (last.name.as_str(), last.applied.to_string(), last.head.to_string()),
        ("event_counts", "150".to_owned(), "150".to_owned())
    );
    assert_eq!((last.applied_events(), last.head_events()), (150, 150));

    let new = counts(&store.views, tenant).await;
    assert_eq!(new.iter().map(|c| c.count).sum::<u64>(), 150);
    assert_eq!(
        ours(physical_tables(&store.views).await),
        ["auth_key_secrets_g0", "auth_keys_g0", "auth_tenants_g0", "event_counts_g2"]
    );

    // The same log folded by the live runner gives the same rows.
    let live = kind.open().await;
    let running = Running::start(log.clone(), &live.views, vec![Arc::new(EventCounts)], 16);
    running.handle.wait_for(Position(150)).await.expect("caught up");
    running.stop().await.expect("stop");
    assert_eq!(counts(&live.views, tenant).await, new);
}

/// `event_counts` that fails on one position and remembers the first
/// position it was given.
struct Flaky {
    fail_at: Option<Position>,
    first_seen: std::sync::Mutex<Option<Position>>,
}

impl Flaky {
    fn new(fail_at: Option<Position>) -> Flaky {
        Flaky { fail_at, first_seen: std::sync::Mutex::new(None) }
    }
}

#[async_trait::async_trait]
impl Projection for Flaky {
    fn name(&self) -> &'static str {
        EventCounts.name()
    }
    fn version(&self) -> u32 {
        EventCounts.version()
    }
    fn tables(&self) -> &'static [Table] {
        EventCounts.tables()
    }
    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        if let Some(event) = events.iter().find(|e| Some(e.position) == self.fail_at) {
            return Err(spool_projections::Error::apply("event_counts", event, "flaky"));
        }
        self.first_seen.lock().expect("lock").get_or_insert(events[0].position);
        EventCounts.apply(connection, tables, events).await
    }
}

pub(crate) async fn an_interrupted_build_resumes_from_its_own_checkpoint(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let head = append(log.as_ref(), traffic(&[tenant], 100, at("2026-03-01T10:00:00Z"))).await;

    let failing = Running::start(
        log.clone(),
        &store.views,
        vec![Arc::new(Flaky::new(Some(Position(35))))],
        10,
    );
    failing.handle.wait_for(head).await.expect_err("fails mid-build");
    failing.stop().await.expect_err("reports the failure");
    let building: Option<i64> = sqlx::query_scalar(
        "SELECT build_generation FROM spool_projections WHERE name = 'event_counts'",
    )
    .fetch_one(store.views.pool())
    .await
    .expect("registry");
    let build_checkpoint: i64 = sqlx::query_scalar(
        "SELECT position FROM spool_projection_checkpoints \
         WHERE projection = 'event_counts' AND generation = 1 AND log_partition = 0",
    )
    .fetch_one(store.views.pool())
    .await
    .expect("build checkpoint");
    assert_eq!((building, build_checkpoint), (Some(1), 30));
    assert!(counts(&store.views, tenant).await.is_empty(), "nothing swapped in yet");

    let healthy = Arc::new(Flaky::new(None));
    let running = Running::start(log.clone(), &store.views, vec![healthy.clone()], 10);
    running.handle.wait_for(head).await.expect("caught up");
    running.stop().await.expect("stop");
    assert_eq!(*healthy.first_seen.lock().expect("lock"), Some(Position(31)));
    let total: u64 = counts(&store.views, tenant).await.iter().map(|c| c.count).sum();
    assert_eq!(total, 100);
}

pub(crate) async fn rebuilding_an_empty_log_swaps_in_empty_tables(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let report = spool_projections::rebuild(log, &store.views, Arc::new(EventCounts), |_| {})
        .await
        .expect("rebuild");
    assert_eq!(report.events, 0);
    assert!(counts(&store.views, TenantId::new()).await.is_empty());
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM spool_projections WHERE name = 'event_counts'")
            .fetch_one(store.views.pool())
            .await
            .expect("registry");
    assert_eq!(version, 1);
}
