//! This instance's token signing keys: Ed25519 key pairs made here, kept in
//! memory only, whose public halves are published as events so that every
//! instance sharing the log verifies what any of them signed.
//!
//! Rotation: a key signs for [`OAuthOptions::key_rotation`]. Once a quarter
//! of that is left, the next token request starts a background task that
//! makes the next key and publishes it, to sign from the moment the current
//! one stops; until the new key is visible in the `oauth` read model (so
//! every instance verifies it), the current one keeps signing. Requests
//! never wait for that: they sign with the key at hand, holding a plain
//! mutex only to copy it. A request waits for a key only when there is
//! none to sign with (the first request, or after a quiet spell longer
//! than the key's life); such requests take turns on an async mutex, so
//! one of them makes the key and the others use it.
//!
//! A key's event says until when it signs and until when it verifies
//! (`signs_until` plus the token lifetime), which is how long the JWKS
//! keeps serving it; verification refuses a token issued after its key's
//! `signs_until`, or presented after its `verify_until`.

use std::sync::{Arc, PoisonError};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use spool_log::{Append, Appended, NewEvent};
use spool_schemas::{
    Event, OAuthSigningKeyPublished, PublicJwk, SigningKeyId, StreamName, TenantId,
};

use super::token::{AccessClaims, TOKEN_TYPE};
use crate::Shared;
use crate::problem::{Problem, ProblemKind};

/// The JWK parameters of every key this server makes (RFC 8037).
pub(crate) const KEY_TYPE: &str = "OKP";
pub(crate) const CURVE: &str = "Ed25519";
pub(crate) const ALGORITHM: &str = "EdDSA";

/// The next key is published once less than `1 / PUBLISH_AHEAD` of the
/// current key's signing life is left.
const PUBLISH_AHEAD: u32 = 4;

/// Signs access tokens; cheap to clone (clones share the keys).
#[derive(Clone)]
pub(crate) struct Signer {
    state: Shared,
    keys: Arc<std::sync::Mutex<Keys>>,
    /// Taken by requests that find no key to sign with, so that one of
    /// them makes it. Never taken by a request that has a key.
    making: Arc<tokio::sync::Mutex<()>>,
}

/// This instance's keys. Behind a plain mutex, never held across an await.
#[derive(Default)]
struct Keys {
    /// Signs now: visible in the read model, `now < signs_until`.
    current: Option<SigningKey>,
    /// Published ahead and visible, to sign once `current` stops.
    next: Option<SigningKey>,
    /// A background task is publishing `next`.
    publishing: bool,
    /// Published by a request but not seen in the read model in time: the
    /// next request waits for it again rather than publish another.
    unseen: Option<SigningKey>,
}

/// A key pair of this instance. No `Debug`: it holds the private key.
struct SigningKey {
    kid: SigningKeyId,
    private: EncodingKey,
    signs_until: DateTime<Utc>,
    /// Where its event was appended, to wait until it is projected.
    appended: Vec<Appended>,
}

impl Signer {
    pub(crate) fn new(state: Shared) -> Signer {
        Signer { state, keys: Arc::default(), making: Arc::default() }
    }

    /// `claims` as a signed JWT (`typ: at+jwt`), issued at `now` (which
    /// `claims.iat` is, in whole seconds), with a key that signs at `now`
    /// and is visible to every instance.
    pub(crate) async fn sign(
        &self,
        claims: &AccessClaims,
        now: DateTime<Utc>,
    ) -> Result<String, Problem> {
        let (kid, private) = match self.key_at(now) {
            Some(key) => key,
            None => self.make_key(now).await?,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &private).map_err(|error| Problem::internal(&error))
    }

