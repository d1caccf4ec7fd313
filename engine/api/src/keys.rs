//! API key text: generation and hashing. The secret is shown once; only its
//! SHA-256 is ever stored (in `key.created`) or compared.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use spool_schemas::KeyId;

/// Every live-mode key starts with this.
pub const LIVE_PREFIX: &str = "spk_live_";
/// How many random base62 characters follow the prefix (about 190 bits).
pub const SECRET_LEN: usize = 32;

/// A new key: its id, its secret text (to show once) and the hash to store.
#[derive(Clone)]
pub struct GeneratedKey {
    pub key_id: KeyId,
    pub secret: String,
    pub secret_hash: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of debug output and so out of logs.
        f.debug_struct("GeneratedKey")
            .field("key_id", &self.key_id)
            .field("secret_hash", &self.secret_hash)
            .finish_non_exhaustive()
    }
}

/// A fresh key from the thread's cryptographically secure generator.
pub fn generate() -> GeneratedKey {
    let random: String =
        rand::rng().sample_iter(Alphanumeric).take(SECRET_LEN).map(char::from).collect();
    let secret = format!("{LIVE_PREFIX}{random}");
    GeneratedKey { key_id: KeyId::new(), secret_hash: hash_secret(&secret), secret }
}

/// Lowercase hex SHA-256 of the whole key text.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `text` is shaped like a key at all; anything else is refused
/// without a lookup.
pub fn looks_like_key(text: &str) -> bool {
    text.strip_prefix(LIVE_PREFIX).is_some_and(|rest| {
        rest.len() == SECRET_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_base62_and_hash_to_their_stored_hash() {
        let key = generate();
        assert!(looks_like_key(&key.secret), "{}", key.secret);
        assert_eq!(key.secret.len(), LIVE_PREFIX.len() + SECRET_LEN);
        assert_eq!(key.secret_hash, hash_secret(&key.secret));
        assert_eq!(key.secret_hash.len(), 64);
        assert!(key.secret_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(generate().secret, key.secret);
        assert!(!format!("{key:?}").contains(&key.secret));
    }

    #[test]
    fn text_not_shaped_like_a_key_is_recognised() {
        assert!(!looks_like_key("spk_live_short"));
        assert!(!looks_like_key(&format!("spk_test_{}", "a".repeat(32))));
        assert!(!looks_like_key(&format!("spk_live_{}!", "a".repeat(31))));
    }
}
