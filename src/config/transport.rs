//! How events arrive: `[transport]` (pub/sub, streams or both, per channel; the journal on or
//! off), `[streams]` (the consumer group reading streams) and `[journal]` (the stream that holds
//! pub/sub messages until they are committed).

use serde::{Deserialize, Serialize};

use super::check::{range, within_memory};
use super::ConfigError;
use crate::core::ChannelKind;

/// How one channel's events arrive.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Redis pub/sub (the seed's DataSyncEventBus): nothing kept while we are away.
    #[default]
    Pubsub,
    /// A Redis stream read through a consumer group: durable, acknowledged after commit.
    Stream,
    /// Both; duplicates are harmless (the trade-id ledger, last-writer-wins snapshots).
    Both,
}

impl Transport {
    pub fn pubsub(self) -> bool {
        matches!(self, Transport::Pubsub | Transport::Both)
    }

    pub fn stream(self) -> bool {
        matches!(self, Transport::Stream | Transport::Both)
    }
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub trades: Transport,
    pub positions: Transport,
    pub market_data: Transport,
    /// XADD every pub/sub message to the journal stream on receipt and apply it from there,
    /// so that a PostgreSQL outage or a crash after receipt loses nothing.
    pub journal: bool,
}

impl TransportConfig {
    /// The journal only holds pub/sub messages: it needs a channel read through pub/sub.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.journal && !self.any_pubsub() {
            return Err(ConfigError::invalid(
                "transport.journal",
                "is true but no channel uses pub/sub (transport.trades, .positions, \
                 .market_data are all \"stream\"): there is nothing to journal",
            ));
        }
        Ok(())
    }

    /// Whether any channel is read through pub/sub (the journal needs one).
    pub fn any_pubsub(&self) -> bool {
        [self.trades, self.positions, self.market_data]
            .iter()
            .any(|t| t.pubsub())
    }

    pub fn for_channel(&self, channel: ChannelKind) -> Transport {
        match channel {
            ChannelKind::Trades => self.trades,
            ChannelKind::Positions => self.positions,
            ChannelKind::MarketData => self.market_data,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Consumer group shared by every instance.
    pub group: String,
    /// This instance's consumer name; distinct per instance, stable across restarts (so a
    /// restarted instance re-reads its own pending entries). Default: the host name.
    pub consumer: Option<String>,
    /// Entry field holding the event JSON.
    pub field: String,
    /// Where a newly created group starts: "0" = the whole stream, "$" = only new entries.
    pub start_id: String,
    /// XREADGROUP BLOCK time.
    pub block_ms: u64,
    /// Entries per read.
    pub read_count: usize,
    /// Entries read but not yet committed, at most. Redis keeps the rest; reading far ahead
    /// would only make a crash re-deliver (and count against max_deliveries) more entries.
    pub read_ahead: usize,
    /// Entries pending this long with another (dead) consumer are taken over (XAUTOCLAIM).
    pub claim_idle_ms: u64,
    /// An entry delivered more than this many times is dead-lettered and acknowledged.
    pub max_deliveries: u32,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            group: "trading-sync".into(),
            consumer: None,
            field: "event".into(),
            start_id: "0".into(),
            block_ms: 2_000,
            read_count: 1_000,
            read_ahead: 10_000,
            claim_idle_ms: 30_000,
            max_deliveries: 16,
        }
    }
}

impl StreamsConfig {
    /// Names Redis is given (group, consumer, field, start id) and the read limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("streams.group", &self.group),
            ("streams.field", &self.field),
        ] {
            if value.is_empty() {
                return Err(ConfigError::invalid(key, "must be non-empty"));
            }
        }
        if self.consumer.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "streams.consumer",
                "must be non-empty",
            ));
        }
        if !is_group_start(&self.start_id) {
            return Err(ConfigError::invalid(
                "streams.start_id",
                format!("`{}` is neither \"$\" nor a stream id", self.start_id),
            ));
        }
        range("streams.block_ms", self.block_ms, 1, 60_000)?;
        range("streams.read_count", self.read_count, 1, 100_000)?;
        range("streams.read_ahead", self.read_ahead, 1, 10_000_000)?;
        range("streams.claim_idle_ms", self.claim_idle_ms, 100, 86_400_000)?;
        range("streams.max_deliveries", self.max_deliveries, 1, 1_000)
    }

    pub fn consumer_name(&self) -> String {
        self.consumer.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "trading-sync".into())
        })
    }
}

/// What XGROUP CREATE takes as a group's start: `$`, or a stream id — `<ms>` or `<ms>-<seq>`;
/// anything else Redis refuses, and the reader would retry it forever.
fn is_group_start(id: &str) -> bool {
    // Digits only: u64's parser would also take a leading '+'.
    let number =
        |part: &str| part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u64>().is_ok();
    id == "$"
        || match id.split_once('-') {
            Some((ms, seq)) => number(ms) && number(seq),
            None => number(id),
        }
}

