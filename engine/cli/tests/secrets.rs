//! The secret scan: the real `spool serve`, logging at `debug`, goes
//! through every path that makes, shows or checks a secret (the bootstrap
//! admin key, keys created, replayed and rolled, an OAuth client, tokens
//! issued, introspected, used and revoked, wrong keys and client secrets),
//! and the test keeps every secret it saw. Then it looks for each of them
//! everywhere the server writes: its stdout (but for the one `admin key:`
//! line printed by design) and stderr, every event of the log, every
//! column of every table of `log.db` and `views.db` (as text, and
//! base64- or hex-decoded), the raw bytes of every file of the data
//! directory, and every error body the run received. None may hold any.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");
const DEADLINE: Duration = Duration::from_secs(30);
const FORM: &str = "application/x-www-form-urlencoded";

struct Server {
    child: Child,
    base: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Keeps every line of `reader` in `lines`, as it comes.
fn collect(reader: impl AsyncBufRead + Unpin + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut reader = reader.lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    });
}

/// `spool serve` on a free port, logging at `debug`.
async fn serve(data_dir: &Path) -> Server {
    let mut child = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        // Spool's own crates at their most verbose.
        .env(
            "RUST_LOG",
            "debug,spool=trace,spool_api=trace,spool_log=trace,spool_projections=trace",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    collect(BufReader::new(child.stdout.take().unwrap()), stdout.clone());
    collect(BufReader::new(child.stderr.take().unwrap()), stderr.clone());
    let address = tokio::time::timeout(DEADLINE, async {
        loop {
            let listening = stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned));
            if let Some(address) = listening {
                return address;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("spool serve listens; stderr: {:?}", stderr.lock().unwrap()));
    Server { child, base: format!("http://{address}"), stdout, stderr }
}

impl Server {
    fn admin_key(&self) -> String {
        let lines = self.stdout.lock().unwrap();
        let printed: Vec<&String> =
            lines.iter().filter(|line| line.starts_with("admin key: ")).collect();
        assert_eq!(printed.len(), 1, "one admin key line: {lines:?}");
        printed[0]["admin key: ".len()..].to_owned()
    }

    async fn stop(mut self) -> (Vec<String>, Vec<String>) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(
            std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success()
        );
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("spool serve stops")
            .unwrap();
        assert!(status.success(), "{status}");
        // The collectors read to the end of the pipes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        (stdout, stderr)
    }
}

/// A client of the server that keeps every secret it is shown or sends,
/// and every error body it receives.
struct Run {
    http: reqwest::Client,
    base: String,
    /// (what it is, the secret).
    secrets: Vec<(String, String)>,
    error_bodies: Vec<String>,
}

impl Run {
    fn secret(&mut self, what: &str, secret: &str) -> String {
        assert!(secret.len() >= 20, "{what} looks like a secret: {secret:?}");
        self.secrets.push((what.to_owned(), secret.to_owned()));
        secret.to_owned()
    }

    /// Sends, checks the status, and keeps the body if it is an error.
    async fn send(
        &mut self,
        request: reqwest::RequestBuilder,
        expected: u16,
    ) -> (reqwest::header::HeaderMap, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        assert_eq!(status, expected, "{text}");
        if status >= 400 {
            self.error_bodies.push(text.clone());
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (headers, body)
    }

    fn post(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(key)
    }

    fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(key)
    }

    fn form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (name, value) in fields {
            form.append_pair(name, value);
        }
        self.http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, FORM)
            .body(form.finish())
    }
}

