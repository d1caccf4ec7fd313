//! Idempotent requests: a client that sends `Idempotency-Key: <key>` on a
//! `POST` or `PATCH` under `/v1` may retry it safely (after a timeout, a
//! dropped connection) and gets the first attempt's response, not a second
//! effect. The semantics follow Stripe's and the IETF httpapi
//! `Idempotency-Key` draft (which covers the non-idempotent methods, POST
//! and PATCH; PUT and DELETE are idempotent by HTTP's definition).
//!
//! - The key is 1 to 255 printable ASCII characters (otherwise `400
//!   invalid-idempotency-key`), scoped to the caller: its tenant and the API
//!   key (or OAuth client) within it. Two tenants, or two keys of one
//!   tenant, never see each other's entries.
//! - The first request with a key runs; its response (status, headers,
//!   body) is kept for [`IdempotencyOptions::retention`] (24 hours). A
//!   repeat gets that response byte for byte, plus `Idempotent-Replayed:
//!   true`, without running again.
//! - Kept: every response below 500 except `429`. A `4xx` is the request's
//!   outcome (its body was invalid, a scope was missing), and a retry sees
//!   the same outcome, as with Stripe. A `5xx` or a `429` says the request
//!   did not complete, so the entry is dropped and a retry runs afresh.
//! - The same key with another request (method, path and query, media type
//!   or body, or another credential: see below) is refused with `422
//!   idempotency-key-reused`; a repeat while the first still runs gets `409
//!   idempotency-key-in-flight` with `Retry-After: 1`.
//! - A running request holds a lease ([`IdempotencyOptions::lease`], 60 s)
//!   that it renews every third of it. One left by a process that died
//!   lapses, and the next request with the same key and body takes it over.
//!   The request runs in a task of its own, so a client that disconnects
//!   does not cancel it: its response is still kept for the retry. A
//!   handler that panics frees the key at once (a `500` is not kept).
//!
//! Entries live in the read-model store (`spool_projections::idempotency`),
//! shared by every instance, so all of this holds across instances.
//!
//! Secrets: some responses show a secret once (a new API key). No stored
//! response is readable: each is sealed with XChaCha20-Poly1305 under a key
//! derived by HKDF-SHA256 from the request's `Authorization` header value
//! (which the server never stores) and the Idempotency-Key, with the
//! entry's identity and status as associated data. The request fingerprint
//! is an HMAC-SHA256 under a second key derived the same way (rather than a
//! bare SHA-256: a body may be guessable, and the HMAC also binds the
//! credential). So only the caller presenting the same credential can
//! replay a response; the same key sent with another credential of the
//! same caller (a rolled API key, a new OAuth access token) counts as
//! another request (`422`). Fingerprints are compared in constant time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::Sha256;
use spool_projections::Views;
use spool_projections::idempotency::{self as store, Begun, Claim, EntryKey, StoredResponse};
use subtle::ConstantTimeEq;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type};

use crate::problem::{Problem, ProblemKind};
use crate::{Caller, MAX_BODY_BYTES, Shared};

/// The request header naming an idempotent request.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest Idempotency-Key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Where the idempotency layer reads the time: the system's clock, or one
/// a test moves (to expire entries without waiting a day).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

#[derive(Clone, Debug)]
pub struct IdempotencyOptions {
    /// How long a response is kept and replayed; then the key is forgotten
    /// and may be used afresh. 24 hours, part of the contract.
    pub retention: Duration,
    /// How long a running request's claim holds without being renewed; a
    /// claim left by a dead process can be taken over after this.
    pub lease: Duration,
    /// How often (at most) expired entries are deleted, by whichever
    /// request comes along first.
    pub purge_interval: Duration,
    pub clock: Clock,
}

impl Default for IdempotencyOptions {
    fn default() -> Self {
        IdempotencyOptions {
            retention: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(60),
            purge_interval: Duration::from_secs(60),
            clock: Clock::system(),
        }
    }
}

/// The layer's state: the app's, and when expired entries are next purged.
#[derive(Clone)]
pub(crate) struct Idempotency {
    state: Shared,
    next_purge_ms: Arc<AtomicI64>,
}

