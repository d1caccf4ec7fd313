//! `spool serve` scaled out: the log in Kafka (the tansu broker that
//! ./scripts/test starts, SPOOL_TEST_KAFKA) and the read models in
//! PostgreSQL (SPOOL_TEST_POSTGRES), one topic and one schema per test;
//! then two instances sharing them, one killed with SIGKILL.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");
const DEADLINE: Duration = Duration::from_secs(60);
/// The one public URL every instance of a test is given.
const PUBLIC_URL: &str = "https://spool.scaleout.test";

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./scripts/test"))
}

/// A PostgreSQL schema of this test's own, dropped at the end.
struct Schema {
    server: String,
    name: String,
}

impl Schema {
    async fn create() -> Schema {
        let server = env("SPOOL_TEST_POSTGRES");
        let name = format!("spool_scaleout_{}", uuid::Uuid::now_v7().simple());
        let mut connection = sqlx::PgConnection::connect(&server).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
        Schema { server, name }
    }

    fn url(&self) -> String {
        let separator = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-c%20search_path%3D{}", self.server, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Outside the test's runtime, which may be gone (or panicking).
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let mut connection = sqlx::PgConnection::connect(&server).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        })
        .join();
    }
}

struct Server {
    child: Child,
    base: String,
    admin_key: Option<String>,
}

/// Starts `spool serve` with the given log and views; waits until it listens.
async fn serve(data_dir: &Path, log: &str, views: &str) -> Server {
    let mut child = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--log", log, "--views", views, "--public-url", PUBLIC_URL])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut admin_key = None;
    let address = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(key) = line.strip_prefix("admin key: ") {
                admin_key = Some(key.to_owned());
            }
            if let Some(address) = line.strip_prefix("listening on ") {
                return address.to_owned();
            }
        }
        panic!("spool serve exited before listening");
    })
    .await
    .expect("spool serve listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { child, base: format!("http://{address}"), admin_key }
}

