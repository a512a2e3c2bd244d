//! Command-line surface: global options and one small function per subcommand.

pub mod dead_letters;
pub mod progress;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSource, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "trading-sync",
    version,
    about = "Keeps trading analytics in PostgreSQL true, in real time, from Redis events"
)]
pub struct Cli {
    /// Configuration file (default ./config.toml, which may be absent).
    #[arg(long, global = true, env = "TRADING_SYNC_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log output format; overrides log.format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// When the output is not a terminal, a progress line of `indicators`, `reconcile` and
    /// `dead-letters replay` at most this often (seconds; 0: after every step). A terminal gets
    /// a live bar instead.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "5",
          value_parser = parse_seconds)]
    pub progress_every: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and apply pending schema migrations.
    Migrate,
    /// Validate the configuration and print the effective settings, secrets masked.
    CheckConfig,
    /// Run the daemon: apply Redis data_sync events to PostgreSQL until SIGTERM/SIGINT.
    Run,
    /// Heal the aggregates from execution.trades, execution.positions and market_data: apply,
    /// exactly once, every committed trade row the ledger lacks; copy newer position snapshots;
    /// price rows from the latest bars. Exit 0 on success.
    Reconcile {
        /// Also heal trade rows executed since then (RFC 3339, or YYYY-MM-DD as midnight UTC)
        /// that precede the change log; refused beyond the ledger's retention horizon.
        #[arg(long, value_name = "TIMESTAMP", value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// List what would be done, in one transaction rolled back; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Prove the books: recompute every aggregate from the ledger and compare; list trade rows
    /// missing from the ledger and applied trades that contradict their row. Exit 0 when the
    /// books match, 1 when they do not.
    Verify {
        /// Only this account's portfolio rows and trades.
        #[arg(long, value_name = "A")]
        account: Option<String>,
        /// Only this strategy's performance rows and trades.
        #[arg(long, value_name = "S")]
        strategy: Option<String>,
    },
    /// Dead letters: list, show, replay with the current configuration, purge.
    DeadLetters {
        #[command(subcommand)]
        command: dead_letters::DeadLettersCommand,
    },
    /// One screen on the daemon and the database: ready, queue, stream lag, last commit, last
    /// indicator and reconcile runs, dead letters of the last 24 h, schema. Exit 0 when the
    /// daemon is up and ready; 1 up but not ready; 3 not running; 4 unknown (http.enabled =
    /// false).
    Status {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Compute technical indicators once (backfill or repair), then exit.
    Indicators {
        /// Only these symbols (repeatable); default: every symbol with yahoo bars.
        #[arg(long = "symbol", value_name = "SYM")]
        symbols: Vec<String>,
        /// Recompute from each symbol's first bar, rewriting its rows.
        #[arg(long)]
        full: bool,
    },
}

impl Cli {
    pub fn config_source(&self) -> ConfigSource {
        match &self.config {
            Some(path) => ConfigSource {
                path: path.clone(),
                required: true,
            },
            None => ConfigSource {
                path: PathBuf::from("config.toml"),
                required: false,
            },
        }
    }
}

/// Runs a command with its centralized logs written while it runs and flushed (within
/// `logship::FLUSH_DEADLINE`) before it returns — also when it fails.
pub async fn shipped<T>(
    config: &Config,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let shipping = crate::logship::Shipping::start(config);
    let result = work.await;
    if let Err(e) = &result {
        crate::telemetry::central::record_error(
            "trading_sync::cli",
            format!(
                "trading-sync: error: {}",
                crate::config::mask_secrets(&format!("{e:#}"))
            ),
        );
    }
    if let Some(shipping) = shipping {
        shipping.finish().await;
    }
    result
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let outcome = crate::db::migrate::migrate(&config.database)
        .await
        .context("while migrating the database")?;
    if outcome.applied.is_empty() {
        tracing::info!(
            waited_for_lock = outcome.waited_for_lock,
            "schema is current; nothing to apply"
        );
    } else {
        tracing::info!(
            applied = outcome.applied.len(),
            migrations = %outcome.applied.join(", "),
            database_created = outcome.database_created,
            "schema migrated"
        );
    }
    Ok(())
}

pub fn check_config(config: &Config) {
    print!("{}", config.to_masked_toml());
}

pub async fn run(config: &Config, source: ConfigSource) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = config.clone();
    crate::daemon::handle_daemon_signals(shutdown.clone(), move || reload(&running, &source))?;
    crate::daemon::run(config, shutdown).await?;
    Ok(())
}

/// SIGHUP: re-reads the configuration; applies `log.filter` (unless `RUST_LOG` wins); other
/// changes wait for a restart, and a configuration that fails validation changes nothing.
fn reload(running: &Config, source: &ConfigSource) {
    let config = match Config::load(source) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(
                signal = "SIGHUP",
                error = %e,
                "the configuration was not reloaded: it fails validation; the running settings stay"
            );
            return;
        }
    };
    match crate::telemetry::reload_filter(config.log.filter.as_deref()) {
        Ok(crate::telemetry::FilterReload::Applied(filter)) => {
            tracing::info!(signal = "SIGHUP", log_filter = %filter, "log filter reloaded")
        }
        Ok(crate::telemetry::FilterReload::EnvironmentWins(filter)) => tracing::info!(
            signal = "SIGHUP",
            rust_log = %filter,
            "RUST_LOG is set and overrides log.filter: the log filter is unchanged"
        ),
        Err(e) => tracing::error!(signal = "SIGHUP", error = %e, "log.filter not reloaded"),
    }
    let mut compared = config.clone();
    compared.log.filter = running.log.filter.clone();
    if &compared != running {
        tracing::warn!(
            signal = "SIGHUP",
            "settings other than log.filter changed in the file; they take effect at the next \
             restart"
        );
    }
}

