//! The sink of centralized logs: drains the buffer `crate::telemetry::central` fills into
//! `logging.system_logs` and `logging.performance_logs`, over a connection of its own.
//!
//! Off the event path by construction: the capture only pushes into a bounded buffer; this task
//! alone talks to the database. Every `poll` it swaps the buffer's entries out (O(1)) — only
//! once it has a connection, so that while PostgreSQL is away the buffer itself drops its
//! oldest entries and counts them — and writes them in transactions of up to `batch_max`
//! entries, one UNNEST insert per table. A lost connection is retried with backoff, the
//! entries in hand kept (memory stays bounded: the buffer's capacity, plus at most as many in
//! hand). A batch the database refuses for its data (22/23) is dropped and counted, not
//! retried forever.
//!
//! No feedback loop: everything this task emits is under [`SINK_TARGET`], and it runs inside
//! [`crate::telemetry::shipping`], so the layer ignores its events — and those of whatever it
//! calls — whatever their target. An outage is logged once when it starts and once when it
//! ends, to the process log (journald) only.
//!
//! Bounded at stop: a write in flight when `stop` fires is given the flush deadline, not its
//! own `write_limit`, and the flush after it shares that deadline; whatever is still buffered
//! or in hand when the sink ends — or when [`Shipping::finish`] stops waiting for it — is
//! counted as dropped (`shutdown`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::Backoff;
use crate::db::{Connector, DbError, ErrorClass};
use crate::telemetry::central::{LogEntry, SERVICE, SINK_TARGET};
use crate::telemetry::LogBuffer;

const INSERT_SYSTEM_LOGS: &str = "\
INSERT INTO logging.system_logs
    (\"timestamp\", service, level, message, event_type, correlation_id, logger, host,
     process_id, data)
SELECT t.ts, $1, t.level, t.message, t.event_type, t.correlation_id, t.logger, t.host, t.pid,
       t.data
  FROM UNNEST($2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::int4[], $10::jsonb[])
       AS t(ts, level, message, event_type, correlation_id, logger, host, pid, data)";

const INSERT_PERFORMANCE_LOGS: &str = "\
INSERT INTO logging.performance_logs
    (\"timestamp\", service, operation, duration_ms, success, rows_affected, correlation_id, data)
SELECT t.ts, $1, t.operation, t.duration_ms, t.success, t.rows_affected, t.correlation_id, t.data
  FROM UNNEST($2::timestamptz[], $3::text[], $4::float8[], $5::bool[], $6::int8[], $7::text[],
              $8::jsonb[])
       AS t(ts, operation, duration_ms, success, rows_affected, correlation_id, data)";

/// How the sink runs.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub pg: Connector,
    /// Entries per transaction.
    pub batch_max: usize,
    /// How often the buffer is looked at: the delay before a warning is in the table.
    pub poll: Duration,
    /// Backoff cap between attempts while the database is away.
    pub max_backoff: Duration,
    /// One batch's write, on our side: a silent connection is given up, not waited on.
    pub write_limit: Duration,
    /// The sessions' `statement_timeout` and `lock_timeout`, below `write_limit`: a write given
    /// up on our side leaves its backend running on the server (the connection is only
    /// dropped), and these end it there — a sink stuck behind a lock on the logging tables
    /// must not hold that backend, and its locks, for ever.
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// At stop, how long the last entries may take to be written.
    pub flush_deadline: Duration,
}

