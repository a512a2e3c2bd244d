//! Never drop what was received: a database that refuses connections or turns read-only, an
//! error only an operator can fix, and SIGHUP, all during a paced pub/sub load. The daemon must
//! keep every received message until it commits, and still be running.

use crate::common;

use std::time::Duration;

use common::process::{http_get, Daemon};
use common::{eventually, TestDb};
use loadgen::{Generator, Spec};

/// /readyz's JSON, once it answers.
async fn readiness(port: u16) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http_get(port, "/readyz").await?;
    Some((code, serde_json::from_str(&body).ok()?))
}

/// Waits until the writer reports the database failing (503), then for `hold` more.
async fn hold_refusal(port: u16, what: &str, hold: Duration) {
    eventually(what, Duration::from_secs(30), || async {
        let (code, body) = readiness(port).await?;
        (code == 503 && body["writer_database"] == false).then_some(())
    })
    .await;
    // The fault's length, not synchronisation: the load keeps arriving meanwhile.
    tokio::time::sleep(hold).await;
}

async fn ready_again(port: u16) {
    eventually("ready again", Duration::from_secs(60), || async {
        let (code, _) = readiness(port).await?;
        (code == 200).then_some(())
    })
    .await;
}

/// A one-share buy of A/S, as the seed's publisher writes it.
fn small_trade(trade_id: &str) -> String {
    common::python_dumps(&serde_json::json!({
        "type": "trade_executed",
        "data": {"trade_id": trade_id, "account_id": "A", "symbol": "S",
                 "side": "buy", "quantity": 1, "price": 2},
        "timestamp": "2026-12-01T15:00:00"}))
}

/// A transaction holding the ledger locked: the writer waits on it until it rolls back.
async fn hold_the_ledger(db: &TestDb) -> tokio_postgres::Client {
    let locker = common::connect(&db.url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE analytics.applied_trades IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

async fn admin(sql: &str) {
    common::connect(&common::admin_url())
        .await
        .batch_execute(sql)
        .await
        .unwrap();
}

async fn terminate_daemon_backends(db: &TestDb) {
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
          WHERE datname = '{}' AND application_name = 'trading-sync'",
        db.name
    ))
    .await;
}

#[tokio::test]
async fn refusals_read_only_and_sighup_during_a_load_lose_nothing() {
    const TRADES: u64 = 12_000;
    const RATE: f64 = 1_000.0;
    let db = TestDb::new().await;
    let daemon = Daemon::start(
        &db,
        &common::redis_url(),
        &[
            ("TRADING_SYNC__RECONCILE__ENABLED", "false".into()),
            ("TRADING_SYNC__HTTP__READYZ_STALL_SECS", "60".into()),
        ],
    );
    let port = daemon.port().await;
    ready_again(port).await;
    let mut generator = Generator::new(Spec {
        seed: 7,
        id_prefix: "RF".into(),
        position_every: 0,
        bar_every: 0,
        ..Default::default()
    });
    let messages = generator.generate(TRADES);
    let expected = generator.expected();
    let prefix = daemon.prefix.clone();
    let mut redis = loadgen::connect_redis(&common::redis_url()).await.unwrap();
    let receivers = {
        let (messages, prefix) = (messages.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut counts = Vec::new();
            for chunk in messages.chunks(100) {
                let started = std::time::Instant::now();
                counts.extend(
                    common::publish_counted(&mut redis, &prefix, chunk, chunk.len())
                        .await
                        .unwrap(),
                );
                let due = Duration::from_secs_f64(chunk.len() as f64 / RATE);
                tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            }
            counts
        })
    };
    let applied = || async {
        loadgen::ledger_count(&db.client, &expected)
            .await
            .unwrap_or(0)
    };
    eventually("the load applying", Duration::from_secs(30), || async {
        (applied().await > 500).then_some(())
    })
    .await;

    // 1. A DBA closes the database for maintenance: new connections refused (55000).
    admin(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        db.name
    ))
    .await;
    terminate_daemon_backends(&db).await;
    hold_refusal(port, "the writer refused", Duration::from_secs(3)).await;
    let during_refusal = applied().await;
    admin(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        db.name
    ))
    .await;
    ready_again(port).await;

    // 2. The primary is demoted: writes fail with 25006 until it is writable again.
    admin(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_read_only = on",
        db.name
    ))
    .await;
    terminate_daemon_backends(&db).await;
    hold_refusal(port, "the writer read-only", Duration::from_secs(3)).await;
    admin(&format!(
        "ALTER DATABASE \"{}\" RESET default_transaction_read_only",
        db.name
    ))
    .await;
    ready_again(port).await;

    // 3. `systemctl reload`.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let receivers = receivers.await.unwrap();
    assert!(
        receivers.iter().all(|&n| n > 0),
        "a message no one received"
    );
    eventually("every trade applied", Duration::from_secs(120), || async {
        (applied().await == expected.trades).then_some(())
    })
    .await;
    let report = loadgen::verify(&db.client, &expected).await.unwrap();
    assert_eq!(
        (report.lost, report.duplicated, report.mismatched_rows),
        (0, 0, 0),
        "{:?}",
        report.mismatches
    );
    let logs = daemon.logs();
    let has = |message: &str| logs.iter().any(|l| l["message"] == message);
    assert!(
        has("database unavailable; the batch and the queue wait and it is retried"),
        "{}",
        daemon.log_text()
    );
    assert!(has(
        "database available again; the waiting batches are being committed"
    ));
    assert!(
        has("log filter reloaded")
            || has("RUST_LOG is set and overrides log.filter: the log filter is unchanged"),
        "{}",
        daemon.log_text()
    );
    let mut daemon = daemon;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon must still run"
    );
    eprintln!(
        "{TRADES} trades at {RATE}/s through a 3 s refusal (ledger at {during_refusal} meanwhile), \
         a 3 s read-only spell and a SIGHUP: lost 0, duplicated 0"
    );
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
}

