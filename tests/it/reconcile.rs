//! Books that heal: `reconcile` applies, exactly once, the committed execution.trades rows whose
//! events never arrived, refreshes positions and prices rows; the daemon runs it by itself.
//!
//! An "execution service" here commits each fill (its order, then the trade, in one transaction,
//! as the review's execute_trade does: side and strategy on the order only) and then publishes its
//! event, so every trade exists in the database whether or not pub/sub delivered it. Expected sums
//! are computed here from the fills themselves.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::process::{free_port, Daemon, PrivateRedis};
use common::{eventually, python_dumps, TestDb};
use rust_decimal::Decimal;
use serde_json::json;
use trading_sync::reconcile::{run_once, Outcome, Report, Request, Settings, Trigger};

/// One fill as the execution service commits and publishes it.
#[derive(Debug, Clone)]
struct Fill {
    id: String,
    account: String,
    symbol: &'static str,
    sell: bool,
    quantity: Decimal,
    price: Decimal,
    commission: Decimal,
    realized: Decimal,
    executed_at: DateTime<Utc>,
}

impl Fill {
    fn signed_quantity(&self) -> Decimal {
        if self.sell {
            -self.quantity
        } else {
            self.quantity
        }
    }

    fn total_value(&self) -> Decimal {
        let v = self.quantity * self.price;
        if self.sell {
            -v
        } else {
            v
        }
    }

    /// The seed publisher's event for this fill: what the row must become too.
    fn event(&self) -> String {
        let num = |d: Decimal| serde_json::Number::from_string_unchecked(d.to_string());
        python_dumps(&json!({
            "type": "trade_executed", "service": "execution",
            "data": {"trade_id": self.id, "account_id": self.account, "symbol": self.symbol,
                     "strategy": "heal", "side": if self.sell { "sell" } else { "buy" },
                     "quantity": num(self.quantity), "price": num(self.price),
                     "commission": num(self.commission), "realized_pnl": num(self.realized),
                     "executed_at": self.executed_at.to_rfc3339()},
            "timestamp": "2026-12-01T15:04:05.123456", "correlation_id": self.id}))
    }
}

/// `n` fills with ids `<prefix>-<i>`, over 4 accounts and 3 symbols.
fn fills(prefix: &str, n: usize) -> Vec<Fill> {
    (0..n)
        .map(|i| Fill {
            id: format!("{prefix}-{i:06}"),
            account: format!("ACC{}", i % 4),
            symbol: ["AAPL", "MSFT", "SPY"][i % 3],
            sell: i % 5 == 4,
            quantity: Decimal::from(i % 9 + 1),
            price: Decimal::new(10_025 + (i % 13) as i64, 2),
            commission: Decimal::new((i % 3) as i64 * 25, 2),
            realized: if i % 5 == 4 {
                Decimal::new((i % 7) as i64 * 100 - 300, 2)
            } else {
                Decimal::ZERO
            },
            executed_at: Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap()
                + chrono::Duration::milliseconds(i as i64),
        })
        .collect()
}

const COMMIT_FILL: &str = "\
WITH o AS (
    INSERT INTO execution.orders (order_id, account_id, symbol, side, order_type, quantity, status, strategy)
    VALUES ('O-' || $1, $2, $3, $4::text::execution.order_side, 'market', $5, 'filled', 'heal')
    RETURNING order_id
)
INSERT INTO execution.trades
    (trade_id, order_id, account_id, symbol, quantity, price, commission, realized_pnl, executed_at)
SELECT $1, order_id, $2, $3, $5, $6, $7, $8, $9 FROM o";

async fn commit_fill(client: &impl tokio_postgres::GenericClient, f: &Fill) {
    client
        .execute(
            COMMIT_FILL,
            &[
                &f.id,
                &f.account,
                &f.symbol,
                &if f.sell { "sell" } else { "buy" },
                &f.quantity,
                &f.price,
                &f.commission,
                &f.realized,
                &f.executed_at,
            ],
        )
        .await
        .unwrap();
}

/// (trades, net quantity, total value, realized, commission), from the fills.
fn expected(fills: &[Fill]) -> (i64, Decimal, Decimal, Decimal, Decimal) {
    fills.iter().fold(
        (
            0,
            Decimal::ZERO,
            Decimal::ZERO,
            Decimal::ZERO,
            Decimal::ZERO,
        ),
        |(n, q, v, r, c), f| {
            (
                n + 1,
                q + f.signed_quantity(),
                v + f.total_value(),
                r + f.realized,
                c + f.commission,
            )
        },
    )
}

