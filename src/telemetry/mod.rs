//! Logging: human text on a terminal, JSON lines when asked, journald-native fields under systemd;
//! and, with `[log] database`, the capture of the daemon's own warnings and performance records
//! for `logging.*` ([`central`]; the sink that writes them is `src/logship`).
//!
//! Owns the global subscriber and nothing else; the rest of the crate only emits `tracing` events
//! with fields (channel, event_type, trade_id, symbol…) so that `journalctl -o json | jq` can filter.

pub mod central;

pub use central::{log_buffer, record_performance, shipping, LogBuffer, PerformanceLog};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

type Registry = tracing_subscriber::Registry;

/// Swaps the filter of the installed subscriber (SIGHUP reloads `log.filter`).
static FILTER: OnceLock<tracing_subscriber::reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `RUST_LOG` when set: it wins over `log.filter`, at start and at every reload.
fn env_filter() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty())
}

/// Installs the global subscriber. `RUST_LOG` wins over the config's filter; `info` otherwise.
/// With `database` (`[log] database_level`), events of that level and above are also captured
/// for `logging.system_logs`, whatever the filter of the process log says.
pub fn init(
    format: LogFormat,
    configured_filter: Option<&str>,
    database: Option<tracing::Level>,
) -> anyhow::Result<()> {
    let filter = match env_filter() {
        Some(from_env) => EnvFilter::try_new(from_env)?,
        None => EnvFilter::try_new(configured_filter.unwrap_or("info"))?,
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let format = match format {
        // systemd sets JOURNAL_STREAM when stdout/stderr are connected to the journal.
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journald) => journald
                .with_syslog_identifier("trading-sync".into())
                .boxed(),
            // No journald socket (a container, a test): text is better than nothing.
            Err(_) => text_layer(),
        },
        LogFormat::Text | LogFormat::Auto => text_layer(),
    };
    let captured = database.map(|level| {
        let buffer = std::sync::Arc::new(LogBuffer::new(central::DEFAULT_CAPACITY));
        let layer = central::DatabaseLayer::new(buffer.clone())
            .with_filter(central::DatabaseLayer::filter(level));
        (buffer, layer)
    });
    let (buffer, database_layer) = captured.unzip();
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .with(database_layer)
        .try_init()?;
    let _ = FILTER.set(handle);
    if let Some(buffer) = buffer {
        central::install_buffer(buffer);
    }
    Ok(())
}

/// What a reload did to the log filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterReload {
    /// Now filtering with this.
    Applied(String),
    /// `RUST_LOG` is set and wins: unchanged.
    EnvironmentWins(String),
}

/// Applies `log.filter` (or `info`) to the running subscriber, unless `RUST_LOG` overrides it.
pub(crate) fn reload_filter(configured_filter: Option<&str>) -> anyhow::Result<FilterReload> {
    if let Some(from_env) = env_filter() {
        return Ok(FilterReload::EnvironmentWins(from_env));
    }
    let wanted = configured_filter.unwrap_or("info").to_owned();
    let filter = EnvFilter::try_new(&wanted)?;
    if let Some(handle) = FILTER.get() {
        handle.reload(filter)?;
    }
    Ok(FilterReload::Applied(wanted))
}

fn text_layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .boxed()
}

/// The process-wide metrics recorder, rendered by `/metrics`: metrics are global, and tests may start several daemons in one
/// process, so it is installed once and shared.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        let sizes = [
            1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        ];
        // An indicator run takes from under a second (incremental) to minutes (a full backfill):
        // the latency buckets' 60 s top would cap the dashboard's slowest-run panel at a minute.
        // A Full matcher wins over the Suffix one.
        let runs = [
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("trading_sync_batch_events".into()), &sizes)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("trading_sync_indicator_run_seconds".into()),
                    &runs,
                )
            })
            .expect("static bucket lists are non-empty")
            .install_recorder()
            .expect("the metrics recorder is installed once")
    })
}

