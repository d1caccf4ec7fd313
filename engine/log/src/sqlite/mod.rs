//! The embedded default: the log in one SQLite file in WAL mode.
//!
//! One writer thread owns the only write connection and commits concurrent
//! appends together (group commit): each caller is answered after the
//! fsync of the transaction holding its events. Readers use a separate
//! pool of read-only connections and never wait for the writer.
//!
//! Layout, chosen because index layout decides the append rate here: events
//! are keyed by their position (the rowid), ids are 16-byte time-ordered
//! blobs, and streams are small integers mapped in a `streams` table, so
//! every index grows at its right edge or stays small.

mod checkpoint;
mod recent;
mod rows;
mod sync;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spool_schemas::{EventId, Position, StreamName, TenantId};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{Append, Appended, Error, Filter, Log, ReadBatch, Result, StoredEvent, TypeFilter};

use checkpoint::{Checkpointer, Checkpoints};
use recent::Recent;
use rows::{StreamNames, batch_query};
use sync::Wal;
use writer::{Queued, WriteRequest, Writer};

/// How many positions one [`Log::read`] examines at most.
const READ_WINDOW: u64 = 10_000;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the WAL is fsynced: survives power loss (`synchronous=FULL`).
    #[default]
    Full,
    /// After the write reaches the OS: survives the process being killed,
    /// not the machine losing power (`synchronous=NORMAL`).
    Normal,
}

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// The most events one group commit writes.
    pub max_group_events: usize,
    /// Read-only: no writer task, appends fail with [`Error::Closed`]. For
    /// operators' tools that read a log a server is writing.
    pub read_only: bool,
    /// How often to look for appends made by another process, whose
    /// appends cannot wake this process's tailers directly.
    pub foreign_append_poll: Duration,
    pub read_connections: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            max_group_events: 8_192,
            read_only: false,
            foreign_append_poll: Duration::from_millis(200),
            read_connections: 4,
        }
    }
}

pub struct SqliteLog {
    path: PathBuf,
    requests: Mutex<Option<mpsc::Sender<Queued>>>,
    /// Answered when the writer and the syncer have stopped, awaited on close.
    writer_done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    readers: SqlitePool,
    names: StreamNames,
    /// The newest published events, which serve reads near the head.
    recent: Arc<Recent>,
    head: Arc<watch::Sender<Position>>,
    foreign_poll: JoinHandle<()>,
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    stream_id INTEGER PRIMARY KEY,
    tenant    BLOB NOT NULL,
    name      TEXT NOT NULL,
    UNIQUE (tenant, name)
);
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    id             BLOB NOT NULL UNIQUE,
    stream_id      INTEGER NOT NULL,
    stream_version INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    type           TEXT NOT NULL,
    v              INTEGER NOT NULL,
    causation_id   BLOB,
    correlation_id BLOB,
    data           TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_id, stream_version);
";

impl SqliteLog {
    /// Opens (creating if needed) the log at `path`. A file left by a killed
    /// process opens cleanly: SQLite recovers the WAL.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteLog> {
        let path = path.as_ref().to_owned();
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536");

        let mut head_position = Position::ZERO;
        let (requests, writer) = if options.read_only {
            (None, None)
        } else {
            let writer_path = path.clone();
            let max_group_events = options.max_group_events;
            let (writer, checkpointer) = tokio::task::spawn_blocking(move || {
                let writer = Writer::open(&writer_path, max_group_events)?;
                Ok::<_, Error>((writer, Checkpointer::open(&writer_path)?))
            })
            .await
            .map_err(|error| Error::Unavailable(format!("cannot open the log: {error}")))??;
            head_position = writer.head();
            let (sender, receiver) = mpsc::channel(4_096);
            (Some(sender), Some((writer, checkpointer, receiver)))
        };

