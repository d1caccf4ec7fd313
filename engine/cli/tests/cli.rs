//! The real `spool` binary: serve in a temp dir on a free port, talk to it
//! over HTTP, stop it with signals, and use the operator commands beside it.

use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");
const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    base: String,
    /// The bootstrap admin key, when this start printed one.
    admin_key: Option<String>,
    /// The bootstrap admin key's id, printed beside it.
    admin_key_id: Option<String>,
    tenant: Option<String>,
    /// Every stdout line, including those printed after startup.
    stdout: Arc<Mutex<Vec<String>>>,
}

async fn serve(data_dir: &Path) -> Server {
    serve_with(data_dir, &[]).await
}

/// [`serve`] with environment variables set, such as `SPOOL_RATE_LIMIT_STORE`.
async fn serve_with(data_dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let address = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.lock().unwrap().push(line.clone());
            if let Some(address) = line.strip_prefix("listening on ") {
                return address.to_owned();
            }
        }
        panic!("spool serve exited before listening: {:?}", stdout.lock().unwrap());
    })
    .await
    .expect("spool serve listens");
    let printed = stdout.lock().unwrap().clone();
    let find =
        |prefix: &str| printed.iter().find_map(|line| line.strip_prefix(prefix).map(str::to_owned));
    let (admin_key, admin_key_id, tenant) =
        (find("admin key: "), find("admin key id: "), find("bootstrap tenant: "));
    let rest = stdout.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            rest.lock().unwrap().push(line);
        }
    });
    Server { child, base: format!("http://{address}"), admin_key, admin_key_id, tenant, stdout }
}

impl Server {
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait()).await.expect("spool serve exits").unwrap()
    }

    fn admin_key_lines(&self) -> usize {
        self.stdout.lock().unwrap().iter().filter(|line| line.starts_with("admin key:")).count()
    }
}

