//! Kafka log append throughput against raw rdkafka producing the same
//! payloads (the same envelope JSON, keys and partitions, idempotent,
//! acks=all) to the same broker in the same run, driven the same way: 256
//! tasks each awaiting one delivery, or batches of 512 awaited whole. Prints
//! the ratios, and raw pipelined produce for reference.
//!
//! `cargo bench -p spool-benches --bench kafka_append`
//!
//! Uses the broker at `SPOOL_TEST_KAFKA` if set, else starts one with
//! `scripts/broker` (and stops it at the end).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use spool_log::{Append, KafkaLog, KafkaOptions, Log, NewEvent};
use spool_schemas::{AppEvent, AppEventType, Envelope, Event, StreamName, TenantId};

const STREAMS: u64 = 1_000;
const PARTITIONS: u32 = 4;
const EVENTS_PER_ITERATION: u64 = 10_240;

static RESULTS: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

fn record(name: &str, events: u64, elapsed: Duration) {
    let rate = events as f64 / elapsed.as_secs_f64();
    let mut results = RESULTS.lock().unwrap();
    match results.iter_mut().find(|(n, _)| n == name) {
        Some((_, best)) => *best = best.max(rate),
        None => results.push((name.to_owned(), rate)),
    }
}

fn event(tenant: TenantId, n: u64) -> NewEvent {
    NewEvent::new(
        tenant,
        StreamName::new(format!("order/{}", n % STREAMS)).unwrap(),
        Event::App(AppEvent {
            event_type: AppEventType::new("order.updated").unwrap(),
            data: serde_json::json!({"order": n, "status": "paid", "total_cents": 12_999, "currency": "EUR", "lines": 3}),
        }),
    )
}

struct Broker {
    address: String,
    started: bool,
}

