//! The scale-out backend: the log in a Kafka topic of N partitions.
//!
//! A stream's events go to the partition of its key (`tenant/stream`, see
//! [`crate::partition_for`]), one record per event whose value is the
//! event's envelope as JSON, readable by any Kafka client. The producer is
//! idempotent with `acks=all`.
//!
//! Kafka offers no conditional write and the broker we test against has no
//! transactions, so the log order decides (see [`arbiter`]): writers claim
//! stream versions, every reader applies the same rule to the partition in
//! order, and a writer answers only once it has read its own claim's
//! decision. Several Spool instances can thus append to the same streams
//! with expected versions and event-id idempotency intact.
//!
//! Every instance follows every partition from its start with one consumer
//! (no consumer group: each needs the whole log to decide) and keeps the
//! accepted events in memory for reads. That bounds the log to what fits in
//! memory; reading older events back from the broker instead is the next
//! step.

mod arbiter;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::SubsecRound;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use spool_schemas::{Envelope, EventId, Position, StreamName, TenantId};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::partition::{Part, split};
use crate::plan::plan;
use crate::{
    Append, Appended, Error, Filter, Log, ReadBatch, Result, StoredEvent, VersionConflict,
    stream_key,
};

use arbiter::{Arbiter, Outcome, PartId, Record};