/// The same, from the books.
async fn books(db: &TestDb) -> (i64, Decimal, Decimal, Decimal, Decimal) {
    let row = db
        .client
        .query_one(
            "SELECT COALESCE(sum(trade_count), 0)::int8, COALESCE(sum(net_quantity), 0),
                    COALESCE(sum(total_value), 0), COALESCE(sum(realized_pnl), 0),
                    COALESCE(sum(commission), 0)
               FROM analytics.portfolio_summary",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// Maintenance's ledger retention alone, with `days` of retention: the rows it retired.
async fn retire_ledger(db: &TestDb, days: u32) -> u64 {
    let config = trading_sync::config::MaintenanceConfig {
        partitions_ahead_years: 0,
        log_retention_days: 0,
        dead_letter_retention_days: 0,
        ledger_retention_days: days,
        ..Default::default()
    };
    let report = trading_sync::maintenance::run_once(&db.client, &config, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    report.ledger_rows_deleted
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

fn settings(grace_ms: u64) -> Settings {
    Settings {
        grace: Duration::from_millis(grace_ms),
        ledger_retention_days: 400,
        exchange_tz: chrono_tz::America::New_York,
        instance: "test".into(),
    }
}

fn request() -> Request {
    Request {
        trigger: Trigger::Command,
        since: None,
        dry_run: false,
        skip_if_ran_within: None,
        lock_wait: Duration::from_secs(30),
    }
}

async fn reconcile_as(url: &str, settings: &Settings, request: &Request) -> Report {
    let mut client = common::connect(url).await;
    match run_once(&mut client, settings, request).await.unwrap() {
        Outcome::Ran(report) => report,
        other => panic!("reconcile did not run: {other:?}"),
    }
}

async fn reconcile(db: &TestDb, grace_ms: u64) -> Report {
    reconcile_as(&db.url, &settings(grace_ms), &request()).await
}

/// `trading-sync verify` against the test's database: (exit code, output).
fn verify(db: &TestDb) -> (i32, String) {
    verify_with(db, &[])
}

fn verify_with(db: &TestDb, env: &[(&str, &str)]) -> (i32, String) {
    let mut env = env.to_vec();
    env.push(("TRADING_SYNC__RECONCILE__GRACE_MS", "0"));
    let (code, stdout, stderr) = common::process::command(&db.url, &["verify"], &env);
    (code, stdout + &stderr)
}

#[tokio::test]
async fn a_reconcile_applies_rows_the_ledger_lacks_once_and_leaves_applied_ones() {
    let db = TestDb::new().await;
    let all = fills("R", 300);
    for f in &all {
        commit_fill(&db.client, f).await;
    }
    // The first 100 already arrived as events: the writer's own path.
    {
        let mut client = common::connect(&db.url).await;
        let stmts = trading_sync::apply::store::Statements::prepare(&client)
            .await
            .unwrap();
        let limits = trading_sync::events::DecodeLimits::default();
        let messages: Vec<_> = all[..100]
            .iter()
            .map(|f| {
                trading_sync::core::queue::Inbound::new(
                    trading_sync::events::ChannelKind::Trades,
                    f.event().into_bytes(),
                )
            })
            .collect();
        let plan = trading_sync::apply::fold::plan(&messages, &limits);
        assert_eq!(plan.trades.len(), 100, "{:?}", plan.dead_letters);
        trading_sync::apply::store::apply(&mut client, &stmts, &plan)
            .await
            .unwrap();
    }
    let report = reconcile(&db, 0).await;
    assert_eq!(report.applied.len(), 200);
    assert_eq!(report.already_present, 100);
    assert!(report.unusable.is_empty(), "{:?}", report.unusable);
    assert_eq!(report.applied.first().map(String::as_str), Some("R-000100"));
    assert_eq!(books(&db).await, expected(&all));
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM analytics.applied_trades WHERE source = 'row'"
        )
        .await,
        200
    );
    // Rows and events agree to the last digit: the same trade either way.
    let metrics = db
        .client
        .query_one(
            "SELECT sum(total_trades)::int8, sum(winning_trades)::int8, sum(volume), sum(notional)
               FROM analytics.performance_metrics WHERE strategy = 'heal'",
            &[],
        )
        .await
        .unwrap();
    let winners = all.iter().filter(|f| f.realized > Decimal::ZERO).count() as i64;
    let volume: Decimal = all.iter().map(|f| f.quantity).sum();
    let notional: Decimal = all.iter().map(|f| f.total_value().abs()).sum();
    assert_eq!(metrics.get::<_, i64>(0), 300);
    assert_eq!(metrics.get::<_, i64>(1), winners);
    assert_eq!(metrics.get::<_, Decimal>(2), volume);
    assert_eq!(metrics.get::<_, Decimal>(3), notional);
    // The change log is consumed: a second run has nothing to do.
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.trade_changes").await,
        0
    );
    let again = reconcile(&db, 0).await;
    assert_eq!((again.applied.len(), again.already_present), (0, 0));
    assert_eq!(books(&db).await, expected(&all));
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.reconcile_runs").await,
        2
    );
    let (code, out) = verify(&db);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn the_grace_period_leaves_fresh_rows_and_a_dry_run_changes_nothing() {
    let db = TestDb::new().await;
    let all = fills("G", 20);
    for f in &all {
        commit_fill(&db.client, f).await;
    }
    let waiting = reconcile(&db, 3_600_000).await;
    assert_eq!(
        waiting.applied.len(),
        0,
        "rows younger than the grace period"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.trade_changes").await,
        20
    );
    let dry = reconcile_as(
        &db.url,
        &settings(0),
        &Request {
            dry_run: true,
            ..request()
        },
    )
    .await;
    assert!(dry.dry_run);
    assert_eq!(dry.applied.len(), 20);
    let listing = trading_sync::cli::render_reconcile(&dry);
    assert!(listing.contains("trade G-000007: would apply"), "{listing}");
    assert!(listing.contains("dry run, nothing changed"), "{listing}");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.applied_trades").await,
        0
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.trade_changes").await,
        20
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.reconcile_runs").await,
        1,
        "the waiting run only: a dry run records none"
    );
    assert_eq!(reconcile(&db, 0).await.applied.len(), 20);
    assert_eq!(books(&db).await, expected(&all));
}

