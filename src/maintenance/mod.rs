//! The architecture review's DatabaseMaintenance as scheduled tasks: market_data partitions
//! created ahead of time, retention of logs, dead letters and the trade-id ledger, and the
//! analytics tables' statistics (its update_statistics: ANALYZE, through V26's function).
//!
//! Each task is its own statement with its own outcome, so one failing (say, a lock timeout on
//! market_data) does not stop the others. A session advisory lock makes the whole run happen
//! once across instances.

use std::time::{Duration, Instant};

use chrono::Datelike;
use tokio_postgres::Client;

use crate::config::MaintenanceConfig;
use crate::core::note_duration;
use crate::db::ErrorClass;

/// "tsmaint" — held for the duration of one maintenance run.
const MAINTENANCE_LOCK_KEY: i64 = 0x7473_6d61_696e_7400;

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Creating a partition takes an exclusive lock on market_data; never queue behind a long
/// reader for more than this (the next run tries again).
const SET_LOCK_TIMEOUT: &str = "SET lock_timeout = '5s'";
const ENSURE_PARTITIONS: &str = "SELECT data_ingestion.ensure_market_data_partitions($1, $2)";

const ARCHIVE_SYSTEM_LOGS: &str = "\
WITH moved AS (
    DELETE FROM logging.system_logs WHERE created_at < now() - make_interval(days => $1) RETURNING *
) INSERT INTO logging.archived_system_logs SELECT * FROM moved";
const ARCHIVE_PERFORMANCE_LOGS: &str = "\
WITH moved AS (
    DELETE FROM logging.performance_logs WHERE created_at < now() - make_interval(days => $1) RETURNING *
) INSERT INTO logging.archived_performance_logs SELECT * FROM moved";
const DELETE_SYSTEM_LOGS: &str =
    "DELETE FROM logging.system_logs WHERE created_at < now() - make_interval(days => $1)";
const DELETE_PERFORMANCE_LOGS: &str =
    "DELETE FROM logging.performance_logs WHERE created_at < now() - make_interval(days => $1)";
const DELETE_DEAD_LETTERS: &str =
    "DELETE FROM analytics.dead_letters WHERE received_at < now() - make_interval(days => $1)";
/// Raises the retention watermark reconcile and verify read (FOR SHARE, per chunk), before the
/// rows go: in the same transaction as RETIRE_LEDGER, and with the same now().
const RAISE_RETENTION_WATERMARK: &str = "\
UPDATE analytics.ledger_retention
   SET retired_through = GREATEST(retired_through, now() - make_interval(days => $1))";

/// Retires ledger rows whose applied_at and executed_at are both past the horizon (reconcile
/// refuses trades executed before it, so a retired trade is never applied again from its row),
/// folding their contributions into the carried-forward baseline in the same statement: `verify`
/// keeps adding up.
const RETIRE_LEDGER: &str = "\
WITH retired AS (
    DELETE FROM analytics.applied_trades
     WHERE applied_at < now() - make_interval(days => $1)
       AND executed_at < now() - make_interval(days => $1)
    RETURNING account_id, symbol, strategy, net_quantity, total_value, realized_pnl, commission,
              is_win, trade_date
), portfolio AS (
    INSERT INTO analytics.ledger_baseline_portfolio AS b
    SELECT account_id, symbol, count(*), sum(net_quantity), sum(total_value), sum(realized_pnl),
           sum(commission)
      FROM retired WHERE trade_date IS NOT NULL
     GROUP BY account_id, symbol
    ON CONFLICT (account_id, symbol) DO UPDATE SET
        trade_count  = b.trade_count + EXCLUDED.trade_count,
        net_quantity = b.net_quantity + EXCLUDED.net_quantity,
        total_value  = b.total_value + EXCLUDED.total_value,
        realized_pnl = b.realized_pnl + EXCLUDED.realized_pnl,
        commission   = b.commission + EXCLUDED.commission
), metrics AS (
    INSERT INTO analytics.ledger_baseline_metrics AS b
    SELECT strategy, trade_date, count(*), count(*) FILTER (WHERE is_win), sum(realized_pnl),
           sum(abs(net_quantity)), sum(abs(total_value)), sum(commission)
      FROM retired WHERE trade_date IS NOT NULL AND strategy IS NOT NULL
     GROUP BY strategy, trade_date
    ON CONFLICT (strategy, date) DO UPDATE SET
        total_trades   = b.total_trades + EXCLUDED.total_trades,
        winning_trades = b.winning_trades + EXCLUDED.winning_trades,
        realized_pnl   = b.realized_pnl + EXCLUDED.realized_pnl,
        volume         = b.volume + EXCLUDED.volume,
        notional       = b.notional + EXCLUDED.notional,
        commission     = b.commission + EXCLUDED.commission
)
SELECT count(*) FROM retired";