/// Header naming the append part a record belongs to.
const PART_HEADER: &str = "spool-part";
/// Header giving the record's place in its part, `index/count`.
const INDEX_HEADER: &str = "spool-index";
/// The most records one append may put in one partition.
const MAX_PART_RECORDS: u32 = 100_000;
/// How often an append whose claims lost to another writer's plans again.
const MAX_ATTEMPTS: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaOptions {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// Used when the topic is created; an existing topic must have as many.
    pub partitions: u32,
    pub replication: i32,
    /// How long an append may wait for the broker before failing with
    /// [`Error::Unavailable`].
    pub timeout: Duration,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 8,
            replication: 1,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What the follower and the appenders share.
struct Shared {
    arbiters: Vec<Mutex<Arbiter>>,
    heads: Vec<watch::Sender<Position>>,
    /// Appends waiting for their part's decision.
    waiting: Mutex<HashMap<PartId, oneshot::Sender<Outcome>>>,
    /// Per partition, the offset after the last record applied.
    applied: Vec<watch::Sender<i64>>,
}

pub struct KafkaLog {
    options: KafkaOptions,
    /// Replaced when librdkafka declares it fatally failed (as after a
    /// message timed out while the broker was away, which fences an
    /// idempotent producer for good).
    producer: Mutex<FutureProducer>,
    producer_config: ClientConfig,
    shared: Arc<Shared>,
    follower: JoinHandle<()>,
    closed: std::sync::atomic::AtomicBool,
}

impl KafkaLog {
    /// Connects, creates the topic if it is missing, and reads every
    /// partition to its end before returning.
    pub async fn open(options: KafkaOptions) -> Result<KafkaLog> {
        let unreachable = |what: &str, error: &dyn std::fmt::Display| {
            Error::Unavailable(format!(
                "Kafka broker at {} (topic {}): {what}: {error}",
                options.brokers, options.topic
            ))
        };
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("message.timeout.ms", options.timeout.as_millis().to_string())
            .set("socket.timeout.ms", options.timeout.as_millis().max(10).to_string());
        let partitions = ensure_topic(&options, &config)
            .await
            .map_err(|e| unreachable("cannot create the topic", &e))?;

        let mut producer_config = config.clone();
        producer_config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "1");
        let producer: FutureProducer =
            producer_config.create().map_err(|e| unreachable("cannot create a producer", &e))?;
        let consumer: StreamConsumer = config
            .clone()
            .set("group.id", format!("spool-follower-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .map_err(|e| unreachable("cannot create a consumer", &e))?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&options.topic, partition as i32, Offset::Beginning)
                .map_err(|e| unreachable("cannot assign partitions", &e))?;
        }
        consumer.assign(&assignment).map_err(|e| unreachable("cannot assign partitions", &e))?;

        let shared = Arc::new(Shared {
            arbiters: (0..partitions).map(|p| Mutex::new(Arbiter::new(p))).collect(),
            heads: (0..partitions).map(|_| watch::Sender::new(Position::ZERO)).collect(),
            waiting: Mutex::new(HashMap::new()),
            applied: (0..partitions).map(|_| watch::Sender::new(0)).collect(),
        });
        let ends = high_watermarks(&producer, &options, partitions)
            .await
            .map_err(|e| unreachable("cannot read the partitions' ends", &e))?;
        let follower = tokio::spawn(follow(consumer, shared.clone()));
        let log = KafkaLog {
            options,
            producer: Mutex::new(producer),
            producer_config,
            shared,
            follower,
            closed: false.into(),
        };
        for (partition, end) in ends.into_iter().enumerate() {
            log.caught_up(partition as u32, end).await?;
        }
        Ok(log)
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }

    /// Waits until the follower has applied `partition` up to `offset`.
    /// Fails only when reading makes no progress for a whole timeout, so a
    /// long log takes as long as it takes to replay at open.
    async fn caught_up(&self, partition: u32, offset: i64) -> Result<()> {
        let mut applied = self.shared.applied[partition as usize].subscribe();
        loop {
            let before = *applied.borrow();
            let reached =
                tokio::time::timeout(self.options.timeout, applied.wait_for(|&at| at >= offset))
                    .await
                    .map(|result| result.is_ok());
            match reached {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(Error::Closed),
                Err(_) if *applied.borrow() > before => continue,
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "Kafka broker at {}: reading partition {partition} of {} stalled at \
                         offset {} of {offset} for {:?}",
                        self.options.brokers,
                        self.options.topic,
                        *applied.borrow(),
                        self.options.timeout
                    )));
                }
            }
        }
    }

    fn producer(&self) -> FutureProducer {
        lock(&self.producer).clone()
    }

    /// Replaces `failed` after a failed delivery. An idempotent producer
    /// whose message timed out (the broker was away) bumps its epoch, and
    /// the broker may fence it for good; a fresh producer id costs one
    /// round trip and cannot be fenced by the old one's history.
    fn renew(&self, failed: &FutureProducer) {
        let mut current = lock(&self.producer);
        if failed.client().native_ptr() != current.client().native_ptr() {
            return; // another append renewed it already
        }
        match self.producer_config.create::<FutureProducer>() {
            Ok(fresh) => *current = fresh,
            Err(error) => tracing::error!(%error, "cannot create a new Kafka producer"),
        }
    }

    fn arbiter(&self, partition: u32) -> std::sync::MutexGuard<'_, Arbiter> {
        lock(&self.shared.arbiters[partition as usize])
    }

    /// Appends one partition's part of an append; see [`arbiter`].
    async fn append_part(&self, part: &Part) -> Result<Vec<Appended>> {
        let partition = part.partition;
        let mut caught_up = false;
        for _ in 0..MAX_ATTEMPTS {
            let planned = {
                let arbiter = self.arbiter(partition);
                plan(
                    &part.append,
                    partition,
                    arbiter.head().next(),
                    |id| arbiter.stored(id),
                    |tenant, stream| arbiter.version(tenant, stream),
                )
                .map(|decided| (decided.writes.clone(), decided.results.clone()))
            };
            let (writes, results) = match planned {
                Ok(planned) => planned,
                // What this instance has read may lag the partition: catch
                // up to its end once before believing a conflict.
                Err(Error::Conflict(_)) if !caught_up => {
                    self.catch_up(partition).await?;
                    caught_up = true;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if writes.is_empty() {
                return Ok(results);
            }
            let claims: Vec<(&crate::NewEvent, u64)> = writes
                .iter()
                .map(|&index| (&part.append.events[index], results[index].stream_version))
                .collect();
            match self.claim(partition, &claims).await? {
                Outcome::Accepted(accepted) => {
                    let mut results = results;
                    for (&index, appended) in writes.iter().zip(accepted) {
                        results[index] = appended;
                    }
                    return Ok(results);
                }
                Outcome::Conflict { tenant, stream, claimed, actual } => {
                    // A stated expectation lost: that is the caller's conflict.
                    if let Some(expected) = part
                        .append
                        .expected
                        .iter()
                        .find(|e| e.tenant == tenant && e.stream == stream)
                    {
                        return Err(Error::Conflict(Box::new(VersionConflict {
                            tenant,
                            stream,
                            expected: expected.version,
                            actual: actual.max(claimed),
                        })));
                    }
                    // Otherwise another writer got there first: plan again
                    // on the state that now includes its events.
                }
                // Some id was accepted meanwhile: planning again answers
                // with where it is.
                Outcome::Duplicate => {}
            }
        }
        Err(Error::Unavailable(format!(
            "an append to partition {partition} lost {MAX_ATTEMPTS} races for its streams' versions"
        )))
    }

    async fn catch_up(&self, partition: u32) -> Result<()> {
        let ends =
            high_watermarks(&self.producer(), &self.options, self.partitions()).await.map_err(
                |e| Error::Unavailable(format!("Kafka broker at {}: {e}", self.options.brokers)),
            )?;
        self.caught_up(partition, ends[partition as usize]).await
    }

    /// Produces one part's records and waits for the part's decision.
    async fn claim(&self, partition: u32, claims: &[(&crate::NewEvent, u64)]) -> Result<Outcome> {
        let part_id: PartId = *uuid::Uuid::now_v7().as_bytes();
        let (decided, decision) = oneshot::channel();
        lock(&self.shared.waiting).insert(part_id, decided);
        let result = self.produce(partition, part_id, claims).await;
        let outcome = match result {
            Ok(()) => tokio::time::timeout(self.options.timeout, decision).await,
            Err(error) => {
                lock(&self.shared.waiting).remove(&part_id);
                return Err(error);
            }
        };
        lock(&self.shared.waiting).remove(&part_id);
        match outcome {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(Error::Closed),
            // Written but not yet read back: it may still win, so a retry
            // with the same ids is the safe answer.
            Err(_) => Err(Error::Unavailable(format!(
                "the append was written to Kafka at {} but not read back within {:?}; retry it",
                self.options.brokers, self.options.timeout
            ))),
        }
    }

    async fn produce(
        &self,
        partition: u32,
        part_id: PartId,
        claims: &[(&crate::NewEvent, u64)],
    ) -> Result<()> {
        let producer = self.producer();
        let result = self.produce_with(&producer, partition, part_id, claims).await;
        if let Err(Failure::Delivery(error)) = &result
            && needs_new_producer(&producer, error)
        {
            tracing::warn!(%error, "the Kafka producer cannot go on; using a new one");
            self.renew(&producer);
        }
        result.map_err(|failure| failure.into_error(&self.options))
    }

    async fn produce_with(
        &self,
        producer: &FutureProducer,
        partition: u32,
        part_id: PartId,
        claims: &[(&crate::NewEvent, u64)],
    ) -> std::result::Result<(), Failure> {
        let part_hex = hex(&part_id);
        let count = claims.len();
        let mut deliveries = Vec::with_capacity(count);
        let mut records = Vec::with_capacity(count);
        for (index, (event, version)) in claims.iter().enumerate() {
            let envelope = Envelope {
                id: event.id,
                tenant: event.tenant,
                stream: event.stream.clone(),
                stream_version: *version,
                recorded_at: event.recorded_at,
                causation_id: event.causation_id,
                correlation_id: event.correlation_id,
                position: None,
                event: event.event.clone(),
            };
            let value = serde_json::to_vec(&envelope).map_err(|e| {
                Failure::Other(Error::Invalid(format!("cannot encode event {}: {e}", event.id)))
            })?;
            // The record exactly as every reader will decode it.
            let stored = decode_event(&value, partition).ok_or_else(|| {
                Failure::Other(Error::Invalid(format!(
                    "event {} does not read back as written",
                    event.id
                )))
            })?;
            records.push(Record {
                part: part_id,
                index: index as u32,
                count: count as u32,
                event: stored,
            });
            let key = stream_key(event.tenant, &event.stream);
            let place = format!("{index}/{count}");
            let headers = OwnedHeaders::new()
                .insert(Header { key: PART_HEADER, value: Some(part_hex.as_str()) })
                .insert(Header { key: INDEX_HEADER, value: Some(place.as_str()) });
            let record = FutureRecord::to(&self.options.topic)
                .partition(partition as i32)
                .key(&key)
                .payload(&value)
                .headers(headers);
            // Enqueued in order; the idempotent producer keeps that order.
            let delivery =
                producer.send_result(record).map_err(|(error, _)| Failure::Delivery(error))?;
            deliveries.push(delivery);
        }
        for (delivery, record) in deliveries.into_iter().zip(records) {
            match delivery.await {
                Ok(Ok(delivered)) => {
                    let mut arbiter = self.arbiter(partition);
                    let decided = arbiter.offer_own(delivered.offset, record);
                    self.shared.settle(partition, &arbiter, decided);
                }
                Ok(Err((error, _))) => return Err(Failure::Delivery(error)),
                Err(_) => return Err(Failure::Other(Error::Closed)),
            }
        }
        Ok(())
    }
}

fn unavailable(options: &KafkaOptions, error: &dyn std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "Kafka broker at {} did not take the append: {error}",
        options.brokers
    ))
}

