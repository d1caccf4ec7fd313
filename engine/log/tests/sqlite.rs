//! Regression tests of the SQLite backend beyond the conformance suite.

use std::sync::Arc;

use spool_log::{Append, Log, NewEvent, SqliteLog, SqliteOptions};
use spool_schemas::{AppEvent, AppEventType, Event, Position, StreamName, TenantId};

fn event(tenant: TenantId, n: u64) -> NewEvent {
    NewEvent::new(
        tenant,
        StreamName::new(format!("s/{}", n % 7)).unwrap(),
        Event::App(AppEvent {
            event_type: AppEventType::new("t.x").unwrap(),
            data: serde_json::json!({ "n": n }),
        }),
    )
}

/// Review finding: the syncer built the WAL path from the given path, but
/// SQLite resolves symbolic links, so a symlinked log could not sync and
/// every append failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_opened_through_a_symlink_syncs_and_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.db");
    SqliteLog::open(&real, SqliteOptions::default()).await.unwrap().close().await.unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("log.db")).unwrap();
    let log = SqliteLog::open(dir.path().join("log.db"), SqliteOptions::default()).await.unwrap();
    let appended = log.append(Append::new(vec![event(TenantId::new(), 1)])).await.unwrap();
    assert_eq!(appended[0].position, Position(1));
    assert_eq!(*log.head(0).borrow(), Position(1));
    log.close().await.unwrap();
}

/// Review finding: two appends of the same id in one group both answered
/// `already_stored: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_identical_appends_exactly_one_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(
        SqliteLog::open(dir.path().join("log.db"), SqliteOptions::default()).await.unwrap(),
    );
    let tenant = TenantId::new();
    for n in 0..50 {
        let append = Append::new(vec![event(tenant, n)]);
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (log, append) = (log.clone(), append.clone());
                tokio::spawn(async move { log.append(append).await.unwrap()[0] })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(answers.iter().filter(|a| !a.already_stored).count(), 1, "{answers:?}");
        assert!(answers.iter().all(|a| a.position == answers[0].position));
    }
    assert_eq!(*log.head(0).borrow(), Position(50));
}

/// Two writers on one file (a server and the `spool` CLI, say). Each trusts
/// its caches without asking SQLite for the head; the other's appends must
/// still be seen: positions stay gap-free, stream versions follow on, and
/// an expected version made stale by the other writer is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_file_see_each_others_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let first = SqliteLog::open(&path, SqliteOptions::default()).await.unwrap();
    let second = SqliteLog::open(&path, SqliteOptions::default()).await.unwrap();
    let tenant = TenantId::new();
    let stream = StreamName::new("s/0").unwrap();
    for round in 0..20u64 {
        // Both caches know the stream at `2 * round`; each writer in turn
        // appends expecting exactly that, so the second one must conflict
        // and then succeed once it expects what the first wrote.
        let a = first
            .append(Append::new(vec![event(tenant, 7 * round)]).expect(
                tenant,
                stream.clone(),
                2 * round,
            ))
            .await
            .unwrap();
        assert_eq!(a[0].position, Position(2 * round + 1));
        assert_eq!(a[0].stream_version, 2 * round + 1);
        let stale = second
            .append(Append::new(vec![event(tenant, 7 * round)]).expect(
                tenant,
                stream.clone(),
                2 * round,
            ))
            .await;
        assert!(matches!(stale, Err(spool_log::Error::Conflict(_))), "{stale:?}");
        let b = second
            .append(Append::new(vec![event(tenant, 7 * round)]).expect(
                tenant,
                stream.clone(),
                2 * round + 1,
            ))
            .await
            .unwrap();
        assert_eq!(b[0].position, Position(2 * round + 2));
        assert_eq!(b[0].stream_version, 2 * round + 2);
    }
    second.close().await.unwrap();
    first.close().await.unwrap();
    let reopened = SqliteLog::open(&path, SqliteOptions::default()).await.unwrap();
    let events = reopened.read_stream(tenant, &stream, 0, 100).await.unwrap();
    assert_eq!(events.len(), 40);
    for (i, event) in events.iter().enumerate() {
        assert_eq!((event.position, event.stream_version), (Position(i as u64 + 1), i as u64 + 1));
    }
}

