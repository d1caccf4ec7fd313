//! The auth state the API needs, folded from `tenant.created`,
//! `key.created` and `key.revoked`.
//!
//! Tables (stable within version 1), times as RFC 3339 UTC text:
//! - `auth_tenants`: `tenant` TEXT primary key (`ten_…`), `name`,
//!   `created_at` (the event's `recorded_at`, microseconds).
//! - `auth_keys`: `key_id` TEXT primary key (`key_…`), `tenant`, `name`,
//!   `secret_hash` (unique, lowercase hex SHA-256), `scopes` (space
//!   separated), `expires_at` (NULL: never), `revoked` (0/1), `created_at`.
//!
//! Only these three event types are decoded; every other event is passed
//! over by its type name alone.
//!
//! Order: the fold relies on one order only, a key's `key.revoked` after
//! its `key.created`, and both live in the key's stream (`key/<key_id>`,
//! see `spool_api::commands`), so in one partition, in order. Tenants and
//! keys are separate rows (a key's row does not need its tenant's), so the
//! interleaving of partitions changes nothing. A log that broke this (a
//! revocation in another stream than its creation) could fail the fold in
//! one interleaving and not another; a second key with an existing secret
//! hash fails in every interleaving, at whichever of the twins comes second.

use chrono::{DateTime, SecondsFormat, Utc};
use spool_log::StoredEvent;
use spool_schemas::{
    Event, KeyCreated, KeyId, KeyRevoked, Payload, Scope, TenantCreated, TenantId,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::views::{Connection, Views};
use crate::{Error, Projection, Result, Table, Tables};

pub const NAME: &str = "auth";
const TENANTS: &str = "auth_tenants";
const KEYS: &str = "auth_keys";

static TABLES: [Table; 2] = [
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
                secret_hash TEXT NOT NULL,
                scopes      TEXT NOT NULL,
                expires_at  TEXT,
                revoked     BIGINT NOT NULL,
                created_at  TEXT NOT NULL
            )",
            "CREATE UNIQUE INDEX {table}_by_secret_hash ON {table} (secret_hash)",
            "CREATE INDEX {table}_by_tenant ON {table} (tenant)",
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
        1
    }

    fn tables(&self) -> &'static [Table] {
        &TABLES
    }

    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        for event in events {
            if ![TenantCreated::TYPE, KeyCreated::TYPE, KeyRevoked::TYPE]
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
                "INSERT INTO {} (key_id, tenant, name, secret_hash, scopes, expires_at, \
                 revoked, created_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
                tables.get(KEYS)
            ))
            .bind(key.key_id.to_string())
            .bind(event.tenant.to_string())
            .bind(key.name)
            .bind(key.secret_hash)
            .bind(scopes_text(&key.scopes))
            .bind(key.expires_at.map(|expiry| expiry.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
            .bind(created_at)
            .execute(connection)
            .await?;
        }
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
        Event::ApiCall(_) | Event::App(_) => {}
    }
    Ok(())
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

#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub tenant: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

const SELECT_KEYS: &str =
    "SELECT key_id, tenant, name, scopes, expires_at, revoked, created_at FROM auth_keys";
const SELECT_TENANTS: &str = "SELECT tenant, name, created_at FROM auth_tenants";

/// The key whose secret hashes to `secret_hash` (lowercase hex SHA-256),
/// revoked or not.
pub async fn key_by_secret_hash(views: &Views, secret_hash: &str) -> Result<Option<KeyRecord>> {
    let row = sqlx::query(&format!("{SELECT_KEYS} WHERE secret_hash = $1"))
        .bind(secret_hash)
        .fetch_optional(views.pool())
        .await?;
    row.as_ref().map(key_record).transpose()
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

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" ")
}
