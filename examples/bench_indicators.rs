//! Indicator job benchmark: synthetic Yahoo bars for many symbols in a fresh database, a timed
//! full backfill, one new bar per symbol, a timed daily (incremental) run, a timed no-op run;
//! then, unless `--no-python`, the same two workloads through
//! `scripts/bench_indicators_baseline.py` (pandas + TA-Lib + psycopg) for comparison.
//!
//! ```sh
//! cargo run --release --example bench_indicators -- [--symbols 5000] [--bars 2520] \
//!     [--connections 2] [--no-python] [--keep]
//! ```
//!
//! Needs a PostgreSQL role that may create databases: `BENCH_DATABASE_URL` (else
//! `TEST_DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres) names any database
//! of the cluster; the bench creates `ts_bench_ind_<pid>` next to it and drops it at the end
//! (`--keep` leaves it). Loading the bars is untimed; so are the VACUUM ANALYZEs, which stand
//! in for autovacuum between a backfill and the next day's run.
//! After the daily run it times two runs that must find little to do: one after every symbol's
//! last five bars were upserted again unchanged (Yahoo's overlapping download), one after a
//! close 1,000 bars back was revised for 1 % of the symbols.

use std::io::{Cursor, Write as _};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{Datelike, NaiveDate};
use futures::SinkExt;
use tokio_util::sync::CancellationToken;
use trading_sync::config::DatabaseConfig;
use trading_sync::indicators::job::{self, JobSettings, Mode, RunSummary, Selection};
use trading_sync::indicators::store::start_of_day;

/// Every yahoo bar from `$1` on written again with the values it has.
const RESEND_LAST_BARS_SQL: &str = r#"
INSERT INTO data_ingestion.market_data
       (symbol, "timestamp", open, high, low, close, volume, data_source)
SELECT symbol, "timestamp", open, high, low, close, volume, data_source
  FROM data_ingestion.market_data
 WHERE "timestamp" >= $1 AND data_source = 'yahoo'
ON CONFLICT (symbol, "timestamp", data_source) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
       close = EXCLUDED.close, volume = EXCLUDED.volume
"#;

/// One bar of each symbol in `$1`, at `$2`, one cent higher.
const REVISE_CLOSE_SQL: &str = r#"
UPDATE data_ingestion.market_data
   SET close = close + 0.01, high = high + 0.01
 WHERE symbol = ANY($1::text[]) AND "timestamp" = $2 AND data_source = 'yahoo'
"#;

struct Args {
    symbols: usize,
    bars: usize,
    connections: usize,
    python: bool,
    keep: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        symbols: 5_000,
        bars: 2_520,
        connections: 2,
        python: true,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> anyhow::Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--symbols" => a.symbols = num("--symbols")?,
            "--bars" => a.bars = num("--bars")?,
            "--connections" => a.connections = num("--connections")?,
            "--no-python" => a.python = false,
            "--keep" => a.keep = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn admin_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_of(database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&admin_url()).context("BENCH_DATABASE_URL")?;
    url.set_path(database);
    Ok(url.to_string())
}

/// Through the daemon's own connector, so the URL's `sslmode` is honoured.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let config = trading_sync::config::DatabaseConfig {
        url: url.to_owned(),
        ..Default::default()
    };
    let connector = trading_sync::db::Connector::primary(&config)
        .with_context(|| format!("the database URL {url}"))?;
    connector
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Drops the bench database however the bench ends.
struct DropDb {
    name: String,
    keep: bool,
}

impl Drop for DropDb {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept database {}", self.name);
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(admin) = connect(&admin_url()).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn weekdays(start: NaiveDate, n: usize) -> Vec<NaiveDate> {
    let mut out = Vec::with_capacity(n);
    let mut day = start;
    while out.len() < n {
        if day.weekday().number_from_monday() <= 5 {
            out.push(day);
        }
        day = day.succ_opt().expect("date");
    }
    out
}

/// Close in ten-thousandths of bar `i` of symbol `s`: a deterministic geometric random walk.
fn closes(s: usize, n: usize) -> Vec<i64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (s as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut c = 10.0 + (s % 500) as f64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            c *= (0.04 * u).exp();
            (c * 10_000.0).round().max(1.0) as i64
        })
        .collect()
}

fn symbol(s: usize) -> String {
    format!("SYM{s:05}")
}

