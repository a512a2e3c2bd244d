//! The leaf every stage may use and that uses no other module of the crate: what two stages
//! share moves down here, so every import points down the data's path (ARCHITECTURE.md).
//!
//! - [`ChannelKind`] and [`PerChannel`]: the three channels, named once;
//! - [`queue`]: the message as received and the byte-bounded queue between ingest and apply;
//! - [`heartbeat`]: progress marks the watchdog and /readyz read;
//! - [`health`]: each stage's liveness and lag counters;
//! - [`Backoff`]: capped exponential backoff;
//! - [`progress`]: how a long job reports how far it is, without knowing who watches;
//! - [`tls`]: TLS failures said plainly, for PostgreSQL and Redis alike.

mod backoff;
mod channel;
pub mod health;
pub mod heartbeat;
pub mod progress;
pub mod queue;
pub mod tls;

pub(crate) use backoff::Backoff;
pub use channel::{ChannelKind, PerChannel};

use std::time::Duration;

/// Counts and logs a database operation slower than the threshold (`database.slow_query_ms`).
pub(crate) fn note_duration(operation: &'static str, slow: Duration, took: Duration) {
    if took >= slow {
        metrics::counter!("trading_sync_slow_queries_total", "operation" => operation).increment(1);
        tracing::warn!(
            operation,
            took_ms = took.as_millis() as u64,
            threshold_ms = slow.as_millis() as u64,
            "slow query"
        );
    }
}
