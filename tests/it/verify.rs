//! `verify` against the real PostgreSQL: trades applied through the writer's own statements, then
//! books tampered with, trade rows left out of the ledger and trades applied with other numbers
//! than their rows — each must be found, named, and nothing else reported.

use crate::common;

use std::str::FromStr;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use common::TestDb;
use rust_decimal::Decimal;
use trading_sync::apply::fold::BatchPlan;
use trading_sync::apply::store::{self, Statements};
use trading_sync::events::{Side, TradeExecuted};
use trading_sync::reconcile::verify::{
    verify, Contradiction, Difference, Filter, Missing, VerifyReport, VerifySettings,
};

const NO_SIDE: &str = "no side: reconcile cannot apply it";

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::from_str(s).unwrap()
}

/// Now, to the second (the database keeps microseconds; comparisons stay exact).
fn now_s() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

/// A trade as its event decodes, with the event rules written out here: total_value = quantity ×
/// price, negative for a sell; no realized P&L, no commission, no strategy; executed at 15:00Z on
/// 2025-11-24 (that day in New York too).
fn trade(
    id: &str,
    account: &str,
    symbol: &str,
    side: Side,
    quantity: &str,
    price: &str,
) -> TradeExecuted {
    let (q, p) = (d(quantity), d(price));
    TradeExecuted {
        trade_id: id.into(),
        account_id: account.into(),
        symbol: symbol.into(),
        strategy: None,
        side: Some(side),
        quantity: Some(q),
        price: Some(p),
        total_value: if side == Side::Sell { -(q * p) } else { q * p },
        realized_pnl: Decimal::ZERO,
        commission: Decimal::ZERO,
        is_win: false,
        executed_at: utc("2025-11-24T15:00:00Z"),
        trade_date: date("2025-11-24"),
    }
}

fn executed(mut t: TradeExecuted, at: DateTime<Utc>) -> TradeExecuted {
    t.executed_at = at;
    t.trade_date = at.with_timezone(&chrono_tz::America::New_York).date_naive();
    t
}

/// Applies trades in one batch through the writer's statements, as the daemon does.
async fn apply(db: &mut TestDb, mut trades: Vec<TradeExecuted>) {
    trades.sort_by(|a, b| a.trade_id.cmp(&b.trade_id));
    let n = trades.len() as u64;
    let stmts = Statements::prepare(&db.client).await.unwrap();
    let plan = BatchPlan {
        trades,
        ..BatchPlan::default()
    };
    let applied = store::apply(&mut db.client, &stmts, &plan).await.unwrap();
    assert_eq!(applied.new_trades, n, "every trade is new");
}

fn settings() -> VerifySettings {
    VerifySettings {
        grace: std::time::Duration::ZERO,
        ledger_retention_days: 400,
        exchange_tz: chrono_tz::America::New_York,
    }
}

async fn run(db: &mut TestDb, account: Option<&str>, strategy: Option<&str>) -> VerifyReport {
    run_with(db, &settings(), account, strategy).await
}

async fn run_with(
    db: &mut TestDb,
    settings: &VerifySettings,
    account: Option<&str>,
    strategy: Option<&str>,
) -> VerifyReport {
    let filter = Filter {
        account: account.map(str::to_owned),
        strategy: strategy.map(str::to_owned),
    };
    verify(&mut db.client, settings, &filter).await.unwrap()
}

async fn exec(db: &TestDb, sql: &str) {
    db.client.batch_execute(sql).await.unwrap();
}

/// The books of `seed`:
/// * A1/AAPL: buy 10 @ 100 and sell 4 @ 110 (momentum, +40 P&L, 1.25 commission): 2 trades,
///   net 6, total_value 1000 − 440 = 560, P&L 40, commission 1.25.
/// * A1/MSFT: buy 5 @ 50, no strategy: 1 trade, 5, 250.
/// * A2/AAPL: buy 1 @ 100 (pairs) at 03:30Z on the 25th, still the 24th in New York.
/// * A3/TSLA: a position snapshot only (no trades).
///
/// performance_metrics: momentum 2025-11-24 (2 trades, 1 win, volume 14, notional 1440) and
/// pairs 2025-11-24.
async fn seed(db: &mut TestDb) {
    let mut sell = trade("T-2", "A1", "AAPL", Side::Sell, "4", "110");
    sell.strategy = Some("momentum".into());
    sell.realized_pnl = d("40");
    sell.is_win = true;
    sell.commission = d("1.25");
    let mut buy = trade("T-1", "A1", "AAPL", Side::Buy, "10", "100");
    buy.strategy = Some("momentum".into());
    let mut pairs = executed(
        trade("T-4", "A2", "AAPL", Side::Buy, "1", "100"),
        utc("2025-11-25T03:30:00Z"),
    );
    pairs.strategy = Some("pairs".into());
    apply(
        db,
        vec![
            buy,
            sell,
            trade("T-3", "A1", "MSFT", Side::Buy, "5", "50"),
            pairs,
        ],
    )
    .await;
    exec(
        db,
        "INSERT INTO analytics.portfolio_summary (account_id, symbol, quantity, avg_price, position_as_of)
         VALUES ('A3', 'TSLA', 5, 200, now())",
    )
    .await;
}

