//! Splitting the log's partitions among the instances that share one
//! PostgreSQL read-model database, with advisory locks in that database.
//!
//! Each instance holds, on a connection of its own, a shared "member" lock
//! (so every instance can count the live ones) and one exclusive lock per
//! partition it projects. PostgreSQL drops a session's locks the moment its
//! connection closes, so a killed instance's partitions are free as soon as
//! the kernel closes its socket. Every second each instance takes free
//! partitions up to its fair share (partitions / members, rounded up) and
//! gives up any beyond it, so the work spreads when an instance joins and
//! gathers when one dies.
//!
//! A partition is released only after this instance's runner stopped
//! projecting it (`running`), so two runners never project one partition on
//! purpose; the checkpoints still fence any overlap.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often an instance reconsiders what it owns.
const TICK: Duration = Duration::from_secs(1);
/// The lock every live member holds shared, counted to size a fair share.
const MEMBER_KEY: i32 = -1;

pub(crate) struct PartitionLeases {
    wanted: watch::Receiver<BTreeSet<u32>>,
    task: JoinHandle<()>,
}

impl PartitionLeases {
    /// The partitions this instance should project now.
    pub(crate) fn wanted(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.wanted.clone()
    }
}

impl Drop for PartitionLeases {
    fn drop(&mut self) {
        // Dropping the connection releases every lock at once.
        self.task.abort();
    }
}

/// Joins the members sharing `url` for the log `topic` of `partitions`
/// partitions. `running` says which partitions this instance's runner
/// projects at the moment; it must follow [`PartitionLeases::wanted`].
pub(crate) async fn join(
    url: &str,
    topic: &str,
    partitions: u32,
    running: watch::Receiver<BTreeSet<u32>>,
) -> anyhow::Result<PartitionLeases> {
    let namespace = namespace(topic);
    let connection = member(url, namespace)
        .await
        .context("cannot join the instances sharing the partitions in PostgreSQL")?;
    let (wanted_sender, wanted) = watch::channel(BTreeSet::new());
    let url = url.to_owned();
    let task = tokio::spawn(async move {
        let mut running = running;
        let mut leases = Leases { connection, namespace, partitions, held: BTreeSet::new() };
        let mut ticks = tokio::time::interval(TICK);
        loop {
            ticks.tick().await;
            // A query that hangs (a peer gone without closing the socket)
            // counts as a failure too: the locks may be gone with it.
            let error = match tokio::time::timeout(
                QUERY_TIMEOUT,
                leases.rebalance(&wanted_sender, &running),
            )
            .await
            {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer from PostgreSQL in {QUERY_TIMEOUT:?}"),
            };
            // The session, and with it the locks, may be gone. Stop
            // projecting first, so that whoever takes the partitions over
            // does not overlap with this instance; then join again.
            tracing::error!(%error, "the partition leases failed; stopping and joining again");
            wanted_sender.send_replace(BTreeSet::new());
            let _ = tokio::time::timeout(REJOIN_WAIT, running.wait_for(BTreeSet::is_empty)).await;
            loop {
                tokio::time::sleep(TICK).await;
                match member(&url, namespace).await {
                    Ok(connection) => {
                        leases =
                            Leases { connection, namespace, partitions, held: BTreeSet::new() };
                        break;
                    }
                    Err(error) => tracing::warn!(%error, "cannot join the partition leases yet"),
                }
            }
        }
    });
    Ok(PartitionLeases { wanted, task })
}

/// How long one round of lease queries may take before the session is
/// taken for lost.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a failed member waits for its runner to stop before it lets
/// its locks go anyway.
const REJOIN_WAIT: Duration = Duration::from_secs(30);

/// A new session holding the member lock.
async fn member(url: &str, namespace: i32) -> sqlx::Result<PgConnection> {
    let mut connection = PgConnection::connect(url).await?;
    sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
        .bind(namespace)
        .bind(MEMBER_KEY)
        .execute(&mut connection)
        .await?;
    Ok(connection)
}

/// A stable 32-bit namespace for the topic's locks.
fn namespace(topic: &str) -> i32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = topic
        .bytes()
        .fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    hash as i32
}

struct Leases {
    connection: PgConnection,
    namespace: i32,
    partitions: u32,
    /// The partition locks this session holds.
    held: BTreeSet<u32>,
}

impl Leases {
    async fn rebalance(
        &mut self,
        wanted: &watch::Sender<BTreeSet<u32>>,
        running: &watch::Receiver<BTreeSet<u32>>,
    ) -> sqlx::Result<()> {
        let members: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2",
        )
        .bind(i64::from(self.namespace as u32))
        .bind(i64::from(MEMBER_KEY as u32))
        .fetch_one(&mut self.connection)
        .await?;
        let share = self.partitions.div_ceil(members.max(1) as u32) as usize;

        // Beyond the share: stop wanting the highest, and release each once
        // the runner has stopped projecting it.
        let mut want: BTreeSet<u32> = self.held.iter().copied().take(share).collect();
        let released: Vec<u32> = {
            let running = running.borrow();
            self.held
                .iter()
                .copied()
                .filter(|p| !want.contains(p) && !running.contains(p))
                .collect()
        };
        for partition in released {
            self.unlock(partition).await?;
        }
        // Below the share: take free partitions.
        for partition in 0..self.partitions {
            if want.len() >= share {
                break;
            }
            if self.held.contains(&partition) {
                continue;
            }
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(self.namespace)
                .bind(partition as i32)
                .fetch_one(&mut self.connection)
                .await?;
            if taken {
                self.held.insert(partition);
                want.insert(partition);
            }
        }
        wanted.send_if_modified(|current| {
            let changed = *current != want;
            *current = want;
            changed
        });
        Ok(())
    }

    async fn unlock(&mut self, partition: u32) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(self.namespace)
            .bind(partition as i32)
            .execute(&mut self.connection)
            .await?;
        self.held.remove(&partition);
        Ok(())
    }
}
