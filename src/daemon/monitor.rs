//! The once-a-second look at every stage: gauges, the systemd watchdog's ping (withheld when a
//! task stops making progress) and the periodic summary line.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{notify, DaemonState};

/// Once a second: gauges, the watchdog ping (only while the writer and the subscriber loops
/// turn), and every `summary` an info line with rates.
pub(super) async fn monitor(
    state: Arc<DaemonState>,
    pool: deadpool_postgres::Pool,
    summary: Duration,
    shutdown: CancellationToken,
) {
    let watchdog = notify::watchdog_interval();
    let period = watchdog
        .map(|w| (w / 2).min(Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    let mut last_summary = tokio::time::Instant::now();
    let mut last = (0u64, 0u64);
    let mut last_writer = WriterTotals::of(&state);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let depth = state.queue.depth.load(Ordering::Relaxed);
        let bytes = state.queue.bytes.load(Ordering::Relaxed);
        metrics::gauge!("trading_sync_queue_depth").set(depth as f64);
        metrics::gauge!("trading_sync_queue_bytes").set(bytes as f64);
        if state.uses_journal.load(Ordering::Relaxed) {
            let buffer = &state.journal.buffer;
            metrics::gauge!("trading_sync_journal_buffer_bytes")
                .set(buffer.bytes.load(Ordering::Relaxed) as f64);
        }
        let live = state.ingest_live();
        metrics::gauge!("trading_sync_redis_subscribed").set(f64::from(u8::from(live)));
        let pool_status = pool.status();
        metrics::gauge!("trading_sync_pool_in_use")
            .set((pool_status.size - pool_status.available) as f64);
        metrics::gauge!("trading_sync_pool_waiting").set(pool_status.waiting as f64);
        crate::telemetry::prometheus().run_upkeep();

        if let Some(interval) = watchdog {
            let writer_age = state.writer.heartbeat.age();
            let subscriber_age = [
                (
                    state.uses_pubsub.load(Ordering::Relaxed),
                    &state.subscription.heartbeat,
                ),
                (
                    state.uses_streams.load(Ordering::Relaxed),
                    &state.streams.heartbeat,
                ),
                (
                    state.uses_journal.load(Ordering::Relaxed),
                    &state.journal.heartbeat,
                ),
            ]
            .iter()
            .filter(|(used, _)| *used)
            .map(|(_, beat)| beat.age())
            .max()
            .unwrap_or_default();
            if writer_age < interval && subscriber_age < interval {
                notify::watchdog();
            } else {
                tracing::error!(
                    writer_idle_ms = writer_age.as_millis() as u64,
                    subscriber_idle_ms = subscriber_age.as_millis() as u64,
                    "a task has stopped making progress; withholding the watchdog ping"
                );
            }
        }

        if !summary.is_zero() && last_summary.elapsed() >= summary {
            let secs = last_summary.elapsed().as_secs_f64();
            last_summary = tokio::time::Instant::now();
            let received = state.received();
            let applied = state.writer.applied_total();
            tracing::info!(
                received_per_s = ((received - last.0) as f64 / secs).round(),
                applied_per_s = ((applied - last.1) as f64 / secs).round(),
                received_total = received,
                applied_total = applied,
                duplicates_total = state.writer.duplicates.load(Ordering::Relaxed),
                dead_lettered_total = state.writer.dead_lettered.load(Ordering::Relaxed),
                queue_depth = depth,
                queue_bytes = bytes,
                refused_total = state.refused(),
                redis_subscribed = live,
                redis_disconnects_total = state.subscription.disconnects.load(Ordering::Relaxed),
                journal_appended_total = state.journal.appended.load(Ordering::Relaxed),
                journal_length = state.journal.length.load(Ordering::Relaxed),
                "summary"
            );
            last = (received, applied);
            let totals = WriterTotals::of(&state);
            record_writer_summary(&state, &last_writer, &totals, secs);
            last_writer = totals;
        }
    }
}

/// The batch writer's running totals, to take an interval's differences from.
struct WriterTotals {
    batches: u64,
    applied: u64,
    duplicates: u64,
    dead_lettered: u64,
    slow: u64,
}

impl WriterTotals {
    fn of(state: &DaemonState) -> WriterTotals {
        let writer = &state.writer;
        WriterTotals {
            batches: writer.batches.load(Ordering::Relaxed),
            applied: writer.applied_total(),
            duplicates: writer.duplicates.load(Ordering::Relaxed),
            dead_lettered: writer.dead_lettered.load(Ordering::Relaxed),
            slow: writer.slow_commits.load(Ordering::Relaxed),
        }
    }
}

/// The review's DatabaseMonitoring summary, one `logging.performance_logs` row per summary
/// interval: what the writer committed and how fast. `duration_ms` is the interval covered;
/// `success` is false while batches fail to reach the database.
fn record_writer_summary(
    state: &DaemonState,
    before: &WriterTotals,
    now: &WriterTotals,
    secs: f64,
) {
    let commits = state.writer.commit_times.drain();
    let events = now.applied - before.applied;
    let failing = state.writer.database_failing.load(Ordering::Relaxed);
    let record = crate::telemetry::PerformanceLog::new(
        "batch_writer_summary",
        Duration::from_secs_f64(secs),
        !failing,
    )
    .rows(events)
    .data(serde_json::json!({
        "interval_s": (secs * 1_000.0).round() / 1_000.0,
        "batches": now.batches - before.batches,
        "events_applied": events,
        "duplicates": now.duplicates - before.duplicates,
        "dead_lettered": now.dead_lettered - before.dead_lettered,
        "commits_timed": commits.count,
        "commit_ms_p50": commits.p50_ms,
        "commit_ms_p99": commits.p99_ms,
        "commit_ms_max": commits.max_ms,
        "slow_queries": now.slow - before.slow,
        "queue_depth": state.queue_depth(),
        "database_failing": failing,
        "blocked": state.writer.blocked.load(Ordering::Relaxed),
    }));
    crate::telemetry::record_performance(record);
}
