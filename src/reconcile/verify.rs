//! `trading-sync verify`: proves the books from the ledger.
//!
//! Three checks, all in one `REPEATABLE READ READ ONLY` transaction, so they read one snapshot:
//! a batch committing while verify runs is either wholly seen (its ledger rows and its deltas) or
//! not at all, and never shows up as a difference.
//!
//! 1. **Aggregates recomputed from the ledger.** Every applied trade since V21 carries its
//!    contribution in `analytics.applied_trades`; what the aggregates held before (and what
//!    retention retired since) is in `analytics.ledger_baseline_*`. Per key, the stored row must
//!    equal baseline + sum of contributions, column by column: portfolio_summary's trade_count,
//!    net_quantity, total_value, realized_pnl, commission; performance_metrics' total_trades,
//!    winning_trades, realized_pnl, volume, notional, commission. Not checked: last_trade_at (a
//!    maximum, not a sum, and not kept by the baseline), position snapshots and prices (last
//!    writer wins: nothing to recompute them from). A stored row without any expectation must
//!    hold zeros (a row created by a position snapshot or a price has trade_count 0 and is
//!    fine); a key the ledger expects with no stored row is reported with stored "missing" for
//!    each column whose expectation is not zero.
//! 2. **Trades missing from the ledger.** `execution.trades` rows older than the grace period
//!    (`[reconcile] grace_ms`, on the database clock: their event may still be in flight) that
//!    the ledger lacks. With `maintenance.ledger_retention_days` > 0 only trades executed within
//!    that many days are checked: retention retires a ledger row once both its applied_at and its
//!    executed_at are older than that horizon, so an older trade without a ledger row may well
//!    have been applied, and cannot be told apart from one that was not. A row with no side
//!    (neither the trade nor its order says buy or sell) is marked: reconcile cannot apply it.
//! 3. **Applied trades that contradict their row.** A ledger row with a contribution whose
//!    trade row says another account, symbol, strategy, signed quantity (skipped when the row has
//!    no side), price, commission or trading date (executed_at in the exchange time zone).
//!    realized_pnl and total_value are not compared: an event may carry a realized_pnl the row
//!    lacks, and a total_value other than quantity × price.
//!
//! Filters. `--account A` checks portfolio_summary rows of A and skips performance_metrics (its
//! rows have no account: a strategy's day mixes accounts, so no subset of it can be verified);
//! `--strategy S` checks performance_metrics rows of S and skips portfolio_summary (a portfolio
//! row mixes strategies). Both given: each aggregate check is filtered by its own key, and the
//! trade checks (missing, contradictions) take every trade that feeds a checked row — of account
//! A *or* of strategy S — so nothing that could explain a reported difference is left out. A
//! trade's strategy is its row's, else its order's; an empty strategy is none.
//!
//! Cost: each check is one set-based statement (grouped sums, hash joins); on a 10M-row ledger
//! the whole proof takes seconds, and it holds no lock a writer waits for.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use std::time::Duration;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};

/// Stored portfolio rows in scope ($1 = account or NULL).
const COUNT_PORTFOLIO: &str = "\
SELECT count(*)::int8 FROM analytics.portfolio_summary WHERE $1::text IS NULL OR account_id = $1";

/// Stored performance rows in scope ($1 = strategy or NULL).
const COUNT_METRICS: &str = "\
SELECT count(*)::int8 FROM analytics.performance_metrics WHERE $1::text IS NULL OR strategy = $1";

/// Ledger rows whose contribution a check sums ($1 = account, $2 = strategy, either NULL): with no
/// filter all of them; else those of the account or of the strategy (see the filters above).
/// Rows without a contribution (before V21) are in the baseline and checked through it.
const COUNT_LEDGER: &str = "\
SELECT count(*)::int8
  FROM analytics.applied_trades
 WHERE trade_date IS NOT NULL
   AND (($1::text IS NULL AND $2::text IS NULL) OR account_id = $1 OR strategy = $2)";

