//! Crash safety of the real binary: many clients ingest while `spool serve`
//! is killed with SIGKILL at random moments, round after round, and clients
//! retry what was never acknowledged. Afterwards every acknowledged event
//! must be stored exactly once, where its acknowledgment said; positions
//! must be gap-free over the whole log; and the read models must equal a
//! full rebuild (and an independent count of the log).
//!
//! The schedule (kill delays, batch shapes, retries) comes from a seeded RNG
//! whose seed is printed; `SPOOL_CRASH_SEED=<seed>` replays it (the
//! interleaving with the server is still up to the OS).

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");
const DEADLINE: Duration = Duration::from_secs(30);
const ROUNDS: usize = 24;
const CLIENTS: usize = 16;
const STREAMS: usize = 40;
const TYPES: [&str; 3] = ["order.created", "order.paid", "invoice.sent"];
/// How many examples a failure message lists.
const SHOWN: usize = 20;

struct Server {
    child: Child,
    base: String,
    admin_key: Option<String>,
    stderr: PathBuf,
}

/// Starts `spool serve` and waits until it listens. Its stderr goes to a
/// file, quoted when something goes wrong.
async fn serve(data_dir: &Path, stderr: PathBuf, what: &str) -> Server {
    let stderr_file = std::fs::File::create(&stderr).unwrap();
    let mut child = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(stderr_file)
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
                return Some(address.to_owned());
            }
        }
        None
    })
    .await;
    let address = match address {
        Ok(Some(address)) => address,
        Ok(None) => panic!("{what}: spool serve exited before listening:\n{}", tail(&stderr)),
        Err(_) => panic!("{what}: spool serve did not listen in {DEADLINE:?}:\n{}", tail(&stderr)),
    };
    // Keep reading, so that the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { child, base: format!("http://{address}"), admin_key, stderr }
}

impl Server {
    /// SIGKILL (what `Child::start_kill` sends on Unix), then checks that
    /// the kill is what ended the server, not a crash of its own before.
    async fn kill_9(&mut self, what: &str) {
        self.child.start_kill().unwrap();
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: spool serve outlived SIGKILL"))
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{what}: spool serve ended on its own ({status}) before the kill:\n{}",
            tail(&self.stderr)
        );
    }

    /// Waits until `/readyz` (not recorded in the log) shows every
    /// projection live at the log's head.
    async fn until_caught_up(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let ready = match reqwest::get(format!("{}/readyz", self.base)).await {
                Ok(response) => response.json::<Value>().await.ok(),
                Err(_) => None,
            };
            let projections = ready.as_ref().and_then(|ready| ready["projections"].as_array());
            if projections.is_some_and(|projections| {
                !projections.is_empty()
                    && projections.iter().all(|projection| {
                        projection["state"] == "live"
                            && projection["checkpoint"] == projection["head"]
                    })
            }) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: not caught up: {ready:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and a clean exit.
    async fn terminate(&mut self, what: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "{what}: kill -TERM {pid} failed");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: spool serve did not stop on SIGTERM"))
            .unwrap();
        assert!(status.success(), "{what}: SIGTERM ended in {status}:\n{}", tail(&self.stderr));
    }
}

/// The end of a server's stderr, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn spool(data_dir: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(
        DEADLINE,
        Command::new(SPOOL).args(args).arg("--data-dir").arg(data_dir).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("spool {args:?} did not finish in {DEADLINE:?}"))
    .unwrap()
}

fn stdout(output: &Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// One request's worth of events, kept for retrying with the same ids.
#[derive(Clone)]
struct Batch {
    /// The client-chosen ids, in the order sent.
    cids: Vec<String>,
    body: Value,
}

/// Where an acknowledgment said an event is stored.
#[derive(Clone, Debug, PartialEq)]
struct Ack {
    id: String,
    position: u64,
    stream: String,
    stream_version: u64,
}

/// What the clients sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    /// Every client id ever sent.
    sent: HashSet<String>,
    /// Client id → its acknowledgment and the round that received it.
    acked: HashMap<String, (Ack, String)>,
    /// Sent but not acknowledged: the server may or may not have stored
    /// them. Retried later with the same ids.
    pending: Vec<Batch>,
    /// Anything the server answered that it should not have.
    problems: Vec<String>,
    requests: u64,
    acked_requests: u64,
    lost_requests: u64,
    retries: u64,
    /// Retries answered `duplicate`: the killed server had stored them but
    /// died before answering.
    retries_found_stored: u64,
}

