//! Checkpoints, off the writer's thread.
//!
//! A checkpoint copies the WAL's pages into the database file and fsyncs
//! it. Left to SQLite (`wal_autocheckpoint`), the commit that crosses the
//! threshold runs it: measured under 256 concurrent appenders, those
//! commits took 7–9 ms each and were a third of the writer's time, while
//! every appender waited. Here a thread of its own runs PASSIVE
//! checkpoints, which never block the writer, a short while after commits
//! (so that one pass covers many of them).
//!
//! A PASSIVE checkpoint never rewinds the WAL: SQLite starts it over only
//! when a write transaction begins with every frame already copied, which
//! a busy writer, committing again at once, never gives this thread. So
//! once the WAL is long the writer is asked to assist: before its next
//! group it checkpoints the few frames written since this thread's pass,
//! and that group's commit starts the WAL over.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

/// How long after a commit a pass starts, so that it covers the commits
/// that follow meanwhile.
const PASS_DELAY: Duration = Duration::from_millis(25);

/// WAL length, in frames (pages), from which the writer is asked to let
/// the WAL start over: with 4 KiB pages about 16 MiB, which also bounds
/// the WAL file's size under steady load.
pub(super) const RESTART_FRAMES: i64 = 4_000;

/// The writer's side: tells the checkpointer about commits, and learns when
/// to assist.
pub(super) struct Checkpoints {
    committed: mpsc::SyncSender<()>,
    assist: Arc<AtomicBool>,
}

impl Checkpoints {
    /// Says that a group was committed; never blocks.
    pub(super) fn committed(&self) {
        // Full means a pass is already due, which covers this commit too.
        let _ = self.committed.try_send(());
    }

    /// Whether the writer should checkpoint before its next group (once).
    pub(super) fn take_assist(&self) -> bool {
        self.assist.swap(false, Ordering::AcqRel)
    }
}

/// The checkpointer: [`Checkpointer::run`] it on a thread of its own.
pub(super) struct Checkpointer {
    connection: Connection,
    committed: mpsc::Receiver<()>,
    assist: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Opens its own connection to the log at `path`, which the writer
    /// created already.
    pub(super) fn open(path: &Path) -> rusqlite::Result<(Checkpointer, Checkpoints)> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        let (sender, committed) = mpsc::sync_channel(1);
        let assist = Arc::new(AtomicBool::new(false));
        let checkpointer = Checkpointer { connection, committed, assist: assist.clone() };
        Ok((checkpointer, Checkpoints { committed: sender, assist }))
    }

    /// Checkpoints after commits until the writer is gone. Blocks.
    pub(super) fn run(self) {
        while self.committed.recv().is_ok() {
            std::thread::sleep(PASS_DELAY);
            while self.committed.try_recv().is_ok() {}
            match passive_checkpoint(&self.connection) {
                Ok(wal_frames) => {
                    metrics::histogram!("spool_log_wal_frames").record(wal_frames as f64);
                    if wal_frames >= RESTART_FRAMES {
                        self.assist.store(true, Ordering::Release);
                    }
                }
                // The next commit brings another pass; meanwhile the WAL
                // only grows, and nothing is lost.
                Err(error) => tracing::warn!(%error, "checkpoint of the log failed"),
            }
        }
    }
}

/// Copies what it can of the WAL into the database file without waiting
/// for anyone; returns how many frames the WAL holds.
pub(super) fn passive_checkpoint(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1))
}
