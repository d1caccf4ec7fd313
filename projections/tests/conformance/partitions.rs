//! The runner and rebuilds on a partitioned log: whatever the interleaving
//! of partitions, the rows equal a rebuild's; checkpoints are per partition;
//! lag sums over partitions; runners may split the partitions.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::support::*;
use spool_log::{Cursor, StoredEvent, partition_for};
use spool_projections::auth::{self, Auth};
use spool_projections::event_counts::EventCounts;
use spool_projections::{
    Connection, Error, Projection, ProjectionState, Result, Runner, RunnerOptions, Table, Tables,
};
use spool_schemas::{KeyId, Position, Scope, StreamName, TenantId};

const WAIT: Duration = Duration::from_secs(20);

/// `event_counts` (of any version) that records every event it applies,
/// and can pause in the middle of a batch once it has applied some events.
struct Recording {
    version: u32,
    applied: Mutex<Vec<(u32, Position)>>,
    /// Pauses in the first batch that finds this many events applied.
    pause_after: Option<usize>,
    paused: Notify,
    release: Semaphore,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            version: 1,
            applied: Mutex::default(),
            pause_after: None,
            paused: Notify::new(),
            release: Semaphore::new(0),
        }
    }
}

impl Recording {
    fn version(version: u32) -> Recording {
        Recording { version, ..Recording::default() }
    }

    fn pausing_after(events: usize) -> Recording {
        Recording { pause_after: Some(events), ..Recording::default() }
    }

    fn applied(&self) -> Vec<(u32, Position)> {
        self.applied.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl Projection for Recording {
    fn name(&self) -> &'static str {
        EventCounts.name()
    }
    fn version(&self) -> u32 {
        self.version
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
        let partition = events[0].partition;
        assert!(events.iter().all(|event| event.partition == partition), "one partition a batch");
        assert!(events.windows(2).all(|pair| pair[0].position < pair[1].position), "in order");
        EventCounts.apply(connection, tables, events).await?;
        let applied_before = {
            let mut applied = self.applied.lock().expect("lock");
            applied.extend(events.iter().map(|event| (event.partition, event.position)));
            applied.len() - events.len()
        };
        if self
            .pause_after
            .is_some_and(|pause| applied_before < pause && applied_before + events.len() >= pause)
        {
            self.paused.notify_one();
            self.release.acquire().await.expect("open semaphore").forget();
        }
        Ok(())
    }
}

async fn wait(handle: &spool_projections::RunnerHandle, target: &Cursor) {
    tokio::time::timeout(WAIT, handle.wait_for(target)).await.expect("in time").expect("caught up");
}

fn events_in(cursor: &Cursor) -> u64 {
    (0..cursor.partitions()).map(|p| cursor.get(p).0).sum()
}

pub(crate) async fn the_live_runner_on_four_partitions_builds_what_a_rebuild_builds(kind: Kind) {
    let log = partitioned_log(4);
    let store = kind.open().await;
    let running = Running::start(log.clone(), &store.views, spool_projections::builtin(), 3);
    let start = at("2026-03-01T10:00:00Z");
    let tenants: Vec<TenantId> = (0..5).map(|_| TenantId::new()).collect();
    let keys: Vec<KeyId> = (0..10).map(|_| KeyId::new()).collect();

    for (round, tenant) in tenants.iter().enumerate() {
        let mut events = vec![tenant_created(*tenant, "t", start)];
        for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % tenants.len() == round) {
            let secret_hash = format!("hash{i}");
            events.push(key_created(*tenant, *key, &secret_hash, vec![Scope::Admin], None, start));
        }
        events.extend(spread_traffic(&tenants, 150, start));
        let appended = append_all(log.as_ref(), events).await;
        wait(&running.handle, &cursor_of(&appended)).await;
    }
    // Revocations, each in its key's stream, so after its creation.
    let revocations = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, key)| key_revoked(tenants[i % tenants.len()], *key, start))
        .collect();
    append_all(log.as_ref(), revocations).await;
    append_all(log.as_ref(), spread_traffic(&tenants, 333, start)).await;
    let head = heads(log.as_ref());
    assert!((0..4).all(|p| head.get(p) > Position::ZERO), "every partition holds events: {head}");
    wait(&running.handle, &head).await;
    let status = running.handle.status();
    running.stop().await.expect("clean stop");

    for projection in &status {
        assert_eq!(projection.state, ProjectionState::Live);
        assert_eq!((projection.checkpoint.to_string(), projection.lag), (head.to_string(), 0));
    }
    let live = dump(&store.views).await;
    assert_eq!(
        live,
        rebuilt_dump(kind, log.clone()).await,
        "the live runner and a rebuild disagree"
    );
    let revoked = auth::key(&store.views, keys[0]).await.expect("query").expect("key");
    assert!(revoked.revoked);
    assert!(!auth::key(&store.views, keys[1]).await.expect("query").expect("key").revoked);
}