impl Ledger {
    fn new_batch(&mut self, rng: &mut StdRng, round: usize, client: usize, n: usize) -> Batch {
        let size = if rng.random_bool(0.4) { 1 } else { rng.random_range(2..=20) };
        let cids: Vec<String> = (0..size).map(|k| format!("r{round}-c{client}-{n}-{k}")).collect();
        let events: Vec<Value> = cids
            .iter()
            .map(|cid| {
                json!({
                    "type": TYPES[rng.random_range(0..TYPES.len())],
                    "subject": format!("acct/{}", rng.random_range(0..STREAMS)),
                    "id": cid,
                    "data": {"cid": cid, "round": round},
                })
            })
            .collect();
        self.sent.extend(cids.iter().cloned());
        let body = if size == 1 { events[0].clone() } else { json!({ "events": events }) };
        Batch { cids, body }
    }

    /// Takes a 201's events as the acknowledgment of `batch`.
    fn record(&mut self, when: &str, batch: &Batch, retry: bool, events: &[Value]) {
        self.acked_requests += 1;
        if events.len() != batch.cids.len() {
            self.problems.push(format!(
                "{when}: {} events sent ({}…), {} acknowledged",
                batch.cids.len(),
                batch.cids[0],
                events.len()
            ));
            return;
        }
        let duplicates: Vec<bool> =
            events.iter().map(|event| event["duplicate"].as_bool().unwrap_or(false)).collect();
        if duplicates.iter().any(|&d| d) && duplicates.iter().any(|&d| !d) {
            self.problems.push(format!(
                "{when}: batch {}… was stored in part (duplicate flags {duplicates:?}), \
                 though batches are atomic",
                batch.cids[0]
            ));
        }
        if retry {
            self.retries += 1;
            if duplicates[0] {
                self.retries_found_stored += 1;
            }
        } else if duplicates[0] {
            self.problems.push(format!(
                "{when}: the first send of {}… was answered `duplicate`",
                batch.cids[0]
            ));
        }
        for (cid, event) in batch.cids.iter().zip(events) {
            let (Some(id), Some(position), Some(stream), Some(stream_version)) = (
                event["id"].as_str(),
                event["position"].as_u64(),
                event["stream"].as_str(),
                event["stream_version"].as_u64(),
            ) else {
                self.problems.push(format!("{when}: malformed acknowledgment of {cid}: {event}"));
                continue;
            };
            let ack =
                Ack { id: id.to_owned(), position, stream: stream.to_owned(), stream_version };
            if let Some((earlier, earlier_when)) = self.acked.get(cid)
                && *earlier != ack
            {
                self.problems.push(format!(
                    "{when}: {cid} acknowledged as {ack:?}, but {earlier_when} acknowledged it \
                     as {earlier:?}"
                ));
            }
            self.acked.insert(cid.clone(), (ack, when.to_owned()));
        }
    }
}

enum Outcome {
    /// A 201 with its `events`.
    Acked(Vec<Value>),
    /// No complete answer: the server may or may not have stored the batch.
    Lost,
    /// An answer other than a 201.
    Refused(String),
}

async fn send(http: &reqwest::Client, base: &str, key: &str, batch: &Batch) -> Outcome {
    let response = match http
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&batch.body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(_) => return Outcome::Lost,
    };
    let status = response.status();
    let Ok(body) = response.text().await else {
        return Outcome::Lost;
    };
    if status != 201 {
        return Outcome::Refused(format!("{status}: {body}"));
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(json) => match json["events"].as_array() {
            Some(events) => Outcome::Acked(events.clone()),
            None => Outcome::Refused(format!("201 without events: {body}")),
        },
        Err(error) => {
            Outcome::Refused(format!("201 with a body that is not JSON ({error}): {body}"))
        }
    }
}

