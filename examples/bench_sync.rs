//! The sync benchmark: `trading-sync run` as a subprocess, fed by the load generator through
//! this machine's Redis into this machine's PostgreSQL.
//!
//! ```sh
//! cargo build --release --bins --examples && cargo run --release --example bench_sync
//! ```
//!
//! It builds nothing itself: it runs the `trading-sync` binary next to its own directory
//! (`target/release/`), or `--binary`. Phases, on one fresh database `bench_sync_<pid>`:
//!
//! 1. burst: 200,000 trades (plus 1% republished, and position/bar events) as fast as Redis
//!    takes them; sustained rate = distinct trades / (first publish → ledger complete); loss and
//!    duplication checked against the generator's own sums; the daemon's VmHWM right after.
//! 2. paced: 5,000 messages/s for 20 s; publish-to-commit latency of every trade, from the
//!    ledger's `max(trade_id)` polled every millisecond (one FIFO writer commits in publish
//!    order, and ids sort in publish order).
//! 3. SIGTERM, expecting exit 0.
//! 4. ceiling: the burst's batches, decoded and planned up front, applied in-process with
//!    `store::apply` to another fresh database: what the SQL alone allows.
//!
//! CPU time of the daemon, PostgreSQL, Redis and this process is sampled around the burst and
//! the ceiling (from /proc), which is usually enough to tell what limits throughput.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use loadgen::{Expected, Generator, Message, MessageKind, Report, Spec};
use trading_sync::apply::fold;
use trading_sync::apply::store::{self, Statements};
use trading_sync::config::{DatabaseConfig, RedisConfig};
use trading_sync::core::queue::Inbound;
use trading_sync::core::ChannelKind;
use trading_sync::events::DecodeLimits;

#[derive(Parser)]
#[command(about = "Benchmark trading-sync run end to end and against its SQL ceiling")]
struct Args {
    /// Any database URL of the cluster; the bench creates and drops its own databases in it.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    redis_url: String,
    /// With a rediss:// URL: the CA of the server's certificate (default: the system's roots).
    /// These three reach the daemon as redis.tls_*; the bench's own connections use them too.
    #[arg(long, env = "BENCH_REDIS_TLS_CA_FILE")]
    redis_tls_ca_file: Option<PathBuf>,
    /// A client certificate, for a server run with --tls-auth-clients yes.
    #[arg(long, env = "BENCH_REDIS_TLS_CERT_FILE")]
    redis_tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "BENCH_REDIS_TLS_KEY_FILE")]
    redis_tls_key_file: Option<PathBuf>,
    /// The daemon binary; default: trading-sync next to this example's directory.
    #[arg(long)]
    binary: Option<PathBuf>,
    #[arg(long, default_value_t = 200_000)]
    burst_trades: u64,
    /// Messages per second of the paced phase.
    #[arg(long, default_value_t = 5_000.0)]
    paced_rate: f64,
    #[arg(long, default_value_t = 20.0)]
    paced_secs: f64,
    #[arg(long, default_value_t = 0.01)]
    duplicate_fraction: f64,
    /// Events per batch of the ceiling loop: the daemon's default sync.batch_max_events.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write "<ms since first paced publish> <publish-to-commit ms>" per paced trade here.
    #[arg(long)]
    latency_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pid = std::process::id();
    let names = Names {
        daemon_db: format!("bench_sync_{pid}"),
        ceiling_db: format!("bench_sync_{pid}_ceiling"),
    };
    let mut daemon: Option<tokio::process::Child> = None;
    let result = bench(&args, &names, &mut daemon).await;
    // Whatever happened, leave no daemon and no database behind.
    if let Some(mut child) = daemon {
        if child.try_wait()?.is_none() {
            let _ = child.kill().await;
        }
    }
    let admin = connect(&args.database_url).await?;
    for db in [&names.daemon_db, &names.ceiling_db] {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await
            .with_context(|| format!("while dropping {db}"))?;
    }
    result
}

struct Names {
    daemon_db: String,
    ceiling_db: String,
}