/// What one run did, task by task.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// False when another instance held the lock and this run did nothing.
    pub ran: bool,
    pub partitions_created: i32,
    pub system_logs_retired: u64,
    pub performance_logs_retired: u64,
    pub dead_letters_deleted: u64,
    pub ledger_rows_deleted: u64,
    /// Analytics tables ANALYZEd (0 when the task is off or failed).
    pub tables_analyzed: i32,
    /// Tasks that failed, with the error; the others still ran.
    pub failures: Vec<(&'static str, String)>,
}

/// Why a maintenance run did not get through its tasks.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// `error`'s text is in the message; it is not a chained source, which would print it
    /// twice under `{:#}`.
    #[error("cannot take the maintenance lock: {}", crate::db::error_text(.error))]
    Lock { error: tokio_postgres::Error },
    /// The server went away mid-run (a restart, a failover): the caller retries the run on a
    /// new connection instead of waiting for the next scheduled one. Each failed task keeps
    /// its cause, so the log says what the server answered (57P01, a reset, …).
    #[error("the connection was lost during maintenance (failed: {})", describe_failures(.failures))]
    ConnectionLost {
        failures: Vec<(&'static str, String)>,
    },
}

/// `task: error; task: error`.
fn describe_failures(failures: &[(&'static str, String)]) -> String {
    failures
        .iter()
        .map(|(task, error)| format!("{task}: {error}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs every enabled task once. `client` must be a connection of its own (the lock is held by
/// its session). A task's failure is reported and the others still run; only a lost connection
/// fails the run as a whole.
pub async fn run_once(
    client: &Client,
    config: &MaintenanceConfig,
    slow_query: Duration,
) -> Result<MaintenanceReport, MaintenanceError> {
    let started = Instant::now();
    let mut report = MaintenanceReport::default();
    let locked: bool = client
        .query_one(TRY_LOCK, &[&MAINTENANCE_LOCK_KEY])
        .await
        .map_err(|error| MaintenanceError::Lock { error })?
        .get(0);
    if !locked {
        tracing::info!("maintenance is running on another instance; skipping");
        return Ok(report);
    }
    report.ran = true;

    if config.partitions_ahead_years > 0 {
        let this_year = chrono::Utc::now().year();
        let until = this_year + config.partitions_ahead_years as i32;
        let result = async {
            client.batch_execute(SET_LOCK_TIMEOUT).await?;
            let created: i32 = client
                .query_one(ENSURE_PARTITIONS, &[&this_year, &until])
                .await?
                .get(0);
            Ok::<_, tokio_postgres::Error>(created)
        };
        match timed("partitions", slow_query, result).await {
            Ok(n) => report.partitions_created = n,
            Err(e) => report
                .failures
                .push(("partitions", crate::db::error_text(&e))),
        }
    }
    if config.log_retention_days > 0 {
        let days = config.log_retention_days as i32;
        let (system, performance) = if config.archive_logs {
            (ARCHIVE_SYSTEM_LOGS, ARCHIVE_PERFORMANCE_LOGS)
        } else {
            (DELETE_SYSTEM_LOGS, DELETE_PERFORMANCE_LOGS)
        };
        match timed("system_logs", slow_query, client.execute(system, &[&days])).await {
            Ok(n) => report.system_logs_retired = n,
            Err(e) => report
                .failures
                .push(("system_logs", crate::db::error_text(&e))),
        }
        match timed(
            "performance_logs",
            slow_query,
            client.execute(performance, &[&days]),
        )
        .await
        {
            Ok(n) => report.performance_logs_retired = n,
            Err(e) => report
                .failures
                .push(("performance_logs", crate::db::error_text(&e))),
        }
    }
    if config.dead_letter_retention_days > 0 {
        let days = config.dead_letter_retention_days as i32;
        match timed(
            "dead_letters",
            slow_query,
            client.execute(DELETE_DEAD_LETTERS, &[&days]),
        )
        .await
        {
            Ok(n) => report.dead_letters_deleted = n,
            Err(e) => report
                .failures
                .push(("dead_letters", crate::db::error_text(&e))),
        }
    }
    if config.ledger_retention_days > 0 {
        let days = config.ledger_retention_days as i32;
        match timed("ledger", slow_query, async {
            client.batch_execute("BEGIN").await?;
            let retired = async {
                client.execute(RAISE_RETENTION_WATERMARK, &[&days]).await?;
                let row = client.query_one(RETIRE_LEDGER, &[&days]).await?;
                client.batch_execute("COMMIT").await?;
                Ok::<_, tokio_postgres::Error>(row)
            }
            .await;
            if retired.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            retired
        })
        .await
        {
            Ok(row) => report.ledger_rows_deleted = row.get::<_, i64>(0) as u64,
            Err(e) => report.failures.push(("ledger", crate::db::error_text(&e))),
        }
    }
    // Last: after retention deleted what it deletes, the statistics describe what is left.
    if config.analyze {
        match timed(
            "statistics",
            slow_query,
            crate::db::statistics::refresh(client, None, "maintenance"),
        )
        .await
        {
            Ok(n) => report.tables_analyzed = n,
            Err(e) => report
                .failures
                .push(("statistics", crate::db::error_text(&e))),
        }
    }
    // Unlocking first tells whether the session is still there: a task's 57P01 reaches us
    // before the connection's end of file does, so `is_closed()` alone, read right after the
    // last task, may still say false. A lost connection also released the lock.
    let unlocked = client.query_one(UNLOCK, &[&MAINTENANCE_LOCK_KEY]).await;
    let lost = client.is_closed()
        || unlocked
            .as_ref()
            .is_err_and(|e| ErrorClass::of(e) == ErrorClass::Connection);
    if lost && !report.failures.is_empty() {
        record_run(&report, started.elapsed());
        return Err(MaintenanceError::ConnectionLost {
            failures: report.failures,
        });
    }
    for (task, error) in &report.failures {
        tracing::error!(task, error = %error, "maintenance task failed; it will be retried at the next run");
    }
    tracing::info!(
        partitions_created = report.partitions_created,
        system_logs_retired = report.system_logs_retired,
        performance_logs_retired = report.performance_logs_retired,
        dead_letters_deleted = report.dead_letters_deleted,
        ledger_rows_deleted = report.ledger_rows_deleted,
        tables_analyzed = report.tables_analyzed,
        failures = report.failures.len(),
        "maintenance run finished"
    );
    metrics::counter!("trading_sync_maintenance_runs_total").increment(1);
    record_run(&report, started.elapsed());
    Ok(report)
}

/// The run's `logging.performance_logs` row (a run that found the lock taken did nothing and
/// has none): rows_affected counts the rows retired or deleted.
fn record_run(report: &MaintenanceReport, took: Duration) {
    let rows = report.system_logs_retired
        + report.performance_logs_retired
        + report.dead_letters_deleted
        + report.ledger_rows_deleted;
    let failures: serde_json::Map<String, serde_json::Value> = report
        .failures
        .iter()
        .map(|(task, error)| ((*task).to_owned(), serde_json::Value::from(error.as_str())))
        .collect();
    let record =
        crate::telemetry::PerformanceLog::new("maintenance_run", took, report.failures.is_empty())
            .rows(rows)
            .data(serde_json::json!({
                "partitions_created": report.partitions_created,
                "system_logs_retired": report.system_logs_retired,
                "performance_logs_retired": report.performance_logs_retired,
                "dead_letters_deleted": report.dead_letters_deleted,
                "ledger_rows_deleted": report.ledger_rows_deleted,
                "tables_analyzed": report.tables_analyzed,
                "failures": failures,
            }));
    crate::telemetry::record_performance(record);
}

/// Times a statement and reports it as slow past the configured threshold (the review's
/// DatabaseMonitoring).
pub(crate) async fn timed<T, E>(
    operation: &'static str,
    slow: Duration,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = work.await;
    note_duration(operation, slow, started.elapsed());
    result
}
