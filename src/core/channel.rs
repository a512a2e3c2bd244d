//! The three `data_sync` channels, named once: every stage that lists them, counts per channel
//! or maps a channel to a setting goes through [`ChannelKind::ALL`] and [`PerChannel`].

use std::fmt;
use std::ops::{Index, IndexMut};

/// Which `data_sync` channel (pub/sub channel or stream key) a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    Trades,
    Positions,
    MarketData,
}

impl ChannelKind {
    /// Every channel, in [`ChannelKind::index`] order.
    pub const ALL: [ChannelKind; 3] = [
        ChannelKind::Trades,
        ChannelKind::Positions,
        ChannelKind::MarketData,
    ];

    /// Position in [`ChannelKind::ALL`]: the slot of a [`PerChannel`].
    pub const fn index(self) -> usize {
        match self {
            ChannelKind::Trades => 0,
            ChannelKind::Positions => 1,
            ChannelKind::MarketData => 2,
        }
    }

    /// The part after the configurable prefix: `data_sync:<suffix>`.
    pub const fn suffix(self) -> &'static str {
        match self {
            ChannelKind::Trades => "trades",
            ChannelKind::Positions => "positions",
            ChannelKind::MarketData => "market_data",
        }
    }

    /// Exact, case-sensitive: Redis channel names are.
    pub fn from_suffix(suffix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.suffix() == suffix)
    }

    /// The one event `type` this channel carries (EVENTS.md).
    pub const fn event_type(self) -> &'static str {
        match self {
            ChannelKind::Trades => "trade_executed",
            ChannelKind::Positions => "position_updated",
            ChannelKind::MarketData => "market_data_updated",
        }
    }

    pub fn for_event_type(event_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.event_type() == event_type)
    }

    /// The channel's pub/sub name and stream key under `prefix`: `<prefix>:<suffix>`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}:{}", self.suffix())
    }

    /// Every channel's name under `prefix`.
    pub fn names(prefix: &str) -> PerChannel<String> {
        PerChannel::from_fn(|kind| kind.name(prefix))
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// One value per channel, indexed by [`ChannelKind`]: counters, names, transports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerChannel<T>([T; 3]);

impl<T> PerChannel<T> {
    pub fn from_fn(mut value: impl FnMut(ChannelKind) -> T) -> Self {
        PerChannel(ChannelKind::ALL.map(&mut value))
    }

    /// Each channel with its value, in [`ChannelKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ChannelKind, &T)> {
        ChannelKind::ALL.into_iter().zip(self.0.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> PerChannel<U> {
        PerChannel(self.0.map(f))
    }
}

impl<T> Index<ChannelKind> for PerChannel<T> {
    type Output = T;
    fn index(&self, kind: ChannelKind) -> &T {
        &self.0[kind.index()]
    }
}

impl<T> IndexMut<ChannelKind> for PerChannel<T> {
    fn index_mut(&mut self, kind: ChannelKind) -> &mut T {
        &mut self.0[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_all_and_names_carry_the_prefix() {
        for (i, kind) in ChannelKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(ChannelKind::from_suffix(kind.suffix()), Some(kind));
            assert_eq!(ChannelKind::for_event_type(kind.event_type()), Some(kind));
        }
        let names = ChannelKind::names("p:q");
        assert_eq!(names[ChannelKind::MarketData], "p:q:market_data");
        assert_eq!(
            names.values().cloned().collect::<Vec<_>>(),
            ["p:q:trades", "p:q:positions", "p:q:market_data"]
        );
        assert_eq!(ChannelKind::from_suffix("Trades"), None);
    }

    #[test]
    fn per_channel_indexes_by_kind() {
        let mut counts = PerChannel::<u32>::default();
        counts[ChannelKind::Positions] += 2;
        assert_eq!(counts.map(|c| c * 10)[ChannelKind::Positions], 20);
        assert_eq!(counts[ChannelKind::Trades], 0);
    }
}