/// The cursor an append reached: each partition it wrote, at its last
/// position there.
fn cursor_of(appended: &[spool_log::Appended]) -> Cursor {
    let mut cursor = Cursor::start(4);
    for a in appended {
        cursor.set(a.partition, cursor.get(a.partition).max(a.position));
    }
    cursor
}

pub(crate) async fn a_restarted_runner_resumes_every_partition_from_its_own_checkpoint(kind: Kind) {
    let log = partitioned_log(4);
    let store = kind.open().await;
    let tenants = [TenantId::new(), TenantId::new(), TenantId::new()];
    let start = at("2026-03-01T10:00:00Z");
    append_all(log.as_ref(), spread_traffic(&tenants, 2_000, start)).await;

    // Stopped in the middle of building, wherever each partition is: the
    // stop is asked for while a batch is being applied, and takes effect
    // once it is committed.
    let first = Arc::new(Recording::pausing_after(200));
    let running = Running::start(log.clone(), &store.views, vec![first.clone(), Arc::new(Auth)], 5);
    tokio::time::timeout(WAIT, first.paused.notified()).await.expect("some progress");
    let stopping = tokio::spawn(running.stop());
    tokio::task::yield_now().await;
    first.release.add_permits(1);
    stopping.await.expect("stop task").expect("clean stop");
    let stopped_at = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    let stopped_at = stopped_at[0].checkpoint.clone();
    assert!(events_in(&stopped_at) < 2_000, "stopped before the end: {stopped_at}");

    append_all(log.as_ref(), spread_traffic(&tenants, 500, start)).await;
    let second = Arc::new(Recording::default());
    let running =
        Running::start(log.clone(), &store.views, vec![second.clone(), Arc::new(Auth)], 64);
    let head = heads(log.as_ref());
    wait(&running.handle, &head).await;
    running.stop().await.expect("clean stop");

    for (partition, position) in second.applied() {
        assert!(
            position > stopped_at.get(partition),
            "partition {partition} position {position} applied again after {stopped_at}"
        );
    }
    let mut applied = first.applied();
    applied.extend(second.applied());
    let unique: BTreeSet<_> = applied.iter().copied().collect();
    assert_eq!((applied.len(), unique.len()), (2_500, 2_500), "every event exactly once");
    let mut total = 0;
    for tenant in tenants {
        total += counts(&store.views, tenant).await.iter().map(|c| c.count).sum::<u64>();
    }
    assert_eq!(total, 2_500);
    assert_eq!(dump(&store.views).await, rebuilt_dump(kind, log).await);
}