    /// The key that signs at `now`, if there is one: the current key, or
    /// the next one once the current has stopped. Starts publishing the
    /// next key when the current one is near its end.
    fn key_at(&self, now: DateTime<Utc>) -> Option<(SigningKeyId, EncodingKey)> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.current.as_ref().is_none_or(|key| now >= key.signs_until) {
            keys.current = keys.next.take().filter(|next| now < next.signs_until);
        }
        let current = keys.current.as_ref()?;
        let (key, ends) = ((current.kid, current.private.clone()), current.signs_until);
        let ahead = self.state.options.oauth.key_rotation / PUBLISH_AHEAD;
        let ahead = TimeDelta::from_std(ahead).unwrap_or(TimeDelta::MAX);
        if ends - now < ahead && keys.next.is_none() && !keys.publishing {
            keys.publishing = true;
            let signer = self.clone();
            tokio::spawn(async move { signer.publish_next(ends).await });
        }
        Some(key)
    }

    /// Makes and publishes the key to sign from `from` (the current key's
    /// end), in the background, and keeps it as `next` once it is visible.
    async fn publish_next(&self, from: DateTime<Utc>) {
        // Waits as long as the current key lasts: until then nobody needs
        // the new one.
        let patience = (from - Utc::now()).to_std().unwrap_or_default();
        let patience = patience.max(self.state.options.oauth.visible_wait);
        let next = async {
            let key = self.publish(from).await?;
            let visible = self.visible(&key, patience).await?;
            Ok::<_, Problem>(visible.then_some(key))
        };
        let outcome = next.await;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.publishing = false;
        match outcome {
            Ok(Some(key)) => keys.next = Some(key),
            Ok(None) => tracing::warn!("the next signing key did not reach the oauth read model"),
            Err(problem) => tracing::warn!(%problem, "cannot publish the next signing key"),
        }
    }

    /// For a request that found no key to sign with: makes one (or waits
    /// for the request making one), visible before it signs anything.
    async fn make_key(&self, now: DateTime<Utc>) -> Result<(SigningKeyId, EncodingKey), Problem> {
        let _making = self.making.lock().await;
        if let Some(key) = self.key_at(now) {
            return Ok(key);
        }
        let unseen = self.keys.lock().unwrap_or_else(PoisonError::into_inner).unseen.take();
        let key = match unseen.filter(|key| now < key.signs_until) {
            Some(key) => key,
            None => self.publish(now).await?,
        };
        if !self.visible(&key, self.state.options.oauth.visible_wait).await? {
            // Signing now would hand out a token that does not verify.
            tracing::warn!(kid = %key.kid, "a new signing key is not yet in the oauth read model");
            self.keys.lock().unwrap_or_else(PoisonError::into_inner).unseen = Some(key);
            return Err(Problem::new(
                ProblemKind::UNAVAILABLE,
                "the token service is starting a new signing key; try again shortly",
            ));
        }
        let made = (key.kid, key.private.clone());
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).current = Some(key);
        Ok(made)
    }

    /// Whether `key` shows in the `oauth` read model within `wait`.
    async fn visible(&self, key: &SigningKey, wait: std::time::Duration) -> Result<bool, Problem> {
        let (views, kid) = (&self.state.views, key.kid);
        super::until_applied(&self.state, &key.appended, wait, || async move {
            Ok(spool_projections::oauth::signing_key(views, kid).await?.is_some())
        })
        .await
    }

    /// Makes a key pair to sign from `from` for the rotation period, and
    /// appends its public half.
    async fn publish(&self, from: DateTime<Utc>) -> Result<SigningKey, Problem> {
        let pair = Ed25519KeyPair::generate().map_err(|_| {
            Problem::internal(&"the crypto library could not generate an Ed25519 key")
        })?;
        let pkcs8 = pair.to_pkcs8().map_err(|_| {
            Problem::internal(&"the crypto library could not encode an Ed25519 key")
        })?;
        let options = &self.state.options.oauth;
        let kid = SigningKeyId::new();
        let signs_until = from + options.key_rotation;
        let published = OAuthSigningKeyPublished {
            kid,
            jwk: PublicJwk {
                kty: KEY_TYPE.to_owned(),
                crv: CURVE.to_owned(),
                alg: ALGORITHM.to_owned(),
                x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            },
            signs_until,
            verify_until: signs_until + options.token_lifetime,
        };
        let stream = StreamName::new(format!("oauth/{kid}")).expect("a kid is a valid stream name");
        let event =
            NewEvent::new(TenantId::SYSTEM, stream, Event::OAuthSigningKeyPublished(published));
        let appended = self.state.log.append(Append::new(vec![event])).await?;
        tracing::info!(%kid, %signs_until, "published a new token signing key");
        Ok(SigningKey {
            kid,
            private: EncodingKey::from_ed_der(pkcs8.as_ref()),
            signs_until,
            appended,
        })
    }
}