fn difference(
    table: &'static str,
    key: &str,
    column: &'static str,
    stored: &str,
    expected: &str,
) -> Difference {
    Difference {
        table,
        key: key.into(),
        column,
        stored: stored.into(),
        expected: expected.into(),
    }
}

#[tokio::test]
async fn books_written_by_the_writer_verify_clean() {
    let mut db = TestDb::new().await;
    let empty = run(&mut db, None, None).await;
    assert!(empty.clean(), "{}", empty.render());
    assert_eq!(
        empty.render(),
        "books match: 0 portfolio rows, 0 performance rows, 0 ledger trades checked\n"
    );

    seed(&mut db).await;
    // The writer really wrote what the seed says (verify is not comparing nothing with nothing).
    let row = db
        .client
        .query_one(
            "SELECT trade_count, net_quantity, total_value, commission FROM analytics.portfolio_summary
              WHERE account_id = 'A1' AND symbol = 'AAPL'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, Decimal>(1),
            row.get::<_, Decimal>(2),
            row.get::<_, Decimal>(3)
        ),
        (2, d("6"), d("560"), d("1.25"))
    );

    let report = run(&mut db, None, None).await;
    assert_eq!(
        report,
        VerifyReport {
            portfolio_rows: 4,
            metrics_rows: 2,
            ledger_rows: 4,
            ..VerifyReport::default()
        },
        "{}",
        report.render()
    );
    assert_eq!(
        report.render(),
        "books match: 4 portfolio rows, 2 performance rows, 4 ledger trades checked\n"
    );

    // Filters count only their keys' rows.
    let a1 = run(&mut db, Some("A1"), None).await;
    assert!(a1.clean(), "{}", a1.render());
    assert_eq!(
        (a1.portfolio_rows, a1.metrics_rows, a1.ledger_rows),
        (2, 0, 3)
    );
    assert!(a1.metrics_skipped && !a1.portfolio_skipped);
    assert!(
        a1.render()
            .ends_with("performance_metrics not checked (--account without --strategy)\n"),
        "{}",
        a1.render()
    );
    let pairs = run(&mut db, None, Some("pairs")).await;
    assert!(pairs.clean(), "{}", pairs.render());
    assert_eq!(
        (pairs.portfolio_rows, pairs.metrics_rows, pairs.ledger_rows),
        (0, 1, 1)
    );
    assert!(pairs.portfolio_skipped && !pairs.metrics_skipped);
    let both = run(&mut db, Some("A1"), Some("pairs")).await;
    assert!(both.clean(), "{}", both.render());
    // A1's three trades and pairs' one (of A2).
    assert_eq!(
        (both.portfolio_rows, both.metrics_rows, both.ledger_rows),
        (2, 1, 4)
    );
}

#[tokio::test]
async fn a_tampered_portfolio_row_is_named_with_both_values() {
    let mut db = TestDb::new().await;
    seed(&mut db).await;
    exec(
        &db,
        "UPDATE analytics.portfolio_summary SET total_value = total_value + 1
          WHERE account_id = 'A1' AND symbol = 'AAPL'",
    )
    .await;

    let report = run(&mut db, None, None).await;
    assert_eq!(
        report.differences,
        vec![difference(
            "portfolio_summary",
            "account_id=A1 symbol=AAPL",
            "total_value",
            "561.0000",
            "560.0000"
        )]
    );
    assert!(report.missing.is_empty() && report.contradictions.is_empty());
    assert!(!report.clean());
    assert_eq!(
        report.render(),
        "portfolio_summary account_id=A1 symbol=AAPL: total_value stored 561.0000, expected 560.0000\n\
         books differ: 1 differences, 0 missing trades, 0 contradictions (4 portfolio rows, \
         2 performance rows, 4 ledger trades checked)\n"
    );

    // Another account's check does not see it; A1's does; --strategy alone checks no portfolio.
    assert!(run(&mut db, Some("A2"), None).await.clean());
    assert_eq!(
        run(&mut db, Some("A1"), None).await.differences,
        report.differences
    );
    assert!(run(&mut db, None, Some("momentum")).await.clean());
    assert_eq!(
        run(&mut db, Some("A1"), Some("pairs")).await.differences,
        report.differences
    );
}

