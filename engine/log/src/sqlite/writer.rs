//! The single writer: drains queued appends into one transaction per group,
//! commits it, and hands the group to the syncer, which fsyncs the WAL and
//! answers every caller in the group (see `sync`).
//!
//! The writer owns its SQLite connection (rusqlite) and calls SQLite on its
//! own thread. Through sqlx every statement would be a round trip to a
//! worker thread and back, two thread wake-ups each; measured under 256
//! concurrent appenders, those hops, not SQLite, were most of a group's
//! time. Here a group costs no hop at all, so every statement can be a
//! small prepared one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::DateTime;
use rusqlite::{Connection, OptionalExtension, params};
use spool_schemas::{EventId, Position, StreamName, TenantId};
use tokio::sync::{mpsc, oneshot};

use super::SCHEMA;
use super::checkpoint::{Checkpoints, RESTART_FRAMES, passive_checkpoint};
use super::sync::{Committed, wal_path};

use crate::plan::{Plan, plan};
use crate::{Append, Appended, Error, Result, StoredEvent};

/// Bound on the stream cache; past it the cache starts over.
const MAX_CACHED_STREAMS: usize = 100_000;

const INSERT_EVENT: &str = "INSERT INTO events (position, id, stream_id, stream_version, \
     recorded_at, type, v, causation_id, correlation_id, data) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_STREAM: &str = "INSERT INTO streams (stream_id, tenant, name) VALUES (?1, ?2, ?3)";
const FIND_STREAM: &str = "SELECT stream_id, \
     (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = s.stream_id) \
     FROM streams s WHERE tenant = ?1 AND name = ?2";
const FIND_ID: &str = "SELECT position, stream_version FROM events WHERE id = ?1";
const HEAD: &str = "SELECT COALESCE(MAX(position), 0) FROM events";

/// One event encoded for storage, done on the caller's task.
pub(super) struct EncodedEvent {
    recorded_at_us: i64,
    type_name: String,
    version: i64,
    data: String,
}

pub(super) struct WriteRequest {
    append: Append,
    encoded: Vec<EncodedEvent>,
}

impl WriteRequest {
    pub(super) fn new(append: Append) -> WriteRequest {
        let encoded = append
            .events
            .iter()
            .map(|event| EncodedEvent {
                recorded_at_us: event.recorded_at.timestamp_micros(),
                type_name: event.event.type_name().to_owned(),
                version: i64::from(event.event.version()),
                data: event.event.data_json(),
            })
            .collect();
        WriteRequest { append, encoded }
    }
}

pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>>>;

/// Each request's answer, and the events the group wrote.
type GroupWritten = (Vec<Result<Vec<Appended>>>, Vec<Written>);

/// One event of a committed group: its request, its index there, and where
/// it was stored. The syncer makes it the event readers get (see `recent`).
pub(super) struct Written {
    request: Arc<WriteRequest>,
    index: usize,
    at: Appended,
}

impl Written {
    /// The event as a read of SQLite returns it.
    pub(super) fn stored(&self) -> StoredEvent {
        let event = &self.request.append.events[self.index];
        let encoded = &self.request.encoded[self.index];
        StoredEvent {
            partition: 0,
            position: self.at.position,
            id: event.id,
            tenant: event.tenant,
            stream: event.stream.clone(),
            stream_version: self.at.stream_version,
            recorded_at: DateTime::from_timestamp_micros(encoded.recorded_at_us)
                .expect("a timestamp's microseconds convert back"),
            causation_id: event.causation_id,
            correlation_id: event.correlation_id,
            type_name: encoded.type_name.clone(),
            version: encoded.version as u32,
            data: encoded.data.clone(),
        }
    }
}

/// An append waiting for the writer, with where to send its answer. The
/// caller keeps a handle on the request too (see `SqliteLog::append`).
pub(super) type Queued = (Arc<WriteRequest>, Reply);

#[derive(Clone, Copy)]
struct CachedStream {
    /// `None` until the stream's first event is written.
    id: Option<i64>,
    version: u64,
}

type StreamCache = HashMap<TenantId, HashMap<StreamName, CachedStream>>;

pub(super) struct Writer {
    connection: Connection,
    head: Position,
    streams: StreamCache,
    n_cached_streams: usize,
    next_stream_id: i64,
    max_group_events: usize,
    /// Set when a transaction failed: the caches may hold what was rolled back.
    stale: bool,
}

