//! Centralized logs (the review's log aggregation): the daemon's own WARN and ERROR events, and
//! one performance record per job run, kept in a bounded in-memory buffer for the sink
//! (`src/logship`) to write into `logging.system_logs` and `logging.performance_logs`.
//!
//! No database code here: this side only captures. The capture must never slow the path that
//! emits the event, so:
//! * the layer's own per-layer filter ([`DatabaseLayer::filter`]) rejects events below the level
//!   by their callsite, before any field is visited;
//! * an accepted event costs one visit of its fields into a small JSON map and one push under a
//!   mutex whose every critical section is O(1) (push, pop the oldest, swap the whole queue
//!   out): nothing awaits, nothing waits on the database;
//! * the buffer is bounded: when full, the oldest entry is dropped and counted
//!   (`trading_sync_log_entries_dropped_total{reason="buffer_full"}`).
//!
//! No feedback loop: events under [`SINK_TARGET`], and every event emitted while the sink's
//! own future runs ([`shipping`]), are ignored by the layer; the sink's failures reach stderr or
//! journald only.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::config::mask_secrets;

/// `logging.*.service` of every row this process writes.
pub const SERVICE: &str = "trading-sync";

/// Entries kept while the sink cannot keep up or the database is away.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// The sink's own events go here, and the layer never takes them: a failing sink logging its
/// failure into the buffer it cannot empty would be a loop.
pub const SINK_TARGET: &str = "trading_sync::logship";

/// Only this crate's events are the daemon's own; its dependencies' (redis, tokio-postgres)
/// stay in the process log.
const OWN_TARGET: &str = "trading_sync";

/// A string field longer than this is cut: one odd event must not take the buffer's memory.
const MAX_TEXT_CHARS: usize = 4_096;

/// The columns' widths (V15): a longer value would make the database refuse the whole batch.
const LOGGER_CHARS: usize = 200;
const EVENT_TYPE_CHARS: usize = 100;
const CORRELATION_CHARS: usize = 100;
const HOST_CHARS: usize = 255;
const OPERATION_CHARS: usize = 200;

/// A `logging.system_logs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemLog {
    pub timestamp: DateTime<Utc>,
    /// `WARN`, `ERROR`, `INFO` (V15's check accepts tracing's spelling).
    pub level: &'static str,
    pub message: String,
    pub event_type: Option<String>,
    /// The event's `trade_id` (or `correlation_id`) field.
    pub correlation_id: Option<String>,
    /// The event's target: its module path unless set otherwise.
    pub logger: String,
    pub host: String,
    pub process_id: i32,
    /// Every field but the message, as a JSON object.
    pub data: Map<String, Value>,
}

/// A `logging.performance_logs` row: one run of a job, or one summary interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PerformanceLog {
    /// When the operation finished.
    pub timestamp: DateTime<Utc>,
    pub operation: String,
    pub duration_ms: f64,
    pub success: bool,
    pub rows_affected: Option<i64>,
    pub correlation_id: Option<String>,
    /// The run's report.
    pub data: Map<String, Value>,
}

impl PerformanceLog {
    /// A record of `operation`, finished now.
    pub fn new(operation: &str, duration: Duration, success: bool) -> PerformanceLog {
        PerformanceLog {
            timestamp: Utc::now(),
            operation: truncate(operation, OPERATION_CHARS),
            // Finite and >= 0 by construction: V15's check refuses NaN and infinity.
            duration_ms: duration.as_secs_f64() * 1_000.0,
            success,
            rows_affected: None,
            correlation_id: None,
            data: Map::new(),
        }
    }

    pub fn rows(mut self, rows: u64) -> Self {
        self.rows_affected = Some(i64::try_from(rows).unwrap_or(i64::MAX));
        self
    }

    /// The report, a JSON object (anything else is kept under `value`). Its strings are
    /// cleaned like an event's fields ([`clean`]): a run's `"error"` may quote a connection
    /// string, and one NUL would make PostgreSQL refuse the whole batch (22P05).
    pub fn data(mut self, data: Value) -> Self {
        self.data = match clean_value(data) {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        self
    }
}

/// What the buffer holds, in the order it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    System(SystemLog),
    Performance(PerformanceLog),
}

