//! Every backend of this crate runs the same conformance suite.

mod memory {
    use spool_log::MemoryLog;
    use spool_log::conformance::Harness;

    struct Memory;

    impl Harness for Memory {
        type Log = MemoryLog;

        async fn open(&self) -> MemoryLog {
            MemoryLog::new()
        }

        async fn reopen(&self, _log: MemoryLog) -> Option<MemoryLog> {
            None
        }

        async fn open_partitioned(&self, partitions: u32) -> Option<MemoryLog> {
            Some(MemoryLog::with_partitions(partitions))
        }
    }

    spool_log::conformance_suite!(Memory);
}

mod sqlite {
    use std::sync::Mutex;

    use spool_log::conformance::Harness;
    use spool_log::{Log, SqliteLog, SqliteOptions};
    use tempfile::TempDir;

    /// Keeps each test's directory alive for the whole test.
    #[derive(Default)]
    struct Sqlite {
        dirs: Mutex<Vec<TempDir>>,
    }

    impl Harness for Sqlite {
        type Log = SqliteLog;

        async fn open(&self) -> SqliteLog {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log.db");
            self.dirs.lock().unwrap().push(dir);
            SqliteLog::open(path, SqliteOptions::default()).await.unwrap()
        }

        async fn reopen(&self, log: SqliteLog) -> Option<SqliteLog> {
            let path = log.path().to_owned();
            log.close().await.unwrap();
            drop(log);
            Some(SqliteLog::open(path, SqliteOptions::default()).await.unwrap())
        }

        async fn open_partitioned(&self, _partitions: u32) -> Option<SqliteLog> {
            None
        }
    }

    spool_log::conformance_suite!(Sqlite::default());
}