/// Goes through every secret-producing path, keeping the secrets seen.
async fn scenario(run: &mut Run, admin: &str) {
    // A key, created with an Idempotency-Key and replayed.
    let body = json!({"name": "worker", "scopes": ["events:read", "events:write"]});
    let (http, base) = (run.http.clone(), run.base.clone());
    let create = || {
        http.post(format!("{base}/v1/keys"))
            .bearer_auth(admin)
            .header("idempotency-key", "worker-1")
            .json(&body)
    };
    let (_, created) = run.send(create(), 201).await;
    let worker = run.secret("a created key", created["secret"].as_str().unwrap());
    let key_id = created["id"].as_str().unwrap().to_owned();
    let (headers, replayed) = run.send(create(), 201).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replayed, created, "the replay shows the same secret");
    // The same Idempotency-Key with another body: refused.
    let other = run
        .post("/v1/keys", admin)
        .header("idempotency-key", "worker-1")
        .json(&json!({"name": "other", "scopes": ["admin"]}));
    run.send(other, 422).await;

    // Rolled: a new secret; the old one works for the grace period.
    let roll = run
        .post(&format!("/v1/keys/{key_id}/roll"), admin)
        .json(&json!({"grace_period_seconds": 60}));
    let (_, rolled) = run.send(roll, 200).await;
    let rolled = run.secret("a rolled key", rolled["secret"].as_str().unwrap());
    for key in [&worker, &rolled] {
        let event =
            run.post("/v1/events", key).json(&json!({"type": "order.created", "data": {"n": 1}}));
        run.send(event, 201).await;
    }

    // A rate-limit tier for the key: nothing secret, but rows in every
    // read model's tables for the scan.
    let tier = run.http.put(format!("{}/v1/rate-limits/tiers/gold", run.base)).bearer_auth(admin);
    run.send(tier.json(&json!({"requests": 100, "window_seconds": 1})), 200).await;
    let limit =
        run.http.put(format!("{}/v1/rate-limits/keys/{key_id}", run.base)).bearer_auth(admin);
    run.send(limit.json(&json!({"tier": "gold"})), 200).await;

    // An OAuth client; tokens by HTTP Basic and by form fields.
    let client = run
        .post("/v1/oauth/clients", admin)
        .json(&json!({"name": "sync", "scopes": ["events:read", "events:write"]}));
    let (_, client) = run.send(client, 201).await;
    let client_id = client["id"].as_str().unwrap().to_owned();
    let client_secret = run.secret("a client secret", client["client_secret"].as_str().unwrap());
    let grant = [("grant_type", "client_credentials")];
    let basic = run.form("/oauth/token", &grant).basic_auth(&client_id, Some(&client_secret));
    let (headers, issued) = run.send(basic, 200).await;
    assert_eq!(headers["cache-control"], "no-store");
    let token = run.secret("an access token", issued["access_token"].as_str().unwrap());
    let fields = [
        ("grant_type", "client_credentials"),
        ("client_id", &client_id),
        ("client_secret", &client_secret),
        ("scope", "events:read"),
    ];
    let (_, issued) = run.send(run.form("/oauth/token", &fields), 200).await;
    let narrowed = run.secret("a narrowed access token", issued["access_token"].as_str().unwrap());

    // Used, introspected (by the client and by an admin key), revoked.
    run.send(run.get("/v1/events", &token), 200).await;
    let introspect = run
        .form("/oauth/introspect", &[("token", &token)])
        .basic_auth(&client_id, Some(&client_secret));
    let (_, introspection) = run.send(introspect, 200).await;
    assert_eq!(introspection["active"], true);
    let introspect = run.form("/oauth/introspect", &[("token", &narrowed)]).bearer_auth(admin);
    run.send(introspect, 200).await;
    let revoke = run
        .form("/oauth/revoke", &[("token", &narrowed)])
        .basic_auth(&client_id, Some(&client_secret));
    run.send(revoke, 200).await;
    run.send(run.get("/v1/events", &narrowed), 401).await;
    let introspect = run
        .form("/oauth/introspect", &[("token", &narrowed)])
        .basic_auth(&client_id, Some(&client_secret));
    let (_, introspection) = run.send(introspect, 200).await;
    assert_eq!(introspection, json!({"active": false}));

    // Failed authentication: wrong keys, wrong client secrets, a token
    // used as a client secret, a key sent where a client secret goes.
    let near_miss =
        format!("{}{}", &rolled[..rolled.len() - 1], if rolled.ends_with('A') { 'B' } else { 'A' });
    let near_miss = run.secret("a wrong key (one character off)", &near_miss);
    let mistyped = run.secret("a mistyped key", "spk_live_0123456789abcdefghijABCDEFGHIJklZZZZZZ");
    // Well formed (its checksum holds) but unknown: looked up, not found.
    let unknown = run.secret("an unknown key", &spool_api::keys::generate().secret);
    for key in [&near_miss, &mistyped, &unknown, &format!("{admin}x")] {
        run.send(run.get("/v1/events", key), 401).await;
    }
    let wrong_secret = run.secret(
        "a wrong client secret",
        &format!("{}x", &client_secret[..client_secret.len() - 1]),
    );
    for secret in [&wrong_secret, &token, &worker] {
        run.send(run.form("/oauth/token", &grant).basic_auth(&client_id, Some(secret)), 401).await;
        let fields = [
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("client_secret", secret),
        ];
        run.send(run.form("/oauth/token", &fields), 401).await;
    }
    // Both kinds of client authentication at once, and a malformed header.
    let both = run.form("/oauth/token", &fields).basic_auth(&client_id, Some(&client_secret));
    run.send(both, 400).await;
    let malformed = run
        .http
        .get(format!("{}/v1/events", run.base))
        .header(reqwest::header::AUTHORIZATION, format!("Basic {worker}"));
    run.send(malformed, 401).await;
}

