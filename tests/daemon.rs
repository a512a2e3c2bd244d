//! The real binary as systemd runs it: notify protocol, graceful drain on SIGTERM, metrics and
//! health endpoints, and fast, clear startup failures.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, python_dumps, unique_name, TestDb};
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon as a child process with its own database, prefix and port; stderr (JSON logs)
/// goes to a file so the test can read it after exit.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
    prefix: String,
}

impl Daemon {
    fn start(db: &TestDb, redis_url: &str, extra_env: &[(&str, String)]) -> Daemon {
        let prefix = unique_name("ts_test");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{prefix}.log"));
        // Through `sh … exec` so that WATCHDOG_PID can name the daemon's own pid, as systemd
        // sets it (the watchdog is ignored otherwise).
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"export WATCHDOG_PID=$$; exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_trading-sync"),
            "--log-format",
            "json",
            "run",
        ])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url)
        .env("TRADING_SYNC__REDIS__CHANNEL_PREFIX", &prefix)
        .env("TRADING_SYNC__REDIS__RECONNECT_MAX_BACKOFF_MS", "200")
        .env("TRADING_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TRADING_SYNC__INDICATORS__ENABLED", "false")
        .env("TRADING_SYNC__MAINTENANCE__ENABLED", "false")
        .env("RUST_LOG", "info")
        .env_remove("TRADING_SYNC_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
            port,
            prefix,
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; panics past `limit`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A bare HTTP/1.0 GET: enough for our three endpoints, no client crate needed.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

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
    let port = daemon.port;
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

/// A Redis server of this test's own, so stopping it disturbs no other test.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        PrivateRedis { child, port }
    }

    async fn wait_up(&self) {
        let url = format!("redis://127.0.0.1:{}/0", self.port);
        eventually("private redis to answer", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn readyz_follows_redis_and_metrics_count_applied_events() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    redis.wait_up().await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let daemon = Daemon::start(&db, &url, &[]);
    let dport = daemon.port;
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
