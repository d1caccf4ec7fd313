//! Shared helpers for the projection tests: events, logs, and read-model
//! stores of either kind (a SQLite file in a temp dir, or a schema of its
//! own in the PostgreSQL of `SPOOL_TEST_POSTGRES`), dropped afterwards.

#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use spool_log::{Append, Appended, Cursor, Log, MemoryLog, NewEvent};
use spool_projections::event_counts::{self, EventCountsQuery, MinuteCount};
use spool_projections::{Backend, Location, Runner, RunnerHandle, RunnerOptions, Views};
use spool_schemas::{
    AppEvent, AppEventType, Event, EventId, KeyCreated, KeyId, KeyRevoked, Position, Scope,
    StreamName, TenantCreated, TenantId,
};
use sqlx::Connection as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which store the read models of a test live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    /// A new, empty store of this kind.
    pub async fn open(self) -> Store {
        let (location, cleanup) = match self {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                (Location::Sqlite(dir.path().join("views.db")), Cleanup::Dir(dir))
            }
            Kind::Postgres => {
                let schema = Schema::create().await;
                (Location::Postgres(schema.url()), Cleanup::Schema(schema))
            }
        };
        let views = Views::open(location.clone()).await.expect("open views");
        Store { views, kind: self, location, _cleanup: cleanup }
    }
}

/// A store for one test, removed when dropped.
pub struct Store {
    pub views: Views,
    pub kind: Kind,
    location: Location,
    // Dropped after `views`.
    _cleanup: Cleanup,
}

impl Store {
    /// Closes the store and opens it again, as a restarted process would.
    pub async fn reopen(&mut self) {
        self.views.close().await;
        self.views = Views::open(self.location.clone()).await.expect("reopen views");
    }

    /// Another new, empty store of the same kind.
    pub async fn fresh(&self) -> Store {
        self.kind.open().await
    }
}

enum Cleanup {
    Dir(tempfile::TempDir),
    Schema(Schema),
}

/// A schema of its own in the test database, so that tests running at the
/// same time never see each other's tables; dropped with everything in it.
struct Schema {
    server: String,
    name: String,
}

impl Schema {
    async fn create() -> Schema {
        let server = std::env::var("SPOOL_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "SPOOL_TEST_POSTGRES is not set, so the PostgreSQL read-model tests cannot run. \
                 Run ./scripts/test, which starts PostgreSQL and sets it, or set it to a \
                 database these tests may create schemas in, such as \
                 postgres://postgres@127.0.0.1:5432/test"
            )
        });
        // Unique across processes and runs: a fresh UUIDv7's hex digits.
        let name = format!("spool_test_{}", &EventId::new().to_string()[4..]);
        let mut connection = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {server}: {error}"));
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut connection)
            .await
            .expect("create schema");
        connection.close().await.expect("close");
        Schema { server, name }
    }

    /// The server's URL with this schema as every connection's search path.
    fn url(&self) -> String {
        let separator = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-c%20search_path%3D{}", self.server, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop runs outside async code (and during a panic too): a thread
        // of its own with a runtime of its own does the dropping.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&server).await?;
                // A connection of a failed test may still hold a lock.
                sqlx::query("SET lock_timeout = '10s'").execute(&mut connection).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop schema {}: {error}", self.name),
            Err(_) => eprintln!("could not drop schema {}: the thread panicked", self.name),
        }
    }
}

/// Generates, for each case (an `async fn(Kind)` of a module of the
/// conformance tests), one test on SQLite in module `sqlite` and one on
/// PostgreSQL in module `postgres`.
#[allow(unused_macros)]
macro_rules! conformance_suite {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$module::$case(crate::support::Kind::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$module::$case(crate::support::Kind::Postgres).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use conformance_suite;

pub fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("a valid RFC 3339 time")
}

pub fn app(tenant: TenantId, event_type: &str, recorded_at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new("order/1").expect("valid stream"),
        Event::App(AppEvent {
            event_type: AppEventType::new(event_type).expect("valid type"),
            data: serde_json::json!({"total": 1}),
        }),
    );
    event.recorded_at = recorded_at;
    event
}

pub fn tenant_created(tenant: TenantId, name: &str, recorded_at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new("tenant").expect("valid stream"),
        Event::TenantCreated(TenantCreated { name: name.into() }),
    );
    event.recorded_at = recorded_at;
    event
}

pub fn key_created(
    tenant: TenantId,
    key_id: KeyId,
    secret_hash: &str,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new(format!("key/{key_id}")).expect("valid stream"),
        Event::KeyCreated(KeyCreated {
            key_id,
            name: "ci".into(),
            secret_hash: secret_hash.into(),
            scopes,
            expires_at,
        }),
    );
    event.recorded_at = recorded_at;
    event
}

pub fn key_revoked(tenant: TenantId, key_id: KeyId, recorded_at: DateTime<Utc>) -> NewEvent {
    let mut event = NewEvent::new(
        tenant,
        StreamName::new(format!("key/{key_id}")).expect("valid stream"),
        Event::KeyRevoked(KeyRevoked { key_id }),
    );
    event.recorded_at = recorded_at;
    event
}

/// `n` app events of a few types spread over a few minutes, round-robin
/// over `tenants`.
pub fn traffic(tenants: &[TenantId], n: usize, start: DateTime<Utc>) -> Vec<NewEvent> {
    let types = ["order.created", "order.shipped", "invoice.paid"];
    (0..n)
        .map(|i| {
            app(
                tenants[i % tenants.len()],
                types[i % types.len()],
                start + Duration::seconds(i as i64 * 7),
            )
        })
        .collect()
}