impl Broker {
    fn get() -> Broker {
        if let Ok(address) = std::env::var("SPOOL_TEST_KAFKA") {
            return Broker { address, started: false };
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/broker");
        let output = std::process::Command::new(script).output().expect("run scripts/broker");
        assert!(
            output.status.success(),
            "scripts/broker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Broker {
            address: String::from_utf8(output.stdout).unwrap().trim().to_owned(),
            started: true,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.started {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/broker");
            let _ = std::process::Command::new(script).arg("stop").status();
        }
    }
}

fn topic() -> String {
    format!("spool-bench-{}", uuid::Uuid::now_v7())
}

async fn open(brokers: &str) -> Arc<KafkaLog> {
    let options = KafkaOptions { partitions: PARTITIONS, ..KafkaOptions::new(brokers, topic()) };
    Arc::new(KafkaLog::open(options).await.unwrap())
}

/// How the raw producer is driven: the way each Spool case appends.
#[derive(Clone, Copy)]
enum Pattern {
    /// Everything enqueued at once, then every delivery awaited: what
    /// rdkafka can do with nobody waiting (a reference, not a baseline).
    Pipelined,
    /// 256 tasks, each awaiting one record's delivery before the next.
    ConcurrentSingles,
    /// 512 records at a time, all delivered before the next 512.
    Batches,
}

/// The records Spool would write (same envelopes, keys, partitions and
/// producer settings), produced by rdkafka alone in `pattern`.
async fn raw_produce(brokers: &str, tenant: TenantId, pattern: Pattern) -> Duration {
    // The topic is created the same way, by opening a log on it; the log is
    // dropped first so that its follower does not compete with the producer.
    let log = open(brokers).await;
    let topic = log.options().topic.clone();
    log.close().await.unwrap();
    drop(log);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let records: Vec<(String, Vec<u8>, i32)> = (0..EVENTS_PER_ITERATION)
        .map(|n| {
            let new = event(tenant, n);
            let envelope = Envelope {
                id: new.id,
                tenant: new.tenant,
                stream: new.stream.clone(),
                stream_version: n / STREAMS + 1,
                recorded_at: new.recorded_at,
                causation_id: None,
                correlation_id: None,
                position: None,
                event: new.event,
            };
            let partition = spool_log::partition_for(tenant, &new.stream, PARTITIONS) as i32;
            (
                spool_log::stream_key(tenant, &new.stream),
                serde_json::to_vec(&envelope).unwrap(),
                partition,
            )
        })
        .collect();
    // Connected, with its producer id, before the clock starts, as the
    // log's producer is.
    let (key, value, partition) = &records[0];
    let warm_up = FutureRecord::to(&topic).partition(*partition).key(key).payload(value);
    producer.send(warm_up, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    let send_all = |chunk: &[(String, Vec<u8>, i32)]| {
        chunk
            .iter()
            .map(|(key, value, partition)| {
                let record = FutureRecord::to(&topic).partition(*partition).key(key).payload(value);
                producer.send_result(record).map_err(|(e, _)| e).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    match pattern {
        Pattern::Pipelined => {
            for delivery in send_all(&records) {
                delivery.await.unwrap().unwrap();
            }
        }
        Pattern::Batches => {
            for chunk in records.chunks(512) {
                for delivery in send_all(chunk) {
                    delivery.await.unwrap().unwrap();
                }
            }
        }
        Pattern::ConcurrentSingles => {
            let per_task = records.len() / 256;
            let records = Arc::new(records);
            let tasks: Vec<_> = (0..256)
                .map(|task| {
                    let (producer, records, topic) =
                        (producer.clone(), records.clone(), topic.clone());
                    tokio::spawn(async move {
                        for (key, value, partition) in &records[task * per_task..][..per_task] {
                            let record = FutureRecord::to(&topic)
                                .partition(*partition)
                                .key(key)
                                .payload(value);
                            producer
                                .send(record, Duration::from_secs(10))
                                .await
                                .map_err(|(e, _)| e)
                                .unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
    }
    started.elapsed()
}

async fn concurrent_singles(brokers: &str, tenant: TenantId, appenders: u64) -> Duration {
    let log = open(brokers).await;
    let per_appender = EVENTS_PER_ITERATION / appenders;
    let events: Vec<Vec<NewEvent>> = (0..appenders)
        .map(|a| (0..per_appender).map(|i| event(tenant, a * per_appender + i)).collect())
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = events
        .into_iter()
        .map(|events| {
            let log = log.clone();
            tokio::spawn(async move {
                for event in events {
                    log.append(Append::new(vec![event])).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    log.close().await.unwrap();
    elapsed
}

async fn batches(brokers: &str, tenant: TenantId) -> Duration {
    let log = open(brokers).await;
    let batches: Vec<Vec<NewEvent>> = (0..EVENTS_PER_ITERATION / 512)
        .map(|b| (0..512).map(|i| event(tenant, b * 512 + i)).collect())
        .collect();
    let started = Instant::now();
    for batch in batches {
        log.append(Append::new(batch)).await.unwrap();
    }
    let elapsed = started.elapsed();
    log.close().await.unwrap();
    elapsed
}

fn bench(c: &mut Criterion, brokers: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("kafka_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(EVENTS_PER_ITERATION));
    type Case = fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>;
    let cases: [(&str, Case); 5] = [
        ("raw_produce_pipelined", |b| {
            Box::pin(async move { raw_produce(&b, TenantId::new(), Pattern::Pipelined).await })
        }),
        ("raw_produce_256_concurrent_singles", |b| {
            Box::pin(
                async move { raw_produce(&b, TenantId::new(), Pattern::ConcurrentSingles).await },
            )
        }),
        ("256_concurrent_single_event_appenders", |b| {
            Box::pin(async move { concurrent_singles(&b, TenantId::new(), 256).await })
        }),
        ("raw_produce_batches_of_512", |b| {
            Box::pin(async move { raw_produce(&b, TenantId::new(), Pattern::Batches).await })
        }),
        ("batches_of_512", |b| Box::pin(async move { batches(&b, TenantId::new()).await })),
    ];
    for (name, case) in cases {
        group.bench_function(name, |bencher| {
            bencher.to_async(&runtime).iter_custom(|iterations| {
                let brokers = brokers.to_owned();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let elapsed = case(brokers.clone()).await;
                        record(name, EVENTS_PER_ITERATION, elapsed);
                        total += elapsed;
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

fn main() {
    let broker = Broker::get();
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &broker.address);
    criterion.final_summary();
    let results = RESULTS.lock().unwrap();
    let rate = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, rate)| *rate);
    println!("\nbest events/s per case; each Spool case against raw rdkafka producing the same");
    println!("records the same way (awaiting each delivery as the append awaits its answer):");
    for (name, rate) in results.iter() {
        println!("{name:45} {rate:>12.0} events/s");
    }
    for (spool, raw) in [
        ("256_concurrent_single_event_appenders", "raw_produce_256_concurrent_singles"),
        ("batches_of_512", "raw_produce_batches_of_512"),
    ] {
        if let (Some(spool_rate), Some(raw_rate)) = (rate(spool), rate(raw)) {
            println!("{spool:45} {:>5.2}x {raw}", spool_rate / raw_rate);
        }
    }
}
