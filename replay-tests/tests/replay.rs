//! The replay harness: each recorded log under `logs/` is folded by every
//! built-in projection and the read models are compared, as text, with the
//! snapshot under `snapshots/`. Refresh with `UPDATE_EXPECT=1`.
//!
//! Recorded logs keep old payload versions (such as `key.created` v1) on
//! purpose: they must keep reading through the compatibility upgrades.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use chrono::DateTime;
use expect_test::{ExpectFile, expect_file};
use spool_log::{Append, Log, MemoryLog, NewEvent};
use spool_projections::{Runner, RunnerOptions, Views};
use spool_schemas::Envelope;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic() {
    check("basic.jsonl", expect_file!["../snapshots/basic.txt"]).await;
}

/// A live tenant with a test-mode key in its sandbox twin, rolled twice
/// (once with a grace period, once without), then revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys() {
    check("keys.jsonl", expect_file!["../snapshots/keys.txt"]).await;
}

/// Folds `logs/{log_name}` by rebuild and by the live runner, requires both
/// to agree, and compares the read models with `expect`.
async fn check(log_name: &str, expect: ExpectFile) {
    let log = recorded_log(log_name).await;
    let head = *log.head(0).borrow();

    let rebuilt = tempfile::tempdir().expect("tempdir");
    let rebuilt_views = Views::open(rebuilt.path().join("views.db")).await.expect("views");
    for projection in spool_projections::builtin() {
        spool_projections::rebuild(log.clone(), &rebuilt_views, projection, |_| {})
            .await
            .expect("rebuild");
    }

    let live = tempfile::tempdir().expect("tempdir");
    let live_views = Views::open(live.path().join("views.db")).await.expect("views");
    let runner = Runner::new(
        log.clone(),
        live_views.clone(),
        spool_projections::builtin(),
        // Small batches, so that batch boundaries fall inside the minutes.
        RunnerOptions { batch: 3 },
    );
    let handle = runner.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    handle.wait_for(head).await.expect("runner caught up");
    let _ = stop.send(());
    running.await.expect("runner task").expect("runner");

    let dump = dump(&rebuilt_views).await;
    assert_eq!(dump, self::dump(&live_views).await, "rebuild and live runner disagree");
    expect.assert_eq(&dump);
}

/// The recorded envelopes, appended one by one with their own ids and times.
async fn recorded_log(log_name: &str) -> Arc<dyn Log> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("logs").join(log_name);
    let text = std::fs::read_to_string(&path).expect("recorded log");
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let envelope: Envelope = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("{log_name}:{}: {error}", number + 1));
        let appended = log
            .append(Append::new(vec![NewEvent {
                id: envelope.id,
                tenant: envelope.tenant,
                stream: envelope.stream,
                recorded_at: envelope.recorded_at,
                causation_id: envelope.causation_id,
                correlation_id: envelope.correlation_id,
                event: envelope.event,
            }]))
            .await
            .expect("append");
        assert_eq!(
            appended[0].stream_version,
            envelope.stream_version,
            "{log_name}:{}: stream version as recorded",
            number + 1
        );
    }
    log
}

/// Every read model's rows, through the stable view names analysts use.
async fn dump(views: &Views) -> String {
    let mut out = String::new();
    let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT tenant, minute, event_type, count FROM event_counts \
         ORDER BY tenant, minute, event_type",
    )
    .fetch_all(views.pool())
    .await
    .expect("event_counts");
    writeln!(out, "# event_counts: tenant minute event_type count").unwrap();
    for (tenant, minute, event_type, count) in rows {
        let minute = DateTime::from_timestamp(minute, 0).expect("minute in range");
        writeln!(out, "{tenant} {} {event_type} {count}", minute.to_rfc3339()).unwrap();
    }

    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tenant, name, created_at FROM auth_tenants ORDER BY tenant")
            .fetch_all(views.pool())
            .await
            .expect("auth_tenants");
    writeln!(out, "\n# auth_tenants: tenant name created_at").unwrap();
    for (tenant, name, created_at) in rows {
        writeln!(out, "{tenant} {name:?} {created_at}").unwrap();
    }

    type KeyRow = (String, String, String, String, Option<String>, i64, String);
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT key_id, tenant, name, scopes, expires_at, revoked, created_at \
         FROM auth_keys ORDER BY key_id",
    )
    .fetch_all(views.pool())
    .await
    .expect("auth_keys");
    writeln!(out, "\n# auth_keys: key_id tenant name scopes expires_at revoked created_at")
        .unwrap();
    for (key_id, tenant, name, scopes, expires_at, revoked, created_at) in rows {
        let expires_at = expires_at.as_deref().unwrap_or("never");
        writeln!(out, "{key_id} {tenant} {name:?} {scopes:?} {expires_at} {revoked} {created_at}")
            .unwrap();
    }

    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT secret_hash, key_id, expires_at, created_at FROM auth_key_secrets \
         ORDER BY key_id, created_at, secret_hash",
    )
    .fetch_all(views.pool())
    .await
    .expect("auth_key_secrets");
    writeln!(out, "\n# auth_key_secrets: secret_hash key_id expires_at created_at").unwrap();
    for (hash, key_id, expires_at, created_at) in rows {
        let expires_at = expires_at.as_deref().unwrap_or("with-key");
        writeln!(out, "{hash} {key_id} {expires_at} {created_at}").unwrap();
    }
    out
}