/// Checkpoints run off the writer's thread, and a PASSIVE checkpoint alone
/// never lets SQLite start the WAL over while the writer keeps committing;
/// the writer assists once the WAL is long. Under steady load the WAL must
/// stay bounded and the events must reach the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_load_the_wal_stays_bounded_and_checkpoints_reach_the_database() {
    const APPENDERS: u64 = 16;
    const EVENTS_PER_APPENDER: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log: Arc<dyn Log> =
        Arc::new(SqliteLog::open(&path, SqliteOptions::default()).await.unwrap());
    let tenant = TenantId::new();
    // 8 KiB per event: 6,400 events write over 50 MiB, several times the
    // WAL length at which the writer lets it start over (about 16 MiB).
    let padding = "x".repeat(8 * 1024);
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|appender| {
            let (log, padding) = (log.clone(), padding.clone());
            tokio::spawn(async move {
                for i in 0..EVENTS_PER_APPENDER {
                    let mut event = event(tenant, appender * EVENTS_PER_APPENDER + i);
                    event.event = Event::App(AppEvent {
                        event_type: AppEventType::new("t.padded").unwrap(),
                        data: serde_json::json!({ "padding": padding }),
                    });
                    log.append(Append::new(vec![event])).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let written = APPENDERS * EVENTS_PER_APPENDER * 8 * 1024;
    let wal = std::fs::metadata(dir.path().join("log.db-wal")).unwrap().len();
    let database = std::fs::metadata(&path).unwrap().len();
    assert!(wal < 32 << 20, "the WAL grew to {wal} bytes after {written} bytes of events");
    assert!(
        database > written / 2,
        "checkpoints copied only {database} bytes into the database file of {written} written"
    );
    assert_eq!(*log.head(0).borrow(), Position(APPENDERS * EVENTS_PER_APPENDER));
}

/// The writer zero-fills the WAL ahead of its frames (so that a sync never
/// has to commit a new file size). What a killed process leaves, the
/// database file and that padded WAL, must open with every acknowledged
/// event: recovery reads the frames and stops at the zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_padded_wal_left_by_a_killed_process_recovers_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteOptions::default()).await.unwrap();
    let tenant = TenantId::new();
    for batch in 0..10 {
        let events = (0..50).map(|i| event(tenant, batch * 50 + i)).collect();
        log.append(Append::new(events)).await.unwrap();
    }
    // Let the checkpointer's pass finish, so that the copy is not torn.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let wal = std::fs::read(dir.path().join("log.db-wal")).unwrap();
    assert!(wal.len() >= 4_000 * 4_096, "the WAL was not preallocated: {} bytes", wal.len());
    assert!(wal.ends_with(&[0; 4096]), "the WAL's padding is not zeros");

    // The files as a kill -9 leaves them (the shared-memory index is rebuilt).
    let crashed = tempfile::tempdir().unwrap();
    std::fs::copy(&path, crashed.path().join("log.db")).unwrap();
    std::fs::write(crashed.path().join("log.db-wal"), &wal).unwrap();
    log.close().await.unwrap();

    let reopened =
        SqliteLog::open(crashed.path().join("log.db"), SqliteOptions::default()).await.unwrap();
    assert_eq!(*reopened.head(0).borrow(), Position(500));
    let read = reopened.read(0, Position::ZERO, 1_000, &Default::default()).await.unwrap();
    let positions: Vec<u64> = read.events.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=500).collect::<Vec<_>>());
    let appended = reopened.append(Append::new(vec![event(tenant, 500)])).await.unwrap();
    assert_eq!(appended[0].position, Position(501));
    reopened.close().await.unwrap();
}

/// Reads near the head are served from the events the syncer keeps in
/// memory. They must be exactly what SQLite returns: every field (the
/// timestamp at SQLite's microseconds), the filters, the limit, and where
/// the read stopped. A read-only log keeps nothing in memory, so it reads
/// the same file through SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_served_from_memory_equal_reads_of_the_file() {
    use spool_log::{Filter, TypeFilter};
    use spool_schemas::EventId;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteOptions::default()).await.unwrap();
    let tenants = [TenantId::new(), TenantId::new(), TenantId::new()];
    let types = ["order.created", "order.shipped", "user.signed_up"];
    for round in 0..30_u64 {
        let events = (0..(1 + round % 4))
            .map(|i| {
                let n = round * 4 + i;
                let mut event = NewEvent::new(
                    tenants[(n % 3) as usize],
                    StreamName::new(format!("s/{}", n % 5)).unwrap(),
                    Event::App(AppEvent {
                        event_type: AppEventType::new(types[(n % 3) as usize]).unwrap(),
                        data: serde_json::json!({ "n": n, "text": "é\"\\\n" }),
                    }),
                );
                // Nanoseconds, which the log keeps to the microsecond.
                event.recorded_at += chrono::Duration::nanoseconds(n as i64 * 1_001);
                if n % 2 == 0 {
                    event.causation_id = Some(EventId::new());
                    event.correlation_id = Some(EventId::new());
                }
                event
            })
            .collect();
        log.append(Append::new(events)).await.unwrap();
    }
    let head = *log.head(0).borrow();
    let file = SqliteLog::open(&path, SqliteOptions { read_only: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(*file.head(0).borrow(), head);

    let stream = StreamName::new("s/2").unwrap();
    let filters = [
        Filter::default(),
        Filter::tenant(tenants[1]),
        Filter { stream: Some(stream.clone()), ..Filter::default() },
        Filter { tenant: Some(tenants[2]), stream: Some(stream), ..Filter::default() },
        Filter { types: vec![TypeFilter::Exact("order.shipped".into())], ..Filter::default() },
        Filter { types: vec![TypeFilter::parse("order.*")], ..Filter::default() },
        Filter {
            tenant: Some(tenants[0]),
            types: vec![TypeFilter::parse("user.signed_up"), TypeFilter::parse("order.created")],
            ..Filter::default()
        },
    ];
    let mut compared = 0;
    for filter in &filters {
        for limit in [1, 3, 1_000] {
            for after in 0..=head.0 {
                let after = Position(after);
                let memory = log.read(0, after, limit, filter).await.unwrap();
                let sqlite = file.read(0, after, limit, filter).await.unwrap();
                assert_eq!(memory, sqlite, "after {after}, limit {limit}, {filter:?}");
                compared += memory.events.len();
            }
        }
    }
    assert!(compared > 1_000, "the reads found too few events to compare: {compared}");
    file.close().await.unwrap();
    log.close().await.unwrap();
}