/// created_at is a transaction's start: a trade committed by a transaction older than a run
/// must still be healed by the next one (no timestamp watermark).
#[tokio::test]
async fn a_trade_committed_by_a_long_transaction_is_still_healed() {
    let db = TestDb::new().await;
    let first = fills("EARLY", 1);
    let late = fills("LONG", 1);
    let mut long = common::connect(&db.url).await;
    let tx = long.transaction().await.unwrap();
    commit_fill(&tx, &late[0]).await;
    commit_fill(&db.client, &first[0]).await;
    let before = reconcile(&db, 0).await;
    assert_eq!(before.applied, vec!["EARLY-000000".to_owned()]);
    tx.commit().await.unwrap();
    let after = reconcile(&db, 0).await;
    assert_eq!(after.applied, vec!["LONG-000000".to_owned()]);
    let both: Vec<Fill> = first.into_iter().chain(late).collect();
    assert_eq!(books(&db).await, expected(&both));
}

#[tokio::test]
async fn a_row_with_no_side_anywhere_is_reported_and_not_applied() {
    let db = TestDb::new().await;
    let good = fills("OK", 3);
    for f in &good {
        commit_fill(&db.client, f).await;
    }
    db.client
        .execute(
            "INSERT INTO execution.trades (trade_id, account_id, symbol, quantity, price, executed_at)
             VALUES ('NOSIDE-1', 'ACC9', 'AAPL', 5, 10, now())",
            &[],
        )
        .await
        .unwrap();
    let report = reconcile(&db, 0).await;
    assert_eq!(report.applied.len(), 3);
    assert_eq!(report.unusable.len(), 1);
    assert_eq!(report.unusable[0].trade_id, "NOSIDE-1");
    assert_eq!(report.unusable[0].kind, "no_side");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM analytics.applied_trades WHERE trade_id = 'NOSIDE-1'"
        )
        .await,
        0
    );
    assert_eq!(books(&db).await, expected(&good));
    // Through the command: reported by trade_id; verify keeps naming it until it is fixed.
    db.client
        .execute(
            "INSERT INTO execution.trades (trade_id, account_id, symbol, quantity, price, executed_at)
             VALUES ('NOSIDE-2', 'ACC9', 'AAPL', 5, 10, now())",
            &[],
        )
        .await
        .unwrap();
    let (code, stdout, stderr) = common::process::command(
        &db.url,
        &["reconcile"],
        &[("TRADING_SYNC__RECONCILE__GRACE_MS", "0")],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("trade NOSIDE-2: unusable (no_side)"),
        "{stdout}"
    );
    assert!(stdout.contains("unusable: 1"), "{stdout}");
    let (code, out) = verify(&db);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOSIDE-2"), "{out}");
    // Once the execution service fills in the side, the update is logged and healed.
    db.client
        .execute(
            "UPDATE execution.trades SET side = 'buy' WHERE trade_id LIKE 'NOSIDE-%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reconcile(&db, 0).await.applied.len(), 2);
}

