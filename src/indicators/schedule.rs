//! The daemon's indicator task: a catch-up run at start, a run at each occurrence of
//! `indicators.schedule` in `indicators.timezone`, and short runs for the symbols whose yahoo
//! bars just arrived, once their events have gone quiet for `indicators.debounce_ms`.
//!
//! Runs happen one after another inside this task, so a slow run delays the next trigger
//! instead of overlapping it; events keep queueing in the channel meanwhile. Across instances,
//! the scheduled run takes a session advisory lock and is skipped where another instance holds
//! it; every run also takes the per-symbol locks of [`super::store`].

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::job::{self, JobSettings, Mode, RunSummary, Selection};
use super::replica::ReplicaSettings;
use super::IndicatorError;
use crate::config::Config;
use crate::core::Backoff;
use crate::db::Connector;

/// Session advisory lock of the scheduled run ("tsindrun"), so that it happens once across
/// instances. Bigint-keyed, unlike the per-symbol locks, so the two never collide.
pub(crate) const SCHEDULED_RUN_LOCK_KEY: i64 = 0x7473_696e_6472_756e;

const TRY_RUN_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1)";
const RUN_UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1)";

/// Longest single sleep: the wall clock is re-read at least this often, so a clock step or a
/// suspended VM delays a scheduled run by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A debounced batch is run at the latest this many debounce periods after its first event,
/// even if events never go quiet (a feed trickling bars every second).
const MAX_DEBOUNCE_PERIODS: u32 = 10;

/// A symbol found locked by another instance is retried this many times (one debounce period
/// apart): that instance may have read its bars just before the new one arrived.
const LOCKED_RETRIES: u32 = 5;

/// A symbol whose computation failed (most often: the database went away mid-run — a restart,
/// a failover) is retried this many times, each wait twice the one before, from one debounce
/// period up to [`MAX_RETRY_WAIT`]: about three minutes of retries at the default debounce.
const FAILED_RETRIES: u32 = 8;
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// A scheduled run that could not reach the database at all is run again after this, doubling
/// up to [`MAX_RETRY_WAIT`], until it gets through: it is the day's run, and a new primary may
/// be a few seconds away.
const RERUN_FIRST: Duration = Duration::from_secs(1);

/// Everything the scheduler needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerSettings {
    pub pg: Connector,
    pub job: JobSettings,
    /// For logs and errors.
    pub schedule: String,
    pub cron: croner::Cron,
    pub timezone: Tz,
    pub run_at_start: bool,
    pub on_market_data: bool,
    pub debounce: Duration,
}

impl SchedulerSettings {
    /// From `[indicators]`, `[database]`, and `sync.exchange_timezone` for bar dates (the
    /// exchange's calendar, America/New_York by default).
    pub(crate) fn from_config(config: &Config) -> Result<Self, IndicatorError> {
        Ok(SchedulerSettings {
            pg: Connector::primary(&config.database)?,
            job: JobSettings {
                bar_timezone: config.exchange_tz()?,
                replica: ReplicaSettings::from_config(config)?,
                ..JobSettings::default()
            },
            schedule: config.indicators.schedule.clone(),
            cron: config.indicator_schedule()?,
            timezone: config.indicators_tz()?,
            run_at_start: config.indicators.run_at_start,
            on_market_data: config.indicators.on_market_data,
            debounce: Duration::from_millis(config.indicators.debounce_ms),
        })
    }
}