/// A revoked grant is an operator's mistake, not a reason to drop the queue: the daemon waits,
/// says so, and applies everything once the grant is back.
#[tokio::test]
async fn a_revoked_privilege_blocks_the_writer_without_losing_anything() {
    let db = TestDb::new().await;
    let login = common::LoginRole::create("trading_sync").await;
    // The daemon's own connections as a login of the least-privilege role; the owner revokes.
    let url = login.url(&db.url);
    let mut app2 = common::spawn_app_on(db, move |c| {
        c.database.url = url;
        c.reconcile.enabled = false;
    })
    .await;
    app2.db
        .client
        .batch_execute("REVOKE INSERT ON analytics.applied_trades FROM trading_sync")
        .await
        .unwrap();
    for i in 0..50 {
        let trade = small_trade(&format!("REV-{i}"));
        app2.publish("trades", trade).await;
    }
    eventually("the writer blocked", Duration::from_secs(30), || async {
        app2.state
            .writer
            .blocked
            .load(std::sync::atomic::Ordering::Acquire)
            .then_some(())
    })
    .await;
    assert!(!app2.handle.is_finished(), "the daemon must not exit");
    assert_eq!(
        app2.scalar_i64("SELECT count(*) FROM analytics.applied_trades")
            .await,
        0
    );
    app2.db
        .client
        .batch_execute("GRANT INSERT ON analytics.applied_trades TO trading_sync")
        .await
        .unwrap();
    eventually("every trade applied", Duration::from_secs(60), || async {
        (app2
            .scalar_i64("SELECT count(*) FROM analytics.applied_trades")
            .await
            == 50)
            .then_some(())
    })
    .await;
    assert!(!app2
        .state
        .writer
        .blocked
        .load(std::sync::atomic::Ordering::Acquire));
    let (stopped, db) = app2.stop_keeping_db().await;
    stopped.unwrap();
    login.drop(&db).await;
}

/// The final line adds up: received = applied + duplicates + dead-lettered + refused + left,
/// after a run where a full queue refused messages.
#[tokio::test]
async fn the_final_line_adds_up_after_refusals() {
    let db = TestDb::new().await;
    let daemon = Daemon::start(
        &db,
        &common::redis_url(),
        &[
            ("TRADING_SYNC__RECONCILE__ENABLED", "false".into()),
            // Room for a handful of messages: the held writer makes the queue refuse the rest.
            ("TRADING_SYNC__SYNC__MAX_MESSAGE_BYTES", "1024".into()),
            ("TRADING_SYNC__SYNC__QUEUE_MAX_BYTES", "4096".into()),
        ],
    );
    let port = daemon.port().await;
    ready_again(port).await;
    let locker = hold_the_ledger(&db).await;
    let mut redis = loadgen::connect_redis(&common::redis_url()).await.unwrap();
    let channel = format!("{}:trades", daemon.prefix);
    let trade = |i: usize| small_trade(&format!("ADD-{i}"));
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("PUBLISH").arg(&channel).arg(trade(i)).ignore();
        // Every tenth twice (a duplicate) and every twentieth garbage (a dead letter).
        if i % 10 == 0 {
            pipe.cmd("PUBLISH").arg(&channel).arg(trade(i)).ignore();
        }
        if i % 20 == 0 {
            pipe.cmd("PUBLISH").arg(&channel).arg("not json").ignore();
        }
    }
    let () = pipe.query_async(&mut redis).await.unwrap();
    eventually("refusals", Duration::from_secs(30), || async {
        let (_, text) = http_get(port, "/metrics").await?;
        (common::process::metric(&text, "trading_sync_queue_refused_total") > 0.0).then_some(())
    })
    .await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let mut daemon = daemon;
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
    let last = daemon
        .logs()
        .into_iter()
        .rev()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stopped"))
        })
        .unwrap_or_else(|| panic!("no final line:\n{}", daemon.log_text()));
    let n = |k: &str| last[k].as_u64().unwrap_or_else(|| panic!("{k} in {last}"));
    assert_eq!(n("received"), 200 + 20 + 10, "{last}");
    assert!(n("refused") > 0, "{last}");
    assert_eq!(
        n("received"),
        n("applied") + n("duplicates") + n("dead_lettered") + n("refused") + n("left"),
        "{last}"
    );
    assert_eq!(
        last["level"], "WARN",
        "a run with refusals does not end quietly: {last}"
    );
}