/// Posts batches until `stop` or until a request is lost (the kill). A
/// quarter of the requests retry an unacknowledged batch of an earlier round.
async fn client(
    round: usize,
    client: usize,
    base: String,
    key: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder().timeout(DEADLINE).build().unwrap();
    let when = format!("round {round}");
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let (batch, retry) = {
            let mut ledger = ledger.lock().unwrap();
            ledger.requests += 1;
            if !ledger.pending.is_empty() && rng.random_bool(0.25) {
                let index = rng.random_range(0..ledger.pending.len());
                (ledger.pending.swap_remove(index), true)
            } else {
                n += 1;
                (ledger.new_batch(&mut rng, round, client, n), false)
            }
        };
        let outcome = send(&http, &base, &key, &batch).await;
        let mut ledger = ledger.lock().unwrap();
        match outcome {
            Outcome::Acked(events) => ledger.record(&when, &batch, retry, &events),
            Outcome::Lost => {
                ledger.lost_requests += 1;
                ledger.pending.push(batch);
                return;
            }
            Outcome::Refused(answer) => {
                ledger.problems.push(format!("{when}: {}… answered {answer}", batch.cids[0]));
                ledger.pending.push(batch);
                return;
            }
        }
    }
}

/// Retries every unacknowledged batch against a server that stays up: each
/// must be acknowledged now.
async fn retry_all_pending(base: &str, key: &str, ledger: &Arc<Mutex<Ledger>>) {
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (base, key, ledger) = (base.to_owned(), key.to_owned(), ledger.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(DEADLINE).build().unwrap();
                loop {
                    let Some(batch) = ledger.lock().unwrap().pending.pop() else {
                        return;
                    };
                    let outcome = send(&http, &base, &key, &batch).await;
                    let mut ledger = ledger.lock().unwrap();
                    match outcome {
                        Outcome::Acked(events) => ledger.record("final", &batch, true, &events),
                        Outcome::Lost => ledger.problems.push(format!(
                            "final: the retry of {}… got no answer from a running server",
                            batch.cids[0]
                        )),
                        Outcome::Refused(answer) => ledger.problems.push(format!(
                            "final: the retry of {}… answered {answer}",
                            batch.cids[0]
                        )),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

/// The app events `GET /v1/events` pages through, as (id, position).
async fn list_over_http(base: &str, key: &str) -> Vec<(String, u64)> {
    let http = reqwest::Client::new();
    let mut events = Vec::new();
    let mut after = "0".to_owned();
    loop {
        let page: Value = http
            .get(format!("{base}/v1/events?limit=1000&after={after}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        for event in page["events"].as_array().unwrap() {
            events.push((
                event["id"].as_str().unwrap().to_owned(),
                event["position"].as_u64().unwrap(),
            ));
        }
        // A cursor string; the SQLite log's has one position.
        after = page["next"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            return events;
        }
    }
}

/// One event of the log, as `spool events list --json` prints it.
struct Logged {
    position: u64,
    id: String,
    tenant: String,
    stream: String,
    stream_version: u64,
    type_name: String,
    recorded_at: chrono::DateTime<chrono::Utc>,
    data: Value,
}

async fn read_log(data_dir: &Path) -> Vec<Logged> {
    let listed = spool(data_dir, &["events", "list", "--json", "--limit", "100000000"]).await;
    stdout(&listed, "spool events list")
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            let text = |field: &str| event[field].as_str().unwrap().to_owned();
            Logged {
                position: event["position"].as_u64().unwrap(),
                id: text("id"),
                tenant: text("tenant"),
                stream: text("stream"),
                stream_version: event["stream_version"].as_u64().unwrap(),
                type_name: text("type"),
                recorded_at: text("recorded_at").parse().unwrap(),
                data: event["data"].clone(),
            }
        })
        .collect()
}

/// `spool projections status --json`: asserts that every projection is live
/// and caught up with the log's head, `head`.
async fn assert_caught_up(data_dir: &Path, head: u64, what: &str) {
    let status = stdout(
        &spool(data_dir, &["projections", "status", "--json"]).await,
        "spool projections status",
    );
    let statuses: Vec<Value> =
        status.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(statuses.len() >= 2, "{what}: {status}");
    for status in &statuses {
        assert_eq!(status["state"], "live", "{what}: {status}");
        // Cursors as text: one position per partition, and the SQLite log
        // has one partition, so each is just the position.
        let head = head.to_string();
        assert_eq!(status["head"], head, "{what}: the log's head is not {head}: {status}");
        assert_eq!(status["checkpoint"], head, "{what}: not caught up: {status}");
    }
}

/// Every row of every view in `views.db` (each projection's tables are
/// reached through views named after them), each value `quote()`d, sorted.
async fn dump_views(views_db: &Path) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut connection =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(views_db))
            .await
            .unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let mut dump = BTreeMap::new();
    for name in names {
        let columns: Vec<String> = sqlx::query(&format!("PRAGMA table_info(\"{name}\")"))
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("name"))
            .collect();
        let select: Vec<String> =
            columns.iter().map(|column| format!("quote(\"{column}\")")).collect();
        let mut rows: Vec<Vec<String>> =
            sqlx::query(&format!("SELECT {} FROM \"{name}\"", select.join(", ")))
                .fetch_all(&mut connection)
                .await
                .unwrap()
                .iter()
                .map(|row| (0..columns.len()).map(|i| row.get(i)).collect())
                .collect();
        rows.sort();
        let mut table = vec![columns];
        table.extend(rows);
        dump.insert(name, table);
    }
    connection.close().await.unwrap();
    dump
}