pub(crate) async fn status_shows_cursors_and_lag_summed_over_partitions(kind: Kind) {
    let log = partitioned_log(4);
    let store = kind.open().await;
    let tenants = [TenantId::new(), TenantId::new()];
    let start = at("2026-03-01T10:00:00Z");
    append_all(log.as_ref(), spread_traffic(&tenants, 200, start)).await;
    for projection in spool_projections::builtin() {
        spool_projections::rebuild(log.clone(), &store.views, projection, |_| {})
            .await
            .expect("rebuild");
    }
    let built = heads(log.as_ref());
    append_all(log.as_ref(), spread_traffic(&tenants, 40, start)).await;
    let head = heads(log.as_ref());
    assert_eq!(head.to_string().split('.').count(), 4, "{head}");

    let stored = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    for status in &stored {
        assert_eq!(status.state, ProjectionState::Live);
        assert_eq!((&status.checkpoint, &status.head, status.lag), (&built, &head, 40));
    }
    let json = serde_json::to_value(&stored[0]).expect("serializes");
    assert_eq!(json["checkpoint"], built.to_string());
    assert_eq!(json["head"], head.to_string());

    let running = Running::start(log.clone(), &store.views, spool_projections::builtin(), 8);
    wait(&running.handle, &head).await;
    for status in running.handle.status() {
        assert_eq!((&status.checkpoint, &status.head, status.lag), (&head, &head, 0));
    }
    // What an append returned is a target; a bare position is not, here.
    let appended = append_all(log.as_ref(), spread_traffic(&tenants, 7, start)).await;
    tokio::time::timeout(WAIT, running.handle.wait_for(&appended))
        .await
        .expect("in time")
        .expect("caught up");
    let checkpoint = running.handle.status()[0].checkpoint.clone();
    assert!(appended.iter().all(|a| checkpoint.get(a.partition) >= a.position));
    let refused = running.handle.wait_for(Position(1)).await.expect_err("ambiguous");
    assert!(matches!(&refused, Error::Invalid(m) if m.contains("4 partitions")), "{refused}");
    let refused = running.handle.wait_for(Cursor::start(5)).await.expect_err("too many");
    assert!(matches!(refused, Error::Invalid(_)), "{refused}");
    running.stop().await.expect("clean stop");
}

pub(crate) async fn rebuilds_and_version_bumps_cover_every_partition(kind: Kind) {
    let log = partitioned_log(4);
    let store = kind.open().await;
    let tenant = TenantId::new();
    append_all(log.as_ref(), spread_traffic(&[tenant], 12_000, at("2026-03-01T10:00:00Z"))).await;
    let head = heads(log.as_ref());

    let mut progress = Vec::new();
    let report = spool_projections::rebuild(
        log.clone(),
        &store.views,
        Arc::new(Recording::version(1)),
        |step| progress.push(step),
    )
    .await
    .expect("rebuild");
    assert_eq!(report.events, 12_000);
    let last = progress.last().expect("progress");
    assert_eq!((&last.applied, &last.head), (&head, &head));
    assert_eq!((last.applied_events(), last.head_events()), (12_000, 12_000));
    assert!(progress.windows(2).all(|pair| pair[0].applied_events() < pair[1].applied_events()));
    assert!(progress.len() >= 4, "batches of every partition: {}", progress.len());
    let before = counts(&store.views, tenant).await;
    assert_eq!(before.iter().map(|c| c.count).sum::<u64>(), 12_000);

    // A new version is built in shadow tables from every partition.
    let bumped = Arc::new(Recording::version(2));
    let running = Running::start(log.clone(), &store.views, vec![bumped.clone()], 500);
    wait(&running.handle, &head).await;
    let status = running.handle.status();
    running.stop().await.expect("clean stop");
    assert_eq!((status[0].version, &status[0].state), (2, &ProjectionState::Live));
    assert_eq!(bumped.applied().len(), 12_000);
    assert_eq!(counts(&store.views, tenant).await, before);
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT generation, log_partition, position FROM spool_projection_checkpoints \
         WHERE projection = 'event_counts' ORDER BY log_partition",
    )
    .fetch_all(store.views.pool())
    .await
    .expect("checkpoints");
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM spool_projections WHERE name = 'event_counts'")
            .fetch_one(store.views.pool())
            .await
            .expect("registry");
    let expected: Vec<(i64, i64, i64)> = (0..4)
        .filter(|&p| head.get(p) > Position::ZERO)
        .map(|p| (generation, i64::from(p), head.get(p).0 as i64))
        .collect();
    assert_eq!(rows, expected, "one row per partition, of the serving generation only");
}

