//! The daemon's indicator task: a catch-up run at start, a run at each occurrence of
//! `indicators.schedule` in `indicators.timezone`, and short runs for the symbols whose yahoo
//! bars just arrived, once their events have gone quiet for `indicators.debounce_ms`.
//!
//! Runs happen one after another inside this task, so a slow run delays the next trigger
//! instead of overlapping it; events keep queueing in the channel meanwhile. Across instances,
//! the scheduled run takes a session advisory lock and is skipped where another instance holds
//! it; every run also takes the per-symbol locks of [`super::store`].

use std::collections::{BTreeMap, BTreeSet};
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
/// period up to [`MAX_RETRY_WAIT`]: 2 + 4 + … + 60 s, about four minutes of retries at the
/// default debounce. Bars arriving meanwhile neither shorten the wait nor count as retries.
const FAILED_RETRIES: u32 = 8;
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// A scheduled run that lost the database (no server, a connection cut, a read-only standby)
/// is run again after this, doubling up to [`MAX_RETRY_WAIT`], until it gets through: it is
/// the day's run, and a new primary may be a few seconds away. Any other error (a bad
/// password, a missing grant, a dropped database) would only repeat: it waits for the next
/// scheduled run.
const RERUN_FIRST: Duration = Duration::from_secs(1);

/// A summary line names at most this many of the symbols it is about.
const SAMPLE_SYMBOLS: usize = 10;

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
/// and the task goes on: a scheduled run that lost the database is run again with backoff, and
/// symbols that failed are retried (after a restart or a failover, the connector finds the
/// primary again). It returns Err only if the schedule has no next occurrence.
pub(crate) async fn run_scheduler(
    settings: SchedulerSettings,
    symbols: UnboundedReceiver<String>,
    shutdown: CancellationToken,
) -> Result<(), IndicatorError> {
    let database = Database {
        settings: &settings,
        shutdown: &shutdown,
    };
    drive(&settings, &database, symbols, &shutdown).await
}

/// What a scheduled run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheduled {
    /// It got through: the symbols it found locked by another instance, and those that failed.
    Ran {
        locked: Vec<String>,
        failed: Vec<String>,
    },
    /// Another instance holds the scheduled-run lock.
    Skipped,
    /// It could not reach the database, or lost it ([`IndicatorError::is_connection_loss`]):
    /// run again with backoff.
    Unreachable(String),
    /// An error a retry would meet again: left to the next scheduled run.
    Refused(String),
}

/// What a run of given symbols came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SymbolsRun {
    Ran {
        locked: Vec<String>,
        failed: Vec<String>,
    },
    /// No database: every symbol of the run failed, and is retried.
    Unreachable(String),
    /// An error a retry would meet again: the symbols are left to the next scheduled run.
    Refused(String),
}