#[tokio::test]
async fn a_tampered_performance_row_is_named_per_column() {
    let mut db = TestDb::new().await;
    seed(&mut db).await;
    exec(
        &db,
        "UPDATE analytics.performance_metrics SET winning_trades = 0, volume = volume + 2
          WHERE strategy = 'momentum' AND date = '2025-11-24'",
    )
    .await;

    let want = vec![
        difference(
            "performance_metrics",
            "strategy=momentum date=2025-11-24",
            "winning_trades",
            "0",
            "1",
        ),
        difference(
            "performance_metrics",
            "strategy=momentum date=2025-11-24",
            "volume",
            "16.0000",
            "14.0000",
        ),
    ];
    assert_eq!(run(&mut db, None, None).await.differences, want);
    assert_eq!(run(&mut db, None, Some("momentum")).await.differences, want);
    assert!(run(&mut db, None, Some("pairs")).await.clean());
    // Metrics have no account: --account alone does not check them.
    assert!(run(&mut db, Some("A1"), None).await.clean());
}

#[tokio::test]
async fn a_deleted_row_is_missing_and_an_unexplained_row_is_reported() {
    let mut db = TestDb::new().await;
    seed(&mut db).await;
    exec(
        &db,
        "DELETE FROM analytics.portfolio_summary WHERE account_id = 'A1' AND symbol = 'MSFT';
         DELETE FROM analytics.performance_metrics WHERE strategy = 'pairs';
         INSERT INTO analytics.portfolio_summary (account_id, symbol, trade_count, commission)
         VALUES ('A9', 'XYZ', 2, 0.5)",
    )
    .await;

    let report = run(&mut db, None, None).await;
    let key = "account_id=A1 symbol=MSFT";
    let pairs = "strategy=pairs date=2025-11-24";
    assert_eq!(
        report.differences,
        vec![
            // Zero expectations (realized_pnl, commission) are not noise.
            difference("portfolio_summary", key, "trade_count", "missing", "1"),
            difference(
                "portfolio_summary",
                key,
                "net_quantity",
                "missing",
                "5.0000"
            ),
            difference(
                "portfolio_summary",
                key,
                "total_value",
                "missing",
                "250.0000"
            ),
            difference(
                "portfolio_summary",
                "account_id=A9 symbol=XYZ",
                "trade_count",
                "2",
                "0"
            ),
            difference(
                "portfolio_summary",
                "account_id=A9 symbol=XYZ",
                "commission",
                "0.5000",
                "0.0000"
            ),
            difference("performance_metrics", pairs, "total_trades", "missing", "1"),
            difference("performance_metrics", pairs, "volume", "missing", "1.0000"),
            difference(
                "performance_metrics",
                pairs,
                "notional",
                "missing",
                "100.0000"
            ),
        ]
    );
    assert_eq!((report.portfolio_rows, report.metrics_rows), (4, 1));
    assert!(report.render().contains(
        "portfolio_summary account_id=A1 symbol=MSFT: trade_count stored missing, expected 1\n"
    ));
}

/// An execution.trades row, as the execution service writes it.
struct TradeRow<'a> {
    trade_id: &'a str,
    order_id: Option<&'a str>,
    account: &'a str,
    symbol: &'a str,
    side: Option<&'a str>,
    quantity: &'a str,
    price: &'a str,
    commission: &'a str,
    strategy: Option<&'a str>,
    executed_at: DateTime<Utc>,
}

impl Default for TradeRow<'_> {
    fn default() -> Self {
        TradeRow {
            trade_id: "",
            order_id: None,
            account: "A1",
            symbol: "AAPL",
            side: Some("buy"),
            quantity: "1",
            price: "100",
            commission: "0",
            strategy: None,
            executed_at: utc("2025-11-24T15:00:00Z"),
        }
    }
}