/// The portfolio keys whose stored sums differ from baseline + ledger ($1 = account or NULL).
/// FULL JOINs both ways: a baseline without ledger rows, a ledger key without a baseline, a stored
/// row nothing explains and an expectation with no stored row all take part; absent sides count
/// as zeros in the comparison, and a NULL stored trade_count (no stored row) reads "missing".
/// Sums of NUMERIC(15,4) and NUMERIC(20,4) keep scale 4, so rust_decimal decodes them exactly.
const PORTFOLIO_MISMATCHES: &str = "\
WITH ledger AS (
    SELECT account_id, symbol, count(*)::int8 AS trade_count,
           sum(net_quantity) AS net_quantity, sum(total_value) AS total_value,
           sum(realized_pnl) AS realized_pnl, sum(commission) AS commission
      FROM analytics.applied_trades
     WHERE trade_date IS NOT NULL AND ($1::text IS NULL OR account_id = $1)
     GROUP BY account_id, symbol
), expected AS (
    SELECT account_id, symbol,
           COALESCE(b.trade_count, 0) + COALESCE(l.trade_count, 0) AS trade_count,
           COALESCE(b.net_quantity, 0) + COALESCE(l.net_quantity, 0) AS net_quantity,
           COALESCE(b.total_value, 0) + COALESCE(l.total_value, 0) AS total_value,
           COALESCE(b.realized_pnl, 0) + COALESCE(l.realized_pnl, 0) AS realized_pnl,
           COALESCE(b.commission, 0) + COALESCE(l.commission, 0) AS commission
      FROM (SELECT * FROM analytics.ledger_baseline_portfolio
             WHERE $1::text IS NULL OR account_id = $1) b
      FULL JOIN ledger l USING (account_id, symbol)
), stored AS (
    SELECT account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, commission
      FROM analytics.portfolio_summary
     WHERE $1::text IS NULL OR account_id = $1
)
SELECT account_id, symbol,
       s.trade_count, s.net_quantity, s.total_value, s.realized_pnl, s.commission,
       COALESCE(e.trade_count, 0), COALESCE(e.net_quantity, 0.0000),
       COALESCE(e.total_value, 0.0000), COALESCE(e.realized_pnl, 0.0000),
       COALESCE(e.commission, 0.0000)
  FROM stored s
  FULL JOIN expected e USING (account_id, symbol)
 WHERE (COALESCE(s.trade_count, 0), COALESCE(s.net_quantity, 0), COALESCE(s.total_value, 0),
        COALESCE(s.realized_pnl, 0), COALESCE(s.commission, 0))
    <> (COALESCE(e.trade_count, 0), COALESCE(e.net_quantity, 0), COALESCE(e.total_value, 0),
        COALESCE(e.realized_pnl, 0), COALESCE(e.commission, 0))
 ORDER BY account_id, symbol";

/// As PORTFOLIO_MISMATCHES, per (strategy, trading date) ($1 = strategy or NULL). A ledger row
/// without a strategy went to no performance row. volume and notional are unsigned: |signed
/// quantity| and |total_value|, as the writer adds them.
const METRICS_MISMATCHES: &str = "\
WITH ledger AS (
    SELECT strategy, trade_date AS date, count(*)::int8 AS total_trades,
           count(*) FILTER (WHERE is_win)::int8 AS winning_trades,
           sum(realized_pnl) AS realized_pnl, sum(abs(net_quantity)) AS volume,
           sum(abs(total_value)) AS notional, sum(commission) AS commission
      FROM analytics.applied_trades
     WHERE trade_date IS NOT NULL AND strategy IS NOT NULL
       AND ($1::text IS NULL OR strategy = $1)
     GROUP BY strategy, trade_date
), expected AS (
    SELECT strategy, date,
           COALESCE(b.total_trades, 0) + COALESCE(l.total_trades, 0) AS total_trades,
           COALESCE(b.winning_trades, 0) + COALESCE(l.winning_trades, 0) AS winning_trades,
           COALESCE(b.realized_pnl, 0) + COALESCE(l.realized_pnl, 0) AS realized_pnl,
           COALESCE(b.volume, 0) + COALESCE(l.volume, 0) AS volume,
           COALESCE(b.notional, 0) + COALESCE(l.notional, 0) AS notional,
           COALESCE(b.commission, 0) + COALESCE(l.commission, 0) AS commission
      FROM (SELECT * FROM analytics.ledger_baseline_metrics
             WHERE $1::text IS NULL OR strategy = $1) b
      FULL JOIN ledger l USING (strategy, date)
), stored AS (
    SELECT strategy, date, total_trades, winning_trades, realized_pnl, volume, notional,
           commission
      FROM analytics.performance_metrics
     WHERE $1::text IS NULL OR strategy = $1
)
SELECT strategy, date,
       s.total_trades, s.winning_trades, s.realized_pnl, s.volume, s.notional, s.commission,
       COALESCE(e.total_trades, 0), COALESCE(e.winning_trades, 0),
       COALESCE(e.realized_pnl, 0.0000), COALESCE(e.volume, 0.0000),
       COALESCE(e.notional, 0.0000), COALESCE(e.commission, 0.0000)
  FROM stored s
  FULL JOIN expected e USING (strategy, date)
 WHERE (COALESCE(s.total_trades, 0), COALESCE(s.winning_trades, 0), COALESCE(s.realized_pnl, 0),
        COALESCE(s.volume, 0), COALESCE(s.notional, 0), COALESCE(s.commission, 0))
    <> (COALESCE(e.total_trades, 0), COALESCE(e.winning_trades, 0), COALESCE(e.realized_pnl, 0),
        COALESCE(e.volume, 0), COALESCE(e.notional, 0), COALESCE(e.commission, 0))
 ORDER BY strategy, date";