impl Idempotency {
    pub(crate) fn new(state: Shared) -> Idempotency {
        Idempotency { state, next_purge_ms: Arc::new(AtomicI64::new(i64::MIN)) }
    }
}

/// The innermost part of the middleware around every `/v1` route (see
/// [`crate::platform`]). Requests without the header, or with a method it
/// does not cover, pass through untouched.
pub(crate) async fn idempotent(layer: &Idempotency, request: Request, next: Next) -> Response {
    let covered = matches!(*request.method(), Method::POST | Method::PATCH)
        && request.headers().contains_key(IDEMPOTENCY_KEY)
        && request.extensions().get::<MatchedPath>().is_some();
    if !covered {
        return next.run(request).await;
    }
    layer.handle(request, next).await.unwrap_or_else(IntoResponse::into_response)
}

impl Idempotency {
    async fn handle(&self, request: Request, next: Next) -> Result<Response, Problem> {
        let idempotency_key = idempotency_key(request.headers())?;
        let (mut parts, body) = request.into_parts();
        let caller = Caller::from_request_parts(&mut parts, &self.state).await?;
        let body = read_body(body).await?;
        let secrets = Secrets::derive(credential(&parts), &idempotency_key);
        let fingerprint = secrets.fingerprint(&parts, &body);
        let entry =
            EntryKey { tenant: caller.tenant, principal: principal(&caller), idempotency_key };
        let options = &self.state.options.idempotency;
        let now = options.clock.now();
        self.purge_now_and_then(now);
        let lease_id = hex::encode(rand::random::<[u8; 16]>());
        let claim = Claim {
            entry: &entry,
            fingerprint: &fingerprint,
            lease_id: &lease_id,
            now,
            locked_until: later(now, options.lease),
            expires_at: later(now, options.retention),
        };
        match store::begin(&self.state.views, &claim).await? {
            Begun::Claimed => {
                let execution = Execution {
                    views: self.state.views.clone(),
                    options: options.clone(),
                    entry: entry.clone(),
                    lease_id: lease_id.clone(),
                    secrets,
                };
                let request = Request::from_parts(parts, Body::from(body));
                // A task of its own, so that the request runs to its end and
                // its response is kept even if the client goes away.
                match tokio::spawn(execution.run(request, next)).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        // The handler panicked: nothing is kept, so the key
                        // is freed at once for a retry to run afresh,
                        // rather than refused as in flight for a lease.
                        release(&self.state.views, &entry, &lease_id).await;
                        Err(Problem::internal(&error))
                    }
                }
            }
            Begun::InFlight { fingerprint: held } => {
                same_request(&held, &fingerprint)?;
                let mut response = Problem::new(
                    ProblemKind::IDEMPOTENCY_KEY_IN_FLIGHT,
                    "a request with this Idempotency-Key is still being processed; retry once \
                     it has finished",
                )
                .into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok(response)
            }
            Begun::Completed(stored) => {
                same_request(&stored.fingerprint, &fingerprint)?;
                replay(&secrets, &entry, stored)
            }
        }
    }

    /// Deletes expired entries in the background, at most once per
    /// [`IdempotencyOptions::purge_interval`] per process.
    fn purge_now_and_then(&self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        let due = self.next_purge_ms.load(Ordering::Relaxed);
        let interval = self.state.options.idempotency.purge_interval;
        let next = later(now, interval).timestamp_millis();
        if now_ms < due
            || self
                .next_purge_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let views = self.state.views.clone();
        tokio::spawn(async move {
            match store::purge_expired(&views, now).await {
                Ok(purged) => tracing::debug!(purged, "purged expired idempotency entries"),
                Err(error) => tracing::warn!(%error, "purging expired idempotency entries failed"),
            }
        });
    }
}

/// A claimed request: runs it, keeps its lease, then stores or drops its
/// response.
struct Execution {
    views: Views,
    options: IdempotencyOptions,
    entry: EntryKey,
    lease_id: String,
    secrets: Secrets,
}

