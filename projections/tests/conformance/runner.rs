//! The runner: order, checkpoints committed with the rows, restarts,
//! version bumps that rebuild in shadow tables, and failures that stop.

use std::sync::{Arc, Mutex};

use crate::support::*;
use spool_log::{SqliteLog, SqliteOptions, StoredEvent};
use spool_projections::event_counts::{EventCounts, MinuteCount};
use spool_projections::{
    Connection, Error, Projection, ProjectionState, Result, Table, Tables, Views,
};
use spool_schemas::{Position, TenantId};

/// `event_counts` under another version, to play a code change.
struct EventCountsVersion(u32);

#[async_trait::async_trait]
impl Projection for EventCountsVersion {
    fn name(&self) -> &'static str {
        EventCounts.name()
    }
    fn version(&self) -> u32 {
        self.0
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
        EventCounts.apply(connection, tables, events).await
    }
}

/// Records every position it sees, and cannot apply `poison.pill`.
struct Poison;

static POISON_TABLES: [Table; 1] = [Table {
    name: "poison_seen",
    create: &["CREATE TABLE {table} (position BIGINT PRIMARY KEY)"],
}];

#[async_trait::async_trait]
impl Projection for Poison {
    fn name(&self) -> &'static str {
        "poison"
    }
    fn version(&self) -> u32 {
        1
    }
    fn tables(&self) -> &'static [Table] {
        &POISON_TABLES
    }
    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        for event in events {
            if event.type_name == "poison.pill" {
                return Err(Error::apply("poison", event, "cannot digest it"));
            }
            sqlx::query(&format!(
                "INSERT INTO {} (position) VALUES ($1)",
                tables.get("poison_seen")
            ))
            .bind(event.position.0 as i64)
            .execute(&mut *connection)
            .await?;
        }
        Ok(())
    }
}

async fn rebuilt_counts(
    kind: Kind,
    log: Arc<dyn spool_log::Log>,
    tenant: TenantId,
) -> Vec<MinuteCount> {
    let fresh = kind.open().await;
    spool_projections::rebuild(log, &fresh.views, Arc::new(EventCounts), |_| {})
        .await
        .expect("rebuild");
    counts(&fresh.views, tenant).await
}

/// The serving version, generation, and checkpoint of partition 0.
async fn registry_row(views: &Views, name: &str) -> (i64, i64, i64) {
    let (version, generation): (i64, i64) =
        sqlx::query_as("SELECT version, generation FROM spool_projections WHERE name = $1")
            .bind(name)
            .fetch_one(views.pool())
            .await
            .expect("registry row");
    let checkpoint: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM spool_projection_checkpoints \
         WHERE projection = $1 AND generation = $2 AND log_partition = 0",
    )
    .bind(name)
    .bind(generation)
    .fetch_optional(views.pool())
    .await
    .expect("checkpoint row");
    (version, generation, checkpoint.unwrap_or(0))
}

pub(crate) async fn a_restarted_runner_neither_skips_nor_double_counts(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenants = [TenantId::new(), TenantId::new()];
    let start = at("2026-03-01T10:00:00Z");

    let first = append(log.as_ref(), traffic(&tenants, 500, start)).await;
    let running = Running::start(log.clone(), &store.views, vec![Arc::new(EventCounts)], 64);
    running.handle.wait_for(first).await.expect("caught up");
    // Appends while the runner follows the log are picked up live.
    let second = append(log.as_ref(), traffic(&tenants, 300, start)).await;
    running.handle.wait_for(second).await.expect("caught up");
    running.stop().await.expect("clean stop");

    let third = append(log.as_ref(), traffic(&tenants, 200, start)).await;
    let running = Running::start(log.clone(), &store.views, vec![Arc::new(EventCounts)], 64);
    running.handle.wait_for(third).await.expect("caught up");
    let status = running.handle.status();
    running.stop().await.expect("clean stop");

    assert_eq!(status[0].state, ProjectionState::Live);
    assert_eq!((status[0].checkpoint.to_string(), status[0].lag), ("1000".to_owned(), 0));
    for tenant in tenants {
        let live = counts(&store.views, tenant).await;
        assert_eq!(live.iter().map(|c| c.count).sum::<u64>(), 500);
        assert_eq!(live, rebuilt_counts(kind, log.clone(), tenant).await);
    }
    assert_eq!(registry_row(&store.views, "event_counts").await.2, 1_000);
}