/// The writer and a reconcile apply the same trades at the same time, events arriving while
/// the rows are applied: each trade counts once.
#[tokio::test]
async fn reconcile_racing_the_live_writer_applies_nothing_twice() {
    let mut app = common::spawn_app(|c| c.sync.batch_max_events = 50).await;
    let all = fills("RACE", 3_000);
    let prefix = app.config.redis.channel_prefix.clone();
    let (db_url, fills_sent) = (app.db.url.clone(), all.clone());
    let mut conn = app.redis.clone();
    // Commits a hundred fills, publishes their events, and so on: each chunk's rows become
    // visible to reconcile while its events are on their way to the writer.
    let publisher = tokio::spawn(async move {
        let client = common::connect(&db_url).await;
        for chunk in fills_sent.chunks(100) {
            for f in chunk {
                commit_fill(&client, f).await;
            }
            let mut pipe = redis::pipe();
            for f in chunk {
                pipe.cmd("PUBLISH")
                    .arg(format!("{prefix}:trades"))
                    .arg(f.event())
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
    });
    let url = app.db.url.clone();
    let mut healed = 0;
    let mut runs = 0;
    while !publisher.is_finished() || runs == 0 {
        let report = reconcile_as(&url, &settings(0), &request()).await;
        healed += report.applied.len();
        runs += 1;
    }
    publisher.await.unwrap();
    eventually(
        "every trade in the ledger",
        Duration::from_secs(60),
        || async {
            (scalar(&app.db, "SELECT count(*) FROM analytics.applied_trades").await == 3_000)
                .then_some(())
        },
    )
    .await;
    // Whatever is left in flight settles; nothing may be counted twice meanwhile or after.
    eventually("the queue empty", Duration::from_secs(30), || async {
        (app.state.queue_depth() == 0).then_some(())
    })
    .await;
    assert_eq!(books(&app.db).await, expected(&all));
    let from_rows = scalar(
        &app.db,
        "SELECT count(*) FROM analytics.applied_trades WHERE source = 'row'",
    )
    .await;
    assert_eq!(from_rows, healed as i64);
    eprintln!("{runs} reconcile runs healed {healed} of 3000 trades while their events arrived");
    assert!(healed > 0, "the race did not happen: events won every time");
    assert!(
        healed < 3_000,
        "the race did not happen: rows won every time"
    );
    app.publish("trades", all[0].event()).await;
    let (code, out) = verify(&app.db);
    assert_eq!(code, 0, "{out}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn since_heals_history_before_the_log_but_never_beyond_retention() {
    let db = TestDb::new().await;
    let old = fills("HIST", 10);
    for f in &old {
        commit_fill(&db.client, f).await;
    }
    // History from before the change log existed.
    db.client
        .execute("DELETE FROM analytics.trade_changes", &[])
        .await
        .unwrap();
    assert_eq!(reconcile(&db, 0).await.applied.len(), 0);
    let since = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let report = reconcile_as(
        &db.url,
        &settings(0),
        &Request {
            since: Some(since),
            ..request()
        },
    )
    .await;
    assert_eq!(report.applied.len(), 10);
    assert_eq!(books(&db).await, expected(&old));

    let short = Settings {
        ledger_retention_days: 1,
        ..settings(0)
    };
    let mut client = common::connect(&db.url).await;
    let refused = run_once(
        &mut client,
        &short,
        &Request {
            since: Some(since - chrono::Duration::days(30)),
            ..request()
        },
    )
    .await
    .unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("retention horizon") && message.contains("ledger_retention_days = 1"),
        "{message}"
    );
    // A logged trade executed before the horizon is refused too: its ledger row may be gone.
    let ancient = Fill {
        executed_at: Utc::now() - chrono::Duration::days(3),
        ..fills("ANCIENT", 1).remove(0)
    };
    commit_fill(&db.client, &ancient).await;
    let report = reconcile_as(&db.url, &short, &request()).await;
    assert_eq!(report.applied.len(), 0);
    assert_eq!(report.unusable.len(), 1);
    assert_eq!(report.unusable[0].kind, "beyond_retention");
}

/// Retention folds what it retires into the baseline: the books still verify.
#[tokio::test]
async fn retention_folds_retired_contributions_into_the_baseline() {
    let db = TestDb::new().await;
    let all = fills("RET", 50);
    for f in &all {
        commit_fill(&db.client, f).await;
    }
    assert_eq!(reconcile(&db, 0).await.applied.len(), 50);
    db.client
        .batch_execute(
            "UPDATE analytics.applied_trades
                SET applied_at = now() - interval '10 days', executed_at = now() - interval '10 days'
              WHERE trade_id < 'RET-000030';
             UPDATE execution.trades SET executed_at = now() - interval '10 days'
              WHERE trade_id < 'RET-000030'",
        )
        .await
        .unwrap();
    assert_eq!(retire_ledger(&db, 5).await, 30);
    assert_eq!(
        scalar(
            &db,
            "SELECT sum(trade_count)::int8 FROM analytics.ledger_baseline_portfolio"
        )
        .await,
        30
    );
    assert_eq!(books(&db).await, expected(&all));
    // verify knows the horizon: the retired trades' rows are not "missing".
    let (code, out) = verify_with(
        &db,
        &[
            ("TRADING_SYNC__MAINTENANCE__LEDGER_RETENTION_DAYS", "5"),
            // No longer than the ledger (check-config's rule).
            ("TRADING_SYNC__MAINTENANCE__DEAD_LETTER_RETENTION_DAYS", "5"),
        ],
    );
    assert_eq!(code, 0, "{out}");
}

/// Positions newer in execution.positions are copied; rows are priced from the latest bar with
/// a close, including rows created after that bar (which live marks alone leave unpriced).
#[tokio::test]
async fn positions_are_refreshed_and_rows_priced_from_stored_bars() {
    let db = TestDb::new().await;
    let c = &db.client;
    for f in fills("P", 3) {
        commit_fill(c, &f).await;
    }
    c.batch_execute(
        "INSERT INTO data_ingestion.symbols (symbol) VALUES ('AAPL'), ('MSFT'), ('SPY');
         INSERT INTO data_ingestion.market_data (symbol, \"timestamp\", open, high, low, close, volume)
         VALUES ('AAPL', '2026-11-30 21:00+00', 101.5, 101.5, 101.5, 101.5, 10),
                ('AAPL', '2026-12-01 21:00+00', 102.25, 102.25, 102.25, 102.25, 10),
                ('AAPL', '2026-12-02 21:00+00', NULL, NULL, NULL, NULL, 10),
                ('MSFT', '2026-12-01 21:00+00', 300, 300, 300, 300, 10);
         INSERT INTO execution.positions (account_id, symbol, quantity, avg_price, realized_pnl, last_updated)
         VALUES ('ACC0', 'AAPL', 7, 99.5, 12, '2026-12-01 16:00+00'),
                ('ACC9', 'SPY', 3, 450, 0, '2026-12-01 16:00+00');
         INSERT INTO analytics.portfolio_summary (account_id, symbol, quantity, avg_price, position_as_of)
         VALUES ('ACC9', 'SPY', 1, 400, '2026-12-01 17:00+00');",
    )
    .await
    .unwrap();
    let report = reconcile(&db, 0).await;
    assert_eq!(report.applied.len(), 3);
    assert_eq!(
        report.positions_refreshed,
        vec![("ACC0".to_owned(), "AAPL".to_owned())],
        "ACC9/SPY's stored snapshot is newer than execution.positions'"
    );
    let mut priced = report.rows_priced.clone();
    priced.sort();
    assert_eq!(
        priced,
        vec![
            ("ACC0".to_owned(), "AAPL".to_owned()),
            ("ACC1".to_owned(), "MSFT".to_owned())
        ]
    );
    let row = c
        .query_one(
            "SELECT quantity, avg_price, last_price, last_price_at, unrealized_pnl
               FROM analytics.portfolio_summary WHERE account_id = 'ACC0' AND symbol = 'AAPL'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<Decimal>>(0), Some(Decimal::from(7)));
    assert_eq!(row.get::<_, Option<Decimal>>(1), Some(Decimal::new(995, 1)));
    assert_eq!(
        row.get::<_, Option<Decimal>>(2),
        Some(Decimal::new(10225, 2)),
        "the latest bar with a close"
    );
    assert_eq!(
        row.get::<_, Option<DateTime<Utc>>>(3),
        Some(Utc.with_ymd_and_hms(2026, 12, 1, 21, 0, 0).unwrap())
    );
    assert_eq!(
        row.get::<_, Option<Decimal>>(4),
        Some((Decimal::new(10225, 2) - Decimal::new(995, 1)) * Decimal::from(7))
    );
    let spy: Decimal = c
        .query_one(
            "SELECT quantity FROM analytics.portfolio_summary WHERE account_id = 'ACC9'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(spy, Decimal::ONE);
    let again = reconcile(&db, 0).await;
    assert!(!again.healed_anything(), "{again:?}");
}

/// Reconcile, positions and marks included, within the least-privilege role's grants.
#[tokio::test]
async fn reconcile_runs_within_the_trading_sync_role() {
    let db = TestDb::new().await;
    let all = fills("ROLE", 30);
    for f in &all {
        commit_fill(&db.client, f).await;
    }
    db.client
        .batch_execute(
            "INSERT INTO data_ingestion.symbols (symbol) VALUES ('AAPL');
             INSERT INTO data_ingestion.market_data (symbol, \"timestamp\", open, high, low, close, volume)
             VALUES ('AAPL', '2026-12-01 21:00+00', 101.5, 101.5, 101.5, 101.5, 10);
             INSERT INTO execution.positions (account_id, symbol, quantity, avg_price, last_updated)
             VALUES ('ACC0', 'AAPL', 7, 99.5, now());",
        )
        .await
        .unwrap();
    let login = common::LoginRole::create("trading_sync").await;
    let url = login.url(&db.url);
    let result = async {
        let mut client = common::connect(&url).await;
        run_once(&mut client, &settings(0), &request()).await
    }
    .await;
    login.drop(&db).await;
    let Outcome::Ran(report) = result.unwrap() else {
        panic!("did not run")
    };
    assert_eq!(report.applied.len(), 30);
    assert_eq!(report.positions_refreshed.len(), 1);
    assert_eq!(
        report.rows_priced.len(),
        4,
        "AAPL in all four accounts: {report:?}"
    );
    assert_eq!(books(&db).await, expected(&all));
}

fn daemon_env(grace_ms: u64, interval_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("TRADING_SYNC__RECONCILE__GRACE_MS", grace_ms.to_string()),
        (
            "TRADING_SYNC__RECONCILE__INTERVAL_SECS",
            interval_secs.to_string(),
        ),
        ("TRADING_SYNC__HTTP__ENABLED", "false".into()),
    ]
}

/// The execution service: commits each fill, then publishes its event (through a Redis that may
/// be away: a failed publish is simply lost, as with the seed's publisher). Returns the number
/// of events no subscriber received.
async fn execution_service(
    db_url: String,
    redis_url: String,
    prefix: String,
    all: Vec<Fill>,
    rate: f64,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> usize {
    use std::sync::atomic::Ordering;
    let client = common::connect(&db_url).await;
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut lost = 0;
    let start = std::time::Instant::now();
    for (i, f) in all.iter().enumerate() {
        // Paced: the load spans the faults; the pace is the point, not synchronisation.
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        commit_fill(&client, f).await;
        if conn.is_none() {
            conn = loadgen::connect_redis(&redis_url).await.ok();
        }
        let received = match conn.as_mut() {
            Some(c) => match redis::cmd("PUBLISH")
                .arg(format!("{prefix}:trades"))
                .arg(f.event())
                .query_async::<i64>(c)
                .await
            {
                Ok(n) => n,
                Err(_) => {
                    conn = None;
                    0
                }
            },
            None => 0,
        };
        if received == 0 {
            lost += 1;
        }
        done.store(i + 1, Ordering::Relaxed);
    }
    lost
}

async fn assert_healed(db: &TestDb, all: &[Fill], daemon: &Daemon) {
    eventually(
        "every trade applied, from its event or its row",
        Duration::from_secs(60),
        || async {
            (scalar(db, "SELECT count(*) FROM analytics.applied_trades").await == all.len() as i64)
                .then_some(())
        },
    )
    .await;
    assert_eq!(books(db).await, expected(all), "lost or duplicated");
    // Logged after the commit that made the ledger complete: polled, not assumed written.
    let healed = eventually("the heal line", Duration::from_secs(20), || async {
        daemon
            .logs()
            .into_iter()
            .find(|l| l["message"] == "reconcile healed what events did not deliver")
    })
    .await;
    assert!(healed["trades"].as_u64().unwrap() > 0);
    assert!(healed["first_trade_id"].is_string());
    let (code, out) = verify(db);
    assert_eq!(code, 0, "{out}");
}

/// The hole a restart used to leave: trades published while the daemon is stopped are healed
/// by the daemon's own reconcile at its next start.
#[tokio::test]
async fn trades_published_while_the_daemon_is_stopped_are_healed_at_start() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let db = TestDb::new().await;
    let prefix = common::unique_name("ts_test");
    let env = daemon_env(1_000, 3_600);
    let mut daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    let probe = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually("subscribed", Duration::from_secs(20), || {
        let (mut probe, prefix) = (probe.clone(), prefix.clone());
        async move { (common::subscribers(&mut probe, &prefix).await[0] > 0).then_some(()) }
    })
    .await;
    let all = fills("STOP", 3_000);
    let done = Arc::new(AtomicUsize::new(0));
    let service = tokio::spawn(execution_service(
        db.url.clone(),
        common::redis_url(),
        prefix.clone(),
        all.clone(),
        500.0,
        done.clone(),
    ));
    eventually("a third published", Duration::from_secs(30), || async {
        (done.load(Ordering::Relaxed) >= 1_000).then_some(())
    })
    .await;
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(20)).success());
    // Stopped for the time 1,000 more trades take (about 2 s at this pace).
    eventually(
        "trades published while stopped",
        Duration::from_secs(30),
        || async { (done.load(Ordering::Relaxed) >= 2_000).then_some(()) },
    )
    .await;
    daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    let lost_by_pubsub = service.await.unwrap();
    assert!(lost_by_pubsub >= 500, "only {lost_by_pubsub} events lost");
    assert_healed(&db, &all, &daemon).await;
    let from_rows = scalar(
        &db,
        "SELECT count(*) FROM analytics.applied_trades WHERE source = 'row'",
    )
    .await;
    assert!(
        from_rows >= lost_by_pubsub as i64,
        "{from_rows} < {lost_by_pubsub}"
    );
    eprintln!(
        "daemon stopped mid-load: {lost_by_pubsub} of 3000 events unheard, {from_rows} healed from rows; lost 0, duplicated 0"
    );
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(20)).success());
}

