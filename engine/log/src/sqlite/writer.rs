//! The single writer: drains queued appends into one transaction per group,
//! commits it, and hands the group to the syncer, which fsyncs the WAL and
//! answers every caller in the group (see `sync`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use spool_schemas::{EventId, Position, StreamName, TenantId};
use sqlx::Row as _;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use super::sync::Committed;

use crate::plan::{Plan, plan};
use crate::{Append, Appended, Error, Result};

/// Rows per multi-row INSERT: fewer round trips to SQLite's thread, well
/// under its limit on bound parameters.
const ROWS_PER_INSERT: usize = 500;
/// Bound on the stream cache; past it the cache starts over.
const MAX_CACHED_STREAMS: usize = 100_000;

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

#[derive(Clone, Copy)]
struct CachedStream {
    /// `None` until the stream's first event is written.
    id: Option<i64>,
    version: u64,
}

pub(super) struct Writer {
    connection: SqliteConnection,
    head: Position,
    streams: StreamCache,
    n_cached_streams: usize,
    next_stream_id: i64,
    max_group_events: usize,
    /// Set when a transaction failed: the caches may hold what was rolled back.
    stale: bool,
}

/// One row to insert, borrowing from the request that carries it.
struct EventRow<'a> {
    position: i64,
    id: &'a EventId,
    stream_id: i64,
    stream_version: i64,
    causation_id: Option<&'a EventId>,
    correlation_id: Option<&'a EventId>,
    encoded: &'a EncodedEvent,
}

impl Writer {
    pub(super) async fn new(
        connection: SqliteConnection,
        max_group_events: usize,
    ) -> Result<Writer> {
        let mut writer = Writer {
            connection,
            head: Position::ZERO,
            streams: HashMap::new(),
            n_cached_streams: 0,
            next_stream_id: 1,
            max_group_events: max_group_events.max(1),
            stale: true,
        };
        writer.reload().await?;
        Ok(writer)
    }

    pub(super) fn head(&self) -> Position {
        self.head
    }

