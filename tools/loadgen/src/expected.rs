//! What a database must hold after a workload, and the comparison of stored rows with it.
//!
//! The expected aggregates are summed here from the generator's own values with plain `Decimal`
//! arithmetic. This module must not import `trading-sync` — never the daemon's decoder or fold —
//! so that a bug there shows up as a mismatch instead of being mirrored by the check.
//! [`compare`] is pure; reading the rows from PostgreSQL is [`crate::check`]'s.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::generate::{Message, MessageKind, Trade};

/// One `analytics.portfolio_summary` row's trade sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortfolioRow {
    pub account_id: String,
    pub symbol: String,
    pub trade_count: i64,
    pub net_quantity: Decimal,
    pub total_value: Decimal,
    pub realized_pnl: Decimal,
    pub commission: Decimal,
    pub last_trade_at: DateTime<Utc>,
}

/// One `analytics.performance_metrics` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub strategy: String,
    pub date: NaiveDate,
    pub total_trades: i64,
    pub winning_trades: i64,
    pub realized_pnl: Decimal,
    pub volume: Decimal,
    pub notional: Decimal,
    pub commission: Decimal,
}

/// The newest position snapshot of one (account, symbol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRow {
    pub account_id: String,
    pub symbol: String,
    pub quantity: Decimal,
    pub avg_price: Decimal,
    pub realized_pnl: Decimal,
    pub market_value: Decimal,
    pub unrealized_pnl: Decimal,
    pub as_of: DateTime<Utc>,
}

/// The newest bar of one symbol: every portfolio row of the symbol is marked to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkRow {
    pub symbol: String,
    pub close: Decimal,
    pub at: DateTime<Utc>,
}

/// Message counts of a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub trades: u64,
    pub duplicates: u64,
    pub positions: u64,
    pub bars: u64,
}

/// What the database must hold after a workload: written to JSON by the load generator so a
/// run can be checked later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub id_prefix: String,
    /// Trade seqs `first_seq..=last_seq`, each published at least once.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Distinct trades.
    pub trades: u64,
    pub portfolio: Vec<PortfolioRow>,
    pub metrics: Vec<MetricsRow>,
    pub positions: Vec<PositionRow>,
    pub marks: Vec<MarkRow>,
}

impl Expected {
    pub fn trade_id(&self, seq: u64) -> String {
        format!("{}-{seq:010}", self.id_prefix)
    }
}

/// Running sums, fed in publish order with the originals only.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    id_prefix: String,
    first_seq: Option<u64>,
    last_seq: u64,
    trades: u64,
    portfolio: BTreeMap<(String, String), PortfolioRow>,
    metrics: BTreeMap<(String, NaiveDate), MetricsRow>,
    positions: BTreeMap<(String, String), PositionRow>,
    marks: BTreeMap<String, MarkRow>,
}

impl Tally {
    pub(crate) fn new(id_prefix: &str) -> Self {
        Tally {
            id_prefix: id_prefix.into(),
            first_seq: None,
            last_seq: 0,
            trades: 0,
            portfolio: BTreeMap::new(),
            metrics: BTreeMap::new(),
            positions: BTreeMap::new(),
            marks: BTreeMap::new(),
        }
    }

    pub(crate) fn add_trade(&mut self, t: &Trade) {
        self.first_seq.get_or_insert(t.seq);
        self.last_seq = t.seq;
        self.trades += 1;
        let account = t.account_id();
        let symbol = t.symbol().to_string();
        let executed = t.executed();
        let row = self
            .portfolio
            .entry((account.clone(), symbol.clone()))
            .or_insert_with(|| PortfolioRow {
                account_id: account,
                symbol,
                trade_count: 0,
                net_quantity: Decimal::ZERO,
                total_value: Decimal::ZERO,
                realized_pnl: Decimal::ZERO,
                commission: Decimal::ZERO,
                last_trade_at: executed,
            });
        row.trade_count += 1;
        row.net_quantity += t.side_sign(t.quantity);
        row.total_value += t.total();
        row.realized_pnl += t.realized_pnl;
        row.commission += t.commission;
        row.last_trade_at = row.last_trade_at.max(executed);
        if let Some(strategy) = &t.strategy {
            let date = executed
                .with_timezone(&chrono_tz::America::New_York)
                .date_naive();
            let m = self
                .metrics
                .entry((strategy.to_string(), date))
                .or_insert_with(|| MetricsRow {
                    strategy: strategy.to_string(),
                    date,
                    total_trades: 0,
                    winning_trades: 0,
                    realized_pnl: Decimal::ZERO,
                    volume: Decimal::ZERO,
                    notional: Decimal::ZERO,
                    commission: Decimal::ZERO,
                });
            m.total_trades += 1;
            m.winning_trades += i64::from(t.is_win());
            m.realized_pnl += t.realized_pnl;
            m.volume += t.quantity;
            m.notional += t.total().abs();
            m.commission += t.commission;
        }
    }