/// The scheduler's I/O: the two kinds of run. None when shutdown cut the run short.
trait Runs {
    async fn scheduled(&self, trigger: &'static str) -> Option<Scheduled>;
    async fn symbols(&self, symbols: Vec<String>) -> Option<SymbolsRun>;
}

/// The scheduler's loop: when to run what, with the runs themselves behind [`Runs`] and every
/// decision about pending symbols in [`Pending`].
async fn drive(
    settings: &SchedulerSettings,
    runs: &impl Runs,
    mut symbols: UnboundedReceiver<String>,
    shutdown: &CancellationToken,
) -> Result<(), IndicatorError> {
    tracing::info!(
        schedule = %settings.schedule, timezone = %settings.timezone,
        run_at_start = settings.run_at_start, on_market_data = settings.on_market_data,
        "indicator scheduler started"
    );
    let mut pending = Pending::new(settings.debounce);
    // A scheduled run that lost the database: when to run it again.
    let mut rerun: Option<Instant> = None;
    let mut rerun_backoff = Backoff::new(RERUN_FIRST, MAX_RETRY_WAIT);
    if settings.run_at_start {
        record_next_run(Utc::now());
        let Some(outcome) = runs.scheduled("start").await else {
            tracing::info!("indicator scheduler stopped");
            return Ok(());
        };
        rerun = after_scheduled(&mut pending, &mut rerun_backoff, outcome, "start");
    }
    let mut next = next_occurrence(settings, Utc::now())?;
    record_next_run(next);
    tracing::info!(next = %next.with_timezone(&settings.timezone), "next scheduled indicator run");
    let mut channel_open = true;
    loop {
        let now_wall = Utc::now();
        let until_next = (next - now_wall).to_std().unwrap_or(Duration::ZERO);
        let mut wake = Instant::now() + until_next.min(MAX_SLEEP);
        if let Some(at) = pending.wake() {
            wake = wake.min(at);
        }
        if let Some(at) = rerun {
            wake = wake.min(at);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = symbols.recv(), if channel_open => match received {
                Some(symbol) if settings.on_market_data => pending.bar(symbol, Instant::now()),
                Some(_) => {}
                None => channel_open = false,
            },
            () = tokio::time::sleep_until(wake) => {
                let scheduled = Utc::now() >= next;
                if scheduled || rerun.is_some_and(|at| Instant::now() >= at) {
                    let trigger = if scheduled { "schedule" } else { "retry" };
                    let Some(outcome) = runs.scheduled(trigger).await else {
                        break;
                    };
                    rerun = after_scheduled(&mut pending, &mut rerun_backoff, outcome, trigger);
                }
                if scheduled {
                    next = next_occurrence(settings, Utc::now())?;
                    record_next_run(next);
                    tracing::info!(
                        next = %next.with_timezone(&settings.timezone),
                        "next scheduled indicator run"
                    );
                }
                let batch = pending.take_due(Instant::now());
                if !batch.is_empty() {
                    let Some(outcome) = runs.symbols(batch.keys().cloned().collect()).await else {
                        break;
                    };
                    match &outcome {
                        SymbolsRun::Ran { .. } => {}
                        SymbolsRun::Unreachable(error) => tracing::error!(
                            symbols = batch.len(), error = %error,
                            "indicator run for new bars could not reach the database; retried"
                        ),
                        SymbolsRun::Refused(error) => tracing::error!(
                            symbols = batch.len(), error = %error,
                            "indicator run for new bars failed; left to the next scheduled run"
                        ),
                    }
                    let given_up = pending.ran(&batch, outcome, Instant::now());
                    log_given_up(&given_up);
                }
            }
        }
    }
    tracing::info!("indicator scheduler stopped");
    Ok(())
}

/// When the scheduled run is due; it moves on only once the run due has ended. A time well in
/// the past is a run that is late or stuck (the "indicator run late" alert), whatever the
/// schedule: the rule needs no copy of the cron expression.
fn record_next_run(at: DateTime<Utc>) {
    metrics::gauge!("trading_sync_indicator_next_run_timestamp_seconds").set(at.timestamp() as f64);
}

/// Takes in a scheduled run's outcome, logs it, and returns when to run it again, if ever
/// before the next scheduled time.
fn after_scheduled(
    pending: &mut Pending,
    backoff: &mut Backoff,
    outcome: Scheduled,
    trigger: &'static str,
) -> Option<Instant> {
    let now = Instant::now();
    match outcome {
        Scheduled::Ran { locked, failed } => {
            backoff.reset();
            log_given_up(&pending.scheduled_ran(&locked, failed, now));
            None
        }
        Scheduled::Skipped => {
            backoff.reset();
            tracing::info!(
                trigger,
                "another instance holds the scheduled indicator run; skipped here"
            );
            None
        }
        Scheduled::Unreachable(error) => {
            let wait = backoff.fail();
            tracing::error!(
                trigger, error = %error, retry_in_ms = wait.as_millis() as u64,
                "scheduled indicator run could not reach the database; it is run again shortly"
            );
            Some(now + wait)
        }
        Scheduled::Refused(error) => {
            backoff.reset();
            tracing::error!(
                trigger, error = %error,
                "scheduled indicator run failed, and a retry would fail the same way; \
                 left to the next scheduled run"
            );
            None
        }
    }
}

/// One line for every symbol a run gave up on, however many: a run cut off mid-way can leave
/// thousands.
fn log_given_up(symbols: &[String]) {
    if symbols.is_empty() {
        return;
    }
    tracing::error!(
        symbols = symbols.len(),
        sample = %sample(symbols),
        retries = FAILED_RETRIES,
        "indicators still failing for these symbols; left to the next scheduled run"
    );
}

/// The first [`SAMPLE_SYMBOLS`] symbols, and how many more there are.
fn sample(symbols: &[String]) -> String {
    let shown = symbols
        .iter()
        .take(SAMPLE_SYMBOLS)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match symbols.len().saturating_sub(SAMPLE_SYMBOLS) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
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

/// The wait before retry number `attempts` (from 1) of a failed symbol: `first`, doubling up to
/// [`MAX_RETRY_WAIT`]. A database coming back (a restart, a promotion) takes seconds, not a
/// debounce period.
fn failed_retry_wait(first: Duration, attempts: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_RETRY_WAIT)
}

/// What happened to a symbol before the run it is in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tries {
    /// Runs that found it locked by another instance.
    locked: u32,
    /// Runs that failed it, one after another.
    failures: u32,
}

