//! Rate-limit tiers and per-key limits, folded from `ratelimit.tier_set`,
//! `ratelimit.key_assigned` and `ratelimit.key_limit_set`, for the API's
//! limiter and its admin routes.
//!
//! Tables (stable within version 1), times as RFC 3339 UTC text (the
//! event's `recorded_at`, microseconds):
//! - `rate_limit_tiers`: `tenant` TEXT (`ten_…`), `tier` TEXT, `requests`,
//!   `window_seconds`, `burst` (BIGINT), `updated_at`; primary key
//!   `(tenant, tier)`. A tenant without a `default` row follows the
//!   server's built-in default.
//! - `rate_limit_keys`: `tenant`, `key_id` TEXT (`key_…`), `tier` TEXT (the
//!   tier the key follows; NULL when it has a limit of its own),
//!   `requests`, `window_seconds`, `burst` (its own limit; NULL when it
//!   follows a tier), `updated_at`; primary key `(tenant, key_id)`. A key
//!   without a row follows its tenant's `default` tier.
//!
//! Order: each event replaces its stream's row (`ratelimit/tier/<tier>` or
//! `ratelimit/key/<key_id>`), and a key's row names its tier without
//! reading it (the tier is looked up when limits are read), so nothing
//! depends on the order across streams or partitions. Rows are keyed by
//! the event's tenant too, so an event of one tenant can never change
//! another tenant's limits, whatever key id it names.

