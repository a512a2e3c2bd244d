//! Maintenance runs that go wrong: a connection lost in the middle of the last task, and a
//! lock that cannot be taken. Their errors must say what the server said, once.

use crate::common;

use std::time::Duration;

use common::{eventually, TestDb};
use trading_sync::config::MaintenanceConfig;
use trading_sync::maintenance::{run_once, MaintenanceError};

/// Dead-letter retention alone: with nothing after it, it is the run's last task.
fn dead_letters_only() -> MaintenanceConfig {
    MaintenanceConfig {
        partitions_ahead_years: 0,
        log_retention_days: 0,
        dead_letter_retention_days: 30,
        ledger_retention_days: 0,
        // ANALYZE (V26) runs after retention: off, or it would be the last task.
        analyze: false,
        ..Default::default()
    }
}

/// The session is terminated (57P01, as in a failover's fast shutdown) while the last task waits
/// on a lock. The run must fail as a whole, so that it is run again on a new connection, even
/// though the 57P01 may reach the task before the connection sees its end of file; and the
/// error must keep the task's cause.
#[tokio::test]
async fn a_session_terminated_during_the_last_task_fails_the_run_with_its_cause() {
    let db = TestDb::new().await;
    let client = common::connect(&db.url).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let locker = common::connect(&db.url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE analytics.dead_letters IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let run = tokio::spawn(async move {
        run_once(&client, &dead_letters_only(), Duration::from_secs(60)).await
    });
    eventually(
        "the dead-letter task to wait on the lock",
        Duration::from_secs(30),
        || async {
            let waiting: bool = db
                .client
                .query_one("SELECT cardinality(pg_blocking_pids($1)) > 0", &[&pid])
                .await
                .unwrap()
                .get(0);
            waiting.then_some(())
        },
    )
    .await;
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let result = run.await.unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    match result {
        Err(MaintenanceError::ConnectionLost { failures }) => {
            assert_eq!(failures.len(), 1, "{failures:?}");
            let (task, cause) = &failures[0];
            assert_eq!(*task, "dead_letters");
            assert!(cause.contains("57P01"), "{cause}");
            let message = MaintenanceError::ConnectionLost { failures }.to_string();
            assert!(
                message.contains("dead_letters: terminating connection"),
                "{message}"
            );
        }
        other => panic!("expected a lost connection, got {other:?}"),
    }
}

/// A lock that cannot be taken names the server's error once, even through `{:#}`, which
/// prints every chained source.
#[tokio::test]
async fn a_lock_error_prints_its_cause_once() {
    let db = TestDb::new().await;
    // In an aborted transaction, the lock query fails with 25P02.
    db.client.batch_execute("BEGIN").await.unwrap();
    assert!(db.client.batch_execute("SELECT 1/0").await.is_err());
    let error = run_once(&db.client, &dead_letters_only(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(error, MaintenanceError::Lock { .. }), "{error:?}");
    let shown = format!("{:#}", anyhow::Error::from(error));
    assert_eq!(shown.matches("25P02").count(), 1, "{shown}");
    assert_eq!(
        shown.matches("current transaction is aborted").count(),
        1,
        "{shown}"
    );
    db.client.batch_execute("ROLLBACK").await.unwrap();
}
