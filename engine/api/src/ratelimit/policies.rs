//! Which policy a key's requests count against, from the `rate_limits`
//! read model, cached per tenant so that a request costs no SQL of its own.
//!
//! A cached tenant is read again once its entry is older than the TTL (by
//! one request, while the others use the old entry), or at once after
//! [`Policies::invalidate`]. A load that raced with an invalidation is
//! used for the requests that awaited it but not cached, so it cannot put
//! back what the invalidation removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use spool_projections::Views;
use spool_projections::rate_limits::{self, KeyLimit, TenantLimits, TierRecord};
use spool_schemas::{KeyId, RateLimit, TenantId, TierName};

/// A named limit, with its `RateLimit-Policy` header rendered once.
#[derive(Debug)]
pub(crate) struct Policy {
    /// A tier's name, `custom` (a key's own limit) or `anonymous`.
    pub(crate) name: String,
    pub(crate) limit: RateLimit,
    pub(crate) header: HeaderValue,
}

impl Policy {
    pub(crate) fn new(name: &str, limit: RateLimit) -> Policy {
        let header = format!(
            "\"{name}\";q={};w={};spool-burst={}",
            limit.requests(),
            limit.window_seconds(),
            limit.burst()
        );
        Policy {
            name: name.to_owned(),
            limit,
            header: HeaderValue::try_from(header).expect("policy names are tokens"),
        }
    }
}

/// The policy of a key that has `key` set for it (`None`: nothing): its
/// own limit, its tier's, or its tenant's `default` tier's (the server's
/// built-in default when the tenant has none). A key on a tier that does
/// not exist follows `default`; the admin routes never assign one.
pub(crate) fn resolve(
    tiers: &[TierRecord],
    key: Option<&KeyLimit>,
    builtin: RateLimit,
) -> (String, RateLimit) {
    let tier_limit =
        |name: &str| tiers.iter().find(|tier| tier.tier.as_str() == name).map(|tier| tier.limit);
    let default =
        || (TierName::DEFAULT.to_owned(), tier_limit(TierName::DEFAULT).unwrap_or(builtin));
    match key {
        Some(KeyLimit::Custom(limit)) => (TierName::CUSTOM.to_owned(), *limit),
        Some(KeyLimit::Tier(tier)) => match tier_limit(tier.as_str()) {
            Some(limit) => (tier.to_string(), limit),
            None => default(),
        },
        None => default(),
    }
}

/// One tenant's policies, resolved for lookups by key.
struct TenantPolicies {
    default: Arc<Policy>,
    keys: HashMap<KeyId, Arc<Policy>>,
}

impl TenantPolicies {
    fn new(limits: &TenantLimits, builtin: RateLimit) -> TenantPolicies {
        // Keys on the same tier share one policy (and its header).
        let mut shared: HashMap<(String, RateLimit), Arc<Policy>> = HashMap::new();
        let mut policy = |(name, limit): (String, RateLimit)| {
            shared
                .entry((name.clone(), limit))
                .or_insert_with(|| Arc::new(Policy::new(&name, limit)))
                .clone()
        };
        let default = policy(resolve(&limits.tiers, None, builtin));
        let keys = limits
            .keys
            .iter()
            .map(|key| (key.key_id, policy(resolve(&limits.tiers, Some(&key.limit), builtin))))
            .collect();
        TenantPolicies { default, keys }
    }

    fn get(&self, key_id: KeyId) -> Arc<Policy> {
        self.keys.get(&key_id).unwrap_or(&self.default).clone()
    }
}

struct Cached {
    policies: Arc<TenantPolicies>,
    loaded: Instant,
}

/// One read of a tenant's limits, shared: the first request to await it
/// reads the read model, requests with nothing cached wait for that.
type Refresh = tokio::sync::OnceCell<Arc<TenantPolicies>>;

/// What is known of one tenant.
#[derive(Default)]
struct Entry {
    /// The last read, if any.
    cached: Option<Cached>,
    /// The read in progress, if any.
    refresh: Option<Arc<Refresh>>,
}