async fn post(base: &str, key: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

async fn get(base: &str, key: &str, path: &str) -> Value {
    let response =
        reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(key).send().await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

/// Every app event of the tenant, following `next` cursors.
async fn list_all(base: &str, key: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = String::from("/v1/events?limit=7");
    loop {
        let page = get(base, key, &path).await;
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        path = format!("/v1/events?limit=7&after={}", page["next"].as_str().unwrap());
        if !page["has_more"].as_bool().unwrap() {
            return events;
        }
    }
}

/// How many `order.placed` events the stats read model has counted.
async fn counted(base: &str, key: &str) -> u64 {
    let stats = get(base, key, "/v1/stats/events?type=order.placed").await;
    stats["counts"].as_array().unwrap().iter().map(|c| c["count"].as_u64().unwrap()).sum()
}

async fn until_counted(base: &str, key: &str, expected: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let seen = counted(base, key).await;
        if seen == expected {
            return;
        }
        assert!(seen < expected, "counted {seen}, more than the {expected} posted: double work");
        assert!(tokio::time::Instant::now() < deadline, "counted {seen} of {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn order(n: u64) -> Value {
    json!({"type": "order.placed", "subject": format!("order/{}", n % 9), "data": {"n": n}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_kafka_and_postgres_keeps_everything_across_a_restart() {
    let schema = Schema::create().await;
    let log = format!("kafka://{}/{}?partitions=4", env("SPOOL_TEST_KAFKA"), schema.name);
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &log, &schema.url()).await;
    let key = server.admin_key.clone().expect("a fresh deployment prints an admin key");
    for n in 0..20 {
        post(&server.base, &key, order(n)).await;
    }
    let listed = list_all(&server.base, &key).await;
    assert_eq!(listed.len(), 20);
    let partitions: std::collections::BTreeSet<u64> =
        listed.iter().map(|e| e["partition"].as_u64().unwrap()).collect();
    assert!(partitions.len() > 1, "9 streams over 4 partitions use several: {partitions:?}");
    until_counted(&server.base, &key, 20).await;
    server.child.kill().await.unwrap();

    // A new data directory: everything lives in Kafka and PostgreSQL. No
    // second bootstrap; the old key works; the events are all there.
    let other_dir = tempfile::tempdir().unwrap();
    let again = serve(other_dir.path(), &log, &schema.url()).await;
    assert_eq!(again.admin_key, None, "bootstrapped twice");
    assert_eq!(list_all(&again.base, &key).await.len(), 20);
    post(&again.base, &key, order(20)).await;
    until_counted(&again.base, &key, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_one_takes_over_when_the_other_is_killed() {
    let schema = Schema::create().await;
    let log = format!("kafka://{}/{}?partitions=4", env("SPOOL_TEST_KAFKA"), schema.name);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = serve(dir_a.path(), &log, &schema.url()).await;
    let key = a.admin_key.clone().expect("a fresh deployment prints an admin key");
    let b = serve(dir_b.path(), &log, &schema.url()).await;
    assert_eq!(b.admin_key, None, "the second instance bootstrapped again");

    // The group splits the partitions between them.
    let owned = |base: String| async move {
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        let body: Value = ready.json().await.unwrap();
        body["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect::<std::collections::BTreeSet<u64>>()
    };
    let all: std::collections::BTreeSet<u64> = (0..4).collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (of_a, of_b) = (owned(a.base.clone()).await, owned(b.base.clone()).await);
        if !of_a.is_empty() && !of_b.is_empty() && of_a.is_disjoint(&of_b) && &of_a | &of_b == all {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not split: {of_a:?} {of_b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Both serve the API; each event is counted once, whoever projects it.
    for n in 0..30 {
        let base = if n % 2 == 0 { &a.base } else { &b.base };
        post(base, &key, order(n)).await;
    }
    until_counted(&a.base, &key, 30).await;
    assert_eq!(counted(&b.base, &key).await, 30);

    // Kill -9 one: the other takes its partitions over within seconds and
    // projects what arrives, losing nothing acknowledged.
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let takeover = tokio::time::Instant::now();
    while owned(b.base.clone()).await != all {
        assert!(takeover.elapsed() < Duration::from_secs(20), "no takeover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the survivor owned every partition {:?} after the kill", takeover.elapsed());
    let mut acknowledged = 30;
    for n in 30..50 {
        post(&b.base, &key, order(n)).await;
        acknowledged += 1;
    }
    until_counted(&b.base, &key, acknowledged).await;
    assert_eq!(list_all(&b.base, &key).await.len() as u64, acknowledged);

    // The read models the two built between them equal a full rebuild
    // from the log into a schema of its own.
    let rebuilt = Schema::create().await;
    let rebuild_dir = tempfile::tempdir().unwrap();
    let output = Command::new(SPOOL)
        .args(["projections", "rebuild", "--data-dir"])
        .arg(rebuild_dir.path())
        .args(["--log", &log, "--views", &rebuilt.url()])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "rebuild: {}", String::from_utf8_lossy(&output.stderr));
    let rows = |schema: String| async move {
        let mut connection =
            sqlx::PgConnection::connect(&env("SPOOL_TEST_POSTGRES")).await.unwrap();
        let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(&format!(
            "SELECT tenant, minute, event_type, count FROM {schema}.event_counts \
             WHERE event_type <> 'api.call' ORDER BY 1, 2, 3"
        ))
        .fetch_all(&mut connection)
        .await
        .unwrap();
        rows
    };
    let (live, full) = (rows(schema.name.clone()).await, rows(rebuilt.name.clone()).await);
    assert!(!live.is_empty());
    assert_eq!(live, full, "the live read model differs from a rebuild");
}

/// A broker of this test's own, to pause and resume.
struct OwnBroker {
    child: std::process::Child,
    address: String,
}

impl OwnBroker {
    async fn start() -> OwnBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(env("SPOOL_TEST_TANSU"))
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = OwnBroker { child, address: format!("127.0.0.1:{port}") };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&broker.address).await.is_ok() {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tansu did not listen on {}", broker.address);
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success()
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker going away while serving: appends answer 503 with a
/// problem+json body instead of hanging, and the server recovers by itself
/// when the broker returns; a retry with the same id is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_answer_503_while_the_broker_is_away_and_recover_after() {
    let broker = OwnBroker::start().await;
    let schema = Schema::create().await;
    let log = format!("kafka://{}/{}?partitions=2", broker.address, schema.name);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &log, &schema.url()).await;
    let key = server.admin_key.clone().unwrap();
    post(&server.base, &key, order(1)).await;

    broker.signal("-STOP");
    let during =
        json!({"type": "order.placed", "subject": "order/7", "id": "retry-me", "data": {}});
    let client = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(45),
        client.post(format!("{}/v1/events", server.base)).bearer_auth(&key).json(&during).send(),
    )
    .await
    .expect("the append must fail, not hang")
    .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert!(problem["type"].as_str().unwrap().ends_with("unavailable"), "{problem}");
    assert!(!problem.to_string().contains(&broker.address), "internal address leaked: {problem}");
    eprintln!("503 after {:?}", started.elapsed());

    broker.signal("-CONT");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = client
            .post(format!("{}/v1/events", server.base))
            .bearer_auth(&key)
            .json(&during)
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = list_all(&server.base, &key).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
}

/// The `GET /v1/events` status `key` gets from `base`.
async fn status_with(base: &str, key: &str) -> u16 {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/events?limit=1"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// A revocation through one instance holds on the other within a second,
/// whichever of them projects the key's partition: auth reads the shared
/// read model on every request, with no cache to outlive a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_instance_is_refused_by_the_other_within_a_second() {
    let schema = Schema::create().await;
    let log = format!("kafka://{}/{}?partitions=4", env("SPOOL_TEST_KAFKA"), schema.name);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = serve(dir_a.path(), &log, &schema.url()).await;
    let admin = a.admin_key.clone().expect("a fresh deployment prints an admin key");
    let b = serve(dir_b.path(), &log, &schema.url()).await;
    let client = reqwest::Client::new();

    // Several keys, so that their streams fall in partitions of both
    // instances: each key's revocation is projected by one of them.
    let mut keys = Vec::new();
    for n in 0..6 {
        let created: Value = client
            .post(format!("{}/v1/keys", a.base))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("reader {n}"), "scopes": ["events:read"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (id, secret) = (created["id"].as_str().unwrap(), created["secret"].as_str().unwrap());
        keys.push((id.to_owned(), secret.to_owned()));
    }
    for (_, secret) in &keys {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while status_with(&b.base, secret).await != 200 {
            assert!(tokio::time::Instant::now() < deadline, "b never accepted the key");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    for (id, secret) in &keys {
        let response = client
            .delete(format!("{}/v1/keys/{id}", a.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let revoked_at = tokio::time::Instant::now();
        loop {
            let status = status_with(&b.base, secret).await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "b still accepted {id} a second after its revocation"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("b refused {id} {:?} after the revocation", revoked_at.elapsed());
    }
    assert_eq!(status_with(&b.base, &admin).await, 200, "only the revoked keys stop");
}

/// Regression: each instance's token issuer defaulted to its own listen
/// address, so instances bound to different addresses refused each
/// other's tokens. Now a shared setup needs `--public-url`; given the same
/// one, a token from either instance works on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_given_one_public_url_accept_each_other_s_tokens() {
    let schema = Schema::create().await;
    let log = format!("kafka://{}/{}?partitions=4", env("SPOOL_TEST_KAFKA"), schema.name);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = serve(dir_a.path(), &log, &schema.url()).await;
    let admin = a.admin_key.clone().expect("a fresh deployment prints an admin key");
    let b = serve(dir_b.path(), &log, &schema.url()).await;
    assert_ne!(a.base, b.base, "bound to different addresses");
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/oauth/clients", a.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "sync", "scopes": ["events:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) =
        (created["id"].as_str().unwrap(), created["client_secret"].as_str().unwrap());
    for (issuer, verifier) in [(&a, &b), (&b, &a)] {
        let token: Value = http
            .post(format!("{}/oauth/token", issuer.base))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["access_token"].as_str().unwrap_or_else(|| panic!("no token: {token}"));
        // The client and the signing key may be projected by the other
        // instance: allow it the moment that takes.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while status_with(&verifier.base, token).await != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} refuses a token of {}",
                verifier.base,
                issuer.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A shared setup without `--public-url` is refused before anything is
/// opened (so this needs neither broker nor database), naming the flag.
#[tokio::test]
async fn serve_refuses_a_shared_setup_without_a_public_url() {
    let dir = tempfile::tempdir().unwrap();
    for target in [
        ["--log", "kafka://127.0.0.1:1/events"],
        ["--views", "postgres://spool:secret@127.0.0.1:1/spool"],
    ] {
        let output = tokio::time::timeout(
            DEADLINE,
            Command::new(SPOOL)
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .args(target)
                .env_remove("SPOOL_PUBLIC_URL")
                .output(),
        )
        .await
        .expect("spool serve exits")
        .unwrap();
        assert!(!output.status.success(), "{target:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("--public-url") && said.contains("SPOOL_PUBLIC_URL"), "{said}");
        assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
        assert!(!dir.path().join("spool.lock").exists(), "nothing was opened: {target:?}");
    }
}
