//! The idempotency store: one row per `Idempotency-Key` a caller used in
//! the last 24 hours, with the response its request got, so that the API
//! can replay it (see `spool_api::idempotency`).
//!
//! This is a plain table, not a projection: no event feeds it, it has no
//! generations and no checkpoint, and a rebuild neither reads nor clears
//! it. Stored responses are short-lived and may hold a secret shown once
//! (a new API key), so they have no place in the log, which keeps
//! everything forever. It lives in the read-model store beside the
//! projections because every instance shares that store (one SQLite file,
//! or PostgreSQL across instances), which is what makes a key claimed on
//! one instance visible to all of them.
//!
//! Table `spool_idempotency` (times are Unix milliseconds):
//! - `tenant` (`ten_…`), `principal` (who called within the tenant, such
//!   as `key_…`), `idempotency_key` (as the client sent it): the primary
//!   key, so two tenants or two callers never share an entry;
//! - `fingerprint`: what identifies the request (the API stores a keyed
//!   hash of its method, path, media type and body);
//! - `lease_id`, `locked_until`: while the first request runs, who runs it
//!   and until when its claim holds unless renewed; both NULL once done;
//! - `status`, `response`: NULL while in flight; then the response's status
//!   and its sealed (encrypted) form, base64 text. This module never sees
//!   a response in the clear;
//! - `created_at`, `expires_at`: when the entry was claimed and when it is
//!   forgotten ([`purge_expired`] deletes it; until then an expired entry
//!   is claimed anew by the next request with its key).
//!
//! Every statement is one SQL text for both stores, like the projections';
//! claiming is atomic in both: SQLite runs it in a `BEGIN IMMEDIATE`
//! transaction, PostgreSQL decides between concurrent inserts of one key
//! through the primary key. Writes here do not take the projections'
//! writer turn (`Views::write_unqueued`): an idempotent request never
//! queues behind projection batches, and never holds up the `auth`
//! projection (revocations) for longer than its own short transaction.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use spool_schemas::TenantId;
use sqlx::Row;

use crate::views::Views;
use crate::{Error, Result};

const TABLE: &str = "spool_idempotency";

const CREATE: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS spool_idempotency (
        tenant          TEXT NOT NULL,
        principal       TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fingerprint     TEXT NOT NULL,
        lease_id        TEXT,
        locked_until    BIGINT,
        status          BIGINT,
        response        TEXT,
        created_at      BIGINT NOT NULL,
        expires_at      BIGINT NOT NULL,
        PRIMARY KEY (tenant, principal, idempotency_key)
    )",
    "CREATE INDEX IF NOT EXISTS spool_idempotency_by_expiry ON spool_idempotency (expires_at)",
];

/// Which entry: a caller's key within its tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryKey {
    pub tenant: TenantId,
    /// Who called within the tenant (an API key's or OAuth client's id).
    pub principal: String,
    pub idempotency_key: String,
}

/// A request that wants to run under an entry.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub entry: &'a EntryKey,
    pub fingerprint: &'a str,
    /// Names this claim, so that only its holder completes, renews or
    /// releases the entry, not a request whose lease lapsed.
    pub lease_id: &'a str,
    pub now: DateTime<Utc>,
    /// Until when the claim holds unless renewed.
    pub locked_until: DateTime<Utc>,
    /// When the entry is forgotten.
    pub expires_at: DateTime<Utc>,
}

/// What [`begin`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begun {
    /// The claim holds the entry: it was new, had expired, or was left in
    /// flight by a request whose lease lapsed (with the same fingerprint).
    /// Its holder must [`complete`] or [`release`] it.
    Claimed,
    /// Another request holds the entry and has not finished.
    InFlight { fingerprint: String },
    /// A request finished under the entry.
    Completed(StoredResponse),
}