/// A Redis crash mid-load: what pub/sub dropped is healed after the resubscription.
#[tokio::test]
async fn trades_lost_to_a_redis_restart_are_healed_after_resubscription() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let db = TestDb::new().await;
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    redis.wait_up().await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let prefix = common::unique_name("ts_test");
    // The interval is far off: only the resubscription can heal within the test.
    let daemon = Daemon::start_with_prefix(&db, &url, &prefix, &daemon_env(1_000, 3_600));
    eventually("the start run", Duration::from_secs(30), || async {
        (scalar(&db, "SELECT count(*) FROM analytics.reconcile_runs").await > 0).then_some(())
    })
    .await;
    let all = fills("CRASH", 3_000);
    let done = Arc::new(AtomicUsize::new(0));
    let service = tokio::spawn(execution_service(
        db.url.clone(),
        url.clone(),
        prefix.clone(),
        all.clone(),
        500.0,
        done.clone(),
    ));
    eventually("a third published", Duration::from_secs(30), || async {
        (done.load(Ordering::Relaxed) >= 1_000).then_some(())
    })
    .await;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    eventually(
        "trades published while Redis is down",
        Duration::from_secs(30),
        || async { (done.load(Ordering::Relaxed) >= 1_500).then_some(()) },
    )
    .await;
    redis = PrivateRedis::start(port);
    redis.wait_up().await;
    let lost_by_pubsub = service.await.unwrap();
    assert!(lost_by_pubsub >= 300, "only {lost_by_pubsub} events lost");
    assert_healed(&db, &all, &daemon).await;
    let resubscribed = scalar(
        &db,
        "SELECT count(*) FROM analytics.reconcile_runs WHERE trigger = 'resubscribed'",
    )
    .await;
    assert!(resubscribed >= 1);
    eprintln!(
        "Redis restarted mid-load: {lost_by_pubsub} of 3000 events lost by pub/sub, all healed"
    );
    drop(daemon);
    drop(redis);
}

