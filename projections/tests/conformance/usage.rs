//! The `usage` read model: counts and latency percentiles per tenant, key,
//! route, status class and minute, checked against exact values computed
//! from the same calls, merged over hours and days, grouped every way; test
//! mode and tenants apart; the analysts' SQL; partitions and batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use spool_log::{Log, NewEvent};
use spool_projections::Views;
use spool_projections::usage::sketch::RELATIVE_ACCURACY;
use spool_projections::usage::{
    self, Credential, Granularity, GroupBy, Usage, UsageQuery, UsageRow,
};
use spool_schemas::{ApiCall, ClientId, Event, KeyId, StreamName, TenantId};

use crate::support::*;

/// One recorded request, as the tests know it.
#[derive(Clone, Debug)]
struct Call {
    tenant: TenantId,
    credential: Option<Credential>,
    method: &'static str,
    route: &'static str,
    status: u16,
    latency_us: u64,
    at: DateTime<Utc>,
}

impl Call {
    fn event(&self) -> NewEvent {
        let mut event = NewEvent::new(
            self.tenant,
            StreamName::new(match self.credential {
                Some(credential) => format!("api/{credential}"),
                None => "api/anonymous".to_owned(),
            })
            .expect("valid stream"),
            Event::ApiCall(ApiCall {
                key_id: match self.credential {
                    Some(Credential::Key(key_id)) => Some(key_id),
                    _ => None,
                },
                client_id: match self.credential {
                    Some(Credential::Client(client_id)) => Some(client_id),
                    _ => None,
                },
                method: self.method.to_owned(),
                route: self.route.to_owned(),
                status: self.status,
                latency_us: self.latency_us,
            }),
        );
        event.recorded_at = self.at;
        event
    }
}

/// The tenants and keys of [`calls`].
struct World {
    acme: TenantId,
    globex: TenantId,
    acme_keys: [KeyId; 2],
    acme_client: ClientId,
    acme_test_key: KeyId,
    globex_key: KeyId,
}

impl World {
    fn new() -> World {
        World {
            acme: TenantId::new(),
            globex: TenantId::new(),
            acme_keys: [KeyId::new(), KeyId::new()],
            acme_client: ClientId::new(),
            acme_test_key: KeyId::new(),
            globex_key: KeyId::new(),
        }
    }
}

const START: &str = "2026-03-01T00:00:00Z";

/// 2,400 calls over three days, a dense first half hour, of two acme keys,
/// an acme OAuth client, an acme test-mode key, a globex key and keyless `401`s, with latencies
/// spread log-uniformly from 20 µs to about 4 s.
fn calls(world: &World) -> Vec<Call> {
    let routes = [("GET", "/v1/events"), ("POST", "/v1/events"), ("GET", "/v1/usage")];
    let statuses = [200, 201, 200, 404, 200, 500, 429, 304, 200];
    let start = at(START);
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    (0..2_400_u64)
        .map(|i| {
            // xorshift: the same latencies on every run.
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let uniform = (random % 1_000_000) as f64 / 1_000_000.0;
            let latency_us = (3.0 + uniform * 12.2).exp() as u64;
            let seconds = if i < 900 { i * 2 } else { i * 107 % 259_200 };
            let (method, route) = routes[(i % 3) as usize];
            let key = |key_id| Some(Credential::Key(key_id));
            let (tenant, credential, status) = match i % 7 {
                0 | 1 => (world.acme, key(world.acme_keys[0]), statuses[(i % 9) as usize]),
                2 => (world.acme, Some(Credential::Client(world.acme_client)), 200),
                3 => (world.acme, key(world.acme_keys[1]), statuses[(i % 5) as usize]),
                4 => (world.acme.test_twin(), key(world.acme_test_key), 200),
                5 => (world.globex, key(world.globex_key), statuses[(i % 9) as usize]),
                _ => (TenantId::SYSTEM, None, 401),
            };
            Call {
                tenant,
                credential,
                method,
                route,
                status,
                latency_us,
                at: start + Duration::seconds(seconds as i64) + Duration::microseconds(i as i64),
            }
        })
        .collect()
}

async fn fold(kind: Kind, calls: &[Call]) -> (Store, Arc<dyn Log>) {
    let log = memory_log();
    append(log.as_ref(), calls.iter().map(Call::event).collect()).await;
    let store = kind.open().await;
    spool_projections::rebuild(log.clone(), &store.views, Arc::new(Usage), |_| {})
        .await
        .expect("rebuild");
    (store, log)
}

