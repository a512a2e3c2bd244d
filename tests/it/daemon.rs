//! The real binary as systemd runs it: notify protocol, graceful drain on SIGTERM, metrics and
//! health endpoints, and fast, clear startup failures.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{free_port, http_get, metric, Daemon, PrivateRedis};
use common::{eventually, python_dumps, unique_name, TestDb};
use serde_json::json;

fn trade_payload(id: usize) -> String {
    python_dumps(&json!({
        "type": "trade_executed", "service": "execution",
        "data": {"trade_id": format!("S-{id:07}"), "account_id": "ACC1", "symbol": "AAPL",
                 "side": "buy", "quantity": 1, "price": "10.5", "strategy": "drain"},
        "timestamp": "2025-11-24T15:04:05.123456", "correlation_id": format!("S-{id:07}")}))
}

#[tokio::test]
async fn sigterm_drains_everything_received_and_speaks_the_notify_protocol() {
    let db = TestDb::new().await;
    let socket_path = std::env::temp_dir().join(format!("{}.sock", unique_name("ts_notify")));
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Daemon::start(
        &db,
        &common::redis_url(),
        &[
            ("NOTIFY_SOCKET", socket_path.to_string_lossy().into_owned()),
            ("WATCHDOG_USEC", "400000".into()),
            // Every stall limit below the watchdog's, or `run` refuses to start.
            ("TRADING_SYNC__DATABASE__STATEMENT_TIMEOUT_MS", "150".into()),
            ("TRADING_SYNC__DATABASE__LOCK_TIMEOUT_MS", "200".into()),
            ("TRADING_SYNC__DATABASE__CONNECT_TIMEOUT_MS", "300".into()),
        ],
    );
    let mut notices: Vec<String> = Vec::new();
    let receive_until = |want: &str, notices: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                notices.extend(text.lines().map(str::to_owned));
                if text.lines().any(|l| l == want) {
                    return;
                }
            }
        }
        panic!("no {want} on NOTIFY_SOCKET; got {notices:?}");
    };
    receive_until("READY=1", &mut notices);
    receive_until("WATCHDOG=1", &mut notices);

    let ready = daemon.get("/readyz").await.expect("/readyz answers");
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(daemon.get("/healthz").await.unwrap().0, 200);

    // Publish continuously from another task; SIGTERM arrives mid-load.
    let channel = format!("{}:trades", daemon.prefix);
    let publisher = tokio::spawn(async move {
        let mut redis = redis::Client::open(common::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut id = 0;
        for _ in 0..400 {
            let mut pipe = redis::pipe();
            for _ in 0..100 {
                pipe.cmd("PUBLISH")
                    .arg(&channel)
                    .arg(trade_payload(id))
                    .ignore();
                id += 1;
            }
            let () = pipe.query_async(&mut redis).await.unwrap();
        }
    });
    let port = daemon.port().await;
    let applied_before_signal = eventually(
        "metrics to show applied trades",
        Duration::from_secs(20),
        || async move {
            let (_, text) = http_get(port, "/metrics").await?;
            let applied = metric(
                &text,
                "trading_sync_events_applied_total{channel=\"trades\"}",
            );
            (applied >= 1000.0).then_some(applied)
        },
    )
    .await;
    daemon.sigterm();
    let status = daemon.wait(Duration::from_secs(15));
    publisher.abort();
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        daemon.log_text()
    );
    receive_until("STOPPING=1", &mut notices);
    let position = |want: &str| notices.iter().position(|n| n == want).unwrap();
    assert!(position("READY=1") < position("WATCHDOG=1"));
    assert!(position("WATCHDOG=1") < position("STOPPING=1"));

    let logs = daemon.logs();
    let last = logs
        .iter()
        .rev()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stopped"))
        })
        .unwrap_or_else(|| panic!("no final log line:\n{}", daemon.log_text()));
    let received = last["received"].as_u64().expect("received count");
    assert_eq!(last["refused"].as_u64(), Some(0));
    let in_ledger: i64 = db
        .client
        .query_one("SELECT count(*) FROM analytics.applied_trades", &[])
        .await
        .unwrap()
        .get(0);
    assert!(received as f64 >= applied_before_signal);
    assert_eq!(
        in_ledger as u64, received,
        "every received trade is committed"
    );
    let _ = std::fs::remove_file(&socket_path);
}

