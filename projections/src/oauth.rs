//! The OAuth 2.0 state the API needs, folded from the `oauth.*` events:
//! clients, the public signing keys of every server instance, and revoked
//! access tokens.
//!
//! Tables (stable within version 1). `created_at` and `published_at` are
//! RFC 3339 UTC text (the event's `recorded_at`); the instants compared in
//! queries are BIGINT Unix seconds, since PostgreSQL compares text by
//! collation:
//! - `oauth_clients`: `client_id` TEXT primary key (`client_…`), `tenant`
//!   (`ten_…`; a sandbox twin for test-mode clients), `name`, `secret_hash`
//!   (lowercase hex SHA-256 of the secret), `scopes` (space separated),
//!   `deleted` (0/1), `created_at`.
//! - `oauth_signing_keys`: `kid` TEXT primary key (`kid_…`), the public JWK
//!   as `kty`, `crv`, `alg`, `x` (base64url), `signs_until` and
//!   `verify_until` (Unix seconds; the key verifies tokens until
//!   `verify_until`), `published_at`. Never a private key: those stay in
//!   the memory of the instance that made them. Only keys the system
//!   tenant published: any other tenant's are passed over.
//! - `oauth_revoked_tokens`: `jti` TEXT primary key (`tok_…`), `tenant`,
//!   `exp` (Unix seconds, the token's own expiry), `revoked_at`. Never the
//!   token's text.
//!
//! Order: a client's `oauth.client_deleted` comes after its
//! `oauth.client_created`, both in the client's stream (`oauth/<client_id>`),
//! so in one partition, in order. Signing keys and revocations are rows of
//! their own that depend on no other row (a revocation repeated is stored
//! once), so the interleaving of partitions changes nothing.

use chrono::{DateTime, SecondsFormat, Utc};
use spool_log::StoredEvent;
use spool_schemas::{
    ClientId, Event, OAuthClientCreated, OAuthClientDeleted, OAuthSigningKeyPublished,
    OAuthTokenRevoked, Payload, PublicJwk, Scope, SigningKeyId, TenantId, TokenId,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::views::{Connection, Views};
use crate::{Error, Projection, Result, Table, Tables};

pub const NAME: &str = "oauth";
const CLIENTS: &str = "oauth_clients";
const SIGNING_KEYS: &str = "oauth_signing_keys";
const REVOKED_TOKENS: &str = "oauth_revoked_tokens";

/// The event types this projection decodes; every other one is passed over
/// by its type name alone.
const TYPES: [&str; 4] = [
    OAuthClientCreated::TYPE,
    OAuthClientDeleted::TYPE,
    OAuthSigningKeyPublished::TYPE,
    OAuthTokenRevoked::TYPE,
];

static TABLES: [Table; 3] = [
    Table {
        name: CLIENTS,
        create: &[
            "CREATE TABLE {table} (
                client_id   TEXT PRIMARY KEY,
                tenant      TEXT NOT NULL,
                name        TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                scopes      TEXT NOT NULL,
                deleted     BIGINT NOT NULL,
                created_at  TEXT NOT NULL
            )",
            "CREATE INDEX {table}_by_tenant ON {table} (tenant)",
        ],
    },
    Table {
        name: SIGNING_KEYS,
        create: &[
            "CREATE TABLE {table} (
                kid          TEXT PRIMARY KEY,
                kty          TEXT NOT NULL,
                crv          TEXT NOT NULL,
                alg          TEXT NOT NULL,
                x            TEXT NOT NULL,
                signs_until  BIGINT NOT NULL,
                verify_until BIGINT NOT NULL,
                published_at TEXT NOT NULL
            )",
            "CREATE INDEX {table}_by_verify_until ON {table} (verify_until)",
        ],
    },
    Table {
        name: REVOKED_TOKENS,
        create: &["CREATE TABLE {table} (
            jti        TEXT PRIMARY KEY,
            tenant     TEXT NOT NULL,
            exp        BIGINT NOT NULL,
            revoked_at TEXT NOT NULL
        )"],
    },
];

/// The projection.
#[derive(Debug, Default)]
pub struct OAuth;

