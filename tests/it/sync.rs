//! The event path end to end: real Redis pub/sub in, real PostgreSQL out.
//!
//! Expected aggregates are computed here, independently of the daemon's fold, from the very
//! events the test publishes.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use common::{eventually, python_dumps, spawn_app, App};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Trade {
    id: String,
    account: String,
    symbol: String,
    strategy: Option<String>,
    sell: bool,
    quantity: Decimal,
    price: Decimal,
    /// Sent only when Some; otherwise the daemon derives quantity × price.
    total_value: Option<Decimal>,
    realized: Decimal,
    commission: Decimal,
    executed_at: DateTime<Utc>,
}

impl Trade {
    fn total(&self) -> Decimal {
        self.total_value.unwrap_or_else(|| {
            let v = self.quantity * self.price;
            if self.sell {
                -v
            } else {
                v
            }
        })
    }

    fn trade_date(&self) -> NaiveDate {
        self.executed_at
            .with_timezone(&chrono_tz::America::New_York)
            .date_naive()
    }

    /// The wire form; `as_strings` sends decimals as JSON strings, as some publishers do.
    fn payload(&self, as_strings: bool) -> String {
        let num = |d: Decimal| -> Value {
            if as_strings {
                Value::String(d.to_string())
            } else {
                Value::Number(serde_json::Number::from_string_unchecked(d.to_string()))
            }
        };
        let mut data = json!({
            "trade_id": self.id,
            "account_id": self.account,
            "symbol": self.symbol,
            "side": if self.sell { "sell" } else { "buy" },
            "quantity": num(self.quantity),
            "price": num(self.price),
            "realized_pnl": num(self.realized),
            "commission": num(self.commission),
            "executed_at": self.executed_at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        });
        if let Some(s) = &self.strategy {
            data["strategy"] = json!(s);
        }
        if let Some(v) = self.total_value {
            data["total_value"] = num(v);
        }
        python_dumps(&json!({
            "type": "trade_executed",
            "service": "execution",
            "data": data,
            "timestamp": "2025-11-24T21:00:00.000000",
            "correlation_id": self.id,
        }))
    }
}

fn decimal(rng: &mut StdRng, lo: i64, hi: i64, scale: u32) -> Decimal {
    Decimal::new(rng.random_range(lo..hi), scale)
}

fn trades(rng: &mut StdRng, n: usize, tag: &str) -> Vec<Trade> {
    // Around midnight UTC, so the New York trading date differs from the UTC date for some.
    let base = Utc.with_ymd_and_hms(2025, 11, 24, 20, 0, 0).unwrap();
    (0..n)
        .map(|i| {
            let sell = rng.random_bool(0.4);
            Trade {
                id: format!("{tag}-{i:06}"),
                account: format!("ACC{}", rng.random_range(0..4)),
                symbol: ["AAPL", "MSFT", "NVDA", "TSLA", "SPY"][rng.random_range(0..5)].into(),
                strategy: [None, Some("momentum"), Some("mean_rev"), Some("pairs")]
                    [rng.random_range(0..4)]
                .map(str::to_owned),
                sell,
                quantity: decimal(rng, 1, 50_000, 2),
                price: decimal(rng, 1_000, 90_000, 2),
                total_value: rng
                    .random_bool(0.3)
                    .then(|| decimal(rng, -10_000_000, 10_000_000, 4)),
                realized: decimal(rng, -100_000, 100_000, 4),
                commission: decimal(rng, 0, 500, 2),
                executed_at: base + ChronoDuration::seconds(rng.random_range(0..10 * 3600)),
            }
        })
        .collect()
}

type PortfolioRow = (i64, Decimal, Decimal, Decimal, Decimal);
type MetricsRow = (i64, i64, Decimal, Decimal, Decimal, Decimal);
type Aggregates = (
    BTreeMap<(String, String), PortfolioRow>,
    BTreeMap<(String, NaiveDate), MetricsRow>,
);

