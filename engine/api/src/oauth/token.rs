//! Access tokens: their claims (RFC 9068), and how a presented token is
//! verified, for authentication, introspection and revocation alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use spool_projections::oauth::ClientRecord;
use spool_schemas::{ClientId, KeyId, Scope, SigningKeyId, TenantId, TokenId};

use super::TokenGrant;
use super::signing::ALGORITHM;
use crate::problem::{Problem, ProblemKind};
use crate::{AppState, Caller};

/// The `typ` header of an access token (RFC 9068 §2.1).
pub(crate) const TOKEN_TYPE: &str = "at+jwt";

/// The claims of an access token, exactly as signed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct AccessClaims {
    pub(crate) iss: String,
    pub(crate) aud: String,
    /// The client: with the client credentials grant the client acts for
    /// itself (RFC 9068 §2.2).
    pub(crate) sub: ClientId,
    pub(crate) client_id: ClientId,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) jti: TokenId,
    /// Space separated.
    pub(crate) scope: String,
    /// The client's tenant (a sandbox twin for a test-mode client).
    pub(crate) tenant: TenantId,
}

impl AccessClaims {
    pub(crate) fn scopes(&self) -> Option<Vec<Scope>> {
        self.scope.split_whitespace().map(|scope| scope.parse().ok()).collect()
    }
}

/// Why a token is refused. Each says so in its own words, none holds any
/// part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    Algorithm,
    Type,
    UnknownKey,
    /// The key's `verify_until` has passed.
    KeyRetired,
    /// Issued (`iat`) after the key's `signs_until`: no server signs with
    /// a key past it, so the token was not made by this service.
    SignedLate,
    Signature,
    Issuer,
    Audience,
    Expired,
    Revoked,
    ClientGone,
}

impl Refusal {
    fn detail(self) -> &'static str {
        match self {
            Refusal::Malformed => "the access token is not a well-formed JWT of this server",
            Refusal::Algorithm => "the access token must be signed with EdDSA",
            Refusal::Type => "the access token's `typ` must be `at+jwt`",
            Refusal::UnknownKey => {
                "the access token names a signing key (`kid`) this server \
                                    does not know"
            }
            Refusal::KeyRetired => {
                "the access token's signing key (`kid`) no longer verifies tokens"
            }
            Refusal::SignedLate => {
                "the access token was issued (`iat`) after its signing key (`kid`) stopped \
                 signing"
            }
            Refusal::Signature => "the access token's signature does not verify",
            Refusal::Issuer => "the access token was issued by another server (`iss`)",
            Refusal::Audience => "the access token is meant for another audience (`aud`)",
            Refusal::Expired => "the access token has expired",
            Refusal::Revoked => "the access token was revoked",
            Refusal::ClientGone => "the access token's client was deleted (or never existed)",
        }
    }

    fn problem(self) -> Problem {
        let kind = match self {
            Refusal::Expired => ProblemKind::EXPIRED_TOKEN,
            _ => ProblemKind::INVALID_TOKEN,
        };
        Problem::new(kind, self.detail())
    }
}

/// A token that verified: its client exists, in the token's tenant.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) claims: AccessClaims,
}

/// What verifying a token came to: a server failure is not a refusal.
pub(crate) type Outcome = Result<Result<Verified, Refusal>, Problem>;