pub async fn indicators(
    config: &Config,
    symbols: Vec<String>,
    full: bool,
    progress_every: Duration,
) -> anyhow::Result<()> {
    use crate::indicators::job::{run_once, JobSettings, Mode, Selection};
    let shutdown = tokio_util::sync::CancellationToken::new();
    crate::daemon::cancel_on_signals(shutdown.clone())?;
    let settings = JobSettings {
        bar_timezone: config.exchange_tz()?,
        replica: crate::indicators::replica::ReplicaSettings::from_config(config)?,
        progress: Some(Arc::new(progress::CliProgress::new(
            "indicators",
            progress_every,
        ))),
        ..JobSettings::default()
    };
    let selection = if symbols.is_empty() {
        Selection::All
    } else {
        Selection::Symbols(symbols)
    };
    let mode = if full { Mode::Full } else { Mode::Incremental };
    let pg = crate::db::Connector::primary(&config.database)?;
    let summary = run_once(&pg, &settings, &selection, mode, &shutdown)
        .await
        .context("while computing indicators")?;
    println!("{summary:#?}");
    anyhow::ensure!(
        summary.failures == 0,
        "{} symbol(s) failed: {}",
        summary.failures,
        summary.failed_symbols.join(", ")
    );
    anyhow::ensure!(
        !summary.cancelled,
        "interrupted before every symbol was computed"
    );
    Ok(())
}

/// `--progress-every`: seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds between 0 and 86400"))
}

/// `--since`: RFC 3339, `YYYY-MM-DDTHH:MM:SS` (UTC) or `YYYY-MM-DD` (midnight UTC).
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| {
            format!("`{text}` is not a timestamp (RFC 3339, YYYY-MM-DDTHH:MM:SS or YYYY-MM-DD)")
        })
}

pub async fn reconcile(
    config: &Config,
    since: Option<chrono::DateTime<chrono::Utc>>,
    dry_run: bool,
    progress_every: Duration,
) -> anyhow::Result<()> {
    use crate::reconcile::{run_once_reporting, Outcome, Request, Trigger};
    let settings = crate::reconcile::Settings::from_config(config)?;
    let mut client = crate::db::Connector::primary(&config.database)?
        .connect()
        .await
        .context("while connecting to PostgreSQL (database.url)")?;
    let request = Request {
        trigger: Trigger::Command,
        since,
        dry_run,
        skip_if_ran_within: None,
        lock_wait: std::time::Duration::from_secs(60),
    };
    let progress = progress::CliProgress::new("reconcile", progress_every);
    let outcome = run_once_reporting(&mut client, &settings, &request, &progress)
        .await
        .context("while reconciling")?;
    let Outcome::Ran(report) = outcome else {
        anyhow::bail!("reconcile did not run: {outcome:?}");
    };
    print!("{}", render_reconcile(&report));
    Ok(())
}

/// What `reconcile` prints: a line per item (with --dry-run, or for each healed trade), then
/// the counts.
pub fn render_reconcile(report: &crate::reconcile::Report) -> String {
    use std::fmt::Write;
    let verb = if report.dry_run {
        "would apply"
    } else {
        "applied"
    };
    let mut out = String::new();
    for id in &report.applied {
        let _ = writeln!(out, "trade {id}: {verb} from its execution.trades row");
    }
    for u in &report.unusable {
        let _ = writeln!(
            out,
            "trade {}: unusable ({}): {}",
            u.trade_id, u.kind, u.reason
        );
    }
    let verb = if report.dry_run {
        "would refresh"
    } else {
        "refreshed"
    };
    for (account, symbol) in &report.positions_refreshed {
        let _ = writeln!(
            out,
            "position {account}/{symbol}: {verb} from execution.positions"
        );
    }
    let verb = if report.dry_run {
        "would price"
    } else {
        "priced"
    };
    for (account, symbol) in &report.rows_priced {
        let _ = writeln!(out, "row {account}/{symbol}: {verb} from its latest bar");
    }
    let _ = writeln!(
        out,
        "{}trades applied: {}, already present: {}, unusable: {}; positions refreshed: {}; rows priced: {} ({} ms)",
        if report.dry_run { "dry run, nothing changed; " } else { "" },
        report.applied.len(),
        report.already_present,
        report.unusable.len(),
        report.positions_refreshed.len(),
        report.rows_priced.len(),
        report.took.as_millis()
    );
    out
}

/// Exit status 1 (through the error) when the books do not match.
pub async fn verify(
    config: &Config,
    account: Option<String>,
    strategy: Option<String>,
) -> anyhow::Result<bool> {
    use crate::reconcile::verify::{verify, Filter, VerifySettings};
    let settings = VerifySettings {
        grace: std::time::Duration::from_millis(config.reconcile.grace_ms),
        ledger_retention_days: config.maintenance.ledger_retention_days,
        exchange_tz: config.exchange_tz()?,
    };
    let mut client = crate::db::Connector::primary(&config.database)?
        .connect()
        .await
        .context("while connecting to PostgreSQL (database.url)")?;
    let report = verify(&mut client, &settings, &Filter { account, strategy })
        .await
        .context("while verifying")?;
    print!("{}", report.render());
    Ok(report.clean())
}
