//! The public keys that verify access tokens, kept in memory by `kid`.
//!
//! A published signing key never changes: its `kid` is minted with it and
//! the `oauth` read model stores a `kid` once. So a key read once can be
//! kept, and verifying a token costs no query for its key after the first
//! (revocations and clients are still read on every request). Only keys
//! found in the read model enter, so the cache grows by published keys
//! alone, and it starts over past [`MAX_KEYS`] to stay bounded whatever
//! the log holds.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jsonwebtoken::DecodingKey;
use spool_projections::Views;
use spool_schemas::SigningKeyId;

use super::signing::{ALGORITHM, CURVE, KEY_TYPE};
use crate::problem::Problem;

/// How many keys are kept before the cache starts over. Each instance
/// publishes one a day by default, so this is years of keys.
const MAX_KEYS: usize = 4_096;

/// One published key, ready to verify with.
pub(crate) struct VerifyingKey {
    pub(crate) decoding: DecodingKey,
    /// Unix seconds: the key signed nothing issued after this.
    pub(crate) signs_until: i64,
    /// Unix seconds: no token of this key is valid from then on.
    pub(crate) verify_until: i64,
}

/// The cache; cheap to clone (clones share it). One per [`crate::AppState`],
/// since it mirrors that state's read models.
#[derive(Clone, Default)]
pub struct VerifyingKeys(Arc<RwLock<HashMap<SigningKeyId, Arc<VerifyingKey>>>>);

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.0.read().unwrap_or_else(PoisonError::into_inner);
        formatter.debug_struct("VerifyingKeys").field("cached", &keys.len()).finish()
    }
}

impl VerifyingKeys {
    /// The key `kid`, from memory or else from the read model; `None` when
    /// no such key was published, or it is not an Ed25519 key.
    pub(crate) async fn get(
        &self,
        views: &Views,
        kid: SigningKeyId,
    ) -> Result<Option<Arc<VerifyingKey>>, Problem> {
        let cached = self.0.read().unwrap_or_else(PoisonError::into_inner).get(&kid).cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(record) = spool_projections::oauth::signing_key(views, kid).await? else {
            return Ok(None);
        };
        if (record.jwk.kty.as_str(), record.jwk.crv.as_str(), record.jwk.alg.as_str())
            != (KEY_TYPE, CURVE, ALGORITHM)
        {
            return Ok(None);
        }
        let decoding = DecodingKey::from_ed_components(&record.jwk.x).map_err(|error| {
            Problem::internal(&format!("signing key {kid} is malformed: {error}"))
        })?;
        let key = Arc::new(VerifyingKey {
            decoding,
            signs_until: record.signs_until,
            verify_until: record.verify_until,
        });
        let mut keys = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(kid, key.clone());
        Ok(Some(key))
    }
}