/// What identifies a row of an answer: its start and group columns.
type Group = (DateTime<Utc>, Option<Credential>, Option<(String, String)>, Option<String>);

fn group_of_row(row: &UsageRow) -> Group {
    let route = row.method.clone().zip(row.route.clone());
    (row.start, row.key, route, row.status_class.clone())
}

/// The answer computed from the calls themselves, with exact percentiles.
fn expected(
    calls: &[Call],
    tenant: TenantId,
    query: &UsageQuery,
) -> BTreeMap<Group, (u64, u64, Vec<u64>)> {
    let group_by = query.group_by();
    let seconds = query.granularity().seconds();
    let mut groups: BTreeMap<Group, (u64, u64, Vec<u64>)> = BTreeMap::new();
    for call in calls.iter().filter(|call| call.tenant == tenant) {
        let minute = call.at.timestamp() / 60 * 60;
        if minute < query.from().timestamp() || minute >= query.to().timestamp() {
            continue;
        }
        let start = DateTime::from_timestamp(minute / seconds * seconds, 0).expect("in range");
        let group = (
            start,
            if group_by.key { call.credential } else { None },
            group_by.route.then(|| (call.method.to_owned(), call.route.to_owned())),
            group_by.status.then(|| format!("{}xx", call.status / 100)),
        );
        let entry = groups.entry(group).or_default();
        entry.0 += 1;
        entry.1 += u64::from(call.status >= 400);
        entry.2.push(call.latency_us);
    }
    groups
}

/// The latency at nearest rank `ceil(percent × n / 100)`.
fn exact_percentile(latencies: &mut [u64], percent: u64) -> f64 {
    latencies.sort_unstable();
    let rank = (percent * latencies.len() as u64).div_ceil(100).max(1);
    latencies[rank as usize - 1] as f64
}

async fn check(views: &Views, calls: &[Call], tenant: TenantId, query: UsageQuery) {
    let rows = usage::query(views, tenant, &query).await.expect("usage query");
    let mut expected = expected(calls, tenant, &query);
    let got: Vec<Group> = rows.iter().map(group_of_row).collect();
    // The answer's order: by start, then the group columns as text.
    let mut want: Vec<Group> = expected.keys().cloned().collect();
    want.sort_by_key(|(start, key, route, class)| {
        (*start, key.map(|key| key.to_string()), route.clone(), class.clone())
    });
    assert_eq!(got, want, "{query:?}: the rows, in order");
    for row in &rows {
        let (requests, errors, latencies) = expected.get_mut(&group_of_row(row)).expect("a row");
        assert_eq!((row.requests, row.errors), (*requests, *errors), "{query:?}: {row:?}");
        for percent in [50, 95, 99] {
            let exact = exact_percentile(latencies, percent);
            let estimate = row.percentile_us(percent as u8);
            assert!(
                (estimate - exact).abs() <= exact * RELATIVE_ACCURACY + 1e-9,
                "{query:?} {row:?}: p{percent} is {estimate}, exactly {exact}"
            );
        }
    }
}

fn every_group_by() -> Vec<GroupBy> {
    let mut all = Vec::new();
    for key in [false, true] {
        for route in [false, true] {
            for status in [false, true] {
                all.push(GroupBy { key, route, status });
            }
        }
    }
    all
}