/// `n` app events of a few types over a few minutes, round-robin over
/// `tenants` and over forty streams per tenant, so that a partitioned log
/// spreads them over its partitions.
pub fn spread_traffic(tenants: &[TenantId], n: usize, start: DateTime<Utc>) -> Vec<NewEvent> {
    traffic(tenants, n, start)
        .into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            event.stream = StreamName::new(format!("order/{}", i % 40)).expect("valid stream");
            event
        })
        .collect()
}

/// Appends `events` (each partition's share atomically) and returns where
/// they went.
pub async fn append_all(log: &dyn Log, events: Vec<NewEvent>) -> Vec<Appended> {
    log.append(Append::new(events)).await.expect("append")
}

pub fn partitioned_log(partitions: u32) -> Arc<dyn Log> {
    Arc::new(MemoryLog::with_partitions(partitions))
}

/// The log's heads, as a cursor.
pub fn heads(log: &dyn Log) -> Cursor {
    Cursor::heads(log)
}

/// Every row of the built-in read models, through the views analysts use,
/// in a fixed order.
pub async fn dump(views: &Views) -> String {
    let mut out = String::new();
    let rows: Vec<(String, i64, String, i64)> =
        sqlx::query_as("SELECT tenant, minute, event_type, count FROM event_counts")
            .fetch_all(views.pool())
            .await
            .expect("event_counts");
    let mut rows: Vec<String> = rows.into_iter().map(|row| format!("{row:?}")).collect();
    rows.sort();
    writeln!(out, "event_counts:\n{}", rows.join("\n")).unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tenant, name, created_at FROM auth_tenants")
            .fetch_all(views.pool())
            .await
            .expect("auth_tenants");
    let mut rows: Vec<String> = rows.into_iter().map(|row| format!("{row:?}")).collect();
    rows.sort();
    writeln!(out, "auth_tenants:\n{}", rows.join("\n")).unwrap();
    type KeyRow = (String, String, String, String, Option<String>, i64, String);
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT key_id, tenant, name, scopes, expires_at, revoked, created_at FROM auth_keys",
    )
    .fetch_all(views.pool())
    .await
    .expect("auth_keys");
    let mut rows: Vec<String> = rows.into_iter().map(|row| format!("{row:?}")).collect();
    rows.sort();
    writeln!(out, "auth_keys:\n{}", rows.join("\n")).unwrap();
    let rows: Vec<(String, String, Option<String>, String)> =
        sqlx::query_as("SELECT secret_hash, key_id, expires_at, created_at FROM auth_key_secrets")
            .fetch_all(views.pool())
            .await
            .expect("auth_key_secrets");
    let mut rows: Vec<String> = rows.into_iter().map(|row| format!("{row:?}")).collect();
    rows.sort();
    writeln!(out, "auth_key_secrets:\n{}", rows.join("\n")).unwrap();
    out
}

/// `log` folded by a rebuild of every built-in projection into a new store
/// of `kind`.
pub async fn rebuilt_dump(kind: Kind, log: Arc<dyn Log>) -> String {
    let fresh = kind.open().await;
    for projection in spool_projections::builtin() {
        spool_projections::rebuild(log.clone(), &fresh.views, projection, |_| {})
            .await
            .expect("rebuild");
    }
    dump(&fresh.views).await
}

pub async fn append(log: &dyn Log, events: Vec<NewEvent>) -> Position {
    let appended = log.append(Append::new(events)).await.expect("append");
    appended.last().map_or(Position::ZERO, |a| a.position)
}

pub fn memory_log() -> Arc<dyn Log> {
    Arc::new(MemoryLog::new())
}

/// A new SQLite store in a temp dir.
pub async fn temp_views() -> Store {
    Kind::Sqlite.open().await
}

/// A runner in the background, stopped by [`Running::stop`].
pub struct Running {
    pub handle: RunnerHandle,
    stop: oneshot::Sender<()>,
    task: JoinHandle<spool_projections::Result<()>>,
}

impl Running {
    pub fn start(
        log: Arc<dyn Log>,
        views: &Views,
        projections: Vec<Arc<dyn spool_projections::Projection>>,
        batch: usize,
    ) -> Running {
        Running::run(Runner::new(log, views.clone(), projections, RunnerOptions { batch }))
    }

    /// Runs `runner` in the background.
    pub fn run(runner: Runner) -> Running {
        let handle = runner.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(runner.run(async {
            let _ = stopped.await;
        }));
        Running { handle, stop, task }
    }

    pub async fn stop(self) -> spool_projections::Result<()> {
        let _ = self.stop.send(());
        self.task.await.expect("runner task")
    }
}

pub async fn counts(views: &Views, tenant: TenantId) -> Vec<MinuteCount> {
    event_counts::query(views, tenant, &EventCountsQuery::default())
        .await
        .expect("query event counts")
}

/// The physical tables of the read models (not the registry's), sorted.
pub async fn physical_tables(views: &Views) -> Vec<String> {
    let sql = match views.backend() {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'spool_%' \
             AND name NOT LIKE 'sqlite_%'"
        }
        Backend::Postgres => {
            "SELECT CAST(tablename AS TEXT) FROM pg_tables \
             WHERE schemaname = current_schema() AND tablename NOT LIKE 'spool_%'"
        }
    };
    let mut tables: Vec<String> =
        sqlx::query_scalar(sql).fetch_all(views.pool()).await.expect("list tables");
    tables.sort();
    tables
}