/// Two instances with reconcile on: each scheduled tick runs once across them.
#[tokio::test]
async fn two_daemons_run_each_scheduled_reconcile_once() {
    let db = TestDb::new().await;
    let prefix = common::unique_name("ts_test");
    let env = daemon_env(0, 1);
    let with_name = |name: &str| {
        let mut env = env.clone();
        env.push(("TRADING_SYNC__STREAMS__CONSUMER", name.to_owned()));
        env
    };
    let a = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &with_name("a"));
    let b = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &with_name("b"));
    eventually("eight scheduled runs", Duration::from_secs(60), || async {
        (scalar(
            &db,
            "SELECT count(*) FROM analytics.reconcile_runs WHERE trigger = 'interval'",
        )
        .await
            >= 8)
            .then_some(())
    })
    .await;
    let rows = db
        .client
        .query(
            "SELECT started_at, instance FROM analytics.reconcile_runs
              WHERE trigger = 'interval' ORDER BY started_at",
            &[],
        )
        .await
        .unwrap();
    let starts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.get(0)).collect();
    let instances: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(1)).collect();
    eprintln!("scheduled runs by instance: {instances:?}");
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::Duration::milliseconds(850),
            "two scheduled runs {gap} apart: {starts:?}"
        );
    }
    drop(a);
    drop(b);
}