/// COPY text lines of bars `range` of every symbol in `symbols`.
fn bar_lines(
    symbols: std::ops::Range<usize>,
    dates: &[NaiveDate],
    range: std::ops::Range<usize>,
    total_bars: usize,
) -> Vec<u8> {
    let tz = chrono_tz::America::New_York;
    let stamps: Vec<String> = dates[range.clone()]
        .iter()
        .map(|&d| {
            start_of_day(tz, d)
                .format("%Y-%m-%d %H:%M:%S+00")
                .to_string()
        })
        .collect();
    let mut out = Vec::with_capacity(symbols.len() * range.len() * 80);
    for s in symbols {
        let name = symbol(s);
        let cl = closes(s, total_bars);
        for (j, i) in range.clone().enumerate() {
            let c = cl[i];
            let price = format!("{}.{:04}", c / 10_000, c % 10_000);
            let volume = 100_000 + (c * 7 + i as i64 * 13) % 5_000_000;
            let _ = writeln!(
                out,
                "{name}\t{}\t{price}\t{price}\t{price}\t{price}\t{volume}\tyahoo",
                stamps[j]
            );
        }
    }
    out
}

async fn copy_bars(
    url: &str,
    symbols: std::ops::Range<usize>,
    dates: &[NaiveDate],
    range: std::ops::Range<usize>,
    total_bars: usize,
) -> anyhow::Result<()> {
    let client = connect(url).await?;
    let step = 100;
    let mut s = symbols.start;
    while s < symbols.end {
        let e = (s + step).min(symbols.end);
        let dates = dates.to_vec();
        let range = range.clone();
        let payload =
            tokio::task::spawn_blocking(move || bar_lines(s..e, &dates, range, total_bars)).await?;
        let sink = client
            .copy_in::<_, Cursor<Vec<u8>>>(
                "COPY data_ingestion.market_data \
                 (symbol, \"timestamp\", open, high, low, close, volume, data_source) FROM STDIN",
            )
            .await?;
        futures::pin_mut!(sink);
        sink.send(Cursor::new(payload)).await?;
        sink.as_mut().finish().await?;
        s = e;
    }
    Ok(())
}

/// Loads bars `range` of every symbol over two connections.
async fn load(
    url: &str,
    n: usize,
    dates: &[NaiveDate],
    range: std::ops::Range<usize>,
    total: usize,
) -> anyhow::Result<()> {
    let half = n / 2;
    let (a, b) = tokio::join!(
        copy_bars(url, 0..half, dates, range.clone(), total),
        copy_bars(url, half..n, dates, range.clone(), total)
    );
    a?;
    b
}

async fn ours(url: &str, connections: usize) -> anyhow::Result<RunSummary> {
    let pg = trading_sync::db::Connector::primary(&trading_sync::config::DatabaseConfig {
        url: url.into(),
        ..Default::default()
    })?;
    let settings = JobSettings {
        connections,
        // The bench measures the job, not the log.
        progress_every: Duration::from_secs(3600),
        ..JobSettings::default()
    };
    let summary = job::run_once(
        &pg,
        &settings,
        &Selection::All,
        Mode::Incremental,
        &CancellationToken::new(),
    )
    .await?;
    if summary.failures > 0 {
        bail!("run had failures: {summary:?}");
    }
    Ok(summary)
}

fn python(url: &str, mode: &str) -> anyhow::Result<f64> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench_indicators_baseline.py"
    );
    let out = Command::new("python3")
        .args([script, "--dsn", url, "--mode", mode])
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "baseline failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("seconds="))
        .with_context(|| format!("no seconds= line in: {text}"))?;
    Ok(line.trim().parse()?)
}

