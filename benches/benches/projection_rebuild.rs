//! How fast `rebuild` folds a SQLite log: events per second for each
//! built-in projection, beside a bare read of the same log as the baseline.
//! A second log of `api.call` records only (what every API request adds)
//! measures `usage`, the projection that decodes them all, against a bare
//! read of that log: each batch of up to 1,000 calls is summed in memory
//! and written in a few multi-row upserts.
//!
//! `cargo bench -p spool-benches --bench projection_rebuild`

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spool_log::{Append, Durability, Filter, Log, NewEvent, SqliteLog, SqliteOptions};
use spool_schemas::{
    ApiCall, AppEvent, AppEventType, Event, KeyId, Position, StreamName, TenantId,
};

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

/// 200,000 `api.call`s over about 55 hours: three tenants with four keys
/// each, six routes, mostly successes, latencies from 0.2 to 60 ms.
async fn fill_api_calls(log: &SqliteLog) {
    let tenants = [TenantId::new(), TenantId::new(), TenantId::new()];
    let keys: Vec<KeyId> = (0..12).map(|_| KeyId::new()).collect();
    let routes = [
        ("POST", "/v1/events"),
        ("GET", "/v1/events"),
        ("GET", "/v1/events/stream"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/keys"),
    ];
    let statuses = [200, 201, 200, 200, 404, 200, 429, 200, 500, 200];
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("valid time");
    for chunk in 0..EVENTS / 1_000 {
        let events = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                let key_id = keys[n % keys.len()];
                let (method, route) = routes[n % routes.len()];
                let mut event = NewEvent::new(
                    tenants[n % keys.len() / 4],
                    StreamName::for_api_calls(Some(key_id)),
                    Event::ApiCall(ApiCall {
                        key_id: Some(key_id),
                        client_id: None,
                        method: method.to_owned(),
                        route: route.to_owned(),
                        status: statuses[n % statuses.len()],
                        latency_us: 200 + (n as u64 * 7_919) % 60_000,
                    }),
                );
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

fn rebuild_usage(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn Log> = runtime.block_on(async {
        let options = SqliteOptions { durability: Durability::Normal, ..SqliteOptions::default() };
        let log = SqliteLog::open(dir.path().join("log.db"), options).await.expect("open log");
        fill_api_calls(&log).await;
        Arc::new(log)
    });
    let views = runtime
        .block_on(spool_projections::Views::open(dir.path().join("views.db")))
        .expect("open views");

    let mut group = c.benchmark_group("rebuild_api_calls");
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
    let usage = spool_projections::find("usage").expect("usage is built in");
    group.bench_function("usage", |b| {
        b.to_async(&runtime).iter(|| async {
            spool_projections::rebuild(log.clone(), &views, usage.clone(), |_| {})
                .await
                .expect("rebuild")
        })
    });
    group.finish();
}

criterion_group!(benches, rebuild, rebuild_usage);
criterion_main!(benches);
