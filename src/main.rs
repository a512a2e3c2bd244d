use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use trading_sync::cli::{self, Cli, Command};
use trading_sync::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = matches!(cli.log_format, Some(trading_sync::config::LogFormat::Json));
    // verify: 1 means "the books differ"; an error that kept it from answering is 2, so a
    // script can tell the two apart.
    let error_code = if matches!(cli.command, Command::Verify { .. }) {
        2
    } else {
        1
    };
    match run(cli).await {
        Ok(0) => ExitCode::SUCCESS,
        // `verify` found differences, `status` found the daemon not ready: they printed why;
        // no error line.
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // One line with the whole cause chain: what journald and a terminal both show well.
            // Masked: a cause may quote a URL or a connection string.
            let chain = trading_sync::config::mask_secrets(&without_repeats(&format!("{error:#}")));
            if json {
                // Under --log-format json every line of stderr is a JSON object, this one too.
                let line = serde_json::json!({
                    "timestamp": chrono::Utc::now().to_rfc3339(),
                    "level": "ERROR",
                    "target": "trading_sync",
                    "message": format!("trading-sync: error: {chain}"),
                });
                eprintln!("{line}");
            } else {
                eprintln!("trading-sync: error: {chain}");
            }
            ExitCode::from(error_code)
        }
    }
}

/// A cause chain with a cause that only repeats the one above it dropped: tokio-postgres's
/// "db error" wraps the server's message, which our own context already quotes.
fn without_repeats(chain: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in chain.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Ok(non-zero): the command ran and its answer is "no" (`verify`'s books differ: 1; `status`:
/// the daemon is not ready, not running or cannot be asked).
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = Config::load(&cli.config_source()).context("while loading the configuration")?;
    trading_sync::telemetry::init(
        cli.log_format.unwrap_or(config.log.format),
        config.log.filter.as_deref(),
    )
    .context("while setting up logging")?;
    let every = cli.progress_every;
    let done = |()| 0;
    match cli.command {
        Command::Migrate => cli::migrate(&config).await.map(done),
        Command::Run => cli::run(&config, cli.config_source()).await.map(done),
        Command::Indicators { symbols, full } => cli::indicators(&config, symbols, full, every)
            .await
            .map(done),
        Command::Reconcile { since, dry_run } => cli::reconcile(&config, since, dry_run, every)
            .await
            .map(done),
        Command::Verify { account, strategy } => cli::verify(&config, account, strategy)
            .await
            .map(|clean| if clean { 0 } else { 1 }),
        Command::DeadLetters { command } => cli::dead_letters::run(&config, command, every)
            .await
            .map(done),
        Command::Status { json } => cli::status::status(&config, json).await,
        Command::CheckConfig => {
            cli::check_config(&config);
            Ok(0)
        }
    }
}
