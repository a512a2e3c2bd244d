//! The planner's statistics for the analytics tables: ANALYZE through V26's SECURITY DEFINER
//! function, because on PostgreSQL 15 only a table's owner may ANALYZE it and the daemon runs as
//! `trading_sync` — a plain `ANALYZE` there is a WARNING and nothing else, so the review's
//! update_statistics would be skipped without anyone knowing.
//!
//! Maintenance refreshes every analytics table on its schedule; reconcile and the indicator job
//! refresh the tables they filled after a large run. Each call is logged and counted
//! (`trading_sync_statistics_refreshes_total{after, outcome}`), failures included.

use std::time::Instant;

use tokio_postgres::Client;

/// NULL for every table of the analytics schema.
const REFRESH_STATISTICS: &str = "SELECT analytics.refresh_statistics($1::text[])";

/// The planner's idea of a table's size: what its last ANALYZE (or VACUUM) counted; -1 before
/// the first.
const PLANNED_ROWS: &str = "\
SELECT GREATEST(c.reltuples, 0)::float8 FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'analytics'::regnamespace AND c.relname = $1";

/// Whether `rows` rows just written make `table`'s statistics stale: at least `min_rows`, and at
/// least a tenth of the rows the planner believes the table has (autovacuum's own analyze scale
/// factor). A thousand trades healed into a ten-million-row ledger change no plan, and an
/// ANALYZE of that ledger would cost more than the heal. An unreadable size counts as large.
pub(crate) async fn is_large_change(
    client: &Client,
    table: &str,
    rows: u64,
    min_rows: u64,
) -> bool {
    if rows < min_rows {
        return false;
    }
    match client.query_opt(PLANNED_ROWS, &[&table]).await {
        Ok(Some(row)) => rows as f64 >= 0.1 * row.get::<_, f64>(0),
        Ok(None) | Err(_) => true,
    }
}

/// ANALYZEs `tables` of the analytics schema (`None`: all of them) and returns how many were
/// analyzed. `after` names the caller (`maintenance`, `reconcile`, `indicators`) in the log line
/// and the metric. A failure is logged at error level and counted before it is returned: the
/// caller's own work is done and stays done.
pub(crate) async fn refresh(
    client: &Client,
    tables: Option<&[&str]>,
    after: &'static str,
) -> Result<i32, tokio_postgres::Error> {
    let started = Instant::now();
    let names: Option<Vec<&str>> = tables.map(<[&str]>::to_vec);
    let result = client
        .query_one(REFRESH_STATISTICS, &[&names])
        .await
        .map(|row| row.get::<_, i32>(0));
    let took_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(n) => {
            metrics::counter!("trading_sync_statistics_refreshes_total", "after" => after, "outcome" => "ok")
                .increment(1);
            tracing::info!(
                after,
                tables = n,
                took_ms,
                "analytics statistics refreshed (ANALYZE)"
            );
        }
        Err(e) => {
            metrics::counter!("trading_sync_statistics_refreshes_total", "after" => after, "outcome" => "error")
                .increment(1);
            tracing::error!(after, error = %super::error_text(e), took_ms,
                "refreshing the analytics statistics (ANALYZE) failed; the next run tries again");
        }
    }
    result
}