fn expected(trades: &[Trade]) -> Aggregates {
    let mut portfolio: BTreeMap<(String, String), PortfolioRow> = BTreeMap::new();
    let mut metrics: BTreeMap<(String, NaiveDate), MetricsRow> = BTreeMap::new();
    for t in trades {
        let p = portfolio
            .entry((t.account.clone(), t.symbol.clone()))
            .or_default();
        p.0 += 1;
        p.1 += if t.sell { -t.quantity } else { t.quantity };
        p.2 += t.total();
        p.3 += t.realized;
        p.4 += t.commission;
        if let Some(s) = &t.strategy {
            let m = metrics.entry((s.clone(), t.trade_date())).or_default();
            m.0 += 1;
            m.1 += i64::from(t.realized > Decimal::ZERO);
            m.2 += t.realized;
            m.3 += t.quantity;
            m.4 += t.total().abs();
            m.5 += t.commission;
        }
    }
    (portfolio, metrics)
}

async fn actual(app: &App) -> Aggregates {
    let portfolio = app
        .db
        .client
        .query(
            "SELECT account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, commission \
             FROM analytics.portfolio_summary WHERE trade_count > 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))))
        .collect();
    let metrics = app
        .db
        .client
        .query(
            "SELECT strategy, date, total_trades, winning_trades, realized_pnl, volume, notional, commission \
             FROM analytics.performance_metrics",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)),
            )
        })
        .collect();
    (portfolio, metrics)
}