/// Why producing a part failed.
enum Failure {
    /// The producer could not deliver: some records may be written, so the
    /// append may yet be accepted.
    Delivery(rdkafka::error::KafkaError),
    Other(Error),
}

impl Failure {
    fn into_error(self, options: &KafkaOptions) -> Error {
        match self {
            Failure::Delivery(error) => Error::Unavailable(format!(
                "Kafka broker at {} did not confirm the append ({error}); it may or may not be \
                 stored: retry it with the same event ids",
                options.brokers
            )),
            Failure::Other(error) => error,
        }
    }
}

/// Whether `producer` must be replaced after `error`: it failed for good,
/// or a message timed out, after which librdkafka bumps the idempotent
/// producer's epoch and tansu fences it. A full queue is not a reason.
fn needs_new_producer(producer: &FutureProducer, error: &rdkafka::error::KafkaError) -> bool {
    producer.client().fatal_error().is_some()
        || matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
            )
        )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the topic if it is missing; returns its partition count.
async fn ensure_topic(options: &KafkaOptions, config: &ClientConfig) -> Result<u32, String> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| e.to_string())?;
    // The log is the source of truth: nothing may age out of it, or an
    // instance reading it from the start would decide differently.
    let topic = NewTopic::new(
        &options.topic,
        options.partitions as i32,
        TopicReplication::Fixed(options.replication),
    )
    .set("retention.ms", "-1")
    .set("retention.bytes", "-1")
    .set("cleanup.policy", "delete");
    let admin_options = AdminOptions::new()
        .operation_timeout(Some(options.timeout))
        .request_timeout(Some(options.timeout));
    let results = admin.create_topics([&topic], &admin_options).await.map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(format!("the broker refused to create topic {topic}: {code}"));
            }
        }
    }
    let topic_name = options.topic.clone();
    let timeout = options.timeout;
    let partitions = tokio::task::spawn_blocking(move || {
        let metadata =
            admin.inner().fetch_metadata(Some(&topic_name), timeout).map_err(|e| e.to_string())?;
        let found =
            metadata.topics().iter().find(|t| t.name() == topic_name).map(|t| t.partitions().len());
        found.ok_or_else(|| format!("topic {topic_name} is missing from the broker's metadata"))
    })
    .await
    .map_err(|e| e.to_string())??;
    if partitions == 0 {
        return Err(format!("topic {} has no partitions", options.topic));
    }
    if partitions as u32 != options.partitions {
        tracing::warn!(
            topic = %options.topic,
            configured = options.partitions,
            actual = partitions,
            "the topic exists with another partition count; using the topic's"
        );
    }
    Ok(partitions as u32)
}

