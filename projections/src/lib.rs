//! Projections: pure folds of the log into SQL read models, the runner that
//! keeps them current, checkpoints, and rebuilds into shadow tables.
//!
//! A [`Projection`] has a name, a version and tables; the [`Runner`] applies
//! events to it in batches of one log partition, committing each batch's
//! rows and that partition's checkpoint in one transaction of the [`Views`]
//! store. A changed version is rebuilt from position zero of every
//! partition into new tables (`{table}_g{n}`) while the old ones serve,
//! then swapped in by repointing the `{table}` views. Typed queries of the
//! built-in read models live in [`event_counts`], [`auth`], [`usage`], [`oauth`] and
//! [`rate_limits`].
//!
//! **Invariant:** projections never read the clock, the network or anything
//! but their events and tables; rebuilding from zero gives the same rows,
//! whatever the interleaving of partitions (see [`Projection`] on order).

mod build;
mod error;
mod feed;
mod projection;
mod registry;
mod runner;
mod status;
mod views;

pub mod auth;
pub mod event_counts;
pub mod idempotency;
pub mod oauth;
pub mod rate_limits;
pub mod usage;

use std::sync::Arc;

pub use build::{RebuildProgress, RebuildReport, rebuild};
pub use error::{Error, Result};
pub use projection::{Projection, Table, Tables};
pub use runner::{CurrentRunner, Runner, RunnerHandle, RunnerOptions, Target};
pub use status::{ProjectionState, ProjectionStatus, status};
pub use views::{Backend, Connection, Database, Location, Views};

/// Every built-in projection, as the server runs them.
pub fn builtin() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(event_counts::EventCounts),
        Arc::new(auth::Auth),
        Arc::new(usage::Usage),
        Arc::new(oauth::OAuth),
        Arc::new(rate_limits::RateLimits),
    ]
}

/// The built-in projection named `name`.
pub fn find(name: &str) -> Option<Arc<dyn Projection>> {
    builtin().into_iter().find(|projection| projection.name() == name)
}