/// The pub/sub journal (`transport.journal = true`): one stream holding every pub/sub message
/// from receipt until its transaction committed, read through `streams.group`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Stream key. Default `<redis.channel_prefix>:journal`, which keeps a hash tag of the
    /// prefix, so that in Redis Cluster the journal lives on the channels' shard.
    pub key: Option<String>,
    /// XADDs sent per pipelined round trip.
    pub append_batch: usize,
    /// Bytes of received messages not yet in the journal held in memory; past it a message
    /// is refused, counted and logged (as sync.queue_max_bytes does). It absorbs bursts faster
    /// than Redis takes XADDs, the role the queue has without the journal: same default.
    pub buffer_max_bytes: usize,
    /// Applied entries are trimmed (XTRIM MINID) at most this often.
    pub trim_interval_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            key: None,
            append_batch: 1_000,
            buffer_max_bytes: 80 * 1024 * 1024,
            trim_interval_ms: 1_000,
        }
    }
}

impl JournalConfig {
    /// The key's form, the append batch, the trim interval and the buffer's memory. That the
    /// key is not a channel's and the buffer holds a message are checked with `[redis]` and
    /// `[sync]`, in `Config::validate`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.key {
            if key.is_empty() || key.contains([' ', '\n', '\r']) {
                return Err(ConfigError::invalid(
                    "journal.key",
                    "must be non-empty and contain no spaces or line breaks",
                ));
            }
        }
        range("journal.append_batch", self.append_batch, 1, 100_000)?;
        range(
            "journal.trim_interval_ms",
            self.trim_interval_ms,
            10,
            3_600_000,
        )?;
        within_memory("journal.buffer_max_bytes", self.buffer_max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::Transport;
    use crate::config::testing::{assert_accepted, assert_range, assert_refused};

    #[test]
    fn the_journal_needs_a_pubsub_channel() {
        let all_streams = |c: &mut crate::config::Config| {
            c.transport.trades = Transport::Stream;
            c.transport.positions = Transport::Stream;
            c.transport.market_data = Transport::Stream;
        };
        assert_refused("transport.journal", |c| {
            all_streams(c);
            c.transport.journal = true;
        });
        assert_accepted(all_streams);
        assert_accepted(|c| {
            all_streams(c);
            c.transport.positions = Transport::Both;
            c.transport.journal = true;
        });
    }

    #[test]
    fn streams_group_is_not_empty() {
        assert_refused("streams.group", |c| c.streams.group = String::new());
    }

    #[test]
    fn streams_field_is_not_empty() {
        assert_refused("streams.field", |c| c.streams.field = String::new());
    }

    #[test]
    fn streams_consumer_is_not_empty() {
        assert_refused("streams.consumer", |c| {
            c.streams.consumer = Some(String::new())
        });
        assert_accepted(|c| c.streams.consumer = Some("host-a".into()));
    }

    #[test]
    fn streams_start_id_is_dollar_or_a_stream_id() {
        for id in ["", "latest", "1-", "-1", "1.5", "1-2-3", "+1", "1-*"] {
            let message = assert_refused("streams.start_id", |c| c.streams.start_id = id.into());
            assert!(message.contains(&format!("`{id}`")), "{message}");
        }
        for id in ["$", "0", "0-0", "1712345678901-3"] {
            assert_accepted(|c| c.streams.start_id = id.into());
        }
    }

    #[test]
    fn streams_block_ms_bounds() {
        assert_range("streams.block_ms", 1, 60_000, |c, v| c.streams.block_ms = v);
    }

    #[test]
    fn streams_read_count_bounds() {
        assert_range("streams.read_count", 1, 100_000, |c, v| {
            c.streams.read_count = v as usize
        });
    }

    #[test]
    fn streams_read_ahead_bounds() {
        assert_range("streams.read_ahead", 1, 10_000_000, |c, v| {
            c.streams.read_ahead = v as usize
        });
    }

    #[test]
    fn streams_claim_idle_ms_bounds() {
        assert_range("streams.claim_idle_ms", 100, 86_400_000, |c, v| {
            c.streams.claim_idle_ms = v
        });
    }

    #[test]
    fn streams_max_deliveries_bounds() {
        assert_range("streams.max_deliveries", 1, 1_000, |c, v| {
            c.streams.max_deliveries = v as u32
        });
    }

    #[test]
    fn journal_key_is_one_word() {
        for key in ["", "audit journal", "audit\njournal", "audit\r"] {
            assert_refused("journal.key", |c| c.journal.key = Some(key.into()));
        }
        assert_accepted(|c| c.journal.key = Some("{ds}:audit".into()));
    }

    #[test]
    fn journal_append_batch_bounds() {
        assert_range("journal.append_batch", 1, 100_000, |c, v| {
            c.journal.append_batch = v as usize
        });
    }

    #[test]
    fn journal_trim_interval_ms_bounds() {
        assert_range("journal.trim_interval_ms", 10, 3_600_000, |c, v| {
            c.journal.trim_interval_ms = v
        });
    }

    #[test]
    fn journal_buffer_max_bytes_fits_in_memory() {
        let message = assert_refused("journal.buffer_max_bytes", |c| {
            c.journal.buffer_max_bytes = usize::MAX
        });
        assert!(message.contains("MemoryMax"), "{message}");
    }

    /// The default consumer name is the host's, so that each instance has its own.
    #[test]
    fn consumer_name_is_the_configured_one_or_the_host_name() {
        let mut streams = super::StreamsConfig::default();
        let host = streams.consumer_name();
        assert!(!host.is_empty() && host.trim() == host, "{host:?}");
        streams.consumer = Some("instance-b".into());
        assert_eq!(streams.consumer_name(), "instance-b");
    }
}