/// Whether `text` is shaped like a JWT (three base64url parts, the first a
/// JSON object), so that it is verified as a token rather than looked up
/// as an API key.
pub fn looks_like_jwt(text: &str) -> bool {
    let mut parts = text.split('.');
    let shaped = (parts.next(), parts.next(), parts.next(), parts.next());
    matches!(shaped, (Some(header), Some(_), Some(_), None) if header.starts_with("eyJ"))
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The header fields read before the signature is checked.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

/// Verifies `token` at `now` against this server's published keys (and
/// their windows: issued by `signs_until`, presented before
/// `verify_until`), its issuer and audience, revocations and clients.
pub(crate) async fn verify(state: &AppState, token: &str, now: DateTime<Utc>) -> Outcome {
    super::available(state)?;
    let Some(header) = raw_header(token) else { return Ok(Err(Refusal::Malformed)) };
    // Checked before the key is looked up, so that `none` or an HMAC
    // algorithm never reaches a verifier.
    if header.alg != ALGORITHM {
        return Ok(Err(Refusal::Algorithm));
    }
    let typ_ok = header.typ.as_deref().is_some_and(|typ| {
        typ.eq_ignore_ascii_case(TOKEN_TYPE) || typ.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Ok(Err(Refusal::Type));
    }
    let Some(kid) = header.kid.and_then(|kid| kid.parse::<SigningKeyId>().ok()) else {
        return Ok(Err(Refusal::UnknownKey));
    };
    let Some(key) = state.oauth_keys.get(&state.views, kid).await? else {
        return Ok(Err(Refusal::UnknownKey));
    };
    let claims = match decode(token, &key.decoding, state) {
        Ok(claims) => claims,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // RFC 7519 §4.1.4: the token is valid only *before* `exp`. Checked
    // before the key's own windows, so that an expired token says so.
    if claims.exp <= now.timestamp() {
        return Ok(Err(Refusal::Expired));
    }
    if now.timestamp() >= key.verify_until {
        return Ok(Err(Refusal::KeyRetired));
    }
    if claims.iat > key.signs_until {
        return Ok(Err(Refusal::SignedLate));
    }
    if claims.sub != claims.client_id || claims.scopes().is_none() {
        return Ok(Err(Refusal::Malformed));
    }
    match standing(state, claims.client_id, claims.jti).await? {
        Err(refusal) => Ok(Err(refusal)),
        Ok(client) if client.tenant == claims.tenant => Ok(Ok(Verified { claims })),
        Ok(_) => Ok(Err(Refusal::ClientGone)),
    }
}

/// Whether the token `jti` of `client_id` still stands (not revoked, its
/// client not deleted): the client if so. From the auth cache when it
/// stood within `ApiOptions::auth_cache_ttl` (see `auth_cache`), else in
/// one read, cached when it stands.
async fn standing(
    state: &AppState,
    client_id: ClientId,
    jti: TokenId,
) -> Result<Result<ClientRecord, Refusal>, Problem> {
    let ttl = state.options.auth_cache_ttl;
    if let Some(client) = state.auth_cache.token(client_id, jti, ttl) {
        return Ok(Ok(client));
    }
    let epoch = state.auth_cache.token_epoch();
    let standing = read_standing(state, client_id, jti).await?;
    if let Ok(client) = &standing {
        state.auth_cache.insert_token(client_id, jti, client.clone(), epoch, ttl);
    }
    Ok(standing)
}

/// [`standing`] from the read model itself, as a live stream rechecks.
async fn read_standing(
    state: &AppState,
    client_id: ClientId,
    jti: TokenId,
) -> Result<Result<ClientRecord, Refusal>, Problem> {
    Ok(match spool_projections::oauth::token_standing(&state.views, client_id, jti).await? {
        None => Err(Refusal::ClientGone),
        Some(standing) if standing.revoked => Err(Refusal::Revoked),
        Some(standing) if standing.client.deleted => Err(Refusal::ClientGone),
        Some(standing) => Ok(standing.client),
    })
}

fn raw_header(token: &str) -> Option<RawHeader> {
    let encoded = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The signature, `iss`, `aud` and `exp` checks, by the JWT library.
fn decode(token: &str, key: &DecodingKey, state: &AppState) -> Result<AccessClaims, Refusal> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[super::issuer(state)]);
    validation.set_audience(&[&state.options.oauth.audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub", "jti"]);
    validation.leeway = 0;
    match jsonwebtoken::decode::<AccessClaims>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(error) => Err(match error.kind() {
            ErrorKind::InvalidSignature => Refusal::Signature,
            ErrorKind::InvalidIssuer => Refusal::Issuer,
            ErrorKind::InvalidAudience => Refusal::Audience,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::InvalidAlgorithm => Refusal::Algorithm,
            _ => Refusal::Malformed,
        }),
    }
}

/// The caller an access token stands for: the client's tenant, the token's
/// scopes. `key_id` carries the client's UUID, so that what is kept per
/// credential (`api.call` records, usage, rate limits) is kept per client.
pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<Caller, Problem> {
    let verified = verify(state, token, Utc::now()).await?.map_err(Refusal::problem)?;
    let claims = verified.claims;
    let expires_at =
        DateTime::from_timestamp(claims.exp, 0).ok_or_else(|| Refusal::Malformed.problem())?;
    Ok(Caller {
        key_id: KeyId::from_uuid(*claims.client_id.as_uuid()),
        tenant: claims.tenant,
        scopes: claims.scopes().unwrap_or_default(),
        expires_at: Some(expires_at),
        token: Some(TokenGrant { client_id: claims.client_id, jti: claims.jti, expires_at }),
        secret_hash: None,
    })
}

/// Whether a token that authenticated earlier still does (for event
/// streams): `Err` once it has expired, was revoked or its client deleted.
pub(crate) async fn recheck(state: &AppState, grant: TokenGrant) -> Result<(), Problem> {
    if grant.expires_at <= Utc::now() {
        return Err(Refusal::Expired.problem());
    }
    super::available(state)?;
    read_standing(state, grant.client_id, grant.jti).await?.map(|_| ()).map_err(Refusal::problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_part_tokens_with_a_json_header_look_like_jwts() {
        assert!(looks_like_jwt("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(!looks_like_jwt("spk_live_abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!looks_like_jwt("eyJ.a.b.c"));
        assert!(!looks_like_jwt("eyJ a.b.c"));
    }
}
