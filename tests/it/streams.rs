//! The stream transport: consumer groups, acknowledgement after commit, own-pending re-reads,
//! takeover of a dead consumer's entries, poison after too many deliveries, and SIGKILL.

use crate::common;

use std::time::Duration;

use common::{eventually, python_dumps, spawn_app, App};
use serde_json::json;
use trading_sync::config::{Config, Transport};

fn trade(id: &str, qty: u32) -> String {
    python_dumps(&json!({
        "type": "trade_executed", "service": "execution",
        "data": {"trade_id": id, "account_id": "ACC1", "symbol": "MSFT", "side": "buy",
                 "quantity": qty, "price": "2.5", "strategy": "streams"},
        "timestamp": "2025-11-24T15:04:05.123456", "correlation_id": id}))
}

fn stream_mode(consumer: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.transport.trades = Transport::Stream;
        c.streams.consumer = Some(consumer.to_owned());
        c.streams.block_ms = 200;
        c.streams.claim_idle_ms = 300;
        c.streams.max_deliveries = 3;
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, key: &str, payload: &str) -> String {
    redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("event")
        .arg(payload)
        .query_async(conn)
        .await
        .unwrap()
}

async fn ledger_and_quantity(app: &App) -> (i64, i64) {
    let row = app
        .db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM analytics.applied_trades), \
             COALESCE((SELECT trade_count FROM analytics.portfolio_summary WHERE symbol = 'MSFT'), 0)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: i64 = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
}

#[tokio::test]
async fn stream_entries_are_applied_once_and_acknowledged_after_commit() {
    let app = spawn_app(stream_mode("solo")).await;
    let key = app.channel("trades");
    let mut conn = redis().await;
    for i in 0..500 {
        xadd(&mut conn, &key, &trade(&format!("S{i}"), 1)).await;
    }
    // Pub/sub is off for trades: a PUBLISH must not be applied.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&key)
        .arg(trade("PUBSUB-ONLY", 1))
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("500 trades applied", Duration::from_secs(20), || async {
        (ledger_and_quantity(&app).await == (500, 500)).then_some(())
    })
    .await;
    eventually("every entry acknowledged", Duration::from_secs(10), || {
        let (key, mut conn) = (key.clone(), conn.clone());
        async move { (common::stream_pending(&mut conn, &key).await == 0).then_some(()) }
    })
    .await;
    app.stop().await.unwrap();
    cleanup(&mut conn, &key).await;
}

#[tokio::test]
async fn own_pending_entries_are_reread_and_a_dead_consumers_are_taken_over() {
    let mut conn = redis().await;
    let prefix = common::unique_name("ts_test");
    let key = format!("{prefix}:trades");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("trading-sync")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    for i in 0..30 {
        xadd(&mut conn, &key, &trade(&format!("P{i}"), 1)).await;
    }
    // 10 delivered to "me" before a crash, 10 to "dead", none acknowledged; 10 more read by
    // "me" below together with the poison.
    for consumer in ["me", "dead"] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("trading-sync")
            .arg(consumer)
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // One more entry, delivered past the limit: poison. (Delivered first, so that the group's
    // last-delivered id moves past it, then its count raised.)
    let poison_id = xadd(&mut conn, &key, &trade("POISON", 1)).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("trading-sync")
        .arg("me")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&key)
        .arg("trading-sync")
        .arg("me")
        .arg(0)
        .arg(&poison_id)
        .arg("RETRYCOUNT")
        .arg(7)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(common::stream_pending(&mut conn, &key).await, 31);

    let app = spawn_app(|c| {
        c.redis.channel_prefix = prefix.clone();
        stream_mode("me")(c);
    })
    .await;
    eventually(
        "30 trades applied, the poison not",
        Duration::from_secs(20),
        || async { (ledger_and_quantity(&app).await == (30, 30)).then_some(()) },
    )
    .await;
    eventually("nothing left pending", Duration::from_secs(10), || {
        let (key, mut conn) = (key.clone(), conn.clone());
        async move { (common::stream_pending(&mut conn, &key).await == 0).then_some(()) }
    })
    .await;
    let row = app
        .db
        .client
        .query_one(
            "SELECT stream_id, delivery_count, error FROM analytics.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), poison_id);
    assert!(row.get::<_, i32>(1) > 3);
    assert!(row.get::<_, String>(2).contains("delivered"));
    assert!(
        app.state
            .streams
            .claimed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10
    );
    app.stop().await.unwrap();
    cleanup(&mut conn, &key).await;
}

#[tokio::test]
async fn both_transports_at_once_count_each_trade_once() {
    let app = spawn_app(|c| {
        stream_mode("both")(c);
        c.transport.trades = Transport::Both;
    })
    .await;
    let key = app.channel("trades");
    let mut conn = redis().await;
    for i in 0..200 {
        let payload = trade(&format!("B{i}"), 2);
        xadd(&mut conn, &key, &payload).await;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&key)
            .arg(&payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    eventually("200 trades", Duration::from_secs(20), || async {
        (ledger_and_quantity(&app).await.0 == 200).then_some(())
    })
    .await;
    eventually("both copies processed", Duration::from_secs(20), || async {
        (app.state
            .writer
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
            == 200)
            .then_some(())
    })
    .await;
    assert_eq!(ledger_and_quantity(&app).await, (200, 200));
    app.stop().await.unwrap();
    cleanup(&mut conn, &key).await;
}

/// A daemon reading every channel as a stream subscribes to nothing: its final report still
/// counts what it received (it once read only the pub/sub counter and said received=0).
#[tokio::test]
async fn a_stream_only_daemon_reports_what_it_received() {
    let app = spawn_app(|c: &mut Config| {
        stream_mode("stream-only")(c);
        c.transport.positions = Transport::Stream;
        c.transport.market_data = Transport::Stream;
    })
    .await;
    let key = app.channel("trades");
    let mut conn = redis().await;
    for i in 0..100 {
        xadd(&mut conn, &key, &trade(&format!("SO{i}"), 2)).await;
    }
    eventually("100 trades applied", Duration::from_secs(20), || async {
        (ledger_and_quantity(&app).await == (100, 100)).then_some(())
    })
    .await;
    let report = app.stop().await.unwrap();
    assert_eq!(
        (report.received, report.applied, report.left, report.refused),
        (100, 100, 0, 0)
    );
    assert!(report.complete(), "{}", report.outcome());
    cleanup(&mut conn, &key).await;
}
