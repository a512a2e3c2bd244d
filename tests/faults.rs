//! Fault injection: known workloads under crashes, takeovers, killed connections and fuzzed
//! input; the database must end with exactly the expected aggregates — 0 lost, 0 duplicated.

mod common;

use std::time::Duration;

use common::process::Daemon;
use common::{eventually, python_dumps, spawn_app, unique_name, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn trade(id: &str, account: &str, qty: u32) -> String {
    python_dumps(&json!({
        "type": "trade_executed", "service": "execution",
        "data": {"trade_id": id, "account_id": account, "symbol": "FLT", "side": "buy",
                 "quantity": qty, "price": "1.25", "strategy": "faults"},
        "timestamp": "2025-11-24T15:04:05.123456", "correlation_id": id}))
}

/// Publishes `n` trades to the stream with XADD in pipelines; returns the expected quantity sum.
fn spawn_stream_publisher(key: String, n: usize) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut conn = redis::Client::open(common::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut total = 0i64;
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let qty = (i % 7) as u32 + 1;
                total += i64::from(qty);
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("event")
                    .arg(trade(&format!("K{i:07}"), "ACC", qty))
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
        total
    })
}

fn stream_env(consumer: &str, claim_idle_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("TRADING_SYNC__TRANSPORT__TRADES", "stream".into()),
        ("TRADING_SYNC__STREAMS__CONSUMER", consumer.into()),
        ("TRADING_SYNC__STREAMS__BLOCK_MS", "200".into()),
        (
            "TRADING_SYNC__STREAMS__CLAIM_IDLE_MS",
            claim_idle_ms.to_string(),
        ),
        ("TRADING_SYNC__HTTP__ENABLED", "false".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

async fn totals(db: &TestDb) -> (i64, i64, rust_decimal::Decimal) {
    let row = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM analytics.applied_trades), \
                    COALESCE((SELECT sum(trade_count)::int8 FROM analytics.portfolio_summary), 0), \
                    COALESCE((SELECT sum(net_quantity) FROM analytics.portfolio_summary), 0)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn stream_pending(key: &str) -> i64 {
    let mut conn = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg("trading-sync")
        .query_async(&mut conn)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

async fn drop_key(key: &str) {
    let mut conn = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn assert_exact(db: &TestDb, key: &str, n: usize, quantity: i64) {
    eventually("every trade applied", Duration::from_secs(180), || async {
        (totals(db).await.0 == n as i64).then_some(())
    })
    .await;
    let (ledger, counted, qty) = totals(db).await;
    assert_eq!(ledger, n as i64, "lost");
    assert_eq!(counted, n as i64, "lost or duplicated");
    assert_eq!(qty, rust_decimal::Decimal::from(quantity), "sums");
    eventually(
        "every entry acknowledged",
        Duration::from_secs(30),
        || async { (stream_pending(key).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn stream_mode_survives_ten_sigkills_mid_load() {
    const TRADES: usize = 100_000;
    let db = TestDb::new().await;
    let prefix = unique_name("ts_test");
    let key = format!("{prefix}:trades");
    let env = stream_env("crashy", 60_000);
    let publisher = spawn_stream_publisher(key.clone(), TRADES);
    let mut rng = StdRng::seed_from_u64(42);
    let mut daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    for kill in 0..10 {
        // The fault's timing is the point here, not synchronisation: a random moment mid-load.
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        let before = totals(&db).await.0;
        daemon.kill9();
        eprintln!("SIGKILL {kill} with {before} trades in the ledger");
        daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    }
    let quantity = publisher.await.unwrap();
    assert_exact(&db, &key, TRADES, quantity).await;
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(20)).success());
    drop_key(&key).await;
}

#[tokio::test]
async fn a_second_instance_takes_over_a_killed_instances_pending_entries() {
    const TRADES: usize = 30_000;
    let db = TestDb::new().await;
    let prefix = unique_name("ts_test");
    let key = format!("{prefix}:trades");
    let publisher = spawn_stream_publisher(key.clone(), TRADES);
    let mut a =
        Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &stream_env("a", 1_000));
    let mut b =
        Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &stream_env("b", 1_000));
    eventually(
        "both instances applying",
        Duration::from_secs(60),
        || async { (totals(&db).await.0 > 2_000).then_some(()) },
    )
    .await;
    a.kill9();
    let quantity = publisher.await.unwrap();
    assert_exact(&db, &key, TRADES, quantity).await;
    b.sigterm();
    assert!(b.wait(Duration::from_secs(20)).success());
    drop_key(&key).await;
}

#[tokio::test]
async fn killing_the_writer_connection_in_stream_mode_loses_nothing() {
    const TRADES: usize = 20_000;
    let db = TestDb::new().await;
    let prefix = unique_name("ts_test");
    let key = format!("{prefix}:trades");
    let mut daemon = Daemon::start_with_prefix(
        &db,
        &common::redis_url(),
        &prefix,
        &stream_env("pgkill", 60_000),
    );
    let publisher = spawn_stream_publisher(key.clone(), TRADES);
    // Startup itself must not be the victim: wait until the daemon is applying.
    eventually("the daemon applying", Duration::from_secs(60), || async {
        (totals(&db).await.0 > 0).then_some(())
    })
    .await;
    let admin = common::connect(&common::admin_url()).await;
    let mut killed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !publisher.is_finished() || killed < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "killed {killed} writer connections in 120 s; daemon logs:\n{}",
            daemon.log_text()
        );
        killed += admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'trading-sync'",
                &[&db.name],
            )
            .await
            .unwrap()
            .len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quantity = publisher.await.unwrap();
    assert_exact(&db, &key, TRADES, quantity).await;
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(20)).success());
    drop_key(&key).await;
}