/// Waits until the `usage` read model shows the run's requests, so that
/// its tables are among those scanned with rows in them.
async fn usage_projected(run: &Run, admin: &str) {
    let now = chrono::Utc::now();
    let (from, to) = (now - chrono::Duration::hours(1), now + chrono::Duration::hours(1));
    let uri = format!(
        "/v1/usage?from={}&to={}",
        from.format("%Y-%m-%dT%H:%M:%SZ"),
        to.format("%Y-%m-%dT%H:%M:%SZ")
    );
    tokio::time::timeout(DEADLINE, async {
        loop {
            let report: Value = run.get(&uri, admin).send().await.unwrap().json().await.unwrap();
            if report["rows"].as_array().is_some_and(|rows| !rows.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the usage read model shows the requests");
}

/// What a secret looks like wherever it might have been copied: whole,
/// its random part without the prefix, and a token's signature.
fn needles(secrets: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    let mut needles = Vec::new();
    for (what, secret) in secrets {
        needles.push((what.clone(), secret.as_bytes().to_vec()));
        if let Some((_, random)) = secret.rsplit_once('_')
            && random.len() >= 16
        {
            needles.push((format!("{what} (its random part)"), random.as_bytes().to_vec()));
        }
        if let [_, _, signature] = secret.split('.').collect::<Vec<_>>()[..] {
            needles.push((format!("{what} (its signature)"), signature.as_bytes().to_vec()));
        }
    }
    needles
}

/// `text`, and what its base64 or hex words decode to.
fn readings(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut readings = vec![bytes.to_vec()];
    let text = String::from_utf8_lossy(bytes);
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)));
    for word in words.filter(|word| word.len() >= 16) {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(decoded) = engine.decode(word) {
                readings.push(decoded);
            }
        }
        if word.len() % 2 == 0 && word.chars().all(|c| c.is_ascii_hexdigit()) {
            let decoded = (0..word.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&word[i..i + 2], 16).unwrap());
            readings.push(decoded.collect());
        }
    }
    readings
}

struct Scan {
    needles: Vec<(String, Vec<u8>)>,
    found: Vec<String>,
}

impl Scan {
    /// Looks for every needle in `bytes` and in what its words decode to.
    fn check(&mut self, place: &str, bytes: &[u8]) {
        for reading in readings(bytes) {
            self.check_raw(place, &reading);
        }
    }

    fn check_raw(&mut self, place: &str, bytes: &[u8]) {
        for (what, needle) in &self.needles {
            if bytes.windows(needle.len()).any(|window| window == &needle[..]) {
                self.found.push(format!("{what} in {place}"));
            }
        }
    }
}