        let readers = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            // A local file cannot drop a connection: pinging each one as it
            // is taken from the pool was one more round trip to its thread
            // per read.
            .test_before_acquire(false)
            .connect_with(base.read_only(true).row_buffer_size(4_096))
            .await?;
        if options.read_only {
            head_position = max_position(&readers).await?;
        }
        let wal = match (options.read_only, options.durability) {
            (false, Durability::Full) => {
                let canonical = std::fs::canonicalize(&path).map_err(|error| {
                    Error::Unavailable(format!("cannot resolve {}: {error}", path.display()))
                })?;
                let wal = Arc::new(Wal::new(&canonical));
                // A process killed between a commit and its fsync leaves
                // committed events that are not yet durable; make them so
                // before publishing a head that includes them.
                wal.sync_async().await.map_err(|error| {
                    Error::Unavailable(format!("cannot sync the log's WAL: {error}"))
                })?;
                Some(wal)
            }
            _ => None,
        };
        let head = Arc::new(watch::Sender::new(head_position));
        let committed_head = Arc::new(AtomicU64::new(head_position.0));
        let recent = Arc::new(Recent::default());
        let writer_done = match writer {
            Some((writer, checkpointer, receiver)) => Some(spawn_writer_thread(
                writer,
                checkpointer,
                receiver,
                committed_head.clone(),
                wal.clone(),
                head.clone(),
                recent.clone(),
            )?),
            None => None,
        };
        let foreign_poll = tokio::spawn(poll_foreign_appends(
            readers.clone(),
            ForeignPoll { head: head.clone(), committed_head, wal },
            options.foreign_append_poll,
        ));
        Ok(SqliteLog {
            path,
            requests: Mutex::new(requests),
            writer_done: tokio::sync::Mutex::new(writer_done),
            readers,
            names: StreamNames::default(),
            recent,
            head,
            foreign_poll,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn fetch(
        &self,
        from_where_order_limit: &str,
        bind: impl FnOnce(SqlQuery<'_>) -> SqlQuery<'_>,
    ) -> Result<Vec<StoredEvent>> {
        let sql = batch_query(from_where_order_limit);
        rows::fetch_batch(&self.readers, &self.names, bind(sqlx::query(&sql))).await
    }
}

/// Runs the writer, the syncer and the checkpointer, each on a thread of
/// its own.
///
/// On the caller's runtime they would queue behind the very tasks they
/// answer: hundreds of appenders woken by one acknowledgement run before
/// the writer's next statement, and the groups shrink. On threads of their
/// own the writer fills its next transaction while the syncer waits for the
/// disk. The returned receiver is answered when all three have stopped.
fn spawn_writer_thread(
    writer: Writer,
    (checkpointer, checkpoints): (Checkpointer, Checkpoints),
    requests: mpsc::Receiver<Queued>,
    committed_head: Arc<AtomicU64>,
    wal: Option<Arc<Wal>>,
    head: Arc<watch::Sender<Position>>,
    recent: Arc<Recent>,
) -> Result<oneshot::Receiver<()>> {
    let cannot_start =
        |error: std::io::Error| Error::Unavailable(format!("cannot start the log writer: {error}"));
    let (committed, to_sync) = std::sync::mpsc::channel();
    let (done, done_receiver) = oneshot::channel();
    // Each ends when the writer has stopped and dropped its sender.
    let checkpointer = std::thread::Builder::new()
        .name("spool-log-checkpoint".to_owned())
        .spawn(move || checkpointer.run())
        .map_err(cannot_start)?;
    std::thread::Builder::new()
        .name("spool-log-sync".to_owned())
        .spawn(move || {
            sync::run(to_sync, wal, head, recent);
            let _ = checkpointer.join();
            let _ = done.send(());
        })
        .map_err(cannot_start)?;
    std::thread::Builder::new()
        .name("spool-log-writer".to_owned())
        .spawn(move || writer.run(requests, committed, committed_head, checkpoints))
        .map_err(cannot_start)?;
    Ok(done_receiver)
}

type SqlQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

async fn max_position(pool: &SqlitePool) -> Result<Position> {
    let max: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events").fetch_one(pool).await?;
    Ok(Position(max as u64))
}

/// What the foreign-append poller needs to publish another process's appends.
struct ForeignPoll {
    head: Arc<watch::Sender<Position>>,
    /// The last position this process's writer committed; the syncer
    /// publishes up to there, so the poller must not get ahead of it.
    committed_head: Arc<AtomicU64>,
    wal: Option<Arc<Wal>>,
}

/// Another process (the `spool` CLI, say) may append to the same file; its
/// appends cannot wake this process's tailers, so they are looked for here.
async fn poll_foreign_appends(pool: SqlitePool, poll: ForeignPoll, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // A missing table (a read-only open racing the first writer) or a
        // busy file is retried on the next tick.
        let Ok(position) = max_position(&pool).await else { continue };
        if position <= *poll.head.borrow()
            || position.0 <= poll.committed_head.load(Ordering::Acquire)
        {
            continue;
        }
        // Beyond what this process wrote: another process's appends. Make
        // them durable here too before any reader of ours sees them.
        if let Some(wal) = &poll.wal
            && wal.sync_async().await.is_err()
        {
            continue;
        }
        crate::tail::advance_head(&poll.head, position);
    }
}

impl Drop for SqliteLog {
    fn drop(&mut self) {
        self.foreign_poll.abort();
    }
}

#[async_trait::async_trait]
impl Log for SqliteLog {
    fn partitions(&self) -> u32 {
        1
    }

    async fn append(&self, append: Append) -> Result<Vec<Appended>> {
        if append.events.is_empty() {
            return Ok(Vec::new());
        }
        let sender = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sender = sender.ok_or(Error::Closed)?;
        // Encoding happens here, on the caller's task, so that the single
        // writer only writes.
        let request = Arc::new(WriteRequest::new(append));
        let (reply, answer) = oneshot::channel();
        sender.send((request.clone(), reply)).await.map_err(|_| Error::Closed)?;
        let answer = answer.await.map_err(|_| Error::Closed)?;
        // The writer has dropped its handle by now, so the events are freed
        // here, on the caller's task, rather than on the single writer's.
        drop(request);
        answer
    }

    async fn read(
        &self,
        partition: u32,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> Result<ReadBatch> {
        if partition != 0 {
            return Err(Error::no_partition(partition));
        }
        // Everything at or below the head is committed, so bounding the
        // query by it never skips an event a later read would miss.
        let head = *self.head.borrow();
        let upper = Position(after.0.saturating_add(READ_WINDOW).min(head.0));
        if upper <= after || limit == 0 {
            return Ok(ReadBatch { events: Vec::new(), scanned_to: after.max(upper.min(after)) });
        }
        if let Some(batch) = self.recent.read(after, upper, limit, filter) {
            return Ok(batch);
        }
        let mut sql = "WHERE e.position > ? AND e.position <= ?".to_owned();
        match (filter.tenant.is_some(), filter.stream.is_some()) {
            (true, true) => sql.push_str(
                " AND e.stream_id IN (SELECT stream_id FROM streams WHERE tenant = ? AND name = ?)",
            ),
            (true, false) => {
                sql.push_str(" AND e.stream_id IN (SELECT stream_id FROM streams WHERE tenant = ?)")
            }
            (false, true) => {
                sql.push_str(" AND e.stream_id IN (SELECT stream_id FROM streams WHERE name = ?)")
            }
            (false, false) => {}
        }
        if !filter.types.is_empty() {
            let clauses: Vec<&str> = filter
                .types
                .iter()
                .map(|t| match t {
                    TypeFilter::Exact(_) => "e.type = ?",
                    TypeFilter::Prefix(_) => "substr(e.type, 1, ?) = ?",
                })
                .collect();
            sql.push_str(&format!(" AND ({})", clauses.join(" OR ")));
        }
        sql.push_str(" ORDER BY e.position LIMIT ?");
        let events = self
            .fetch(&sql, |mut query| {
                query = query.bind(after.0 as i64).bind(upper.0 as i64);
                if let Some(tenant) = filter.tenant {
                    query = query.bind(tenant.as_bytes().to_vec());
                }
                if let Some(stream) = &filter.stream {
                    query = query.bind(stream.as_str().to_owned());
                }
                for type_filter in &filter.types {
                    query = match type_filter {
                        TypeFilter::Exact(name) => query.bind(name.clone()),
                        TypeFilter::Prefix(prefix) => {
                            query.bind(prefix.chars().count() as i64).bind(prefix.clone())
                        }
                    };
                }
                query.bind(limit as i64)
            })
            .await?;
        let scanned_to = match events.last() {
            Some(last) if events.len() == limit => last.position,
            _ => upper,
        };
        Ok(ReadBatch { events, scanned_to })
    }

    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        // Bounded by the head, like every read: nothing not yet durable.
        let head = *self.head.borrow();
        let sql = "WHERE e.stream_id = \
             (SELECT stream_id FROM streams WHERE tenant = ? AND name = ?) \
             AND e.stream_version >= ? AND e.position <= ? ORDER BY e.stream_version LIMIT ?";
        self.fetch(sql, |query| {
            query
                .bind(tenant.as_bytes().to_vec())
                .bind(stream.as_str().to_owned())
                .bind(from_version.min(i64::MAX as u64) as i64)
                .bind(head.0 as i64)
                .bind(limit as i64)
        })
        .await
    }

    async fn find(&self, id: EventId) -> Result<Option<StoredEvent>> {
        let head = *self.head.borrow();
        let mut found = self
            .fetch("WHERE e.id = ? AND e.position <= ?", |query| {
                query.bind(id.as_bytes().to_vec()).bind(head.0 as i64)
            })
            .await?;
        Ok(found.pop())
    }

    fn head(&self, partition: u32) -> watch::Receiver<Position> {
        assert_eq!(partition, 0, "the SQLite log has one partition");
        self.head.subscribe()
    }

    async fn close(&self) -> Result<()> {
        // Dropping the last sender lets the writer drain its queue and stop.
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = self.writer_done.lock().await.take() {
            done.await.map_err(|_| Error::Closed)?;
        }
        self.readers.close().await;
        Ok(())
    }
}
