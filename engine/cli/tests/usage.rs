//! `spool usage` on a data directory whose log holds recorded requests:
//! the table, `--csv` and `--json` agree with each other and with exact
//! counts and percentiles; `--test` shows the sandbox twin's traffic only;
//! bad flags fail naming what is wrong.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use spool_log::{Append, Log, NewEvent, SqliteLog, SqliteOptions};
use spool_schemas::{ApiCall, Event, KeyId, StreamName, TenantId};
use tokio::process::Command;

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");
const DEADLINE: Duration = Duration::from_secs(60);

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

fn call(
    tenant: TenantId,
    key_id: KeyId,
    method: &str,
    status: u16,
    latency_us: u64,
    at: DateTime<Utc>,
) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::for_api_calls(Some(key_id)),
        Event::ApiCall(ApiCall {
            key_id: Some(key_id),
            client_id: None,
            method: method.into(),
            route: "/v1/events".into(),
            status,
            latency_us,
        }),
    );
    event.recorded_at = at;
    event
}

/// The latency at nearest rank `ceil(percent × n / 100)`, in ms.
fn exact_ms(latencies: &mut [u64], percent: u64) -> f64 {
    latencies.sort_unstable();
    let rank = (percent * latencies.len() as u64).div_ceil(100).max(1);
    latencies[rank as usize - 1] as f64 / 1_000.0
}

