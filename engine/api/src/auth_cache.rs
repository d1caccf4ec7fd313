//! A short-lived, in-memory cache of successful credential lookups, so that
//! most authenticated requests cost no SQL query: an API key's record by
//! its secret's SHA-256, and an access token's standing (not revoked, its
//! client not deleted) by client and `jti`.
//!
//! Why it cannot make a revocation late by more than a second:
//! - An entry is trusted for at most `ApiOptions::auth_cache_ttl` (500 ms
//!   by default) after it was read from the read model, then read again. A
//!   revocation made through another instance or the CLI therefore holds
//!   here at most that long after the read model has applied it.
//! - This instance's own revoke, roll, client-delete and token-revoke
//!   routes invalidate the entries they affect once the projection has
//!   applied the change, so here it holds from the very next request. A
//!   lookup that read the read model before an invalidation never stores
//!   its (possibly stale) answer after it: every invalidation starts a new
//!   epoch, and an insert from an older epoch is dropped.
//! - Only what was found, and found standing, is cached, never a miss: a
//!   key or client made a moment ago works at once.
//!
//! What is cached is the record, not a verdict: expiry (the key's, a rolled
//! secret's grace end, a token's `exp`) is checked against the clock on
//! every request.
//!
//! A `Mutex<HashMap>` of our own rather than a caching crate: invalidation
//! is by key or client id (a scan of at most [`CAPACITY`] entries, on rare
//! admin requests), the TTL is an option read per lookup, and the epoch
//! check is three lines here. Past [`CAPACITY`] entries, expired ones are
//! dropped, and if that is not enough the map is cleared: a cleared cache
//! only costs queries.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use spool_projections::auth::SecretMatch;
use spool_projections::oauth::ClientRecord;
use spool_schemas::{ClientId, KeyId, TokenId};

/// The most entries each of the two maps holds.
pub(crate) const CAPACITY: usize = 10_000;

/// The cache of one router (clones share it). Holds no secret: API keys are
/// found by their digest, tokens by their ids.
#[derive(Clone, Default)]
pub struct AuthCache {
    keys: Arc<Mutex<Entries<String, SecretMatch>>>,
    tokens: Arc<Mutex<Entries<(ClientId, TokenId), ClientRecord>>>,
}

impl std::fmt::Debug for AuthCache {
    /// Counts only: the keys of the map are what finds a credential.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthCache")
            .field("keys", &lock(&self.keys).map.len())
            .field("tokens", &lock(&self.tokens).map.len())
            .finish()
    }
}

/// The epoch a lookup started in; see [`AuthCache`]'s inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Epoch(u64);

impl AuthCache {
    /// The key found by the secret digest `hash`, if read within `ttl`.
    pub(crate) fn key(&self, hash: &str, ttl: Duration) -> Option<SecretMatch> {
        lock(&self.keys).get(hash, ttl)
    }

    pub(crate) fn key_epoch(&self) -> Epoch {
        Epoch(lock(&self.keys).epoch)
    }

    /// Keeps `found` (a key that stands) unless keys were invalidated since
    /// `epoch`, when the lookup began.
    pub(crate) fn insert_key(&self, hash: String, found: SecretMatch, epoch: Epoch, ttl: Duration) {
        lock(&self.keys).insert(hash, found, epoch, ttl);
    }

    /// Forgets every secret of `key_id` (revoked, or rolled).
    pub(crate) fn invalidate_key(&self, key_id: KeyId) {
        lock(&self.keys).invalidate(|found| found.key.key_id == key_id);
    }

    /// The client of token `jti`, if read within `ttl` and standing then.
    pub(crate) fn token(
        &self,
        client_id: ClientId,
        jti: TokenId,
        ttl: Duration,
    ) -> Option<ClientRecord> {
        lock(&self.tokens).get(&(client_id, jti), ttl)
    }

    pub(crate) fn token_epoch(&self) -> Epoch {
        Epoch(lock(&self.tokens).epoch)
    }

    pub(crate) fn insert_token(
        &self,
        client_id: ClientId,
        jti: TokenId,
        client: ClientRecord,
        epoch: Epoch,
        ttl: Duration,
    ) {
        lock(&self.tokens).insert((client_id, jti), client, epoch, ttl);
    }

    /// Forgets token `jti` (revoked).
    pub(crate) fn invalidate_token(&self, jti: TokenId) {
        lock(&self.tokens).invalidate_keys(|(_, cached)| *cached == jti);
    }

    /// Forgets every token of `client_id` (deleted).
    pub(crate) fn invalidate_client(&self, client_id: ClientId) {
        lock(&self.tokens).invalidate_keys(|(cached, _)| *cached == client_id);
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of a map whose
/// every state is valid: carry on.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Entries<K, V> {
    map: HashMap<K, (Instant, V)>,
    /// Bumped by every invalidation.
    epoch: u64,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries { map: HashMap::new(), epoch: 0 }
    }
}

impl<K: Eq + Hash, V: Clone> Entries<K, V> {
    fn get<Q>(&self, key: &Q, ttl: Duration) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let (read_at, value) = self.map.get(key)?;
        (read_at.elapsed() < ttl).then(|| value.clone())
    }

    fn insert(&mut self, key: K, value: V, epoch: Epoch, ttl: Duration) {
        if epoch.0 != self.epoch || ttl.is_zero() {
            return;
        }
        if self.map.len() >= CAPACITY {
            self.map.retain(|_, (read_at, _)| read_at.elapsed() < ttl);
            if self.map.len() >= CAPACITY {
                self.map.clear();
            }
        }
        self.map.insert(key, (Instant::now(), value));
    }

    fn invalidate(&mut self, affected: impl Fn(&V) -> bool) {
        self.epoch += 1;
        self.map.retain(|_, (_, value)| !affected(value));
    }

    fn invalidate_keys(&mut self, affected: impl Fn(&K) -> bool) {
        self.epoch += 1;
        self.map.retain(|key, _| !affected(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn an_entry_lives_for_its_ttl_only() {
        let mut entries = Entries::<u32, u32>::default();
        entries.insert(1, 10, Epoch(0), TTL);
        assert_eq!(entries.get(&1, TTL), Some(10));
        assert_eq!(entries.get(&1, Duration::ZERO), None);
        assert_eq!(entries.get(&2, TTL), None);
    }

    #[test]
    fn a_lookup_older_than_an_invalidation_is_not_kept() {
        let mut entries = Entries::<u32, u32>::default();
        let before = Epoch(entries.epoch);
        entries.invalidate(|_| false);
        entries.insert(1, 10, before, TTL);
        assert_eq!(entries.get(&1, TTL), None);
        entries.insert(1, 10, Epoch(entries.epoch), TTL);
        assert_eq!(entries.get(&1, TTL), Some(10));
        entries.invalidate(|value| *value == 10);
        assert_eq!(entries.get(&1, TTL), None);
    }

    #[test]
    fn a_full_map_makes_room() {
        let mut entries = Entries::<usize, usize>::default();
        for n in 0..=CAPACITY {
            entries.insert(n, n, Epoch(0), TTL);
        }
        assert!(entries.map.len() <= CAPACITY);
        assert_eq!(entries.get(&CAPACITY, TTL), Some(CAPACITY));
    }
}
