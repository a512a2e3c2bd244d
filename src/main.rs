use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use trading_sync::cli::{self, Cli, Command};
use trading_sync::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole cause chain: what journald and a terminal both show well.
            eprintln!("trading-sync: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config_source()).context("while loading the configuration")?;
    trading_sync::telemetry::init(
        cli.log_format.unwrap_or(config.log.format),
        config.log.filter.as_deref(),
    )
    .context("while setting up logging")?;
    match cli.command {
        Command::Migrate => cli::migrate(&config).await,
        Command::Run => cli::run(&config).await,
        Command::Indicators { symbols, full } => cli::indicators(&config, symbols, full).await,
        Command::CheckConfig => {
            cli::check_config(&config);
            Ok(())
        }
    }
}