#[tokio::test]
async fn spool_usage_prints_a_table_csv_and_json_lines_of_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, key_id) = (TenantId::new(), KeyId::new());
    let start: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
    // In two hours: POSTs succeed (latency 100 µs to 10 ms), GETs half
    // fail; and some test-mode traffic of the same tenant.
    let mut events = Vec::new();
    let mut post_latencies = Vec::new();
    for i in 0..200_u64 {
        let at = start + chrono::Duration::seconds(i as i64 * 30);
        let latency_us = 100 + i * i * 37 % 9_900;
        post_latencies.push(latency_us);
        events.push(call(tenant, key_id, "POST", 201, latency_us, at));
        if i % 4 == 0 {
            // 200 or 400, by turns.
            events.push(call(tenant, key_id, "GET", 200 + 50 * (i % 8) as u16, 2_000, at));
        }
        if i % 10 == 0 {
            events.push(call(tenant.test_twin(), KeyId::new(), "GET", 200, 7_000, at));
        }
    }
    let log = SqliteLog::open(dir.path().join("log.db"), SqliteOptions::default()).await.unwrap();
    log.append(Append::new(events)).await.unwrap();
    log.close().await.unwrap();
    let rebuilt = stdout(&spool(dir.path(), &["projections", "rebuild", "usage"]).await);
    assert!(rebuilt.contains("rebuilt usage v1"), "{rebuilt}");

    let tenant_id = tenant.to_string();
    let usage = |extra: &[&'static str]| {
        let mut args = vec![
            "usage",
            "--tenant",
            &tenant_id,
            "--from",
            "2026-03-01T10:00:00Z",
            "--to",
            "2026-03-01T12:00:00Z",
            "--group-by",
            "route,status",
        ];
        args.extend(extra);
        let dir = dir.path().to_owned();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            stdout(&spool(&dir, &args).await)
        }
    };

    let json = usage(&["--json"]).await;
    let rows: Vec<Value> = json.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let summary: Vec<(String, String, String, u64, u64)> = rows
        .iter()
        .map(|row| {
            (
                row["start"].as_str().unwrap().to_owned(),
                row["method"].as_str().unwrap().to_owned(),
                row["status_class"].as_str().unwrap().to_owned(),
                row["requests"].as_u64().unwrap(),
                row["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |hour: &str, method: &str, class: &str, requests, errors| {
        (format!("2026-03-01T{hour}:00:00Z"), method.to_owned(), class.to_owned(), requests, errors)
    };
    assert_eq!(
        summary,
        [
            row("10", "GET", "2xx", 15, 0),
            row("10", "GET", "4xx", 15, 15),
            row("10", "POST", "2xx", 120, 0),
            row("11", "GET", "2xx", 10, 0),
            row("11", "GET", "4xx", 10, 10),
            row("11", "POST", "2xx", 80, 0),
        ]
    );
    let (first_hour, second_hour) = post_latencies.split_at_mut(120);
    for (row, latencies) in [(&rows[2], first_hour), (&rows[5], second_hour)] {
        for percent in [50, 95, 99] {
            let exact = exact_ms(latencies, percent);
            let printed = row[format!("p{percent}_ms")].as_f64().unwrap();
            assert!((printed - exact).abs() <= exact * 0.01 + 0.0005, "p{percent}: {row}");
        }
    }

    let csv = usage(&["--csv"]).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "start,method,route,status_class,requests,errors,p50_ms,p95_ms,p99_ms");
    assert_eq!(lines.len(), rows.len() + 1);
    for (line, row) in lines[1..].iter().zip(&rows) {
        let fields: Vec<&str> = line.split(',').collect();
        let expected = [
            row["start"].as_str().unwrap().to_owned(),
            row["method"].as_str().unwrap().to_owned(),
            row["route"].as_str().unwrap().to_owned(),
            row["status_class"].as_str().unwrap().to_owned(),
            row["requests"].to_string(),
            row["errors"].to_string(),
        ];
        assert_eq!(fields[..6], expected, "{line}");
        for (field, name) in fields[6..].iter().zip(["p50_ms", "p95_ms", "p99_ms"]) {
            assert_eq!(field.parse::<f64>().unwrap(), row[name].as_f64().unwrap(), "{line}");
        }
    }

    let table = usage(&[]).await;
    let lines: Vec<Vec<&str>> =
        table.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["START", "METHOD", "ROUTE", "STATUS", "REQUESTS", "ERRORS", "P50_MS", "P95_MS", "P99_MS"]
    );
    assert_eq!(lines.len(), rows.len() + 1);
    for (cells, row) in lines[1..].iter().zip(&rows) {
        assert_eq!(
            cells[..4],
            [
                row["start"].as_str().unwrap(),
                row["method"].as_str().unwrap(),
                "/v1/events",
                row["status_class"].as_str().unwrap()
            ]
        );
        assert_eq!(cells[4], row["requests"].to_string());
        assert_eq!(cells[6].parse::<f64>().unwrap(), row["p50_ms"].as_f64().unwrap());
    }

    let sandbox = usage(&["--test", "--json"]).await;
    let sandbox: Vec<Value> =
        sandbox.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let requests: Vec<u64> = sandbox.iter().map(|row| row["requests"].as_u64().unwrap()).collect();
    assert_eq!(requests, [12, 8], "only the test-mode calls, per hour");
}

#[tokio::test]
async fn spool_usage_refuses_bad_flags_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new().to_string();
    for (args, says) in [
        (vec!["--granularity", "week"], "`granularity` must be minute, hour or day"),
        (vec!["--group-by", "key,tenant"], "`group_by` takes key, route and status"),
        (
            vec!["--from", "2026-03-02T00:00:00Z", "--to", "2026-03-01T00:00:00Z"],
            "`from` must be before `to`",
        ),
        (
            vec![
                "--granularity",
                "minute",
                "--from",
                "2026-03-01T00:00:00Z",
                "--to",
                "2026-03-03T00:00:00Z",
            ],
            "may be at most 1 day after `from`",
        ),
        (vec!["--from", "yesterday"], "--from"),
        (vec!["--csv", "--json"], "cannot be used with"),
    ] {
        let mut all = vec!["usage", "--tenant", tenant.as_str()];
        all.extend(&args);
        let output = spool(dir.path(), &all).await;
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let output = spool(dir.path(), &["usage"]).await;
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tenant"));
}