async fn bench(
    args: &Args,
    names: &Names,
    daemon_slot: &mut Option<tokio::process::Child>,
) -> anyhow::Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("cannot locate target/<profile>/")?
            .join("trading-sync"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: run `cargo build --release --bins --examples` first",
            binary.display()
        );
    }
    // The daemon runs in another directory.
    let binary = binary.canonicalize()?;

    // The workload, generated before anything is timed.
    let mut generator = Generator::new(Spec {
        seed: args.seed,
        id_prefix: "BS".into(),
        duplicate_fraction: args.duplicate_fraction,
        position_every: 1_000,
        bar_every: 500,
    });
    let burst = generator.generate(args.burst_trades);
    let burst_expected = generator.expected();
    // Paced trades so that all its messages (with republished and side events) last paced_secs.
    let per_trade = 1.0 + args.duplicate_fraction + 1.0 / 1_000.0 + 1.0 / 500.0;
    let paced_trades = (args.paced_rate * args.paced_secs / per_trade) as u64;
    let paced = generator.generate(paced_trades);
    let all_expected = generator.expected();
    let burst_counts = loadgen::published(&burst);

    let daemon_url = database_url(&args.database_url, &names.daemon_db)?;
    let ceiling_url = database_url(&args.database_url, &names.ceiling_db)?;
    for url in [&daemon_url, &ceiling_url] {
        trading_sync::db::migrate::migrate(&DatabaseConfig {
            url: url.clone(),
            ..DatabaseConfig::default()
        })
        .await
        .context("while creating a bench database")?;
    }
    let client = connect(&daemon_url).await?;
    let environment = environment(&client, args).await?;

    let prefix = format!("bench_sync_{}", std::process::id());
    // An empty working directory: a ./config.toml of the checkout must not change the figures
    // (nor stop a binary older than it); defaults plus the variables below are the setup.
    let workdir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&workdir)?;
    let mut command = tokio::process::Command::new(&binary);
    for (variable, file) in [
        ("TRADING_SYNC__REDIS__TLS_CA_FILE", &args.redis_tls_ca_file),
        (
            "TRADING_SYNC__REDIS__TLS_CERT_FILE",
            &args.redis_tls_cert_file,
        ),
        (
            "TRADING_SYNC__REDIS__TLS_KEY_FILE",
            &args.redis_tls_key_file,
        ),
    ] {
        if let Some(file) = file {
            command.env(variable, file.canonicalize()?);
        }
    }
    let daemon = daemon_slot.insert(
        command
            .arg("run")
            .current_dir(&workdir)
            .env("DATABASE_URL", &daemon_url)
            .env("REDIS_URL", &args.redis_url)
            .env("TRADING_SYNC__REDIS__CHANNEL_PREFIX", &prefix)
            .env("TRADING_SYNC__INDICATORS__ENABLED", "false")
            .env("TRADING_SYNC__HTTP__ENABLED", "false")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("while starting {}", binary.display()))?,
    );
    let daemon_pid = daemon.id().context("the daemon has no pid")?;
    let mut redis = connect_redis(args).await?;
    wait_subscribed(&mut redis, &prefix, daemon).await?;

    // 1. Burst.
    let idle_rss = memory(daemon_pid)?;
    let cpu_before = cpu_seconds(daemon_pid);
    let watcher = {
        let client = connect(&daemon_url).await?;
        let last = burst_expected.last_seq;
        tokio::spawn(async move {
            watch_growth(&client, "BS", last, Duration::from_secs(3), daemon_pid).await
        })
    };
    let started = Instant::now();
    loadgen::publish_burst(&mut redis, &prefix, &burst, 256).await?;
    let published_in = started.elapsed();
    let growth = watcher.await??;
    let burst_rss = memory(daemon_pid)?;
    let cpu_burst = growth.cpu_at_last_growth.since(&cpu_before);
    // Until the last commit that added a trade: with losses the ledger stops short of the end.
    let burst_secs = growth.last_growth.duration_since(started).as_secs_f64();
    // Republications published after the last new trade are still owed a (no-op) commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let burst_report = loadgen::verify(&client, &burst_expected).await?;

    // 2. Paced.
    let last = all_expected.last_seq;
    let poller = {
        let client = connect(&daemon_url).await?;
        let deadline = Duration::from_secs_f64(args.paced_secs + 30.0);
        tokio::spawn(async move { poll_commits(&client, last, deadline).await })
    };
    let sent_at = loadgen::publish_paced(&mut redis, &prefix, &paced, args.paced_rate).await?;
    let observations = poller.await??;
    let latency = latencies(&paced, &sent_at, &observations);
    if let Some(path) = &args.latency_out {
        write_latencies(path, &paced, &sent_at, &observations)?;
    }
    let paced_took = sent_at
        .last()
        .zip(sent_at.first())
        .map_or(0.0, |(l, f)| l.duration_since(*f).as_secs_f64());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_report = loadgen::verify(&client, &all_expected).await?;
    let final_rss = memory(daemon_pid)?;

    // 3. Stop.
    let stopped = tokio::process::Command::new("kill")
        .args(["-TERM", &daemon_pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(stopped.success(), "kill -TERM {daemon_pid} failed");
    let exit = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
        .await
        .context("the daemon did not exit within 30 s of SIGTERM")??;
    drop(client);
    let _ = std::fs::remove_dir(&workdir);

    // 4. Ceiling.
    // Small batches of paced trades on top, after the ceiling's own check.
    let small = &paced[..paced.len().min(5_000)];
    let ceiling = ceiling(&ceiling_url, &burst, args.batch, &burst_expected, small).await?;

    // Report.
    let burst_rate = burst_report.trades_in_ledger as f64 / burst_secs;
    println!();
    println!("trading-sync sync benchmark ({environment})");
    println!(
        "workload: burst {} trades + {} republished + {} positions + {} bars ({:.1} MB); \
         paced {} messages",
        burst_counts.trades,
        burst_counts.duplicates,
        burst_counts.positions,
        burst_counts.bars,
        burst.iter().map(|m| m.payload.len()).sum::<usize>() as f64 / 1e6,
        paced.len()
    );
    println!();
    let row = |what: &str, figure: String, target: &str| {
        println!("| {what:<50} | {figure:<38} | {target:<12} |");
    };
    row("figure", "this run".into(), "target");
    println!("|{}|{}|{}|", "-".repeat(52), "-".repeat(40), "-".repeat(14));
    row(
        if growth.completed.is_some() {
            "burst: sustained, first publish → ledger complete"
        } else {
            "burst: sustained, first publish → ledger INCOMPLETE"
        },
        if growth.completed.is_some() {
            format!(
                "{burst_rate:.0} trades/s ({:.0} msg/s, {burst_secs:.2} s)",
                burst.len() as f64 / burst_secs
            )
        } else {
            format!("{burst_rate:.0} trades/s (until the last commit, {burst_secs:.2} s)")
        },
        "≥ 50,000",
    );
    row(
        "burst: publisher alone",
        format!(
            "{:.0} msg/s ({:.2} s)",
            burst.len() as f64 / published_in.as_secs_f64(),
            published_in.as_secs_f64()
        ),
        "",
    );
    row("burst: lost / duplicated", loss(&burst_report), "0 / 0");
    row(
        "burst: daemon peak RSS (VmHWM; RSS when idle before)",
        format!(
            "{:.1} MiB ({:.1})",
            burst_rss.hwm_kib as f64 / 1024.0,
            idle_rss.rss_kib as f64 / 1024.0
        ),
        "≤ 128 MiB",
    );
    row("burst: CPU seconds", cpu_burst.to_string(), "");
    row(
        &format!(
            "paced {:.0} msg/s: publish → commit p50 / p99",
            args.paced_rate
        ),
        match &latency {
            Some(l) => format!("{:.1} / {:.1} ms (max {:.1})", l.p50, l.p99, l.max),
            None => "no trade observed".into(),
        },
        "p99 ≤ 25 ms",
    );
    row(
        "paced: achieved rate, trades not observed",
        format!(
            "{:.0} msg/s, {}",
            paced.len() as f64 / paced_took.max(1e-9),
            latency.as_ref().map_or(0, |l| l.unobserved)
        ),
        "",
    );
    row("all: lost / duplicated", loss(&all_report), "0 / 0");
    row(
        "all: daemon peak RSS / RSS at end",
        format!(
            "{:.1} / {:.1} MiB",
            final_rss.hwm_kib as f64 / 1024.0,
            final_rss.rss_kib as f64 / 1024.0
        ),
        "",
    );
    row(
        "ceiling: store::apply loop, no Redis/JSON",
        format!(
            "{:.0} trades/s ({} batches, {:.2} s)",
            ceiling.trades as f64 / ceiling.secs,
            ceiling.batches,
            ceiling.secs
        ),
        "",
    );
    row(
        "ceiling: CPU seconds (bench = apply loop)",
        ceiling.cpu.to_string(),
        "",
    );
    row(
        "burst rate / ceiling",
        format!(
            "{:.0}%",
            100.0 * burst_rate / (ceiling.trades as f64 / ceiling.secs)
        ),
        "",
    );
    row("ceiling: lost / duplicated", loss(&ceiling.report), "0 / 0");
    row(
        "decode + plan alone (fold::plan, one thread)",
        format!(
            "{:.0} msg/s ({:.2} s)",
            burst.len() as f64 / ceiling.plan_secs,
            ceiling.plan_secs
        ),
        "",
    );
    row(
        &format!(
            "store::apply of one {}-message batch p50 / p99",
            ceiling.small_batch.0
        ),
        format!(
            "{:.2} / {:.2} ms",
            ceiling.small_batch.1, ceiling.small_batch.2
        ),
        "",
    );
    row(
        "daemon exit status after SIGTERM",
        exit.code()
            .map_or_else(|| format!("{exit}"), |c| c.to_string()),
        "0",
    );
    for (name, report) in [
        ("burst", &burst_report),
        ("all", &all_report),
        ("ceiling", &ceiling.report),
    ] {
        if !report.is_exact() {
            println!("\n{name}: {report}");
        }
    }
    Ok(())
}

fn loss(report: &Report) -> String {
    format!(
        "{} / {} (ledger {} of {}, bad rows {})",
        report.lost,
        report.duplicated,
        report.trades_in_ledger,
        report.trades_expected,
        report.mismatched_rows
    )
}

/// Through the daemon's own connector, so the bench's connections honour the URL's `sslmode`
/// (and the ceiling pays for TLS when the daemon does).
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let config = trading_sync::config::DatabaseConfig {
        url: url.to_owned(),
        ..Default::default()
    };
    let connector = trading_sync::db::Connector::primary(&config)
        .with_context(|| format!("--database-url {url}"))?;
    connector
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

fn database_url(admin: &str, database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(admin).context("--database-url")?;
    url.set_path(database);
    Ok(url.to_string())
}

/// The bench's own Redis connection, through the daemon's endpoint: the same TLS settings.
async fn connect_redis(args: &Args) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = RedisConfig {
        url: args.redis_url.clone(),
        tls_ca_file: args.redis_tls_ca_file.clone(),
        tls_cert_file: args.redis_tls_cert_file.clone(),
        tls_key_file: args.redis_tls_key_file.clone(),
        ..RedisConfig::default()
    };
    let client = config.endpoint()?.client()?;
    Ok(loadgen::connect_client(&client).await?)
}