/// What a request does about its tenant's policies.
enum Step {
    /// Use these: fresh, or stale while another request reads them again.
    Use(Arc<TenantPolicies>),
    /// Await `refresh` (running it if no one else does); `stale` is what
    /// to fall back on if it fails.
    Await { refresh: Arc<Refresh>, stale: Option<Arc<TenantPolicies>> },
}

pub(crate) struct Policies {
    views: Views,
    builtin: RateLimit,
    ttl: Duration,
    tenants: RwLock<HashMap<TenantId, Entry>>,
    /// Bumped by every invalidation.
    epoch: AtomicU64,
    /// How many times the read model was read.
    #[cfg(test)]
    loads: AtomicU64,
}

impl Policies {
    pub(crate) fn new(views: Views, builtin: RateLimit, ttl: Duration) -> Policies {
        Policies {
            views,
            builtin,
            ttl,
            tenants: RwLock::default(),
            epoch: AtomicU64::new(0),
            #[cfg(test)]
            loads: AtomicU64::new(0),
        }
    }

    pub(crate) fn builtin_default(&self) -> RateLimit {
        self.builtin
    }

    /// The policy `key_id`'s requests count against.
    ///
    /// Once a tenant's entry is past its TTL, one request reads the read
    /// model again while the tenant's other requests go on with the old
    /// entry, so an expiry costs one read, not one per request in flight.
    /// With nothing cached (a new tenant, or just after an invalidation),
    /// the tenant's requests wait for one read together.
    ///
    /// When the read model cannot be read, the tenant's last known
    /// policies apply (or the built-in default), and the failure is
    /// logged: limiting goes on, as does authentication's own lookup
    /// failing closed.
    pub(crate) async fn policy(&self, tenant: TenantId, key_id: KeyId) -> Arc<Policy> {
        let (refresh, stale) = match self.step(tenant) {
            Step::Use(policies) => return policies.get(key_id),
            Step::Await { refresh, stale } => (refresh, stale),
        };
        match refresh.get_or_try_init(|| self.load(tenant, &refresh)).await {
            Ok(policies) => policies.get(key_id),
            Err(error) => {
                tracing::error!(%error, %tenant, "cannot read the tenant's rate limits");
                match stale {
                    Some(policies) => policies.get(key_id),
                    None => Arc::new(Policy::new(TierName::DEFAULT, self.builtin)),
                }
            }
        }
    }

    /// Decides what a request of `tenant` does: fresh entries under the
    /// read lock, anything else under the write lock, so that exactly one
    /// request starts a refresh.
    fn step(&self, tenant: TenantId) -> Step {
        let fresh = |entry: &Entry| {
            entry
                .cached
                .as_ref()
                .filter(|cached| cached.loaded.elapsed() < self.ttl)
                .map(|cached| cached.policies.clone())
        };
        if let Some(policies) =
            self.tenants.read().expect("not poisoned").get(&tenant).and_then(fresh)
        {
            return Step::Use(policies);
        }
        let mut tenants = self.tenants.write().expect("not poisoned");
        let entry = tenants.entry(tenant).or_default();
        if let Some(policies) = fresh(entry) {
            return Step::Use(policies);
        }
        let stale = entry.cached.as_ref().map(|cached| cached.policies.clone());
        match (&entry.refresh, stale) {
            (Some(_), Some(stale)) => Step::Use(stale),
            (Some(refresh), None) => Step::Await { refresh: refresh.clone(), stale: None },
            (None, stale) => {
                let refresh = Arc::new(Refresh::new());
                entry.refresh = Some(refresh.clone());
                Step::Await { refresh, stale }
            }
        }
    }

    /// Reads `tenant`'s limits for `refresh` and caches them, unless an
    /// invalidation came meanwhile: such a read is used for the requests
    /// that awaited it but not cached, so it cannot put back what the
    /// invalidation removed.
    async fn load(
        &self,
        tenant: TenantId,
        refresh: &Arc<Refresh>,
    ) -> spool_projections::Result<Arc<TenantPolicies>> {
        // However the read ends (failed or cancelled included), the next
        // request may start another.
        let _finished = Finished { policies: self, tenant, refresh };
        #[cfg(test)]
        self.loads.fetch_add(1, Ordering::SeqCst);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let limits = rate_limits::tenant_limits(&self.views, tenant).await?;
        let policies = Arc::new(TenantPolicies::new(&limits, self.builtin));
        let mut tenants = self.tenants.write().expect("not poisoned");
        if self.epoch.load(Ordering::SeqCst) == epoch {
            tenants.entry(tenant).or_default().cached =
                Some(Cached { policies: policies.clone(), loaded: Instant::now() });
        }
        // Before `_finished` takes the lock again.
        drop(tenants);
        Ok(policies)
    }