/// The bounded buffer between the capture and the sink. Every critical section is O(1): the
/// emitting thread pushes (and pops the oldest when full), the sink swaps the whole queue out.
#[derive(Debug)]
pub struct LogBuffer {
    entries: Mutex<VecDeque<LogEntry>>,
    capacity: usize,
    /// Entries dropped, oldest first, because the buffer was full.
    dropped: AtomicU64,
    /// Entries ever accepted.
    accepted: AtomicU64,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> LogBuffer {
        let capacity = capacity.max(1);
        LogBuffer {
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds an entry; when full, drops the oldest and counts it. Never waits on anything but
    /// the O(1) sections of the other side.
    pub fn push(&self, entry: LogEntry) {
        let evicted = {
            // A panic while holding the lock cannot leave the queue half-changed (each section
            // is one call): the poison is ignored.
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let evicted = if entries.len() >= self.capacity {
                entries.pop_front()
            } else {
                None
            };
            entries.push_back(entry);
            evicted
        };
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if evicted.is_some() {
            self.count_dropped("buffer_full", 1);
        }
    }

    /// Swaps the buffer's entries with `into`'s (which should be empty): the sink takes them
    /// all in O(1), and its emptied queue's allocation goes back for the next pushes.
    pub fn take_into(&self, into: &mut VecDeque<LogEntry>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *entries, into);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries lost so far, for any reason ([`LogBuffer::count_dropped`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Counts entries lost: `buffer_full` (the oldest, evicted), `refused` (the database
    /// refused their batch), `shutdown` (not written before the flush deadline).
    pub fn count_dropped(&self, reason: &'static str, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("trading_sync_log_entries_dropped_total", "reason" => reason)
            .increment(n);
    }
}

/// The process's buffer, once `init` installed the layer with `[log] database` on.
static BUFFER: OnceLock<Arc<LogBuffer>> = OnceLock::new();

/// The buffer the installed layer fills, if centralized logs are on in this process.
pub fn log_buffer() -> Option<Arc<LogBuffer>> {
    BUFFER.get().cloned()
}

pub(super) fn install_buffer(buffer: Arc<LogBuffer>) {
    let _ = BUFFER.set(buffer);
}

/// Records one `logging.performance_logs` row (a job run, a summary interval). A direct call
/// rather than a tracing event: the record is data with a fixed shape (duration, success, rows,
/// the run's report), not a line for a human, and it must not depend on `log.filter` or on a
/// level. A no-op when centralized logs are off (and in tests that start daemons in-process).
pub fn record_performance(record: PerformanceLog) {
    if let Some(buffer) = BUFFER.get() {
        buffer.push(LogEntry::Performance(record));
    }
}

/// Records an ERROR row directly, without a tracing event: a command's fatal error, which the
/// binary prints itself on its way out (a tracing event would print it twice).
pub fn record_error(logger: &str, message: String) {
    if let Some(buffer) = BUFFER.get() {
        let (host, process_id) = origin();
        buffer.push(LogEntry::System(SystemLog {
            timestamp: Utc::now(),
            level: "ERROR",
            message: clean(&message),
            event_type: None,
            correlation_id: None,
            logger: truncate(logger, LOGGER_CHARS),
            host: host.to_owned(),
            process_id,
            data: Map::new(),
        }));
    }
}

/// This host's name and this process's id, read once.
fn origin() -> (&'static str, i32) {
    static ORIGIN: OnceLock<(String, i32)> = OnceLock::new();
    let (host, pid) = ORIGIN.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        (
            truncate(&host, HOST_CHARS),
            i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        )
    });
    (host, *pid)
}

tokio::task_local! {
    /// Set while the sink's future runs: whatever it calls (connecting, TLS, the driver) may
    /// log, and none of it may come back into the buffer.
    static SHIPPING: ();
}

/// Runs the sink's future with the layer deaf to every event it emits.
pub async fn shipping<F: Future>(future: F) -> F::Output {
    SHIPPING.scope((), future).await
}

/// Captures events into a [`LogBuffer`]. Install it with [`DatabaseLayer::filter`] as its
/// per-layer filter.
pub struct DatabaseLayer {
    buffer: Arc<LogBuffer>,
    host: String,
    process_id: i32,
}

impl DatabaseLayer {
    pub fn new(buffer: Arc<LogBuffer>) -> DatabaseLayer {
        let (host, process_id) = origin();
        DatabaseLayer {
            buffer,
            host: host.to_owned(),
            process_id,
        }
    }

    /// This crate's events at `level` and above, the sink's excepted. A `Targets` filter is
    /// decided per callsite and cached: an event below the level costs the layer nothing.
    pub fn filter(level: Level) -> Targets {
        Targets::new()
            .with_default(LevelFilter::OFF)
            .with_target(OWN_TARGET, level)
            .with_target(SINK_TARGET, LevelFilter::OFF)
    }
}

impl<S: Subscriber> Layer<S> for DatabaseLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if SHIPPING.try_with(|_| ()).is_ok() {
            return;
        }
        let meta = event.metadata();
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let entry = SystemLog {
            timestamp: Utc::now(),
            level: level_name(*meta.level()),
            // Already cleaned: the message is visited like every other field.
            message: visitor.message.unwrap_or_default(),
            event_type: visitor.event_type.map(|t| truncate(&t, EVENT_TYPE_CHARS)),
            correlation_id: visitor.correlation.map(|c| truncate(&c, CORRELATION_CHARS)),
            logger: truncate(meta.target(), LOGGER_CHARS),
            host: self.host.clone(),
            process_id: self.process_id,
            data: visitor.data,
        };
        self.buffer.push(LogEntry::System(entry));
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// The event's fields: the message apart, `trade_id` / `correlation_id` and `event_type` also
/// in their columns, everything in `data`.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    event_type: Option<String>,
    correlation: Option<String>,
    data: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                });
                return;
            }
            "event_type" => self.event_type = value.as_str().map(str::to_owned),
            "trade_id" => self.correlation = value.as_str().map(str::to_owned),
            "correlation_id" if self.correlation.is_none() => {
                self.correlation = value.as_str().map(str::to_owned)
            }
            _ => {}
        }
        self.data.insert(field.name().to_owned(), value);
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(clean(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinity have no JSON form.
        let number = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.put(field, number);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(clean(&value.to_string())));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(clean(&format!("{value:?}"))));
    }
}