pub(crate) async fn the_runner_follows_a_sqlite_log_as_it_grows(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn spool_log::Log> = Arc::new(
        SqliteLog::open(dir.path().join("log.db"), SqliteOptions::default())
            .await
            .expect("open log"),
    );
    let store = kind.open().await;
    let views = &store.views;
    let tenant = TenantId::new();
    let running = Running::start(log.clone(), views, spool_projections::builtin(), 100);
    let mut last = Position::ZERO;
    for round in 0..5 {
        let start = at("2026-03-01T10:00:00Z") + chrono::Duration::minutes(round);
        last = append(log.as_ref(), traffic(&[tenant], 150, start)).await;
        running.handle.wait_for(last).await.expect("caught up");
    }
    assert!(running.handle.status().iter().all(|s| s.checkpoint.get(0) == last));
    running.stop().await.expect("clean stop");
    let total: u64 = counts(views, tenant).await.iter().map(|c| c.count).sum();
    assert_eq!(total, 750);
    assert_eq!(counts(views, tenant).await, rebuilt_counts(kind, log, tenant).await);
}

pub(crate) async fn a_version_bump_rebuilds_in_shadow_tables_and_swaps_on_start(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let head = append(log.as_ref(), traffic(&[tenant], 400, at("2026-03-01T10:00:00Z"))).await;

    let running =
        Running::start(log.clone(), &store.views, vec![Arc::new(EventCountsVersion(1))], 50);
    running.handle.wait_for(head).await.expect("caught up");
    running.stop().await.expect("clean stop");
    let (version, generation, checkpoint) = registry_row(&store.views, "event_counts").await;
    assert_eq!((version, checkpoint), (1, 400));
    let before = counts(&store.views, tenant).await;

    let running =
        Running::start(log.clone(), &store.views, vec![Arc::new(EventCountsVersion(2))], 50);
    running.handle.wait_for(head).await.expect("caught up");
    let status = running.handle.status();
    running.stop().await.expect("clean stop");

    assert_eq!((status[0].version, &status[0].state), (2, &ProjectionState::Live));
    let (version, new_generation, checkpoint) = registry_row(&store.views, "event_counts").await;
    assert_eq!((version, checkpoint), (2, 400));
    assert!(new_generation > generation);
    assert_eq!(counts(&store.views, tenant).await, before);
    let tables = physical_tables(&store.views).await;
    let ours: Vec<_> = tables.iter().filter(|t| t.starts_with("event_counts")).collect();
    assert_eq!(ours, [&format!("event_counts_g{new_generation}")], "old generation dropped");
}

pub(crate) async fn a_failing_projection_stops_at_the_event_and_names_its_position(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let start = at("2026-03-01T10:00:00Z");
    append(log.as_ref(), traffic(&[tenant], 10, start)).await;
    let pill = append(log.as_ref(), vec![app(tenant, "poison.pill", start)]).await;
    let head = append(log.as_ref(), traffic(&[tenant], 10, start)).await;
    assert_eq!(pill, Position(11));

    let running = Running::start(
        log.clone(),
        &store.views,
        // `wait_for` looks at projections in this order, so the healthy
        // one is caught up by the time the failure is reported.
        vec![Arc::new(EventCounts), Arc::new(Poison)],
        4,
    );
    let error = running.handle.wait_for(head).await.expect_err("poison fails");
    assert!(
        matches!(&error, Error::Failed { projection: "poison", message } if message.contains("position 11")),
        "{error}"
    );
    let status = running.handle.status();
    let stopped = running.stop().await.expect_err("run reports the failure");
    assert!(matches!(stopped, Error::Apply { projection: "poison", position: Position(11), .. }));

    let poison = status.iter().find(|s| s.name == "poison").expect("poison status");
    assert!(matches!(&poison.state, ProjectionState::Failed(m) if m.contains("position 11")));
    // The batch holding the pill was not committed, and nothing after it.
    // It failed during its first build, so its shadow tables never served.
    assert_eq!(poison.checkpoint.to_string(), "8");
    let shadow: Vec<i64> = sqlx::query_scalar("SELECT position FROM poison_seen_g1 ORDER BY 1")
        .fetch_all(store.views.pool())
        .await
        .expect("shadow rows");
    assert_eq!(shadow, (1..=8).collect::<Vec<_>>());
    let serving: Vec<i64> = sqlx::query_scalar("SELECT position FROM poison_seen")
        .fetch_all(store.views.pool())
        .await
        .expect("serving rows");
    assert!(serving.is_empty());
    // The other projection is not held back.
    let counts_status = status.iter().find(|s| s.name == "event_counts").expect("status");
    assert_eq!(counts_status.state, ProjectionState::Live);
    assert_eq!(counts_status.checkpoint.get(0), head);

    // The stored failure is visible without a runner.
    let stored: Option<String> =
        sqlx::query_scalar("SELECT error FROM spool_projections WHERE name = 'poison'")
            .fetch_one(store.views.pool())
            .await
            .expect("registry");
    assert!(stored.is_some_and(|m| m.contains("position 11")));
}

