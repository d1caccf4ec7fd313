//! Projection rebuild from a Kafka log into PostgreSQL: events per second,
//! beside the same rebuild into SQLite and the replay of the topic that
//! opening the log does, measured in the same run.
//!
//! `cargo bench -p spool-benches --bench kafka_rebuild`
//!
//! Uses the broker at `SPOOL_TEST_KAFKA` (else starts one with
//! `scripts/broker`) and the PostgreSQL at `SPOOL_TEST_POSTGRES` (else the
//! machine's `postgres://postgres@127.0.0.1:5432/test`), in a schema of its
//! own that it drops at the end.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, Throughput};
use spool_log::{Append, KafkaLog, KafkaOptions, Log, NewEvent};
use spool_schemas::{AppEvent, AppEventType, Event, StreamName, TenantId};
use sqlx::Connection;

const EVENTS: usize = 100_000;
const PARTITIONS: u32 = 4;

fn broker() -> (String, bool) {
    if let Ok(address) = std::env::var("SPOOL_TEST_KAFKA") {
        return (address, false);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/broker");
    let output = std::process::Command::new(script).output().expect("run scripts/broker");
    assert!(output.status.success(), "scripts/broker: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8(output.stdout).unwrap().trim().to_owned(), true)
}

async fn fill(log: &KafkaLog) {
    let tenants = [TenantId::new(), TenantId::new(), TenantId::new()];
    let types: Vec<AppEventType> =
        (0..10).map(|i| AppEventType::new(format!("order.kind{i}")).unwrap()).collect();
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    for chunk in 0..EVENTS / 1_000 {
        let events = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                let mut event = NewEvent::new(
                    tenants[n % tenants.len()],
                    StreamName::new(format!("order/{}", n % 97)).unwrap(),
                    Event::App(AppEvent {
                        event_type: types[n % types.len()].clone(),
                        data: serde_json::json!({"n": n, "total": 12.5}),
                    }),
                );
                event.recorded_at = start + Duration::seconds(n as i64);
                event
            })
            .collect();
        log.append(Append::new(events)).await.unwrap();
    }
}

fn main() {
    let (brokers, started_broker) = broker();
    let postgres = std::env::var("SPOOL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("spool_bench_{}", uuid::Uuid::now_v7().simple());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("spool-bench-rebuild-{}", uuid::Uuid::now_v7());
    let options = KafkaOptions { partitions: PARTITIONS, ..KafkaOptions::new(&brokers, &topic) };
    let (log, postgres_views, sqlite_views) = runtime.block_on(async {
        let log = KafkaLog::open(options.clone()).await.unwrap();
        fill(&log).await;
        let mut connection = sqlx::PgConnection::connect(&postgres).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut connection).await.unwrap();
        let separator = if postgres.contains('?') { '&' } else { '?' };
        let url = format!("{postgres}{separator}options=-c%20search_path%3D{schema}");
        let postgres_views = spool_projections::Views::open(url).await.unwrap();
        let sqlite_views =
            spool_projections::Views::open(dir.path().join("views.db")).await.unwrap();
        (Arc::new(log) as Arc<dyn Log>, postgres_views, sqlite_views)
    });

    let mut criterion = Criterion::default().configure_from_args();
    {
        let mut group = criterion.benchmark_group("kafka_rebuild");
        group.sample_size(10).throughput(Throughput::Elements(EVENTS as u64));
        group.bench_function("open_log_replaying_the_topic", |b| {
            b.to_async(&runtime).iter(|| async {
                let log = KafkaLog::open(options.clone()).await.unwrap();
                log.close().await.unwrap();
            })
        });
        let event_counts = spool_projections::find("event_counts").unwrap();
        for (name, views) in [
            ("event_counts_into_postgres", &postgres_views),
            ("event_counts_into_sqlite", &sqlite_views),
        ] {
            group.bench_function(name, |b| {
                b.to_async(&runtime).iter(|| async {
                    spool_projections::rebuild(log.clone(), views, event_counts.clone(), |_| {})
                        .await
                        .unwrap()
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();

    runtime.block_on(async {
        postgres_views.close().await;
        let mut connection = sqlx::PgConnection::connect(&postgres).await.unwrap();
        let _ =
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut connection).await;
    });
    if started_broker {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/broker");
        let _ = std::process::Command::new(script).arg("stop").status();
    }
}
