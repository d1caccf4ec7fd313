//! API key text: its format, generation, checking and hashing. The secret
//! is shown once; only its SHA-256 is ever stored (in `key.created` and
//! `key.rolled`) or compared.
//!
//! The format follows GitHub's token scheme, so that secret scanners
//! recognise a leaked key offline and the server refuses a mistyped one
//! without a lookup:
//!
//! ```text
//! spk_live_ 0123456789abcdefghijABCDEFGHIJkl 0eQbCY
//! ^ prefix  ^ 32 random base62 characters    ^ checksum
//! ```
//!
//! - the prefix names the mode: `spk_live_` or `spk_test_` (sandbox);
//! - 32 random characters of `0-9A-Za-z` from the operating system's
//!   cryptographically secure generator (32 × log2 62 ≈ 190 bits);
//! - 6 characters: the CRC-32 (IEEE, as zlib and PNG use it) of everything
//!   before it, prefix included, written in base62 with the digits
//!   `0-9A-Za-z`, most significant first, padded with `0` to six.
//!
//! A key is thus 47 characters and matches
//! `^spk_(live|test)_[0-9A-Za-z]{38}$`. The checksum only catches typos and
//! truncation; it is not a secret and proves nothing about the key.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use spool_schemas::{KeyId, TenantId};

/// Every live-mode key starts with this.
pub const LIVE_PREFIX: &str = "spk_live_";
/// Every test-mode (sandbox) key starts with this.
pub const TEST_PREFIX: &str = "spk_test_";
/// How many random base62 characters follow the prefix (about 190 bits).
pub const SECRET_LEN: usize = 32;
/// How many base62 characters of checksum end a key.
pub const CHECKSUM_LEN: usize = 6;
/// The length of every key's text.
pub const KEY_LEN: usize = LIVE_PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Live data or the sandbox. A key's mode is its tenant's: a test-mode key
/// belongs to the sandbox twin of its live tenant
/// ([`TenantId::test_twin`]), so everything it reads and writes is test data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    /// The mode of everything stored under `tenant`.
    pub fn of(tenant: TenantId) -> Mode {
        if tenant.is_test() { Mode::Test } else { Mode::Live }
    }

    /// The tenant that holds `tenant`'s data of this mode.
    pub fn tenant(self, tenant: TenantId) -> TenantId {
        match self {
            Mode::Live => tenant.live(),
            Mode::Test => tenant.test_twin(),
        }
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Mode::Live => LIVE_PREFIX,
            Mode::Test => TEST_PREFIX,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
        }
    }
}

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

/// Why a text is not a key. Says nothing about the key's secret beyond
/// what the text itself shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    #[error("an API key starts with `spk_live_` or `spk_test_`")]
    Prefix,
    #[error("an API key is {KEY_LEN} characters long")]
    Length,
    #[error("an API key holds only letters and digits after its prefix")]
    Characters,
    #[error("the API key's checksum does not match: it was mistyped or cut short")]
    Checksum,
}

/// A fresh live-mode key.
pub fn generate() -> GeneratedKey {
    generate_in(Mode::Live)
}

/// A fresh key of `mode`, with a new id.
pub fn generate_in(mode: Mode) -> GeneratedKey {
    let secret = new_secret(mode);
    GeneratedKey { key_id: KeyId::new(), secret_hash: hash_secret(&secret), secret }
}

/// New key text of `mode` from the thread's cryptographically secure
/// generator (seeded by the operating system).
pub fn new_secret(mode: Mode) -> String {
    let random: String =
        rand::rng().sample_iter(Alphanumeric).take(SECRET_LEN).map(char::from).collect();
    with_checksum(&format!("{}{random}", mode.prefix()))
}

/// `body` (prefix and random part) with its checksum appended.
fn with_checksum(body: &str) -> String {
    let mut checksum = [b'0'; CHECKSUM_LEN];
    let mut crc = crc32fast::hash(body.as_bytes());
    for digit in checksum.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    // 62^6 > 2^32, so every CRC-32 fits in six digits.
    debug_assert_eq!(crc, 0);
    let mut text = String::with_capacity(KEY_LEN);
    text.push_str(body);
    text.push_str(std::str::from_utf8(&checksum).expect("base62 digits are ASCII"));
    text
}