impl SinkSettings {
    /// From the configuration: `database.url`, the writer's backoff cap
    /// (`redis.reconnect_max_backoff_ms`), its `statement_timeout_ms` and `lock_timeout_ms`
    /// (the latter at most the former), and twice `database.statement_timeout_ms` as the
    /// write limit.
    pub fn from_config(config: &Config) -> Result<SinkSettings, DbError> {
        let mut pg = Connector::primary(&config.database)?;
        // Its sessions told apart from the writer's in pg_stat_activity: "<name> logs".
        let name = match pg.config().get_application_name() {
            Some(name) if name != "trading-sync" => format!("{name} logs"),
            _ => APPLICATION_NAME.to_owned(),
        };
        pg.config_mut().application_name(&name);
        let statement_timeout = Duration::from_millis(config.database.statement_timeout_ms);
        Ok(SinkSettings {
            pg,
            batch_max: 1_000,
            poll: Duration::from_millis(250),
            max_backoff: Duration::from_millis(config.redis.reconnect_max_backoff_ms),
            write_limit: (statement_timeout * 2).max(Duration::from_secs(1)),
            statement_timeout,
            lock_timeout: Duration::from_millis(config.database.lock_timeout_ms)
                .min(statement_timeout),
            flush_deadline: FLUSH_DEADLINE,
        })
    }
}

/// The sink's sessions' `application_name` (with a name set in the URL: that name + " logs").
pub const APPLICATION_NAME: &str = "trading-sync logs";

/// How long a one-shot command or the daemon's exit waits for its last log entries.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// What the sink did over its life.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkReport {
    pub system_rows: u64,
    pub performance_rows: u64,
    /// Entries the database refused (data errors), dropped.
    pub refused: u64,
    /// Entries not written when the flush deadline passed.
    pub left_at_exit: u64,
}

/// Why a write did not happen; only [`WriteError::Refused`] loses entries.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error("{}", crate::db::error_text(.0))]
    Db(tokio_postgres::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The session's limits, set once per connection (milliseconds).
fn session_limits_sql(statement_timeout: Duration, lock_timeout: Duration) -> String {
    format!(
        "SET statement_timeout = {}; SET lock_timeout = {}",
        statement_timeout.as_millis().max(1),
        lock_timeout.as_millis().max(1)
    )
}

/// A connection and its statements, prepared once.
struct Session {
    client: Client,
    system: Statement,
    performance: Statement,
}

/// The sink's state between polls.
struct Sink {
    buffer: Arc<LogBuffer>,
    settings: SinkSettings,
    session: Option<Session>,
    /// Entries taken from the buffer, not yet committed, oldest first.
    hand: VecDeque<LogEntry>,
    report: SinkReport,
    /// When the last entries must be written by: set when `stop` is first seen.
    flush_by: Option<Instant>,
    /// The flush ran and counted what it left; until then, dropping the sink (its task aborted
    /// by [`Shipping::finish`]) counts what it holds ([`Drop`]).
    flushed: bool,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.flushed {
            return;
        }
        let mut rest = VecDeque::new();
        self.buffer.take_into(&mut rest);
        let left = (self.hand.len() + rest.len()) as u64;
        if left > 0 {
            self.buffer.count_dropped("shutdown", left);
        }
    }
}

/// Runs `work` within `write_limit`, or, once `stop` fires (now or while it runs), by the flush
/// deadline `flush_by` (set from `flush_deadline` then), whichever comes first.
async fn bounded<T>(
    work: impl Future<Output = Result<T, WriteError>>,
    stop: &CancellationToken,
    flush_by: &mut Option<Instant>,
    flush_deadline: Duration,
    write_limit: Duration,
) -> Result<T, WriteError> {
    let started = Instant::now();
    let give_up = started + write_limit;
    let mut work = std::pin::pin!(work);
    if flush_by.is_none() {
        tokio::select! {
            biased;
            out = tokio::time::timeout_at(give_up, &mut work) => {
                return out.unwrap_or(Err(WriteError::Timeout(write_limit)));
            }
            () = stop.cancelled() => {
                *flush_by = Some(Instant::now() + flush_deadline);
            }
        }
    }
    let at = give_up.min(flush_by.expect("set above or before"));
    tokio::time::timeout_at(at, work)
        .await
        .unwrap_or_else(|_| Err(WriteError::Timeout(at.saturating_duration_since(started))))
}