/// A database as the previous release left it (V20: ledger rows without contributions, and the
/// aggregates they explain) verifies clean once migrated, keeps doing so as new trades are
/// applied, and still catches a tampered row.
#[tokio::test]
async fn a_database_upgraded_from_v20_verifies_clean() {
    let name = common::unique_name("ts_test");
    let _drop = common::DropDatabase(name.clone());
    let config = common::database_config(&name);
    trading_sync::db::migrate::migrate_to(&config, Some(20))
        .await
        .unwrap();
    let url = common::database_url(&name);
    let old = common::connect(&url).await;
    // What the V20 writer committed for two trades of A/AAPL and one of B/MSFT.
    old.batch_execute(
        "INSERT INTO analytics.applied_trades (trade_id, account_id, symbol, strategy, executed_at)
         VALUES ('OLD-1', 'A', 'AAPL', 'heal', '2026-11-02 15:00+00'),
                ('OLD-2', 'A', 'AAPL', 'heal', '2026-11-02 16:00+00'),
                ('OLD-3', 'B', 'MSFT', NULL, '2026-11-03 15:00+00');
         INSERT INTO analytics.portfolio_summary
                (account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, commission)
         VALUES ('A', 'AAPL', 2, 5, 512.5, 12, 2), ('B', 'MSFT', 1, -1, -300, 0, 0);
         INSERT INTO analytics.performance_metrics
                (strategy, date, total_trades, winning_trades, realized_pnl, volume, notional, commission)
         VALUES ('heal', '2026-11-02', 2, 1, 12, 5, 512.5, 2);",
    )
    .await
    .unwrap();
    let outcome = trading_sync::db::migrate::migrate(&config).await.unwrap();
    assert!(
        outcome.applied.iter().any(|m| m.contains("reconcile")),
        "{:?}",
        outcome.applied
    );
    let verify_db = |args: &[&str]| {
        let mut args = args.to_vec();
        args.insert(0, "verify");
        let (code, stdout, stderr) = common::process::command(&url, &args, &[]);
        (Some(code), stdout + &stderr)
    };
    let (code, out) = verify_db(&[]);
    assert_eq!(code, Some(0), "{out}");
    // New trades on the same keys, from rows: baseline + contributions still add up.
    let client = common::connect(&url).await;
    let new = fills("NEW", 40);
    for f in &new {
        commit_fill(&client, f).await;
    }
    let report = reconcile_as(&url, &settings(0), &request()).await;
    assert_eq!(report.applied.len(), 40);
    let (code, out) = verify_db(&[]);
    assert_eq!(code, Some(0), "{out}");
    client
        .execute(
            "UPDATE analytics.portfolio_summary SET trade_count = trade_count + 1
              WHERE account_id = 'B' AND symbol = 'MSFT'",
            &[],
        )
        .await
        .unwrap();
    let (code, out) = verify_db(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("account_id=B symbol=MSFT: trade_count stored 2, expected 1"),
        "{out}"
    );
}