/// Registers, at start, every series the dashboard (`observability/grafana/trading-sync.json`)
/// and the alerting rules (`observability/prometheus/alerts.yml`) query, and sets the gauges
/// that carry the configured limits.
///
/// A labelled counter is rendered only once it exists: without this, a panel stays empty and a
/// rule cannot fire until the first event of its kind, and `increase()` misses that first event
/// (a series that appears at 1 has no earlier sample to rise from). Registering adds zero and
/// leaves a gauge as it is, so a second daemon in the same process (the tests) changes nothing
/// another one counted. The label values are the ones the code records; a new one belongs here
/// too.
pub(crate) fn register_series(config: &crate::config::Config) {
    use crate::core::ChannelKind;
    use metrics::{counter, gauge, histogram};

    for channel in ChannelKind::ALL.map(ChannelKind::suffix) {
        counter!("trading_sync_events_received_total", "channel" => channel).increment(0);
        counter!("trading_sync_events_applied_total", "channel" => channel).increment(0);
        counter!("trading_sync_queue_refused_total", "channel" => channel).increment(0);
        // Decoding errors, a stream entry refused as read (apply::fold) and a row the database
        // refused with a data error (apply).
        let reasons = crate::events::DecodeError::KINDS
            .into_iter()
            .chain(["stream_entry", "database"]);
        for reason in reasons {
            counter!(
                "trading_sync_events_dead_lettered_total",
                "channel" => channel,
                "reason" => reason
            )
            .increment(0);
        }
    }
    // Only a trade can be a duplicate (the ledger knows trade ids).
    counter!("trading_sync_events_duplicate_total", "channel" => "trades").increment(0);
    for server in ["redis", "redis-streams", "postgres"] {
        counter!("trading_sync_reconnects_total", "server" => server).increment(0);
    }
    for task in ["http", "maintenance", "indicators", "reconcile", "monitor"] {
        counter!("trading_sync_task_restarts_total", "task" => task).increment(0);
    }
    for outcome in ["ok", "partial", "cancelled", "error"] {
        counter!("trading_sync_indicator_runs_total", "outcome" => outcome).increment(0);
    }
    for result in [
        "computed",
        "up_to_date",
        "skipped_locked",
        "skipped_unknown",
        "recomputed",
        "failed",
    ] {
        counter!("trading_sync_indicator_symbols_total", "result" => result).increment(0);
    }
    for kind in [
        "trades_applied",
        "trades_present",
        "trades_unusable",
        "positions_refreshed",
        "rows_priced",
    ] {
        counter!("trading_sync_reconciled_total", "kind" => kind).increment(0);
    }
    for name in [
        "trading_sync_redis_unsubscribed_milliseconds_total",
        "trading_sync_db_retries_total",
        "trading_sync_maintenance_runs_total",
        "trading_sync_reconcile_failures_total",
        "trading_sync_journal_appended_total",
        "trading_sync_journal_bypassed_total",
    ] {
        counter!(name).increment(0);
    }
    // Gauges a transport sets only when it is used (streams, the journal) or a job sets only
    // when it has run: zero until then. A timestamp at zero means "never" (the rules say so).
    for name in [
        "trading_sync_ready",
        "trading_sync_writer_blocked",
        "trading_sync_redis_subscribed",
        "trading_sync_queue_depth",
        "trading_sync_queue_bytes",
        "trading_sync_journal_buffer_bytes",
        "trading_sync_journal_length",
        "trading_sync_stream_pending",
        "trading_sync_stream_oldest_pending_seconds",
        "trading_sync_stream_length",
        "trading_sync_pool_in_use",
        "trading_sync_pool_waiting",
        "trading_sync_indicator_next_run_timestamp_seconds",
        "trading_sync_reconcile_last_run_timestamp_seconds",
        "trading_sync_reconcile_last_run_duration_seconds",
    ] {
        gauge!(name).increment(0.0);
    }
    // An empty histogram renders its buckets at zero: the quantile panels have a series.
    for name in [
        "trading_sync_receive_to_commit_seconds",
        "trading_sync_commit_seconds",
        "trading_sync_batch_events",
        "trading_sync_indicator_run_seconds",
    ] {
        let _ = histogram!(name);
    }
    // The limits, so that "near full" is a ratio a rule can compute without knowing the config.
    gauge!("trading_sync_queue_max_bytes").set(config.sync.queue_max_bytes as f64);
    gauge!("trading_sync_journal_buffer_max_bytes").set(config.journal.buffer_max_bytes as f64);
}
