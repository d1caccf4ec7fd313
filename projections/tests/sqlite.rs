//! What only the SQLite store has: files written by earlier versions.

mod support;

use spool_projections::{ProjectionState, Views};
use spool_schemas::TenantId;
use support::*;

/// Stores written before the log was partitioned hold one checkpoint per
/// projection, in `spool_projections`; it becomes partition 0's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_single_checkpoints_is_migrated_to_partition_zero() {
    use sqlx::Connection as _;

    let log = memory_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("views.db");
    let tenant = TenantId::new();
    let start = at("2026-03-01T10:00:00Z");
    let head = append(log.as_ref(), traffic(&[tenant], 20, start)).await;
    {
        let views = Views::open(&path).await.expect("open");
        let running = Running::start(log.clone(), &views, spool_projections::builtin(), 7);
        running.handle.wait_for(head).await.expect("caught up");
        running.stop().await.expect("stop");
    }
    // Back to the layout of before: checkpoints in the registry's row, and
    // an unfinished build of event_counts at 5.
    let mut old = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    for statement in [
        "ALTER TABLE spool_projections ADD COLUMN checkpoint INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE spool_projections ADD COLUMN build_checkpoint INTEGER",
        "UPDATE spool_projections SET checkpoint = (SELECT position \
         FROM spool_projection_checkpoints c WHERE c.projection = spool_projections.name \
         AND c.generation = spool_projections.generation AND c.log_partition = 0)",
        "UPDATE spool_projections SET build_version = version, \
         build_generation = generation + 1, build_checkpoint = 5 WHERE name = 'event_counts'",
        "DROP TABLE spool_projection_checkpoints",
    ] {
        sqlx::query(statement).execute(&mut old).await.expect(statement);
    }
    old.close().await.expect("close");

    let views = Views::open(&path).await.expect("reopen and migrate");
    let build: i64 = sqlx::query_scalar(
        "SELECT c.position FROM spool_projection_checkpoints c JOIN spool_projections p \
         ON c.projection = p.name AND c.generation = p.build_generation WHERE c.log_partition = 0",
    )
    .fetch_one(views.pool())
    .await
    .expect("the build's checkpoint");
    assert_eq!(build, 5);
    let columns: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('spool_projections') \
         WHERE name IN ('checkpoint', 'build_checkpoint')",
    )
    .fetch_one(views.pool())
    .await
    .expect("columns");
    assert_eq!(columns, 0, "the old columns are gone");
    drop(views);
    // Opening again finds nothing more to migrate.
    let views = Views::open(&path).await.expect("reopen");
    let status = spool_projections::status(&views, log.as_ref()).await.expect("status");
    assert_eq!(status[1].name, "auth");
    assert_eq!(
        (status[1].checkpoint.to_string(), &status[1].state),
        ("20".into(), &ProjectionState::Live)
    );

    let head = append(log.as_ref(), traffic(&[tenant], 10, start)).await;
    let running = Running::start(log.clone(), &views, spool_projections::builtin(), 7);
    running.handle.wait_for(head).await.expect("caught up");
    running.stop().await.expect("stop");
    let total: u64 = counts(&views, tenant).await.iter().map(|c| c.count).sum();
    assert_eq!(total, 30, "resumed at 20, neither skipping nor counting twice");
    assert_eq!(dump(&views).await, rebuilt_dump(Kind::Sqlite, log).await);
}

/// Read models can be rebuilt, so the SQLite store trades the last commits
/// before a power cut for speed; a killed process still loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_runs_in_wal_mode_without_syncing_every_commit() {
    let store = Kind::Sqlite.open().await;
    let mut connection = store.views.pool().acquire().await.expect("connection");
    let journal: String =
        sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *connection).await.expect("mode");
    let synchronous: i64 =
        sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *connection).await.expect("sync");
    let busy_timeout: i64 =
        sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *connection).await.expect("busy");
    assert_eq!((journal.as_str(), synchronous, busy_timeout), ("wal", 1, 10_000));
}

/// `Views::open` takes a path, or a string that is a path unless it is a
/// PostgreSQL URL.
#[test]
fn a_location_is_a_path_unless_it_is_a_postgres_url() {
    use spool_projections::Location;
    let url = "postgres://postgres@127.0.0.1:5432/test";
    assert_eq!(Location::from(url), Location::Postgres(url.to_owned()));
    let url = "postgresql://localhost/views?options=-c%20search_path%3Dspool";
    assert_eq!(Location::from(url.to_owned()), Location::Postgres(url.to_owned()));
    assert_eq!(Location::from("data/views.db"), Location::Sqlite("data/views.db".into()));
    let path = std::path::PathBuf::from("postgres:/odd/but/a/path");
    assert_eq!(Location::from(&path), Location::Sqlite(path.clone()));
}

/// The `Any` driver takes a URL, so the path is encoded into one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_opens_at_a_path_with_spaces_and_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = dir.path().join("read models #1 ?x=y");
    std::fs::create_dir(&odd).expect("dir");
    let views = Views::open(odd.join("views.db")).await.expect("open");
    assert!(counts(&views, TenantId::new()).await.is_empty());
    views.close().await;
    assert!(odd.join("views.db").exists());
}
