//! Technical indicators from Yahoo daily bars: a pure `step` core, its persisted state, and the
//! job that runs it incrementally.
//!
//! - [`step`]: the math (INDICATORS.md), pure.
//! - [`store`]: SQL and persistence, a chunk of symbols per round trip.
//! - [`job`]: one run (all symbols or a list, incremental or full), parallel over connections.
//! - [`replica`]: bar reads from a read replica, never staler than the chunk's change rows.
//! - [`schedule`]: the daemon task (cron, catch-up at start, debounced market-data triggers).
//!
//! Imports point one way, down the indicator path, so each module can be read (and tested)
//! knowing only what lies to its right here:
//!
//! ```text
//! schedule → job → replica → store → step
//! ```
//!
//! A module may skip ahead (`job` uses `store` and `step` directly, `schedule` takes
//! [`replica::ReplicaSettings`] for the job it configures) but never points left: `replica`
//! reports where a chunk's bars came from (`replica::ReadOn`) instead of touching the run's
//! counts, which belong to `job`, and `step` uses no other module of the crate. What two of
//! them share lives in the one further right (or in this file, as [`IndicatorError`]).

pub mod job;
pub mod replica;
pub(crate) mod schedule;
pub mod step;
pub mod store;

use crate::db::ErrorClass;

/// Why an indicator run (or a part of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum IndicatorError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Connect(#[from] crate::db::DbError),
    #[error("while {context}: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the indicator computation panicked: {0}")]
    Panicked(String),
    #[error("indicators.schedule `{schedule}` has no next occurrence after {after}")]
    ScheduleExhausted { schedule: String, after: String },
}

impl IndicatorError {
    /// Whether a new connection may get through where this one failed: the database could not
    /// be reached, the connection broke, or the server is shutting down, starting, or a
    /// standby ([`ErrorClass::Connection`]). A retry after a restart or a failover then
    /// succeeds; a bad password, a missing grant or a dropped database would only fail again.
    pub fn is_connection_loss(&self) -> bool {
        let error = match self {
            IndicatorError::Connect(crate::db::DbError::Connect { error, .. }) => error,
            IndicatorError::Query { source, .. } => source,
            _ => return false,
        };
        ErrorClass::of(error) == ErrorClass::Connection
    }

    /// `map_err` adapter naming what was being done; `Copy`, so one serves every statement of
    /// a step.
    pub(crate) fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Self + Copy {
        move |source| IndicatorError::Query { context, source }
    }
}
