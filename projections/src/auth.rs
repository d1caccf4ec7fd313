//! The auth state the API needs, folded from `tenant.created`,
//! `key.created`, `key.rolled` and `key.revoked`.
//!
//! Tables (stable within version 2), times as RFC 3339 UTC text:
//! - `auth_tenants`: `tenant` TEXT primary key (`ten_…`), `name`,
//!   `created_at` (the event's `recorded_at`, microseconds).
//! - `auth_keys`: `key_id` TEXT primary key (`key_…`), `tenant` (a test-mode
//!   key's is its tenant's sandbox twin), `name`, `scopes` (space
//!   separated), `expires_at` (NULL: never), `revoked` (0/1), `created_at`.
//! - `auth_key_secrets`: `secret_hash` TEXT primary key (lowercase hex
//!   SHA-256 of a key's text), `key_id`, `expires_at` (NULL: as long as the
//!   key; else fixed-width nanoseconds, so text order is time order),
//!   `created_at`. A key has one secret, plus those a roll left in their
//!   grace period (or past it).
//!
//! Version 1 kept one `secret_hash` in `auth_keys`; version 2 moved it to
//! `auth_key_secrets` for rolled keys.
//!
//! Only these four event types are decoded; every other event is passed
//! over by its type name alone.
//!
//! Order: the fold relies on one order only, a key's `key.rolled` and
//! `key.revoked` after its `key.created` and rolls in their order, and all
//! live in the key's stream (`key/<key_id>`, see `spool_api::commands`), so
//! in one partition, in order. Tenants and keys are separate rows (a key's
//! row does not need its tenant's), so the interleaving of partitions
//! changes nothing. A log that broke this (a revocation in another stream
//! than its creation) could fail the fold in one interleaving and not
//! another; a second secret with an existing hash fails in every
//! interleaving, at whichever of the twins comes second.

use chrono::{DateTime, SecondsFormat, Utc};
use spool_log::StoredEvent;
use spool_schemas::{
    Event, KeyCreated, KeyId, KeyRevoked, KeyRolled, Payload, Scope, TenantCreated, TenantId,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::views::{Connection, Views};
use crate::{Error, Projection, Result, Table, Tables};

pub const NAME: &str = "auth";
const TENANTS: &str = "auth_tenants";
const KEYS: &str = "auth_keys";
const SECRETS: &str = "auth_key_secrets";

static TABLES: [Table; 3] = [
    Table {
        name: TENANTS,
        create: &["CREATE TABLE {table} (
            tenant     TEXT PRIMARY KEY,
            name       TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"],
    },
    Table {
        name: KEYS,
        create: &[
            "CREATE TABLE {table} (
                key_id      TEXT PRIMARY KEY,
                tenant      TEXT NOT NULL,
                name        TEXT NOT NULL,
                scopes      TEXT NOT NULL,
                expires_at  TEXT,
                revoked     BIGINT NOT NULL,
                created_at  TEXT NOT NULL
            )",
            "CREATE INDEX {table}_by_tenant ON {table} (tenant)",
        ],
    },
    Table {
        name: SECRETS,
        create: &[
            "CREATE TABLE {table} (
                secret_hash TEXT PRIMARY KEY,
                key_id      TEXT NOT NULL,
                expires_at  TEXT,
                created_at  TEXT NOT NULL
            )",
            "CREATE INDEX {table}_by_key ON {table} (key_id)",
        ],
    },
];

/// The projection.
#[derive(Debug, Default)]
pub struct Auth;

#[async_trait::async_trait]
impl Projection for Auth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        2
    }

    fn tables(&self) -> &'static [Table] {
        &TABLES
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&[TenantCreated::TYPE, KeyCreated::TYPE, KeyRolled::TYPE, KeyRevoked::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        for event in events {
            if ![TenantCreated::TYPE, KeyCreated::TYPE, KeyRolled::TYPE, KeyRevoked::TYPE]
                .contains(&event.type_name.as_str())
            {
                continue;
            }
            let failed = |message: &dyn std::fmt::Display| Error::apply(NAME, event, message);
            let decoded = event.event().map_err(|error| failed(&error))?;
            apply_one(connection, tables, event, decoded).await.map_err(|error| match error {
                Error::Sql(sql) => failed(&sql),
                other => other,
            })?;
        }
        Ok(())
    }
}

