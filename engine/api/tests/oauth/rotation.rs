//! Signing key rotation under load: the next key is published ahead of the
//! current key's end, in the background, and token requests never queue
//! behind its publication.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use spool_api::{ApiOptions, OAuthOptions};
use spool_log::{Append, Appended, Filter, Log, ReadBatch, StoredEvent};
use spool_schemas::{Event, EventId, Position, Scope, StreamName, TenantId};
use tokio::sync::watch;

use crate::support::{Harness, WAIT, harness_with};
use crate::{bearer, create_client, decode_part, token};

/// A log that holds appends of signing keys while `held` is true, and
/// counts those waiting.
struct Gated {
    inner: Arc<dyn Log>,
    held: watch::Sender<bool>,
    waiting: watch::Sender<usize>,
}

#[async_trait::async_trait]
impl Log for Gated {
    async fn append(&self, append: Append) -> spool_log::Result<Vec<Appended>> {
        let publishes_a_key =
            append.events.iter().any(|new| matches!(new.event, Event::OAuthSigningKeyPublished(_)));
        if publishes_a_key {
            self.waiting.send_modify(|n| *n += 1);
            let _ = self.held.subscribe().wait_for(|held| !*held).await;
            self.waiting.send_modify(|n| *n -= 1);
        }
        self.inner.append(append).await
    }

    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn read(
        &self,
        partition: u32,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> spool_log::Result<ReadBatch> {
        self.inner.read(partition, after, limit, filter).await
    }

    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> spool_log::Result<Vec<StoredEvent>> {
        self.inner.read_stream(tenant, stream, from_version, limit).await
    }

    async fn find(&self, id: EventId) -> spool_log::Result<Option<StoredEvent>> {
        self.inner.find(id).await
    }

    fn head(&self, partition: u32) -> watch::Receiver<Position> {
        self.inner.head(partition)
    }

    async fn close(&self) -> spool_log::Result<()> {
        self.inner.close().await
    }
}

/// The published signing keys, in log order: kid, when each was
/// published, until when it signs.
async fn published_keys(h: &Harness) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    h.read_all()
        .await
        .into_iter()
        .filter_map(|event| match event.event().unwrap() {
            Event::OAuthSigningKeyPublished(key) => {
                Some((key.kid.to_string(), event.recorded_at, key.signs_until))
            }
            _ => None,
        })
        .collect()
}

async fn sleep_until(instant: DateTime<Utc>) {
    tokio::time::sleep((instant - Utc::now()).to_std().unwrap_or_default()).await;
}

/// Regression: the signer made the next key only once the current one had
/// stopped, holding its lock across the append and the wait for the read
/// model, so every token request queued behind a rotation.
#[tokio::test]
async fn the_next_signing_key_is_published_ahead_and_token_requests_never_wait_for_it() {
    let rotation = Duration::from_secs(2);
    let options = ApiOptions {
        oauth: OAuthOptions { key_rotation: rotation, ..OAuthOptions::default() },
        ..ApiOptions::default()
    };
    let (held, _) = watch::channel(false);
    let (waiting, mut publications_waiting) = watch::channel(0_usize);
    let gate = held.clone();
    let h =
        harness_with(options, move |log| Arc::new(Gated { inner: log, held: gate, waiting })).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let client = create_client(&h, &admin, &["events:read"]).await;
    let kid = |token: &str| decode_part(token, 0)["kid"].as_str().unwrap().to_owned();

    let first = token(&h, &client, None).await;
    let [(first_kid, _, first_ends)] = published_keys(&h).await.try_into().unwrap();
    assert_eq!(kid(&first), first_kid);

    // Near the first key's end, a token request starts the next key's
    // publication, held here: requests go on with the first key.
    held.send_replace(true);
    sleep_until(first_ends - Duration::from_millis(400)).await;
    assert_eq!(kid(&token(&h, &client, None).await), first_kid);
    let started = tokio::time::timeout(
        (first_ends - Utc::now()).to_std().unwrap_or_default(),
        publications_waiting.wait_for(|n| *n > 0),
    )
    .await
    // The guard `wait_for` returns would hold the channel's lock.
    .map(drop);
    assert!(started.is_ok(), "no next key was being published before the first one stopped");
    let during =
        tokio::time::timeout(WAIT, token(&h, &client, None)).await.expect("answered at once");
    assert_eq!(kid(&during), first_kid, "the first key signs until the next one is visible");

    // Released, the next key is published before the first one stops and
    // signs from then on, for a rotation period of its own.
    held.send_replace(false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while published_keys(&h).await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the next key was never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [_, (next_kid, next_published, next_ends)] = published_keys(&h).await.try_into().unwrap();
    assert!(next_published < first_ends, "published at {next_published}, after {first_ends}");
    assert_eq!(next_ends, first_ends + rotation);
    sleep_until(first_ends + Duration::from_millis(50)).await;
    let after = token(&h, &client, None).await;
    assert_eq!(kid(&after), next_kid);
    for token in [&first, &during, &after] {
        let response = h.get(Some(&bearer(admin.tenant, token)), "/v1/events").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    }
    assert_eq!(published_keys(&h).await.len(), 2, "one key per rotation");
}
