//! Command-line surface: global options and one small function per subcommand.

use std::path::PathBuf;

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

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    crate::daemon::cancel_on_signals(shutdown.clone())?;
    crate::daemon::run(config, shutdown, Default::default(), || {}).await
}

pub async fn indicators(config: &Config, symbols: Vec<String>, full: bool) -> anyhow::Result<()> {
    use crate::indicators::job::{run_once, JobSettings, Mode, Selection};
    let shutdown = tokio_util::sync::CancellationToken::new();
    crate::daemon::cancel_on_signals(shutdown.clone())?;
    let settings = JobSettings {
        bar_timezone: config.exchange_tz()?,
        replica: crate::indicators::replica::ReplicaSettings::from_config(config)?,
        ..JobSettings::default()
    };
    let selection = if symbols.is_empty() {
        Selection::All
    } else {
        Selection::Symbols(symbols)
    };
    let mode = if full { Mode::Full } else { Mode::Incremental };
    let summary = run_once(&config.pg_config()?, &settings, &selection, mode, &shutdown)
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