async fn spool(data_dir: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(
        DEADLINE,
        Command::new(SPOOL).args(args).arg("--data-dir").arg(data_dir).output(),
    )
    .await
    .expect("the command finishes")
    .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn post_event(base: &str, key: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn list_status(base: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `list_status` answers `expected`: keys made by the CLI reach
/// a running server through its log polling and projections.
async fn until_status(base: &str, key: &str, expected: u16) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = list_status(base, key).await;
        if status == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}, not {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_bootstraps_once_serves_http_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    let key = server.admin_key.clone().expect("first start prints the admin key");
    assert!(key.starts_with("spk_live_"), "{key}");

    let response = post_event(
        &server.base,
        &key,
        json!({"type": "order.created", "subject": "order/1", "id": "o-1", "data": {"total": 5}}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.unwrap();
    let id = stored["events"][0]["id"].as_str().unwrap().to_owned();

    let page: Value = reqwest::Client::new()
        .get(format!("{}/v1/events?type=order.*", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["id"], id.as_str());
    assert_eq!(page["events"][0]["data"], json!({"total": 5}));

    let unauthorized = reqwest::get(format!("{}/v1/events", server.base)).await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers()["content-type"], "application/problem+json");
    let metrics =
        reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("spool_api_requests_total"), "{metrics}");

    // A live stream does not hold up shutdown.
    let live = reqwest::Client::new()
        .get(format!("{}/v1/events/stream", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    server.signal("-TERM");
    assert!(server.wait().await.success(), "SIGTERM exits cleanly");
    drop(live);
    assert_eq!(server.admin_key_lines(), 1);

    // The recorder was flushed before exit: every request is in the log.
    let listed =
        stdout(&spool(dir.path(), &["events", "list", "--json", "--type", "api.call"]).await);
    let statuses: Vec<u64> = listed
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["data"]["status"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(statuses, [201, 200, 401, 200]);

    let mut restarted = serve(dir.path()).await;
    assert_eq!(restarted.admin_key, None, "the admin key is printed only once");
    assert_eq!(restarted.admin_key_id, None, "and so is its id");
    assert_eq!(restarted.admin_key_lines(), 0);
    assert_eq!(list_status(&restarted.base, &key).await, 200, "the old key still works");
    let retry = post_event(
        &restarted.base,
        &key,
        json!({"type": "order.created", "subject": "order/1", "id": "o-1", "data": {"total": 5}}),
    )
    .await;
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["events"][0]["id"], id.as_str());
    assert_eq!(retry["events"][0]["duplicate"], true);
    restarted.signal("-TERM");
    assert!(restarted.wait().await.success());
}

#[tokio::test]
async fn a_second_server_and_a_rebuild_are_refused_while_a_server_holds_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;

    let second = spool(dir.path(), &["serve", "--listen", "127.0.0.1:0"]).await;
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("in use by another spool process"), "{message}");
    assert!(!String::from_utf8_lossy(&second.stdout).contains("admin key"));

    let rebuild = spool(dir.path(), &["projections", "rebuild"]).await;
    assert!(!rebuild.status.success());
    assert!(
        String::from_utf8_lossy(&rebuild.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );

    // Status works beside the server.
    let status = stdout(&spool(dir.path(), &["projections", "status", "--json"]).await);
    let names: Vec<String> = status
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(names.contains(&"auth".to_owned()), "{status}");

    server.signal("-TERM");
    assert!(server.wait().await.success());
    let rebuilt = stdout(&spool(dir.path(), &["projections", "rebuild", "auth"]).await);
    assert!(rebuilt.contains("rebuilt auth"), "{rebuilt}");
}

#[tokio::test]
async fn keys_created_and_revoked_by_the_cli_take_effect_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    let tenant = server.tenant.clone().expect("bootstrap prints the tenant");

    let created = stdout(
        &spool(
            dir.path(),
            &[
                "admin",
                "key",
                "create",
                "--tenant",
                &tenant,
                "--name",
                "reader",
                "--scope",
                "events:read",
                "--json",
            ],
        )
        .await,
    );
    let created: Value = serde_json::from_str(created.trim()).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    until_status(&server.base, &key, 200).await;
    let write = post_event(&server.base, &key, json!({"type": "a.b"})).await;
    assert_eq!(write.status(), 403, "only the scopes asked for");

    let revoked = stdout(&spool(dir.path(), &["admin", "key", "revoke", &key_id]).await);
    assert!(revoked.contains("revoked"), "{revoked}");
    until_status(&server.base, &key, 401).await;

    let tenant_created = stdout(
        &spool(dir.path(), &["admin", "tenant", "create", "--name", "acme", "--json"]).await,
    );
    let tenant_created: Value = serde_json::from_str(tenant_created.trim()).unwrap();
    let acme_key = tenant_created["key"].as_str().unwrap();
    assert_ne!(tenant_created["tenant"], tenant.as_str());
    until_status(&server.base, acme_key, 200).await;

    let unknown = spool(
        dir.path(),
        &["admin", "key", "create", "--tenant", "ten_0123456789abcdef0123456789abcdef"],
    )
    .await;
    assert!(!unknown.status.success(), "a key for a tenant that does not exist is refused");

    // The bootstrap key's printed id is the one to revoke it by.
    let admin_key = server.admin_key.clone().expect("bootstrap prints the admin key");
    let admin_key_id = server.admin_key_id.clone().expect("bootstrap prints the admin key's id");
    assert!(admin_key_id.starts_with("key_"), "{admin_key_id}");
    until_status(&server.base, &admin_key, 200).await;
    let revoked = stdout(&spool(dir.path(), &["admin", "key", "revoke", &admin_key_id]).await);
    assert!(revoked.contains("revoked"), "{revoked}");
    until_status(&server.base, &admin_key, 401).await;

    server.signal("-TERM");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn admin_issues_scoped_test_mode_keys_and_lists_keys_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    let tenant = server.tenant.clone().expect("bootstrap prints the tenant");
    let admin_key = server.admin_key.clone().unwrap();

    let created = stdout(
        &spool(
            dir.path(),
            &[
                "admin",
                "key",
                "create",
                "--tenant",
                &tenant,
                "--name",
                "sandbox",
                "--scope",
                "events:read",
                "--scope",
                "events:write",
                "--expires-at",
                "2099-01-01T00:00:00Z",
                "--test",
                "--json",
            ],
        )
        .await,
    );
    let created: Value = serde_json::from_str(created.trim()).unwrap();
    assert_eq!((&created["tenant"], &created["mode"]), (&json!(tenant), &json!("test")));
    let test_key = created["key"].as_str().unwrap().to_owned();
    let test_key_id = created["key_id"].as_str().unwrap().to_owned();
    assert!(test_key.starts_with("spk_test_") && test_key.len() == 47, "{test_key}");
    until_status(&server.base, &test_key, 200).await;

    // The test key writes sandbox data, which the live key does not see.
    let posted = post_event(&server.base, &test_key, json!({"type": "a.b", "data": 1})).await;
    assert_eq!(posted.status(), 201);
    let list = |key: String| {
        let base = server.base.clone();
        async move {
            let page: Value = reqwest::Client::new()
                .get(format!("{base}/v1/events"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            page["events"].as_array().unwrap().clone()
        }
    };
    let seen = list(test_key.clone()).await;
    assert_eq!((seen.len(), &seen[0]["livemode"]), (1, &json!(false)));
    assert!(list(admin_key.clone()).await.is_empty());

    let listed =
        stdout(&spool(dir.path(), &["admin", "key", "list", "--tenant", &tenant, "--json"]).await);
    assert!(!listed.contains(&test_key) && !listed.contains(&admin_key), "{listed}");
    let listed: Value = serde_json::from_str(listed.trim()).unwrap();
    let rows: Vec<(&str, &str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["mode"].as_str().unwrap(),
                k["status"].as_str().unwrap(),
                k["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("live", "active", "bootstrap admin"), ("test", "active", "sandbox")]);
    assert_eq!(listed[1]["scopes"], json!(["events:read", "events:write"]));
    assert_eq!(listed[1]["key_id"], test_key_id.as_str());

    stdout(&spool(dir.path(), &["admin", "key", "revoke", &test_key_id]).await);
    let table = stdout(&spool(dir.path(), &["admin", "key", "list", "--tenant", &tenant]).await);
    let line = table.lines().find(|line| line.starts_with(&test_key_id)).expect("listed");
    assert!(line.contains(" test ") && line.contains("revoked"), "{table}");
    until_status(&server.base, &test_key, 401).await;

    let unknown = spool(
        dir.path(),
        &["admin", "key", "create", "--tenant", &tenant, "--scope", "events:delete"],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("events:delete"));

    server.signal("-TERM");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn events_commands_read_the_log_beside_a_server_and_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    let key = server.admin_key.clone().unwrap();
    let response = post_event(
        &server.base,
        &key,
        json!({"events": [
            {"type": "order.created", "subject": "order/1", "data": 1},
            {"type": "invoice.sent", "data": 2},
        ]}),
    )
    .await;
    let stored: Value = response.json().await.unwrap();
    let id = stored["events"][0]["id"].as_str().unwrap().to_owned();
    let position = stored["events"][0]["position"].as_u64().unwrap();

    let listed =
        stdout(&spool(dir.path(), &["events", "list", "--json", "--type", "order.*"]).await);
    let events: Vec<Value> =
        listed.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(events.len(), 1, "{listed}");
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["stream"], "order/1");

    let table = stdout(&spool(dir.path(), &["events", "list", "--limit", "2"]).await);
    assert!(table.starts_with("  POSITION"), "{table}");
    assert_eq!(table.lines().count(), 3, "a header and two rows: {table}");

    for target in [id.clone(), position.to_string(), format!("0:{position}")] {
        let shown = stdout(&spool(dir.path(), &["events", "show", &target, "--json"]).await);
        let shown: Value = serde_json::from_str(shown.trim()).unwrap();
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown["data"], 1);
    }
    let refused = spool(dir.path(), &["events", "show", &format!("1:{position}")]).await;
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("there is no partition 1"), "{error}");

    // `--after` takes a cursor: on SQLite's one partition, a position.
    let listed = spool(dir.path(), &["events", "list", "--json", "--limit", "1"]).await;
    let first: Value = serde_json::from_str(stdout(&listed).trim()).unwrap();
    let hint = String::from_utf8_lossy(&listed.stderr);
    let next = hint
        .lines()
        .find_map(|line| line.strip_prefix("more events follow: pass --after "))
        .unwrap_or_else(|| panic!("no hint to read on: {hint}"));
    assert_eq!(next, first["position"].to_string(), "{hint}");
    let page = stdout(&spool(dir.path(), &["events", "list", "--json", "--after", next]).await);
    let page: Vec<Value> = page.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(page[0]["position"], first["position"].as_u64().unwrap() + 1, "{page:?}");
    let refused = spool(dir.path(), &["events", "list", "--after", "3.4"]).await;
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("--after: ") && error.contains("partition"), "{error}");

    // `tail` follows what is appended after it started.
    let mut tail = Command::new(SPOOL)
        .args(["events", "tail", "--json", "--type", "order.*", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // The tail may start before or after this event; it must print the
    // shipped one either way, and never the earlier order.created.
    let response =
        post_event(&server.base, &key, json!({"type": "order.shipped", "data": 3})).await;
    assert_eq!(response.status(), 201);
    let mut followed = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while followed.is_none() {
        let more =
            post_event(&server.base, &key, json!({"type": "order.shipped", "data": 4})).await;
        assert_eq!(more.status(), 201);
        if let Ok(line) =
            tokio::time::timeout(Duration::from_millis(500), tail_lines.next_line()).await
        {
            followed = Some(line.unwrap().expect("tail keeps running"));
        }
        assert!(tokio::time::Instant::now() < deadline, "tail printed nothing");
    }
    let followed: Value = serde_json::from_str(&followed.unwrap()).unwrap();
    assert_eq!(followed["type"], "order.shipped");
    tail.kill().await.unwrap();

    // A data directory left by a killed server opens cleanly.
    server.signal("-KILL");
    assert!(!server.wait().await.success());
    let mut restarted = serve(dir.path()).await;
    assert_eq!(restarted.admin_key, None);
    let page: Value = reqwest::Client::new()
        .get(format!("{}/v1/events", restarted.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(page["events"].as_array().unwrap().len() >= 4, "{page}");
    restarted.signal("-TERM");
    assert!(restarted.wait().await.success());
}

/// Regression: `serve` waited for every projection to be live before it
/// listened, so one failed projection made it exit. Only `auth` gates it.
#[tokio::test]
async fn serve_keeps_serving_with_a_failed_projection_other_than_auth() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    let key = server.admin_key.clone().unwrap();
    assert_eq!(post_event(&server.base, &key, json!({"type": "a.b"})).await.status(), 201);
    server.signal("-TERM");
    assert!(server.wait().await.success());

    // Take event_counts' serving table away: its next batch fails.
    let views = dir.path().join("views.db");
    let mut connection =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", views.display())).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'event_counts_g%'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert!(!tables.is_empty());
    for table in tables {
        sqlx::query(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
    }
    connection.close().await.unwrap();

    for round in 0..2 {
        let mut server = serve(dir.path()).await;
        let stored = post_event(&server.base, &key, json!({"type": "a.b"})).await;
        assert_eq!(stored.status(), 201, "round {round}");
        assert_eq!(list_status(&server.base, &key).await, 200, "round {round}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let ready = reqwest::get(format!("{}/readyz", server.base)).await.unwrap();
            let status = ready.status().as_u16();
            let body: Value = ready.json().await.unwrap();
            let counts = body["projections"]
                .as_array()
                .unwrap()
                .iter()
                .find(|projection| projection["name"] == "event_counts")
                .unwrap()
                .clone();
            if counts["state"] == "failed" {
                assert_eq!(status, 503);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "event_counts never failed: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.signal("-TERM");
        assert!(server.wait().await.success(), "round {round}");
    }
}

#[tokio::test]
async fn revoking_a_key_twice_stores_one_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    let tenant = server.tenant.clone().unwrap();
    let created = stdout(
        &spool(dir.path(), &["admin", "key", "create", "--tenant", &tenant, "--json"]).await,
    );
    let created: Value = serde_json::from_str(created.trim()).unwrap();
    let key_id = created["key_id"].as_str().unwrap();
    let first = stdout(&spool(dir.path(), &["admin", "key", "revoke", key_id]).await);
    assert!(first.starts_with("revoked"), "{first}");
    let second = stdout(&spool(dir.path(), &["admin", "key", "revoke", key_id]).await);
    assert!(second.contains("already revoked"), "{second}");
    let revocations =
        stdout(&spool(dir.path(), &["events", "list", "--json", "--type", "key.revoked"]).await);
    assert_eq!(revocations.lines().count(), 1, "{revocations}");
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

/// A broker or database that cannot be reached at start is named in a clear
/// error, and the server exits non-zero instead of serving half a setup.
#[tokio::test]
async fn serve_names_an_unreachable_broker_or_database_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spool(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "https://spool.example.com",
            "--log",
            "kafka://127.0.0.1:1/events",
        ],
    )
    .await;
    assert!(!broker.status.success());
    let said = String::from_utf8_lossy(&broker.stderr);
    assert!(said.contains("Kafka") && said.contains("127.0.0.1:1"), "{said}");

    let database = spool(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "https://spool.example.com",
            "--views",
            "postgres://spool:secret@127.0.0.1:1/spool",
        ],
    )
    .await;
    assert!(!database.status.success());
    let said = String::from_utf8_lossy(&database.stderr);
    assert!(said.contains("read models") && said.contains("127.0.0.1:1"), "{said}");
    assert!(!said.contains("secret"), "the password leaked: {said}");

    let typo = spool(dir.path(), &["serve", "--log", "kafak://x:1"]).await;
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("expected `sqlite` or `kafka://"));
}

#[tokio::test]
async fn a_key_limit_kept_in_redis_outlives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let url = std::env::var("SPOOL_TEST_REDIS")
        .expect("SPOOL_TEST_REDIS is not set: run the tests through scripts/test");
    let redis = [("SPOOL_RATE_LIMIT_STORE", url.as_str())];
    let mut server = serve_with(data.path(), &redis).await;
    let (key, key_id) = (server.admin_key.clone().unwrap(), server.admin_key_id.clone().unwrap());
    let http = reqwest::Client::new();
    let set = http
        .put(format!("{}/v1/rate-limits/keys/{key_id}", server.base))
        .bearer_auth(&key)
        .json(&json!({"limit": {"requests": 2, "window_seconds": 3600}}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200, "{}", set.text().await.unwrap());
    let get = || http.get(format!("{}/v1/rate-limits/tiers", server.base)).bearer_auth(&key).send();
    for left in ["1", "0"] {
        let response = get().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-policy"], "\"custom\";q=2;w=3600;spool-burst=2");
        let state = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(state.starts_with(&format!("\"custom\";r={left};")), "{state}");
    }
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    server.signal("-TERM");
    assert!(server.wait().await.success());

    // The count lives in Redis, not in the process: a new process on the
    // same data still refuses the key.
    let server = serve_with(data.path(), &redis).await;
    let refused = http
        .get(format!("{}/v1/rate-limits/tiers", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["violated-policies"], json!(["custom"]));
}