impl Writer {
    /// Opens the log file for writing, creating it and its tables if needed.
    pub(super) fn open(path: &Path, max_group_events: usize) -> Result<Writer> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Unavailable(format!(
                "{} cannot use write-ahead logging (journal mode stays {mode})",
                path.display()
            )));
        }
        connection.execute_batch(
            // Commits write the WAL without syncing it; with
            // `Durability::Full` the syncer fsyncs it before any caller is
            // answered (see `sync`). Checkpoints still sync first, and run
            // on a thread of their own (see `checkpoint`).
            "PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA cache_size = -65536;
             PRAGMA temp_store = MEMORY;",
        )?;
        connection.execute_batch(SCHEMA)?;
        if let Err(error) = preallocate_wal(&connection, path) {
            // Slower syncs until the WAL first starts over, nothing worse:
            // not a reason to refuse the log (on a nearly full disk, say,
            // where an operator may need the CLI most).
            tracing::warn!(%error, "the log's WAL is not preallocated");
        }
        let mut writer = Writer {
            connection,
            head: Position::ZERO,
            streams: HashMap::new(),
            n_cached_streams: 0,
            next_stream_id: 1,
            max_group_events: max_group_events.max(1),
            stale: true,
        };
        writer.reload()?;
        Ok(writer)
    }

    pub(super) fn head(&self) -> Position {
        self.head
    }

    fn db_head(&self) -> rusqlite::Result<Position> {
        let max: i64 = self.connection.prepare_cached(HEAD)?.query_row([], |r| r.get(0))?;
        Ok(Position(max as u64))
    }

    fn reload(&mut self) -> rusqlite::Result<()> {
        self.streams.clear();
        self.n_cached_streams = 0;
        self.head = self.db_head()?;
        let max: i64 = self.connection.query_row(
            "SELECT COALESCE(MAX(stream_id), 0) FROM streams",
            [],
            |r| r.get(0),
        )?;
        self.next_stream_id = max + 1;
        self.stale = false;
        Ok(())
    }

    /// Writes groups of queued appends until every sender is gone, handing
    /// each committed group to the syncer (see `sync`) for acknowledgement.
    /// Blocks: runs on a thread of its own.
    pub(super) fn run(
        mut self,
        mut requests: mpsc::Receiver<Queued>,
        committed: std::sync::mpsc::Sender<Committed>,
        committed_head: Arc<AtomicU64>,
        checkpoints: Checkpoints,
    ) {
        while let Some(first) = requests.blocking_recv() {
            let mut n_events = first.0.append.events.len();
            let mut group = vec![first];
            while n_events < self.max_group_events {
                match requests.try_recv() {
                    Ok(next) => {
                        n_events += next.0.append.events.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            if checkpoints.take_assist() {
                // Copies only what was written since the checkpointer's
                // pass; the commit below then starts the WAL over.
                if let Err(error) = passive_checkpoint(&self.connection) {
                    tracing::warn!(%error, "checkpoint of the log failed");
                }
            }
            let (requests_in_group, replies): (Vec<Arc<WriteRequest>>, Vec<Reply>) =
                group.into_iter().unzip();
            let (answers, written) = self.write_group(&requests_in_group);
            // Let go before anyone is answered, so that each caller holds
            // the last handle and frees its events on its own task.
            drop(requests_in_group);
            metrics::histogram!("spool_log_group_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("spool_log_group_events").record(n_events as f64);
            committed_head.store(self.head.0, Ordering::Release);
            let answers = replies.into_iter().zip(answers).collect();
            // The syncer outlives the writer; if it is gone the process is
            // going down and the callers learn it from their dropped replies.
            let _ = committed.send(Committed { head: self.head, answers, written });
            checkpoints.committed();
        }
    }

    /// Writes every acceptable request of the group in one transaction.
    ///
    /// Optimistic about event ids: most are fresh, so the first attempt lets
    /// the unique index on `id` find duplicates instead of looking every id
    /// up; if it finds one, the group is redone with every id looked up.
    fn write_group(&mut self, group: &[Arc<WriteRequest>]) -> GroupWritten {
        let mut look_up_ids = false;
        loop {
            if let Err(error) = self.execute_cached("BEGIN IMMEDIATE") {
                return (fail_all(group, error.into()), Vec::new());
            }
            let attempt = self.try_write_group(group, look_up_ids);
            let attempt = match attempt {
                Ok(done) => self.execute_cached("COMMIT").map(|()| done),
                Err(error) => Err(error),
            };
            match attempt {
                Ok(done) => return done,
                Err(error) => {
                    // The caches may hold what is rolled back here.
                    let _ = self.connection.execute_batch("ROLLBACK");
                    self.stale = true;
                    if !look_up_ids && is_duplicate_id(&error) {
                        look_up_ids = true;
                        continue;
                    }
                    return (fail_all(group, error.into()), Vec::new());
                }
            }
        }
    }

    /// Runs `sql` as a prepared statement, parsed once per connection: a
    /// group's `BEGIN` and `COMMIT` are thousands a second under load.
    fn execute_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.connection.prepare_cached(sql)?.execute([]).map(drop)
    }

    /// One attempt at the group, inside the writer's transaction. Fails
    /// with SQLite's error, so that a duplicate id can be recognised.
    fn try_write_group(
        &mut self,
        group: &[Arc<WriteRequest>],
        look_up_ids: bool,
    ) -> rusqlite::Result<GroupWritten> {
        // Another process (the `spool` CLI, say) may have appended since our
        // last commit; the write lock is held now, so this check is exact.
        if self.stale || self.db_head()? != self.head {
            self.reload()?;
        }
        if self.n_cached_streams > MAX_CACHED_STREAMS {
            self.streams.clear();
            self.n_cached_streams = 0;
        }
        let mut stored =
            if look_up_ids { stored_ids(&self.connection, group)? } else { HashMap::new() };
        self.load_streams(group)?;

        let mut next = self.head.next();
        let mut answers = Vec::with_capacity(group.len());
        let mut written = Vec::new();
        let mut insert_event = self.connection.prepare_cached(INSERT_EVENT)?;
        let mut insert_stream = self.connection.prepare_cached(INSERT_STREAM)?;
        for request in group {
            // Optimistic mode skips looking ids up, but a conflict may be a
            // retry of an append that went through: look its ids up and
            // decide again before answering with the conflict.
            let mut decided = plan_request(&self.streams, request, next, &stored);
            if !look_up_ids && matches!(decided, Err(Error::Conflict(_))) {
                stored.extend(stored_ids(&self.connection, std::slice::from_ref(request))?);
                decided = plan_request(&self.streams, request, next, &stored);
            }
            let decided = match decided {
                Ok(decided) => decided,
                Err(error) => {
                    answers.push(Err(error));
                    continue;
                }
            };
            for ((tenant, stream), version) in decided.stream_versions {
                let entry = self
                    .streams
                    .get_mut(&tenant)
                    .and_then(|streams| streams.get_mut(stream.as_str()))
                    .expect("every planned stream was loaded");
                entry.version = version;
                if entry.id.is_none() {
                    let id = self.next_stream_id;
                    self.next_stream_id += 1;
                    entry.id = Some(id);
                    insert_stream.execute(params![id, tenant.as_bytes(), stream.as_str()])?;
                }
            }
            for &index in &decided.writes {
                let event = &request.append.events[index];
                let result = decided.results[index];
                let encoded = &request.encoded[index];
                let stream_id = cached(&self.streams, event.tenant, &event.stream)
                    .and_then(|s| s.id)
                    .expect("written streams have an id");
                // A later append of the group with this id finds it stored.
                stored.insert(event.id, Appended { already_stored: true, ..result });
                insert_event.execute(params![
                    result.position.0 as i64,
                    event.id.as_bytes(),
                    stream_id,
                    result.stream_version as i64,
                    encoded.recorded_at_us,
                    encoded.type_name,
                    encoded.version,
                    event.causation_id.as_ref().map(EventId::as_bytes),
                    event.correlation_id.as_ref().map(EventId::as_bytes),
                    encoded.data,
                ])?;
                next = result.position.next();
                written.push(Written { request: request.clone(), index, at: result });
            }
            answers.push(Ok(decided.results));
        }
        let n_written = next.0 - 1 - self.head.0;
        self.head = Position(next.0 - 1);
        metrics::counter!("spool_log_appended_events_total").increment(n_written);
        Ok((answers, written))
    }

    /// Brings every stream the group touches into the cache.
    fn load_streams(&mut self, group: &[Arc<WriteRequest>]) -> rusqlite::Result<()> {
        let mut find = self.connection.prepare_cached(FIND_STREAM)?;
        for request in group {
            let append = &request.append;
            let named = append
                .events
                .iter()
                .map(|e| (e.tenant, &e.stream))
                .chain(append.expected.iter().map(|e| (e.tenant, &e.stream)));
            for (tenant, stream) in named {
                if cached(&self.streams, tenant, stream).is_some() {
                    continue;
                }
                let entry = find
                    .query_row(params![tenant.as_bytes(), stream.as_str()], |row| {
                        Ok(CachedStream {
                            id: Some(row.get(0)?),
                            version: row.get::<_, i64>(1)? as u64,
                        })
                    })
                    .optional()?
                    .unwrap_or(CachedStream { id: None, version: 0 });
                self.streams.entry(tenant).or_default().insert(stream.clone(), entry);
                self.n_cached_streams += 1;
            }
        }
        Ok(())
    }
}

fn plan_request<'a>(
    streams: &StreamCache,
    request: &'a WriteRequest,
    next: Position,
    stored: &HashMap<EventId, Appended>,
) -> Result<Plan<'a>> {
    plan(
        &request.append,
        0,
        next,
        |id| stored.get(id).copied(),
        |tenant, stream| cached(streams, tenant, stream).map_or(0, |s| s.version),
    )
}

