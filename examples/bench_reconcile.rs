//! Times reconcile runs as the daemon makes them: one connection kept between runs with its
//! statements prepared. `scripts/bench_reconcile.sh` fills the database and calls this.
//!
//!     DATABASE_URL=postgres://…/ts_bench_reconcile cargo run --release --example bench_reconcile [RUNS]

use std::time::Duration;

use trading_sync::reconcile::{run_prepared, Outcome, Prepared, Request, Settings, Trigger};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    // Through the daemon's own connector, so the URL's `sslmode` is honoured.
    let config = trading_sync::config::DatabaseConfig {
        url,
        ..Default::default()
    };
    let mut client = trading_sync::db::Connector::primary(&config)?
        .connect()
        .await?;
    let prepared = Prepared::prepare(&client).await?;
    let settings = Settings {
        grace: Duration::ZERO,
        ledger_retention_days: 400,
        exchange_tz: chrono_tz::America::New_York,
        instance: "bench".into(),
    };
    let request = Request {
        trigger: Trigger::Interval,
        since: None,
        dry_run: false,
        skip_if_ran_within: None,
        lock_wait: Duration::from_secs(10),
    };
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        match run_prepared(&mut client, &prepared, &settings, &request).await? {
            Outcome::Ran(report) => {
                anyhow::ensure!(
                    !report.healed_anything(),
                    "expected nothing to heal: {report:?}"
                );
                took.push(report.took);
            }
            other => anyhow::bail!("did not run: {other:?}"),
        }
    }
    let first = took[0];
    took.sort();
    println!(
        "{runs} runs with nothing to heal on one connection: first {:.1} ms, then median {:.1} ms, min {:.1} ms, max {:.1} ms",
        first.as_secs_f64() * 1e3,
        took[took.len() / 2].as_secs_f64() * 1e3,
        took[0].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