/// Secrets masked ([`mask_secrets`]: an error may quote a connection string, and
/// `logging.system_logs` is read by more people than the daemon's config); then cut to
/// MAX_TEXT_CHARS; NUL replaced (PostgreSQL's text and jsonb refuse it). Masked before the cut,
/// so a cut cannot leave a password without the '@' that marks it as one.
fn clean(text: &str) -> String {
    let text = truncate(&mask_secrets(text), MAX_TEXT_CHARS);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// [`clean`] over every string of a JSON value, object keys included (a NUL in a key is refused
/// the same way).
fn clean_value(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(clean(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(clean_value).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(&k), clean_value(v)))
                .collect(),
        ),
        other => other,
    }
}

/// At most `chars` characters (varchar(n) counts characters, not bytes).
fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn capture(level: Level, buffer: &Arc<LogBuffer>) -> impl Subscriber + Send + Sync {
        tracing_subscriber::registry()
            .with(DatabaseLayer::new(buffer.clone()).with_filter(DatabaseLayer::filter(level)))
    }

    fn system(entry: &LogEntry) -> &SystemLog {
        match entry {
            LogEntry::System(s) => s,
            other => panic!("not a system log: {other:?}"),
        }
    }

    fn taken(buffer: &LogBuffer) -> Vec<LogEntry> {
        let mut out = VecDeque::new();
        buffer.take_into(&mut out);
        out.into()
    }

    #[test]
    fn a_warning_becomes_a_row_with_its_fields() {
        let buffer = Arc::new(LogBuffer::new(10));
        tracing::subscriber::with_default(capture(Level::WARN, &buffer), || {
            tracing::warn!(
                target: "trading_sync::apply",
                channel = "trades",
                reason = "decode",
                event_type = "trade_executed",
                trade_id = "T-1",
                bytes = 12u64,
                error = %"bad \0 json",
                "message dead-lettered"
            );
        });
        let entries = taken(&buffer);
        assert_eq!(entries.len(), 1);
        let row = system(&entries[0]);
        assert_eq!(row.level, "WARN");
        assert_eq!(row.message, "message dead-lettered");
        assert_eq!(row.logger, "trading_sync::apply");
        assert_eq!(row.event_type.as_deref(), Some("trade_executed"));
        assert_eq!(row.correlation_id.as_deref(), Some("T-1"));
        assert_eq!(row.process_id as u32, std::process::id());
        assert_eq!(
            Value::Object(row.data.clone()),
            serde_json::json!({"channel": "trades", "reason": "decode",
                "event_type": "trade_executed", "trade_id": "T-1", "bytes": 12,
                "error": "bad \u{FFFD} json"})
        );
    }

    /// Below the level, other crates and the sink's own target never reach the layer; the
    /// field of a rejected event is never even formatted.
    #[test]
    fn rejected_events_cost_no_field_visit() {
        struct Counted<'a>(&'a AtomicU64);
        impl std::fmt::Debug for Counted<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fetch_add(1, Ordering::Relaxed);
                f.write_str("visited")
            }
        }
        let visits = AtomicU64::new(0);
        let buffer = Arc::new(LogBuffer::new(10));
        tracing::subscriber::with_default(capture(Level::WARN, &buffer), || {
            tracing::info!(target: "trading_sync::apply", field = ?Counted(&visits), "info");
            tracing::warn!(target: "redis::aio", field = ?Counted(&visits), "another crate");
            tracing::error!(target: SINK_TARGET, field = ?Counted(&visits), "the sink failed");
            tracing::error!(
                target: "trading_sync::logship::writer",
                field = ?Counted(&visits),
                "the sink, deeper"
            );
        });
        assert_eq!(visits.load(Ordering::Relaxed), 0);
        assert!(buffer.is_empty());
        tracing::subscriber::with_default(capture(Level::ERROR, &buffer), || {
            tracing::warn!(target: "trading_sync::apply", field = ?Counted(&visits), "warn");
            tracing::error!(target: "trading_sync::apply", "error");
        });
        assert_eq!(visits.load(Ordering::Relaxed), 0);
        assert_eq!(buffer.len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_the_sink_emits_is_captured() {
        let buffer = Arc::new(LogBuffer::new(10));
        let _guard = tracing::subscriber::set_default(capture(Level::WARN, &buffer));
        shipping(async {
            tracing::error!(target: "trading_sync::db", "a connection failure inside the sink");
        })
        .await;
        assert!(buffer.is_empty());
        tracing::error!(target: "trading_sync::db", "the same outside it");
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn a_full_buffer_drops_its_oldest_entries_and_counts_them() {
        let buffer = LogBuffer::new(3);
        for i in 0..5 {
            buffer.push(LogEntry::Performance(PerformanceLog::new(
                &format!("op{i}"),
                Duration::from_millis(i),
                true,
            )));
        }
        assert_eq!((buffer.dropped(), buffer.accepted()), (2, 5));
        let kept: Vec<String> = taken(&buffer)
            .iter()
            .map(|e| match e {
                LogEntry::Performance(p) => p.operation.clone(),
                LogEntry::System(_) => unreachable!(),
            })
            .collect();
        assert_eq!(kept, ["op2", "op3", "op4"]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn secrets_are_masked_before_they_are_stored() {
        let url = "postgres://u:s3cret@h/db";
        let buffer = Arc::new(LogBuffer::new(10));
        tracing::subscriber::with_default(capture(Level::WARN, &buffer), || {
            tracing::warn!(
                target: "trading_sync::db",
                target_url = url,
                error = %format!("connect to {url} failed"),
                detail = ?url,
                "cannot reach {url}"
            );
        });
        let entries = taken(&buffer);
        let row = system(&entries[0]);
        assert_eq!(row.message, "cannot reach postgres://u:********@h/db");
        let data = Value::Object(row.data.clone()).to_string();
        assert!(!data.contains("s3cret"), "{data}");
        assert_eq!(row.data["target_url"], "postgres://u:********@h/db");
        assert_eq!(
            row.data["error"],
            "connect to postgres://u:********@h/db failed"
        );

        // A run's report: strings anywhere in it, NUL included.
        let record = PerformanceLog::new("indicators", Duration::from_millis(1), false).data(
            serde_json::json!({
                "error": format!("db error at {url}\0"),
                "nested": {"urls": [url, "password=hunter2"]},
                "rows": 3,
            }),
        );
        assert_eq!(
            Value::Object(record.data),
            serde_json::json!({
                "error": "db error at postgres://u:********@h/db\u{FFFD}",
                "nested": {"urls": ["postgres://u:********@h/db", "password=********"]},
                "rows": 3,
            })
        );
        let bare = PerformanceLog::new("x", Duration::ZERO, true).data(Value::from("a\0b"));
        assert_eq!(
            Value::Object(bare.data),
            serde_json::json!({"value": "a\u{FFFD}b"})
        );
    }

    #[test]
    fn long_values_are_cut_to_their_columns() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("ab", 5), "ab");
        let record = PerformanceLog::new(&"x".repeat(300), Duration::from_millis(5), true)
            .rows(u64::MAX)
            .data(serde_json::json!(3));
        assert_eq!(record.operation.chars().count(), OPERATION_CHARS);
        assert_eq!(record.rows_affected, Some(i64::MAX));
        assert_eq!(Value::Object(record.data), serde_json::json!({"value": 3}));
    }
}