/// A writer stuck on a lock (someone's long transaction) turns /readyz to 503 once it has held
/// its batch for http.readyz_stall_secs, though the database answers SELECT 1.
#[tokio::test]
async fn a_stuck_writer_turns_readyz_to_503() {
    let db = TestDb::new().await;
    let daemon = Daemon::start(
        &db,
        &common::redis_url(),
        &[
            ("TRADING_SYNC__RECONCILE__ENABLED", "false".into()),
            ("TRADING_SYNC__HTTP__READYZ_STALL_SECS", "1".into()),
            // Waits longer than the stall limit instead of turning into a retry.
            ("TRADING_SYNC__DATABASE__LOCK_TIMEOUT_MS", "60000".into()),
            (
                "TRADING_SYNC__DATABASE__STATEMENT_TIMEOUT_MS",
                "60000".into(),
            ),
        ],
    );
    let port = daemon.port().await;
    ready_again(port).await;
    let locker = hold_the_ledger(&db).await;
    let mut redis = loadgen::connect_redis(&common::redis_url()).await.unwrap();
    let trade = small_trade("STUCK-1");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:trades", daemon.prefix))
        .arg(trade)
        .query_async(&mut redis)
        .await
        .unwrap();
    let body = eventually(
        "503 for a stuck writer",
        Duration::from_secs(30),
        || async {
            let (code, body) = readiness(port).await?;
            (code == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(body["database"], true, "{body}");
    assert!(body["writer_busy_ms"].as_u64().unwrap() >= 1000, "{body}");
    locker.batch_execute("ROLLBACK").await.unwrap();
    ready_again(port).await;
    let applied: i64 = db
        .client
        .query_one("SELECT count(*) FROM analytics.applied_trades", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 1);
}

/// SIGHUP re-reads the file: a new log.filter takes effect at once; a file that fails
/// validation changes nothing and says why; the daemon keeps running either way.
#[tokio::test]
async fn sighup_reloads_the_log_filter_and_keeps_the_old_settings_on_a_bad_file() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(common::unique_name("ts_reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    // Quiet but for the line that names the HTTP port the daemon bound (port 0).
    std::fs::write(
        &file,
        "[log]\nfilter = \"warn,trading_sync::daemon::http=info\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        &db,
        &common::redis_url(),
        &[
            ("TRADING_SYNC_CONFIG", file.to_string_lossy().into_owned()),
            // Unset in effect: RUST_LOG would override log.filter.
            ("RUST_LOG", String::new()),
            ("TRADING_SYNC__RECONCILE__ENABLED", "false".into()),
        ],
    );
    ready_again(daemon.port().await).await;
    let hup = |daemon: &Daemon| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &daemon.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let logged = |daemon: &Daemon, message: &str| {
        daemon.logs().iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
    };
    assert!(!logged(&daemon, "batch committed"));

    std::fs::write(&file, "[log]\nfilter = \"trading_sync=debug\"\n").unwrap();
    hup(&daemon);
    eventually("the reload logged", Duration::from_secs(20), || async {
        logged(&daemon, "log filter reloaded").then_some(())
    })
    .await;
    let mut redis = loadgen::connect_redis(&common::redis_url()).await.unwrap();
    let trade = small_trade("HUP-1");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:trades", daemon.prefix))
        .arg(trade)
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually(
        "a debug line after the reload",
        Duration::from_secs(20),
        || async { logged(&daemon, "batch committed").then_some(()) },
    )
    .await;

    std::fs::write(&file, "[sync]\nbatch_max_events = 0\n").unwrap();
    hup(&daemon);
    eventually("the refusal logged", Duration::from_secs(20), || async {
        logged(&daemon, "the configuration was not reloaded").then_some(())
    })
    .await;
    let mut daemon = daemon;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP never kills"
    );
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(&dir);
}
