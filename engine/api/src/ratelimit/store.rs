//! The shared rate-limit store: GCRA in Redis, so that every instance
//! counts a key's requests against one limit.
//!
//! One Lua script decides a request atomically: it reads the key's
//! theoretical arrival time (TAT, microseconds of Redis's own clock with a
//! fraction, so instances need not agree on time), refuses when the
//! request would come more than the burst's worth of intervals early, and
//! otherwise stores the advanced TAT with an expiry at the moment the
//! bucket is full again (a key that is idle that long is indistinguishable
//! from a new one).
//!
//! Failures do not fail requests: [`Store::check`] answers `None` and the
//! caller limits in-process instead. A failed or slow call marks the store
//! down for `retry` (no request waits on it meanwhile), logs a warning once
//! and counts `spool_rate_limit_store_errors_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use spool_schemas::{KeyId, RateLimit};
use tokio::sync::OnceCell;

use super::Outcome;

/// KEYS[1]: the key's TAT. ARGV[1]: the emission interval in nanoseconds;
/// ARGV[2]: the burst. Returns `{1, remaining, µs until full}` or `{0, 0,
/// µs until the next request is allowed}`, rounded up.
///
/// Times are microseconds of Redis's clock with a fraction: Lua numbers
/// are doubles, which hold a TAT (about 1.8e15 µs) to a quarter of a
/// microsecond, while nanoseconds (1.8e18) would not fit their 53 bits.
/// The interval keeps its fraction (2.5 µs at 400,000/s): cut to whole
/// microseconds, limits above 100,000/s would be up to twice as loose.
/// TATs are written with `%.3f`: Lua would print one in exponent notation
/// otherwise.
const GCRA: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1]) / 1000
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_us)
if tat < now_us then
  tat = now_us
end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now_us then
  return {0, 0, math.ceil(allow_at - now_us)}
end
local ttl_ms = math.ceil((new_tat - now_us) / 1000)
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return {1, math.floor((now_us + tolerance - new_tat) / interval), math.ceil(new_tat - now_us)}
";

/// Where the shared store is: a Redis URL (checked when configured) and
/// the prefix of the keys Spool writes there.
#[derive(Clone)]
pub struct SharedStore {
    client: redis::Client,
    prefix: String,
    /// The URL without its password, for messages.
    shown: String,
}

/// A store URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid rate-limit store {url}: {reason}")]
pub struct StoreError {
    url: String,
    reason: String,
}

impl SharedStore {
    /// The prefix of every Redis key Spool writes (then the key id).
    pub const DEFAULT_PREFIX: &'static str = "spool:ratelimit:";

    /// A Redis at `url` (`redis://[:password@]host[:port][/db]`).
    pub fn redis(url: &str) -> Result<SharedStore, StoreError> {
        let shown = without_password(url);
        if !url.starts_with("redis://") {
            return Err(StoreError { url: shown, reason: "expected a redis:// URL".into() });
        }
        let client = redis::Client::open(url)
            .map_err(|error| StoreError { url: shown.clone(), reason: error.to_string() })?;
        Ok(SharedStore { client, prefix: SharedStore::DEFAULT_PREFIX.to_owned(), shown })
    }

    /// Keys under `prefix` instead, such as a prefix per deployment
    /// sharing one Redis (or per test).
    pub fn with_prefix(self, prefix: impl Into<String>) -> SharedStore {
        SharedStore { prefix: prefix.into(), ..self }
    }
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: shown without it.
        f.debug_struct("SharedStore")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

/// A connection to the shared store, and whether it is down.
pub(super) struct Store {
    shared: SharedStore,
    script: redis::Script,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    retry: Duration,
    /// What times are measured from: [`Instant`]s do not fit an atomic.
    started: Instant,
    /// Until when (µs after `started`) the store is left alone after a
    /// failure; 0 while it answers. Atomic: every request reads it.
    down_until: AtomicU64,
}

impl Store {
    pub(super) fn new(shared: SharedStore, timeout: Duration, retry: Duration) -> Store {
        Store {
            shared,
            script: redis::Script::new(GCRA),
            connection: OnceCell::new(),
            timeout,
            retry,
            started: Instant::now(),
            down_until: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key_id` under `limit` in Redis; `None` when
    /// the store is down, failed or took longer than the timeout.
    pub(super) async fn check(&self, key_id: KeyId, limit: RateLimit) -> Option<Outcome> {
        if self.is_down() {
            metrics::counter!("spool_rate_limit_store_fallbacks_total").increment(1);
            return None;
        }
        let called = tokio::time::timeout(self.timeout, self.call(key_id, limit)).await;
        let error = match called {
            Ok(Ok(outcome)) => {
                self.up();
                return Some(outcome);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.down(&error);
        metrics::counter!("spool_rate_limit_store_fallbacks_total").increment(1);
        None
    }

    async fn call(&self, key_id: KeyId, limit: RateLimit) -> redis::RedisResult<Outcome> {
        let mut connection = self
            .connection
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.shared.client.clone(), config)
            })
            .await?
            .clone();
        let interval_ns = u64::try_from(limit.interval().as_nanos()).unwrap_or(u64::MAX);
        let (allowed, remaining, micros): (i64, i64, i64) = self
            .script
            .key(format!("{}{key_id}", self.shared.prefix))
            .arg(interval_ns)
            .arg(limit.burst())
            .invoke_async(&mut connection)
            .await?;
        let micros = Duration::from_micros(micros.max(0) as u64);
        Ok(if allowed == 1 {
            Outcome::Allowed {
                remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                reset: micros,
            }
        } else {
            Outcome::Refused { retry_after: micros }
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn is_down(&self) -> bool {
        self.now() < self.down_until.load(Ordering::Relaxed)
    }

    /// Leaves the store alone for `retry`; warns once per outage.
    fn down(&self, error: &str) {
        metrics::counter!("spool_rate_limit_store_errors_total").increment(1);
        let retry = u64::try_from(self.retry.as_micros()).unwrap_or(u64::MAX);
        let until = self.now().saturating_add(retry).max(1);
        if self.down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                store = %self.shared.shown,
                %error,
                retry_in = ?self.retry,
                "the rate-limit store failed; limiting in this process until it answers again"
            );
        }
    }

    fn up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0
            && self.down_until.swap(0, Ordering::Relaxed) != 0
        {
            tracing::info!(store = %self.shared.shown, "the rate-limit store answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_password() {
        let store = SharedStore::redis("redis://:hunter2@127.0.0.1:6379/0").unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains("hunter2") && shown.contains("127.0.0.1:6379"), "{shown}");
        assert_eq!(without_password("redis://u:p@h:1"), "redis://u:***@h:1");
        assert!(SharedStore::redis("http://127.0.0.1:6379").is_err());
        assert!(SharedStore::redis("redis://").is_err());
    }
}