/// A failed symbol waiting for its retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    failures: u32,
    not_before: Instant,
}

/// The symbols waiting to be run, and when: pure bookkeeping, every instant given by the
/// caller, so that tests drive it with made-up times.
///
/// Two kinds wait apart. Symbols whose bars just arrived are debounced together: each bar
/// pushes the batch back by one debounce period (up to [`MAX_DEBOUNCE_PERIODS`] after the
/// first). Failed symbols wait on their own backoff, which bars must not shorten: in a
/// failover with bars every second, a debounced retry would spend every attempt in seconds. A
/// bar for a symbol awaiting its retry is left to that retry, which reads the symbol's change
/// rows, the new bar's included.
#[derive(Debug)]
struct Pending {
    debounce: Duration,
    /// Symbols with new bars, and the times each was found locked.
    fresh: BTreeMap<String, u32>,
    quiet_deadline: Option<Instant>,
    batch_deadline: Option<Instant>,
    /// Failed symbols, each with its own deadline.
    retries: BTreeMap<String, Retry>,
}

impl Pending {
    fn new(debounce: Duration) -> Self {
        Pending {
            debounce,
            fresh: BTreeMap::new(),
            quiet_deadline: None,
            batch_deadline: None,
            retries: BTreeMap::new(),
        }
    }

    /// The shortest wait before a retry: one debounce period, and never a busy loop.
    fn retry_wait(&self) -> Duration {
        self.debounce.max(Duration::from_millis(200))
    }

    /// A bar for `symbol` arrived.
    fn bar(&mut self, symbol: String, now: Instant) {
        if self.retries.contains_key(&symbol) {
            return;
        }
        self.fresh.entry(symbol).or_insert(0);
        self.quiet_deadline = Some(now + self.debounce);
        self.batch_deadline
            .get_or_insert(now + self.debounce * MAX_DEBOUNCE_PERIODS);
    }