/// The first occurrence of `cron` strictly after `after`, evaluated on the wall clock of `tz`.
/// Called afresh for every run, so each occurrence uses the UTC offset of its own date.
pub(crate) fn next_run(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Runs until `shutdown`. `symbols` carries the symbols of incoming yahoo bar events; when
/// `on_market_data` is off they are drained and ignored. Errors of individual runs are logged
/// and the task goes on: a scheduled run that found no database is run again with backoff, and
/// symbols that failed are retried (after a restart or a failover, the connector finds the
/// primary again). It returns Err only if the schedule has no next occurrence.
pub(crate) async fn run_scheduler(
    settings: SchedulerSettings,
    mut symbols: UnboundedReceiver<String>,
    shutdown: CancellationToken,
) -> Result<(), IndicatorError> {
    tracing::info!(
        schedule = %settings.schedule, timezone = %settings.timezone,
        run_at_start = settings.run_at_start, on_market_data = settings.on_market_data,
        "indicator scheduler started"
    );
    // Symbol → attempts so far.
    let mut pending: BTreeMap<String, u32> = BTreeMap::new();
    let mut quiet_deadline: Option<Instant> = None;
    let mut batch_deadline: Option<Instant> = None;
    // A scheduled run that found no database: when to run it again.
    let mut rerun: Option<Instant> = None;
    let mut rerun_backoff = Backoff::new(RERUN_FIRST, MAX_RETRY_WAIT);
    if settings.run_at_start {
        rerun = match scheduled_run(&settings, &shutdown, "start").await {
            Some(failed) => {
                retry_later(&settings, &mut pending, failed, &mut quiet_deadline);
                batch_deadline = quiet_deadline;
                None
            }
            None => Some(Instant::now() + rerun_backoff.fail()),
        };
    }
    let mut next = next_occurrence(&settings, Utc::now())?;
    tracing::info!(next = %next.with_timezone(&settings.timezone), "next scheduled indicator run");
    let mut channel_open = true;
    loop {
        let now_wall = Utc::now();
        let until_next = (next - now_wall).to_std().unwrap_or(Duration::ZERO);
        let mut wake = Instant::now() + until_next.min(MAX_SLEEP);
        if let (Some(q), Some(b)) = (quiet_deadline, batch_deadline) {
            wake = wake.min(q.min(b));
        }
        if let Some(at) = rerun {
            wake = wake.min(at);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = symbols.recv(), if channel_open => match received {
                Some(symbol) if settings.on_market_data => {
                    pending.entry(symbol).or_insert(0);
                    let now = Instant::now();
                    quiet_deadline = Some(now + settings.debounce);
                    batch_deadline.get_or_insert(now + settings.debounce * MAX_DEBOUNCE_PERIODS);
                }
                Some(_) => {}
                None => channel_open = false,
            },
            () = tokio::time::sleep_until(wake) => {
                let scheduled = Utc::now() >= next;
                if scheduled || rerun.is_some_and(|at| Instant::now() >= at) {
                    let trigger = if scheduled { "schedule" } else { "retry" };
                    rerun = match scheduled_run(&settings, &shutdown, trigger).await {
                        Some(failed) => {
                            rerun_backoff.reset();
                            retry_later(&settings, &mut pending, failed, &mut quiet_deadline);
                            batch_deadline = batch_deadline.or(quiet_deadline);
                            None
                        }
                        None => Some(Instant::now() + rerun_backoff.fail()),
                    };
                }
                if scheduled {
                    next = next_occurrence(&settings, Utc::now())?;
                    tracing::info!(
                        next = %next.with_timezone(&settings.timezone),
                        "next scheduled indicator run"
                    );
                }
                let now = Instant::now();
                let due = quiet_deadline.is_some_and(|q| now >= q)
                    || batch_deadline.is_some_and(|b| now >= b);
                if due && !pending.is_empty() {
                    let batch = std::mem::take(&mut pending);
                    quiet_deadline = None;
                    batch_deadline = None;
                    if let Some((retry, wait)) = debounced_run(&settings, &shutdown, batch).await {
                        if !retry.is_empty() {
                            pending = retry;
                            let later = Instant::now() + wait;
                            quiet_deadline = Some(later);
                            batch_deadline = Some(later);
                        }
                    }
                } else if due {
                    quiet_deadline = None;
                    batch_deadline = None;
                }
            }
        }
    }
    tracing::info!("indicator scheduler stopped");
    Ok(())
}

fn next_occurrence(
    settings: &SchedulerSettings,
    after: DateTime<Utc>,
) -> Result<DateTime<Utc>, IndicatorError> {
    next_run(&settings.cron, settings.timezone, after).ok_or_else(|| {
        IndicatorError::ScheduleExhausted {
            schedule: settings.schedule.clone(),
            after: after.to_rfc3339(),
        }
    })
}

/// The shortest wait before a retry: one debounce period, and never a busy loop.
fn retry_wait(settings: &SchedulerSettings) -> Duration {
    settings.debounce.max(Duration::from_millis(200))
}

/// The wait before retry number `attempts` (from 1) of a failed symbol: `first`, doubling up to
/// [`MAX_RETRY_WAIT`]. A database coming back (a restart, a promotion) takes seconds, not a
/// debounce period.
fn failed_retry_wait(first: Duration, attempts: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_RETRY_WAIT)
}

/// Queues symbols a run failed for a retry, after [`retry_wait`] unless one is already due
/// sooner.
fn retry_later(
    settings: &SchedulerSettings,
    pending: &mut BTreeMap<String, u32>,
    failed: Vec<String>,
    quiet_deadline: &mut Option<Instant>,
) {
    if failed.is_empty() {
        return;
    }
    for symbol in failed {
        pending.entry(symbol).or_insert(0);
    }
    let later = Instant::now() + retry_wait(settings);
    *quiet_deadline = Some(quiet_deadline.map_or(later, |q| q.min(later)));
}