pub(crate) async fn runners_owning_disjoint_partitions_build_the_rows_together(kind: Kind) {
    let log = partitioned_log(4);
    let store = kind.open().await;
    let tenants = [TenantId::new(), TenantId::new()];
    let start = at("2026-03-01T10:00:00Z");
    append_all(log.as_ref(), spread_traffic(&tenants, 300, start)).await;
    let runner = |owned: Vec<u32>| {
        Runner::new(log.clone(), store.views.clone(), spool_projections::builtin(), options())
            .owning(owned)
    };
    assert!(matches!(runner(vec![]).err(), Some(Error::Invalid(_))));
    assert!(matches!(runner(vec![1, 4]).err(), Some(Error::Invalid(_))));

    // A runner owning some partitions cannot build a version.
    let partial = Running::run(runner(vec![0, 1]).expect("owns 0 and 1"));
    let error = tokio::time::timeout(WAIT, partial.handle.wait_for(heads(log.as_ref())))
        .await
        .expect("in time")
        .expect_err("cannot build");
    assert!(error.to_string().contains("built from every partition"), "{error}");
    partial.stop().await.expect_err("failed");

    let whole = Running::start(log.clone(), &store.views, spool_projections::builtin(), 16);
    wait(&whole.handle, &heads(log.as_ref())).await;
    whole.stop().await.expect("clean stop");

    // Built: two runners share the partitions and follow the log.
    let low = Running::run(runner(vec![0, 1]).expect("owns 0 and 1"));
    let high = Running::run(runner(vec![3, 2, 3]).expect("owns 2 and 3"));
    assert_eq!(high.handle.owned_partitions(), [2, 3]);
    append_all(log.as_ref(), spread_traffic(&tenants, 500, start)).await;
    let head = heads(log.as_ref());
    wait(&low.handle, &head).await;
    wait(&high.handle, &head).await;
    assert_eq!(low.handle.status()[0].lag, 0, "lag of the owned partitions");
    low.stop().await.expect("clean stop");
    high.stop().await.expect("clean stop");
    let stored = spool_projections::status(&store.views, log.as_ref()).await.expect("status");
    assert!(stored.iter().all(|s| s.checkpoint == head && s.lag == 0));
    assert_eq!(dump(&store.views).await, rebuilt_dump(kind, log).await);
}

fn options() -> RunnerOptions {
    RunnerOptions { batch: 16 }
}

/// Two runners applying the same partition would count its events twice;
/// a batch whose partition's checkpoint moved since it was read is refused.
pub(crate) async fn a_batch_is_refused_when_its_partitions_checkpoint_moved_under_it(kind: Kind) {
    let log = partitioned_log(4);
    let store = kind.open().await;
    let tenant = TenantId::new();
    let start = at("2026-03-01T10:00:00Z");
    append_all(log.as_ref(), spread_traffic(&[tenant], 100, start)).await;
    let running = Running::start(log.clone(), &store.views, vec![Arc::new(EventCounts)], 16);
    wait(&running.handle, &heads(log.as_ref())).await;

    // Someone else applies partition `p` meanwhile.
    let stream = StreamName::new("order/3").expect("stream");
    let partition = partition_for(tenant, &stream, 4);
    sqlx::query(
        "UPDATE spool_projection_checkpoints SET position = position + 1 \
         WHERE projection = 'event_counts' AND log_partition = $1",
    )
    .bind(i64::from(partition))
    .execute(store.views.pool())
    .await
    .expect("move the checkpoint");
    let mut event = app(tenant, "order.created", start);
    event.stream = stream;
    let appended = append_all(log.as_ref(), vec![event]).await;
    let error = tokio::time::timeout(WAIT, running.handle.wait_for(&appended))
        .await
        .expect("in time")
        .expect_err("refused");
    assert!(error.to_string().contains("another runner applies this partition"), "{error}");
    assert!(error.to_string().contains(&format!("partition {partition}")), "{error}");
    running.stop().await.expect_err("failed");
    let total: u64 = counts(&store.views, tenant).await.iter().map(|c| c.count).sum();
    assert_eq!(total, 100, "the refused batch was rolled back");
}