    pub(crate) fn invalidate(&self, tenant: TenantId) {
        let mut tenants = self.tenants.write().expect("not poisoned");
        self.epoch.fetch_add(1, Ordering::SeqCst);
        tenants.remove(&tenant);
    }

    /// Drops entries not read for `idle` (their tenant sent nothing for
    /// that long) and not being read.
    pub(crate) fn housekeeping(&self, idle: Duration) {
        let idle = idle.max(self.ttl);
        self.tenants.write().expect("not poisoned").retain(|_, entry| {
            entry.refresh.is_some()
                || entry.cached.as_ref().is_some_and(|cached| cached.loaded.elapsed() < idle)
        });
    }
}

/// Clears a tenant's refresh when its read ends, however it ends.
struct Finished<'a> {
    policies: &'a Policies,
    tenant: TenantId,
    refresh: &'a Arc<Refresh>,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut tenants =
            self.policies.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(entry) = tenants.get_mut(&self.tenant) else { return };
        if entry.refresh.as_ref().is_some_and(|refresh| Arc::ptr_eq(refresh, self.refresh)) {
            entry.refresh = None;
        }
        if entry.cached.is_none() && entry.refresh.is_none() {
            tenants.remove(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use futures::future::join_all;

    use super::*;

    async fn policies(ttl: Duration) -> (Policies, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let views = Views::open(dir.path().join("views.db")).await.unwrap();
        let builtin = RateLimit::new(10, 1, 10).unwrap();
        (Policies::new(views, builtin, ttl), dir)
    }

    fn loads(policies: &Policies) -> u64 {
        policies.loads.load(Ordering::SeqCst)
    }

    /// Review finding 14: when a tenant's entry expired, every request of
    /// the tenant in flight read the read model again.
    #[tokio::test]
    async fn concurrent_requests_of_a_tenant_share_one_read() {
        let (policies, _dir) = policies(Duration::from_millis(500)).await;
        let (tenant, key_id) = (TenantId::new(), KeyId::new());
        let cold = join_all((0..32).map(|_| policies.policy(tenant, key_id))).await;
        assert!(cold.iter().all(|policy| policy.name == TierName::DEFAULT));
        assert_eq!(loads(&policies), 1, "a tenant seen for the first time is read once");

        tokio::time::sleep(Duration::from_millis(600)).await;
        let expired = join_all((0..32).map(|_| policies.policy(tenant, key_id))).await;
        assert_eq!(expired.len(), 32);
        assert_eq!(loads(&policies), 2, "an expired tenant is read again once");
        policies.policy(tenant, key_id).await;
        assert_eq!(loads(&policies), 2, "and is fresh again");

        policies.invalidate(tenant);
        join_all((0..32).map(|_| policies.policy(tenant, key_id))).await;
        assert_eq!(loads(&policies), 3, "an invalidated tenant is read again once");
    }

    #[tokio::test]
    async fn a_read_abandoned_half_way_leaves_the_next_request_to_read_again() {
        let (policies, _dir) = policies(Duration::from_millis(500)).await;
        let (tenant, key_id) = (TenantId::new(), KeyId::new());
        policies.policy(tenant, key_id).await;
        // A request that starts the refresh and is dropped mid-read (its
        // client went away); polled once, which is almost always mid-read.
        let mut before = None;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let loaded = loads(&policies);
            if policies.policy(tenant, key_id).now_or_never().is_none() {
                before = Some(loaded);
                break;
            }
        }
        let before = before.expect("a read that had to wait for the store");
        assert_eq!(loads(&policies), before + 1);
        policies.policy(tenant, key_id).await;
        assert_eq!(
            loads(&policies),
            before + 2,
            "the next request read again, not the stale entry"
        );
        policies.policy(tenant, key_id).await;
        assert_eq!(loads(&policies), before + 2);
    }
}