/// Trade rows the ledger lacks ($1 = grace in ms, $2 = retention days or 0, $3 = account,
/// $4 = strategy). now() is the snapshot's start: rows created within the grace period before it
/// may have their event in flight. Executed before the retention horizon: the ledger row may
/// have been retired, so the trade cannot be checked. The strategy is reconcile's: the row's,
/// else its order's, '' meaning none.
const MISSING_TRADES: &str = "\
SELECT t.trade_id, t.account_id, t.symbol, t.executed_at, COALESCE(t.side, o.side) IS NULL
  FROM execution.trades t
  LEFT JOIN execution.orders o ON o.order_id = t.order_id
 WHERE t.created_at < now() - make_interval(secs => $1::float8 / 1000)
   AND NOT EXISTS (SELECT 1 FROM analytics.trade_changes c
                    WHERE c.trade_id = t.trade_id
                      AND c.recorded_at >= now() - make_interval(secs => $1::float8 / 1000))
   AND t.executed_at >= COALESCE(
           (SELECT NULLIF(GREATEST(r.retired_through,
                                   CASE WHEN $2::int4 > 0
                                        THEN now() - make_interval(days => $2::int4) END),
                          '-infinity') + interval '1 day'
              FROM analytics.ledger_retention r),
           '-infinity')
   AND (($3::text IS NULL AND $4::text IS NULL) OR t.account_id = $3
        OR NULLIF(COALESCE(t.strategy, o.strategy), '') = $4)
   AND NOT EXISTS (SELECT 1 FROM analytics.applied_trades a WHERE a.trade_id = t.trade_id)
 ORDER BY t.trade_id";

/// Applied trades whose contribution contradicts their row ($1 = account, $2 = strategy,
/// $3 = exchange time zone name). In scope when either side names the filtered account or
/// strategy, so a trade applied to the wrong key shows from both keys. Pairs (applied, row) per
/// compared column; the row's signed quantity is NULL without a side, and then not compared (an
/// event without a side counts as a buy, a row without one is not guessed). realized_pnl and
/// total_value are not compared (see the module comment).
const CONTRADICTIONS: &str = "\
SELECT trade_id, account_id, row_account_id, symbol, row_symbol, strategy, row_strategy,
       net_quantity, row_net_quantity, price, row_price, commission, row_commission,
       trade_date, row_trade_date
  FROM (SELECT a.trade_id, a.account_id, t.account_id AS row_account_id,
               a.symbol, t.symbol AS row_symbol,
               NULLIF(a.strategy, '') AS strategy,
               NULLIF(COALESCE(t.strategy, o.strategy), '') AS row_strategy,
               a.net_quantity,
               CASE COALESCE(t.side, o.side)
                    WHEN 'buy' THEN t.quantity WHEN 'sell' THEN -t.quantity END
                   AS row_net_quantity,
               a.price, t.price AS row_price, a.commission, t.commission AS row_commission,
               a.trade_date, (t.executed_at AT TIME ZONE $3::text)::date AS row_trade_date
          FROM analytics.applied_trades a
          JOIN execution.trades t USING (trade_id)
          LEFT JOIN execution.orders o ON o.order_id = t.order_id
         WHERE a.trade_date IS NOT NULL) c
 WHERE (($1::text IS NULL AND $2::text IS NULL)
        OR account_id = $1 OR row_account_id = $1 OR strategy = $2 OR row_strategy = $2)
   AND (account_id IS DISTINCT FROM row_account_id
        OR symbol IS DISTINCT FROM row_symbol
        OR strategy IS DISTINCT FROM row_strategy
        OR (row_net_quantity IS NOT NULL AND net_quantity IS DISTINCT FROM row_net_quantity)
        OR (price IS NOT NULL AND price IS DISTINCT FROM row_price)
        OR commission IS DISTINCT FROM row_commission
        OR trade_date IS DISTINCT FROM row_trade_date)
 ORDER BY trade_id";