async fn high_watermarks(
    producer: &FutureProducer,
    options: &KafkaOptions,
    partitions: u32,
) -> Result<Vec<i64>, String> {
    let producer = producer.clone();
    let topic = options.topic.clone();
    let timeout = options.timeout;
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| {
                let (low, high) = producer
                    .client()
                    .fetch_watermarks(&topic, p as i32, timeout)
                    .map_err(|e| e.to_string())?;
                // Every instance must read each partition from its first
                // record, or they would decide differently.
                if low > 0 {
                    return Err(format!(
                        "partition {p} of {topic} starts at offset {low}: the records before it \
                         were deleted (retention or compaction), and the log needs all of them"
                    ));
                }
                Ok(high)
            })
            .collect()
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Reads every partition, applies the arbiter, publishes heads and answers
/// waiting appends, until the log is dropped.
async fn follow(consumer: StreamConsumer, shared: Arc<Shared>) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading the Kafka log failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let partition = message.partition() as u32;
        let Some(arbiter) = shared.arbiters.get(partition as usize) else { continue };
        let offset = message.offset();
        let record = decode(&message, partition);
        if record.is_none() {
            tracing::warn!(partition, offset, "skipping a record that is not a Spool event");
        }
        let mut arbiter = lock(arbiter);
        let decided = arbiter.apply_read(offset, record);
        shared.settle(partition, &arbiter, decided);
    }
}

impl Shared {
    /// Publishes what `arbiter` (locked) now holds and answers the appends
    /// whose parts were `decided`.
    fn settle(&self, partition: u32, arbiter: &Arbiter, decided: Vec<(PartId, Outcome)>) {
        crate::tail::advance_head(&self.heads[partition as usize], arbiter.head());
        self.applied[partition as usize].send_replace(arbiter.next_offset());
        if decided.is_empty() {
            return;
        }
        let mut waiting = lock(&self.waiting);
        for (part, outcome) in decided {
            if let Some(waiter) = waiting.remove(&part) {
                let _ = waiter.send(outcome);
            }
        }
    }
}