/// A finished request's response, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub fingerprint: String,
    pub status: u16,
    /// The sealed response, as the API gave it to [`complete`].
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("sealed_bytes", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

/// Creates the table if it is missing; [`Views::open`] calls it.
pub(crate) async fn create(views: &Views) -> Result<()> {
    for statement in CREATE {
        sqlx::query(statement).execute(views.pool()).await?;
    }
    Ok(())
}

/// Claims `claim.entry`, or says who holds it: atomically, so of several
/// requests racing for one key on any number of instances exactly one is
/// [`Begun::Claimed`].
pub async fn begin(views: &Views, claim: &Claim<'_>) -> Result<Begun> {
    let mut write = views.write_unqueued().await?;
    let connection = &mut *write;
    let entry = claim.entry;
    // A release between our statements (PostgreSQL reads committed rows
    // per statement) can delete the row we collided with; then try again.
    for _ in 0..3 {
        let inserted = sqlx::query(
            "INSERT INTO spool_idempotency (tenant, principal, idempotency_key, fingerprint, \
             lease_id, locked_until, status, response, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8) \
             ON CONFLICT (tenant, principal, idempotency_key) DO NOTHING",
        )
        .bind(entry.tenant.to_string())
        .bind(&entry.principal)
        .bind(&entry.idempotency_key)
        .bind(claim.fingerprint)
        .bind(claim.lease_id)
        .bind(claim.locked_until.timestamp_millis())
        .bind(claim.now.timestamp_millis())
        .bind(claim.expires_at.timestamp_millis())
        .execute(&mut *connection)
        .await?;
        if inserted.rows_affected() == 1 {
            write.commit().await?;
            return Ok(Begun::Claimed);
        }
        // Taken over: an expired entry whatever it held, or a lapsed
        // lease of the same request (a different request under the key
        // is refused as such, lease or not).
        let taken = sqlx::query(
            "UPDATE spool_idempotency SET fingerprint = $4, lease_id = $5, locked_until = $6, \
             status = NULL, response = NULL, created_at = $7, expires_at = $8 \
             WHERE tenant = $1 AND principal = $2 AND idempotency_key = $3 \
             AND (expires_at <= $7 OR (status IS NULL AND locked_until <= $7 AND fingerprint = $4))",
        )
        .bind(entry.tenant.to_string())
        .bind(&entry.principal)
        .bind(&entry.idempotency_key)
        .bind(claim.fingerprint)
        .bind(claim.lease_id)
        .bind(claim.locked_until.timestamp_millis())
        .bind(claim.now.timestamp_millis())
        .bind(claim.expires_at.timestamp_millis())
        .execute(&mut *connection)
        .await?;
        if taken.rows_affected() == 1 {
            write.commit().await?;
            return Ok(Begun::Claimed);
        }
        let row = sqlx::query(
            "SELECT fingerprint, status, response FROM spool_idempotency \
             WHERE tenant = $1 AND principal = $2 AND idempotency_key = $3",
        )
        .bind(entry.tenant.to_string())
        .bind(&entry.principal)
        .bind(&entry.idempotency_key)
        .fetch_optional(&mut *connection)
        .await?;
        let Some(row) = row else { continue };
        let fingerprint: String = row.try_get(0)?;
        let status: Option<i64> = row.try_get(1)?;
        let response: Option<String> = row.try_get(2)?;
        write.commit().await?;
        return match (status, response) {
            (Some(status), Some(response)) => Ok(Begun::Completed(StoredResponse {
                fingerprint,
                status: u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?,
                sealed: BASE64
                    .decode(response)
                    .map_err(|error| corrupt(format!("response: {error}")))?,
            })),
            _ => Ok(Begun::InFlight { fingerprint }),
        };
    }
    Err(Error::Invalid(format!(
        "idempotency key {:?} kept changing hands while it was being claimed",
        entry.idempotency_key
    )))
}

/// Moves the claim's lease to `locked_until`, for a request that runs
/// longer than a lease. `false`: the claim no longer holds the entry.
pub async fn renew(
    views: &Views,
    entry: &EntryKey,
    lease_id: &str,
    locked_until: DateTime<Utc>,
) -> Result<bool> {
    let mut write = views.write_unqueued().await?;
    let renewed = sqlx::query(
        "UPDATE spool_idempotency SET locked_until = $5 \
         WHERE tenant = $1 AND principal = $2 AND idempotency_key = $3 AND lease_id = $4 \
         AND status IS NULL",
    )
    .bind(entry.tenant.to_string())
    .bind(&entry.principal)
    .bind(&entry.idempotency_key)
    .bind(lease_id)
    .bind(locked_until.timestamp_millis())
    .execute(&mut *write)
    .await?;
    write.commit().await?;
    Ok(renewed.rows_affected() == 1)
}

/// Stores the finished request's response (`sealed`, as the API encrypted
/// it). `false`: the claim no longer held the entry (its lease lapsed and
/// another request took it over), so nothing was stored.
pub async fn complete(
    views: &Views,
    entry: &EntryKey,
    lease_id: &str,
    status: u16,
    sealed: &[u8],
) -> Result<bool> {
    let mut write = views.write_unqueued().await?;
    let completed = sqlx::query(
        "UPDATE spool_idempotency SET status = $5, response = $6, lease_id = NULL, \
         locked_until = NULL \
         WHERE tenant = $1 AND principal = $2 AND idempotency_key = $3 AND lease_id = $4 \
         AND status IS NULL",
    )
    .bind(entry.tenant.to_string())
    .bind(&entry.principal)
    .bind(&entry.idempotency_key)
    .bind(lease_id)
    .bind(i64::from(status))
    .bind(BASE64.encode(sealed))
    .execute(&mut *write)
    .await?;
    write.commit().await?;
    Ok(completed.rows_affected() == 1)
}

/// Forgets an entry the claim holds, so that the next request with its key
/// runs afresh (after a response that is not kept, such as a `5xx`).
/// `false`: the claim no longer held it.
pub async fn release(views: &Views, entry: &EntryKey, lease_id: &str) -> Result<bool> {
    let mut write = views.write_unqueued().await?;
    let released = sqlx::query(
        "DELETE FROM spool_idempotency \
         WHERE tenant = $1 AND principal = $2 AND idempotency_key = $3 AND lease_id = $4 \
         AND status IS NULL",
    )
    .bind(entry.tenant.to_string())
    .bind(&entry.principal)
    .bind(&entry.idempotency_key)
    .bind(lease_id)
    .execute(&mut *write)
    .await?;
    write.commit().await?;
    Ok(released.rows_affected() == 1)
}

/// Deletes every entry that expired at or before `now`; returns how many.
pub async fn purge_expired(views: &Views, now: DateTime<Utc>) -> Result<u64> {
    let mut write = views.write_unqueued().await?;
    let purged = sqlx::query("DELETE FROM spool_idempotency WHERE expires_at <= $1")
        .bind(now.timestamp_millis())
        .execute(&mut *write)
        .await?;
    write.commit().await?;
    Ok(purged.rows_affected())
}

fn corrupt(message: String) -> Error {
    Error::Corrupt { table: TABLE, message }
}