    /// Last writer by as_of wins; an equal as_of published later wins too.
    pub(crate) fn add_position(&mut self, p: PositionRow) {
        let key = (p.account_id.clone(), p.symbol.clone());
        match self.positions.get(&key) {
            Some(kept) if kept.as_of > p.as_of => {}
            _ => {
                self.positions.insert(key, p);
            }
        }
    }

    /// Only a strictly newer bar moves the price.
    pub(crate) fn add_bar(&mut self, bar: MarkRow) {
        match self.marks.get(&bar.symbol) {
            Some(kept) if kept.at >= bar.at => {}
            _ => {
                self.marks.insert(bar.symbol.clone(), bar);
            }
        }
    }

    pub(crate) fn expected(&self) -> Expected {
        Expected {
            id_prefix: self.id_prefix.clone(),
            first_seq: self.first_seq.unwrap_or(1),
            last_seq: self.last_seq,
            trades: self.trades,
            portfolio: self.portfolio.values().cloned().collect(),
            metrics: self.metrics.values().cloned().collect(),
            positions: self.positions.values().cloned().collect(),
            marks: self.marks.values().cloned().collect(),
        }
    }
}

/// Counts of what a list of messages holds.
pub fn published(messages: &[Message]) -> Published {
    let mut p = Published::default();
    for m in messages {
        match m.kind {
            MessageKind::Trade { .. } => p.trades += 1,
            MessageKind::Duplicate { .. } => p.duplicates += 1,
            MessageKind::Position => p.positions += 1,
            MessageKind::Bar => p.bars += 1,
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Comparison

/// The outcome of checking a database against [`Expected`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub trades_expected: u64,
    /// Ledger rows with an id of the workload.
    pub trades_in_ledger: u64,
    /// Trades missing from the ledger or from the aggregates.
    pub lost: u64,
    /// Trades counted more than once: the aggregates' trade counts above the ledger's, or any
    /// row's count above what was expected.
    pub duplicated: u64,
    /// Expected rows missing or different, and rows nobody expected.
    pub mismatched_rows: u64,
    /// The first differences, for a human.
    pub mismatches: Vec<String>,
}

impl Report {
    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.mismatched_rows == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trades expected {}, in ledger {}, lost {}, duplicated {}, mismatched rows {}",
            self.trades_expected,
            self.trades_in_ledger,
            self.lost,
            self.duplicated,
            self.mismatched_rows
        )?;
        for m in &self.mismatches {
            write!(f, "\n  {m}")?;
        }
        Ok(())
    }
}

/// One `portfolio_summary` row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPortfolio {
    pub trades: PortfolioRow,
    /// `last_trade_at` may be NULL in the table (a snapshot-only row).
    pub has_last_trade_at: bool,
    pub position: Option<PositionRow>,
    pub mark: Option<(Decimal, DateTime<Utc>)>,
}

/// What [`crate::verify`] reads, separated from the comparison so that the comparison is testable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub ledger: u64,
    pub portfolio: Vec<StoredPortfolio>,
    pub metrics: Vec<MetricsRow>,
}

const MAX_LISTED: usize = 10;

