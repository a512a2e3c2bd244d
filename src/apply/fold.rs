//! Pure batch planning: decode a batch of raw messages and fold it into per-key deltas.
//!
//! Everything the writer sends to PostgreSQL is decided here, without I/O, so that the rules
//! (dedupe by trade_id, last writer wins, newer price wins, sorted keys) are unit- and
//! property-tested. Order inside a batch never matters: every fold is commutative.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use crate::core::queue::Inbound;
use crate::core::PerChannel;
use crate::events::{
    decode, ChannelKind, DecodeError, DecodeLimits, Event, MarketDataUpdated, PositionUpdated,
    TradeExecuted,
};

/// A message that cannot be applied, with everything the dead-letter table records.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub channel: ChannelKind,
    pub payload: Vec<u8>,
    pub error: String,
    /// Short stable label for metrics ("not_json", "database", …).
    pub kind: &'static str,
    pub event_type: Option<String>,
    pub trade_id: Option<String>,
    /// The Redis stream entry id, when it came from a stream.
    pub stream_id: Option<String>,
    pub delivery_count: Option<i32>,
    /// The message's size as received (`payload` may be only its first bytes).
    pub size: usize,
    /// SHA-256 of the whole message, when `payload` is cut.
    pub sha256: Option<[u8; 32]>,
}

impl DeadLetter {
    /// Whether `payload` is the whole message: a replay can re-decode it.
    pub(crate) fn replayable(&self) -> bool {
        self.payload.len() == self.size
    }
}

impl DeadLetter {
    /// A dead letter for `message` with a reason and no event context.
    pub(crate) fn new(message: &Inbound, kind: &'static str, error: String) -> Self {
        DeadLetter {
            channel: message.channel,
            payload: message.payload.clone(),
            error,
            kind,
            event_type: None,
            trade_id: None,
            stream_id: message.ack.as_ref().map(|a| a.id.clone()),
            delivery_count: message
                .ack
                .as_ref()
                .and_then(|a| a.deliveries)
                .map(|d| d as i32),
            size: message
                .oversized
                .as_ref()
                .map_or(message.payload.len(), |o| o.size),
            sha256: message
                .oversized
                .as_ref()
                .filter(|o| !o.whole(&message.payload))
                .map(|o| o.sha256),
        }
    }

    pub(crate) fn from_decode(message: &Inbound, error: &DecodeError) -> Self {
        DeadLetter {
            event_type: error.event_type().map(str::to_owned),
            trade_id: error.trade_id().map(str::to_owned),
            ..DeadLetter::new(message, error.kind(), error.to_string())
        }
    }
}

/// What one batch asks of the database.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// Unique by trade_id, sorted by it (the ledger insert's lock order).
    pub trades: Vec<TradeExecuted>,
    /// The newest snapshot per (account, symbol).
    pub positions: BTreeMap<(String, String), PositionUpdated>,
    /// The newest bar per symbol.
    pub marks: BTreeMap<String, MarketDataUpdated>,
    /// Symbols with a new yahoo bar, for the indicator job.
    pub yahoo_symbols: BTreeSet<String>,
    pub dead_letters: Vec<DeadLetter>,
    /// Trades whose trade_id appeared earlier in the same batch.
    pub duplicates_in_batch: u64,
    /// Valid events per channel, for the received/applied metrics.
    pub valid: PerChannel<u64>,
}

pub fn plan(messages: &[Inbound], limits: &DecodeLimits) -> BatchPlan {
    let mut plan = BatchPlan::default();
    for message in messages {
        if let Some(reason) = message.ack.as_ref().and_then(|a| a.reject.as_ref()) {
            plan.dead_letters
                .push(DeadLetter::new(message, "stream_entry", reason.clone()));
            continue;
        }
        if let Some(cut) = &message.oversized {
            let kept = if cut.whole(&message.payload) {
                "kept whole".to_owned()
            } else {
                format!(
                    "its first {} bytes kept (over sync.dead_letter_max_bytes)",
                    message.payload.len()
                )
            };
            plan.dead_letters.push(DeadLetter::new(
                message,
                "oversized",
                format!(
                    "message of {} bytes is larger than sync.max_message_bytes ({}); {kept}",
                    cut.size, limits.max_message_bytes
                ),
            ));
            continue;
        }
        match decode(message.channel, &message.payload, limits) {
            Err(error) => plan
                .dead_letters
                .push(DeadLetter::from_decode(message, &error)),
            Ok(event) => {
                plan.valid[message.channel] += 1;
                match event {
                    Event::Trade(trade) => plan.trades.push(trade),
                    Event::Position(position) => {
                        let key = (position.account_id.clone(), position.symbol.clone());
                        match plan.positions.get(&key) {
                            // "Not older than" wins, so an equal as_of later in the batch wins too.
                            Some(kept) if kept.as_of > position.as_of => {}
                            _ => {
                                plan.positions.insert(key, position);
                            }
                        }
                    }
                    Event::MarketData(bar) => {
                        if bar.data_source == "yahoo" {
                            plan.yahoo_symbols.insert(bar.symbol.clone());
                        }
                        match plan.marks.get(&bar.symbol) {
                            Some(kept) if kept.timestamp >= bar.timestamp => {}
                            _ => {
                                plan.marks.insert(bar.symbol.clone(), bar);
                            }
                        }
                    }
                }
            }
        }
    }
    // A stable sort keeps a repeated trade_id's occurrences in arrival order, and dedup keeps
    // the first of each: the first one received is the one applied. (Sorting then deduping
    // spares a set of cloned ids.)
    plan.trades.sort_by(|a, b| a.trade_id.cmp(&b.trade_id));
    let received = plan.trades.len();
    plan.trades
        .dedup_by(|later, first| later.trade_id == first.trade_id);
    plan.duplicates_in_batch = (received - plan.trades.len()) as u64;
    plan
}

