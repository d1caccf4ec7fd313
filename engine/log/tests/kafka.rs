//! The Kafka backend against a real Kafka-protocol broker (tansu, started by
//! ./scripts/test, which sets SPOOL_TEST_KAFKA): the conformance suite, and
//! several writers on one topic.

use std::sync::Arc;

use spool_log::conformance::Harness;
use spool_log::{Append, Error, Filter, KafkaLog, KafkaOptions, Log, NewEvent};
use spool_schemas::{AppEvent, AppEventType, Event, Position, StreamName, TenantId};

fn brokers() -> String {
    std::env::var("SPOOL_TEST_KAFKA").expect(
        "SPOOL_TEST_KAFKA is not set: run the tests with ./scripts/test, which starts a broker",
    )
}

fn options(topic: &str, partitions: u32) -> KafkaOptions {
    KafkaOptions { partitions, ..KafkaOptions::new(brokers(), topic) }
}

fn fresh_topic() -> String {
    format!("spool-test-{}", uuid::Uuid::now_v7())
}

struct Kafka;

impl Harness for Kafka {
    type Log = KafkaLog;

    async fn open(&self) -> KafkaLog {
        KafkaLog::open(options(&fresh_topic(), 1)).await.unwrap()
    }

    async fn reopen(&self, log: KafkaLog) -> Option<KafkaLog> {
        log.close().await.unwrap();
        let options = log.options().clone();
        drop(log);
        Some(KafkaLog::open(options).await.unwrap())
    }

    async fn open_partitioned(&self, partitions: u32) -> Option<KafkaLog> {
        Some(KafkaLog::open(options(&fresh_topic(), partitions)).await.unwrap())
    }
}

spool_log::conformance_suite!(Kafka);

fn event(tenant: TenantId, stream: &str, n: u64) -> NewEvent {
    NewEvent::new(
        tenant,
        StreamName::new(stream).unwrap(),
        Event::App(AppEvent {
            event_type: AppEventType::new("order.updated").unwrap(),
            data: serde_json::json!({ "n": n }),
        }),
    )
}

/// Two Spool instances (two logs on one topic, as two processes would have)
/// race for the same stream versions: of each conflicting pair exactly one
/// wins, both instances end up with the same log, with no gaps and no
/// duplicates, and every acknowledged event is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_racing_for_versions_agree_on_one_winner_each() {
    let topic = fresh_topic();
    let first = Arc::new(KafkaLog::open(options(&topic, 3)).await.unwrap());
    let second = Arc::new(KafkaLog::open(options(&topic, 3)).await.unwrap());
    let tenant = TenantId::new();
    let mut tasks = Vec::new();
    for (writer, log) in [first.clone(), second.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..30u64 {
                let stream = format!("order/{}", n % 4);
                let name = StreamName::new(&stream).unwrap();
                let current = log.read_stream(tenant, &name, 1, 10_000).await.unwrap().len() as u64;
                let append = Append::new(vec![event(tenant, &stream, n * 10 + writer as u64)])
                    .expect(tenant, name, current);
                match log.append(append).await {
                    Ok(appended) => acknowledged.push(appended[0]),
                    Err(Error::Conflict(_)) => {}
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert!(!acknowledged.is_empty());

    // Both followers reach the same heads and the same events.
    for partition in 0..3 {
        let target = (*first.head(partition).borrow()).max(*second.head(partition).borrow());
        for log in [&first, &second] {
            let mut head = log.head(partition);
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                head.wait_for(|h| *h >= target),
            )
            .await
            .unwrap()
            .unwrap();
        }
    }
    let read = |log: Arc<KafkaLog>| async move {
        let mut all = Vec::new();
        for partition in 0..3 {
            let batch =
                log.read(partition, Position::ZERO, 10_000, &Filter::default()).await.unwrap();
            all.push(batch.events);
        }
        all
    };
    let summary = |events: &[Vec<spool_log::StoredEvent>]| -> Vec<String> {
        events
            .iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}:{} {} {}@{} {} {}",
                    e.partition,
                    e.position,
                    e.id,
                    e.stream,
                    e.stream_version,
                    e.recorded_at,
                    e.data
                )
            })
            .collect()
    };
    let (seen_first, seen_second) = (read(first.clone()).await, read(second.clone()).await);
    assert_eq!(summary(&seen_first), summary(&seen_second), "both instances decide the same way");
    let all: Vec<_> = seen_first.into_iter().flatten().collect();
    assert_eq!(all.len(), acknowledged.len(), "exactly the acknowledged events are stored");
    for appended in &acknowledged {
        let stored = all
            .iter()
            .find(|e| e.id == appended.id)
            .unwrap_or_else(|| panic!("acknowledged event {} is missing", appended.id));
        assert_eq!((stored.partition, stored.position), (appended.partition, appended.position));
    }
    for stream in 0..4 {
        let name = StreamName::new(format!("order/{stream}")).unwrap();
        let versions: Vec<u64> = first
            .read_stream(tenant, &name, 1, 1_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "one winner per version"
        );
    }
}