async fn apply_one(
    connection: &mut Connection,
    tables: Tables,
    event: &StoredEvent,
    decoded: Event,
) -> Result<()> {
    let created_at = text_time(event.recorded_at);
    match decoded {
        Event::TenantCreated(TenantCreated { name }) => {
            sqlx::query(&format!(
                "INSERT INTO {} (tenant, name, created_at) VALUES ($1, $2, $3)",
                tables.get(TENANTS)
            ))
            .bind(event.tenant.to_string())
            .bind(name)
            .bind(created_at)
            .execute(connection)
            .await?;
        }
        Event::KeyCreated(key) => {
            sqlx::query(&format!(
                "INSERT INTO {} (key_id, tenant, name, scopes, expires_at, revoked, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6)",
                tables.get(KEYS)
            ))
            .bind(key.key_id.to_string())
            .bind(event.tenant.to_string())
            .bind(key.name)
            .bind(scopes_text(&key.scopes))
            .bind(key.expires_at.map(|expiry| expiry.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
            .bind(&created_at)
            .execute(&mut *connection)
            .await?;
            insert_secret(connection, tables, key.key_id, &key.secret_hash, &created_at).await?;
        }
        Event::KeyRolled(rolled) => apply_roll(connection, tables, event, rolled).await?,
        Event::KeyRevoked(KeyRevoked { key_id }) => {
            let revoked = sqlx::query(&format!(
                "UPDATE {} SET revoked = 1 WHERE key_id = $1 AND tenant = $2",
                tables.get(KEYS)
            ))
            .bind(key_id.to_string())
            .bind(event.tenant.to_string())
            .execute(connection)
            .await?;
            if revoked.rows_affected() == 0 {
                return Err(Error::apply(
                    NAME,
                    event,
                    format!("revokes {key_id}, which tenant {} has no key", event.tenant),
                ));
            }
        }
        // Any event type added later is not this read model's.
        _ => {}
    }
    Ok(())
}

async fn insert_secret(
    connection: &mut Connection,
    tables: Tables,
    key_id: KeyId,
    secret_hash: &str,
    created_at: &str,
) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {} (secret_hash, key_id, expires_at, created_at) VALUES ($1, $2, NULL, $3)",
        tables.get(SECRETS)
    ))
    .bind(secret_hash)
    .bind(key_id.to_string())
    .bind(created_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Ends the key's earlier secrets at the roll's stated time (keeping an
/// earlier end one already had) and adds the new secret.
async fn apply_roll(
    connection: &mut Connection,
    tables: Tables,
    event: &StoredEvent,
    rolled: KeyRolled,
) -> Result<()> {
    let key_id = rolled.key_id.to_string();
    let owned = sqlx::query(&format!(
        "SELECT key_id FROM {} WHERE key_id = $1 AND tenant = $2",
        tables.get(KEYS)
    ))
    .bind(&key_id)
    .bind(event.tenant.to_string())
    .fetch_optional(&mut *connection)
    .await?;
    if owned.is_none() {
        return Err(Error::apply(
            NAME,
            event,
            format!("rolls {key_id}, which tenant {} has no key", event.tenant),
        ));
    }
    let ends = secret_time(rolled.previous_secrets_expire_at);
    sqlx::query(&format!(
        "UPDATE {} SET expires_at = $1 WHERE key_id = $2 AND \
         (expires_at IS NULL OR expires_at > $1)",
        tables.get(SECRETS)
    ))
    .bind(ends)
    .bind(&key_id)
    .execute(&mut *connection)
    .await?;
    insert_secret(
        connection,
        tables,
        rolled.key_id,
        &rolled.secret_hash,
        &text_time(event.recorded_at),
    )
    .await
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub tenant: TenantId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub created_at: DateTime<Utc>,
}

/// A key as found by one of its secrets: the key, and when that secret
/// stops authenticating on its own (`None`: when the key does). A key's
/// current secret has no end of its own; one replaced by a roll does.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMatch {
    pub key: KeyRecord,
    pub secret_expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub tenant: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

const KEY_COLUMNS: &str = "key_id, tenant, name, scopes, expires_at, revoked, created_at";
const SELECT_KEYS: &str =
    "SELECT key_id, tenant, name, scopes, expires_at, revoked, created_at FROM auth_keys";
const SELECT_TENANTS: &str = "SELECT tenant, name, created_at FROM auth_tenants";

/// The key one of whose secrets hashes to `secret_hash` (lowercase hex
/// SHA-256), revoked or not, with that secret's own end.
pub async fn secret_by_hash(views: &Views, secret_hash: &str) -> Result<Option<SecretMatch>> {
    let columns = KEY_COLUMNS.split(", ").map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", ");
    let row = sqlx::query(&format!(
        "SELECT {columns}, s.expires_at FROM {SECRETS} s JOIN {KEYS} k ON k.key_id = s.key_id \
         WHERE s.secret_hash = $1"
    ))
    .bind(secret_hash)
    .fetch_optional(views.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let secret_expires_at: Option<String> = row.try_get(7)?;
    Ok(Some(SecretMatch {
        key: key_record(&row)?,
        secret_expires_at: secret_expires_at.map(|text| parse(SECRETS, &text)).transpose()?,
    }))
}

/// The key one of whose secrets hashes to `secret_hash`, revoked or not.
pub async fn key_by_secret_hash(views: &Views, secret_hash: &str) -> Result<Option<KeyRecord>> {
    Ok(secret_by_hash(views, secret_hash).await?.map(|found| found.key))
}

pub async fn key(views: &Views, key_id: KeyId) -> Result<Option<KeyRecord>> {
    let row = sqlx::query(&format!("{SELECT_KEYS} WHERE key_id = $1"))
        .bind(key_id.to_string())
        .fetch_optional(views.pool())
        .await?;
    row.as_ref().map(key_record).transpose()
}

/// Every key of one tenant, revoked ones included, oldest first.
pub async fn keys(views: &Views, tenant: TenantId) -> Result<Vec<KeyRecord>> {
    let rows = sqlx::query(&format!("{SELECT_KEYS} WHERE tenant = $1"))
        .bind(tenant.to_string())
        .fetch_all(views.pool())
        .await?;
    let mut keys = rows.iter().map(key_record).collect::<Result<Vec<_>>>()?;
    // Sorted here, not by SQL: PostgreSQL would order text by its collation.
    keys.sort_by(|a, b| {
        (a.created_at, a.key_id.to_string()).cmp(&(b.created_at, b.key_id.to_string()))
    });
    Ok(keys)
}

pub async fn tenant(views: &Views, tenant: TenantId) -> Result<Option<TenantRecord>> {
    let row = sqlx::query(&format!("{SELECT_TENANTS} WHERE tenant = $1"))
        .bind(tenant.to_string())
        .fetch_optional(views.pool())
        .await?;
    row.as_ref().map(tenant_record).transpose()
}

/// Every tenant, oldest first.
pub async fn tenants(views: &Views) -> Result<Vec<TenantRecord>> {
    let rows = sqlx::query(SELECT_TENANTS).fetch_all(views.pool()).await?;
    let mut tenants = rows.iter().map(tenant_record).collect::<Result<Vec<_>>>()?;
    // Sorted here, not by SQL: PostgreSQL would order text by its collation.
    tenants.sort_by(|a, b| {
        (a.created_at, a.tenant.to_string()).cmp(&(b.created_at, b.tenant.to_string()))
    });
    Ok(tenants)
}

fn key_record(row: &AnyRow) -> Result<KeyRecord> {
    let scopes: String = row.try_get(3)?;
    let expires_at: Option<String> = row.try_get(4)?;
    Ok(KeyRecord {
        key_id: parse(KEYS, &row.try_get::<String, _>(0)?)?,
        tenant: parse(KEYS, &row.try_get::<String, _>(1)?)?,
        name: row.try_get(2)?,
        scopes: scopes.split_whitespace().map(|scope| parse(KEYS, scope)).collect::<Result<_>>()?,
        expires_at: expires_at.map(|text| parse(KEYS, &text)).transpose()?,
        revoked: row.try_get::<i64, _>(5)? != 0,
        created_at: parse(KEYS, &row.try_get::<String, _>(6)?)?,
    })
}

fn tenant_record(row: &AnyRow) -> Result<TenantRecord> {
    Ok(TenantRecord {
        tenant: parse(TENANTS, &row.try_get::<String, _>(0)?)?,
        name: row.try_get(1)?,
        created_at: parse(TENANTS, &row.try_get::<String, _>(2)?)?,
    })
}

fn parse<T: std::str::FromStr>(table: &'static str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error: T::Err| Error::Corrupt { table, message: format!("{text:?}: {error}") })
}

/// Fixed width (always six fraction digits), so that text order is time
/// order; the log keeps microseconds, so nothing is lost.
fn text_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Fixed width too, but to the nanosecond: a secret's end comes from a
/// payload, which keeps whatever precision the writer gave it.
fn secret_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" ")
}