/// What retention retired is known to the database, not only to the configuration: a reconcile
/// run with a longer (or no) retention setting, or from a shell without the daemon's overrides,
/// neither accepts a --since before it nor re-applies a retired trade logged again.
#[tokio::test]
async fn retired_trades_are_never_applied_again_whatever_the_configuration_says() {
    let db = TestDb::new().await;
    let old = fills("OLD", 10)
        .into_iter()
        .map(|f| Fill {
            executed_at: Utc::now() - chrono::Duration::days(20),
            ..f
        })
        .collect::<Vec<_>>();
    for f in &old {
        commit_fill(&db.client, f).await;
    }
    assert_eq!(reconcile(&db, 0).await.applied.len(), 10);
    db.client
        .batch_execute(
            "UPDATE analytics.applied_trades SET applied_at = now() - interval '20 days'",
        )
        .await
        .unwrap();
    assert_eq!(retire_ledger(&db, 5).await, 10);
    // A run configured with 30 days of retention, as a shell without the daemon's settings.
    let long = Settings {
        ledger_retention_days: 30,
        ..settings(0)
    };
    let mut client = common::connect(&db.url).await;
    let refused = run_once(
        &mut client,
        &long,
        &Request {
            since: Some(Utc::now() - chrono::Duration::days(25)),
            ..request()
        },
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("retention horizon"),
        "{refused}"
    );
    // The execution service backfills a column: every retired row is logged again.
    db.client
        .batch_execute("UPDATE execution.trades SET realized_pnl = 0 WHERE realized_pnl IS NULL")
        .await
        .unwrap();
    let report = reconcile_as(&db.url, &long, &request()).await;
    assert_eq!(report.applied.len(), 0, "{report:?}");
    assert!(report.unusable.iter().all(|u| u.kind == "beyond_retention"));
    assert_eq!(
        books(&db).await,
        expected(&old),
        "counted once, in the baseline"
    );
    let (code, out) = verify_with(
        &db,
        &[("TRADING_SYNC__MAINTENANCE__LEDGER_RETENTION_DAYS", "0")],
    );
    assert_eq!(code, 0, "{out}");
}

/// A row the database refuses (here a constraint added for the test) is reported, and the rest
/// of its chunk is applied: one bad row must not stall every later run at the same chunk.
#[tokio::test]
async fn a_row_the_database_refuses_does_not_stall_its_chunk() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "ALTER TABLE analytics.applied_trades
               ADD CONSTRAINT test_poison CHECK (trade_id <> 'POISON-000001')",
        )
        .await
        .unwrap();
    let all = fills("POISON", 5);
    for f in &all {
        commit_fill(&db.client, f).await;
    }
    db.client
        .execute(
            "INSERT INTO execution.trades (trade_id, account_id, symbol, side, quantity, price, executed_at)
             VALUES ('', 'ACC0', 'AAPL', 'buy', 1, 1, now())",
            &[],
        )
        .await
        .unwrap();
    let report = reconcile(&db, 0).await;
    assert_eq!(report.applied.len(), 4, "{report:?}");
    let mut unusable: Vec<(&str, &str)> = report
        .unusable
        .iter()
        .map(|u| (u.trade_id.as_str(), u.kind))
        .collect();
    unusable.sort();
    assert_eq!(unusable, [("", "bad_value"), ("POISON-000001", "refused")]);
    let applied: Vec<Fill> = all
        .iter()
        .filter(|f| f.id != "POISON-000001")
        .cloned()
        .collect();
    assert_eq!(books(&db).await, expected(&applied));
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.trade_changes").await,
        0,
        "the chunk was consumed"
    );
}