#[async_trait::async_trait]
impl Projection for OAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [Table] {
        &TABLES
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&[
            OAuthClientCreated::TYPE,
            OAuthClientDeleted::TYPE,
            OAuthSigningKeyPublished::TYPE,
            OAuthTokenRevoked::TYPE,
        ])
    }

    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        for event in events {
            if !TYPES.contains(&event.type_name.as_str()) {
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
    let recorded_at = text_time(event.recorded_at);
    match decoded {
        Event::OAuthClientCreated(client) => {
            sqlx::query(&format!(
                "INSERT INTO {} (client_id, tenant, name, secret_hash, scopes, deleted, \
                 created_at) VALUES ($1, $2, $3, $4, $5, 0, $6)",
                tables.get(CLIENTS)
            ))
            .bind(client.client_id.to_string())
            .bind(event.tenant.to_string())
            .bind(client.name)
            .bind(client.secret_hash)
            .bind(scopes_text(&client.scopes))
            .bind(recorded_at)
            .execute(connection)
            .await?;
        }
        Event::OAuthClientDeleted(OAuthClientDeleted { client_id }) => {
            let deleted = sqlx::query(&format!(
                "UPDATE {} SET deleted = 1 WHERE client_id = $1 AND tenant = $2",
                tables.get(CLIENTS)
            ))
            .bind(client_id.to_string())
            .bind(event.tenant.to_string())
            .execute(connection)
            .await?;
            if deleted.rows_affected() == 0 {
                return Err(Error::apply(
                    NAME,
                    event,
                    format!("deletes {client_id}, which tenant {} has no client", event.tenant),
                ));
            }
        }
        // Only Spool's token service (the system tenant) publishes signing
        // keys. An app cannot write this type anyway (`oauth.` is a
        // reserved namespace), so this is a second wall: a key from any
        // other tenant is passed over, not an error, since failing would
        // stop every token check on every instance for one stray event.
        // No log Spool wrote holds such an event, so the rows (and the
        // projection's version) stay as they were.
        Event::OAuthSigningKeyPublished(_) if event.tenant != TenantId::SYSTEM => {
            tracing::warn!(
                tenant = %event.tenant,
                partition = event.partition,
                position = %event.position,
                "a signing key published by a tenant other than the system tenant is ignored"
            );
        }
        Event::OAuthSigningKeyPublished(key) => {
            sqlx::query(&format!(
                "INSERT INTO {} (kid, kty, crv, alg, x, signs_until, verify_until, \
                 published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                tables.get(SIGNING_KEYS)
            ))
            .bind(key.kid.to_string())
            .bind(key.jwk.kty)
            .bind(key.jwk.crv)
            .bind(key.jwk.alg)
            .bind(key.jwk.x)
            .bind(seconds_up(key.signs_until))
            .bind(seconds_up(key.verify_until))
            .bind(recorded_at)
            .execute(connection)
            .await?;
        }
        Event::OAuthTokenRevoked(OAuthTokenRevoked { jti, exp }) => {
            // Revoking twice (two requests racing, or a retry) is one row.
            sqlx::query(&format!(
                "INSERT INTO {} (jti, tenant, exp, revoked_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (jti) DO NOTHING",
                tables.get(REVOKED_TOKENS)
            ))
            .bind(jti.to_string())
            .bind(event.tenant.to_string())
            .bind(exp.timestamp())
            .bind(recorded_at)
            .execute(connection)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// A client, deleted or not.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRecord {
    pub client_id: ClientId,
    pub tenant: TenantId,
    pub name: String,
    /// Lowercase hex SHA-256 of the secret, for the API to compare with.
    pub secret_hash: String,
    pub scopes: Vec<Scope>,
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
}

/// A published public signing key.
#[derive(Clone, Debug, PartialEq)]
pub struct SigningKeyRecord {
    pub kid: SigningKeyId,
    pub jwk: PublicJwk,
    /// Unix seconds: the key signed nothing from then on.
    pub signs_until: i64,
    /// Unix seconds: every token the key signed has expired by then.
    pub verify_until: i64,
}

const SELECT_CLIENTS_COLUMNS: &str =
    "SELECT client_id, tenant, name, secret_hash, scopes, deleted, created_at";
const SELECT_CLIENTS: &str =
    "SELECT client_id, tenant, name, secret_hash, scopes, deleted, created_at FROM oauth_clients";
const SELECT_SIGNING_KEYS: &str =
    "SELECT kid, kty, crv, alg, x, signs_until, verify_until FROM oauth_signing_keys";

pub async fn client(views: &Views, client_id: ClientId) -> Result<Option<ClientRecord>> {
    let row = sqlx::query(&format!("{SELECT_CLIENTS} WHERE client_id = $1"))
        .bind(client_id.to_string())
        .fetch_optional(views.pool())
        .await?;
    row.as_ref().map(client_record).transpose()
}

/// The clients of one tenant that are not deleted, oldest first.
pub async fn clients(views: &Views, tenant: TenantId) -> Result<Vec<ClientRecord>> {
    let rows = sqlx::query(&format!("{SELECT_CLIENTS} WHERE tenant = $1 AND deleted = 0"))
        .bind(tenant.to_string())
        .fetch_all(views.pool())
        .await?;
    let mut clients = rows.iter().map(client_record).collect::<Result<Vec<_>>>()?;
    // Sorted here, not by SQL: PostgreSQL would order text by its collation.
    clients.sort_by(|a, b| {
        (a.created_at, a.client_id.to_string()).cmp(&(b.created_at, b.client_id.to_string()))
    });
    Ok(clients)
}

pub async fn signing_key(views: &Views, kid: SigningKeyId) -> Result<Option<SigningKeyRecord>> {
    let row = sqlx::query(&format!("{SELECT_SIGNING_KEYS} WHERE kid = $1"))
        .bind(kid.to_string())
        .fetch_optional(views.pool())
        .await?;
    row.as_ref().map(signing_key_record).transpose()
}

/// The keys that may still verify a token at `now` (`verify_until` after
/// it), by `kid`. The caller passes the time: this crate reads no clock.
pub async fn signing_keys(views: &Views, now: DateTime<Utc>) -> Result<Vec<SigningKeyRecord>> {
    let rows = sqlx::query(&format!("{SELECT_SIGNING_KEYS} WHERE verify_until > $1"))
        .bind(now.timestamp())
        .fetch_all(views.pool())
        .await?;
    let mut keys = rows.iter().map(signing_key_record).collect::<Result<Vec<_>>>()?;
    keys.sort_by_key(|key| key.kid);
    Ok(keys)
}

/// What decides whether an access token still stands, read in one query:
/// its client (deleted or not) and whether the token was revoked.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStanding {
    pub client: ClientRecord,
    pub revoked: bool,
}

/// The client `client_id` and whether the token `jti` was revoked; `None`
/// when there is no such client.
pub async fn token_standing(
    views: &Views,
    client_id: ClientId,
    jti: TokenId,
) -> Result<Option<TokenStanding>> {
    let row = sqlx::query(&format!(
        "{SELECT_CLIENTS_COLUMNS}, (SELECT COUNT(*) FROM oauth_revoked_tokens WHERE jti = $2) \
         FROM oauth_clients WHERE client_id = $1"
    ))
    .bind(client_id.to_string())
    .bind(jti.to_string())
    .fetch_optional(views.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(TokenStanding { client: client_record(&row)?, revoked: row.try_get::<i64, _>(7)? > 0 }))
}

/// Whether the token `jti` was revoked.
pub async fn token_revoked(views: &Views, jti: TokenId) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM oauth_revoked_tokens WHERE jti = $1")
        .bind(jti.to_string())
        .fetch_optional(views.pool())
        .await?;
    Ok(row.is_some())
}

fn client_record(row: &AnyRow) -> Result<ClientRecord> {
    let scopes: String = row.try_get(4)?;
    Ok(ClientRecord {
        client_id: parse(CLIENTS, &row.try_get::<String, _>(0)?)?,
        tenant: parse(CLIENTS, &row.try_get::<String, _>(1)?)?,
        name: row.try_get(2)?,
        secret_hash: row.try_get(3)?,
        scopes: scopes
            .split_whitespace()
            .map(|scope| parse(CLIENTS, scope))
            .collect::<Result<_>>()?,
        deleted: row.try_get::<i64, _>(5)? != 0,
        created_at: parse(CLIENTS, &row.try_get::<String, _>(6)?)?,
    })
}

fn signing_key_record(row: &AnyRow) -> Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: parse(SIGNING_KEYS, &row.try_get::<String, _>(0)?)?,
        jwk: PublicJwk {
            kty: row.try_get(1)?,
            crv: row.try_get(2)?,
            alg: row.try_get(3)?,
            x: row.try_get(4)?,
        },
        signs_until: row.try_get(5)?,
        verify_until: row.try_get(6)?,
    })
}

fn parse<T: std::str::FromStr>(table: &'static str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error: T::Err| Error::Corrupt { table, message: format!("{text:?}: {error}") })
}

fn text_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whole Unix seconds, rounded up: a key is kept at least as long as its
/// event says.
fn seconds_up(time: DateTime<Utc>) -> i64 {
    let seconds = time.timestamp();
    if time.timestamp_subsec_nanos() > 0 { seconds + 1 } else { seconds }
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" ")
}