impl Execution {
    /// A crash leaves the entry in flight; its lease lapses and a retry
    /// takes it over. A panic ends the task, and the request that spawned
    /// it releases the entry.
    async fn run(self, request: Request, next: Next) -> Result<Response, Problem> {
        let response = self.renewing_lease(next.run(request)).await;
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                self.release().await;
                return Err(Problem::internal(&error));
            }
        };
        if kept(parts.status) {
            self.complete(parts.status, &parts.headers, &body).await;
        } else {
            self.release().await;
        }
        Ok(Response::from_parts(parts, Body::from(body)))
    }

    async fn renewing_lease(&self, response: impl Future<Output = Response>) -> Response {
        let period = (self.options.lease / 3).max(Duration::from_millis(10));
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut response = std::pin::pin!(response);
        loop {
            tokio::select! {
                response = &mut response => return response,
                _ = renewals.tick() => self.renew().await,
            }
        }
    }

    async fn renew(&self) {
        let locked_until = later(self.options.clock.now(), self.options.lease);
        match store::renew(&self.views, &self.entry, &self.lease_id, locked_until).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                tenant = %self.entry.tenant,
                idempotency_key = %self.entry.idempotency_key,
                "an idempotent request outlived its lease and was taken over"
            ),
            Err(error) => tracing::warn!(%error, "renewing an idempotency lease failed"),
        }
    }

    async fn complete(&self, status: StatusCode, headers: &HeaderMap, body: &Bytes) {
        let sealed = self.secrets.seal(&self.entry, status.as_u16(), &encode(headers, body));
        match store::complete(&self.views, &self.entry, &self.lease_id, status.as_u16(), &sealed)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                tenant = %self.entry.tenant,
                idempotency_key = %self.entry.idempotency_key,
                "an idempotent request finished after its lease was taken over; \
                 its response is not kept"
            ),
            Err(error) => {
                tracing::error!(%error, "storing an idempotent response failed");
                self.release().await;
            }
        }
    }

    async fn release(&self) {
        release(&self.views, &self.entry, &self.lease_id).await;
    }
}

/// Frees an entry the lease holds, so that the next request with its key
/// runs afresh; a failure only logs (the lease lapses in the end).
async fn release(views: &Views, entry: &EntryKey, lease_id: &str) {
    if let Err(error) = store::release(views, entry, lease_id).await {
        tracing::error!(
            %error,
            "releasing an idempotency key failed; it stays in flight until its lease lapses"
        );
    }
}

