//! Which policy a key's requests count against, from the `rate_limits`
//! read model, cached per tenant so that a request costs no SQL of its own.
//!
//! A cached tenant is read again once its entry is older than the TTL, or
//! at once after [`Policies::invalidate`]. A load that raced with an
//! invalidation is used for its own request but not cached, so it cannot
//! put back what the invalidation removed.

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

pub(crate) struct Policies {
    views: Views,
    builtin: RateLimit,
    ttl: Duration,
    tenants: RwLock<HashMap<TenantId, Cached>>,
    /// Bumped by every invalidation.
    epoch: AtomicU64,
}

impl Policies {
    pub(crate) fn new(views: Views, builtin: RateLimit, ttl: Duration) -> Policies {
        Policies { views, builtin, ttl, tenants: RwLock::default(), epoch: AtomicU64::new(0) }
    }

    pub(crate) fn builtin_default(&self) -> RateLimit {
        self.builtin
    }

    /// The policy `key_id`'s requests count against.
    ///
    /// When the read model cannot be read, the tenant's last known
    /// policies apply (or the built-in default), and the failure is
    /// logged: limiting goes on, as does authentication's own lookup
    /// failing closed.
    pub(crate) async fn policy(&self, tenant: TenantId, key_id: KeyId) -> Arc<Policy> {
        let stale = {
            let tenants = self.tenants.read().expect("not poisoned");
            match tenants.get(&tenant) {
                Some(cached) if cached.loaded.elapsed() < self.ttl => {
                    return cached.policies.get(key_id);
                }
                Some(cached) => Some(cached.policies.clone()),
                None => None,
            }
        };
        let epoch = self.epoch.load(Ordering::SeqCst);
        match rate_limits::tenant_limits(&self.views, tenant).await {
            Ok(limits) => {
                let policies = Arc::new(TenantPolicies::new(&limits, self.builtin));
                let mut tenants = self.tenants.write().expect("not poisoned");
                if self.epoch.load(Ordering::SeqCst) == epoch {
                    tenants.insert(
                        tenant,
                        Cached { policies: policies.clone(), loaded: Instant::now() },
                    );
                }
                policies.get(key_id)
            }
            Err(error) => {
                tracing::error!(%error, %tenant, "cannot read the tenant's rate limits");
                match stale {
                    Some(policies) => policies.get(key_id),
                    None => Arc::new(Policy::new(TierName::DEFAULT, self.builtin)),
                }
            }
        }
    }

    pub(crate) fn invalidate(&self, tenant: TenantId) {
        let mut tenants = self.tenants.write().expect("not poisoned");
        self.epoch.fetch_add(1, Ordering::SeqCst);
        tenants.remove(&tenant);
    }

    /// Drops entries past their TTL (they would be read again anyway).
    pub(crate) fn housekeeping(&self) {
        let ttl = self.ttl;
        self.tenants
            .write()
            .expect("not poisoned")
            .retain(|_, cached| cached.loaded.elapsed() < ttl);
    }
}