    /// When something is next due, if anything waits.
    fn wake(&self) -> Option<Instant> {
        let fresh = match (self.quiet_deadline, self.batch_deadline) {
            (Some(q), Some(b)) if !self.fresh.is_empty() => Some(q.min(b)),
            _ => None,
        };
        let retry = self.retries.values().map(|r| r.not_before).min();
        match (fresh, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes out the symbols due at `now`, to run together: the fresh batch once quiet (or at
    /// its deadline), and each retry whose wait is over.
    fn take_due(&mut self, now: Instant) -> BTreeMap<String, Tries> {
        let mut batch = BTreeMap::new();
        let fresh_due = self.quiet_deadline.is_some_and(|q| now >= q)
            || self.batch_deadline.is_some_and(|b| now >= b);
        if fresh_due {
            for (symbol, locked) in std::mem::take(&mut self.fresh) {
                batch.insert(
                    symbol,
                    Tries {
                        locked,
                        failures: 0,
                    },
                );
            }
            self.quiet_deadline = None;
            self.batch_deadline = None;
        }
        let due: Vec<String> = self
            .retries
            .iter()
            .filter(|(_, r)| now >= r.not_before)
            .map(|(symbol, _)| symbol.clone())
            .collect();
        for symbol in due {
            if let Some(retry) = self.retries.remove(&symbol) {
                batch.insert(
                    symbol,
                    Tries {
                        locked: 0,
                        failures: retry.failures,
                    },
                );
            }
        }
        batch
    }

    /// Takes in the outcome of a run of `batch` (from [`Pending::take_due`]). Returns the
    /// symbols given up on, whose retries ran out.
    fn ran(
        &mut self,
        batch: &BTreeMap<String, Tries>,
        outcome: SymbolsRun,
        now: Instant,
    ) -> Vec<String> {
        let (locked, failed) = match outcome {
            SymbolsRun::Ran { locked, failed } => (locked, failed),
            SymbolsRun::Unreachable(_) => (Vec::new(), batch.keys().cloned().collect()),
            SymbolsRun::Refused(_) => return Vec::new(),
        };
        for symbol in locked {
            let tries = batch.get(&symbol).copied().unwrap_or_default();
            if tries.locked < LOCKED_RETRIES {
                self.locked(symbol, tries.locked + 1, now);
            }
        }
        let mut given_up = Vec::new();
        for symbol in failed {
            let failures = batch.get(&symbol).map_or(0, |t| t.failures);
            self.failed(symbol, failures, now, &mut given_up);
        }
        given_up
    }

    /// Takes in a scheduled run that got through. It covered every symbol: a retry it neither
    /// failed nor found locked is done. Returns the symbols given up on.
    fn scheduled_ran(
        &mut self,
        locked: &[String],
        failed: Vec<String>,
        now: Instant,
    ) -> Vec<String> {
        let failed_set: BTreeSet<&String> = failed.iter().collect();
        self.retries
            .retain(|symbol, _| failed_set.contains(symbol) || locked.contains(symbol));
        let mut given_up = Vec::new();
        for symbol in failed {
            let failures = self.retries.get(&symbol).map_or(0, |r| r.failures);
            self.failed(symbol, failures, now, &mut given_up);
        }
        given_up
    }

    /// Found locked for the `times`th time: run again one debounce period from now, with the
    /// fresh batch (new bars may push the batch back, never past this).
    fn locked(&mut self, symbol: String, times: u32, now: Instant) {
        let at = now + self.retry_wait();
        self.fresh.insert(symbol, times);
        self.quiet_deadline = Some(self.quiet_deadline.map_or(at, |q| q.min(at)));
        self.batch_deadline = Some(self.batch_deadline.map_or(at, |b| b.min(at)));
    }

    /// Failed after `before` failures in a row: retried after its backoff, or given up.
    fn failed(&mut self, symbol: String, before: u32, now: Instant, given_up: &mut Vec<String>) {
        let failures = before + 1;
        // The retry reads the symbol's new bars too.
        self.fresh.remove(&symbol);
        if self.fresh.is_empty() {
            self.quiet_deadline = None;
            self.batch_deadline = None;
        }
        if failures > FAILED_RETRIES {
            self.retries.remove(&symbol);
            given_up.push(symbol);
            return;
        }
        let not_before = now + failed_retry_wait(self.retry_wait(), failures);
        self.retries.insert(
            symbol,
            Retry {
                failures,
                not_before,
            },
        );
    }
}

/// The runs against the database.
struct Database<'a> {
    settings: &'a SchedulerSettings,
    shutdown: &'a CancellationToken,
}

impl Runs for Database<'_> {
    /// All symbols, incremental, under the scheduled-run lock. Stops at shutdown (the chunk in
    /// flight rolls back with its connection).
    async fn scheduled(&self, _trigger: &'static str) -> Option<Scheduled> {
        let settings = self.settings;
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
                self.shutdown,
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
            () = self.shutdown.cancelled() => return None,
        };
        Some(match result {
            Ok(Some(summary)) => Scheduled::Ran {
                locked: summary.locked_symbols,
                failed: summary.failed_symbols,
            },
            Ok(None) => Scheduled::Skipped,
            Err(e) if e.is_connection_loss() => Scheduled::Unreachable(e.to_string()),
            Err(e) => Scheduled::Refused(e.to_string()),
        })
    }