/// The same event id appended through two instances is stored once, and
/// both are told where.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_appended_through_two_instances_is_stored_once() {
    let topic = fresh_topic();
    let first = KafkaLog::open(options(&topic, 2)).await.unwrap();
    let second = KafkaLog::open(options(&topic, 2)).await.unwrap();
    let tenant = TenantId::new();
    let shared = event(tenant, "s", 1);
    let (a, b) = tokio::join!(
        first.append(Append::new(vec![shared.clone()])),
        second.append(Append::new(vec![shared.clone()]))
    );
    let (a, b) = (a.unwrap()[0], b.unwrap()[0]);
    assert_eq!((a.partition, a.position), (b.partition, b.position));
    assert_eq!([a.already_stored, b.already_stored].iter().filter(|s| !**s).count(), 1);
    let stored = first.read_stream(tenant, &StreamName::new("s").unwrap(), 1, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
}

/// An unreachable broker is a clear error naming it, not a hang.
#[tokio::test]
async fn an_unreachable_broker_is_named_in_the_error() {
    let options = KafkaOptions {
        timeout: std::time::Duration::from_secs(2),
        ..KafkaOptions::new("127.0.0.1:1", "spool-nowhere")
    };
    let error = match KafkaLog::open(options).await {
        Ok(_) => panic!("opened a log on a closed port"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("127.0.0.1:1"), "{error}");
}

/// kafka-python, an independent Kafka client, reads what Spool wrote: every
/// event, its envelope decoded from plain JSON, in the partition Kafka's
/// default partitioner gives its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_kafka_client_reads_and_decodes_what_spool_wrote() {
    let python = std::env::var("SPOOL_TEST_PYTHON").expect(
        "SPOOL_TEST_PYTHON is not set: run the tests with ./scripts/test, which builds the verifier's venv",
    );
    let topic = fresh_topic();
    let log = KafkaLog::open(options(&topic, 4)).await.unwrap();
    let tenant = TenantId::new();
    let mut written = Vec::new();
    for n in 0..40u64 {
        let appended = log
            .append(Append::new(vec![event(tenant, &format!("order/{}", n % 7), n)]))
            .await
            .unwrap();
        written.push((appended[0], n));
    }
    log.close().await.unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/verifier/read_topic.py");
    let output = tokio::process::Command::new(python)
        .args([script, &brokers(), &topic, "40"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "verifier failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let records = found["records"].as_array().unwrap();
    assert_eq!(records.len(), 40);
    for (appended, n) in written {
        let record = records
            .iter()
            .find(|r| r["id"] == appended.id.to_string())
            .unwrap_or_else(|| panic!("kafka-python did not see {}", appended.id));
        assert_eq!(record["type"], "order.updated");
        assert_eq!(record["data"]["n"], n);
        assert_eq!(record["partition"], appended.partition);
        assert_eq!(
            record["expected_partition"], appended.partition,
            "Spool and kafka-python disagree"
        );
        assert_eq!(record["key"], format!("{tenant}/{}", record["stream"].as_str().unwrap()));
        assert_eq!(record["stream_version"], appended.stream_version);
    }
}

/// A broker of this test's own, to take away and bring back.
struct OwnBroker {
    child: std::process::Child,
    address: String,
}

impl OwnBroker {
    async fn start() -> OwnBroker {
        let tansu = std::env::var("SPOOL_TEST_TANSU").expect(
            "SPOOL_TEST_TANSU is not set: run the tests with ./scripts/test, which installs tansu",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so that it is killed and reaped on every path.
        let broker = OwnBroker { child, address: format!("127.0.0.1:{port}") };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&broker.address).await.is_ok() {
                return broker;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("tansu did not listen on {}", broker.address);
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker going away while appends are made: they fail with
/// `Unavailable` within the timeout instead of hanging, the log recovers by
/// itself when the broker returns, nothing acknowledged is lost, and
/// retrying the failed append with the same ids stores it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_fast_while_the_broker_is_away_and_recover_when_it_returns() {
    let broker = OwnBroker::start().await;
    let options = KafkaOptions {
        timeout: std::time::Duration::from_secs(2),
        ..KafkaOptions::new(broker.address.clone(), fresh_topic())
    };
    let log = KafkaLog::open(options).await.unwrap();
    let tenant = TenantId::new();
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        acknowledged.push(log.append(Append::new(vec![event(tenant, "s", n)])).await.unwrap()[0]);
    }

    broker.signal("-STOP");
    let during = Append::new(vec![event(tenant, "s", 100)]);
    let started = std::time::Instant::now();
    let failed =
        tokio::time::timeout(std::time::Duration::from_secs(30), log.append(during.clone()))
            .await
            .expect("an append while the broker is away must fail, not hang");
    assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());

    broker.signal("-CONT");
    // Recovers by itself: the same append, retried, goes through once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let retried = loop {
        match log.append(during.clone()).await {
            Ok(appended) => break appended[0],
            Err(Error::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(other) => panic!("no recovery: {other}"),
        }
    };
    let after = log.append(Append::new(vec![event(tenant, "s", 101)])).await.unwrap()[0];
    let stored = log.read_stream(tenant, &StreamName::new("s").unwrap(), 1, 100).await.unwrap();
    let ids: Vec<_> = stored.iter().map(|e| e.id).collect();
    for appended in acknowledged.iter().chain([&retried, &after]) {
        assert_eq!(
            ids.iter().filter(|id| **id == appended.id).count(),
            1,
            "{} stored once",
            appended.id
        );
    }
    assert_eq!(stored.len(), 7);
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=7).collect::<Vec<_>>());
}
