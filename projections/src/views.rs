//! The read-model store: one SQLite file (`views.db` beside the log, in WAL
//! mode) or a PostgreSQL database, holding every projection's tables and
//! the registry of their generations and checkpoints.
//!
//! Both go through sqlx's `Any` driver, so every statement of this crate
//! and of the projections is one SQL text that both databases run: numbered
//! parameters (`$1`; sqlx's SQLite driver binds `$N` by its number), types
//! both know (`TEXT`, `BIGINT`), `INSERT … ON CONFLICT … DO UPDATE`, views.
//! This module is the only one that tells the two apart: how to connect,
//! how a write transaction begins, and (in `registry`) the migration of
//! SQLite files older than partitions. Typed queries sort their rows in
//! Rust where the order matters, since PostgreSQL compares text by the
//! database's collation and SQLite by bytes.
//!
//! The SQLite file is kept apart from the log's, so read-model writes never
//! block appends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Connection as _, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{Error, Result, registry};

/// The database the read models live in, as projections see it: either
/// store, through sqlx's `Any` driver.
pub type Database = sqlx::Any;

/// The connection a projection writes through, inside a transaction.
pub type Connection = <Database as sqlx::Database>::Connection;

/// Which database holds the read models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the read models live: a SQLite file, or a PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` (or `postgresql://`) URL, as libpq takes it; its
    /// `options` parameter may set the `search_path`.
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL, or else a SQLite file's path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_owned())
        } else {
            Location::Sqlite(PathBuf::from(text))
        }
    }
}

impl From<&str> for Location {
    fn from(text: &str) -> Location {
        Location::parse(text)
    }
}

impl From<String> for Location {
    fn from(text: String) -> Location {
        Location::parse(&text)
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Location {
        Location::Sqlite(path)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Location {
        Location::Sqlite(path.to_owned())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Location {
        Location::Sqlite(path.clone())
    }
}

/// The read-model store. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Views {
    pool: AnyPool,
    backend: Backend,
    /// Projection writers of this process take turns here (the idempotency
    /// store's short writes do not: see [`Views::write_unqueued`]): SQLite
    /// has one writer at a time, and waiting here beats SQLite's busy
    /// handler, which sleeps.
    /// PostgreSQL would not need it; one writer per process keeps the two
    /// stores alike (writes of one runner are sequential anyway).
    writer: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").field("backend", &self.backend).finish_non_exhaustive()
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

/// Per connection to a SQLite store. Read models can be rebuilt from the
/// log, so losing the last commits to a power cut is acceptable; a killed
/// process loses nothing in WAL mode with `synchronous=NORMAL`.
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA cache_size = -65536",
];

impl Views {
    /// Opens the store at `location` (a SQLite path, created if missing, or
    /// a `postgres://` URL of an existing database), creates the registry
    /// (migrating a SQLite file written before the log had partitions) and
    /// installs an empty generation of every built-in projection not yet
    /// installed, so that typed queries work before anything is built.
    ///
    /// A SQLite file left by a killed process opens cleanly: SQLite
    /// recovers its WAL.
    pub async fn open(location: impl Into<Location>) -> Result<Views> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match location.into() {
            Location::Sqlite(path) => {
                // Through a URL, which is all the `Any` driver takes; an
                // absolute path, so that it cannot read as a host name.
                let path = std::path::absolute(&path).map_err(|error| {
                    Error::Invalid(format!("cannot resolve {}: {error}", path.display()))
                })?;
                let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
                (options.to_url_lossy().to_string(), Backend::Sqlite)
            }
            Location::Postgres(url) => (url, Backend::Postgres),
        };
        let options: AnyConnectOptions = url.parse()?;
        // One connection first: a pool would retry an unreachable server
        // until it timed out and report only that, not why.
        sqlx::AnyConnection::connect_with(&options).await?.close().await?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            // A PostgreSQL connection may have died idle (a server restart)
            // and is tested before use; a SQLite file cannot drop one, and
            // the test was a round trip to its thread per query.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            connection.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let views = Views { pool, backend, writer: Arc::new(Mutex::new(())) };
        registry::create(&views).await?;
        // Not a projection: a plain table the API keeps (see `idempotency`).
        crate::idempotency::create(&views).await?;
        for projection in crate::builtin() {
            registry::install(&views, projection.as_ref()).await?;
        }
        Ok(views)
    }

    /// The pool, for analysts' SQL and for queries this crate has no typed
    /// form of yet. Write nothing through it.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database holds the read models.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool's connections, waiting for them to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a write transaction. On SQLite, `BEGIN IMMEDIATE` takes the
    /// write lock up front, so a transaction never fails half-way for want
    /// of it.
    pub(crate) async fn write(&self) -> Result<Write> {
        let turn = self.writer.clone().lock_owned().await;
        let transaction = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Write { transaction, _turn: turn })
    }

    /// Begins a short write transaction that does not wait for this
    /// process's writer turn, for tables no projection writes (the
    /// idempotency store): a request must not queue behind projection
    /// batches, nor hold them up for longer than its own statements.
    /// On PostgreSQL it is a plain transaction beside the others (row locks
    /// and primary keys decide races); on SQLite, `BEGIN IMMEDIATE` waits
    /// for the file's one write lock through the busy timeout (10 s).
    pub(crate) async fn write_unqueued(&self) -> Result<Transaction<'static, Database>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Begins a read transaction that holds the read-model `tables`
    /// (views) until it ends, for one statement that reads several of them:
    /// a statement reads one snapshot, but on PostgreSQL it locks the
    /// tables it names one after another, and one that held a table while
    /// waiting for the next (a rebuild's swap dropping it) could deadlock
    /// with that swap, which locks them in an order of its own.
    ///
    /// So on PostgreSQL the transaction first takes them all, with their
    /// physical tables, in one `LOCK … NOWAIT`, which fails rather than
    /// waits; while a swap holds one, it tries again after a pause, for
    /// up to [`READ_LOCK_PATIENCE`]. A swap waits for it, as for any
    /// statement. On SQLite a plain `BEGIN`: readers never block a writer.
    pub(crate) async fn read_holding(
        &self,
        tables: &[&str],
    ) -> Result<Transaction<'static, Database>> {
        if self.backend == Backend::Sqlite {
            return Ok(self.pool.begin().await?);
        }
        let lock = format!("LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT", tables.join(", "));
        let started = std::time::Instant::now();
        loop {
            let mut transaction = self.pool.begin().await?;
            match sqlx::query(&lock).execute(&mut *transaction).await {
                Ok(_) => return Ok(transaction),
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE)
                        && started.elapsed() < READ_LOCK_PATIENCE =>
                {
                    transaction.rollback().await?;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// How long [`Views::read_holding`] keeps trying while a swap holds its
/// tables: as long as SQLite's busy timeout.
pub(crate) const READ_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// PostgreSQL's SQLSTATE for a `NOWAIT` lock that is taken.
const LOCK_NOT_AVAILABLE: &str = "55P03";