/// Compares stored rows with the expected ones. Rows of the workload's accounts are assumed to
/// hold nothing but this workload (a fresh database, or the same workload replayed).
pub fn compare(expected: &Expected, stored: &Stored) -> Report {
    let mut report = Report {
        trades_expected: expected.trades,
        trades_in_ledger: stored.ledger,
        ..Report::default()
    };
    fn note(report: &mut Report, text: String) {
        report.mismatched_rows += 1;
        if report.mismatches.len() < MAX_LISTED {
            report.mismatches.push(text);
        }
    }
    let (mut lost_rows, mut over_rows) = (0u64, 0u64);
    let (mut lost_metrics, mut over_metrics) = (0u64, 0u64);

    let positions: BTreeMap<(&str, &str), &PositionRow> = expected
        .positions
        .iter()
        .map(|p| ((p.account_id.as_str(), p.symbol.as_str()), p))
        .collect();
    let marks: BTreeMap<&str, &MarkRow> = expected
        .marks
        .iter()
        .map(|m| (m.symbol.as_str(), m))
        .collect();
    let mut stored_rows: BTreeMap<(&str, &str), &StoredPortfolio> = stored
        .portfolio
        .iter()
        .map(|r| ((r.trades.account_id.as_str(), r.trades.symbol.as_str()), r))
        .collect();
    for want in &expected.portfolio {
        let key = (want.account_id.as_str(), want.symbol.as_str());
        let Some(got) = stored_rows.remove(&key) else {
            lost_rows += want.trade_count as u64;
            note(&mut report, format!("portfolio {key:?}: missing"));
            continue;
        };
        let count_diff = got.trades.trade_count - want.trade_count;
        if count_diff > 0 {
            over_rows += count_diff as u64;
        } else {
            lost_rows += count_diff.unsigned_abs();
        }
        if got.trades != *want || !got.has_last_trade_at {
            note(
                &mut report,
                format!(
                    "portfolio {key:?}: stored {:?}, expected {want:?}",
                    got.trades
                ),
            );
            continue;
        }
        let want_position = positions.get(&key).copied();
        if got.position.as_ref() != want_position {
            note(
                &mut report,
                format!(
                    "position {key:?}: stored {:?}, expected {want_position:?}",
                    got.position
                ),
            );
            continue;
        }
        let want_mark = marks.get(key.1).map(|m| (m.close, m.at));
        if got.mark != want_mark {
            note(
                &mut report,
                format!(
                    "mark {key:?}: stored {:?}, expected {want_mark:?}",
                    got.mark
                ),
            );
        }
    }
    for (key, extra) in stored_rows {
        over_rows += extra.trades.trade_count.max(0) as u64;
        note(&mut report, format!("portfolio {key:?}: not expected"));
    }

    let mut stored_metrics: BTreeMap<(&str, NaiveDate), &MetricsRow> = stored
        .metrics
        .iter()
        .map(|m| ((m.strategy.as_str(), m.date), m))
        .collect();
    for want in &expected.metrics {
        let key = (want.strategy.as_str(), want.date);
        let Some(got) = stored_metrics.remove(&key) else {
            lost_metrics += want.total_trades as u64;
            note(&mut report, format!("metrics {key:?}: missing"));
            continue;
        };
        let diff = got.total_trades - want.total_trades;
        if diff > 0 {
            over_metrics += diff as u64;
        } else {
            lost_metrics += diff.unsigned_abs();
        }
        if got != want {
            note(
                &mut report,
                format!("metrics {key:?}: stored {got:?}, expected {want:?}"),
            );
        }
    }
    for (key, extra) in stored_metrics {
        over_metrics += extra.total_trades as u64;
        note(&mut report, format!("metrics {key:?}: not expected"));
    }

    let counted: i64 = stored.portfolio.iter().map(|r| r.trades.trade_count).sum();
    let over_ledger = (counted.max(0) as u64).saturating_sub(stored.ledger);
    report.lost = expected
        .trades
        .saturating_sub(stored.ledger)
        .max(lost_rows)
        .max(lost_metrics);
    report.duplicated = over_ledger.max(over_rows).max(over_metrics);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::workload;
    use chrono::Duration;
    use std::str::FromStr;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn stored_from(expected: &Expected) -> Stored {
        Stored {
            ledger: expected.trades,
            portfolio: expected
                .portfolio
                .iter()
                .map(|p| StoredPortfolio {
                    trades: p.clone(),
                    has_last_trade_at: true,
                    position: expected
                        .positions
                        .iter()
                        .find(|x| x.account_id == p.account_id && x.symbol == p.symbol)
                        .cloned(),
                    mark: expected
                        .marks
                        .iter()
                        .find(|m| m.symbol == p.symbol)
                        .map(|m| (m.close, m.at)),
                })
                .collect(),
            metrics: expected.metrics.clone(),
        }
    }

    #[test]
    fn compare_finds_loss_duplication_and_drift() {
        let (_, expected) = workload(8, 3_000, 0.0);
        let exact = stored_from(&expected);
        let report = compare(&expected, &exact);
        assert!(report.is_exact(), "{report}");
        assert_eq!(report.trades_in_ledger, 3_000);

        // A trade counted twice.
        let mut twice = exact.clone();
        twice.portfolio[0].trades.trade_count += 1;
        twice.portfolio[0].trades.commission += dec("1.25");
        let r = compare(&expected, &twice);
        assert_eq!((r.lost, r.duplicated, r.mismatched_rows), (0, 1, 1), "{r}");

        // Two trades lost from ledger and sums.
        let mut lost = exact.clone();
        lost.ledger -= 2;
        lost.portfolio[3].trades.trade_count -= 2;
        let r = compare(&expected, &lost);
        assert_eq!((r.lost, r.duplicated, r.mismatched_rows), (2, 0, 1), "{r}");

        // A stale bar moved a price back; a row nobody expected.
        let mut drift = exact.clone();
        let mark = drift.portfolio[1].mark.as_mut().expect("marked");
        mark.1 -= Duration::days(1);
        drift.metrics.push(MetricsRow {
            strategy: "ghost".into(),
            ..expected.metrics[0].clone()
        });
        let r = compare(&expected, &drift);
        assert_eq!(r.mismatched_rows, 2, "{r}");
        assert_eq!(r.duplicated, expected.metrics[0].total_trades as u64);

        let mut missing = exact;
        missing.metrics.remove(0);
        let r = compare(&expected, &missing);
        assert_eq!(r.lost, expected.metrics[0].total_trades as u64);
    }

    #[test]
    fn expected_round_trips_through_json() {
        let (_, expected) = workload(2, 1_000, 0.0);
        let text = serde_json::to_string(&expected).unwrap();
        assert!(text.contains("\"net_quantity\":\""), "decimals as strings");
        let back: Expected = serde_json::from_str(&text).unwrap();
        assert_eq!(back, expected);
    }
}