/// Mutations of a valid message: byte flips, truncation, splices of hostile tokens, deep
/// nesting, huge numbers, random bytes.
fn mutate(rng: &mut StdRng, valid: &str) -> Vec<u8> {
    let mut bytes = valid.as_bytes().to_vec();
    match rng.random_range(0..7) {
        0 => {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
        }
        1 => bytes.truncate(rng.random_range(0..bytes.len())),
        2 => {
            let token = [
                "NaN",
                "1e400",
                "-Infinity",
                "null",
                "\"\\u0000\"",
                "99999999999999.5",
                "[]",
                "{}",
            ][rng.random_range(0..8)];
            let at = valid.find("\"quantity\": ").map(|i| i + 12).unwrap_or(0);
            let end = at + valid[at..].find(',').unwrap_or(0);
            bytes = format!("{}{}{}", &valid[..at], token, &valid[end..]).into_bytes();
        }
        3 => bytes = format!("{}{}", "[".repeat(rng.random_range(100..5_000)), valid).into_bytes(),
        4 => {
            bytes = (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect()
        }
        5 => {
            bytes = valid
                .replace("trade_executed", "trade_exploded")
                .into_bytes()
        }
        _ => {
            bytes = valid
                .replace("\"side\": \"buy\"", "\"side\": 7")
                .into_bytes()
        }
    }
    bytes
}

#[tokio::test]
async fn ten_thousand_fuzzed_messages_among_valid_ones() {
    let mut app = spawn_app(|c| c.sync.batch_max_events = 500).await;
    let mut rng = StdRng::seed_from_u64(99);
    let limits = trading_sync::events::DecodeLimits::default();
    let (mut good_qty, mut fuzz_invalid) = (0i64, 0i64);
    // Trade ids of the mutations that still decode (a flipped byte may even make two alike).
    let mut fuzz_ids = std::collections::HashSet::new();
    let good_total = 2_000;
    for i in 0..12_000 {
        if i % 6 == 0 {
            let qty = (i % 5) as u32 + 1;
            good_qty += i64::from(qty);
            app.publish("trades", trade(&format!("G{i}"), "GOOD", qty))
                .await;
        } else {
            let fuzzed = mutate(&mut rng, &trade(&format!("F{i}"), "FUZZ", 1));
            // Some mutations leave a valid event (a flipped byte inside a string): those must be
            // applied once, the rest dead-lettered; the pure decoder tells which is which.
            match trading_sync::events::decode(
                trading_sync::events::ChannelKind::Trades,
                &fuzzed,
                &limits,
            ) {
                Ok(trading_sync::events::Event::Trade(t)) => {
                    fuzz_ids.insert(t.trade_id);
                }
                Ok(other) => panic!("a trades message decoded as {other:?}"),
                Err(_) => fuzz_invalid += 1,
            }
            app.publish("trades", fuzzed).await;
        }
    }
    app.publish("trades", trade("SENTINEL", "GOOD", 1)).await;
    good_qty += 1;
    eventually("the sentinel", Duration::from_secs(60), || async {
        (app.scalar_i64(
            "SELECT count(*) FROM analytics.applied_trades WHERE trade_id = 'SENTINEL'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let good_rows = app
        .db
        .client
        .query_one(
            "SELECT trade_count, net_quantity FROM analytics.portfolio_summary WHERE account_id = 'GOOD'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(good_rows.get::<_, i64>(0), good_total + 1);
    assert_eq!(
        good_rows.get::<_, rust_decimal::Decimal>(1),
        rust_decimal::Decimal::from(good_qty)
    );
    let dead = app
        .scalar_i64("SELECT count(*) FROM analytics.dead_letters")
        .await;
    let ledger = app
        .scalar_i64("SELECT count(*) FROM analytics.applied_trades")
        .await;
    assert_eq!(dead, fuzz_invalid, "every bad message dead-lettered");
    assert_eq!(
        ledger,
        good_total + 1 + fuzz_ids.len() as i64,
        "every valid message applied once"
    );
    assert!(!app.handle.is_finished());
    app.stop().await.unwrap();
}
