//! Publishes a realistic, seeded `data_sync` workload to Redis, byte for byte as the Python
//! publishers would, and optionally checks the database a daemon wrote it into.
//!
//! ```sh
//! cargo run --release -p trading-sync-loadgen -- --trades 100000 --rate 0 --duplicate-fraction 0.01 \
//!     --expected-out /tmp/expected.json --database-url postgres://postgres@127.0.0.1/trading_system --verify
//! ```
//!
//! The same seed and trade count always give the same bytes, so running it twice against one
//! database is a replay test: the second run must change nothing.
//!
//! A binary of the load generator's crate, not an example of the daemon's: like the rest of the
//! crate it needs nothing from `trading-sync`, and must not import it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use loadgen::{Generator, Spec};

#[derive(Parser)]
#[command(about = "Publish a seeded data_sync workload and check the aggregates it produced")]
struct Args {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// Channel prefix: messages go to <prefix>:trades, :positions, :market_data.
    #[arg(long, default_value = "data_sync")]
    prefix: String,
    /// Distinct trades to publish.
    #[arg(long, default_value_t = 10_000)]
    trades: u64,
    /// Messages per second; 0 publishes as fast as Redis takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Share of trades published a second time, a few thousand messages later.
    #[arg(long, default_value_t = 0.0)]
    duplicate_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Trade ids are <id-prefix>-<10-digit sequence>.
    #[arg(long, default_value = "LG")]
    id_prefix: String,
    /// About one position snapshot per this many trades (0: none).
    #[arg(long, default_value_t = 1_000)]
    position_every: u64,
    /// About one market-data bar per this many trades (0: none).
    #[arg(long, default_value_t = 500)]
    bar_every: u64,
    /// Accounts of the key space (ACC-1001…); about 4 in 5 (account, symbol) pairs trade.
    #[arg(long, default_value_t = Spec::default().accounts)]
    accounts: usize,
    /// Symbols of the key space: the 24 built-in ones, then copies named AAPL.1, …
    #[arg(long, default_value_t = Spec::default().symbols)]
    symbols: usize,
    /// Strategies named by trades (0: none).
    #[arg(long, default_value_t = Spec::default().strategies)]
    strategies: usize,
    /// PUBLISH commands per round trip when unpaced.
    #[arg(long, default_value_t = 256)]
    pipeline: usize,
    /// Write the expected aggregates here as JSON.
    #[arg(long)]
    expected_out: Option<std::path::PathBuf>,
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// After publishing, wait until the ledger stops growing and compare the aggregates.
    #[arg(long, requires = "database_url")]
    verify: bool,
    /// How long the ledger must stay unchanged before --verify compares.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.duplicate_fraction),
        "--duplicate-fraction must be within 0..=1"
    );
    anyhow::ensure!(args.rate >= 0.0, "--rate must be >= 0");
    anyhow::ensure!(
        args.accounts > 0 && args.symbols > 0,
        "--accounts and --symbols must be at least 1"
    );
    let mut generator = Generator::new(Spec {
        seed: args.seed,
        id_prefix: args.id_prefix.clone(),
        duplicate_fraction: args.duplicate_fraction,
        position_every: args.position_every,
        bar_every: args.bar_every,
        accounts: args.accounts,
        symbols: args.symbols,
        strategies: args.strategies,
    });
    let messages = generator.generate(args.trades);
    let expected = generator.expected();
    let counts = loadgen::published(&messages);
    let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
    if let Some(path) = &args.expected_out {
        std::fs::write(path, serde_json::to_vec_pretty(&expected)?)
            .with_context(|| format!("while writing {}", path.display()))?;
    }

    let mut redis = loadgen::connect_redis(&args.redis_url)
        .await
        .context("while connecting to Redis")?;
    let started = Instant::now();
    if args.rate > 0.0 {
        loadgen::publish_paced(&mut redis, &args.prefix, &messages, args.rate).await?;
    } else {
        loadgen::publish_burst(&mut redis, &args.prefix, &messages, args.pipeline).await?;
    }
    let took = started.elapsed();
    println!(
        "published {} messages ({} trades, {} republished, {} positions, {} bars; {:.1} MB) in \
         {:.2} s: {:.0} messages/s",
        messages.len(),
        counts.trades,
        counts.duplicates,
        counts.positions,
        counts.bars,
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        messages.len() as f64 / took.as_secs_f64()
    );

    if !args.verify {
        return Ok(true);
    }
    let url = args.database_url.as_deref().expect("clap requires it");
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("while connecting to PostgreSQL")?;
    tokio::spawn(connection);
    let settle = Duration::from_secs_f64(args.settle_secs);
    loadgen::wait_for_ledger(&client, &expected, settle).await?;
    let applied_in = started.elapsed();
    let report = loadgen::verify(&client, &expected).await?;
    println!(
        "ledger complete or settled after {:.2} s\n{report}",
        applied_in.as_secs_f64()
    );
    Ok(report.is_exact())
}
