//! Fault injection: known workloads under crashes, takeovers, killed connections and fuzzed
//! input; the database must end with exactly the expected aggregates — 0 lost, 0 duplicated.

use crate::common;

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
        || async {
            (common::stream_pending(&mut redis_conn().await, key).await == 0).then_some(())
        },
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

/// What became of one PUBLISH, as the publisher saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// PUBLISH answered ≥ 1 receiver: Redis queued it for the daemon's subscription (and, up to
    /// the last moment that output buffer was seen empty, wrote it to the socket).
    Delivered,
    /// PUBLISH answered 0 receivers, or never reached Redis (connection refused).
    NotDelivered,
    /// Sent on a connection that broke before the reply: Redis may or may not have run it.
    Unknown,
}

/// Publishes at `rate` messages/s through a Redis that goes away and comes back, reconnecting
/// as needed; returns each message's fate. `done` and `failed` report progress to the test.
async fn publish_through_outage(
    url: String,
    prefix: String,
    messages: Vec<loadgen::Message>,
    rate: f64,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<Fate> {
    use std::sync::atomic::Ordering;
    let mut fates = Vec::with_capacity(messages.len());
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = std::time::Instant::now();
    while fates.len() < messages.len() {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(messages.len());
        if due <= fates.len() {
            continue;
        }
        let chunk = &messages[fates.len()..due];
        if conn.is_none() {
            conn = loadgen::connect_redis(&url).await.ok();
        }
        let outcome = match conn.as_mut() {
            None => vec![Fate::NotDelivered; chunk.len()],
            Some(c) => match common::publish_counted(c, &prefix, chunk, chunk.len()).await {
                Ok(counts) => counts
                    .iter()
                    .map(|&n| {
                        if n > 0 {
                            Fate::Delivered
                        } else {
                            Fate::NotDelivered
                        }
                    })
                    .collect(),
                Err(_) => {
                    conn = None;
                    vec![Fate::Unknown; chunk.len()]
                }
            },
        };
        failed.fetch_add(
            outcome.iter().filter(|f| **f != Fate::Delivered).count(),
            Ordering::Relaxed,
        );
        fates.extend(outcome);
        done.store(fates.len(), Ordering::Relaxed);
    }
    fates
}

async fn ledger_hits(db: &TestDb, ids: &[String]) -> i64 {
    db.client
        .query_one(
            "SELECT count(*) FROM analytics.applied_trades WHERE trade_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0)
}

/// Redis SIGKILLed and restarted mid-load (with its append-only file, as a production Redis
/// that a journal relies on runs): the daemon must come back by itself and apply exactly what
/// pub/sub delivered to it — loss limited to what was published while it was not subscribed.
/// With the journal, PostgreSQL is also held (ledger locked) from before the kill until after
/// the restart, so the journal Redis loses and reloads is full of unapplied, pending entries.
async fn redis_restarted_mid_load(journal: bool) {
    use common::process::{free_port, http_get, metric, PrivateRedis};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const TRADES: u64 = 12_000;
    const RATE: f64 = 4_000.0;

    let db = TestDb::new().await;
    let port = free_port();
    let dir = std::env::temp_dir().join(unique_name("ts_redis"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ];
    let mut redis = PrivateRedis::start_with(port, &args);
    redis.wait_up().await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut env: Vec<(&str, String)> = vec![("TRADING_SYNC__STREAMS__BLOCK_MS", "200".into())];
    if journal {
        env.extend([
            ("TRADING_SYNC__TRANSPORT__JOURNAL", "true".into()),
            ("TRADING_SYNC__STREAMS__CONSUMER", "restart".into()),
            ("TRADING_SYNC__JOURNAL__TRIM_INTERVAL_MS", "100".into()),
        ]);
    }
    let daemon = Daemon::start(&db, &url, &env);
    let dport = daemon.port().await;
    let readyz = || async move {
        let (code, _) = http_get(dport, "/readyz").await?;
        (code == 200).then_some(())
    };
    eventually("ready", Duration::from_secs(20), readyz).await;

    let mut generator = loadgen::Generator::new(loadgen::Spec {
        seed: 31,
        position_every: 0,
        bar_every: 0,
        ..Default::default()
    });
    let messages = generator.generate(TRADES);
    let expected = generator.expected();
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let publisher = tokio::spawn(publish_through_outage(
        url.clone(),
        daemon.prefix.clone(),
        messages,
        RATE,
        done.clone(),
        failed.clone(),
    ));
    eventually(
        "a quarter of the load published",
        Duration::from_secs(30),
        || async { (done.load(Ordering::Relaxed) >= TRADES as usize / 4).then_some(()) },
    )
    .await;
    // PUBLISH's count says Redis queued the message for a subscriber, not that it was written
    // to the subscriber's socket: what sits in the subscription's output buffer when Redis is
    // killed is gone although its publisher was told "1". So the last moment that buffer was
    // seen empty bounds what "delivered" can promise: every message acknowledged before it.
    let flushed_through = Arc::new(AtomicUsize::new(0));
    let buffer_watch = tokio::spawn({
        let (url, done, flushed_through) = (url.clone(), done.clone(), flushed_through.clone());
        async move {
            let Ok(mut conn) = loadgen::connect_redis(&url).await else {
                return;
            };
            loop {
                let acknowledged = done.load(Ordering::Acquire);
                let clients: Result<String, _> = redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut conn)
                    .await;
                let Ok(clients) = clients else {
                    return; // Redis is gone.
                };
                let empty = clients
                    .lines()
                    .all(|l| l.contains(" obl=0 ") && l.contains(" oll=0 "));
                if empty {
                    flushed_through.fetch_max(acknowledged, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let journal_key = format!("{}:journal", daemon.prefix);
    let mut held_in_journal = 0;
    let locker = if journal {
        let locker = common::connect(&db.url).await;
        locker
            .batch_execute("BEGIN; LOCK TABLE analytics.applied_trades IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let conn = loadgen::connect_redis(&url).await.unwrap();
        held_in_journal = eventually(
            "unapplied entries piling up in the journal",
            Duration::from_secs(30),
            || {
                let (mut conn, key) = (conn.clone(), journal_key.clone());
                async move {
                    let n = common::xlen(&mut conn, &key).await;
                    (n >= 1_000).then_some(n)
                }
            },
        )
        .await;
        Some(locker)
    } else {
        None
    };
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let _ = buffer_watch.await;
    let flushed_through = flushed_through.load(Ordering::Acquire);
    eventually(
        "publishes failing while Redis is down",
        Duration::from_secs(30),
        || async { (failed.load(Ordering::Relaxed) >= 400).then_some(()) },
    )
    .await;
    redis = PrivateRedis::start_with(port, &args);
    redis.wait_up().await;
    let mut fates = publisher.await.unwrap();
    // Acknowledged after the buffer was last seen empty and before the first failure: Redis may
    // have died with them still in the subscription's output buffer.
    let first_failure = (flushed_through..fates.len())
        .find(|&i| fates[i] != Fate::Delivered)
        .unwrap_or(fates.len());
    for fate in &mut fates[flushed_through..first_failure] {
        *fate = Fate::Unknown;
    }
    eprintln!(
        "acknowledged while possibly still in Redis's output buffer at the kill: {}",
        first_failure - flushed_through
    );
    if let Some(locker) = locker {
        locker.batch_execute("ROLLBACK").await.unwrap();
    }
    eventually("ready again", Duration::from_secs(30), readyz).await;

    let ids = |fate: Fate| -> Vec<String> {
        fates
            .iter()
            .enumerate()
            .filter(|(_, f)| **f == fate)
            .map(|(i, _)| expected.trade_id(expected.first_seq + i as u64))
            .collect()
    };
    let (delivered, not_delivered, unknown) = (
        ids(Fate::Delivered),
        ids(Fate::NotDelivered),
        ids(Fate::Unknown),
    );
    assert!(
        !not_delivered.is_empty(),
        "the outage must cost the publisher something"
    );
    assert!(delivered.len() > TRADES as usize / 2);
    eventually(
        "every delivered trade applied",
        Duration::from_secs(60),
        || async { (ledger_hits(&db, &delivered).await == delivered.len() as i64).then_some(()) },
    )
    .await;
    let (ledger, counted, _) = totals(&db).await;
    let unknown_applied = ledger_hits(&db, &unknown).await;
    assert_eq!(
        ledger_hits(&db, &not_delivered).await,
        0,
        "a message nobody received was applied"
    );
    assert_eq!(
        ledger,
        delivered.len() as i64 + unknown_applied,
        "applied = delivered while connected"
    );
    assert_eq!(counted, ledger, "duplicated");

    let (_, text) = http_get(dport, "/metrics").await.unwrap();
    let reconnects = metric(&text, "trading_sync_reconnects_total{server=\"redis\"}");
    let hole_ms = metric(&text, "trading_sync_redis_unsubscribed_milliseconds_total");
    assert!(reconnects >= 1.0, "{text}");
    assert!(hole_ms > 0.0, "{text}");
    let logs = daemon.logs();
    let resubscribed = logs
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resubscribed"))
        })
        .unwrap_or_else(|| panic!("no resubscription line:\n{}", daemon.log_text()));
    let down_ms = resubscribed["down_ms"].as_u64().expect("down_ms");
    // The daemon's hole in the books covers the publisher's: what it lost was published while
    // the daemon said it was not subscribed.
    let publisher_hole_ms = not_delivered.len() as f64 / RATE * 1000.0;
    assert!(
        down_ms as f64 >= publisher_hole_ms / 2.0,
        "daemon unsubscribed {down_ms} ms, publisher lost {publisher_hole_ms} ms of load"
    );
    if journal {
        let conn = loadgen::connect_redis(&url).await.unwrap();
        eventually("the journal trimmed", Duration::from_secs(30), || {
            let (mut conn, key) = (conn.clone(), journal_key.clone());
            async move { (common::xlen(&mut conn, &key).await == 0).then_some(()) }
        })
        .await;
    }
    eprintln!(
        "journal={journal}: {TRADES} trades published at {RATE}/s, 1 Redis SIGKILL + restart; \
         delivered {}, not delivered {}, unknown {} ({} of them applied); applied {ledger}; \
         lost 0, duplicated 0; daemon: {reconnects} reconnect(s), unsubscribed {down_ms} ms; \
         journal held {held_in_journal} unapplied entries at the kill",
        delivered.len(),
        not_delivered.len(),
        unknown.len(),
        unknown_applied
    );
    drop(daemon);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn redis_restarted_mid_load_in_pubsub_mode_loses_only_what_was_published_while_down() {
    redis_restarted_mid_load(false).await;
}

#[tokio::test]
async fn redis_restarted_mid_load_with_the_journal_loses_only_what_was_published_while_down() {
    redis_restarted_mid_load(true).await;
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    loadgen::connect_redis(&common::redis_url()).await.unwrap()
}