/// All symbols, incremental, under the scheduled-run lock. Stops at shutdown (the chunk in
/// flight rolls back with its connection). Returns the symbols that failed, for a retry, or
/// None when the run could not reach the database at all (it is run again).
async fn scheduled_run(
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
    trigger: &str,
) -> Option<Vec<String>> {
    let run = async {
        let client = settings.pg.connect().await?;
        let got: bool = client
            .query_one(TRY_RUN_LOCK_SQL, &[&SCHEDULED_RUN_LOCK_KEY])
            .await
            .map_err(IndicatorError::query("taking the scheduled-run lock"))?
            .get(0);
        if !got {
            return Ok(None);
        }
        let summary = job::run_once(
            &settings.pg,
            &settings.job,
            &Selection::All,
            Mode::Incremental,
            shutdown,
        )
        .await;
        // Also released when `client` is dropped; unlocking first lets a waiter know at once.
        let _ = client
            .execute(RUN_UNLOCK_SQL, &[&SCHEDULED_RUN_LOCK_KEY])
            .await;
        summary.map(Some)
    };
    let result: Result<Option<RunSummary>, IndicatorError> = tokio::select! {
        r = run => r,
        () = shutdown.cancelled() => return Some(Vec::new()),
    };
    match result {
        Ok(Some(summary)) => Some(summary.failed_symbols),
        Ok(None) => {
            tracing::info!(
                trigger,
                "another instance holds the scheduled indicator run; skipped here"
            );
            Some(Vec::new())
        }
        Err(e) => {
            tracing::error!(
                trigger,
                error = %e,
                "scheduled indicator run failed; it is run again shortly"
            );
            None
        }
    }
}

/// The given symbols, incremental. Returns the symbols to retry (found locked, or failed) and
/// the wait before the retry, or None at shutdown.
async fn debounced_run(
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
    batch: BTreeMap<String, u32>,
) -> Option<(BTreeMap<String, u32>, Duration)> {
    let selection = Selection::Symbols(batch.keys().cloned().collect());
    let result = tokio::select! {
        r = job::run_once(&settings.pg, &settings.job, &selection, Mode::Incremental, shutdown) => r,
        () = shutdown.cancelled() => return None,
    };
    let (locked, failed) = match result {
        Ok(summary) => (summary.locked_symbols, summary.failed_symbols),
        Err(e) => {
            tracing::error!(symbols = batch.len(), error = %e, "indicator run for new bars failed");
            (Vec::new(), batch.keys().cloned().collect())
        }
    };
    let mut retry = BTreeMap::new();
    let mut wait = retry_wait(settings);
    for symbol in locked {
        let attempts = batch.get(&symbol).copied().unwrap_or(0) + 1;
        if attempts < LOCKED_RETRIES {
            retry.insert(symbol, attempts);
        }
    }
    for symbol in failed {
        let attempts = batch.get(&symbol).copied().unwrap_or(0) + 1;
        if attempts < FAILED_RETRIES {
            wait = wait.max(failed_retry_wait(retry_wait(settings), attempts));
            retry.insert(symbol, attempts);
        } else {
            tracing::error!(
                symbol,
                attempts,
                "indicators still failing for symbol; left to the next scheduled run"
            );
        }
    }
    Some((retry, wait))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};
    use std::str::FromStr;

    #[test]
    fn failed_symbols_are_retried_for_minutes_at_the_default_debounce() {
        let first = Duration::from_secs(2);
        let waits: Vec<u64> = (1..FAILED_RETRIES)
            .map(|a| failed_retry_wait(first, a).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(waits.iter().sum::<u64>(), 182);
        assert_eq!(failed_retry_wait(first, 40), MAX_RETRY_WAIT);
    }

    #[test]
    fn default_schedule_is_17h_new_york_across_dst() {
        let cron = croner::Cron::from_str("0 17 * * 1-5").unwrap();
        let ny = chrono_tz::America::New_York;
        // Friday 2027-03-12 18:00 EST; DST starts Sunday 2027-03-14.
        let after = ny
            .with_ymd_and_hms(2027, 3, 12, 18, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let monday = next_run(&cron, ny, after).unwrap();
        assert_eq!(monday.to_rfc3339(), "2027-03-15T21:00:00+00:00"); // 17:00 EDT
        let friday_before = next_run(&cron, ny, after - chrono::Duration::hours(2)).unwrap();
        assert_eq!(friday_before.to_rfc3339(), "2027-03-12T22:00:00+00:00"); // 17:00 EST
        let mut t = after - chrono::Duration::days(7);
        for _ in 0..10 {
            t = next_run(&cron, ny, t).unwrap();
            let local = t.with_timezone(&ny);
            assert_eq!((local.hour(), local.minute()), (17, 0), "{local}");
            assert!(!matches!(
                chrono::Datelike::weekday(&local),
                chrono::Weekday::Sat | chrono::Weekday::Sun
            ));
        }
        // And back in November (2027-11-07): 17:00 EDT on Friday, 17:00 EST on Monday.
        let fri = ny
            .with_ymd_and_hms(2027, 11, 5, 12, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let a = next_run(&cron, ny, fri).unwrap();
        let b = next_run(&cron, ny, a).unwrap();
        assert_eq!(a.to_rfc3339(), "2027-11-05T21:00:00+00:00");
        assert_eq!(b.to_rfc3339(), "2027-11-08T22:00:00+00:00");
    }
}