    async fn db_head(&mut self) -> Result<Position> {
        let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&mut self.connection)
            .await?;
        Ok(Position(max as u64))
    }

    async fn reload(&mut self) -> Result<()> {
        self.streams.clear();
        self.n_cached_streams = 0;
        self.head = self.db_head().await?;
        let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM streams")
            .fetch_one(&mut self.connection)
            .await?;
        self.next_stream_id = max + 1;
        self.stale = false;
        Ok(())
    }

    /// Writes groups of queued appends until every sender is gone, handing
    /// each committed group to the syncer (see `sync`) for acknowledgement.
    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<(WriteRequest, Reply)>,
        committed: mpsc::UnboundedSender<Committed>,
        committed_head: Arc<AtomicU64>,
    ) {
        while let Some(first) = requests.recv().await {
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
            let (requests_in_group, replies): (Vec<WriteRequest>, Vec<Reply>) =
                group.into_iter().unzip();
            let answers = self.write_group(&requests_in_group).await;
            metrics::histogram!("spool_log_group_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("spool_log_group_events").record(n_events as f64);
            committed_head.store(self.head.0, Ordering::Release);
            let answers = replies.into_iter().zip(answers).collect();
            // The syncer outlives the writer; if it is gone the process is
            // going down and the callers learn it from their dropped replies.
            let _ = committed.send(Committed { head: self.head, answers });
        }
    }

    /// Writes every acceptable request of the group in one transaction.
    ///
    /// Optimistic twice over. About event ids: most are fresh, so the first
    /// attempt lets the unique index on `id` find duplicates instead of
    /// looking every id up; if it finds one, the group is redone with every
    /// id looked up. And about other processes: the caches are trusted
    /// without asking SQLite for its head, because another process's append
    /// since our last commit holds the position after our head, where our
    /// rows begin, so the primary key refuses them (as the stream tables'
    /// keys refuse a stream created twice); the group is then redone with
    /// the caches reloaded inside `BEGIN IMMEDIATE`.
    async fn write_group(&mut self, group: &[WriteRequest]) -> Vec<Result<Vec<Appended>>> {
        let mut look_up_ids = false;
        loop {
            let careful = look_up_ids || self.stale;
            match self.try_write_group(group, look_up_ids).await {
                Ok(Some(answers)) => return answers,
                // The caches were stale; `stale` is set and the next
                // attempt reloads them.
                Ok(None) => continue,
                Err(error) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut self.connection).await;
                    self.stale = true;
                    if !look_up_ids && is_duplicate_id(&error) {
                        look_up_ids = true;
                        continue;
                    }
                    if !careful && is_unique_violation(&error) {
                        continue;
                    }
                    tracing::error!(%error, "log group commit failed");
                    return group.iter().map(|_| Err(error.clone())).collect();
                }
            }
        }
    }

    /// One attempt at the group; `None` when the caches proved stale.
    async fn try_write_group(
        &mut self,
        group: &[WriteRequest],
        look_up_ids: bool,
    ) -> Result<Option<Vec<Result<Vec<Appended>>>>> {
        let careful = look_up_ids || self.stale;
        if careful {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut self.connection).await?;
            if self.stale || self.db_head().await? != self.head {
                self.reload().await?;
            }
        }
        if self.n_cached_streams > MAX_CACHED_STREAMS {
            self.streams.clear();
            self.n_cached_streams = 0;
        }
        let mut stored = if look_up_ids { self.stored_ids(group).await? } else { HashMap::new() };
        self.load_streams(group).await?;

        let mut next = self.head.next();
        let mut answers = Vec::with_capacity(group.len());
        let mut rows = Vec::new();
        let mut new_streams: Vec<(i64, TenantId, &StreamName)> = Vec::new();
        for request in group {
            // Optimistic mode skips looking ids up, but a conflict may be a
            // retry of an append that went through: look its ids up and
            // decide again before answering with the conflict.
            let mut decided = self.plan(request, next, &stored);
            if !look_up_ids && matches!(decided, Err(Error::Conflict(_))) {
                stored.extend(self.stored_ids(std::slice::from_ref(request)).await?);
                decided = self.plan(request, next, &stored);
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
                    new_streams.push((id, tenant, stream));
                }
            }
            for &index in &decided.writes {
                let event = &request.append.events[index];
                let result = decided.results[index];
                let stream_id = cached(&self.streams, event.tenant, &event.stream)
                    .and_then(|s| s.id)
                    .expect("written streams have an id");
                // A later append of the group with this id finds it stored.
                stored.insert(event.id, Appended { already_stored: true, ..result });
                rows.push(EventRow {
                    position: result.position.0 as i64,
                    id: &event.id,
                    stream_id,
                    stream_version: result.stream_version as i64,
                    causation_id: event.causation_id.as_ref(),
                    correlation_id: event.correlation_id.as_ref(),
                    encoded: &request.encoded[index],
                });
                next = result.position.next();
            }
            answers.push(Ok(decided.results));
        }

        if rows.is_empty() && !careful {
            // Nothing written, so no key checked the caches the answers
            // came from: check them against SQLite's head instead.
            if self.db_head().await? != self.head {
                self.stale = true;
                return Ok(None);
            }
        } else {
            // The careful path began its transaction before reading; a
            // lone INSERT is its own transaction; anything more is wrapped.
            let transaction = if careful {
                Transaction::Open
            } else if new_streams.is_empty() && rows.len() <= ROWS_PER_INSERT {
                Transaction::None
            } else {
                Transaction::Begin
            };
            write_rows(&mut self.connection, transaction, &new_streams, &rows).await?;
        }
        self.head = Position(next.0 - 1);
        metrics::counter!("spool_log_appended_events_total").increment(rows.len() as u64);
        Ok(Some(answers))
    }

    fn plan<'a>(
        &self,
        request: &'a WriteRequest,
        next: Position,
        stored: &HashMap<EventId, Appended>,
    ) -> Result<Plan<'a>> {
        plan(
            &request.append,
            0,
            next,
            |id| stored.get(id).copied(),
            |tenant, stream| cached(&self.streams, tenant, stream).map_or(0, |s| s.version),
        )
    }

    /// The ids of the group that are already stored, with where they are.
    async fn stored_ids(&mut self, group: &[WriteRequest]) -> Result<HashMap<EventId, Appended>> {
        let ids: Vec<&EventId> =
            group.iter().flat_map(|r| r.append.events.iter().map(|e| &e.id)).collect();
        let mut stored = HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, position, stream_version FROM events WHERE id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_bytes().as_slice());
            }
            for row in query.fetch_all(&mut self.connection).await? {
                let bytes: [u8; 16] = row
                    .try_get::<&[u8], _>(0)?
                    .try_into()
                    .map_err(|_| Error::Invalid("a stored event id is not 16 bytes".to_owned()))?;
                let id = EventId::from_bytes(bytes);
                let appended = Appended {
                    id,
                    partition: 0,
                    position: Position(row.try_get::<i64, _>(1)? as u64),
                    stream_version: row.try_get::<i64, _>(2)? as u64,
                    already_stored: true,
                };
                stored.insert(id, appended);
            }
        }
        Ok(stored)
    }

    /// Brings every stream the group touches into the cache.
    async fn load_streams(&mut self, group: &[WriteRequest]) -> Result<()> {
        let mut missing: Vec<(TenantId, &StreamName)> = Vec::new();
        let mut seen: std::collections::HashSet<(TenantId, &str)> =
            std::collections::HashSet::new();
        for request in group {
            let append = &request.append;
            let named = append
                .events
                .iter()
                .map(|e| (e.tenant, &e.stream))
                .chain(append.expected.iter().map(|e| (e.tenant, &e.stream)));
            for (tenant, stream) in named {
                if cached(&self.streams, tenant, stream).is_none()
                    && seen.insert((tenant, stream.as_str()))
                {
                    missing.push((tenant, stream));
                }
            }
        }
        // One query per 250 unknown streams, not one per stream: a group of
        // events on new streams (new orders, new users) is the common case.
        // CROSS JOIN keeps SQLite walking `wanted` and probing the
        // (tenant, name) index; left to itself it scanned `streams`.
        for chunk in missing.chunks(250) {
            let sql = format!(
                "WITH wanted (tenant, name) AS (VALUES {}) \
                 SELECT s.stream_id, s.tenant, s.name, \
                 (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = s.stream_id) \
                 FROM wanted w CROSS JOIN streams s ON s.tenant = w.tenant AND s.name = w.name",
                vec!["(?, ?)"; chunk.len()].join(",")
            );
            let mut query = sqlx::query(&sql);
            for (tenant, stream) in chunk {
                query = query.bind(tenant.as_bytes().as_slice()).bind(stream.as_str());
            }
            let mut found: HashMap<(TenantId, String), CachedStream> = HashMap::new();
            for row in query.fetch_all(&mut self.connection).await? {
                let tenant: &[u8] = row.try_get(1)?;
                let tenant = TenantId::from_bytes(tenant.try_into().map_err(|_| {
                    Error::Invalid("a stored tenant id is not 16 bytes".to_owned())
                })?);
                let entry = CachedStream {
                    id: Some(row.try_get(0)?),
                    version: row.try_get::<i64, _>(3)? as u64,
                };
                found.insert((tenant, row.try_get(2)?), entry);
            }
            for (tenant, stream) in chunk {
                let entry = found
                    .remove(&(*tenant, stream.as_str().to_owned()))
                    .unwrap_or(CachedStream { id: None, version: 0 });
                self.streams.entry(*tenant).or_default().insert((*stream).clone(), entry);
                self.n_cached_streams += 1;
            }
        }
        Ok(())
    }
}

