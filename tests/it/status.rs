//! `trading-sync status`: against a running daemon (exit 0, "up and ready"), a stopped one
//! (exit 3, "NOT RUNNING") and with HTTP off (exit 4, from the database alone).

use crate::common;

use std::time::Duration;

use common::process::{command, http_get, Daemon};
use common::{eventually, TestDb};

#[tokio::test]
async fn status_tells_a_running_daemon_from_a_stopped_one() {
    let db = TestDb::new().await;
    let mut daemon = Daemon::start(&db, &common::redis_url(), &[]);
    let port = daemon.port().await;
    eventually("ready", Duration::from_secs(20), || async move {
        let (code, _) = http_get(port, "/readyz").await?;
        (code == 200).then_some(())
    })
    .await;
    // A wildcard listen address is asked on the loopback.
    let listen = format!("0.0.0.0:{port}");
    let env = [("TRADING_SYNC__HTTP__LISTEN", listen.as_str())];

    let (code, out, err) = command(&db.url, &["status"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("daemon        up and ready (http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("queue         0 messages"), "{out}");
    assert!(out.contains("streams       not used"), "{out}");
    assert!(out.contains("dead letters  none in the last 24 h"), "{out}");
    assert!(out.contains(&common::current_schema_line()), "{out}");

    let (code, out, _) = command(&db.url, &["status", "--json"], &env);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["daemon"]["state"], "up");
    assert_eq!(json["daemon"]["ready"], true);
    assert_eq!(json["daemon"]["readiness"]["redis_subscribed"], true);
    assert_eq!(json["exit_code"], 0);
    assert!(json["database"]["error"].is_null());

    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
    let (code, out, err) = command(&db.url, &["status"], &env);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("daemon        NOT RUNNING: nothing answers at"),
        "{out}"
    );
    assert!(
        out.contains("status        the daemon is not running"),
        "the reason is said: {out}"
    );
    // What the database knows is still there.
    assert!(out.contains(&common::current_schema_line()), "{out}");
    assert!(out.contains("\nreconcile     "), "{out}");

    // The last indicator run comes from the run's own performance_logs row.
    let (code, out, err) = command(&db.url, &["indicators", "--full"], &[]);
    assert_eq!(code, 0, "indicators: {out}{err}");

    // With HTTP off, status says so and reports from the database alone.
    let (code, out, err) = command(
        &db.url,
        &["status"],
        &[("TRADING_SYNC__HTTP__ENABLED", "false")],
    );
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("http.enabled = false"), "{out}");
    assert!(out.contains("indicators    last run "), "{out}");
    assert!(out.contains("(Full, ok)"), "{out}");
    assert!(out.contains(&common::current_schema_line()), "{out}");

    // A database that cannot be reached is said too; the verdict is the daemon's.
    let (code, out, _) = command(
        "postgres://nobody@127.0.0.1:1/none",
        &["status"],
        &[("TRADING_SYNC__HTTP__LISTEN", "127.0.0.1:1")],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("database      UNREACHABLE"), "{out}");
}

/// A table status reads, locked by someone else (a migration, a long maintenance run): status
/// does not hang on it; it says the database timed out.
#[tokio::test]
async fn status_reports_a_database_that_does_not_answer_in_time() {
    let db = TestDb::new().await;
    let holder = common::connect(&db.url).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE analytics.applied_trades IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = command(
        &db.url,
        &["status"],
        &[("TRADING_SYNC__HTTP__ENABLED", "false")],
    );
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("database      timed out"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20), "{out}");
    let (_, out, _) = command(
        &db.url,
        &["status", "--json"],
        &[("TRADING_SYNC__HTTP__ENABLED", "false")],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["database"]["timed_out"], true, "{out}");
    holder.batch_execute("ROLLBACK").await.unwrap();
}
