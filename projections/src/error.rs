//! The projection crate's errors: the log's, the store's, and a projection
//! that cannot apply an event (which stops it, never skips the event).

use spool_log::StoredEvent;
use spool_schemas::Position;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] spool_log::Error),
    /// The read-model store failed.
    #[error("read-model store failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// A projection cannot apply the event at `position` of `partition`.
    /// The projection stops there: that partition's checkpoint stays before
    /// the batch holding it.
    #[error(
        "projection {projection} cannot apply the event at position {position} \
         of partition {partition}: {message}"
    )]
    Apply { projection: &'static str, partition: u32, position: Position, message: String },
    /// A partition's checkpoint was not where the batch began: something
    /// else (another runner, or a rebuild beside a runner) applies the same
    /// partition of the same projection. The batch is rolled back.
    #[error(
        "projection {projection}: the checkpoint of partition {partition} has moved away from \
         {expected}; another runner applies this partition"
    )]
    CheckpointMoved { projection: &'static str, partition: u32, expected: Position },
    /// A projection this runner was waiting on has failed earlier.
    #[error("projection {projection} has failed: {message}")]
    Failed { projection: &'static str, message: String },
    /// No projection of this name is built in (or driven by this runner).
    #[error("no projection named {0:?}")]
    UnknownProjection(String),
    /// The projection has no row in the registry: it was never installed
    /// in this read-model store.
    #[error("projection {0} is not installed in the read-model store")]
    NotInstalled(&'static str),
    /// A row of a read model does not read back as its type.
    #[error("read model {table} holds a malformed row: {message}")]
    Corrupt { table: &'static str, message: String },
    /// An argument does not fit the log or the store, such as a bare
    /// position on a partitioned log, or a partition the log lacks.
    #[error("{0}")]
    Invalid(String),
    /// The runner stopped before what was awaited happened.
    #[error("the projection runner has stopped")]
    Stopped,
}

impl Error {
    /// A projection cannot apply `event`.
    pub fn apply(projection: &'static str, event: &StoredEvent, message: impl ToString) -> Error {
        Error::Apply {
            projection,
            partition: event.partition,
            position: event.position,
            message: message.to_string(),
        }
    }
}
