//! Oversized messages cost almost nothing: cut at the ingest edge, before the queue or the
//! journal; dead letters keep them whole up to `sync.dead_letter_max_bytes`, else a prefix, the
//! size and the SHA-256; the daemon's peak memory stays within its budget.

use crate::common;

use std::time::Duration;

use common::process::{free_port, http_get, metric, Daemon, PrivateRedis};
use common::{eventually, TestDb};
use sha2::Digest;

const BIG: usize = 4 << 20;
const BIGS: usize = 20;
const MEDIUM: usize = 512 << 10;
const MEDIUMS: usize = 2;
const TRADES: usize = 100;
const QUEUE: usize = 16 << 20;

/// Deterministic bytes that are not JSON.
fn blob(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

fn trade(i: usize) -> String {
    common::python_dumps(&serde_json::json!({
        "type": "trade_executed",
        "data": {"trade_id": format!("OK-{i:04}"), "account_id": "A", "symbol": "S",
                 "side": "buy", "quantity": 1, "price": 2},
        "timestamp": "2026-12-01T15:00:00"}))
}

/// The daemon's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

async fn check_dead_letters(db: &TestDb) {
    let rows = db
        .client
        .query(
            "SELECT octet_length(payload)::int8, payload_bytes, payload_sha256, replayable, error
               FROM analytics.dead_letters ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), BIGS + MEDIUMS);
    let mut cut = 0;
    for row in rows {
        let (stored, size): (i64, i64) = (row.get(0), row.get(1));
        let (sha, replayable): (Option<Vec<u8>>, bool) = (row.get(2), row.get(3));
        let error: String = row.get(4);
        assert!(error.contains("sync.max_message_bytes"), "{error}");
        if size as usize == BIG {
            cut += 1;
            assert_eq!(stored, 4096);
            assert!(!replayable);
            // Which blob it was is not known here; its hash must be one of them.
            let sha = sha.expect("a cut payload has its hash");
            assert!(
                (0..BIGS).any(|i| sha2::Sha256::digest(blob(BIG, i)).as_slice() == sha.as_slice()),
                "a hash of none of the messages"
            );
        } else {
            assert_eq!((stored, size), (MEDIUM as i64, MEDIUM as i64));
            assert!(replayable);
            assert!(sha.is_none());
        }
    }
    assert_eq!(cut, BIGS);
}

async fn wait_applied(db: &TestDb, daemon: &Daemon) {
    eventually(
        "every message dead-lettered or applied",
        Duration::from_secs(120),
        || async {
            let dead: i64 = db
                .client
                .query_one("SELECT count(*) FROM analytics.dead_letters", &[])
                .await
                .ok()?
                .get(0);
            let applied: i64 = db
                .client
                .query_one("SELECT count(*) FROM analytics.applied_trades", &[])
                .await
                .ok()?
                .get(0);
            (dead as usize == BIGS + MEDIUMS && applied as usize == TRADES).then_some(())
        },
    )
    .await;
    let (_, text) = http_get(daemon.port().await, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "trading_sync_queue_refused_total"),
        0.0,
        "no valid message was pushed out: {text}"
    );
}

fn env() -> Vec<(&'static str, String)> {
    vec![
        ("TRADING_SYNC__SYNC__QUEUE_MAX_BYTES", QUEUE.to_string()),
        ("TRADING_SYNC__RECONCILE__ENABLED", "false".into()),
        ("TRADING_SYNC__STREAMS__BLOCK_MS", "200".into()),
    ]
}

#[tokio::test]
async fn a_flood_of_oversized_pubsub_messages_is_cut_at_the_edge() {
    let db = TestDb::new().await;
    let port = free_port();
    // No output-buffer limit: the flood reaches the daemon as fast as Redis can send it, which is
    // what is measured, instead of Redis cutting the subscriber off at 32 MiB.
    let redis = PrivateRedis::start_with(port, &["--client-output-buffer-limit", "pubsub 0 0 0"]);
    redis.wait_up().await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let daemon = Daemon::start(&db, &url, &env());
    let dport = daemon.port().await;
    eventually("ready", Duration::from_secs(20), || async move {
        let (code, _) = http_get(dport, "/readyz").await?;
        (code == 200).then_some(())
    })
    .await;
    let mut conn = loadgen::connect_redis(&url).await.unwrap();
    let channel = format!("{}:trades", daemon.prefix);
    // One PUBLISH per round trip: as fast as a publisher gets Redis's answers. (One pipeline
    // of all 80 MiB at once is read by redis-rs into its buffer before any is handed over: the
    // daemon's peak is then the flood's size, whatever the daemon does; measured 110 MiB.)
    for i in 0..BIGS {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(blob(BIG, i))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut pipe = redis::pipe();
    for i in 0..MEDIUMS {
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(blob(MEDIUM, 100 + i))
            .ignore();
    }
    for i in 0..TRADES {
        pipe.cmd("PUBLISH").arg(&channel).arg(trade(i)).ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    wait_applied(&db, &daemon).await;
    check_dead_letters(&db).await;
    let peak = peak_rss(daemon.child.id());
    eprintln!(
        "pub/sub: {BIGS} × {} MiB published at once; daemon peak RSS {:.1} MiB (queue budget {} MiB)",
        BIG >> 20,
        peak as f64 / 1048576.0,
        QUEUE >> 20
    );
    // Not the budget plus a few messages, as in stream mode: redis-rs reads what Redis pushes
    // whole and hands it over later when the flood outruns it (80–83 MiB measured for the
    // 80 MiB flood); what the daemon itself keeps is the 4 KiB prefixes. Bounded by the flood
    // plus the queue's budget: a queue holding the messages would add them again.
    assert!(
        peak < (QUEUE + BIGS * BIG + (24 << 20)) as u64,
        "peak RSS {peak} bytes"
    );
    drop(daemon);
    drop(redis);
}

#[tokio::test]
async fn a_backlog_of_oversized_stream_entries_is_read_one_at_a_time() {
    let db = TestDb::new().await;
    let prefix = common::unique_name("ts_test");
    let key = format!("{prefix}:trades");
    let mut conn = loadgen::connect_redis(&common::redis_url()).await.unwrap();
    // Present before the daemon starts: a first read of read_count entries would be 80 MiB.
    for i in 0..BIGS {
        let () = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event")
            .arg(blob(BIG, i))
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .unwrap();
    }
    for i in 0..MEDIUMS {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event")
            .arg(blob(MEDIUM, 100 + i))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for i in 0..TRADES {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event")
            .arg(trade(i))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut env = env();
    env.push(("TRADING_SYNC__TRANSPORT__TRADES", "stream".into()));
    env.push(("TRADING_SYNC__STREAMS__CONSUMER", "oversized".into()));
    let daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    wait_applied(&db, &daemon).await;
    check_dead_letters(&db).await;
    let peak = peak_rss(daemon.child.id());
    eprintln!(
        "streams: {BIGS} × {} MiB entries waiting at start; daemon peak RSS {:.1} MiB",
        BIG >> 20,
        peak as f64 / 1048576.0
    );
    // The budget, a few entry-sized replies (the adaptive COUNT) and the process's own ~16 MiB
    // idle plus the allocator's slack (peaks of 55–65 MiB across runs, with or without the log
    // sink); reading read_count entries at once would have held the whole 80 MiB backlog on top
    // of the queue.
    assert!(
        peak < (QUEUE + 8 * BIG + (24 << 20)) as u64,
        "peak RSS {peak} bytes"
    );
    drop(daemon);
    common::delete_keys(&[&key]).await;
}