/// Runs until `stop`, then writes what is left within `flush_deadline`. Nothing it logs, nor
/// anything logged by what it calls, is captured for the database.
pub async fn run(
    buffer: Arc<LogBuffer>,
    settings: SinkSettings,
    stop: CancellationToken,
) -> SinkReport {
    let sink = Sink {
        buffer,
        settings,
        session: None,
        hand: VecDeque::new(),
        report: SinkReport::default(),
        flush_by: None,
        flushed: false,
    };
    crate::telemetry::shipping(sink.run(stop)).await
}

impl Sink {
    async fn run(mut self, stop: CancellationToken) -> SinkReport {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.settings.max_backoff);
        // Since when, and the drops counted then: logged once at the start and end of an outage.
        let mut outage: Option<(Instant, u64)> = None;
        let mut ticker = tokio::time::interval(self.settings.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            metrics::gauge!("trading_sync_log_buffer_entries").set(self.buffer.len() as f64);
            match self.write_all(&stop).await {
                Ok(()) => {
                    backoff.reset();
                    if let Some((since, dropped)) = outage.take() {
                        tracing::info!(
                            target: SINK_TARGET,
                            down_ms = since.elapsed().as_millis() as u64,
                            dropped = self.buffer.dropped() - dropped,
                            "writing logs to the database again"
                        );
                    }
                }
                Err(error) => {
                    self.session = None;
                    let wait = backoff.fail();
                    if outage.is_none() {
                        outage = Some((Instant::now(), self.buffer.dropped()));
                        tracing::warn!(
                            target: SINK_TARGET,
                            error = %error,
                            buffered = self.buffer.len() + self.hand.len(),
                            capacity = self.buffer.capacity(),
                            "cannot write logs to the database; they are buffered, the oldest \
                             dropped when full (trading_sync_log_entries_dropped_total)"
                        );
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        self.flush(&stop).await;
        std::mem::take(&mut self.report)
    }

    /// The last entries, within the flush deadline and a few attempts (a command run while the
    /// database is down must not hang on its logs); what is left then is counted as dropped.
    async fn flush(&mut self, stop: &CancellationToken) {
        const ATTEMPTS: u32 = 3;
        // A write in flight when `stop` fired already started the deadline: the flush shares it.
        let deadline = *self
            .flush_by
            .get_or_insert_with(|| Instant::now() + self.settings.flush_deadline);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        let mut failed = 0;
        while !(self.hand.is_empty() && self.buffer.is_empty())
            && Instant::now() < deadline
            && failed < ATTEMPTS
        {
            if self.write_all(stop).await.is_err() {
                self.session = None;
                failed += 1;
                let wait = backoff.fail().min(deadline - Instant::now());
                tokio::time::sleep(wait).await;
            }
        }
        let mut rest = VecDeque::new();
        self.buffer.take_into(&mut rest);
        let left = (self.hand.len() + rest.len()) as u64;
        if left > 0 {
            self.buffer.count_dropped("shutdown", left);
            self.report.left_at_exit = left;
            tracing::warn!(
                target: SINK_TARGET,
                left,
                "log entries not written to the database before exit"
            );
        }
        self.flushed = true;
    }

    /// Writes what is in hand, then everything the buffer holds, batch by batch. Takes from the
    /// buffer only once connected. Each connection and batch is given `write_limit`, or the
    /// flush deadline once `stop` has fired ([`bounded`]).
    async fn write_all(&mut self, stop: &CancellationToken) -> Result<(), WriteError> {
        let (flush_deadline, write_limit) =
            (self.settings.flush_deadline, self.settings.write_limit);
        let limits =
            session_limits_sql(self.settings.statement_timeout, self.settings.lock_timeout);
        loop {
            if self.hand.is_empty() && self.buffer.is_empty() {
                return Ok(());
            }
            if self.session.as_ref().is_none_or(|s| s.client.is_closed()) {
                let connect = async {
                    let client = self.settings.pg.connect().await?;
                    client
                        .batch_execute(&limits)
                        .await
                        .map_err(WriteError::Db)?;
                    let system = client
                        .prepare(INSERT_SYSTEM_LOGS)
                        .await
                        .map_err(WriteError::Db)?;
                    let performance = client
                        .prepare(INSERT_PERFORMANCE_LOGS)
                        .await
                        .map_err(WriteError::Db)?;
                    Ok::<_, WriteError>(Session {
                        client,
                        system,
                        performance,
                    })
                };
                let session = bounded(
                    connect,
                    stop,
                    &mut self.flush_by,
                    flush_deadline,
                    write_limit,
                )
                .await?;
                self.session = Some(session);
            }
            if self.hand.is_empty() {
                self.buffer.take_into(&mut self.hand);
            }
            while !self.hand.is_empty() {
                let n = self.hand.len().min(self.settings.batch_max.max(1));
                let session = self.session.as_mut().expect("connected above");
                let batch = Batch::of(self.hand.range(..n));
                let write = async { batch.write(session).await.map_err(WriteError::Db) };
                match bounded(write, stop, &mut self.flush_by, flush_deadline, write_limit).await {
                    Ok(()) => {
                        self.report.system_rows += batch.system_rows();
                        self.report.performance_rows += batch.performance_rows();
                        metrics::counter!("trading_sync_log_entries_written_total")
                            .increment(n as u64);
                        self.hand.drain(..n);
                    }
                    Err(WriteError::Db(e)) if ErrorClass::of(&e) == ErrorClass::Data => {
                        // Retrying would be refused again, and would hold up every later entry.
                        self.buffer.count_dropped("refused", n as u64);
                        self.report.refused += n as u64;
                        tracing::error!(
                            target: SINK_TARGET,
                            entries = n,
                            error = %crate::db::error_text(&e),
                            "the database refused a batch of log entries; dropped"
                        );
                        self.hand.drain(..n);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// One transaction's entries, as the columns' arrays.
#[derive(Default)]
struct Batch {
    sys_ts: Vec<chrono::DateTime<chrono::Utc>>,
    sys_level: Vec<&'static str>,
    sys_message: Vec<String>,
    sys_event_type: Vec<Option<String>>,
    sys_correlation: Vec<Option<String>>,
    sys_logger: Vec<String>,
    sys_host: Vec<String>,
    sys_pid: Vec<i32>,
    sys_data: Vec<serde_json::Value>,
    perf_ts: Vec<chrono::DateTime<chrono::Utc>>,
    perf_operation: Vec<String>,
    perf_duration: Vec<f64>,
    perf_success: Vec<bool>,
    perf_rows: Vec<Option<i64>>,
    perf_correlation: Vec<Option<String>>,
    perf_data: Vec<serde_json::Value>,
}

impl Batch {
    fn of<'a>(entries: impl Iterator<Item = &'a LogEntry>) -> Batch {
        let mut b = Batch::default();
        for entry in entries {
            match entry {
                LogEntry::System(s) => {
                    b.sys_ts.push(s.timestamp);
                    b.sys_level.push(s.level);
                    b.sys_message.push(s.message.clone());
                    b.sys_event_type.push(s.event_type.clone());
                    b.sys_correlation.push(s.correlation_id.clone());
                    b.sys_logger.push(s.logger.clone());
                    b.sys_host.push(s.host.clone());
                    b.sys_pid.push(s.process_id);
                    b.sys_data.push(serde_json::Value::Object(s.data.clone()));
                }
                LogEntry::Performance(p) => {
                    b.perf_ts.push(p.timestamp);
                    b.perf_operation.push(p.operation.clone());
                    // V15's check: finite and >= 0.
                    let ms = if p.duration_ms.is_finite() {
                        p.duration_ms.max(0.0)
                    } else {
                        0.0
                    };
                    b.perf_duration.push(ms);
                    b.perf_success.push(p.success);
                    b.perf_rows.push(p.rows_affected.map(|r| r.max(0)));
                    b.perf_correlation.push(p.correlation_id.clone());
                    b.perf_data.push(serde_json::Value::Object(p.data.clone()));
                }
            }
        }
        b
    }

    fn system_rows(&self) -> u64 {
        self.sys_ts.len() as u64
    }

    fn performance_rows(&self) -> u64 {
        self.perf_ts.len() as u64
    }

    /// Both tables in one transaction: a retry after a lost acknowledgement may write a batch
    /// twice, never half of one.
    async fn write(&self, session: &mut Session) -> Result<(), tokio_postgres::Error> {
        let tx = session.client.transaction().await?;
        if !self.sys_ts.is_empty() {
            tx.execute(
                &session.system,
                &[
                    &SERVICE,
                    &self.sys_ts,
                    &self.sys_level,
                    &self.sys_message,
                    &self.sys_event_type,
                    &self.sys_correlation,
                    &self.sys_logger,
                    &self.sys_host,
                    &self.sys_pid,
                    &self.sys_data,
                ],
            )
            .await?;
        }
        if !self.perf_ts.is_empty() {
            tx.execute(
                &session.performance,
                &[
                    &SERVICE,
                    &self.perf_ts,
                    &self.perf_operation,
                    &self.perf_duration,
                    &self.perf_success,
                    &self.perf_rows,
                    &self.perf_correlation,
                    &self.perf_data,
                ],
            )
            .await?;
        }
        tx.commit().await
    }
}

/// The sink of a command's run: started before the command's work, finished (flushed) after.
pub struct Shipping {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<SinkReport>,
}

impl Shipping {
    /// Starts the sink for the buffer `telemetry::init` installed; None when centralized logs
    /// are off in this process or the database settings are unusable (the command reports those
    /// itself).
    pub fn start(config: &Config) -> Option<Shipping> {
        let buffer = crate::telemetry::log_buffer()?;
        let settings = match SinkSettings::from_config(config) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::warn!(target: SINK_TARGET, error = %e, "logs will not be written to the database");
                return None;
            }
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(buffer, settings, stop.clone()));
        Some(Shipping { stop, task })
    }

    /// Stops the sink and waits for its flush (bounded by its own deadline). Should the sink
    /// still run past that deadline and a margin, it is aborted, and what it still held is
    /// counted as dropped (`shutdown`) as it is dropped: nothing is lost uncounted.
    pub async fn finish(mut self) -> Option<SinkReport> {
        self.stop.cancel();
        match tokio::time::timeout(FLUSH_DEADLINE + Duration::from_secs(1), &mut self.task).await {
            Ok(report) => report.ok(),
            Err(_) => {
                self.task.abort();
                // Resolves once the sink's future, and with it the sink, has been dropped.
                let _ = (&mut self.task).await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::central::PerformanceLog;

    /// A sink dropped before its flush (its task aborted by `Shipping::finish`) counts what it
    /// held, in hand and still buffered, as dropped; one that flushed counts nothing more.
    #[test]
    fn a_sink_dropped_before_its_flush_counts_what_it_held() {
        let entry = || LogEntry::Performance(PerformanceLog::new("op", Duration::ZERO, true));
        let sink = |buffer: &Arc<LogBuffer>, flushed: bool| Sink {
            buffer: buffer.clone(),
            settings: SinkSettings::from_config(&Config::default()).unwrap(),
            session: None,
            hand: VecDeque::from([entry(), entry()]),
            report: SinkReport::default(),
            flush_by: None,
            flushed,
        };
        let buffer = Arc::new(LogBuffer::new(10));
        buffer.push(entry());
        drop(sink(&buffer, false));
        assert_eq!((buffer.dropped(), buffer.len()), (3, 0));
        buffer.push(entry());
        drop(sink(&buffer, true));
        assert_eq!((buffer.dropped(), buffer.len()), (3, 1));
    }
}