async fn wait_for_ledger(app: &App, count: i64) {
    eventually(
        "every trade in the ledger",
        Duration::from_secs(30),
        || async {
            let n = app
                .scalar_i64("SELECT count(*) FROM analytics.applied_trades")
                .await;
            (n == count).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn mixed_events_give_exactly_the_expected_aggregates() {
    let mut app = spawn_app(|_| {}).await;
    let mut rng = StdRng::seed_from_u64(7);
    let trades = trades(&mut rng, 3_000, "T");
    for (i, t) in trades.iter().enumerate() {
        app.publish("trades", t.payload(i % 3 == 0)).await;
    }
    // Position snapshots, out of order: the newest as_of must win.
    let t0 = Utc.with_ymd_and_hms(2025, 11, 24, 15, 0, 0).unwrap();
    for minute in [5, 1, 9, 3] {
        let payload = python_dumps(&json!({
            "type": "position_updated", "service": "execution",
            "data": {"account_id": "ACC0", "symbol": "AAPL", "quantity": 100 + minute,
                     "avg_price": "150.5", "as_of": (t0 + ChronoDuration::minutes(minute)).to_rfc3339()},
            "timestamp": "2025-11-24T15:10:00"}));
        app.publish("positions", payload).await;
    }
    // Bars out of order: the newest bar's close must be the price.
    for (minute, close) in [(30, "190.25"), (10, "180.00"), (20, "185.5")] {
        let payload = python_dumps(&json!({
            "type": "market_data_updated", "service": "data_ingestion",
            "data": {"symbol": "AAPL", "timestamp": (t0 + ChronoDuration::minutes(minute)).to_rfc3339(),
                     "open": 180.0, "high": 191.0, "low": 179.5, "close": close.parse::<f64>().unwrap(),
                     "volume": 1200000, "data_source": "yahoo"},
            "timestamp": "2025-11-24T15:31:00"}));
        app.publish("market_data", payload).await;
    }
    // A last trade marks the end: the queue is FIFO and batches commit in order.
    let mut sentinel = trades[0].clone();
    sentinel.id = "SENTINEL".into();
    app.publish("trades", sentinel.payload(false)).await;
    wait_for_ledger(&app, trades.len() as i64 + 1).await;

    let mut all = trades.clone();
    all.push(sentinel);
    assert_eq!(actual(&app).await, expected(&all));

    let row = app
        .db
        .client
        .query_one(
            "SELECT quantity, avg_price, last_price, market_value, unrealized_pnl \
             FROM analytics.portfolio_summary WHERE account_id = 'ACC0' AND symbol = 'AAPL'",
            &[],
        )
        .await
        .unwrap();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    assert_eq!(row.get::<_, Decimal>(0), d("109"));
    assert_eq!(row.get::<_, Decimal>(1), d("150.5"));
    assert_eq!(row.get::<_, Decimal>(2), d("190.25"));
    assert_eq!(row.get::<_, Decimal>(3), d("109") * d("190.25"));
    assert_eq!(
        row.get::<_, Decimal>(4),
        (d("190.25") - d("150.5")) * d("109")
    );
    // Another account's AAPL row has no snapshot: its value comes from the trades.
    let other: Option<(Decimal, Decimal, Decimal, Decimal)> = app
        .db
        .client
        .query_opt(
            "SELECT net_quantity, total_value, realized_pnl, market_value \
             FROM analytics.portfolio_summary WHERE account_id = 'ACC1' AND symbol = 'AAPL'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)));
    let (net, _, _, value) = other.expect("ACC1 traded AAPL");
    assert_eq!(value, net * d("190.25"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_trade_twice_in_shuffled_order_changes_nothing() {
    let mut app = spawn_app(|c| c.sync.batch_max_events = 257).await;
    let mut rng = StdRng::seed_from_u64(11);
    let trades = trades(&mut rng, 2_000, "D");
    let mut twice: Vec<&Trade> = trades.iter().chain(trades.iter()).collect();
    twice.shuffle(&mut rng);
    for t in &twice {
        app.publish("trades", t.payload(rng.random_bool(0.5))).await;
    }
    wait_for_ledger(&app, trades.len() as i64).await;
    // Wait until the last published message is committed too: poll until nothing is queued.
    let state = app.state.clone();
    eventually("the queue to empty", Duration::from_secs(30), || async {
        (state.queue_depth() == 0).then_some(())
    })
    .await;
    assert_eq!(actual(&app).await, expected(&trades));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_and_the_good_ones_around_them_applied() {
    let mut app = spawn_app(|c| c.sync.batch_max_events = 50).await;
    let mut rng = StdRng::seed_from_u64(3);
    let good = trades(&mut rng, 40, "G");
    let trade = |data: &str| {
        format!(
            r#"{{"type": "trade_executed", "service": "execution", "data": {data}, "timestamp": "2025-11-24T15:04:05.123456"}}"#
        )
        .into_bytes()
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("trades", b"{not json".to_vec()),
        ("trades", b"[1, 2, 3]".to_vec()),
        ("trades", trade(r#"{"account_id": "A", "symbol": "AAPL"}"#)),
        ("trades", trade(r#"{"trade_id": 17, "account_id": "A", "symbol": "AAPL"}"#)),
        ("trades", trade(r#"{"trade_id": "B1", "account_id": "A", "symbol": "AAPL", "price": NaN}"#)),
        ("trades", trade(r#"{"trade_id": "B2", "account_id": "A", "symbol": "AAPL", "price": 1e400}"#)),
        ("trades", trade(r#"{"trade_id": "B3", "account_id": "A", "symbol": "AAPL", "quantity": 1, "price": 123456789012.5}"#)),
        ("trades", trade(r#"{"trade_id": "B4", "account_id": "A", "symbol": "AAPL", "commission": "0.12345"}"#)),
        ("trades", br#"{"type": "order_cancelled", "data": {}, "timestamp": "2025-11-24T15:04:05"}"#.to_vec()),
        ("trades", {
            let mut big = trade(r#"{"trade_id": "B5", "account_id": "A", "symbol": "AAPL"}"#);
            big.extend(std::iter::repeat_n(b' ', 1 << 20));
            big
        }),
        ("trades", vec![0xff, 0xfe, b'{', 0x80, b'}']),
        ("positions", trade(r#"{"account_id": "A", "symbol": "AAPL"}"#)), // wrong channel
        // Valid JSON the decoder accepts but the database refuses (CHECK avg_price >= 0): the
        // batch is split until this one event is isolated.
        ("positions", br#"{"type": "position_updated", "data": {"account_id": "A", "symbol": "AAPL", "quantity": 5, "avg_price": -3}, "timestamp": "2025-11-24T15:04:05"}"#.to_vec()),
    ];
    for (i, t) in good.iter().enumerate() {
        app.publish("trades", t.payload(false)).await;
        if let Some((channel, payload)) = bad.get(i) {
            app.publish(channel, payload).await;
        }
    }
    let mut sentinel = good[0].clone();
    sentinel.id = "SENTINEL".into();
    app.publish("trades", sentinel.payload(false)).await;
    wait_for_ledger(&app, good.len() as i64 + 1).await;

    let rows = app
        .db
        .client
        .query(
            "SELECT channel, payload, error, payload_bytes FROM analytics.dead_letters ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut stored: Vec<(String, Vec<u8>, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(3)))
        .collect();
    // What a dead letter keeps: the message whole, or past sync.dead_letter_max_bytes (1 MiB)
    // its first 4 KiB; always the size as received.
    let mut sent: Vec<(String, Vec<u8>, i64)> = bad
        .iter()
        .map(|(c, p)| {
            let kept = if p.len() > 1 << 20 {
                &p[..4096]
            } else {
                &p[..]
            };
            // V28: the channel as received, prefix included.
            (app.channel(c), kept.to_vec(), p.len() as i64)
        })
        .collect();
    stored.sort();
    sent.sort();
    assert_eq!(stored.len(), sent.len(), "one dead letter per bad message");
    assert!(
        stored == sent,
        "dead letters keep the raw payload and channel"
    );
    for r in &rows {
        let error: String = r.get(2);
        assert!(!error.is_empty());
    }
    let db_refusal: String = app
        .db
        .client
        .query_one(
            "SELECT error FROM analytics.dead_letters
              WHERE channel = $1 AND reason = 'database' AND error LIKE 'refused by the database%'",
            &[&app.channel("positions")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(db_refusal.contains("avg_price"), "{db_refusal}");

    let mut all = good.clone();
    all.push(sentinel);
    assert_eq!(actual(&app).await, expected(&all));
    assert!(
        !app.handle.is_finished(),
        "the subscriber must still be running"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn killing_the_writer_connection_mid_stream_loses_and_doubles_nothing() {
    let app = spawn_app(|c| {
        c.sync.batch_max_events = 200;
        c.sync.batch_max_wait_ms = 2;
    })
    .await;
    let mut rng = StdRng::seed_from_u64(5);
    let trades = trades(&mut rng, 6_000, "K");
    let payloads: Vec<String> = trades.iter().map(|t| t.payload(false)).collect();
    let channel = app.channel("trades");
    let publisher = tokio::spawn(async move {
        let mut redis = redis::Client::open(common::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for chunk in payloads.chunks(100) {
            let mut pipe = redis::pipe();
            for p in chunk {
                pipe.cmd("PUBLISH").arg(&channel).arg(p).ignore();
            }
            let () = pipe.query_async(&mut redis).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let admin = common::connect(&common::admin_url()).await;
    let mut killed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !publisher.is_finished() || killed == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no writer connection to kill"
        );
        let n = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'trading-sync' AND pid <> pg_backend_pid()",
                &[&app.db.name],
            )
            .await
            .unwrap()
            .len();
        killed += n;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    publisher.await.unwrap();
    assert!(killed > 0, "no writer connection was ever killed");
    wait_for_ledger(&app, trades.len() as i64).await;
    assert_eq!(actual(&app).await, expected(&trades));
    app.stop().await.unwrap();
}

/// A batch split across the writer's connections whose one partition cannot commit (another
/// session holds a lock on one of its rows): the other partition's trades commit meanwhile, the
/// batch is retried until the lock goes, and every trade counts once — in the books and in the
/// writer's own counts (applied, never duplicates).
#[tokio::test]
async fn a_partition_that_fails_after_another_committed_counts_every_trade_once() {
    use std::sync::atomic::Ordering;
    use trading_sync::apply::fold::partition_of;
    use trading_sync::events::ChannelKind;

    let mut app = spawn_app(|c| {
        c.sync.writer_connections = 2;
        c.sync.batch_max_events = 5_000;
        // One batch (3,001 trades, so split in two): everything published below arrives well
        // within the window. Were it cut into smaller batches, the free partition's trades
        // would wait behind the locked one and the first wait below would time out.
        c.sync.batch_max_wait_ms = 3_000;
        c.database.lock_timeout_ms = 200;
    })
    .await;
    let mut rng = StdRng::seed_from_u64(16);
    let mut all = trades(&mut rng, 3_000, "P");
    let blocked = all
        .iter()
        .find(|t| partition_of(&t.account, 2) == 1)
        .expect("an account in the second partition")
        .account
        .clone();
    let free: Vec<String> = all
        .iter()
        .filter(|t| partition_of(&t.account, 2) == 0)
        .map(|t| t.account.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(!free.is_empty(), "an account in the first partition");

    // The row the lock will hold, created by a trade of its own first.
    let mut seed = all[0].clone();
    (seed.id, seed.account, seed.symbol) = ("P-seed".into(), blocked.clone(), "LOCK".into());
    app.publish("trades", seed.payload(false)).await;
    wait_for_ledger(&app, 1).await;
    let mut locker = common::connect(&common::database_url(&app.db.name)).await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM analytics.portfolio_summary WHERE account_id = $1 AND symbol = 'LOCK' FOR UPDATE",
        &[&blocked],
    )
    .await
    .unwrap();

    let mut held = seed.clone();
    held.id = "P-held".into();
    all.push(held);
    let mut redis = app.redis.clone();
    let mut pipe = redis::pipe();
    for t in &all {
        pipe.cmd("PUBLISH")
            .arg(app.channel("trades"))
            .arg(t.payload(false))
            .ignore();
    }
    let () = pipe.query_async(&mut redis).await.unwrap();

    // The free partition commits while the other one waits on the lock.
    let free_trades = all.iter().filter(|t| free.contains(&t.account)).count() as i64;
    eventually(
        "the free partition's trades in the ledger",
        Duration::from_secs(30),
        || async {
            let n: i64 = app
                .db
                .client
                .query_one(
                    "SELECT count(*) FROM analytics.applied_trades WHERE account_id = ANY($1)",
                    &[&free],
                )
                .await
                .unwrap()
                .get(0);
            (n == free_trades).then_some(())
        },
    )
    .await;
    let blocked_now = app
        .scalar_i64(&format!(
            "SELECT count(*) FROM analytics.applied_trades WHERE account_id = '{blocked}'"
        ))
        .await;
    assert_eq!(
        blocked_now, 1,
        "only the seed of the locked partition is in"
    );
    eventually(
        "the writer retrying the locked partition",
        Duration::from_secs(10),
        || async {
            app.state
                .writer
                .database_failing
                .load(Ordering::Acquire)
                .then_some(())
        },
    )
    .await;

    lock.rollback().await.unwrap();
    all.push(seed);
    wait_for_ledger(&app, all.len() as i64).await;
    assert_eq!(actual(&app).await, expected(&all));
    // The writer counts a batch once its whole attempt returned, a moment after the last
    // commit is visible: wait for the count, then read the duplicates it recorded first.
    let writer = &app.state.writer;
    let trades_total = all.len() as u64;
    eventually("every trade counted", Duration::from_secs(10), || async {
        let n = writer.applied[ChannelKind::Trades].load(Ordering::Relaxed);
        assert!(n <= trades_total, "{n} trades counted as applied");
        (n == trades_total).then_some(())
    })
    .await;
    assert_eq!(writer.duplicates.load(Ordering::Relaxed), 0);
    app.stop().await.unwrap();
}