/// The ids of the group that are already stored, with where they are.
fn stored_ids(
    connection: &Connection,
    group: &[Arc<WriteRequest>],
) -> rusqlite::Result<HashMap<EventId, Appended>> {
    let mut find = connection.prepare_cached(FIND_ID)?;
    let mut stored = HashMap::new();
    for event in group.iter().flat_map(|r| r.append.events.iter()) {
        let found = find
            .query_row(params![event.id.as_bytes()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()?;
        if let Some((position, stream_version)) = found {
            let appended = Appended {
                id: event.id,
                partition: 0,
                position: Position(position as u64),
                stream_version: stream_version as u64,
                already_stored: true,
            };
            stored.insert(event.id, appended);
        }
    }
    Ok(stored)
}

/// Zero-fills the WAL up to the length it keeps under steady load (about
/// `RESTART_FRAMES` frames; see `checkpoint`).
///
/// An fdatasync of a file that grew must also commit the file system's
/// journal for the new size and blocks; one of a file overwritten in place
/// syncs only the data. Measured here with 400 KiB commits: 0.45 ms against
/// 0.27 ms. Without this, every commit of a fresh log grows the WAL until
/// its first restart, with every caller waiting on those slower syncs; and
/// writing into blocks the file has is cheaper for the writer too (with 256
/// concurrent appenders, 7.1–7.5 µs of its CPU per event against 7.8–8.4).
///
/// Safe for SQLite, which reads frames only up to the last valid one (a
/// frame's salt must match the header's) and overwrites a longer file when
/// the WAL starts over, as it does with the frames of an earlier pass.
/// Only bytes past the end of the file are written, under the write lock,
/// so no frame of any process is touched.
fn preallocate_wal(connection: &Connection, database: &Path) -> Result<()> {
    let page_size: i64 = connection.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let length = 32 + RESTART_FRAMES as u64 * (24 + page_size as u64);
    let cannot = |error: std::io::Error| {
        Error::Unavailable(format!("cannot preallocate the WAL of {}: {error}", database.display()))
    };
    let wal = wal_path(&std::fs::canonicalize(database).map_err(cannot)?);
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let filled = zero_fill(&wal, length);
    connection.execute_batch("ROLLBACK")?;
    filled.map_err(cannot)
}

/// Extends `path` with zeros to `length` bytes, durably; never writes
/// before its end.
fn zero_fill(path: &Path, length: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut end = file.metadata()?.len();
    if end >= length {
        return Ok(());
    }
    let zeros = vec![0_u8; 1 << 20];
    while end < length {
        let n = zeros.len().min((length - end) as usize);
        file.write_all_at(&zeros[..n], end)?;
        end += n as u64;
    }
    file.sync_all()
}

fn cached(streams: &StreamCache, tenant: TenantId, stream: &StreamName) -> Option<CachedStream> {
    streams.get(&tenant).and_then(|streams| streams.get(stream.as_str())).copied()
}

fn fail_all(group: &[Arc<WriteRequest>], error: Error) -> Vec<Result<Vec<Appended>>> {
    tracing::error!(%error, "log group commit failed");
    group.iter().map(|_| Err(error.clone())).collect()
}

/// Whether `error` is the unique index on event ids refusing a duplicate.
fn is_duplicate_id(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(failure, Some(message)) => {
            failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && message.contains("events.id")
        }
        _ => false,
    }
}