/// What the figures depend on, printed with them.
async fn environment(client: &tokio_postgres::Client, args: &Args) -> anyhow::Result<String> {
    let setting = |row: tokio_postgres::Row| -> String { row.get(0) };
    let version = setting(client.query_one("SHOW server_version", &[]).await?);
    let fsync = setting(client.query_one("SHOW fsync", &[]).await?);
    let sync_commit = setting(client.query_one("SHOW synchronous_commit", &[]).await?);
    let mut redis = connect_redis(args).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut redis)
        .await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    Ok(format!(
        "{cpus} CPUs, load {load} at start; PostgreSQL {version}, fsync={fsync}, \
         synchronous_commit={sync_commit}; Redis {redis_version}"
    ))
}

/// Until the daemon's pub/sub connection is subscribed to all three channels.
async fn wait_subscribed(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    daemon: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut subscribed = 0;
        for suffix in ["trades", "positions", "market_data"] {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("{prefix}:{suffix}"))
                .query_async(redis)
                .await?;
            subscribed += usize::from(n == 1);
        }
        if subscribed == 3 {
            return Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            bail!("the daemon exited before subscribing: {status}");
        }
        if Instant::now() > deadline {
            bail!("the daemon did not subscribe within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the ledger grew during the burst.
struct Growth {
    /// When it first held trade `last`; None if it stopped growing for `stall` before that.
    completed: Option<Instant>,
    /// The last time it grew, and the CPU used by then (sampled at most every 100 ms).
    last_growth: Instant,
    cpu_at_last_growth: CpuSample,
}

async fn watch_growth(
    client: &tokio_postgres::Client,
    prefix: &str,
    last: u64,
    stall: Duration,
    daemon_pid: u32,
) -> anyhow::Result<Growth> {
    let mut max_seen = None;
    let mut growth = Growth {
        completed: None,
        last_growth: Instant::now(),
        cpu_at_last_growth: cpu_seconds(daemon_pid),
    };
    let mut sampled = Instant::now();
    loop {
        let max = loadgen::max_applied_seq(client, prefix).await?;
        let now = Instant::now();
        if max != max_seen {
            max_seen = max;
            growth.last_growth = now;
            if max >= Some(last) || now.duration_since(sampled) > Duration::from_millis(100) {
                growth.cpu_at_last_growth = cpu_seconds(daemon_pid);
                sampled = now;
            }
        }
        if max >= Some(last) {
            growth.completed = Some(now);
            return Ok(growth);
        }
        if now.duration_since(growth.last_growth) > stall {
            return Ok(growth);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `(when, max seq)` each time the ledger's highest paced trade changed, polled every
/// millisecond until `last` is seen or `deadline` passes. The instant is taken when the answer
/// arrives: a commit is never dated earlier than it happened, at the cost of up to one poll
/// interval plus a round trip.
async fn poll_commits(
    client: &tokio_postgres::Client,
    last: u64,
    deadline: Duration,
) -> anyhow::Result<Vec<(Instant, u64)>> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut current = 0;
    while start.elapsed() < deadline {
        tick.tick().await;
        let max = loadgen::max_applied_seq(client, "BS").await?.unwrap_or(0);
        if max > current {
            current = max;
            seen.push((Instant::now(), max));
            if max >= last {
                break;
            }
        }
    }
    Ok(seen)
}

fn write_latencies(
    path: &std::path::Path,
    messages: &[Message],
    sent_at: &[Instant],
    observations: &[(Instant, u64)],
) -> anyhow::Result<()> {
    use std::fmt::Write;
    let Some(first) = sent_at.first() else {
        return Ok(());
    };
    let mut out = String::new();
    for (m, sent) in messages.iter().zip(sent_at) {
        if let MessageKind::Trade { seq } = m.kind {
            let i = observations.partition_point(|(_, max)| *max < seq);
            if let Some((at, _)) = observations.get(i) {
                let _ = writeln!(
                    out,
                    "{:.3} {:.3}",
                    sent.duration_since(*first).as_secs_f64() * 1e3,
                    at.saturating_duration_since(*sent).as_secs_f64() * 1e3
                );
            }
        }
    }
    std::fs::write(path, out).with_context(|| format!("while writing {}", path.display()))
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    unobserved: usize,
}

/// Publish-to-commit of each paced trade's first publication, in milliseconds.
fn latencies(
    messages: &[Message],
    sent_at: &[Instant],
    observations: &[(Instant, u64)],
) -> Option<Latency> {
    let mut ms = Vec::new();
    let mut unobserved = 0;
    for (m, sent) in messages.iter().zip(sent_at) {
        let MessageKind::Trade { seq } = m.kind else {
            continue;
        };
        // Observations are in increasing max order: the first one at or past seq.
        let i = observations.partition_point(|(_, max)| *max < seq);
        match observations.get(i) {
            Some((at, _)) => ms.push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3),
            None => unobserved += 1,
        }
    }
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Some(Latency {
        p50: pick(0.50),
        p99: pick(0.99),
        max: ms[ms.len() - 1],
        unobserved,
    })
}

struct Ceiling {
    trades: u64,
    batches: usize,
    secs: f64,
    cpu: CpuSample,
    report: Report,
    /// Decoding and planning the same batches, single-threaded: the writer's other serial step.
    plan_secs: f64,
    /// One small batch applied at a time, as at a paced rate: p50 / p99 milliseconds.
    small_batch: (usize, f64, f64),
}

/// The daemon's channel for a generator message: the generator has a channel type of its own (it
/// must not import the daemon); the suffix is what the two agree on.
fn channel_kind(channel: loadgen::Channel) -> ChannelKind {
    ChannelKind::from_suffix(channel.suffix()).expect("the generator's channels are the daemon's")
}

/// The burst's batches, planned up front, applied back to back with the daemon's own SQL.
async fn ceiling(
    url: &str,
    messages: &[Message],
    batch: usize,
    expected: &Expected,
    small: &[Message],
) -> anyhow::Result<Ceiling> {
    let limits = DecodeLimits::default();
    let inbound = |chunk: &[Message]| -> Vec<Inbound> {
        chunk
            .iter()
            .map(|m| Inbound::new(channel_kind(m.channel), m.payload.clone()))
            .collect()
    };
    let batches: Vec<Vec<Inbound>> = messages.chunks(batch.max(1)).map(inbound).collect();
    let planning = Instant::now();
    let plans: Vec<fold::BatchPlan> = batches.iter().map(|b| fold::plan(b, &limits)).collect();
    let plan_secs = planning.elapsed().as_secs_f64();
    let mut client = connect(url).await?;
    let stmts = Statements::prepare(&client).await?;
    let before = cpu_seconds(std::process::id());
    let started = Instant::now();
    for plan in &plans {
        store::apply(&mut client, &stmts, plan).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id()).since(&before);
    let report = loadgen::verify(&client, expected).await?;

    let small_size = 25;
    let mut ms: Vec<f64> = Vec::new();
    for chunk in small.chunks(small_size) {
        let plan = fold::plan(&inbound(chunk), &limits);
        let at = Instant::now();
        store::apply(&mut client, &stmts, &plan).await?;
        ms.push(at.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    Ok(Ceiling {
        trades: expected.trades,
        batches: plans.len(),
        secs,
        cpu,
        report,
        plan_secs,
        small_batch: (small_size, pick(0.5), pick(0.99)),
    })
}

struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
    })
}

/// CPU seconds (user + system) by process group: the daemon (`main`), every postgres process,
/// redis-server, this bench, and everything else.
#[derive(Debug, Clone, Default)]
struct CpuSample(BTreeMap<&'static str, f64>);

/// USER_HZ: 100 on every Linux this runs on (the kernel ABI fixes it for /proc).
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_seconds(main: u32) -> CpuSample {
    let me = std::process::id();
    let mut sample = CpuSample::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return sample;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces: fields after the last ')' are fixed.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat; tail starts at field 3.
        let secs = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
        let group = if pid == main && main != me {
            "daemon"
        } else if pid == me {
            "bench"
        } else if comm == "postgres" {
            "postgres"
        } else if comm.starts_with("redis-server") {
            "redis"
        } else {
            // Anything else busy at the same time (a build, a test run) skews the figures.
            "other"
        };
        *sample.0.entry(group).or_default() += secs;
    }
    sample
}

impl CpuSample {
    /// Per group, CPU used since `before`. Processes that ended in between (a PostgreSQL
    /// backend of a closed connection) are not counted.
    fn since(&self, before: &CpuSample) -> CpuSample {
        CpuSample(
            self.0
                .iter()
                .map(|(k, v)| (*k, (v - before.0.get(k).copied().unwrap_or(0.0)).max(0.0)))
                .collect(),
        )
    }
}

impl std::fmt::Display for CpuSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = ["daemon", "postgres", "redis", "bench", "other"]
            .iter()
            .filter_map(|k| self.0.get(k).map(|v| format!("{k} {v:.1}")))
            .collect();
        f.write_str(&parts.join(", "))
    }
}