pub(crate) async fn usage_counts_and_percentiles_match_exact_values_for_every_grouping(kind: Kind) {
    let world = World::new();
    let calls = calls(&world);
    let (store, _log) = fold(kind, &calls).await;
    let start = at(START);
    let ranges = [
        // A day of minutes, starting mid-minute (that minute is left out).
        (Granularity::Minute, start + Duration::seconds(30), start + Duration::days(1)),
        (Granularity::Hour, start, start + Duration::days(3)),
        // Hours merged from minutes, cut in the middle of an hour.
        (Granularity::Hour, start + Duration::minutes(90), start + Duration::hours(30)),
        (Granularity::Day, start - Duration::days(1), start + Duration::days(5)),
    ];
    for (granularity, from, to) in ranges {
        for group_by in every_group_by() {
            let query = UsageQuery::new(from, to, granularity, group_by).expect("valid query");
            check(&store.views, &calls, world.acme, query).await;
        }
    }
    // The other tenants, test mode and the keyless calls, all days at once.
    let all_days = UsageQuery::new(
        start,
        start + Duration::days(3),
        Granularity::Day,
        GroupBy { key: true, route: false, status: true },
    )
    .expect("valid query");
    for tenant in [world.globex, world.acme.test_twin(), TenantId::SYSTEM] {
        check(&store.views, &calls, tenant, all_days).await;
    }
    let totals =
        UsageQuery::new(start, start + Duration::days(3), Granularity::Day, GroupBy::default())
            .expect("valid query");
    let sum = |rows: Vec<UsageRow>| rows.iter().map(|row| row.requests).sum::<u64>();
    let acme = sum(usage::query(&store.views, world.acme, &totals).await.expect("query"));
    let twin =
        sum(usage::query(&store.views, world.acme.test_twin(), &totals).await.expect("query"));
    let n_calls = |tenant| calls.iter().filter(|call| call.tenant == tenant).count() as u64;
    assert_eq!((acme, twin), (n_calls(world.acme), n_calls(world.acme.test_twin())));
    assert!(acme > 1_000 && twin > 300, "test mode is counted apart");
    assert!(usage::query(&store.views, TenantId::new(), &totals).await.expect("query").is_empty());
}

pub(crate) async fn usage_rows_carry_livemode_and_the_documented_sql_gives_the_percentiles(
    kind: Kind,
) {
    let world = World::new();
    let calls = calls(&world);
    let (store, _log) = fold(kind, &calls).await;
    let modes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT DISTINCT tenant, livemode FROM usage_minutes WHERE tenant = $1 OR tenant = $2",
    )
    .bind(world.acme.to_string())
    .bind(world.acme.test_twin().to_string())
    .fetch_all(store.views.pool())
    .await
    .expect("livemode");
    let mut modes: Vec<(bool, i64)> =
        modes.into_iter().map(|(tenant, mode)| (tenant == world.acme.to_string(), mode)).collect();
    modes.sort();
    assert_eq!(modes, [(false, 0), (true, 1)], "the test twin's rows are test mode");
    let keyless: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT key_id, status_class FROM usage_latency_buckets WHERE tenant = $1",
    )
    .bind(TenantId::SYSTEM.to_string())
    .fetch_all(store.views.pool())
    .await
    .expect("keyless");
    assert_eq!(keyless, [(String::new(), "4xx".to_owned())]);

    // README.md's example, with parameters for the literals.
    let (from, to) = (at(START), at(START) + Duration::days(1));
    let sql = "
        WITH buckets AS (
          SELECT method, route, bucket, value_us, SUM(count) AS n
          FROM usage_latency_buckets
          WHERE tenant = $1 AND minute >= $2 AND minute < $3
          GROUP BY method, route, bucket, value_us
        ), running AS (
          SELECT method, route, value_us,
                 SUM(n) OVER (PARTITION BY method, route ORDER BY bucket) AS running,
                 SUM(n) OVER (PARTITION BY method, route) AS total
          FROM buckets
        )
        SELECT method, route, MIN(value_us) AS p95_us
        FROM running
        WHERE running * 100 >= total * 95
        GROUP BY method, route";
    let mut by_sql: Vec<(String, String, f64)> = sqlx::query_as(sql)
        .bind(world.acme.to_string())
        .bind(from.timestamp())
        .bind(to.timestamp())
        .fetch_all(store.views.pool())
        .await
        .expect("the documented SQL runs");
    by_sql.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let typed = usage::query(
        &store.views,
        world.acme,
        &UsageQuery::new(
            from,
            to,
            Granularity::Day,
            GroupBy { key: false, route: true, status: false },
        )
        .expect("valid query"),
    )
    .await
    .expect("query");
    let typed: Vec<(String, String, f64)> = typed
        .iter()
        .map(|row| {
            (
                row.method.clone().expect("method"),
                row.route.clone().expect("route"),
                row.percentile_us(95),
            )
        })
        .collect();
    assert_eq!(typed.len(), 3);
    assert_eq!(by_sql, typed);
}