async fn scalar(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let name = format!("ts_bench_ind_{}", std::process::id());
    let url = url_of(&name)?;
    let _guard = DropDb {
        name: name.clone(),
        keep: a.keep,
    };
    let t = Instant::now();
    trading_sync::db::migrate::migrate(&DatabaseConfig {
        url: url.clone(),
        ..DatabaseConfig::default()
    })
    .await?;
    let client = connect(&url).await?;
    let all: Vec<String> = (0..a.symbols).map(symbol).collect();
    client
        .execute(
            "INSERT INTO data_ingestion.symbols (symbol) SELECT unnest($1::text[])",
            &[&all],
        )
        .await?;
    let dates = weekdays(
        NaiveDate::from_ymd_opt(2015, 1, 2).expect("date"),
        a.bars + 1,
    );
    load(&url, a.symbols, &dates, 0..a.bars, a.bars + 1).await?;
    client
        .batch_execute("VACUUM ANALYZE data_ingestion.market_data")
        .await?;
    println!(
        "loaded {} symbols x {} bars in {:.1} s (untimed)",
        a.symbols,
        a.bars,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let full = ours(&url, a.connections).await?;
    let full_s = t.elapsed().as_secs_f64();
    println!(
        "ours   full backfill:    {full_s:8.2} s  ({} symbols, {} rows, {:.0} rows/s)",
        full.symbols_computed,
        full.rows_written,
        full.rows_written as f64 / full_s
    );
    client
        .batch_execute("VACUUM ANALYZE analytics.technical_indicators, analytics.indicator_state, analytics.technical_indicators_latest")
        .await?;

    load(&url, a.symbols, &dates, a.bars..a.bars + 1, a.bars + 1).await?;
    let t = Instant::now();
    let inc = ours(&url, a.connections).await?;
    let inc_s = t.elapsed().as_secs_f64();
    println!(
        "ours   incremental run:  {inc_s:8.2} s  ({} symbols computed, {} rows)",
        inc.symbols_computed, inc.rows_written
    );
    let t = Instant::now();
    let noop = ours(&url, a.connections).await?;
    println!(
        "ours   no-op run:        {:8.2} s  ({} symbols up to date)",
        t.elapsed().as_secs_f64(),
        noop.symbols_up_to_date
    );
    // Yahoo's daily download overlaps: the last five bars of every symbol upserted again with
    // the same values. Not a change (V19), so the run must find nothing to do.
    let t = Instant::now();
    client
        .execute(
            RESEND_LAST_BARS_SQL,
            &[&start_of_day(
                chrono_tz::America::New_York,
                dates[a.bars - 4],
            )],
        )
        .await?;
    let resend_ingest_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let resent = ours(&url, a.connections).await?;
    println!(
        "ours   run after re-sent bars: {:6.2} s  ({} up to date, {} computed; the upsert itself took {resend_ingest_s:.2} s)",
        t.elapsed().as_secs_f64(),
        resent.symbols_up_to_date,
        resent.symbols_computed
    );
    // Yahoo re-adjusts history: one close 1,000 bars back changed for 1 % of the symbols.
    let revised: Vec<String> = (0..a.symbols).step_by(100).map(symbol).collect();
    let back = a.bars.saturating_sub(1_000);
    client
        .execute(
            REVISE_CLOSE_SQL,
            &[
                &revised,
                &start_of_day(chrono_tz::America::New_York, dates[back]),
            ],
        )
        .await?;
    let t = Instant::now();
    let rev = ours(&url, a.connections).await?;
    println!(
        "ours   run after revisions:    {:6.2} s  ({} symbols recomputed, {} rows rewritten)",
        t.elapsed().as_secs_f64(),
        rev.recomputed_after_revision,
        rev.rows_written
    );
    if resent.symbols_computed != 0 || rev.recomputed_after_revision != revised.len() as u64 {
        bail!("unexpected change detection: {resent:?} {rev:?}");
    }
    let rows = scalar(
        &client,
        "SELECT count(*) FROM analytics.technical_indicators",
    )
    .await?;
    if rows != (a.symbols * (a.bars + 1)) as i64 || inc.rows_written != a.symbols as u64 {
        bail!(
            "unexpected row counts: {rows} rows, incremental wrote {}",
            inc.rows_written
        );
    }

    if a.python {
        // Same bars, indicator tables reset, the appended bar removed again.
        let cut = start_of_day(chrono_tz::America::New_York, dates[a.bars]);
        client
            .batch_execute(
                "TRUNCATE analytics.technical_indicators, analytics.technical_indicators_latest, \
                 analytics.indicator_state",
            )
            .await?;
        client
            .execute(
                "DELETE FROM data_ingestion.market_data WHERE \"timestamp\" >= $1",
                &[&cut],
            )
            .await?;
        client
            .batch_execute("VACUUM ANALYZE data_ingestion.market_data")
            .await?;
        let py_full = python(&url, "full")?;
        println!("python full backfill:    {py_full:8.2} s");
        client
            .batch_execute("VACUUM ANALYZE analytics.technical_indicators, analytics.technical_indicators_latest")
            .await?;
        load(&url, a.symbols, &dates, a.bars..a.bars + 1, a.bars + 1).await?;
        let py_inc = python(&url, "incremental")?;
        println!("python incremental run:  {py_inc:8.2} s");
        println!(
            "ratio (python / ours):   full {:.1}x, incremental {:.1}x",
            py_full / full_s,
            py_inc / inc_s
        );
    }
    Ok(())
}
