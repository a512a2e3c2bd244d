//! Which channel is read through which transport, under which keys, within which memory
//! budgets: decided from the configuration alone, before anything connects. Pure, so every
//! combination of `[transport]` is checked by a unit test rather than by starting a daemon.

use std::sync::Arc;

use crate::config::Config;
use crate::core::ChannelKind;
use crate::ingest::streams::KeyRole;

/// What one daemon reads and where the messages wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Channels subscribed to through pub/sub, with their names (prefix included).
    pub pubsub: Vec<(String, ChannelKind)>,
    /// Keys read through the consumer group: stream channels, then the journal if any.
    pub stream_keys: Vec<(Arc<str>, KeyRole)>,
    /// The journal's key, when pub/sub messages are journaled on receipt. None without pub/sub:
    /// a journal of nothing would only cost a key.
    pub journal: Option<Arc<str>>,
    /// Bytes of received, uncommitted messages the writer's queue may hold.
    pub queue_max_bytes: usize,
    /// With the journal: bytes the appender's buffer may hold before XADD.
    pub journal_buffer_max_bytes: Option<usize>,
}

impl Topology {
    pub fn from_config(config: &Config) -> Topology {
        let names = ChannelKind::names(&config.redis.channel_prefix);
        let pubsub: Vec<_> = names
            .iter()
            .filter(|(kind, _)| config.transport.for_channel(*kind).pubsub())
            .map(|(kind, name)| (name.clone(), kind))
            .collect();
        let journal: Option<Arc<str>> =
            (config.transport.journal && !pubsub.is_empty()).then(|| config.journal_key().into());
        let stream_keys = names
            .iter()
            .filter(|(kind, _)| config.transport.for_channel(*kind).stream())
            .map(|(kind, name)| (Arc::<str>::from(name.as_str()), KeyRole::Channel(kind)))
            .chain(journal.iter().map(|key| (key.clone(), KeyRole::Journal)))
            .collect();
        Topology {
            pubsub,
            stream_keys,
            journal_buffer_max_bytes: journal.as_ref().map(|_| config.journal.buffer_max_bytes),
            journal,
            queue_max_bytes: config.sync.queue_max_bytes,
        }
    }

    pub fn uses_pubsub(&self) -> bool {
        !self.pubsub.is_empty()
    }

    pub fn uses_streams(&self) -> bool {
        !self.stream_keys.is_empty()
    }

    /// The setting that sizes the buffer pub/sub messages go to, named when it is full.
    pub fn pubsub_budget_key(&self) -> &'static str {
        if self.journal.is_some() {
            "journal.buffer_max_bytes"
        } else {
            "sync.queue_max_bytes"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    fn config(trades: Transport, others: Transport, journal: bool) -> Config {
        let mut config = Config::default();
        config.redis.channel_prefix = "p".into();
        config.transport.trades = trades;
        config.transport.positions = others;
        config.transport.market_data = others;
        config.transport.journal = journal;
        config.sync.queue_max_bytes = 1000;
        config.journal.buffer_max_bytes = 300;
        config
    }

    fn keys(topology: &Topology) -> Vec<(&str, KeyRole)> {
        let keys = topology.stream_keys.iter();
        keys.map(|(key, role)| (&**key, *role)).collect()
    }

    #[test]
    fn pubsub_only_reads_no_stream_and_fills_the_queue() {
        let t = Topology::from_config(&config(Transport::Pubsub, Transport::Pubsub, false));
        let names: Vec<_> = t.pubsub.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["p:trades", "p:positions", "p:market_data"]);
        assert!(t.stream_keys.is_empty() && t.journal.is_none());
        assert_eq!(t.pubsub_budget_key(), "sync.queue_max_bytes");
        assert_eq!(
            (t.queue_max_bytes, t.journal_buffer_max_bytes),
            (1000, None)
        );
    }

    #[test]
    fn journal_is_read_as_a_stream_after_the_stream_channels() {
        let t = Topology::from_config(&config(Transport::Stream, Transport::Pubsub, true));
        assert_eq!(
            t.pubsub,
            [
                ("p:positions".to_owned(), ChannelKind::Positions),
                ("p:market_data".to_owned(), ChannelKind::MarketData)
            ]
        );
        assert_eq!(
            keys(&t),
            [
                ("p:trades", KeyRole::Channel(ChannelKind::Trades)),
                ("p:journal", KeyRole::Journal)
            ]
        );
        assert_eq!(t.pubsub_budget_key(), "journal.buffer_max_bytes");
        assert_eq!(t.journal_buffer_max_bytes, Some(300));
    }

    #[test]
    fn a_journal_without_pubsub_is_not_read() {
        let t = Topology::from_config(&config(Transport::Stream, Transport::Stream, true));
        assert!(!t.uses_pubsub() && t.journal.is_none());
        assert_eq!(keys(&t).len(), 3);
    }

    #[test]
    fn both_reads_a_channel_twice_under_one_name() {
        let t = Topology::from_config(&config(Transport::Both, Transport::Pubsub, false));
        assert_eq!(t.pubsub.len(), 3);
        assert_eq!(
            keys(&t),
            [("p:trades", KeyRole::Channel(ChannelKind::Trades))]
        );
    }
}