use chrono::{DateTime, SecondsFormat, Utc};
use spool_log::StoredEvent;
use spool_schemas::{
    Event, KeyId, Payload, RateLimit, RateLimitKeyAssigned, RateLimitKeyLimitSet, RateLimitTierSet,
    TenantId, TierName,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::views::{Connection, Views};
use crate::{Error, Projection, Result, Table, Tables};

pub const NAME: &str = "rate_limits";
const TIERS: &str = "rate_limit_tiers";
const KEYS: &str = "rate_limit_keys";

static TABLES: [Table; 2] = [
    Table {
        name: TIERS,
        create: &["CREATE TABLE {table} (
            tenant         TEXT NOT NULL,
            tier           TEXT NOT NULL,
            requests       BIGINT NOT NULL,
            window_seconds BIGINT NOT NULL,
            burst          BIGINT NOT NULL,
            updated_at     TEXT NOT NULL,
            PRIMARY KEY (tenant, tier)
        )"],
    },
    Table {
        name: KEYS,
        create: &["CREATE TABLE {table} (
            tenant         TEXT NOT NULL,
            key_id         TEXT NOT NULL,
            tier           TEXT,
            requests       BIGINT,
            window_seconds BIGINT,
            burst          BIGINT,
            updated_at     TEXT NOT NULL,
            PRIMARY KEY (tenant, key_id)
        )"],
    },
];

/// The projection.
#[derive(Debug, Default)]
pub struct RateLimits;

#[async_trait::async_trait]
impl Projection for RateLimits {
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
        Some(&[RateLimitTierSet::TYPE, RateLimitKeyAssigned::TYPE, RateLimitKeyLimitSet::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()> {
        for event in events {
            if ![RateLimitTierSet::TYPE, RateLimitKeyAssigned::TYPE, RateLimitKeyLimitSet::TYPE]
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
    let updated_at = event.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let tenant = event.tenant.to_string();
    match decoded {
        Event::RateLimitTierSet(RateLimitTierSet { tier, limit }) => {
            let table = tables.get(TIERS);
            sqlx::query(&format!(
                "INSERT INTO {table} (tenant, tier, requests, window_seconds, burst, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, tier) DO UPDATE SET \
                 requests = excluded.requests, window_seconds = excluded.window_seconds, \
                 burst = excluded.burst, updated_at = excluded.updated_at"
            ))
            .bind(tenant)
            .bind(tier.as_str().to_owned())
            .bind(i64::from(limit.requests()))
            .bind(i64::from(limit.window_seconds()))
            .bind(i64::from(limit.burst()))
            .bind(updated_at)
            .execute(connection)
            .await?;
        }
        Event::RateLimitKeyAssigned(RateLimitKeyAssigned { key_id, tier }) => {
            upsert_key(
                connection,
                tables,
                [tenant, key_id.to_string(), updated_at],
                Some(tier),
                None,
            )
            .await?;
        }
        Event::RateLimitKeyLimitSet(RateLimitKeyLimitSet { key_id, limit }) => {
            upsert_key(
                connection,
                tables,
                [tenant, key_id.to_string(), updated_at],
                None,
                Some(limit),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Replaces a key's row: a tier, or a limit of its own.
async fn upsert_key(
    connection: &mut Connection,
    tables: Tables,
    [tenant, key_id, updated_at]: [String; 3],
    tier: Option<TierName>,
    limit: Option<RateLimit>,
) -> Result<()> {
    let table = tables.get(KEYS);
    sqlx::query(&format!(
        "INSERT INTO {table} (tenant, key_id, tier, requests, window_seconds, burst, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, key_id) DO UPDATE SET \
         tier = excluded.tier, requests = excluded.requests, \
         window_seconds = excluded.window_seconds, burst = excluded.burst, \
         updated_at = excluded.updated_at"
    ))
    .bind(tenant)
    .bind(key_id)
    .bind(tier.map(|tier| tier.as_str().to_owned()))
    .bind(limit.map(|limit| i64::from(limit.requests())))
    .bind(limit.map(|limit| i64::from(limit.window_seconds())))
    .bind(limit.map(|limit| i64::from(limit.burst())))
    .bind(updated_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// A tier a tenant defined.
#[derive(Clone, Debug, PartialEq)]
pub struct TierRecord {
    pub tier: TierName,
    pub limit: RateLimit,
    pub updated_at: DateTime<Utc>,
}

/// What a key's limit comes from, when an admin set one.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyLimit {
    /// The key follows this tier of its tenant.
    Tier(TierName),
    /// The key has a limit of its own.
    Custom(RateLimit),
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyLimitRecord {
    pub key_id: KeyId,
    pub limit: KeyLimit,
    pub updated_at: DateTime<Utc>,
}

/// Everything a tenant set: its tiers (by name) and its keys' limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantLimits {
    /// Sorted by tier name.
    pub tiers: Vec<TierRecord>,
    /// Sorted by key id.
    pub keys: Vec<KeyLimitRecord>,
}

const SELECT_TIERS: &str =
    "SELECT tier, requests, window_seconds, burst, updated_at FROM rate_limit_tiers";
const SELECT_KEYS: &str =
    "SELECT key_id, tier, requests, window_seconds, burst, updated_at FROM rate_limit_keys";

/// The tenant's tiers, sorted by name.
pub async fn tiers(views: &Views, tenant: TenantId) -> Result<Vec<TierRecord>> {
    let rows = sqlx::query(&format!("{SELECT_TIERS} WHERE tenant = $1"))
        .bind(tenant.to_string())
        .fetch_all(views.pool())
        .await?;
    let mut tiers = rows.iter().map(tier_record).collect::<Result<Vec<_>>>()?;
    // Sorted here, not by SQL: PostgreSQL would order text by its collation.
    tiers.sort_by(|a, b| a.tier.cmp(&b.tier));
    Ok(tiers)
}

/// The limit an admin set for one of the tenant's keys, if any.
pub async fn key_limit(
    views: &Views,
    tenant: TenantId,
    key_id: KeyId,
) -> Result<Option<KeyLimitRecord>> {
    let row = sqlx::query(&format!("{SELECT_KEYS} WHERE tenant = $1 AND key_id = $2"))
        .bind(tenant.to_string())
        .bind(key_id.to_string())
        .fetch_optional(views.pool())
        .await?;
    row.as_ref().map(key_limit_record).transpose()
}

/// Everything the tenant set, in two queries: what the API's limiter
/// caches per tenant.
pub async fn tenant_limits(views: &Views, tenant: TenantId) -> Result<TenantLimits> {
    let rows = sqlx::query(&format!("{SELECT_KEYS} WHERE tenant = $1"))
        .bind(tenant.to_string())
        .fetch_all(views.pool())
        .await?;
    let mut keys = rows.iter().map(key_limit_record).collect::<Result<Vec<_>>>()?;
    keys.sort_by_key(|key| key.key_id);
    Ok(TenantLimits { tiers: tiers(views, tenant).await?, keys })
}

fn tier_record(row: &AnyRow) -> Result<TierRecord> {
    Ok(TierRecord {
        tier: parse(TIERS, &row.try_get::<String, _>(0)?)?,
        limit: limit(TIERS, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?)?,
        updated_at: parse(TIERS, &row.try_get::<String, _>(4)?)?,
    })
}

fn key_limit_record(row: &AnyRow) -> Result<KeyLimitRecord> {
    let tier: Option<String> = row.try_get(1)?;
    let own: (Option<i64>, Option<i64>, Option<i64>) =
        (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
    let limit = match (tier, own) {
        (Some(tier), (None, None, None)) => KeyLimit::Tier(parse(KEYS, &tier)?),
        (None, (Some(requests), Some(window), Some(burst))) => {
            KeyLimit::Custom(limit(KEYS, requests, window, burst)?)
        }
        (tier, own) => {
            return Err(Error::Corrupt {
                table: KEYS,
                message: format!("a key row needs a tier or a limit, not {tier:?} and {own:?}"),
            });
        }
    };
    Ok(KeyLimitRecord {
        key_id: parse(KEYS, &row.try_get::<String, _>(0)?)?,
        limit,
        updated_at: parse(KEYS, &row.try_get::<String, _>(5)?)?,
    })
}

fn limit(table: &'static str, requests: i64, window: i64, burst: i64) -> Result<RateLimit> {
    let number = |n: i64| u32::try_from(n).unwrap_or(0);
    RateLimit::new(number(requests), number(window), number(burst))
        .map_err(|error| Error::Corrupt { table, message: error.to_string() })
}

fn parse<T: std::str::FromStr>(table: &'static str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error: T::Err| Error::Corrupt { table, message: format!("{text:?}: {error}") })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spool_log::{Append, Log, MemoryLog, NewEvent};
    use spool_schemas::{key_limit_stream, tier_stream};

    use super::*;

    fn limit(requests: u32, window_seconds: u32, burst: u32) -> RateLimit {
        RateLimit::new(requests, window_seconds, burst).unwrap()
    }

    fn tier_set(tenant: TenantId, tier: &str, limit: RateLimit) -> NewEvent {
        let tier = TierName::new(tier).unwrap();
        NewEvent::new(
            tenant,
            tier_stream(&tier),
            Event::RateLimitTierSet(RateLimitTierSet { tier, limit }),
        )
    }

    fn assigned(tenant: TenantId, key_id: KeyId, tier: &str) -> NewEvent {
        let tier = TierName::new(tier).unwrap();
        NewEvent::new(
            tenant,
            key_limit_stream(key_id),
            Event::RateLimitKeyAssigned(RateLimitKeyAssigned { key_id, tier }),
        )
    }

    fn own_limit(tenant: TenantId, key_id: KeyId, limit: RateLimit) -> NewEvent {
        NewEvent::new(
            tenant,
            key_limit_stream(key_id),
            Event::RateLimitKeyLimitSet(RateLimitKeyLimitSet { key_id, limit }),
        )
    }

    #[tokio::test]
    async fn the_last_word_per_tier_and_key_wins_and_stays_within_its_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let views = Views::open(dir.path().join("views.db")).await.unwrap();
        let log: Arc<dyn Log> = Arc::new(MemoryLog::with_partitions(4));
        let (a, b) = (TenantId::new(), TenantId::new());
        let (first, second) = (KeyId::new(), KeyId::new());
        for event in [
            tier_set(a, "gold", limit(10, 1, 10)),
            assigned(a, first, "gold"),
            assigned(a, second, "gold"),
            tier_set(a, "gold", limit(20, 1, 5)),
            tier_set(a, "default", limit(3, 1, 3)),
            own_limit(a, first, limit(1, 60, 1)),
            // Another tenant naming tenant A's key changes only its own rows.
            own_limit(b, second, limit(99, 1, 99)),
        ] {
            log.append(Append::new(vec![event])).await.unwrap();
        }
        crate::rebuild(log, &views, Arc::new(RateLimits), |_| {}).await.unwrap();

        let of_a = tenant_limits(&views, a).await.unwrap();
        let tiers: Vec<_> = of_a.tiers.iter().map(|t| (t.tier.as_str(), t.limit)).collect();
        assert_eq!(tiers, [("default", limit(3, 1, 3)), ("gold", limit(20, 1, 5))]);
        let mut keys: Vec<_> = of_a.keys.iter().map(|k| (k.key_id, k.limit.clone())).collect();
        keys.sort_by_key(|(key_id, _)| *key_id);
        let mut expected = vec![
            (first, KeyLimit::Custom(limit(1, 60, 1))),
            (second, KeyLimit::Tier(TierName::new("gold").unwrap())),
        ];
        expected.sort_by_key(|(key_id, _)| *key_id);
        assert_eq!(keys, expected);

        let of_b = tenant_limits(&views, b).await.unwrap();
        assert!(of_b.tiers.is_empty());
        assert_eq!(of_b.keys.len(), 1);
        assert_eq!(of_b.keys[0].limit, KeyLimit::Custom(limit(99, 1, 99)));
        assert_eq!(key_limit(&views, b, first).await.unwrap(), None);
    }
}
