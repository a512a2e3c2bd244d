//! Centralized logs (#13 item 4): the daemon's own warnings in `logging.system_logs`, one
//! `logging.performance_logs` row per job run and per summary interval; a bounded buffer that
//! drops its oldest entries (counted) while PostgreSQL is away and never makes the emitter
//! wait; and a sink whose own failures never reach the database.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{metric, Daemon};
use common::{eventually, python_dumps, LoginRole, TestDb};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;
use trading_sync::logship::{self, SinkSettings};
use trading_sync::telemetry::central::{DatabaseLayer, SINK_TARGET};
use trading_sync::telemetry::LogBuffer;

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A dead letter, the writer's summary, maintenance and reconcile, from the real binary: each
/// leaves its row, with its fields, while the daemon runs; the rest is flushed at its exit.
#[tokio::test]
async fn the_daemon_writes_its_warnings_and_its_runs_into_the_logging_tables() {
    let db = TestDb::new().await;
    let mut daemon = Daemon::start(
        &db,
        &common::redis_url(),
        &[
            ("TRADING_SYNC__MAINTENANCE__ENABLED", "true".into()),
            ("TRADING_SYNC__LOG__SUMMARY_INTERVAL_SECS", "1".into()),
            ("TRADING_SYNC__RECONCILE__GRACE_MS", "0".into()),
        ],
    );
    daemon.port().await;
    let mut redis = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let channel = format!("{}:trades", daemon.prefix);
    let bad = r#"{"type": "trade_executed", "service": "execution", "data": {"trade_id": "LOG-BAD-1", "account_id": "A", "symbol": "AAPL", "commission": "0.12345"}, "timestamp": "2025-11-24T15:04:05"}"#;
    let good = python_dumps(&json!({
        "type": "trade_executed", "service": "execution",
        "data": {"trade_id": "LOG-OK-1", "account_id": "A", "symbol": "AAPL", "side": "buy",
                 "quantity": 1, "price": "10.5", "strategy": "logs"},
        "timestamp": "2025-11-24T15:04:05"}));
    for payload in [bad.to_owned(), good] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    let row = eventually(
        "the dead letter's system_logs row",
        Duration::from_secs(20),
        || async {
            db.client
                .query_opt(
                    "SELECT service, level, correlation_id, event_type, logger, host, process_id, \
                            data \
                       FROM logging.system_logs WHERE message = 'message dead-lettered'",
                    &[],
                )
                .await
                .unwrap()
        },
    )
    .await;
    assert_eq!(row.get::<_, &str>("service"), "trading-sync");
    assert_eq!(row.get::<_, &str>("level"), "WARN");
    assert_eq!(
        row.get::<_, Option<&str>>("correlation_id"),
        Some("LOG-BAD-1")
    );
    assert_eq!(
        row.get::<_, Option<&str>>("event_type"),
        Some("trade_executed")
    );
    assert!(row
        .get::<_, &str>("logger")
        .starts_with("trading_sync::apply"));
    assert!(!row.get::<_, &str>("host").is_empty());
    assert_eq!(row.get::<_, i32>("process_id") as u32, daemon.child.id());
    let data: serde_json::Value = row.get("data");
    assert_eq!(data["channel"], "trades", "{data}");
    assert_eq!(data["trade_id"], "LOG-BAD-1", "{data}");
    assert!(data["reason"].is_string(), "{data}");
    assert!(
        data["error"].as_str().unwrap().contains("NUMERIC(15,4)"),
        "{data}"
    );

    for operation in ["maintenance_run", "reconcile_run"] {
        let data: serde_json::Value = eventually(
            &format!("a {operation} performance row"),
            Duration::from_secs(20),
            || async {
                db.client
                    .query_opt(
                        "SELECT data FROM logging.performance_logs \
                          WHERE operation = $1 AND success AND duration_ms >= 0",
                        &[&operation],
                    )
                    .await
                    .unwrap()
                    .map(|r| r.get(0))
            },
        )
        .await;
        assert!(data.is_object(), "{data}");
    }
    // The interval in which the good trade committed: the review's DatabaseMonitoring summary.
    let summary: serde_json::Value = eventually(
        "a writer summary with the committed batch",
        Duration::from_secs(20),
        || async {
            db.client
                .query_opt(
                    "SELECT data FROM logging.performance_logs \
                      WHERE operation = 'batch_writer_summary' \
                        AND (data->>'batches')::int > 0",
                    &[],
                )
                .await
                .unwrap()
                .map(|r| r.get(0))
        },
    )
    .await;
    assert!(summary["commits_timed"].as_u64().unwrap() >= 1, "{summary}");
    let p50 = summary["commit_ms_p50"].as_f64().unwrap();
    let p99 = summary["commit_ms_p99"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99, "{summary}");
    assert!(summary["slow_queries"].is_u64(), "{summary}");

    let (_, metrics) = daemon.get("/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "trading_sync_log_entries_dropped_total"),
        0.0
    );
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM logging.system_logs WHERE logger LIKE 'trading_sync::logship%'"
        )
        .await,
        0
    );
}

