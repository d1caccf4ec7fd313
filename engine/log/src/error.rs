//! The log's errors: conflicts the caller can act on, and failures it cannot.

use std::sync::Arc;

use spool_schemas::{DecodeError, StreamName, TenantId};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An append stated a stream version the stream is not at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionConflict {
    pub tenant: TenantId,
    pub stream: StreamName,
    pub expected: u64,
    pub actual: u64,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Nothing of the append was written.
    #[error(
        "stream {} of tenant {} is at version {}, the append expected {}",
        .0.stream, .0.tenant, .0.actual, .0.expected
    )]
    Conflict(Box<VersionConflict>),
    /// The request itself is malformed (an append with a stream name too
    /// long for the backend, a cursor for another partition count, a
    /// partition that does not exist); nothing was written. The text says
    /// what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; the append may or may not be durable only if the
    /// failure happened during commit, and a retry with the same event ids
    /// is always safe.
    #[error("log storage failed: {0}")]
    Storage(Arc<dyn std::error::Error + Send + Sync>),
    /// A stored event cannot be read back.
    #[error("stored event at position {position} cannot be decoded: {source}")]
    Decode {
        position: u64,
        #[source]
        source: Arc<DecodeError>,
    },
    /// The store cannot take the append now; whether it is durable is
    /// unknown, and a retry with the same event ids is safe.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// The log is shutting down or its writer stopped.
    #[error("the log is closed")]
    Closed,
}

impl Error {
    /// A read of a partition the log does not have.
    pub(crate) fn no_partition(partition: u32) -> Error {
        Error::Invalid(format!("partition {partition} does not exist"))
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Storage(Arc::new(error))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Error::Storage(Arc::new(error))
    }
}
