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
    assert_eq!(*log.head().borrow(), Position(1));
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
    assert_eq!(*log.head().borrow(), Position(50));
}