/// Which keys to check (`--account`, `--strategy`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub account: Option<String>,
    pub strategy: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// Trades written less recently than this are expected in the ledger (`[reconcile] grace_ms`).
    pub grace: Duration,
    /// `maintenance.ledger_retention_days` (0 = kept forever).
    pub ledger_retention_days: u32,
    pub exchange_tz: chrono_tz::Tz,
}

/// A stored aggregate that differs from what the ledger says it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// "portfolio_summary" or "performance_metrics".
    pub table: &'static str,
    /// "account_id=A symbol=S" or "strategy=S date=D".
    pub key: String,
    pub column: &'static str,
    /// As stored ("missing" when the row does not exist).
    pub stored: String,
    pub expected: String,
}

/// A committed trade row the ledger lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub trade_id: String,
    pub account_id: String,
    pub symbol: String,
    pub executed_at: DateTime<Utc>,
    /// Why reconcile cannot apply it, if it cannot ("no side").
    pub note: Option<String>,
}

/// An applied trade whose recorded contribution contradicts its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    pub trade_id: String,
    pub column: &'static str,
    pub applied: String,
    pub row: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub portfolio_rows: u64,
    pub metrics_rows: u64,
    pub ledger_rows: u64,
    pub differences: Vec<Difference>,
    pub missing: Vec<Missing>,
    pub contradictions: Vec<Contradiction>,
    /// portfolio_summary was not checked (`--strategy` without `--account`).
    pub portfolio_skipped: bool,
    /// performance_metrics was not checked (`--account` without `--strategy`).
    pub metrics_skipped: bool,
}

/// What reconcile would say of a missing trade row it cannot apply.
const NO_SIDE_NOTE: &str = "no side: reconcile cannot apply it";

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.differences.is_empty() && self.missing.is_empty() && self.contradictions.is_empty()
    }

    /// One line per finding, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.differences {
            let _ = writeln!(
                out,
                "{} {}: {} stored {}, expected {}",
                d.table, d.key, d.column, d.stored, d.expected
            );
        }
        for m in &self.missing {
            let _ = write!(
                out,
                "missing trade {} (account {}, symbol {}, executed {}): not in the ledger",
                m.trade_id,
                m.account_id,
                m.symbol,
                m.executed_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            );
            if let Some(note) = &m.note {
                let _ = write!(out, "; {note}");
            }
            out.push('\n');
        }
        for c in &self.contradictions {
            let _ = writeln!(
                out,
                "contradiction trade {}: {} applied {}, row {}",
                c.trade_id, c.column, c.applied, c.row
            );
        }
        let mut checked = format!(
            "{} portfolio rows, {} performance rows, {} ledger trades checked",
            self.portfolio_rows, self.metrics_rows, self.ledger_rows
        );
        if self.portfolio_skipped {
            checked.push_str("; portfolio_summary not checked (--strategy without --account)");
        }
        if self.metrics_skipped {
            checked.push_str("; performance_metrics not checked (--account without --strategy)");
        }
        if self.clean() {
            let _ = writeln!(out, "books match: {checked}");
        } else {
            let _ = writeln!(
                out,
                "books differ: {} differences, {} missing trades, {} contradictions ({checked})",
                self.differences.len(),
                self.missing.len(),
                self.contradictions.len()
            );
        }
        out
    }
}