pub(crate) async fn stored_status_reports_lag_without_a_runner(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let before = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    assert!(before.iter().all(|s| s.state == ProjectionState::Building && s.version == 0));

    let built = append(log.as_ref(), traffic(&[tenant], 30, at("2026-03-01T10:00:00Z"))).await;
    for projection in spool_projections::builtin() {
        spool_projections::rebuild(log.clone(), &store.views, projection, |_| {})
            .await
            .expect("rebuild");
    }
    append(log.as_ref(), traffic(&[tenant], 12, at("2026-03-01T11:00:00Z"))).await;
    let after = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    let names: Vec<_> = after.iter().map(|s| s.name.as_str()).collect();
    let builtin: Vec<_> = spool_projections::builtin().iter().map(|p| p.name()).collect();
    assert_eq!(names, builtin);
    for status in after {
        assert_eq!(status.state, ProjectionState::Live);
        let version = spool_projections::find(&status.name).expect("built in").version();
        assert_eq!((status.version, status.checkpoint.get(0), status.lag), (version, built, 12));
    }
}

pub(crate) async fn views_reopen_with_their_checkpoints(kind: Kind) {
    let log = memory_log();
    let mut store = kind.open().await;
    let tenant = TenantId::new();
    let head = append(log.as_ref(), traffic(&[tenant], 20, at("2026-03-01T10:00:00Z"))).await;
    let running = Running::start(log.clone(), &store.views, spool_projections::builtin(), 7);
    running.handle.wait_for(head).await.expect("caught up");
    running.stop().await.expect("stop");
    store.reopen().await;
    let status = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    assert!(status.iter().all(|s| s.checkpoint.get(0) == head && s.state == ProjectionState::Live));
    assert_eq!(counts(&store.views, tenant).await.iter().map(|c| c.count).sum::<u64>(), 20);
}

/// The feed reads ahead on the guess that each read ends `batch` events
/// later; the in-memory log examines at most 10,000 positions per read, so
/// a larger batch breaks the guess and the reads must be issued again.
pub(crate) async fn batches_larger_than_the_logs_read_window_stay_consecutive(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenants = [TenantId::new(), TenantId::new()];
    let head = append(log.as_ref(), traffic(&tenants, 30_000, at("2026-03-01T10:00:00Z"))).await;
    let running = Running::start(log.clone(), &store.views, vec![Arc::new(EventCounts)], 12_000);
    running.handle.wait_for(head).await.expect("caught up");
    running.stop().await.expect("stop");
    for tenant in tenants {
        let live = counts(&store.views, tenant).await;
        assert_eq!(live.iter().map(|c| c.count).sum::<u64>(), 15_000);
        assert_eq!(live, rebuilt_counts(kind, log.clone(), tenant).await);
    }
}

