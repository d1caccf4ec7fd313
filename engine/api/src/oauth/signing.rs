//! This instance's token signing keys: Ed25519 key pairs made here, kept in
//! memory only, whose public halves are published as events so that every
//! instance sharing the log verifies what any of them signed.
//!
//! Rotation: a key signs for [`OAuthOptions::key_rotation`] from when it
//! was made; the first token request after that makes and publishes a new
//! one. Its event says until when it verifies (`signs_until` plus the token
//! lifetime), which is how long the JWKS keeps serving it.

use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use spool_log::{Append, Log, NewEvent};
use spool_projections::Views;
use spool_schemas::{
    Event, OAuthSigningKeyPublished, PublicJwk, SigningKeyId, StreamName, TenantId,
};
use tokio::sync::Mutex;

use super::OAuthOptions;
use super::token::{AccessClaims, TOKEN_TYPE};
use crate::problem::{Problem, ProblemKind};

/// The JWK parameters of every key this server makes (RFC 8037).
pub(crate) const KEY_TYPE: &str = "OKP";
pub(crate) const CURVE: &str = "Ed25519";
pub(crate) const ALGORITHM: &str = "EdDSA";

/// Signs access tokens; cheap to clone (clones share the keys).
#[derive(Clone)]
pub(crate) struct Signer {
    log: Arc<dyn Log>,
    views: Views,
    options: OAuthOptions,
    /// The key being signed with. Behind an async mutex so that one request
    /// makes and publishes the next key while the others wait for it.
    current: Arc<Mutex<Option<SigningKey>>>,
}

/// A key pair of this instance. No `Debug`: it holds the private key.
struct SigningKey {
    kid: SigningKeyId,
    private: EncodingKey,
    signs_until: DateTime<Utc>,
    /// Seen in the `oauth` read model, so other requests can verify what
    /// it signs.
    visible: bool,
}

impl Signer {
    pub(crate) fn new(log: Arc<dyn Log>, views: Views, options: OAuthOptions) -> Signer {
        Signer { log, views, options, current: Arc::new(Mutex::new(None)) }
    }

    /// `claims` as a signed JWT (`typ: at+jwt`), issued at `now` (which
    /// `claims.iat` is, in whole seconds): a key past its `signs_until` is
    /// replaced, and the new key published, before anything is signed.
    pub(crate) async fn sign(
        &self,
        claims: &AccessClaims,
        now: DateTime<Utc>,
    ) -> Result<String, Problem> {
        let (kid, private) = self.key_for(now).await?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &private).map_err(|error| Problem::internal(&error))
    }

    async fn key_for(&self, now: DateTime<Utc>) -> Result<(SigningKeyId, EncodingKey), Problem> {
        let mut current = self.current.lock().await;
        let expired = current.as_ref().is_none_or(|key| now >= key.signs_until);
        if expired {
            *current = Some(self.publish_new(now).await?);
        }
        let key = current.as_mut().expect("set above");
        if !key.visible {
            let kid = key.kid;
            let views = &self.views;
            let seen = super::until_visible(self.options.visible_wait, || async move {
                Ok(spool_projections::oauth::signing_key(views, kid).await?.is_some())
            })
            .await?;
            if !seen {
                // Signing now would hand out a token that does not verify;
                // the next request waits for the key again.
                tracing::warn!(%kid, "a new signing key is not yet in the oauth read model");
                return Err(Problem::new(
                    ProblemKind::UNAVAILABLE,
                    "the token service is starting a new signing key; try again shortly",
                ));
            }
            key.visible = true;
        }
        Ok((key.kid, key.private.clone()))
    }

    /// Makes a key pair and appends its public half.
    async fn publish_new(&self, now: DateTime<Utc>) -> Result<SigningKey, Problem> {
        let pair = Ed25519KeyPair::generate().map_err(|_| {
            Problem::internal(&"the crypto library could not generate an Ed25519 key")
        })?;
        let pkcs8 = pair.to_pkcs8().map_err(|_| {
            Problem::internal(&"the crypto library could not encode an Ed25519 key")
        })?;
        let kid = SigningKeyId::new();
        let signs_until = now + self.options.key_rotation;
        let published = OAuthSigningKeyPublished {
            kid,
            jwk: PublicJwk {
                kty: KEY_TYPE.to_owned(),
                crv: CURVE.to_owned(),
                alg: ALGORITHM.to_owned(),
                x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            },
            signs_until,
            verify_until: signs_until + self.options.token_lifetime,
        };
        let stream = StreamName::new(format!("oauth/{kid}")).expect("a kid is a valid stream name");
        let event =
            NewEvent::new(TenantId::SYSTEM, stream, Event::OAuthSigningKeyPublished(published));
        self.log.append(Append::new(vec![event])).await?;
        tracing::info!(%kid, %signs_until, "published a new token signing key");
        Ok(SigningKey {
            kid,
            private: EncodingKey::from_ed_der(pkcs8.as_ref()),
            signs_until,
            visible: false,
        })
    }
}
