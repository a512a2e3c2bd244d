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
    // Centralized logs for the commands that work on a migrated database: `migrate` may run
    // before the logging tables exist, and check-config touches no database.
    let database_log = match cli.command {
        Command::Run
        | Command::Indicators { .. }
        | Command::Reconcile { .. }
        | Command::Verify { .. }
        | Command::DeadLetters { .. } => config.log.database_capture(),
        Command::Migrate | Command::CheckConfig | Command::Status { .. } => None,
    };
    trading_sync::telemetry::init(
        cli.log_format.unwrap_or(config.log.format),
        config.log.filter.as_deref(),
        database_log,
    )
    .context("while setting up logging")?;
    let every = cli.progress_every;
    let done = |()| 0;
    match cli.command {
        Command::Migrate => cli::migrate(&config).await.map(done),
        Command::Run => cli::shipped(&config, cli::run(&config, cli.config_source()))
            .await
            .map(done),
        Command::Indicators { symbols, full } => {
            cli::shipped(&config, cli::indicators(&config, symbols, full, every))
                .await
                .map(done)
        }
        Command::Reconcile { since, dry_run } => {
            cli::shipped(&config, cli::reconcile(&config, since, dry_run, every))
                .await
                .map(done)
        }
        Command::Verify { account, strategy } => {
            cli::shipped(&config, cli::verify(&config, account, strategy))
                .await
                .map(|clean| if clean { 0 } else { 1 })
        }
        Command::DeadLetters { command } => {
            cli::shipped(&config, cli::dead_letters::run(&config, command, every))
                .await
                .map(done)
        }
        // A person's look at the daemon writes nothing to the logging tables.
        Command::Status { json } => cli::status::status(&config, json).await,
        Command::CheckConfig => {
            cli::check_config(&config);
            Ok(0)
        }
    }
}
