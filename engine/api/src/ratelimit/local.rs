//! In-process GCRA with the `governor` crate.
//!
//! A governor keyed limiter has one quota for all its keys, while keys
//! here have limits of their own; so there is one keyed limiter per
//! distinct limit (a handful: one per tier in use, plus custom limits),
//! each keyed by key id on governor's sharded `DashMap`. A key whose limit
//! changes starts afresh in the limiter of its new limit. Checking never
//! waits: a key over its limit is refused at once, and the map's shards
//! keep one busy key from holding up the others.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use spool_schemas::RateLimit;

use super::Outcome;

type Gcra<K> =
    governor::RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// Keyed limiters by limit.
pub(crate) struct Local<K: Hash + Eq + Clone> {
    by_limit: RwLock<HashMap<RateLimit, Arc<Gcra<K>>>>,
}

impl<K: Hash + Eq + Clone> Default for Local<K> {
    fn default() -> Self {
        Local { by_limit: RwLock::default() }
    }
}

impl<K: Hash + Eq + Clone> Local<K> {
    /// Counts one request of `key` under `limit`.
    pub(crate) fn check(&self, key: &K, limit: RateLimit) -> Outcome {
        let gcra = self.gcra(limit);
        match gcra.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // The time until the bucket is full again, to within one
                // interval (governor does not expose its arrival time).
                let reset = limit.interval() * limit.burst().saturating_sub(remaining);
                Outcome::Allowed { remaining, reset }
            }
            Err(not_until) => {
                Outcome::Refused { retry_after: not_until.wait_time_from(gcra.clock().now()) }
            }
        }
    }

    fn gcra(&self, limit: RateLimit) -> Arc<Gcra<K>> {
        if let Some(gcra) = self.by_limit.read().expect("not poisoned").get(&limit) {
            return gcra.clone();
        }
        let mut by_limit = self.by_limit.write().expect("not poisoned");
        by_limit
            .entry(limit)
            .or_insert_with(|| {
                let burst = NonZeroU32::new(limit.burst()).expect("bursts are at least 1");
                let quota = Quota::with_period(limit.interval())
                    .expect("intervals are at least 1 ns")
                    .allow_burst(burst);
                Arc::new(governor::RateLimiter::dashmap(quota).with_middleware())
            })
            .clone()
    }

    /// Forgets keys whose bucket is full again (they are indistinguishable
    /// from new ones) and limiters no key uses any more.
    ///
    /// Walking the keys takes a while with many of them, so it happens
    /// outside the lock: requests keep finding their limiter meanwhile
    /// (each walk only locks the map shard it is on). The write lock is
    /// taken only to drop limiters still empty by then; a request that
    /// picked one up just before it went is counted there and forgotten
    /// with it, so its key gets at most one request beyond its limit.
    pub(crate) fn housekeeping(&self) {
        let limiters: Vec<Arc<Gcra<K>>> =
            self.by_limit.read().expect("not poisoned").values().cloned().collect();
        let mut any_empty = false;
        for gcra in limiters {
            gcra.retain_recent();
            gcra.shrink_to_fit();
            any_empty |= gcra.is_empty();
        }
        if any_empty {
            self.by_limit.write().expect("not poisoned").retain(|_, gcra| !gcra.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_request_waits_one_interval() {
        let local = Local::<u32>::default();
        let limit = RateLimit::new(1, 10, 3).unwrap();
        for remaining in [2, 1, 0] {
            let Outcome::Allowed { remaining: left, reset } = local.check(&1, limit) else {
                panic!("refused within the burst");
            };
            assert_eq!(left, remaining);
            assert_eq!(reset, Duration::from_secs(10) * (3 - remaining));
        }
        let Outcome::Refused { retry_after } = local.check(&1, limit) else {
            panic!("allowed past the burst");
        };
        assert!(retry_after > Duration::from_secs(9) && retry_after <= Duration::from_secs(10));
        assert!(matches!(local.check(&2, limit), Outcome::Allowed { remaining: 2, .. }));
        // Another limit for the same key is a limiter of its own.
        let other = RateLimit::new(5, 1, 5).unwrap();
        assert!(matches!(local.check(&1, other), Outcome::Allowed { remaining: 4, .. }));
    }

    #[test]
    fn housekeeping_forgets_full_buckets_and_unused_limits() {
        let local = Local::<u32>::default();
        let (quick, slow) =
            (RateLimit::new(1000, 1, 1).unwrap(), RateLimit::new(1, 60, 1).unwrap());
        local.check(&1, quick);
        local.check(&2, slow);
        std::thread::sleep(Duration::from_millis(5));
        local.housekeeping();
        // The quick bucket is full again, so its limiter went; the slow one
        // still remembers key 2.
        let by_limit = local.by_limit.read().unwrap();
        assert_eq!(by_limit.keys().collect::<Vec<_>>(), [&slow]);
        assert_eq!(by_limit[&slow].len(), 1);
        drop(by_limit);
        assert!(matches!(local.check(&2, slow), Outcome::Refused { .. }));
    }

    /// Review finding 15: housekeeping held the write lock while it walked
    /// every key, so every request waited for the walk.
    #[test]
    fn housekeeping_walks_the_keys_without_locking_requests_out() {
        let local = Arc::new(Local::<u32>::default());
        let slow = RateLimit::new(1, 60, 1).unwrap();
        for key in 0..1_000 {
            local.check(&key, slow);
        }
        // A request finding its limiter holds the read lock: housekeeping
        // must get through while it does, nothing being empty to drop.
        let request = local.by_limit.read().unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let walker = std::thread::spawn({
            let local = local.clone();
            move || {
                local.housekeeping();
                done.send(()).unwrap();
            }
        });
        let walked = finished.recv_timeout(Duration::from_secs(10));
        drop(request);
        walker.join().unwrap();
        assert!(walked.is_ok(), "housekeeping waited for the lock requests hold");
        assert_eq!(local.by_limit.read().unwrap()[&slow].len(), 1_000);
    }
}