pub async fn verify(
    client: &mut Client,
    settings: &VerifySettings,
    filter: &Filter,
) -> Result<VerifyReport, tokio_postgres::Error> {
    let account = filter.account.as_deref();
    let strategy = filter.strategy.as_deref();
    // See the module comment: each aggregate is checked unless only the other one's key is given.
    let check_portfolio = account.is_some() || strategy.is_none();
    let check_metrics = strategy.is_some() || account.is_none();
    let mut report = VerifyReport {
        portfolio_skipped: !check_portfolio,
        metrics_skipped: !check_metrics,
        ..VerifyReport::default()
    };

    // One snapshot for every check: sums, ledger and trade rows as of one instant.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;

    if check_portfolio {
        report.portfolio_rows = count(&tx, COUNT_PORTFOLIO, &[&account]).await?;
        for row in tx.query(PORTFOLIO_MISMATCHES, &[&account]).await? {
            let key = format!(
                "account_id={} symbol={}",
                row.get::<_, String>(0),
                row.get::<_, String>(1)
            );
            compare(
                &mut report.differences,
                "portfolio_summary",
                &key,
                &row,
                &[
                    ("trade_count", Kind::Count),
                    ("net_quantity", Kind::Amount),
                    ("total_value", Kind::Amount),
                    ("realized_pnl", Kind::Amount),
                    ("commission", Kind::Amount),
                ],
            );
        }
    }
    if check_metrics {
        report.metrics_rows = count(&tx, COUNT_METRICS, &[&strategy]).await?;
        for row in tx.query(METRICS_MISMATCHES, &[&strategy]).await? {
            let key = format!(
                "strategy={} date={}",
                row.get::<_, String>(0),
                row.get::<_, NaiveDate>(1)
            );
            compare(
                &mut report.differences,
                "performance_metrics",
                &key,
                &row,
                &[
                    ("total_trades", Kind::Count),
                    ("winning_trades", Kind::Count),
                    ("realized_pnl", Kind::Amount),
                    ("volume", Kind::Amount),
                    ("notional", Kind::Amount),
                    ("commission", Kind::Amount),
                ],
            );
        }
    }
    report.ledger_rows = count(&tx, COUNT_LEDGER, &[&account, &strategy]).await?;

    let grace_ms = settings.grace.as_millis() as f64;
    let retention_days = crate::apply::retention::horizon_days(settings.ledger_retention_days);
    for row in tx
        .query(
            MISSING_TRADES,
            &[&grace_ms, &retention_days, &account, &strategy],
        )
        .await?
    {
        report.missing.push(Missing {
            trade_id: row.get(0),
            account_id: row.get(1),
            symbol: row.get(2),
            executed_at: row.get(3),
            note: row.get::<_, bool>(4).then(|| NO_SIDE_NOTE.to_owned()),
        });
    }

    let tz = settings.exchange_tz.name();
    for row in tx
        .query(CONTRADICTIONS, &[&account, &strategy, &tz])
        .await?
    {
        contradictions(&mut report.contradictions, &row);
    }

    // Read only: nothing to keep; ending it releases the snapshot.
    tx.commit().await?;
    Ok(report)
}

async fn count(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let n: i64 = tx.query_one(sql, params).await?.get(0);
    Ok(n.max(0) as u64)
}

#[derive(Clone, Copy)]
enum Kind {
    /// int8
    Count,
    /// NUMERIC
    Amount,
}

impl Kind {
    fn get(self, row: &Row, idx: usize) -> Option<Decimal> {
        match self {
            Kind::Count => row.get::<_, Option<i64>>(idx).map(Decimal::from),
            Kind::Amount => row.get(idx),
        }
    }
}