/// Whether a response is kept for replay (see the module doc).
fn kept(status: StatusCode) -> bool {
    status.as_u16() < 500 && status != StatusCode::TOO_MANY_REQUESTS
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let invalid = |detail: &str| Problem::new(ProblemKind::INVALID_IDEMPOTENCY_KEY, detail);
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(invalid("send one Idempotency-Key header, not several"));
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_KEY_LEN
        || !bytes.iter().all(|byte| (0x20..=0x7e).contains(byte))
    {
        return Err(invalid(&format!(
            "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Who the entry belongs to within the caller's tenant: the OAuth client
/// for an access token (whichever token of it), else the API key.
fn principal(caller: &Caller) -> String {
    match &caller.token {
        Some(grant) => grant.client_id.to_string(),
        None => caller.key_id.to_string(),
    }
}

/// The credential as presented; authentication succeeded, so it is there.
fn credential(parts: &Parts) -> &[u8] {
    parts.headers.get(header::AUTHORIZATION).map_or(&[], HeaderValue::as_bytes)
}

async fn read_body(body: Body) -> Result<Bytes, Problem> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(Problem::new(
            ProblemKind::BODY_TOO_LARGE,
            format!("the request body may hold at most {MAX_BODY_BYTES} bytes"),
        )),
        Err(_) => {
            Err(Problem::new(ProblemKind::UNREADABLE_BODY, "the request body could not be read"))
        }
    }
}

fn same_request(stored: &str, fingerprint: &str) -> Result<(), Problem> {
    if bool::from(stored.as_bytes().ct_eq(fingerprint.as_bytes())) {
        return Ok(());
    }
    Err(Problem::new(
        ProblemKind::IDEMPOTENCY_KEY_REUSED,
        "this Idempotency-Key was already used for a different request (another method, path, \
         body or credential); send a new key with a new request",
    ))
}

fn replay(
    secrets: &Secrets,
    entry: &EntryKey,
    stored: StoredResponse,
) -> Result<Response, Problem> {
    // The fingerprint matched, so the key is right: a failure here is a
    // damaged row, not a client error.
    let status = StatusCode::from_u16(stored.status).map_err(|error| Problem::internal(&error))?;
    let (headers, body) = secrets
        .open(entry, stored.status, &stored.sealed)
        .and_then(|plaintext| decode(&plaintext))
        .ok_or_else(|| Problem::internal(&"a stored idempotent response cannot be opened"))?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// The keys of one entry, derived from the credential and the
/// Idempotency-Key. Never stored, logged or printed (no `Debug`).
struct Secrets {
    cipher: XChaCha20Poly1305,
    fingerprint: Hmac<Sha256>,
}

impl Secrets {
    fn derive(credential: &[u8], idempotency_key: &str) -> Secrets {
        let hkdf = Hkdf::<Sha256>::new(Some(idempotency_key.as_bytes()), credential);
        let mut cipher_key = [0; 32];
        let mut fingerprint_key = [0; 32];
        hkdf.expand(b"spool idempotency v1: response", &mut cipher_key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        hkdf.expand(b"spool idempotency v1: fingerprint", &mut fingerprint_key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Secrets {
            cipher: XChaCha20Poly1305::new(&Key::from(cipher_key)),
            fingerprint: Hmac::new_from_slice(&fingerprint_key).expect("HMAC takes any key"),
        }
    }

    /// Identifies the request: method, path and query, media type, body.
    fn fingerprint(&self, parts: &Parts, body: &[u8]) -> String {
        let mut mac = self.fingerprint.clone();
        let path = parts.uri.path_and_query().map_or("", |path| path.as_str());
        let media_type =
            parts.headers.get(header::CONTENT_TYPE).map_or(&[][..], HeaderValue::as_bytes);
        for field in [parts.method.as_str().as_bytes(), path.as_bytes(), media_type, body] {
            // Length-prefixed, so that no two requests share the input.
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The nonce, then the ciphertext with its tag.
    fn seal(&self, entry: &EntryKey, status: u16, plaintext: &[u8]) -> Vec<u8> {
        let nonce = XNonce::from(rand::random::<[u8; 24]>());
        let aad = associated_data(entry, status);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: &aad })
            .expect("encrypting into a Vec cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    fn open(&self, entry: &EntryKey, status: u16, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ciphertext) = sealed.split_at_checked(24)?;
        let nonce = XNonce::try_from(nonce).ok()?;
        let aad = associated_data(entry, status);
        self.cipher.decrypt(&nonce, Payload { msg: ciphertext, aad: &aad }).ok()
    }
}

/// Binds a sealed response to its row: it opens only as the response of
/// this entry with this status.
fn associated_data(entry: &EntryKey, status: u16) -> Vec<u8> {
    let mut aad = Vec::new();
    let tenant = entry.tenant.to_string();
    for field in [tenant.as_bytes(), entry.principal.as_bytes(), entry.idempotency_key.as_bytes()] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad.extend_from_slice(&status.to_be_bytes());
    aad
}

/// Headers that describe one transfer, not the response: not kept.
const NOT_KEPT: [HeaderName; 4] =
    [header::CONNECTION, header::CONTENT_LENGTH, header::DATE, header::TRANSFER_ENCODING];

/// A response's headers and body as one byte string: the number of
/// headers, each name and value with its length, then the body.
fn encode(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let kept: Vec<_> = headers.iter().filter(|(name, _)| !NOT_KEPT.contains(name)).collect();
    let mut bytes = Vec::with_capacity(body.len() + 64 * kept.len() + 4);
    bytes.extend_from_slice(&(kept.len() as u32).to_be_bytes());
    for (name, value) in kept {
        for field in [name.as_str().as_bytes(), value.as_bytes()] {
            bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
            bytes.extend_from_slice(field);
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

fn decode(mut bytes: &[u8]) -> Option<(HeaderMap, Bytes)> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(taken)
    }
    fn length(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let n_headers = length(&mut bytes)?;
    let mut headers = HeaderMap::with_capacity(n_headers);
    for _ in 0..n_headers {
        let name = length(&mut bytes).and_then(|n| take(&mut bytes, n))?;
        let value = length(&mut bytes).and_then(|n| take(&mut bytes, n))?;
        headers.append(HeaderName::from_bytes(name).ok()?, HeaderValue::from_bytes(value).ok()?);
    }
    Some((headers, Bytes::copy_from_slice(bytes)))
}

fn later(time: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(by)
        .ok()
        .and_then(|by| time.checked_add_signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Documents the header, and the `409` and `422` it can cause, on every
/// `POST` and `PATCH` under `/v1` in the OpenAPI document.
pub(crate) struct IdempotencyHeader;

impl utoipa::Modify for IdempotencyHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [item.post.as_mut(), item.patch.as_mut()].into_iter().flatten() {
                document(operation);
            }
        }
    }
}

fn document(operation: &mut Operation) {
    let parameter = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes the request safe to retry: a repeat with the same key (1 to 255 printable \
             ASCII characters) within 24 hours gets the first response byte for byte, marked \
             `Idempotent-Replayed: true`. Responses below 500 are kept, except 429. A replay \
             needs the same credential (`Authorization` value).",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_KEY_LEN))
                .examples(["order-42-created"]),
        ))
        .build();
    operation.parameters.get_or_insert_with(Vec::new).push(parameter);
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("ProblemBody"))).build(),
            )
            .build()
    };
    let responses = &mut operation.responses.responses;
    responses.entry("409".to_owned()).or_insert_with(|| {
        problem("A request with this Idempotency-Key is still being processed").into()
    });
    responses.entry("422".to_owned()).or_insert_with(|| {
        problem("The Idempotency-Key was already used for a different request").into()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EntryKey {
        EntryKey {
            tenant: spool_schemas::TenantId::new(),
            principal: "key_1".into(),
            idempotency_key: "k".into(),
        }
    }

    #[test]
    fn a_sealed_response_opens_only_with_the_same_credential_key_entry_and_status() {
        let entry = entry();
        let secrets = Secrets::derive(b"Bearer spk_live_secret", "k");
        let sealed = secrets.seal(&entry, 201, b"the plaintext");
        assert!(!sealed.windows(9).any(|window| window == b"plaintext"));
        assert_eq!(secrets.open(&entry, 201, &sealed).as_deref(), Some(&b"the plaintext"[..]));
        assert_eq!(secrets.open(&entry, 200, &sealed), None, "another status");
        let other_entry = EntryKey { principal: "key_2".into(), ..entry.clone() };
        assert_eq!(secrets.open(&other_entry, 201, &sealed), None, "another row");
        let other_credential = Secrets::derive(b"Bearer spk_live_other", "k");
        assert_eq!(other_credential.open(&entry, 201, &sealed), None, "another credential");
        let other_key = Secrets::derive(b"Bearer spk_live_secret", "k2");
        assert_eq!(other_key.open(&entry, 201, &sealed), None, "another idempotency key");
    }

    #[test]
    fn headers_and_body_survive_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.append("x-twice", HeaderValue::from_static("a"));
        headers.append("x-twice", HeaderValue::from_static("b"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let (decoded, body) = decode(&encode(&headers, b"{}")).unwrap();
        assert_eq!(&body[..], b"{}");
        assert_eq!(decoded.get(header::CONTENT_TYPE).unwrap(), "application/json");
        assert_eq!(decoded.get_all("x-twice").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(!decoded.contains_key(header::CONTENT_LENGTH));
        assert_eq!(decode(&[0, 0, 0, 1, 0]), None, "truncated");
    }
}