/// Checks that `text` is a well-formed key with a matching checksum, and
/// says its mode. Refuses anything else without a lookup.
pub fn parse(text: &str) -> Result<Mode, KeyTextError> {
    let mode = if text.starts_with(LIVE_PREFIX) {
        Mode::Live
    } else if text.starts_with(TEST_PREFIX) {
        Mode::Test
    } else {
        return Err(KeyTextError::Prefix);
    };
    if text.len() != KEY_LEN {
        return Err(KeyTextError::Length);
    }
    if !text[mode.prefix().len()..].bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyTextError::Characters);
    }
    let body = &text[..KEY_LEN - CHECKSUM_LEN];
    // The checksum is not secret (anyone holding the text can compute
    // it), so an ordinary comparison leaks nothing.
    if with_checksum(body) != text {
        return Err(KeyTextError::Checksum);
    }
    Ok(mode)
}

/// Lowercase hex SHA-256 of the whole key text.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented format, pinned: scanners and other implementations
    /// may rely on this vector.
    #[test]
    fn the_checksum_is_the_base62_crc32_of_the_prefix_and_secret() {
        let body = "spk_live_0123456789abcdefghijABCDEFGHIJkl";
        assert_eq!(crc32fast::hash(body.as_bytes()), 0x239B_7E4E);
        let key = with_checksum(body);
        assert_eq!(key, "spk_live_0123456789abcdefghijABCDEFGHIJkl0eQbCY");
        assert_eq!(parse(&key), Ok(Mode::Live));
        assert_eq!(with_checksum("spk_test_00000000000000000000000000000000").len(), KEY_LEN);
    }

    #[test]
    fn generated_keys_carry_their_mode_and_a_valid_checksum() {
        for mode in [Mode::Live, Mode::Test] {
            let key = generate_in(mode);
            assert!(key.secret.starts_with(mode.prefix()), "{}", key.secret);
            assert_eq!(key.secret.len(), KEY_LEN);
            assert_eq!(parse(&key.secret), Ok(mode));
            assert_eq!(key.secret_hash, hash_secret(&key.secret));
            assert_eq!(key.secret_hash.len(), 64);
            assert!(key.secret_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert_ne!(generate_in(mode).secret, key.secret);
            assert!(!format!("{key:?}").contains(&key.secret));
        }
    }

    #[test]
    fn mistyped_truncated_and_foreign_texts_are_refused_without_a_lookup() {
        let key = generate().secret;
        assert_eq!(parse("spk_live_short"), Err(KeyTextError::Length));
        assert_eq!(parse(&key[..KEY_LEN - 1]), Err(KeyTextError::Length));
        assert_eq!(parse(&format!("sk_live_{}", &key[9..])), Err(KeyTextError::Prefix));
        assert_eq!(parse(&format!("{}!", &key[..KEY_LEN - 1])), Err(KeyTextError::Characters));
        // One character changed anywhere is caught by the checksum.
        for at in LIVE_PREFIX.len()..KEY_LEN {
            let mut typo = key.clone().into_bytes();
            typo[at] = if typo[at] == b'x' { b'y' } else { b'x' };
            let typo = String::from_utf8(typo).unwrap();
            assert_eq!(parse(&typo), Err(KeyTextError::Checksum), "{typo}");
        }
        // A live key relabelled as a test key is refused too.
        let relabelled = key.replacen(LIVE_PREFIX, TEST_PREFIX, 1);
        assert_eq!(parse(&relabelled), Err(KeyTextError::Checksum));
    }

    #[test]
    fn a_mode_maps_a_tenant_to_its_live_or_sandbox_twin() {
        let live = TenantId::new();
        assert_eq!(Mode::Test.tenant(live), live.test_twin());
        assert_eq!(Mode::Live.tenant(live.test_twin()), live);
        assert_eq!(Mode::of(live.test_twin()), Mode::Test);
        assert_eq!(Mode::of(live), Mode::Live);
    }
}
