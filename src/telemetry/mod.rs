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
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("trading_sync_batch_events".into()), &sizes)
            })
            .expect("static bucket lists are non-empty")
            .install_recorder()
            .expect("the metrics recorder is installed once")
    })
}