fn command(db_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .env_remove("TRADING_SYNC_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

/// One-shot commands flush before they exit: their rows are there the moment they return. The
/// reconcile runs as a trading_sync login, so its grants (INSERT and the sequences) are proved.
#[tokio::test]
async fn the_indicators_and_reconcile_commands_leave_their_rows_before_exiting() {
    let db = TestDb::new().await;
    let out = command(&db.url, &["indicators"]);
    assert!(out.status.success(), "{out:?}");
    let role = LoginRole::create("trading_sync").await;
    let out = command(&role.url(&db.url), &["reconcile"]);
    assert!(out.status.success(), "{out:?}");
    // A refused --since: the command's fatal error is written too.
    let out = command(&role.url(&db.url), &["reconcile", "--since", "1990-01-01"]);
    assert!(!out.status.success(), "{out:?}");

    let rows = db
        .client
        .query(
            "SELECT operation, success, rows_affected, data FROM logging.performance_logs \
              ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let operations: Vec<(&str, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // The refused --since took the lock and failed: a run, unsuccessful.
    assert_eq!(
        operations,
        [
            ("indicator_run", true),
            ("reconcile_run", true),
            ("reconcile_run", false)
        ]
    );
    let failed: serde_json::Value = rows[2].get(3);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("retention horizon"),
        "{failed}"
    );
    let indicators: serde_json::Value = rows[0].get(3);
    assert_eq!(indicators["mode"], "Incremental", "{indicators}");
    assert_eq!(rows[0].get::<_, Option<i64>>(2), Some(0));
    let reconcile: serde_json::Value = rows[1].get(3);
    assert_eq!(reconcile["trigger"], "command", "{reconcile}");
    let error: String = db
        .client
        .query_one(
            "SELECT message FROM logging.system_logs WHERE level = 'ERROR' \
               AND logger = 'trading_sync::cli'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("retention horizon"), "{error}");
    role.drop(&db).await;
}

/// Events of every subscriber layer, for what the sink says about itself (to journald only).
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber> Layer<S> for Recorded {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap()
            .push((event.metadata().target().to_owned(), message.0));
    }
}

impl Recorded {
    fn saw(&self, target: &str, starts: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(t, m)| t == target && m.starts_with(starts))
    }
}

/// Emits `n` warnings as the data path would; returns the mean and the slowest call.
fn emit(n: usize, from: usize) -> (Duration, Duration) {
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for seq in from..from + n {
        let one = Instant::now();
        tracing::warn!(
            target: "trading_sync::apply",
            seq,
            channel = "trades",
            reason = "decode",
            trade_id = "T-1",
            "message dead-lettered"
        );
        slowest = slowest.max(one.elapsed());
    }
    (started.elapsed() / n as u32, slowest)
}

/// The database closed to connections (`ALLOW_CONNECTIONS false`, a DBA's everyday action) for
/// the sink: the layer keeps returning at once, the buffer keeps the newest entries and counts
/// the rest, the sink says so on the process log only, and once the database is back the kept
/// entries are written — none of them the sink's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_away_the_oldest_entries_are_dropped_and_the_emitter_never_waits() {
    const CAPACITY: usize = 1_000;
    const BURST: usize = 20_000;
    let db = TestDb::new().await;
    let buffer = Arc::new(LogBuffer::new(CAPACITY));
    let recorded = Recorded::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(
                DatabaseLayer::new(buffer.clone())
                    .with_filter(DatabaseLayer::filter(tracing::Level::WARN)),
            )
            .with(recorded.clone()),
    );
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let settings = SinkSettings {
        pg: {
            let mut pg = trading_sync::db::Connector::primary(&db.config()).unwrap();
            pg.config_mut().application_name(logship::APPLICATION_NAME);
            pg
        },
        batch_max: 400,
        poll: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        write_limit: Duration::from_secs(5),
        statement_timeout: Duration::from_millis(2_500),
        lock_timeout: Duration::from_millis(2_500),
        flush_deadline: Duration::from_secs(5),
    };
    let stop = CancellationToken::new();
    let sink = tokio::spawn(
        logship::run(buffer.clone(), settings, stop.clone()).with_subscriber(dispatch.clone()),
    );

    // Connected: what the data path pays per warning while the sink writes.
    let (mean_up, slowest_up) = emit(CAPACITY / 2, 0);
    eventually(
        "the first entries written",
        Duration::from_secs(20),
        || async {
            (count(&db, "SELECT count(*) FROM logging.system_logs").await == (CAPACITY / 2) as i64)
                .then_some(())
        },
    )
    .await;

    // Away: new sessions are refused (55000), the sink's session is ended.
    let admin = common::connect(&common::admin_url()).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{0}\" ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE datname = '{0}' AND application_name = '{1}'",
            db.name,
            logship::APPLICATION_NAME
        ))
        .await
        .unwrap();
    // One entry for the sink to fail on (it connects only when it has something to write).
    emit(1, 999_999);
    eventually(
        "the sink to report the outage",
        Duration::from_secs(20),
        || async {
            recorded
                .saw(SINK_TARGET, "cannot write logs to the database")
                .then_some(())
        },
    )
    .await;
    // That entry is in the buffer, or in the sink's hand if its session looked alive.
    let (dropped_before, waiting) = (buffer.dropped(), buffer.len());
    let (mean_down, slowest_down) = emit(BURST, 1_000_000);
    let dropped = buffer.dropped() - dropped_before;
    eprintln!(
        "per warning: connected mean {mean_up:?} (slowest {slowest_up:?}); database away, \
         buffer full: mean {mean_down:?} (slowest {slowest_down:?}); dropped {dropped}"
    );
    assert_eq!(dropped, (waiting + BURST - CAPACITY) as u64);
    assert_eq!(buffer.len(), CAPACITY);
    // Nothing on this path waits for the database: a connect or a statement would cost
    // milliseconds; a generous bound for a loaded 2-core machine.
    assert!(mean_down < Duration::from_micros(200), "{mean_down:?}");

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    eventually(
        "the kept entries written",
        Duration::from_secs(30),
        || async {
            let burst =
                "SELECT count(*) FROM logging.system_logs WHERE (data->>'seq')::bigint >= 1000000";
            (count(&db, burst).await == CAPACITY as i64).then_some(())
        },
    )
    .await;
    assert!(recorded.saw(SINK_TARGET, "writing logs to the database again"));
    // The newest were kept: the last CAPACITY of the burst, in order.
    let seqs: Vec<i64> = common::first_column(
        &db.client,
        "SELECT (data->>'seq')::bigint FROM logging.system_logs \
              WHERE (data->>'seq')::bigint >= 1000000 ORDER BY id",
    )
    .await;
    let expected: Vec<i64> = (1_000_000 + BURST - CAPACITY..1_000_000 + BURST)
        .map(|s| s as i64)
        .collect();
    assert_eq!(seqs, expected);
    // The sink's own failure went to the process log, never into the table.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM logging.system_logs \
              WHERE logger <> 'trading_sync::apply' OR message LIKE '%logs to the database%'"
        )
        .await,
        0
    );
    stop.cancel();
    let report = sink.await.unwrap();
    let total = count(&db, "SELECT count(*) FROM logging.system_logs").await;
    assert_eq!(report.system_rows, total as u64);
    assert_eq!(report.left_at_exit, 0);
}