async fn insert_trade_row(db: &TestDb, r: TradeRow<'_>) {
    db.client
        .execute(
            "INSERT INTO execution.trades
                 (trade_id, order_id, account_id, symbol, side, quantity, price, commission,
                  strategy, executed_at)
             VALUES ($1, $2, $3, $4, $5::text::execution.order_side, $6, $7, $8, $9, $10)",
            &[
                &r.trade_id,
                &r.order_id,
                &r.account,
                &r.symbol,
                &r.side,
                &d(r.quantity),
                &d(r.price),
                &d(r.commission),
                &r.strategy,
                &r.executed_at,
            ],
        )
        .await
        .unwrap();
}

async fn insert_order(db: &TestDb, order_id: &str, account: &str, side: &str, strategy: &str) {
    db.client
        .execute(
            "INSERT INTO execution.orders (order_id, account_id, symbol, side, order_type, quantity, strategy)
             VALUES ($1, $2, 'AAPL', $3::text::execution.order_side, 'market', 100, $4)",
            &[&order_id, &account, &side, &strategy],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn committed_trades_the_ledger_lacks_are_missing() {
    let mut db = TestDb::new().await;
    let recent = now_s() - ChronoDuration::hours(1);
    // Side and strategy from its order.
    insert_order(&db, "O-1", "A1", "buy", "x").await;
    insert_trade_row(
        &db,
        TradeRow {
            trade_id: "M-1",
            order_id: Some("O-1"),
            side: None,
            quantity: "10",
            executed_at: recent,
            ..TradeRow::default()
        },
    )
    .await;
    // Nothing says buy or sell.
    insert_trade_row(
        &db,
        TradeRow {
            trade_id: "M-2",
            account: "A2",
            symbol: "MSFT",
            side: None,
            executed_at: recent,
            ..TradeRow::default()
        },
    )
    .await;
    // Beyond the 400-day retention horizon: its ledger row may have been retired.
    let old = now_s() - ChronoDuration::days(500);
    insert_trade_row(
        &db,
        TradeRow {
            trade_id: "M-3",
            executed_at: old,
            ..TradeRow::default()
        },
    )
    .await;
    // Applied, with the same numbers: neither missing nor contradicting.
    insert_trade_row(
        &db,
        TradeRow {
            trade_id: "M-4",
            quantity: "3",
            executed_at: recent,
            ..TradeRow::default()
        },
    )
    .await;
    apply(
        &mut db,
        vec![executed(
            trade("M-4", "A1", "AAPL", Side::Buy, "3", "100"),
            recent,
        )],
    )
    .await;

    let m1 = Missing {
        trade_id: "M-1".into(),
        account_id: "A1".into(),
        symbol: "AAPL".into(),
        executed_at: recent,
        note: None,
    };
    let m2 = Missing {
        trade_id: "M-2".into(),
        account_id: "A2".into(),
        symbol: "MSFT".into(),
        executed_at: recent,
        note: Some(NO_SIDE.into()),
    };
    let report = run(&mut db, None, None).await;
    assert_eq!(
        report.missing,
        vec![m1.clone(), m2.clone()],
        "{}",
        report.render()
    );
    assert!(report.differences.is_empty() && report.contradictions.is_empty());
    assert_eq!(report.ledger_rows, 1);
    let text = report.render();
    assert!(
        text.contains(&format!(
            "missing trade M-2 (account A2, symbol MSFT, executed {}): not in the ledger; {NO_SIDE}\n",
            recent.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )),
        "{text}"
    );
    assert!(text.ends_with("books differ: 0 differences, 2 missing trades, 0 contradictions (1 portfolio rows, 0 performance rows, 1 ledger trades checked)\n"), "{text}");

    // Filters: by account; by strategy (the order's); both take either.
    assert_eq!(
        run(&mut db, Some("A2"), None).await.missing,
        vec![m2.clone()]
    );
    assert_eq!(
        run(&mut db, None, Some("x")).await.missing,
        vec![m1.clone()]
    );
    assert!(run(&mut db, None, Some("y")).await.missing.is_empty());
    assert_eq!(
        run(&mut db, Some("A2"), Some("x")).await.missing,
        vec![m1.clone(), m2.clone()]
    );

    // Without retention every trade is checkable, the old one too.
    let forever = VerifySettings {
        ledger_retention_days: 0,
        ..settings()
    };
    let ids: Vec<String> = run_with(&mut db, &forever, None, None)
        .await
        .missing
        .into_iter()
        .map(|m| m.trade_id)
        .collect();
    assert_eq!(ids, ["M-1", "M-2", "M-3"]);

    // Within the grace period their events may still be on the way.
    let patient = VerifySettings {
        grace: std::time::Duration::from_secs(3600),
        ..settings()
    };
    assert!(run_with(&mut db, &patient, None, None).await.clean());
}

#[tokio::test]
async fn applied_trades_that_contradict_their_rows_are_listed() {
    let mut db = TestDb::new().await;
    // 03:30Z on the 25th is the 24th in New York: the row's trading date is the exchange's.
    let late = utc("2025-11-25T03:30:00Z");
    insert_order(&db, "O-2", "A1", "sell", "x").await;
    let rows = [
        // Applied at 10, executed at 10.5.
        TradeRow {
            trade_id: "C-1",
            quantity: "5",
            price: "10.5",
            commission: "1",
            executed_at: late,
            ..TradeRow::default()
        },
        // Side and strategy from the order; matches its event.
        TradeRow {
            trade_id: "C-2",
            order_id: Some("O-2"),
            side: None,
            quantity: "3",
            price: "20",
            commission: "0.5",
            executed_at: late,
            ..TradeRow::default()
        },
        // Its event said another day.
        TradeRow {
            trade_id: "C-3",
            ..TradeRow::default()
        },
        // Its event said sell, another account and another strategy.
        TradeRow {
            trade_id: "C-4",
            quantity: "2",
            strategy: Some(""),
            ..TradeRow::default()
        },
        // No side anywhere: the event's buy is not contradicted; strategy '' is none.
        TradeRow {
            trade_id: "C-5",
            side: None,
            quantity: "7",
            strategy: Some(""),
            ..TradeRow::default()
        },
    ];
    for r in rows {
        insert_trade_row(&db, r).await;
    }
    let mut c1 = executed(trade("C-1", "A1", "AAPL", Side::Buy, "5", "10"), late);
    c1.commission = d("1");
    let mut c2 = executed(trade("C-2", "A1", "AAPL", Side::Sell, "3", "20"), late);
    c2.commission = d("0.5");
    c2.strategy = Some("x".into());
    let c3 = executed(
        trade("C-3", "A1", "AAPL", Side::Buy, "1", "100"),
        utc("2025-11-25T15:00:00Z"),
    );
    let mut c4 = trade("C-4", "A2", "AAPL", Side::Sell, "2", "100");
    c4.strategy = Some("y".into());
    let c5 = trade("C-5", "A1", "AAPL", Side::Buy, "7", "100");
    apply(&mut db, vec![c1, c2, c3, c4, c5]).await;

    let contradiction = |id: &str, column: &'static str, applied: &str, row: &str| Contradiction {
        trade_id: id.into(),
        column,
        applied: applied.into(),
        row: row.into(),
    };
    let all = vec![
        contradiction("C-1", "price", "10.0000", "10.5000"),
        contradiction("C-3", "trade_date", "2025-11-25", "2025-11-24"),
        contradiction("C-4", "account_id", "A2", "A1"),
        contradiction("C-4", "strategy", "y", "NULL"),
        contradiction("C-4", "net_quantity", "-2.0000", "2.0000"),
    ];
    let report = run(&mut db, None, None).await;
    assert_eq!(report.contradictions, all, "{}", report.render());
    // The aggregates are the ledger's, and every row is in it.
    assert!(
        report.differences.is_empty() && report.missing.is_empty(),
        "{}",
        report.render()
    );
    assert_eq!(report.ledger_rows, 5);
    assert!(report
        .render()
        .contains("contradiction trade C-1: price applied 10.0000, row 10.5000\n"));

    // C-4 went to A2 but its row says A1: either account shows it.
    assert_eq!(
        run(&mut db, Some("A2"), None).await.contradictions,
        all[2..].to_vec()
    );
    assert_eq!(run(&mut db, Some("A1"), None).await.contradictions, all);
    assert_eq!(
        run(&mut db, None, Some("y")).await.contradictions,
        all[2..].to_vec()
    );
    assert!(run(&mut db, None, Some("x"))
        .await
        .contradictions
        .is_empty());
    assert!(run(&mut db, Some("A3"), None).await.clean());
}

#[tokio::test]
async fn ledger_rows_from_before_v21_verify_through_the_baseline() {
    let mut db = TestDb::new().await;
    // What V21 found: a ledger row without a contribution, and aggregates it carried forward.
    exec(
        &db,
        "INSERT INTO analytics.applied_trades (trade_id, account_id, symbol, strategy, executed_at)
         VALUES ('OLD-1', 'A1', 'AAPL', 'momentum', '2025-01-02T15:00:00Z');
         INSERT INTO analytics.ledger_baseline_portfolio
         VALUES ('A1', 'AAPL', 1, 5, 500, 10, 1);
         INSERT INTO analytics.portfolio_summary
             (account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, commission)
         VALUES ('A1', 'AAPL', 1, 5, 500, 10, 1);
         INSERT INTO analytics.ledger_baseline_metrics
         VALUES ('momentum', '2025-01-02', 1, 1, 10, 5, 500, 1);
         INSERT INTO analytics.performance_metrics
             (strategy, date, total_trades, winning_trades, realized_pnl, volume, notional, commission)
         VALUES ('momentum', '2025-01-02', 1, 1, 10, 5, 500, 1)",
    )
    .await;
    let report = run(&mut db, None, None).await;
    assert!(report.clean(), "{}", report.render());
    assert_eq!(
        (
            report.portfolio_rows,
            report.metrics_rows,
            report.ledger_rows
        ),
        (1, 1, 0)
    );

    // A trade applied since adds to the same key: baseline + ledger.
    let mut t = trade("NEW-1", "A1", "AAPL", Side::Sell, "2", "110");
    t.strategy = Some("momentum".into());
    apply(&mut db, vec![t]).await;
    let report = run(&mut db, None, None).await;
    assert!(report.clean(), "{}", report.render());
    assert_eq!(
        (
            report.portfolio_rows,
            report.metrics_rows,
            report.ledger_rows
        ),
        (1, 2, 1)
    );

    // The baseline is really part of the expectation.
    exec(
        &db,
        "UPDATE analytics.ledger_baseline_portfolio SET trade_count = 2, net_quantity = 4",
    )
    .await;
    assert_eq!(
        run(&mut db, None, None).await.differences,
        vec![
            difference(
                "portfolio_summary",
                "account_id=A1 symbol=AAPL",
                "trade_count",
                "2",
                "3"
            ),
            difference(
                "portfolio_summary",
                "account_id=A1 symbol=AAPL",
                "net_quantity",
                "3.0000",
                "2.0000"
            ),
        ]
    );
}

#[tokio::test]
async fn the_binary_exits_0_on_clean_books_and_1_naming_the_tampered_key() {
    let mut db = TestDb::new().await;
    seed(&mut db).await;
    let verify_binary = || {
        let url = db.url.clone();
        tokio::task::spawn_blocking(move || {
            common::process::command(
                &url,
                &["verify"],
                &[("TRADING_SYNC__RECONCILE__GRACE_MS", "0")],
            )
        })
    };

    let (code, stdout, stderr) = verify_binary().await.unwrap();
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        stdout,
        "books match: 4 portfolio rows, 2 performance rows, 4 ledger trades checked\n"
    );

    exec(
        &db,
        "UPDATE analytics.portfolio_summary SET commission = commission + 0.25
          WHERE account_id = 'A1' AND symbol = 'AAPL'",
    )
    .await;
    let (code, stdout, stderr) = verify_binary().await.unwrap();
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("portfolio_summary account_id=A1 symbol=AAPL: commission stored 1.5000, expected 1.2500\n"),
        "{stdout}"
    );
    assert!(stdout.contains("books differ: 1 differences"), "{stdout}");
}

/// An event may leave the price out (the aggregates take its total_value): that is no
/// contradiction with the row's price; a price it did send that differs is one.
#[tokio::test]
async fn an_event_without_a_price_does_not_contradict_its_row() {
    let mut db = TestDb::new().await;
    let at = utc("2025-11-24T15:00:00Z");
    for id in ["NP-1", "NP-2"] {
        insert_trade_row(
            &db,
            TradeRow {
                trade_id: id,
                price: "100",
                executed_at: at,
                ..TradeRow::default()
            },
        )
        .await;
    }
    let mut no_price = trade("NP-1", "A1", "AAPL", Side::Buy, "1", "100");
    no_price.price = None;
    let other_price = trade("NP-2", "A1", "AAPL", Side::Buy, "1", "101");
    apply(&mut db, vec![no_price, other_price]).await;
    let report = run(&mut db, None, None).await;
    let columns: Vec<(&str, &str)> = report
        .contradictions
        .iter()
        .map(|c| (c.trade_id.as_str(), c.column))
        .collect();
    assert_eq!(columns, [("NP-2", "price")], "{}", report.render());
}