/// Every cell of every table of the SQLite database at `path`, as
/// `(table, rows, cells)`, each checked; the number of rows per table.
async fn scan_database(scan: &mut Scan, path: &Path) -> Vec<(String, usize)> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut connection = SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let mut counts = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query(&format!("PRAGMA table_info(\"{table}\")"))
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("name"))
            .collect();
        // Every column as its bytes, whatever its type.
        let select = columns
            .iter()
            .map(|column| format!("CAST(\"{column}\" AS BLOB)"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!("SELECT {select} FROM \"{table}\""))
            .fetch_all(&mut connection)
            .await
            .unwrap();
        for (n, row) in rows.iter().enumerate() {
            for (index, column) in columns.iter().enumerate() {
                if let Some(bytes) = row.get::<Option<Vec<u8>>, _>(index) {
                    scan.check(&format!("{} {table}.{column} row {n}", path.display()), &bytes);
                }
            }
        }
        counts.push((table, rows.len()));
    }
    connection.close().await.unwrap();
    counts
}

#[tokio::test]
async fn no_secret_reaches_the_logs_the_events_the_read_models_or_an_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let mut run = Run {
        http: reqwest::Client::new(),
        base: server.base.clone(),
        secrets: Vec::new(),
        error_bodies: Vec::new(),
    };
    let admin = server.admin_key();
    run.secret("the bootstrap admin key", &admin);
    scenario(&mut run, &admin).await;
    usage_projected(&run, &admin).await;
    let (stdout, stderr) = server.stop().await;

    let mut scan = Scan { needles: needles(&run.secrets), found: Vec::new() };
    let mut admin_lines = 0;
    for line in &stdout {
        if line.strip_prefix("admin key: ") == Some(admin.as_str()) {
            admin_lines += 1;
            continue;
        }
        scan.check("stdout", line.as_bytes());
    }
    assert_eq!(admin_lines, 1, "the admin key is printed once, by design");
    assert!(
        stderr.iter().any(|line| line.contains("DEBUG")),
        "the server logged at debug: {stderr:?}"
    );
    for line in &stderr {
        scan.check("stderr", line.as_bytes());
    }
    assert!(run.error_bodies.len() >= 10, "errors were received: {:?}", run.error_bodies);
    for body in &run.error_bodies {
        scan.check("an error body", body.as_bytes());
    }

    // Every event, as the operator reads them.
    let listed = Command::new(SPOOL)
        .args(["events", "list", "--json", "--limit", "100000", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let events: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|event| event["type"].as_str()).collect();
    for expected in [
        "key.created",
        "key.rolled",
        "oauth.client_created",
        "oauth.signing_key_published",
        "oauth.token_revoked",
        "api.call",
    ] {
        assert!(types.contains(&expected), "the log holds {expected}: {types:?}");
    }
    for event in &events {
        scan.check(&format!("event {}", event["id"]), event.to_string().as_bytes());
        if event["type"] == "oauth.signing_key_published" {
            let jwk = event["data"]["jwk"].as_object().expect("the published key");
            assert!(!jwk.contains_key("d"), "only the public half is published: {jwk:?}");
        }
    }

    // Every table of both databases, and every byte of every file.
    let log_tables = scan_database(&mut scan, &dir.path().join("log.db")).await;
    assert!(
        log_tables.iter().map(|(_, rows)| rows).sum::<usize>() >= events.len(),
        "{log_tables:?}"
    );
    let view_tables = scan_database(&mut scan, &dir.path().join("views.db")).await;
    let empty: Vec<&String> =
        view_tables.iter().filter(|(_, rows)| *rows == 0).map(|(table, _)| table).collect();
    assert!(
        view_tables.len() >= 10 && empty.is_empty(),
        "every read-model table holds rows: {view_tables:?}"
    );
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        scan.check_raw(&format!("the file {}", path.display()), &std::fs::read(&path).unwrap());
    }

    scan.found.sort();
    scan.found.dedup();
    assert!(scan.found.is_empty(), "secrets leaked:\n{}", scan.found.join("\n"));
}