    /// The given symbols, incremental.
    async fn symbols(&self, symbols: Vec<String>) -> Option<SymbolsRun> {
        let settings = self.settings;
        let selection = Selection::Symbols(symbols);
        let result = tokio::select! {
            r = job::run_once(&settings.pg, &settings.job, &selection, Mode::Incremental, self.shutdown) => r,
            () = self.shutdown.cancelled() => return None,
        };
        Some(match result {
            Ok(summary) => SymbolsRun::Ran {
                locked: summary.locked_symbols,
                failed: summary.failed_symbols,
            },
            Err(e) if e.is_connection_loss() => SymbolsRun::Unreachable(e.to_string()),
            Err(e) => SymbolsRun::Refused(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};
    use std::str::FromStr;

    use std::cell::RefCell;
    use std::sync::{Arc, Mutex};

    const DEBOUNCE: Duration = Duration::from_secs(2);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn symbols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn unreachable() -> SymbolsRun {
        SymbolsRun::Unreachable("connection refused".into())
    }

    #[test]
    fn failed_symbols_are_retried_for_minutes_at_the_default_debounce() {
        let waits: Vec<u64> = (1..=FAILED_RETRIES)
            .map(|a| failed_retry_wait(DEBOUNCE, a).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(waits.iter().sum::<u64>(), 242);
        assert_eq!(failed_retry_wait(DEBOUNCE, 40), MAX_RETRY_WAIT);
    }

    #[test]
    fn bars_do_not_bring_a_failed_symbols_retry_forward() {
        let t0 = Instant::now();
        let mut p = Pending::new(DEBOUNCE);
        p.bar("AAPL".into(), t0);
        assert!(p.take_due(t0 + secs(1)).is_empty());
        let batch = p.take_due(t0 + DEBOUNCE);
        assert_eq!(batch.keys().collect::<Vec<_>>(), ["AAPL"]);
        let failed_at = t0 + DEBOUNCE;
        assert!(p.ran(&batch, unreachable(), failed_at).is_empty());
        // Bars for it (and a fresh batch for another symbol) every second: its wait holds.
        for s in 1..=3 {
            p.bar("AAPL".into(), failed_at + secs(s) / 2);
            p.bar("MSFT".into(), failed_at + secs(s) / 2);
        }
        assert!(!p.fresh.contains_key("AAPL"), "left to its retry");
        assert_eq!(p.wake(), Some(failed_at + DEBOUNCE));
        let batch = p.take_due(failed_at + secs(1));
        assert!(batch.is_empty(), "{batch:?}");
        let batch = p.take_due(failed_at + DEBOUNCE);
        assert_eq!(
            batch.get("AAPL"),
            Some(&Tries {
                locked: 0,
                failures: 1
            })
        );
        // MSFT's last bar came at +1.5 s: not quiet yet.
        assert!(!batch.contains_key("MSFT"));
        // The second failure waits twice as long, bars or not.
        let again = failed_at + DEBOUNCE;
        p.ran(&batch, unreachable(), again);
        p.bar("AAPL".into(), again + secs(1));
        assert_eq!(p.retries["AAPL"].not_before, again + secs(4));
    }

    #[test]
    fn retries_stop_after_the_limit_with_every_symbol_given_up_at_once() {
        let mut now = Instant::now();
        let mut p = Pending::new(DEBOUNCE);
        let all: Vec<String> = (0..2000).map(|i| format!("S{i:04}")).collect();
        let given_up = p.scheduled_ran(&[], all.clone(), now);
        assert!(given_up.is_empty());
        let mut runs = 0;
        let given_up = loop {
            now = p.wake().expect("a retry is pending");
            let batch = p.take_due(now);
            assert_eq!(batch.len(), all.len());
            runs += 1;
            let given_up = p.ran(&batch, unreachable(), now);
            if !given_up.is_empty() {
                break given_up;
            }
        };
        assert_eq!(
            runs, FAILED_RETRIES,
            "retries after the scheduled run's failure"
        );
        assert_eq!(given_up, all);
        assert_eq!(p.wake(), None);
        assert_eq!(
            sample(&given_up),
            "S0000, S0001, S0002, S0003, S0004, S0005, S0006, S0007, S0008, S0009 and 1990 more"
        );
        assert_eq!(sample(&symbols(&["A", "B"])), "A, B");
    }

    #[test]
    fn a_refused_run_leaves_its_symbols_to_the_next_scheduled_run() {
        let t0 = Instant::now();
        let mut p = Pending::new(DEBOUNCE);
        p.bar("AAPL".into(), t0);
        let batch = p.take_due(t0 + DEBOUNCE);
        let given_up = p.ran(&batch, SymbolsRun::Refused("(28P01)".into()), t0 + DEBOUNCE);
        assert!(given_up.is_empty());
        assert_eq!(p.wake(), None);
    }

    #[test]
    fn locked_symbols_are_retried_one_debounce_apart_up_to_their_limit() {
        let mut now = Instant::now();
        let mut p = Pending::new(DEBOUNCE);
        p.bar("AAPL".into(), now);
        now += DEBOUNCE;
        let mut runs = 0;
        loop {
            let batch = p.take_due(now);
            if batch.is_empty() {
                break;
            }
            runs += 1;
            let locked = SymbolsRun::Ran {
                locked: symbols(&["AAPL"]),
                failed: Vec::new(),
            };
            p.ran(&batch, locked, now);
            // A bar meanwhile does not push the locked retry past one debounce period.
            p.bar("AAPL".into(), now + secs(1));
            now += DEBOUNCE;
        }
        assert_eq!(runs, 1 + LOCKED_RETRIES);
    }

    #[test]
    fn a_scheduled_run_that_got_through_settles_the_retries_it_did_not_fail() {
        let t0 = Instant::now();
        let mut p = Pending::new(DEBOUNCE);
        p.scheduled_ran(&[], symbols(&["A", "B", "C"]), t0);
        let given_up = p.scheduled_ran(&symbols(&["B"]), symbols(&["C"]), t0 + secs(1));
        assert!(given_up.is_empty());
        assert_eq!(p.retries.keys().collect::<Vec<_>>(), ["B", "C"]);
        assert_eq!(p.retries["B"].failures, 1);
        assert_eq!(p.retries["C"].failures, 2);
        assert_eq!(p.retries["C"].not_before, t0 + secs(1) + secs(4));
    }

    /// Runs as told, noting when each was asked for.
    struct Fake {
        start: Instant,
        scheduled: RefCell<std::collections::VecDeque<Scheduled>>,
        scheduled_at: RefCell<Vec<u64>>,
        symbols: fn(&[String]) -> SymbolsRun,
        symbols_at: RefCell<Vec<(u64, usize)>>,
    }

    impl Fake {
        fn new(scheduled: Vec<Scheduled>, symbols: fn(&[String]) -> SymbolsRun) -> Fake {
            Fake {
                start: Instant::now(),
                scheduled: RefCell::new(scheduled.into()),
                scheduled_at: RefCell::default(),
                symbols,
                symbols_at: RefCell::default(),
            }
        }

        /// Seconds since the start, rounded: paused time moves in whole timer ticks.
        fn elapsed(&self) -> u64 {
            (self.start.elapsed().as_millis() as u64 + 500) / 1000
        }
    }

    impl Runs for Fake {
        async fn scheduled(&self, _trigger: &'static str) -> Option<Scheduled> {
            self.scheduled_at.borrow_mut().push(self.elapsed());
            Some(
                self.scheduled
                    .borrow_mut()
                    .pop_front()
                    .unwrap_or(Scheduled::Ran {
                        locked: Vec::new(),
                        failed: Vec::new(),
                    }),
            )
        }

        async fn symbols(&self, symbols: Vec<String>) -> Option<SymbolsRun> {
            self.symbols_at
                .borrow_mut()
                .push((self.elapsed(), symbols.len()));
            Some((self.symbols)(&symbols))
        }
    }

    fn settings(run_at_start: bool) -> SchedulerSettings {
        SchedulerSettings {
            pg: Connector::primary(&crate::config::DatabaseConfig::default()).unwrap(),
            job: JobSettings::default(),
            // Never within a test's reach of virtual time.
            schedule: "0 0 1 1 *".into(),
            cron: croner::Cron::from_str("0 0 1 1 *").unwrap(),
            timezone: chrono_tz::UTC,
            run_at_start,
            on_market_data: true,
            debounce: DEBOUNCE,
        }
    }

    /// The scheduler's log lines, as text.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || logs.clone())
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn lines_with(&self, text: &str) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .filter(|l| l.contains(text))
                .map(str::to_owned)
                .collect()
        }
    }

    /// Runs the scheduler against `fake`, no bars arriving, until `stop_at` seconds.
    async fn drive_until(fake: &Fake, run_at_start: bool, stop_at: u64) {
        let settings = settings(run_at_start);
        let shutdown = CancellationToken::new();
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = async {
            tokio::time::sleep_until(fake.start + secs(stop_at)).await;
            shutdown.cancel();
        };
        let (result, ()) = tokio::join!(drive(&settings, fake, rx, &shutdown), stop);
        result.unwrap();
    }

    /// A 500-symbol batch fails for want of a database while its bars keep coming every second:
    /// its retries keep their own pace (2, 4, 8 … 60 s), and when they run out one line says so.
    #[tokio::test(start_paused = true)]
    async fn bars_every_second_do_not_spend_the_retries_of_failed_symbols() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let fake = Fake::new(Vec::new(), |_| unreachable());
        let settings = settings(false);
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let start = fake.start;
        let feed = async {
            for i in 0..500 {
                tx.send(format!("S{i:03}")).unwrap();
            }
            for s in 1..=250 {
                tokio::time::sleep_until(start + secs(s)).await;
                tx.send("S000".to_owned()).unwrap();
                tx.send("S499".to_owned()).unwrap();
            }
            tokio::time::sleep_until(start + secs(300)).await;
            shutdown.cancel();
        };
        let (result, ()) = tokio::join!(drive(&settings, &fake, rx, &shutdown), feed);
        result.unwrap();
        // The first run at the batch deadline (bars never went quiet), then 8 retries.
        assert_eq!(
            *fake.symbols_at.borrow(),
            [20, 22, 26, 34, 50, 82, 142, 202, 262].map(|t| (t, 500))
        );
        let given_up = logs.lines_with("indicators still failing");
        assert_eq!(given_up.len(), 1, "{given_up:?}");
        assert!(given_up[0].contains("symbols=500"), "{}", given_up[0]);
        assert!(given_up[0].contains("S009 and 490 more"), "{}", given_up[0]);
        assert!(fake.scheduled_at.borrow().is_empty());
    }

    /// A scheduled run refused for good (a bad password, a missing grant) is not run again
    /// before its next scheduled time, and says so once.
    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let refused = Scheduled::Refused("password authentication failed (28P01)".into());
        let fake = Fake::new(vec![refused], |_| unreachable());
        drive_until(&fake, true, 3600).await;
        assert_eq!(*fake.scheduled_at.borrow(), [0]);
        assert_eq!(logs.lines_with("28P01").len(), 1);
    }

    /// A scheduled run that found no database is run again, 1 s doubling, until it gets
    /// through; then no more.
    #[tokio::test(start_paused = true)]
    async fn a_scheduled_run_without_a_database_is_run_again_until_it_gets_through() {
        let down = || Scheduled::Unreachable("connection refused".into());
        let fake = Fake::new(vec![down(), down(), down(), down(), down()], |_| {
            unreachable()
        });
        drive_until(&fake, true, 3600).await;
        assert_eq!(*fake.scheduled_at.borrow(), [0, 1, 3, 7, 15, 31]);
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
