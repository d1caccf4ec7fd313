//! The event log: one ordered, durable sequence of events that everything
//! in Spool is appended to and folded from.
//!
//! [`Log`] is the contract every backend keeps (see ARCHITECTURE.md for the
//! five guarantees); [`MemoryLog`] serves unit tests and [`SqliteLog`] is the
//! embedded default. The conformance suite in [`conformance`] is run by every
//! backend.

mod cursor;
mod error;
mod filter;
mod kafka;
mod memory;
mod model;
mod page;
mod partition;
mod plan;
mod sqlite;
mod tail;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use cursor::Cursor;
pub use error::{Error, Result, VersionConflict};
pub use filter::{Filter, TypeFilter};
pub use kafka::{KafkaLog, KafkaOptions};
pub use memory::MemoryLog;
pub use model::{Append, Appended, Expected, NewEvent, ReadBatch, StoredEvent};
pub use page::{Page, read_page, read_page_where};
pub use partition::{partition_for, partition_of_key, stream_key};
pub use sqlite::{Durability, SqliteLog, SqliteOptions};
pub use tail::tail;

use spool_schemas::{EventId, Position, StreamName, TenantId};
use tokio::sync::watch;

/// The contract every backend keeps. Used as `Arc<dyn Log>` by the API and
/// the projection runner, which choose a backend at run time.
#[async_trait::async_trait]
pub trait Log: Send + Sync + 'static {
    /// Appends all events of `append` atomically, or none of them. (On a
    /// partitioned log, atomically per partition: see the backend.)
    ///
    /// Returns once the events are durable, one [`Appended`] per event in
    /// order. An event whose id is already stored is not written again; its
    /// stored position is returned with `already_stored` set. When every
    /// event of the append is already stored the append is taken as a retry
    /// of one that succeeded and its expectations are not checked again.
    async fn append(&self, append: Append) -> Result<Vec<Appended>>;

    /// How many partitions the log has, numbered from 0. Each stream lives
    /// in one ([`partition_for`]); order and positions are per partition.
    /// The embedded backends have one.
    fn partitions(&self) -> u32;

    /// Events of `partition` after `after` that match `filter`, in order, at
    /// most `limit` of them. Examines a bounded window of the partition per
    /// call; [`ReadBatch::scanned_to`] says where to continue.
    async fn read(
        &self,
        partition: u32,
        after: Position,
        limit: usize,
        filter: &Filter,
    ) -> Result<ReadBatch>;

    /// The events of one stream from `from_version` (inclusive), in order.
    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>>;

    /// One event by id.
    async fn find(&self, id: EventId) -> Result<Option<StoredEvent>>;

    /// The position of the last stored event of `partition`
    /// (`Position::ZERO` when empty), as a watch that changes whenever the
    /// partition grows. Tailing waits on it.
    ///
    /// Panics if `partition` is not below [`Log::partitions`].
    fn head(&self, partition: u32) -> watch::Receiver<Position>;

    /// Stops accepting appends, finishes the ones already queued, and
    /// returns when they are durable.
    async fn close(&self) -> Result<()>;
}
