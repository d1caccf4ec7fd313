//! The read-model store: one SQLite file (`views.db` beside the log) in WAL
//! mode, holding every projection's tables and the registry of their
//! generations and checkpoints.
//!
//! Kept apart from the log's file so that read-model writes never block
//! appends. PostgreSQL comes later through the same code: the SQL here and
//! in the projections is kept portable (`INSERT … ON CONFLICT … DO UPDATE`,
//! `substr`, views), and only this module names the database.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlitePool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{Result, registry};

/// The database the read models live in.
pub type Database = sqlx::Sqlite;

/// The connection a projection writes through, inside a transaction.
pub type Connection = <Database as sqlx::Database>::Connection;

/// The read-model store. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Views {
    pool: SqlitePool,
    /// SQLite has one writer at a time; writers of this process take turns
    /// here rather than in SQLite's busy handler, which sleeps.
    writer: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

/// A write transaction, holding this process's writer turn until it ends.
pub(crate) struct Write {
    pub(crate) transaction: Transaction<'static, Database>,
    _turn: OwnedMutexGuard<()>,
}

impl Write {
    pub(crate) fn connection(&mut self) -> &mut Connection {
        &mut self.transaction
    }

    pub(crate) async fn commit(self) -> Result<()> {
        self.transaction.commit().await?;
        Ok(())
    }
}

impl Views {
    /// Opens (creating if missing) the store at `path`, creates the registry
    /// and installs an empty generation of every built-in projection not yet
    /// installed, so that typed queries work before anything is built.
    ///
    /// A file left by a killed process opens cleanly: SQLite recovers its WAL.
    pub async fn open(path: impl AsRef<Path>) -> Result<Views> {
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Read models can be rebuilt from the log, so losing the last
            // commits to a power cut is acceptable; a killed process loses
            // nothing in WAL mode with `NORMAL`.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536");
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        let views = Views { pool, writer: Arc::new(Mutex::new(())) };
        registry::create(&views).await?;
        for projection in crate::builtin() {
            registry::install(&views, projection.as_ref()).await?;
        }
        Ok(views)
    }

    /// The pool, for analysts' SQL and for queries this crate has no typed
    /// form of yet. Write nothing through it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a write transaction. `BEGIN IMMEDIATE` takes SQLite's write
    /// lock up front, so a transaction never fails half-way for want of it.
    pub(crate) async fn write(&self) -> Result<Write> {
        let turn = self.writer.clone().lock_owned().await;
        let transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Write { transaction, _turn: turn })
    }
}