/// A write stuck when `stop` fires is given the flush deadline, not its own write limit, and
/// what is left then is counted as dropped (`shutdown`): the sink ends within the deadline
/// whatever the database does.
#[tokio::test]
async fn a_write_stuck_at_stop_ends_by_the_flush_deadline_and_is_counted() {
    let db = TestDb::new().await;
    let buffer = Arc::new(LogBuffer::new(100));
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(
        DatabaseLayer::new(buffer.clone()).with_filter(DatabaseLayer::filter(tracing::Level::WARN)),
    ));
    let flush_deadline = Duration::from_millis(800);
    let settings = SinkSettings {
        pg: {
            let mut pg = trading_sync::db::Connector::primary(&db.config()).unwrap();
            pg.config_mut().application_name(logship::APPLICATION_NAME);
            pg
        },
        batch_max: 100,
        poll: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        // Far longer than the test: only the flush deadline can end the stuck write.
        write_limit: Duration::from_secs(120),
        statement_timeout: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(50),
        flush_deadline,
    };
    // The table locked: the sink's INSERT waits on it.
    let mut locker = common::connect(&db.url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE logging.system_logs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let sink = tokio::spawn(
        logship::run(buffer.clone(), settings, stop.clone()).with_subscriber(dispatch.clone()),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        for seq in 0..3 {
            tracing::warn!(target: "trading_sync::apply", seq, "stuck");
        }
    });
    eventually(
        "the sink waiting on the lock",
        Duration::from_secs(20),
        || async {
            let row = db
                .client
                .query_opt(
                    "SELECT a.pid FROM pg_stat_activity a \
                      WHERE a.application_name = $1 AND a.wait_event_type = 'Lock'",
                    &[&logship::APPLICATION_NAME],
                )
                .await
                .unwrap()?;
            Some(row.get::<_, i32>(0))
        },
    )
    .await;
    let dropped_before = buffer.dropped();
    let stopped = Instant::now();
    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), sink)
        .await
        .expect("the sink ends by its flush deadline, not its write limit")
        .unwrap();
    let took = stopped.elapsed();
    assert!(
        took < flush_deadline + Duration::from_millis(1_500),
        "ended {took:?} after stop"
    );
    assert_eq!(report.left_at_exit, 3);
    assert_eq!(buffer.dropped() - dropped_before, 3);
    assert_eq!(report.system_rows, 0);
    lock.rollback().await.unwrap();
}
