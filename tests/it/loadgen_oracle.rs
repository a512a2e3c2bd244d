//! The load generator (tools/loadgen) against the daemon's decoder and fold: two independent
//! computations of the same thing. The generator must not import the daemon, so this is where the
//! two are compared; a disagreement is a bug in one of them. Pure: no database, no Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use loadgen::{workload, MarkRow, Message, MessageKind, MetricsRow, PortfolioRow, PositionRow};
use rust_decimal::Decimal;
use trading_sync::apply::fold::fold;
use trading_sync::events::{decode, ChannelKind, DecodeLimits, Event};

/// The daemon's channel for a generator message, by suffix: the one thing the two share.
fn channel(m: &Message) -> ChannelKind {
    ChannelKind::from_suffix(m.channel.suffix()).expect("a daemon channel")
}

#[test]
fn the_generators_channels_are_the_daemons() {
    let daemon: Vec<&str> = ChannelKind::ALL.iter().map(|c| c.suffix()).collect();
    let generator: Vec<&str> = loadgen::Channel::ALL.iter().map(|c| c.suffix()).collect();
    assert_eq!(generator, daemon);
    // Each kind of message goes where the daemon expects its event type.
    let (messages, _) = workload(6, 2_000, 0.05);
    let limits = DecodeLimits::default();
    let mut seen = BTreeSet::new();
    for m in &messages {
        let event = decode(channel(m), &m.payload, &limits).expect("decodes");
        assert_eq!(event.channel(), channel(m));
        seen.insert(channel(m).suffix());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn ids_sort_in_publish_order_and_duplicates_follow_their_original() {
    let (messages, expected) = workload(5, 20_000, 0.02);
    let limits = DecodeLimits::default();
    let mut ids = Vec::new();
    let mut first_at = HashMap::new();
    let mut duplicates = 0;
    for (i, m) in messages.iter().enumerate() {
        match m.kind {
            MessageKind::Trade { seq } => {
                let Ok(Event::Trade(t)) = decode(channel(m), &m.payload, &limits) else {
                    panic!("trade {seq} does not decode")
                };
                assert_eq!(t.trade_id, expected.trade_id(seq));
                ids.push(t.trade_id);
                first_at.insert(seq, (i, m.payload.clone()));
            }
            MessageKind::Duplicate { seq } => {
                duplicates += 1;
                let (at, payload) = &first_at[&seq];
                assert!(*at < i);
                assert_eq!(payload, &m.payload);
            }
            _ => {}
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    // 2% of 20,000, give or take.
    assert!((300..500).contains(&duplicates), "{duplicates}");
    assert_eq!(loadgen::published(&messages).duplicates, duplicates);
    assert_eq!(expected.trades, 20_000);
}

/// The generator's own sums agree with what the daemon's decoder and fold make of the bytes.
#[test]
fn expected_agrees_with_decode_and_fold() {
    let (messages, expected) = workload(21, 30_000, 0.03);
    let limits = DecodeLimits::default();
    let mut seen = HashSet::new();
    let mut trades = Vec::new();
    let mut utc_ne_ny = 0;
    let mut days = BTreeSet::new();
    let mut positions = BTreeMap::new();
    let mut marks: BTreeMap<String, (DateTime<Utc>, Decimal)> = BTreeMap::new();
    for m in &messages {
        match decode(channel(m), &m.payload, &limits)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&m.payload)))
        {
            Event::Trade(t) => {
                if seen.insert(t.trade_id.clone()) {
                    utc_ne_ny += usize::from(t.executed_at.date_naive() != t.trade_date);
                    days.insert(t.trade_date);
                    trades.push(t);
                }
            }
            Event::Position(p) => {
                let key = (p.account_id.clone(), p.symbol.clone());
                if positions.get(&key).is_none_or(|(at, _)| *at <= p.as_of) {
                    positions.insert(key, (p.as_of, p));
                }
            }
            Event::MarketData(b) => {
                if marks.get(&b.symbol).is_none_or(|(at, _)| *at < b.timestamp) {
                    marks.insert(b.symbol.clone(), (b.timestamp, b.close));
                }
            }
        }
    }
    assert!(utc_ne_ny > 1_000, "{utc_ne_ny}");
    assert!(days.len() >= 7, "{days:?}");
    let folded = fold(&trades);
    let portfolio: Vec<PortfolioRow> = folded
        .portfolio
        .iter()
        .map(|((a, s), d)| PortfolioRow {
            account_id: a.to_string(),
            symbol: s.to_string(),
            trade_count: d.trade_count,
            net_quantity: d.net_quantity,
            total_value: d.total_value,
            realized_pnl: d.realized_pnl,
            commission: d.commission,
            last_trade_at: d.last_trade_at.unwrap(),
        })
        .collect();
    assert_eq!(portfolio, expected.portfolio);
    let metrics: Vec<MetricsRow> = folded
        .metrics
        .iter()
        .map(|((s, date), d)| MetricsRow {
            strategy: s.to_string(),
            date: *date,
            total_trades: d.total_trades,
            winning_trades: d.winning_trades,
            realized_pnl: d.realized_pnl,
            volume: d.volume,
            notional: d.notional,
            commission: d.commission,
        })
        .collect();
    assert_eq!(metrics, expected.metrics);
    let positions: Vec<PositionRow> = positions
        .into_values()
        .map(|(_, p)| PositionRow {
            account_id: p.account_id,
            symbol: p.symbol,
            quantity: p.quantity.unwrap(),
            avg_price: p.avg_price.unwrap(),
            realized_pnl: p.realized_pnl.unwrap(),
            market_value: p.market_value.unwrap(),
            unrealized_pnl: p.unrealized_pnl.unwrap(),
            as_of: p.as_of,
        })
        .collect();
    assert_eq!(positions, expected.positions);
    let marks: Vec<MarkRow> = marks
        .into_iter()
        .map(|(symbol, (at, close))| MarkRow { symbol, close, at })
        .collect();
    assert_eq!(marks, expected.marks);
    assert!(!expected.marks.is_empty() && !expected.positions.is_empty());
}