/// Sum of the trades of one (account, symbol).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortfolioDelta {
    pub trade_count: i64,
    pub net_quantity: Decimal,
    pub total_value: Decimal,
    pub realized_pnl: Decimal,
    pub commission: Decimal,
    pub last_trade_at: Option<DateTime<Utc>>,
}

/// Sum of the trades of one (strategy, exchange-local day).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsDelta {
    pub total_trades: i64,
    pub winning_trades: i64,
    pub realized_pnl: Decimal,
    /// Sum of traded quantities.
    pub volume: Decimal,
    /// Sum of |total_value|.
    pub notional: Decimal,
    pub commission: Decimal,
}

impl PortfolioDelta {
    pub(crate) fn add_trade(&mut self, trade: &TradeExecuted) {
        self.merge(&PortfolioDelta {
            trade_count: 1,
            net_quantity: trade.signed_quantity(),
            total_value: trade.total_value,
            realized_pnl: trade.realized_pnl,
            commission: trade.commission,
            last_trade_at: Some(trade.executed_at),
        });
    }

    pub(crate) fn merge(&mut self, other: &PortfolioDelta) {
        self.trade_count += other.trade_count;
        self.net_quantity += other.net_quantity;
        self.total_value += other.total_value;
        self.realized_pnl += other.realized_pnl;
        self.commission += other.commission;
        self.last_trade_at = self.last_trade_at.max(other.last_trade_at);
    }
}

impl MetricsDelta {
    pub(crate) fn add_trade(&mut self, trade: &TradeExecuted) {
        self.merge(&MetricsDelta {
            total_trades: 1,
            winning_trades: i64::from(trade.is_win),
            realized_pnl: trade.realized_pnl,
            volume: trade.quantity.unwrap_or_default(),
            notional: trade.total_value.abs(),
            commission: trade.commission,
        });
    }

    pub(crate) fn merge(&mut self, other: &MetricsDelta) {
        self.total_trades += other.total_trades;
        self.winning_trades += other.winning_trades;
        self.realized_pnl += other.realized_pnl;
        self.volume += other.volume;
        self.notional += other.notional;
        self.commission += other.commission;
    }
}

/// Deltas keyed and sorted: BTreeMap order is the lock order of the upserts, identical in every
/// instance, so concurrent writers cannot deadlock on these rows. The keys borrow the trades'
/// own strings: a batch folds thousands of trades, and cloning two `String`s per trade was a
/// tenth of the daemon's CPU (README, issue #16's profile).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Folded<'a> {
    pub portfolio: BTreeMap<(&'a str, &'a str), PortfolioDelta>,
    pub metrics: BTreeMap<(&'a str, NaiveDate), MetricsDelta>,
}

impl<'a> Folded<'a> {
    pub(crate) fn add(&mut self, trades: impl IntoIterator<Item = &'a TradeExecuted>) {
        for trade in trades {
            self.portfolio
                .entry((trade.account_id.as_str(), trade.symbol.as_str()))
                .or_default()
                .add_trade(trade);
            if let Some(strategy) = &trade.strategy {
                self.metrics
                    .entry((strategy.as_str(), trade.trade_date))
                    .or_default()
                    .add_trade(trade);
            }
        }
    }

    /// Folding in parts and merging equals folding at once (a property test checks it).
    #[cfg(test)]
    fn merge(&mut self, other: &Folded<'a>) {
        for (k, v) in &other.portfolio {
            self.portfolio.entry(*k).or_default().merge(v);
        }
        for (k, v) in &other.metrics {
            self.metrics.entry(*k).or_default().merge(v);
        }
    }
}

