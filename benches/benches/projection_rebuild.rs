//! How fast `rebuild` folds a SQLite log: events per second for each
//! built-in projection, beside a bare read of the same log as the baseline.
//!
//! `cargo bench -p spool-benches --bench projection_rebuild`

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spool_log::{Append, Durability, Filter, Log, NewEvent, SqliteLog, SqliteOptions};
use spool_schemas::{AppEvent, AppEventType, Event, Position, StreamName, TenantId};

const EVENTS: usize = 200_000;

async fn fill(log: &SqliteLog) {
    let tenants = [TenantId::new(), TenantId::new(), TenantId::new()];
    let types: Vec<AppEventType> =
        (0..10).map(|i| AppEventType::new(format!("order.kind{i}")).expect("valid type")).collect();
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("valid time");
    for chunk in 0..EVENTS / 1_000 {
        let events = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                let mut event = NewEvent::new(
                    tenants[n % tenants.len()],
                    StreamName::new(format!("order/{}", n % 97)).expect("valid stream"),
                    Event::App(AppEvent {
                        event_type: types[n % types.len()].clone(),
                        data: serde_json::json!({"n": n, "total": 12.5}),
                    }),
                );
                // 200,000 events over about 55 hours: a few hundred per minute.
                event.recorded_at = start + Duration::seconds(n as i64);
                event
            })
            .collect();
        log.append(Append::new(events)).await.expect("append");
    }
}

fn rebuild(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn Log> = runtime.block_on(async {
        let options = SqliteOptions { durability: Durability::Normal, ..SqliteOptions::default() };
        let log = SqliteLog::open(dir.path().join("log.db"), options).await.expect("open log");
        fill(&log).await;
        Arc::new(log)
    });
    let views = runtime
        .block_on(spool_projections::Views::open(dir.path().join("views.db")))
        .expect("open views");

    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("read_only_baseline", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut after = Position::ZERO;
            loop {
                let batch = log.read(0, after, 5_000, &Filter::default()).await.expect("read");
                if batch.events.is_empty() {
                    break;
                }
                after = batch.scanned_to;
            }
        })
    });
    for projection in spool_projections::builtin() {
        group.bench_function(projection.name(), |b| {
            b.to_async(&runtime).iter(|| async {
                spool_projections::rebuild(log.clone(), &views, projection.clone(), |_| {})
                    .await
                    .expect("rebuild")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