/// The envelope as written, with the payload kept as JSON.
#[derive(serde::Deserialize)]
struct RawEnvelope {
    id: EventId,
    tenant: TenantId,
    stream: StreamName,
    stream_version: u64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    causation_id: Option<EventId>,
    #[serde(default)]
    correlation_id: Option<EventId>,
    #[serde(rename = "type")]
    type_name: String,
    v: u32,
    data: serde_json::Value,
}

fn decode(message: &impl Message, partition: u32) -> Option<Record> {
    let headers = message.headers()?;
    let mut part = None;
    let mut place = None;
    for header in headers.iter() {
        let value = std::str::from_utf8(header.value?).ok()?;
        match header.key {
            PART_HEADER => part = Some(value.to_owned()),
            INDEX_HEADER => place = Some(value.to_owned()),
            _ => {}
        }
    }
    let part = unhex(&part?)?;
    let (index, count) =
        place?.split_once('/').and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))?;
    // Any client can write the topic: a count no append of ours has is
    // not a Spool record (and must not size an allocation).
    if count == 0 || count > MAX_PART_RECORDS || index >= count {
        return None;
    }
    let event = decode_event(message.payload()?, partition)?;
    Some(Record { part, index, count, event })
}

/// A record's value as every reader stores it: both the follower and a
/// writer applying its own records go through here, so they cannot differ.
fn decode_event(payload: &[u8], partition: u32) -> Option<StoredEvent> {
    let raw: RawEnvelope = serde_json::from_slice(payload).ok()?;
    Some(StoredEvent {
        partition,
        position: Position::ZERO,
        id: raw.id,
        tenant: raw.tenant,
        stream: raw.stream,
        stream_version: raw.stream_version,
        recorded_at: raw.recorded_at.trunc_subsecs(6),
        causation_id: raw.causation_id,
        correlation_id: raw.correlation_id,
        type_name: raw.type_name,
        version: raw.v,
        data: raw.data.to_string(),
    })
}

fn unhex(text: &str) -> Option<PartId> {
    if text.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

#[async_trait::async_trait]
impl Log for KafkaLog {
    fn partitions(&self) -> u32 {
        self.shared.arbiters.len() as u32
    }

    /// Atomic per partition: each partition's share of the append is
    /// decided whole, but shares in different partitions are decided
    /// separately (Kafka has no transaction across them here).
    async fn append(&self, append: Append) -> Result<Vec<Appended>> {
        if append.events.is_empty() {
            return Ok(Vec::new());
        }
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let parts = split(&append, self.partitions());
        let answers =
            futures::future::join_all(parts.iter().map(|part| self.append_part(part))).await;
        let mut results: Vec<Option<Appended>> = vec![None; append.events.len()];
        for (part, answer) in parts.iter().zip(answers) {
            for (&index, appended) in part.indexes.iter().zip(answer?) {
                results[index] = Some(appended);
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every event is in one part")).collect())
    }

    async fn read(
        &self,
        partition: u32,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> Result<ReadBatch> {
        let Some(arbiter) = self.shared.arbiters.get(partition as usize) else {
            return Err(Error::no_partition(partition));
        };
        let arbiter = lock(arbiter);
        Ok(crate::memory::read_window(arbiter.events(), after, limit, filter))
    }

    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let partition = crate::partition_for(tenant, stream, self.partitions());
        let arbiter = self.arbiter(partition);
        let Some(indexes) = arbiter.stream_indexes(tenant, stream) else {
            return Ok(Vec::new());
        };
        Ok(crate::memory::stream_window(arbiter.events(), indexes, from_version, limit))
    }

    async fn find(&self, id: EventId) -> Result<Option<StoredEvent>> {
        for partition in 0..self.partitions() {
            let arbiter = self.arbiter(partition);
            if let Some(found) = arbiter.stored(&id) {
                return Ok(Some(arbiter.events()[found.position.0 as usize - 1].clone()));
            }
        }
        Ok(None)
    }

    fn head(&self, partition: u32) -> watch::Receiver<Position> {
        self.shared.heads[partition as usize].subscribe()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        let producer = self.producer();
        let timeout = self.options.timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|_| Error::Closed)?
            .map_err(|e| unavailable(&self.options, &e))
    }
}
