//! `GET /v1/usage`: real requests counted per route and status class,
//! percentiles against exact values, merged over minutes, hours and days,
//! CSV, bad parameters, tenant isolation and test mode apart.

mod support;

use std::time::Duration as StdDuration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{Value, json};
use spool_api::ApiOptions;
use spool_api::keys::{self, Mode};
use spool_log::NewEvent;
use spool_schemas::{ApiCall, Event, KeyCreated, KeyId, Scope, StreamName, TenantId};

use support::*;

const INVALID_QUERY: &str = "https://spool.dev/problems/invalid-query";

/// A recorded request, appended as the recorder would have.
fn call(key: &Key, route: &str, status: u16, latency_us: u64, at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        key.tenant,
        StreamName::for_api_calls(Some(key.key_id)),
        Event::ApiCall(ApiCall {
            key_id: Some(key.key_id),
            client_id: None,
            method: "GET".into(),
            route: route.into(),
            status,
            latency_us,
        }),
    );
    event.recorded_at = at;
    event
}

/// A test-mode key of `live`'s sandbox twin.
async fn test_key(h: &Harness, live: TenantId, scopes: &[Scope]) -> Key {
    let generated = keys::generate_in(Mode::Test);
    let tenant = live.test_twin();
    h.append(vec![NewEvent::new(
        tenant,
        StreamName::new(format!("key/{}", generated.key_id)).unwrap(),
        Event::KeyCreated(KeyCreated {
            key_id: generated.key_id,
            name: "sandbox".into(),
            secret_hash: generated.secret_hash.clone(),
            scopes: scopes.to_vec(),
            expires_at: None,
        }),
    )])
    .await;
    Key { tenant, key_id: generated.key_id, secret: generated.secret }
}

fn usage_uri(from: DateTime<Utc>, to: DateTime<Utc>, rest: &str) -> String {
    let from = from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!("/v1/usage?from={from}&to={to}{rest}")
}

fn rows(response: &Response) -> &Vec<Value> {
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    response.json["rows"].as_array().expect("rows")
}

/// The latency at nearest rank `ceil(percent × n / 100)`, in ms.
fn exact_ms(latencies: &[u64], percent: u64) -> f64 {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = (percent * sorted.len() as u64).div_ceil(100).max(1);
    sorted[rank as usize - 1] as f64 / 1_000.0
}

fn assert_percentiles(row: &Value, latencies: &[u64]) {
    for percent in [50, 95, 99] {
        let exact = exact_ms(latencies, percent);
        let reported = row[format!("p{percent}_ms")].as_f64().expect("a percentile");
        // 1% relative, plus the rounding to the microsecond.
        assert!(
            (reported - exact).abs() <= exact * 0.01 + 0.0005,
            "p{percent}: {reported} ms, exactly {exact} ms, in {row}"
        );
    }
}