/// The `event_counts` view as (tenant, minute, type) → count.
async fn event_counts(views_db: &Path) -> BTreeMap<(String, i64, String), i64> {
    let mut connection =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(views_db))
            .await
            .unwrap();
    let counts = sqlx::query("SELECT tenant, minute, event_type, count FROM event_counts")
        .fetch_all(&mut connection)
        .await
        .unwrap()
        .iter()
        .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
        .collect();
    connection.close().await.unwrap();
    counts
}

fn first<T: std::fmt::Debug>(items: &[T]) -> String {
    format!("{:#?}", &items[..items.len().min(SHOWN)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_exactly_once_and_the_views_equal_a_rebuild() {
    let seed: u64 = match std::env::var("SPOOL_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("SPOOL_CRASH_SEED is a u64"),
        Err(_) => rand::random(),
    };
    println!("crash test seed {seed} (replay with SPOOL_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let server_logs = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let mut admin_key: Option<String> = None;

    for round in 0..ROUNDS {
        let what = format!("round {round} (seed {seed})");
        let stderr = server_logs.path().join(format!("round-{round}.log"));
        let mut server = serve(data.path(), stderr, &what).await;
        match (&admin_key, server.admin_key.take()) {
            (None, Some(key)) => admin_key = Some(key),
            (None, None) => panic!("{what}: the first start printed no admin key"),
            (Some(_), Some(_)) => panic!("{what}: a restart bootstrapped a second admin key"),
            (Some(_), None) => {}
        }
        let key = admin_key.clone().unwrap();
        let before = {
            let ledger = ledger.lock().unwrap();
            (ledger.acked.len(), ledger.lost_requests, ledger.retries)
        };

        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    round,
                    c,
                    server.base.clone(),
                    key.clone(),
                    rng.random(),
                    stop.clone(),
                    ledger.clone(),
                ))
            })
            .collect();
        // The random moment of the crash, while the clients are mid-flight
        // (not a synchronization: any moment will do).
        let delay = Duration::from_millis(rng.random_range(50..=400));
        tokio::time::sleep(delay).await;
        server.kill_9(&what).await;
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            tokio::time::timeout(DEADLINE, client)
                .await
                .unwrap_or_else(|_| panic!("{what}: a client hung after the kill"))
                .unwrap();
        }

        let ledger = ledger.lock().unwrap();
        println!(
            "{what}: killed after {delay:?}; {} events acknowledged, {} requests cut off, \
             {} retries acknowledged, {} batches pending",
            ledger.acked.len() - before.0,
            ledger.lost_requests - before.1,
            ledger.retries - before.2,
            ledger.pending.len(),
        );
    }
    let key = admin_key.unwrap();

    // Restart: retry everything never acknowledged, read the app events
    // back over HTTP, stop cleanly.
    let what = format!("after the last kill (seed {seed})");
    let mut server = serve(data.path(), server_logs.path().join("final.log"), &what).await;
    assert_eq!(server.admin_key, None, "{what}: a restart bootstrapped a second admin key");
    retry_all_pending(&server.base, &key, &ledger).await;
    let over_http = list_over_http(&server.base, &key).await;
    server.terminate(&what).await;

    let ledger = Arc::into_inner(ledger).unwrap().into_inner().unwrap();
    println!(
        "{} rounds in {:.1?}: {} requests, {} events sent, {} acknowledged, {} requests cut off \
         by a kill, {} retries acknowledged ({} found already stored)",
        ROUNDS,
        started.elapsed(),
        ledger.requests,
        ledger.sent.len(),
        ledger.acked.len(),
        ledger.lost_requests,
        ledger.retries,
        ledger.retries_found_stored,
    );
    // The test proves something only if the kills cut requests off.
    assert!(
        ledger.lost_requests >= ROUNDS as u64,
        "{what}: only {} requests were cut off by {ROUNDS} kills",
        ledger.lost_requests
    );

    // The whole log, Spool's own events included.
    let log = read_log(data.path()).await;
    let head = log.len() as u64;
    let gaps: Vec<String> = log
        .iter()
        .zip(1..)
        .filter(|(event, expected)| event.position != *expected)
        .map(|(event, expected)| format!("position {expected} holds {}", event.position))
        .collect();
    assert!(gaps.is_empty(), "{what}: positions are not 1..={head}:\n{}", first(&gaps));

    let mut stream_versions: HashMap<(&str, &str), u64> = HashMap::new();
    let mut version_gaps = Vec::new();
    for event in &log {
        let version = stream_versions.entry((&event.tenant, &event.stream)).or_default();
        *version += 1;
        if event.stream_version != *version {
            version_gaps.push(format!(
                "position {}: stream {} at version {}, expected {version}",
                event.position, event.stream, event.stream_version
            ));
            *version = event.stream_version;
        }
    }
    assert!(
        version_gaps.is_empty(),
        "{what}: stream versions are not gap-free:\n{}",
        first(&version_gaps)
    );

    // Every app event is one we sent, stored once, where it was acknowledged.
    let mut stored: HashMap<&str, &Logged> = HashMap::new();
    let mut duplicated = Vec::new();
    let mut strangers = Vec::new();
    for event in log.iter().filter(|event| TYPES.contains(&event.type_name.as_str())) {
        let Some(cid) = event.data["cid"].as_str() else {
            strangers.push(format!("position {}: {}", event.position, event.data));
            continue;
        };
        if !ledger.sent.contains(cid) {
            strangers.push(format!("position {}: {cid}", event.position));
        }
        if let Some(earlier) = stored.insert(cid, event) {
            duplicated
                .push(format!("{cid} at positions {} and {}", earlier.position, event.position));
        }
    }
    assert!(strangers.is_empty(), "{what}: events nobody sent:\n{}", first(&strangers));
    assert!(
        duplicated.is_empty(),
        "{what}: {} events stored more than once:\n{}",
        duplicated.len(),
        first(&duplicated)
    );
    let mut missing = Vec::new();
    let mut misplaced = Vec::new();
    let mut acked: Vec<_> = ledger.acked.iter().collect();
    acked.sort_by_key(|(_, (ack, _))| ack.position);
    for (cid, (ack, when)) in acked {
        match stored.get(cid.as_str()) {
            None => missing.push(format!("{cid}, acknowledged in {when} as {ack:?}")),
            Some(event) => {
                let found = Ack {
                    id: event.id.clone(),
                    position: event.position,
                    stream: event.stream.clone(),
                    stream_version: event.stream_version,
                };
                if found != *ack {
                    misplaced.push(format!(
                        "{cid}: acknowledged in {when} as {ack:?}, stored as {found:?}"
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} acknowledged events are not in the log:\n{}",
        missing.len(),
        first(&missing)
    );
    assert!(
        misplaced.is_empty(),
        "{what}: {} events are stored elsewhere than acknowledged:\n{}",
        misplaced.len(),
        first(&misplaced)
    );
    // Checked after the log, so that a lost or duplicated event is what a
    // failure names first.
    assert!(
        ledger.problems.is_empty(),
        "{what}: the server answered wrongly {} times:\n{}",
        ledger.problems.len(),
        first(&ledger.problems)
    );
    assert!(ledger.pending.is_empty());
    assert_eq!(ledger.acked.len(), ledger.sent.len(), "{what}: every event sent is acknowledged");
    assert_eq!(stored.len(), ledger.sent.len(), "{what}: every event sent is stored");

    // The API lists the same app events as the log holds.
    let in_log: Vec<(String, u64)> = log
        .iter()
        .filter(|event| TYPES.contains(&event.type_name.as_str()))
        .map(|event| (event.id.clone(), event.position))
        .collect();
    assert!(over_http == in_log, "{what}: GET /v1/events differs from the log");

    // The read models, caught up by a server that takes no request (so
    // appends nothing) and stops cleanly.
    let what = format!("the read models (seed {seed})");
    let mut server = serve(data.path(), server_logs.path().join("views.log"), &what).await;
    server.until_caught_up(&what).await;
    server.terminate(&what).await;
    assert_caught_up(data.path(), head, &what).await;
    let views_db = data.path().join("views.db");
    let incremental = dump_views(&views_db).await;
    for view in ["auth_keys", "auth_tenants", "event_counts"] {
        assert!(incremental.get(view).is_some_and(|rows| rows.len() > 1), "{what}: {view} empty");
    }

    // Counted independently from the log.
    let mut expected: BTreeMap<(String, i64, String), i64> = BTreeMap::new();
    for event in &log {
        let minute = event.recorded_at.timestamp().div_euclid(60) * 60;
        *expected.entry((event.tenant.clone(), minute, event.type_name.clone())).or_default() += 1;
    }
    let counted = event_counts(&views_db).await;
    if counted != expected {
        let keys: HashSet<_> = counted.keys().chain(expected.keys()).collect();
        let mut differences: Vec<String> = keys
            .into_iter()
            .filter(|key| counted.get(*key) != expected.get(*key))
            .map(|key| {
                format!(
                    "{key:?}: counted {:?}, in the log {:?}",
                    counted.get(key),
                    expected.get(key)
                )
            })
            .collect();
        differences.sort();
        panic!("{what}: event_counts disagrees with the log:\n{}", first(&differences));
    }

    let rebuilt =
        stdout(&spool(data.path(), &["projections", "rebuild"]).await, "spool projections rebuild");
    for name in ["auth", "event_counts"] {
        assert!(rebuilt.contains(&format!("rebuilt {name} ")), "{what}: {rebuilt}");
    }
    assert_caught_up(data.path(), head, &format!("{what}, rebuilt")).await;
    let from_scratch = dump_views(&views_db).await;
    for (view, rows) in &incremental {
        assert!(
            from_scratch.get(view) == Some(rows),
            "{what}: view {view} differs from its rebuild:\nincremental: {}\nrebuilt: {}",
            first(rows),
            first(from_scratch.get(view).map_or(&[][..], Vec::as_slice))
        );
    }
    assert_eq!(
        incremental.keys().collect::<Vec<_>>(),
        from_scratch.keys().collect::<Vec<_>>(),
        "{what}: the rebuild has other views"
    );
    println!("{head} events verified in {:.1?}", started.elapsed());
}