/// Every row of both usage tables, as text, in a fixed order.
async fn dump_usage(views: &Views) -> Vec<String> {
    type Minute = (String, i64, String, String, String, String, i64, i64, i64, i64, i64);
    let minutes: Vec<Minute> = sqlx::query_as(
        "SELECT tenant, livemode, key_id, method, route, status_class, minute, requests, errors, \
         latency_us_sum, latency_us_max FROM usage_minutes",
    )
    .fetch_all(views.pool())
    .await
    .expect("usage_minutes");
    type Bucket = (String, String, String, String, i64, i64, f64, f64, f64, i64);
    let buckets: Vec<Bucket> = sqlx::query_as(
        "SELECT tenant, key_id, route, status_class, minute, bucket, lower_us, upper_us, \
         value_us, count FROM usage_latency_buckets",
    )
    .fetch_all(views.pool())
    .await
    .expect("usage_latency_buckets");
    let mut rows: Vec<String> = minutes.iter().map(|row| format!("{row:?}")).collect();
    rows.extend(buckets.iter().map(|row| format!("{row:?}")));
    rows.sort();
    rows
}

pub(crate) async fn usage_on_four_partitions_in_small_batches_equals_a_rebuild_in_one(kind: Kind) {
    let world = World::new();
    // Many keys, so that their `api/…` streams land in every partition.
    let keys: Vec<KeyId> = (0..16).map(|_| KeyId::new()).collect();
    let calls: Vec<Call> = calls(&world)
        .into_iter()
        .enumerate()
        .map(|(i, call)| Call {
            credential: call.credential.map(|_| Credential::Key(keys[i % keys.len()])),
            ..call
        })
        .collect();
    let log = partitioned_log(4);
    // One append of 1,000 calls, then the rest: a rebuild reads the first
    // as whole batches of a partition.
    append_all(log.as_ref(), calls[..1_000].iter().map(Call::event).collect()).await;
    append_all(log.as_ref(), calls[1_000..].iter().map(Call::event).collect()).await;
    let live = kind.open().await;
    let running = Running::start(log.clone(), &live.views, vec![Arc::new(Usage)], 7);
    running.handle.wait_for(heads(log.as_ref())).await.expect("caught up");
    running.stop().await.expect("stop");

    let rebuilt = live.fresh().await;
    spool_projections::rebuild(log.clone(), &rebuilt.views, Arc::new(Usage), |_| {})
        .await
        .expect("rebuild");
    let rows = dump_usage(&live.views).await;
    assert!(rows.len() > 2_000, "{}", rows.len());
    assert_eq!(rows, dump_usage(&rebuilt.views).await);

    let everything = UsageQuery::new(
        at(START),
        at(START) + Duration::days(3),
        Granularity::Day,
        GroupBy::default(),
    )
    .expect("valid query");
    let total: u64 = usage::query(&live.views, world.acme, &everything)
        .await
        .expect("query")
        .iter()
        .map(|row| row.requests)
        .sum();
    assert_eq!(total, calls.iter().filter(|call| call.tenant == world.acme).count() as u64);
}

/// Review finding 7: the query read the minutes and the buckets in two
/// statements, each seeing its own commits, so a batch committed between
/// them added buckets of a group the first had not returned (a `500` for
/// `GET /v1/usage`), or counts out of step with their percentiles. Here
/// every batch is one call of a new key, so every commit adds a group,
/// while queries run back to back.
pub(crate) async fn a_usage_query_racing_the_live_projection_never_fails(kind: Kind) {
    const CALLS: u64 = 300;
    let store = kind.open().await;
    let log = memory_log();
    let running = Running::start(log.clone(), &store.views, vec![Arc::new(Usage)], 1);
    let tenant = TenantId::new();
    let start = at(START);
    let appending = tokio::spawn({
        let log = log.clone();
        async move {
            for n in 0..CALLS {
                let call = Call {
                    tenant,
                    credential: Some(Credential::Key(KeyId::new())),
                    method: "GET",
                    route: "/v1/events",
                    status: 200,
                    latency_us: 100 + n,
                    at: start + Duration::seconds(n as i64),
                };
                append(log.as_ref(), vec![call.event()]).await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
    let by_key = GroupBy { key: true, ..GroupBy::default() };
    let query = UsageQuery::new(start, start + Duration::hours(1), Granularity::Hour, by_key)
        .expect("valid query");
    let mut queries = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = usage::query(&store.views, tenant, &query)
            .await
            .unwrap_or_else(|error| panic!("query {queries} failed: {error}"));
        queries += 1;
        for row in &rows {
            assert_eq!(row.latency.count(), row.requests, "query {queries}: {row:?}");
        }
        if rows.len() as u64 == CALLS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {CALLS} keys after 60 s",
            rows.len()
        );
    }
    appending.await.expect("appending");
    running.stop().await.expect("stop");
    assert!(queries > 10, "only {queries} queries raced the projection");
}