type StreamCache = HashMap<TenantId, HashMap<StreamName, CachedStream>>;

fn cached(streams: &StreamCache, tenant: TenantId, stream: &StreamName) -> Option<CachedStream> {
    streams.get(&tenant).and_then(|streams| streams.get(stream.as_str())).copied()
}

/// Whether `error` is the unique index on event ids refusing a duplicate.
fn is_duplicate_id(error: &Error) -> bool {
    match error {
        Error::Storage(error) => match error.as_ref() {
            sqlx::Error::Database(database) => {
                database.is_unique_violation() && database.message().contains("events.id")
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether `error` is a unique or primary key refusing a row: after an
/// optimistic attempt, the sign that another process appended.
fn is_unique_violation(error: &Error) -> bool {
    match error {
        Error::Storage(error) => match error.as_ref() {
            sqlx::Error::Database(database) => database.is_unique_violation(),
            _ => false,
        },
        _ => false,
    }
}

fn placeholders(n: usize) -> String {
    let mut text = "?,".repeat(n);
    text.pop();
    text
}

/// Whether [`write_rows`] runs in a transaction, and who began it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transaction {
    /// The statements run on their own: one INSERT, its own transaction.
    None,
    /// Already begun by the caller; `write_rows` commits it.
    Open,
    /// `write_rows` begins and commits it.
    Begin,
}

/// Inserts the new streams and the rows, in one round trip to SQLite's
/// thread: every statement goes in one query text (sqlx binds the
/// parameters of each statement in turn), so a group with new streams costs
/// one hop instead of four (BEGIN, streams, events, COMMIT). On an error the
/// transaction may be left open; the caller rolls it back.
async fn write_rows(
    connection: &mut SqliteConnection,
    transaction: Transaction,
    streams: &[(i64, TenantId, &StreamName)],
    rows: &[EventRow<'_>],
) -> Result<()> {
    let mut sql = String::new();
    if transaction == Transaction::Begin {
        sql.push_str("BEGIN IMMEDIATE;");
    }
    for chunk in streams.chunks(ROWS_PER_INSERT) {
        sql.push_str("INSERT INTO streams (stream_id, tenant, name) VALUES ");
        push_tuples(&mut sql, chunk.len(), 3);
        sql.push(';');
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        sql.push_str(
            "INSERT OR ROLLBACK INTO events (position, id, stream_id, stream_version, \
             recorded_at, type, v, causation_id, correlation_id, data) VALUES ",
        );
        push_tuples(&mut sql, chunk.len(), 10);
        sql.push(';');
    }
    if transaction != Transaction::None {
        sql.push_str("COMMIT;");
    }
    let mut query = sqlx::query(&sql);
    for (id, tenant, name) in streams {
        query = query.bind(*id).bind(tenant.as_bytes().as_slice()).bind(name.as_str());
    }
    for row in rows {
        query = query
            .bind(row.position)
            .bind(row.id.as_bytes().as_slice())
            .bind(row.stream_id)
            .bind(row.stream_version)
            .bind(row.encoded.recorded_at_us)
            .bind(row.encoded.type_name.as_str())
            .bind(row.encoded.version)
            .bind(row.causation_id.map(|id| id.as_bytes().as_slice()))
            .bind(row.correlation_id.map(|id| id.as_bytes().as_slice()))
            .bind(row.encoded.data.as_str());
    }
    query.execute(&mut *connection).await?;
    Ok(())
}

/// Appends `n` comma-separated tuples of `width` placeholders each.
fn push_tuples(sql: &mut String, n: usize, width: usize) {
    let tuple = format!("({})", placeholders(width));
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&tuple);
    }
}
