//! Acknowledging appends once they are durable.
//!
//! The writer commits with `synchronous=NORMAL`, which writes the WAL
//! without syncing it, and hands each committed group here. This thread
//! fsyncs the WAL once for everything committed so far, and only then
//! publishes the new head (so no reader sees an event that is not durable)
//! and answers the callers. One fsync thus covers several commits, and the
//! writer fills its next transaction while the disk syncs: group commit at
//! the disk as well as in SQLite.
//!
//! **Invariant:** the WAL file is never deleted while this process has the
//! log open, since SQLite removes it only when the last connection closes;
//! so one handle to it stays valid.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spool_schemas::Position;
use tokio::sync::watch;

use super::recent::Recent;
use super::writer::{Reply, Written};
use crate::{Appended, Error, Result};

/// The log's write-ahead file, for syncing it.
pub(super) struct Wal {
    path: PathBuf,
    file: Mutex<Option<Arc<std::fs::File>>>,
    /// Set by the first failed fsync, for good. Linux reports a writeback
    /// error once and marks the pages clean, so a later fsync that
    /// succeeds proves nothing about what was written before it; as
    /// PostgreSQL does, the log stops acknowledging until it is reopened.
    failed: std::sync::atomic::AtomicBool,
}

impl Wal {
    /// `database` must be the canonical path of the database file: SQLite
    /// resolves symbolic links, and the WAL lies beside the real file.
    pub(super) fn new(database: &std::path::Path) -> Wal {
        Wal { path: wal_path(database), file: Mutex::new(None), failed: false.into() }
    }

    /// Makes everything written to the WAL so far durable. Blocks.
    pub(super) fn sync(&self) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other("an earlier fsync of the WAL failed; reopen the log"));
        }
        let result = self.sync_once();
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    /// [`Wal::sync`] from async code, on the blocking pool.
    pub(super) async fn sync_async(self: &Arc<Self>) -> io::Result<()> {
        let wal = self.clone();
        tokio::task::spawn_blocking(move || wal.sync()).await.map_err(io::Error::other)?
    }

    fn sync_once(&self) -> io::Result<()> {
        let file = {
            let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(file) => file.clone(),
                None => {
                    let file = Arc::new(std::fs::OpenOptions::new().read(true).open(&self.path)?);
                    *slot = Some(file.clone());
                    file
                }
            }
        };
        file.sync_data()
    }
}

/// Where SQLite keeps the write-ahead file of `database`, a canonical path.
pub(super) fn wal_path(database: &std::path::Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push("-wal");
    path.into()
}

/// A group the writer committed (or failed), with its callers' answers.
pub(super) struct Committed {
    pub(super) head: Position,
    pub(super) answers: Vec<(Reply, Result<Vec<Appended>>)>,
    /// The events the group wrote, in position order.
    pub(super) written: Vec<Written>,
}

/// Syncs, publishes and answers, in commit order, until the writer stops.
/// `wal` is `None` when appends are acknowledged without an fsync. What it
/// publishes goes to `recent` first. Blocks: runs on a thread of its own,
/// so an fsync never holds up the writer.
pub(super) fn run(
    committed: std::sync::mpsc::Receiver<Committed>,
    wal: Option<Arc<Wal>>,
    head: Arc<watch::Sender<Position>>,
    recent: Arc<Recent>,
) {
    while let Ok(first) = committed.recv() {
        let mut groups = vec![first];
        while let Ok(next) = committed.try_recv() {
            groups.push(next);
        }
        let synced = match &wal {
            Some(wal) => wal.sync(),
            None => Ok(()),
        };
        metrics::histogram!("spool_log_groups_per_sync").record(groups.len() as f64);
        let error = match synced {
            Ok(()) => {
                let newest = groups.iter().map(|group| group.head).max().unwrap_or_default();
                // Before the head: a reader bounded by it finds them all.
                recent.extend(groups.iter().flat_map(|group| &group.written).map(Written::stored));
                crate::tail::advance_head(&head, newest);
                None
            }
            Err(error) => {
                // The events are committed but may not survive a power
                // loss; the caller must not be told they are durable. A
                // retry with the same ids is safe either way.
                tracing::error!(%error, "fsync of the log's WAL failed");
                Some(Error::Unavailable(format!("the log could not sync to disk: {error}")))
            }
        };
        for group in groups {
            // Let go of the requests before answering, so that each caller
            // holds the last handle and frees its events on its own task.
            drop(group.written);
            for (reply, answer) in group.answers {
                let answer = match (&error, answer) {
                    (Some(error), Ok(_)) => Err(error.clone()),
                    (_, answer) => answer,
                };
                // The caller may have given up waiting; the events are
                // stored regardless, and a retry with the same ids finds them.
                let _ = reply.send(answer);
            }
        }
    }
}
