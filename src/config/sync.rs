//! `[sync]`: how events are batched into transactions, the memory they may hold, the size a
//! message may have, and the exchange's time zone.

use serde::{Deserialize, Serialize};

use super::check::{parse_tz, range, within_memory};
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// A transaction applies at most this many events.
    pub batch_max_events: usize,
    /// A batch is committed at the latest this long after its first event arrived.
    pub batch_max_wait_ms: u64,
    /// Bytes of received, not yet committed messages held in memory before reading pauses.
    pub queue_max_bytes: usize,
    /// Larger messages are dead-lettered without being parsed, cut at the ingest edge.
    pub max_message_bytes: usize,
    /// A dead letter keeps its payload whole up to this size (replayable once the limit is
    /// raised); beyond it, its first 4 KiB, its size and its SHA-256 (not replayable).
    pub dead_letter_max_bytes: usize,
    /// performance_metrics.date is the trade's date in this zone.
    pub exchange_timezone: String,
    /// On SIGTERM, how long the queue may take to drain before the rest is logged and left.
    pub drain_deadline_ms: u64,
    /// The writer's PostgreSQL connections. A batch of at least 1,000 trades per connection is
    /// split by account and its partitions committed in parallel: one backend is CPU-bound at
    /// ~80k trades/s on a large book (README, issue #16). Smaller batches use one connection.
    pub writer_connections: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_max_events: 5_000,
            batch_max_wait_ms: 5,
            queue_max_bytes: 80 * 1024 * 1024,
            max_message_bytes: 64 * 1024,
            dead_letter_max_bytes: 1024 * 1024,
            exchange_timezone: "America/New_York".into(),
            drain_deadline_ms: 10_000,
            writer_connections: 2,
        }
    }
}

impl SyncConfig {
    /// Batch limits, the queue's and the messages' sizes (a queue must hold one message, a
    /// dead letter must be able to keep any message whole), the drain deadline and the zone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        range("sync.batch_max_events", self.batch_max_events, 1, 100_000)?;
        range("sync.batch_max_wait_ms", self.batch_max_wait_ms, 1, 60_000)?;
        range("sync.writer_connections", self.writer_connections, 1, 64)?;
        range(
            "sync.max_message_bytes",
            self.max_message_bytes,
            256,
            16 << 20,
        )?;
        range(
            "sync.drain_deadline_ms",
            self.drain_deadline_ms,
            0,
            3_600_000,
        )?;
        within_memory("sync.queue_max_bytes", self.queue_max_bytes)?;
        range(
            "sync.dead_letter_max_bytes",
            self.dead_letter_max_bytes,
            self.max_message_bytes,
            64 << 20,
        )?;
        if self.queue_max_bytes < self.max_message_bytes {
            return Err(ConfigError::invalid(
                "sync.queue_max_bytes",
                format!(
                    "{} is smaller than sync.max_message_bytes ({}): one message could never fit",
                    self.queue_max_bytes, self.max_message_bytes
                ),
            ));
        }
        self.exchange_tz().map(drop)
    }

    pub fn exchange_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        parse_tz("sync.exchange_timezone", &self.exchange_timezone)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_range, assert_refused};

    #[test]
    fn batch_max_events_bounds() {
        assert_range("sync.batch_max_events", 1, 100_000, |c, v| {
            c.sync.batch_max_events = v as usize
        });
    }

    #[test]
    fn writer_connections_bounds() {
        assert_range("sync.writer_connections", 1, 64, |c, v| {
            c.sync.writer_connections = v as usize
        });
    }

    #[test]
    fn batch_max_wait_ms_bounds() {
        assert_range("sync.batch_max_wait_ms", 1, 60_000, |c, v| {
            c.sync.batch_max_wait_ms = v
        });
    }

    #[test]
    fn max_message_bytes_bounds() {
        assert_range("sync.max_message_bytes", 256, 16 << 20, |c, v| {
            c.sync.max_message_bytes = v as usize;
            // Room for the largest message in the dead letters too, to test this bound alone.
            c.sync.dead_letter_max_bytes = 64 << 20;
        });
    }

    #[test]
    fn drain_deadline_ms_bounds() {
        assert_range("sync.drain_deadline_ms", 0, 3_600_000, |c, v| {
            c.sync.drain_deadline_ms = v
        });
    }

    /// A dead letter can keep any message whole: its limit is at least the message limit.
    #[test]
    fn dead_letter_max_bytes_bounds_follow_max_message_bytes() {
        assert_range("sync.dead_letter_max_bytes", 64 * 1024, 64 << 20, |c, v| {
            c.sync.dead_letter_max_bytes = v as usize
        });
        let message = assert_refused("sync.dead_letter_max_bytes", |c| {
            c.sync.max_message_bytes = 2 << 20;
            c.sync.dead_letter_max_bytes = (2 << 20) - 1;
        });
        assert!(message.contains("2097152..=67108864"), "{message}");
    }

    #[test]
    fn queue_max_bytes_holds_one_message() {
        let message = assert_refused("sync.queue_max_bytes", |c| {
            c.sync.queue_max_bytes = 64 * 1024 - 1
        });
        assert!(
            message.contains("sync.max_message_bytes (65536)"),
            "{message}"
        );
        assert_accepted(|c| c.sync.queue_max_bytes = 64 * 1024);
    }

    /// A budget larger than the memory there is bounds nothing. (Linux: /proc/meminfo.)
    #[test]
    fn queue_max_bytes_fits_in_memory() {
        let message = assert_refused("sync.queue_max_bytes", |c| {
            c.sync.queue_max_bytes = usize::MAX
        });
        assert!(message.contains("MemoryMax"), "{message}");
    }

    #[test]
    fn exchange_timezone_is_an_iana_zone() {
        let message = assert_refused("sync.exchange_timezone", |c| {
            c.sync.exchange_timezone = "Mars/Olympus".into()
        });
        assert!(message.contains("`Mars/Olympus`"), "{message}");
        assert_refused("sync.exchange_timezone", |c| {
            c.sync.exchange_timezone = String::new()
        });
        assert_accepted(|c| c.sync.exchange_timezone = "Asia/Tokyo".into());
    }
}