#[tokio::test]
async fn readyz_follows_redis_and_metrics_count_applied_events() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    redis.wait_up().await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let daemon = Daemon::start(&db, &url, &[]);
    let dport = daemon.port().await;
    let status = |want: u16| {
        move || async move {
            let (code, body) = http_get(dport, "/readyz").await?;
            (code == want).then_some(body)
        }
    };
    eventually("ready", Duration::from_secs(20), status(200)).await;

    let mut publisher = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for id in 0..50 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{}:trades", daemon.prefix))
            .arg(trade_payload(id))
            .query_async(&mut publisher)
            .await
            .unwrap();
    }
    eventually(
        "applied counter to reach 50",
        Duration::from_secs(20),
        || async move {
            let (_, text) = http_get(dport, "/metrics").await?;
            let n = metric(
                &text,
                "trading_sync_events_applied_total{channel=\"trades\"}",
            );
            (n == 50.0).then_some(())
        },
    )
    .await;

    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let body = eventually(
        "not ready while Redis is down",
        Duration::from_secs(20),
        status(503),
    )
    .await;
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["redis_subscribed"], false);
    assert_eq!(detail["database"], true);
    // Readiness is a metric too, evaluated at each scrape (the "not ready" alert reads it).
    let (_, text) = http_get(dport, "/metrics").await.unwrap();
    assert_eq!(metric(&text, "trading_sync_ready "), 0.0, "{text}");

    redis = PrivateRedis::start(port);
    redis.wait_up().await;
    eventually(
        "ready again after Redis is back",
        Duration::from_secs(30),
        status(200),
    )
    .await;
    let (_, text) = http_get(dport, "/metrics").await.unwrap();
    assert!(
        metric(&text, "trading_sync_reconnects_total{server=\"redis\"}") >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "trading_sync_ready "), 1.0, "{text}");
    drop(redis);
}

fn run_expecting_failure(env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .arg("run")
        .env_remove("TRADING_SYNC_CONFIG")
        .env("TRADING_SYNC__HTTP__ENABLED", "false")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started although it should not have");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn startup_fails_fast_with_the_cause() {
    let db = TestDb::new().await;
    let redis = common::redis_url();

    // A Redis without a password accepts any, so this one gets a password of its own.
    let port = free_port();
    let _guarded = PrivateRedis::start_with(port, &["--requirepass", "the-password"]);
    let started = Instant::now();
    let wrong_password = eventually("a refused Redis login", Duration::from_secs(20), || {
        let (db_url, redis_url) = (
            db.url.clone(),
            format!("redis://:not-the-password@127.0.0.1:{port}/0"),
        );
        async move {
            let stderr =
                run_expecting_failure(&[("DATABASE_URL", &db_url), ("REDIS_URL", &redis_url)]);
            // Until the private server listens, the failure is "connection refused".
            (!stderr.contains("refused")).then_some(stderr)
        }
    })
    .await;
    assert!(wrong_password.contains("Redis"), "{wrong_password}");
    assert!(
        wrong_password.to_lowercase().contains("pass"),
        "the cause names the password: {wrong_password}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    let unknown_role = db.url.replacen("postgres@", "no_such_role@", 1);
    let refused = run_expecting_failure(&[("DATABASE_URL", &unknown_role), ("REDIS_URL", &redis)]);
    assert!(refused.contains("no_such_role"), "{refused}");

    let unreachable = run_expecting_failure(&[
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/trading_system",
        ),
        ("REDIS_URL", &redis),
    ]);
    assert!(
        unreachable.contains("cannot connect to PostgreSQL"),
        "{unreachable}"
    );

    let bad_cron = run_expecting_failure(&[
        ("DATABASE_URL", &db.url),
        ("TRADING_SYNC__INDICATORS__SCHEDULE", "every day at five"),
    ]);
    assert!(bad_cron.contains("indicators.schedule"), "{bad_cron}");

    // A statement may wait longer than systemd's watchdog allows: refused, naming the setting.
    // Through `sh … exec` so that WATCHDOG_PID names the daemon itself, as systemd sets it.
    let out = Command::new("sh")
        .args([
            "-c",
            r#"export WATCHDOG_PID=$$; exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_trading-sync"),
            "run",
        ])
        .env_remove("TRADING_SYNC_CONFIG")
        .env("TRADING_SYNC__HTTP__ENABLED", "false")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis)
        .env("WATCHDOG_USEC", "2000000")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started although it should not have");
    let beyond_watchdog = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        beyond_watchdog.contains("database.statement_timeout_ms"),
        "{beyond_watchdog}"
    );

    let empty = unique_name("ts_test");
    let _cleanup = common::DropDatabase(empty.clone());
    let admin = common::connect(&common::admin_url()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{empty}\""))
        .await
        .unwrap();
    let unmigrated = run_expecting_failure(&[
        ("DATABASE_URL", &common::database_url(&empty)),
        ("REDIS_URL", &redis),
    ]);
    assert!(unmigrated.contains("trading-sync migrate"), "{unmigrated}");
}

/// `Daemon::build` binds the HTTP port once and says which: with port 0 the kernel picks it, the
/// endpoints answer there, and a second daemon asking for that same port fails at build, naming
/// the setting (no window in which the port was released between a check and the real bind).
#[tokio::test]
async fn the_http_port_is_bound_once_at_build_and_reported() {
    let app = common::spawn_app(|c| c.http.enabled = true).await;
    let port = app.http_port.expect("HTTP is enabled");
    assert_ne!(port, 0);
    let (status, body) = http_get(port, "/healthz").await.expect("/healthz answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    eventually("ready", Duration::from_secs(10), || async {
        let (status, _) = http_get(port, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    let mut taken = app.config.clone();
    taken.http.listen = format!("127.0.0.1:{port}");
    let error = match trading_sync::daemon::Daemon::build(&taken).await {
        Ok(_) => panic!("a second daemon bound a port in use"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("http.listen"), "{error}");
    app.stop().await.unwrap();
}
