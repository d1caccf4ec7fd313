//! The data directory's layout, and the lock that keeps a second server (or
//! a rebuild) off a directory a server is using.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use spool_log::{SqliteLog, SqliteOptions};

pub(crate) struct DataDir {
    root: PathBuf,
}

/// Held for as long as the process uses the directory exclusively; the OS
/// releases it when the process exits, however it exits.
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDir {
    pub(crate) fn new(root: PathBuf) -> DataDir {
        DataDir { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.root.join("log.db")
    }

    pub(crate) fn views_path(&self) -> PathBuf {
        self.root.join("views.db")
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("spool.lock")
    }

    pub(crate) fn create(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create the data directory {}", self.root.display()))
    }

    /// Takes the directory's lock, or says who holds it.
    pub(crate) fn lock(&self) -> anyhow::Result<DataDirLock> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder =
                    if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                bail!(
                    "the data directory {} is in use by another spool process{holder}, \
                     such as a running `spool serve`; stop it first or use another --data-dir",
                    self.root.display()
                );
            }
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // Who holds it, for the message above; advisory only.
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(DataDirLock { _file: file })
    }

    /// Opens the log for reading only: safe beside a running server.
    pub(crate) async fn open_log_read_only(&self) -> anyhow::Result<Arc<SqliteLog>> {
        self.open_log(true).await
    }

    /// Opens the log for appending. Safe beside a running server: the
    /// writer re-checks the head inside its write transaction.
    pub(crate) async fn open_log_writer(&self) -> anyhow::Result<Arc<SqliteLog>> {
        self.open_log(false).await
    }

    async fn open_log(&self, read_only: bool) -> anyhow::Result<Arc<SqliteLog>> {
        let path = self.log_path();
        if !path.exists() {
            bail!(
                "no event log at {}: start `spool serve` there first, or pass --data-dir",
                path.display()
            );
        }
        let options = SqliteOptions { read_only, ..SqliteOptions::default() };
        let log = SqliteLog::open(&path, options)
            .await
            .with_context(|| format!("cannot open the event log {}", path.display()))?;
        Ok(Arc::new(log))
    }
}