pub fn fold<'a>(trades: impl IntoIterator<Item = &'a TradeExecuted>) -> Folded<'a> {
    let mut folded = Folded::default();
    folded.add(trades);
    folded
}

/// What one transaction writes: a whole plan, or one account partition of it
/// ([`BatchPlan::split_by_account`]).
#[derive(Debug, Default)]
pub struct Writes<'a> {
    /// Sorted by trade_id, as in the plan.
    pub trades: Vec<&'a TradeExecuted>,
    pub positions: Vec<&'a PositionUpdated>,
    pub marks: Vec<&'a MarketDataUpdated>,
    pub dead_letters: &'a [DeadLetter],
}

impl Writes<'_> {
    pub fn is_empty(&self) -> bool {
        self.trades.is_empty()
            && self.positions.is_empty()
            && self.marks.is_empty()
            && self.dead_letters.is_empty()
    }
}

/// The partition of `account_id` among `parts`: FNV-1a of its bytes, so every instance and
/// every run puts an account in the same partition (std's hasher is seeded per process).
pub fn partition_of(account_id: &str, parts: usize) -> usize {
    let hash = account_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % parts.max(1) as u64) as usize
}

impl BatchPlan {
    /// The whole plan, for one transaction.
    pub fn writes(&self) -> Writes<'_> {
        Writes {
            trades: self.trades.iter().collect(),
            positions: self.positions.values().collect(),
            marks: self.marks.values().collect(),
            dead_letters: &self.dead_letters,
        }
    }

    /// The plan cut into `parts` account partitions, and what belongs to none.
    ///
    /// A trade, its ledger row and its portfolio row belong to one account, so each partition
    /// commits its trades exactly once on its own, and partitions touch disjoint ledger and
    /// portfolio rows: they can commit in parallel. Position snapshots go with their account.
    /// What is left — the marks, which update every account's row of a symbol, and the dead
    /// letters, which a retry would insert again — is written after every partition committed:
    /// a mark then also finds the rows this batch's trades created, as in one transaction.
    pub fn split_by_account(&self, parts: usize) -> (Vec<Writes<'_>>, Writes<'_>) {
        let parts = parts.max(1);
        let mut shares: Vec<Writes<'_>> = (0..parts).map(|_| Writes::default()).collect();
        for trade in &self.trades {
            shares[partition_of(&trade.account_id, parts)]
                .trades
                .push(trade);
        }
        for position in self.positions.values() {
            shares[partition_of(&position.account_id, parts)]
                .positions
                .push(position);
        }
        let rest = Writes {
            marks: self.marks.values().collect(),
            dead_letters: &self.dead_letters,
            ..Writes::default()
        };
        (shares, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Side;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn trade() -> impl Strategy<Value = TradeExecuted> {
        (
            0u32..5_000,
            0usize..3,
            0usize..3,
            prop::option::of(0usize..2),
            any::<bool>(),
            1i64..1_000_000,
            -1_000_000i64..1_000_000,
            0i64..10_000,
            any::<bool>(),
            0i64..200_000,
        )
            .prop_map(|(id, acct, sym, strat, sell, qty, pnl, fee, win, secs)| {
                let quantity = Decimal::new(qty, 2);
                let executed_at = Utc.with_ymd_and_hms(2025, 11, 24, 0, 0, 0).unwrap()
                    + chrono::Duration::seconds(secs);
                TradeExecuted {
                    trade_id: format!("T{id}"),
                    account_id: format!("A{acct}"),
                    symbol: ["AAPL", "MSFT", "SPY"][sym].into(),
                    strategy: strat.map(|s| ["alpha", "beta"][s].to_owned()),
                    side: Some(if sell { Side::Sell } else { Side::Buy }),
                    quantity: Some(quantity),
                    price: Some(Decimal::new(10_000, 2)),
                    total_value: if sell {
                        -quantity * Decimal::from(100)
                    } else {
                        quantity * Decimal::from(100)
                    },
                    realized_pnl: Decimal::new(pnl, 4),
                    commission: Decimal::new(fee, 2),
                    is_win: win,
                    executed_at,
                    trade_date: executed_at.date_naive(),
                }
            })
    }

    proptest! {
        /// Any batch split, folded per batch and merged, equals folding everything at once —
        /// which is what lets the writer batch freely and split batches on errors.
        #[test]
        fn any_batch_split_gives_the_same_totals(
            trades in prop::collection::vec(trade(), 0..200),
            cuts in prop::collection::vec(0usize..200, 0..8),
        ) {
            let whole = fold(&trades);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(trades.len())).collect();
            cuts.sort_unstable();
            let mut merged = Folded::default();
            let mut start = 0;
            for cut in cuts.into_iter().chain([trades.len()]) {
                merged.merge(&fold(&trades[start..cut]));
                start = cut;
            }
            prop_assert_eq!(&merged, &whole);
            let count: i64 = whole.portfolio.values().map(|d| d.trade_count).sum();
            prop_assert_eq!(count, trades.len() as i64);
        }

        /// Every trade and snapshot lands in exactly one partition, an account's all in the
        /// same one, each partition still sorted by trade_id; marks and dead letters in none.
        #[test]
        fn partitions_cover_the_plan_once_by_account(
            trades in prop::collection::vec(trade(), 0..200),
            parts in 1usize..6,
        ) {
            let mut plan = BatchPlan { trades, ..BatchPlan::default() };
            plan.trades.sort_by(|a, b| a.trade_id.cmp(&b.trade_id));
            plan.trades.dedup_by(|a, b| a.trade_id == b.trade_id);
            let (shares, rest) = plan.split_by_account(parts);
            prop_assert_eq!(shares.len(), parts);
            prop_assert!(rest.trades.is_empty() && rest.positions.is_empty());
            let mut seen: Vec<&str> = Vec::new();
            for (k, share) in shares.iter().enumerate() {
                prop_assert!(share.trades.windows(2).all(|w| w[0].trade_id < w[1].trade_id));
                for t in &share.trades {
                    prop_assert_eq!(partition_of(&t.account_id, parts), k);
                    seen.push(&t.trade_id);
                }
            }
            seen.sort_unstable();
            let all: Vec<&str> = plan.trades.iter().map(|t| t.trade_id.as_str()).collect();
            prop_assert_eq!(seen, all);
        }

        #[test]
        fn order_does_not_matter(trades in prop::collection::vec(trade(), 0..100), seed in any::<u64>()) {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut shuffled = trades.clone();
            shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            prop_assert_eq!(fold(&trades), fold(&shuffled));
        }
    }

    fn inbound(channel: ChannelKind, json: &str) -> Inbound {
        Inbound::new(channel, json.as_bytes().to_vec())
    }

    #[test]
    fn plan_dedupes_trades_and_keeps_the_newest_snapshot_and_bar() {
        let t = |id: &str| {
            inbound(
                ChannelKind::Trades,
                &format!(
                    r#"{{"type": "trade_executed", "data": {{"trade_id": "{id}", "account_id": "A", "symbol": "S", "quantity": 1, "price": 2}}, "timestamp": "2025-11-24T15:00:00"}}"#
                ),
            )
        };
        let p = |qty: u32, at: &str| {
            inbound(
                ChannelKind::Positions,
                &format!(
                    r#"{{"type": "position_updated", "data": {{"account_id": "A", "symbol": "S", "quantity": {qty}, "as_of": "{at}"}}, "timestamp": "2025-11-24T15:00:00"}}"#
                ),
            )
        };
        let b = |close: &str, at: &str, source: &str| {
            inbound(
                ChannelKind::MarketData,
                &format!(
                    r#"{{"type": "market_data_updated", "data": {{"symbol": "S", "timestamp": "{at}", "open": 1, "high": 9, "low": 1, "close": {close}, "volume": 5, "data_source": "{source}"}}, "timestamp": "2025-11-24T15:00:00"}}"#
                ),
            )
        };
        let messages = vec![
            t("b"),
            t("a"),
            t("b"),
            p(7, "2025-11-24T15:00:02"),
            p(9, "2025-11-24T15:00:01"),
            b("3", "2025-11-24T16:00:00", "polygon"),
            b("2", "2025-11-24T15:00:00", "yahoo"),
            inbound(ChannelKind::Trades, "nope"),
        ];
        let limits = DecodeLimits::default();
        let plan = plan(&messages, &limits);
        let ids: Vec<&str> = plan.trades.iter().map(|t| t.trade_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "unique and sorted");
        assert_eq!(plan.duplicates_in_batch, 1);
        let snapshot = &plan.positions[&("A".to_owned(), "S".to_owned())];
        assert_eq!(snapshot.quantity, Some(Decimal::from(7)));
        assert_eq!(plan.marks["S"].close, Decimal::from(3));
        assert_eq!(plan.yahoo_symbols.iter().collect::<Vec<_>>(), ["S"]);
        assert_eq!(plan.dead_letters.len(), 1);
        assert_eq!(plan.dead_letters[0].kind, "not_json");
        assert_eq!(plan.valid.values().copied().collect::<Vec<_>>(), [3, 2, 2]);
    }
}