/// Regression: an interrupted `spool projections rebuild` left a build of
/// the serving version in the registry; the runner ignored it and status
/// showed the projection as building forever. The runner now drops it.
pub(crate) async fn an_interrupted_rebuild_of_the_serving_version_is_dropped_on_start(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let head = append(log.as_ref(), traffic(&[tenant], 20, at("2026-03-01T10:00:00Z"))).await;
    let running = Running::start(log.clone(), &store.views, vec![Arc::new(EventCounts)], 7);
    running.handle.wait_for(head).await.expect("caught up");
    running.stop().await.expect("stop");
    let (version, generation, _) = registry_row(&store.views, "event_counts").await;

    // What a rebuild killed half way leaves: a build row of the same
    // version and its registered shadow table.
    let stale = generation + 1;
    sqlx::query(
        "UPDATE spool_projections SET build_version = $1, build_generation = $2 \
         WHERE name = 'event_counts'",
    )
    .bind(version)
    .bind(stale)
    .execute(store.views.pool())
    .await
    .expect("registry");
    sqlx::query(
        "INSERT INTO spool_projection_checkpoints (projection, generation, log_partition, position) \
         VALUES ('event_counts', $1, 0, 5)",
    )
    .bind(stale)
    .execute(store.views.pool())
    .await
    .expect("build checkpoint");
    sqlx::query(&format!("CREATE TABLE event_counts_g{stale} (x INTEGER)"))
        .execute(store.views.pool())
        .await
        .expect("shadow table");
    sqlx::query(
        "INSERT INTO spool_projection_tables (projection, generation, name) \
         VALUES ('event_counts', $1, 'event_counts')",
    )
    .bind(stale)
    .execute(store.views.pool())
    .await
    .expect("register");
    let before = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    assert_eq!(before[0].state, ProjectionState::Building);

    let running = Running::start(log.clone(), &store.views, vec![Arc::new(EventCounts)], 7);
    running.handle.wait_for(head).await.expect("caught up");
    assert_eq!(running.handle.status()[0].state, ProjectionState::Live);
    running.stop().await.expect("stop");

    let after = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    assert_eq!((&after[0].state, after[0].checkpoint.get(0)), (&ProjectionState::Live, head));
    assert_eq!(registry_row(&store.views, "event_counts").await, (version, generation, 20));
    let tables = physical_tables(&store.views).await;
    let ours: Vec<_> = tables.iter().filter(|t| t.starts_with("event_counts")).collect();
    assert_eq!(ours, [&format!("event_counts_g{generation}")], "the stale build's table is gone");
    assert_eq!(counts(&store.views, tenant).await.iter().map(|c| c.count).sum::<u64>(), 20);
}

/// `event_counts` reading only `order.created`, recording the types it got.
#[derive(Default)]
struct OnlyOrders(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Projection for OnlyOrders {
    fn name(&self) -> &'static str {
        EventCounts.name()
    }
    fn version(&self) -> u32 {
        1
    }
    fn tables(&self) -> &'static [Table] {
        EventCounts.tables()
    }
    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&["order.created"])
    }
    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        self.0.lock().expect("lock").extend(events.iter().map(|e| e.type_name.clone()));
        EventCounts.apply(connection, tables, events).await
    }
}

pub(crate) async fn a_projection_reads_only_its_event_types_and_its_checkpoint_passes_the_rest(
    kind: Kind,
) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new();
    let start = at("2026-03-01T10:00:00Z");
    let mixed = |n: usize| -> Vec<spool_log::NewEvent> {
        (0..n)
            .map(|i| app(tenant, if i % 3 == 0 { "order.created" } else { "order.paid" }, start))
            .collect()
    };
    // Built from the log as it stands, then followed live.
    append(log.as_ref(), mixed(30)).await;
    let only = Arc::new(OnlyOrders::default());
    let running = Running::start(log.clone(), &store.views, vec![only.clone()], 4);
    let last = append(log.as_ref(), mixed(9)).await;
    running.handle.wait_for(last).await.expect("caught up");

    assert_eq!(*only.0.lock().expect("lock"), vec!["order.created".to_owned(); 13]);
    assert_eq!(
        running.handle.status()[0].checkpoint.get(0),
        last,
        "the checkpoint passes the rest"
    );
    running.stop().await.expect("clean stop");
    let counted: Vec<(String, u64)> = counts(&store.views, tenant)
        .await
        .into_iter()
        .map(|count| (count.event_type, count.count))
        .collect();
    assert_eq!(counted, vec![("order.created".to_owned(), 13)]);
}