#[tokio::test]
async fn usage_counts_real_requests_per_route_and_status_class() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite, Scope::UsageRead]).await;
    for n in 0..3 {
        let response = h.post_json(&key, json!({"type": "order.created", "data": n})).await;
        assert_eq!(response.status, StatusCode::CREATED);
    }
    for _ in 0..2 {
        let response = h.get(Some(&key), "/v1/events?type=has%20space").await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(h.get(Some(&key), "/v1/nowhere").await.status, StatusCode::NOT_FOUND);
    // The records reach the log after the responses, then the projection.
    h.api_calls(6).await;
    let head = *h.log.head(0).borrow();
    tokio::time::timeout(WAIT, h.runner.wait_for(head)).await.unwrap().unwrap();

    let now = Utc::now();
    let uri =
        usage_uri(now - Duration::hours(1), now + Duration::hours(1), "&group_by=route,status");
    let response = h.get(Some(&key), &uri).await;
    let mut seen: Vec<(String, String, String, u64, u64)> = rows(&response)
        .iter()
        .map(|row| {
            assert!(row.get("key_id").is_none(), "not grouped by key: {row}");
            assert!(row["p99_ms"].as_f64().unwrap() >= row["p50_ms"].as_f64().unwrap());
            (
                row["method"].as_str().unwrap().to_owned(),
                row["route"].as_str().unwrap().to_owned(),
                row["status_class"].as_str().unwrap().to_owned(),
                row["requests"].as_u64().unwrap(),
                row["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let row = |method: &str, route: &str, class: &str, requests, errors| {
        (method.to_owned(), route.to_owned(), class.to_owned(), requests, errors)
    };
    assert_eq!(
        seen,
        [
            row("GET", "/v1/events", "4xx", 2, 2),
            row("GET", "<unmatched>", "4xx", 1, 1),
            row("POST", "/v1/events", "2xx", 3, 0),
        ]
    );
    assert_eq!(response.json["livemode"], true);
    assert_eq!(response.json["granularity"], "hour");
    assert_eq!(response.json["group_by"], json!(["route", "status"]));
}

#[tokio::test]
async fn usage_percentiles_merge_minutes_into_hours_and_days_within_one_percent() {
    let h = harness().await;
    let key = h.tenant(&[Scope::UsageRead]).await;
    let start: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    // 600 calls over two days and a bit, every 5 minutes and 17 seconds,
    // latencies from 50 µs to about 3 s, a tenth of them failing.
    let mut events = Vec::new();
    let mut latencies: Vec<(DateTime<Utc>, u64, u16)> = Vec::new();
    for i in 0..600_u64 {
        let at = start + Duration::seconds(i as i64 * 317);
        let latency_us = 50 + i * i * 7_919 % 3_000_000;
        let status = if i % 10 == 0 { 503 } else { 200 };
        events.push(call(&key, "/v1/events", status, latency_us, at));
        latencies.push((at, latency_us, status));
    }
    h.append(events).await;

    for (granularity, step) in
        [("minute", Duration::minutes(1)), ("hour", Duration::hours(1)), ("day", Duration::days(1))]
    {
        let to = if granularity == "minute" {
            start + Duration::days(1)
        } else {
            start + Duration::days(3)
        };
        let uri = usage_uri(start, to, &format!("&granularity={granularity}"));
        let response = h.get(Some(&key), &uri).await;
        let rows = rows(&response);
        let mut n_requests = 0;
        for row in rows {
            let row_start: DateTime<Utc> = row["start"].as_str().unwrap().parse().unwrap();
            assert_eq!(row_start.duration_trunc(step).unwrap(), row_start, "{granularity}: {row}");
            let inside: Vec<&(DateTime<Utc>, u64, u16)> = latencies
                .iter()
                .filter(|(at, ..)| *at >= row_start && *at < row_start + step && *at < to)
                .collect();
            assert_eq!(row["requests"], inside.len() as u64, "{granularity}: {row}");
            let errors = inside.iter().filter(|(.., status)| *status >= 400).count();
            assert_eq!(row["errors"], errors as u64, "{granularity}: {row}");
            let inside: Vec<u64> = inside.iter().map(|(_, latency, _)| *latency).collect();
            assert_percentiles(row, &inside);
            n_requests += inside.len();
        }
        let expected = latencies.iter().filter(|(at, ..)| *at < to).count();
        assert_eq!(n_requests, expected, "{granularity}: every call in a row");
    }
    // One day holds many minutes and hours: its percentiles are the merged
    // sketches' (averaging the hours' percentiles would be far off here).
    let response =
        h.get(Some(&key), &usage_uri(start, start + Duration::days(1), "&granularity=day")).await;
    assert_eq!(rows(&response).len(), 1);
    let first_day: Vec<u64> = latencies
        .iter()
        .filter(|(at, ..)| *at < start + Duration::days(1))
        .map(|(_, latency, _)| *latency)
        .collect();
    assert!(first_day.len() > 250);
    assert_percentiles(&rows(&response)[0], &first_day);
}

#[tokio::test]
async fn usage_groups_by_key_and_answers_csv_when_asked() {
    let h = harness().await;
    let key = h.tenant(&[Scope::UsageRead]).await;
    let other = h.key(key.tenant, &[Scope::EventsRead], None).await;
    let start: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
    h.append(vec![
        call(&key, "/v1/usage", 200, 1_000, start),
        call(&key, "/v1/usage", 200, 2_000, start + Duration::seconds(70)),
        call(&other, "/v1/events", 404, 3_000, start + Duration::seconds(5)),
    ])
    .await;
    let uri = usage_uri(start, start + Duration::hours(1), "&group_by=key,status");
    let json = h.get(Some(&key), &uri).await;
    let by_key: Vec<(String, String, u64, u64)> = rows(&json)
        .iter()
        .map(|row| {
            assert!(row.get("route").is_none(), "not grouped by route: {row}");
            (
                row["key_id"].as_str().unwrap().to_owned(),
                row["status_class"].as_str().unwrap().to_owned(),
                row["requests"].as_u64().unwrap(),
                row["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![
        (key.key_id.to_string(), "2xx".to_owned(), 2, 0),
        (other.key_id.to_string(), "4xx".to_owned(), 1, 1),
    ];
    expected.sort();
    assert_eq!(by_key, expected, "ordered by key");

    let request = |accept: &str| {
        Request::builder()
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap()
    };
    let csv = h.send(request("text/csv")).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let text = csv.json.as_str().expect("CSV text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "start,key_id,status_class,requests,errors,p50_ms,p95_ms,p99_ms");
    assert_eq!(lines.len(), 3, "{text}");
    for (line, row) in lines[1..].iter().zip(rows(&json)) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], "2026-03-01T10:00:00Z");
        assert_eq!(fields[1], row["key_id"]);
        assert_eq!(fields[2], row["status_class"]);
        assert_eq!(fields[3], row["requests"].to_string());
        assert_eq!(fields[4], row["errors"].to_string());
        for (field, name) in fields[5..].iter().zip(["p50_ms", "p95_ms", "p99_ms"]) {
            assert_eq!(field.parse::<f64>().unwrap(), row[name].as_f64().unwrap());
        }
    }
    // JSON when preferred or when nothing is said.
    let preferred = h.send(request("text/csv;q=0.5, application/json")).await;
    assert_eq!(preferred.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(preferred.json["rows"], json.json["rows"]);
    let csv_first = h.send(request("application/json;q=0.2, text/csv")).await;
    assert_eq!(csv_first.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
}

#[tokio::test]
async fn usage_refuses_bad_parameters_naming_them() {
    let h = harness().await;
    let key = h.tenant(&[Scope::UsageRead]).await;
    let cases = [
        ("/v1/usage?to=2026-03-02T00:00:00Z", "`from` is required"),
        ("/v1/usage?from=2026-03-01T00:00:00Z", "`to` is required"),
        ("/v1/usage?from=yesterday&to=2026-03-02T00:00:00Z", "`from` must be an RFC 3339 time"),
        ("/v1/usage?from=2026-03-01T00:00:00Z&to=2026-13-02", "`to` must be an RFC 3339 time"),
        (
            "/v1/usage?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
            "`from` must be before `to`",
        ),
        (
            "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            "`from` must be before `to`",
        ),
        (
            "/v1/usage?from=1969-12-31T00:00:00Z&to=1970-01-01T10:00:00Z",
            "`from` must not be before",
        ),
        (
            "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:01Z&granularity=minute",
            "at granularity=minute, `to` may be at most 1 day after `from`",
        ),
        (
            "/v1/usage?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            "at granularity=hour, `to` may be at most 31 days after `from`",
        ),
        (
            "/v1/usage?from=2024-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&granularity=day",
            "at granularity=day, `to` may be at most 366 days after `from`",
        ),
        (
            "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z&granularity=week",
            "`granularity` must be minute, hour or day, not \"week\"",
        ),
        (
            "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z&group_by=key,tenant",
            "`group_by` takes key, route and status, not \"tenant\"",
        ),
        ("/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z&tenant=x", "tenant"),
    ];
    for (uri, detail) in cases {
        let response = h.get(Some(&key), uri).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{uri}: {}", response.json);
        assert_eq!(response.problem_type(), INVALID_QUERY, "{uri}");
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/problem+json");
        let text = response.json["detail"].as_str().unwrap();
        assert!(text.contains(detail), "{uri}: {text:?} should say {detail:?}");
    }
    // The longest spans allowed are allowed.
    for uri in [
        "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z&granularity=minute",
        "/v1/usage?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        "/v1/usage?from=2025-03-01T00:00:00Z&to=2026-03-01T00:00:00Z&granularity=day&group_by=",
    ] {
        assert_eq!(h.get(Some(&key), uri).await.status, StatusCode::OK, "{uri}");
    }

    let reader = h.key(key.tenant, &[Scope::EventsRead], None).await;
    let uri = "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z";
    let forbidden = h.get(Some(&reader), uri).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert!(
        forbidden.json["detail"].as_str().unwrap().contains("usage:read"),
        "{}",
        forbidden.json
    );
    assert_eq!(h.get(None, uri).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn usage_is_per_tenant_and_test_mode_is_counted_apart() {
    let h = harness().await;
    let acme = h.tenant(&[Scope::UsageRead]).await;
    let acme_test = test_key(&h, acme.tenant, &[Scope::UsageRead]).await;
    let globex = h.tenant(&[Scope::UsageRead]).await;
    let hour: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
    let anonymous = Key { tenant: TenantId::SYSTEM, key_id: KeyId::new(), secret: String::new() };
    h.append(vec![
        call(&acme, "/v1/events", 200, 1_000, hour),
        call(&acme, "/v1/events", 200, 1_000, hour + Duration::minutes(1)),
        call(&acme_test, "/v1/events", 500, 9_000, hour + Duration::minutes(2)),
        call(&globex, "/v1/events", 404, 5_000, hour + Duration::minutes(3)),
        call(&anonymous, "/v1/events", 401, 100, hour + Duration::minutes(4)),
    ])
    .await;
    let uri = usage_uri(hour, hour + Duration::hours(1), "&group_by=key");
    let totals = |response: &Response| -> Vec<(String, u64, u64)> {
        rows(response)
            .iter()
            .map(|row| {
                let key_id = row["key_id"].as_str().unwrap().to_owned();
                (key_id, row["requests"].as_u64().unwrap(), row["errors"].as_u64().unwrap())
            })
            .collect()
    };

    let live = h.get(Some(&acme), &uri).await;
    assert_eq!(totals(&live), [(acme.key_id.to_string(), 2, 0)], "live traffic only");
    assert_eq!(live.json["livemode"], true);

    let sandbox = h.get(Some(&acme_test), &uri).await;
    assert_eq!(totals(&sandbox), [(acme_test.key_id.to_string(), 1, 1)], "test traffic only");
    assert_eq!(sandbox.json["livemode"], false);

    let theirs = h.get(Some(&globex), &uri).await;
    assert_eq!(totals(&theirs), [(globex.key_id.to_string(), 1, 1)], "nothing of acme's");
    let stranger = h.tenant(&[Scope::UsageRead]).await;
    assert_eq!(rows(&h.get(Some(&stranger), &uri).await).len(), 0);
}

#[tokio::test]
async fn requests_with_an_oauth_token_are_counted_under_their_client() {
    // It asks the same query again once its own call is projected; the
    // usage cache would answer that with the first answer.
    let h = harness_with(
        ApiOptions { usage_cache_ttl: StdDuration::ZERO, ..Default::default() },
        |log| log,
    )
    .await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let created = h
        .send(
            Request::builder()
                .method("POST")
                .uri("/v1/oauth/clients")
                .header(header::AUTHORIZATION, format!("Bearer {}", admin.secret))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"name": "reports", "scopes": ["usage:read"]}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    let client_id = created.json["id"].as_str().unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("client_secret", created.json["client_secret"].as_str().unwrap())
        .finish();
    let token = h
        .send(
            Request::builder()
                .method("POST")
                .uri("/oauth/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
        )
        .await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.json);
    let bearer = Key {
        tenant: admin.tenant,
        key_id: KeyId::new(),
        secret: token.json["access_token"].as_str().unwrap().to_owned(),
    };

    let now = Utc::now();
    let uri = usage_uri(now - Duration::hours(1), now + Duration::hours(1), "&group_by=key,route");
    assert_eq!(h.get(Some(&bearer), &uri).await.status, StatusCode::OK);
    let calls = h.api_calls(3).await;
    let (tenant, call) = calls.iter().find(|(_, call)| call.route == "/v1/usage").unwrap();
    assert_eq!((*tenant, call.key_id), (admin.tenant, None), "no key: a client");
    assert_eq!(call.client_id.map(|id| id.to_string()).as_deref(), Some(client_id));
    let head = *h.log.head(0).borrow();
    tokio::time::timeout(WAIT, h.runner.wait_for(head)).await.unwrap().unwrap();

    let response = h.get(Some(&bearer), &uri).await;
    let usage_rows: Vec<&Value> =
        rows(&response).iter().filter(|row| row["route"] == "/v1/usage").collect();
    assert_eq!(usage_rows.len(), 1, "{}", response.json);
    assert_eq!(usage_rows[0]["key_id"], client_id);
    assert_eq!(usage_rows[0]["requests"], 1);
}

/// Dashboards poll the same ranges: a tenant asking a query again within
/// `usage_cache_ttl` gets the answer computed before, another tenant
/// asking the same query gets its own, and past the TTL the answer is
/// computed afresh.
#[tokio::test]
async fn a_repeated_usage_query_is_answered_from_the_cache_until_its_ttl() {
    let ttl = StdDuration::from_secs(2);
    let h =
        harness_with(ApiOptions { usage_cache_ttl: ttl, ..Default::default() }, |log| log).await;
    let (a, b) = (h.tenant(&[Scope::UsageRead]).await, h.tenant(&[Scope::UsageRead]).await);
    let start: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
    let uri = usage_uri(start, start + Duration::hours(1), "");
    let requests = |response: &Response| -> u64 {
        rows(response).iter().map(|row| row["requests"].as_u64().unwrap()).sum()
    };

    h.append(vec![call(&a, "/v1/events", 200, 900, start)]).await;
    let first = h.get(Some(&a), &uri).await;
    let asked = std::time::Instant::now();
    assert_eq!(requests(&first), 1);
    h.append((0..4).map(|_| call(&a, "/v1/events", 200, 900, start)).collect()).await;
    let again = h.get(Some(&a), &uri).await;
    assert!(asked.elapsed() < ttl, "the test is too slow to see the cache");
    assert_eq!(again.json, first.json, "within the TTL: the same answer");
    assert_eq!(requests(&h.get(Some(&b), &uri).await), 0, "another tenant: its own answer");

    tokio::time::sleep(ttl.saturating_sub(asked.elapsed()) + StdDuration::from_millis(50)).await;
    assert_eq!(requests(&h.get(Some(&a), &uri).await), 5, "past the TTL: afresh");
}

#[tokio::test]
async fn the_openapi_document_describes_usage_with_its_scope_formats_and_errors() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let operation = &document["paths"]["/v1/usage"]["get"];
    let security = operation["security"].as_array().expect("security");
    assert!(
        security.iter().any(|scheme| scheme["api_key"] == json!(["usage:read"])),
        "{security:?}"
    );
    let ok = &operation["responses"]["200"]["content"];
    assert!(ok["application/json"]["example"]["rows"].is_array(), "{ok}");
    assert!(ok["text/csv"]["example"].as_str().unwrap().starts_with("start,"), "{ok}");
    for status in ["400", "401", "403"] {
        assert!(operation["responses"][status].is_object(), "{status}");
    }
    let parameters: Vec<&str> = operation["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|parameter| parameter["name"].as_str().unwrap())
        .collect();
    assert_eq!(parameters, ["from", "to", "granularity", "group_by"]);
}