/// One Difference per column of a mismatching key. The row holds the two key columns, then the
/// stored columns (all NULL when there is no stored row), then the expected ones (never NULL),
/// in `columns` order. The comparison is the query's: a missing stored row counts as zeros.
fn compare(
    out: &mut Vec<Difference>,
    table: &'static str,
    key: &str,
    row: &Row,
    columns: &[(&'static str, Kind)],
) {
    let stored_at = 2;
    let expected_at = stored_at + columns.len();
    for (i, &(column, kind)) in columns.iter().enumerate() {
        let stored = kind.get(row, stored_at + i);
        let expected = kind.get(row, expected_at + i).unwrap_or(Decimal::ZERO);
        if stored.unwrap_or(Decimal::ZERO) != expected {
            out.push(Difference {
                table,
                key: key.to_owned(),
                column,
                stored: stored.map_or_else(|| "missing".to_owned(), |v| v.to_string()),
                expected: expected.to_string(),
            });
        }
    }
}

/// One Contradiction per differing column of a CONTRADICTIONS row, by the query's rules.
fn contradictions(out: &mut Vec<Contradiction>, row: &Row) {
    let trade_id: String = row.get(0);
    let mut push = |column: &'static str, applied: String, in_row: String| {
        out.push(Contradiction {
            trade_id: trade_id.clone(),
            column,
            applied,
            row: in_row,
        })
    };
    let text = |v: Option<String>| v.unwrap_or_else(|| "NULL".to_owned());
    let num = |v: Option<Decimal>| v.map_or_else(|| "NULL".to_owned(), |v| v.to_string());

    for (column, at) in [("account_id", 1), ("symbol", 3), ("strategy", 5)] {
        let (applied, in_row): (Option<String>, Option<String>) = (row.get(at), row.get(at + 1));
        if applied != in_row {
            push(column, text(applied), text(in_row));
        }
    }
    let (applied, in_row): (Option<Decimal>, Option<Decimal>) = (row.get(7), row.get(8));
    if in_row.is_some() && applied != in_row {
        push("net_quantity", num(applied), num(in_row));
    }
    // An event may leave the price out (the aggregates use its total_value): only a price it
    // did send can contradict the row.
    let (applied, in_row): (Option<Decimal>, Option<Decimal>) = (row.get(9), row.get(10));
    if applied.is_some() && applied != in_row {
        push("price", num(applied), num(in_row));
    }
    let (applied, in_row): (Option<Decimal>, Option<Decimal>) = (row.get(11), row.get(12));
    if applied != in_row {
        push("commission", num(applied), num(in_row));
    }
    let (applied, in_row): (Option<NaiveDate>, Option<NaiveDate>) = (row.get(13), row.get(14));
    if applied != in_row {
        let date = |d: Option<NaiveDate>| d.map_or_else(|| "NULL".to_owned(), |d| d.to_string());
        push("trade_date", date(applied), date(in_row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn render_lists_findings_then_a_summary() {
        let clean = VerifyReport {
            portfolio_rows: 3,
            metrics_rows: 2,
            ledger_rows: 7,
            ..VerifyReport::default()
        };
        assert_eq!(
            clean.render(),
            "books match: 3 portfolio rows, 2 performance rows, 7 ledger trades checked\n"
        );

        let report = VerifyReport {
            portfolio_rows: 3,
            metrics_rows: 0,
            ledger_rows: 7,
            differences: vec![Difference {
                table: "portfolio_summary",
                key: "account_id=A symbol=S".into(),
                column: "trade_count",
                stored: "3".into(),
                expected: "2".into(),
            }],
            missing: vec![Missing {
                trade_id: "T-1".into(),
                account_id: "A".into(),
                symbol: "S".into(),
                executed_at: Utc.with_ymd_and_hms(2025, 11, 24, 15, 4, 5).unwrap(),
                note: Some(NO_SIDE_NOTE.into()),
            }],
            contradictions: vec![Contradiction {
                trade_id: "T-2".into(),
                column: "price",
                applied: "10.0000".into(),
                row: "10.5000".into(),
            }],
            metrics_skipped: true,
            ..VerifyReport::default()
        };
        assert!(!report.clean());
        assert_eq!(
            report.render(),
            "portfolio_summary account_id=A symbol=S: trade_count stored 3, expected 2\n\
             missing trade T-1 (account A, symbol S, executed 2025-11-24T15:04:05Z): not in the \
             ledger; no side: reconcile cannot apply it\n\
             contradiction trade T-2: price applied 10.0000, row 10.5000\n\
             books differ: 1 differences, 1 missing trades, 1 contradictions (3 portfolio rows, \
             0 performance rows, 7 ledger trades checked; performance_metrics not checked \
             (--account without --strategy))\n"
        );
    }
}
