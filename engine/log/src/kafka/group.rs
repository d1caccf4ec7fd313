//! Splitting a Kafka log's partitions among instances with a consumer
//! group: the broker tracks who is alive and assigns every partition to
//! exactly one member, and moves a dead member's partitions to the others
//! once its session times out.
//!
//! The group's consumer fetches nothing (its partitions are paused): the
//! instance reads the log through [`KafkaLog`]; the group only says which
//! partitions this instance's projections and processors own.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::KafkaLog;
use crate::{Error, Result};

/// How long the broker waits for a silent member before giving its
/// partitions to the others: the longest a crashed instance's partitions
/// stay unowned.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// This instance's membership of a group: the partitions it owns now.
pub struct PartitionGroup {
    owned: watch::Receiver<BTreeSet<u32>>,
    task: JoinHandle<()>,
}

impl PartitionGroup {
    /// The partitions assigned to this instance, changing with the group.
    /// Empty while a rebalance is in progress.
    pub fn owned(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.owned.clone()
    }
}

impl Drop for PartitionGroup {
    fn drop(&mut self) {
        // Dropping the consumer leaves the group, so the others take over
        // at once rather than after the session timeout.
        self.task.abort();
    }
}

struct GroupContext {
    owned: watch::Sender<BTreeSet<u32>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Give partitions up before anyone else may get them.
        if let Rebalance::Revoke(_) = rebalance {
            self.owned.send_replace(BTreeSet::new());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let owned = assigned.elements().iter().map(|e| e.partition() as u32).collect();
            // Fetch nothing: only the assignment matters.
            if let Err(error) = consumer.pause(assigned) {
                tracing::warn!(%error, "cannot pause the group's partitions");
            }
            self.owned.send_replace(owned);
        }
    }
}

impl KafkaLog {
    /// Joins the consumer group `group` on this log's topic.
    pub fn join_group(&self, group: &str) -> Result<PartitionGroup> {
        let (sender, owned) = watch::channel(BTreeSet::new());
        let consumer: StreamConsumer<GroupContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.options.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "roundrobin")
            .create_with_context(GroupContext { owned: sender })
            .map_err(|e| Error::Unavailable(format!("cannot join group {group}: {e}")))?;
        consumer
            .subscribe(&[&self.options.topic])
            .map_err(|e| Error::Unavailable(format!("cannot join group {group}: {e}")))?;
        let task = tokio::spawn(async move {
            // Polling keeps the membership alive and runs the rebalance
            // callbacks; paused partitions deliver nothing.
            loop {
                match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                    Err(_) | Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "the partition group's consumer failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(PartitionGroup { owned, task })
    }
}
