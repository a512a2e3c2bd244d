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
//!    ledger's `max(trade_id)` polled every millisecond (paced batches are too small to be split
//!    across writer connections, so they commit in publish order, and ids sort in it).
//! 3. SIGTERM, expecting exit 0.
//! 4. ceiling: the burst's batches, decoded and planned up front, applied in-process with
//!    `store::apply_parallel` to another fresh database: what the SQL alone allows.
//!
//! 5. the key-space matrix (`--key-spaces`, default 10x10, 50x200, 500x200 accounts×symbols:
//!    ~80, ~8,000 and ~80,000 portfolio rows): for each, one seeded workload of `--case-trades`
//!    trades, run through four transports — a pub/sub burst, a stream drain (entries XADDed
//!    before the daemon starts), streams while publishing, and the pub/sub journal — each
//!    followed by its ceiling (the same workload's batches through `store::apply_parallel`, on a fresh
//!    database), so that a case and its ceiling see the same machine load. Every run gets its
//!    own database, cloned from one migrated template.
//!
//! CPU time of the daemon, PostgreSQL, Redis and this process is sampled around the burst and
//! the ceiling (from /proc), which is usually enough to tell what limits throughput. With
//! `--pg-stat-statements` (a cluster with the module in `shared_preload_libraries`) each matrix
//! run also prints the statements its database spent the most time in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
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
    /// sync.writer_connections of every daemon run, and the connections of every ceiling (the
    /// same store path at the same parallelism). Default: the daemon's default.
    #[arg(long, default_value_t = trading_sync::config::SyncConfig::default().writer_connections)]
    writer_connections: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write "<ms since first paced publish> <publish-to-commit ms>" per paced trade here.
    #[arg(long)]
    latency_out: Option<PathBuf>,
    /// Skip the default key space's burst, paced latency and ceiling (phases 1–4).
    #[arg(long)]
    matrix_only: bool,
    /// Key spaces of the matrix, ACCOUNTSxSYMBOLS; about 4 in 5 pairs are traded. Given with no
    /// value: no matrix.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "10x10,50x200,500x200")]
    key_spaces: Vec<KeySpace>,
    /// Strategies of the matrix's workloads (performance_metrics rows: strategies × 8 days).
    #[arg(long, default_value_t = 6)]
    strategies: usize,
    /// Distinct trades of each matrix run (plus republished and position events).
    #[arg(long, default_value_t = 300_000)]
    case_trades: u64,
    /// The matrix's transports, in the order run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pubsub,drain,stream,journal"
    )]
    cases: Vec<Case>,
    /// sync.queue_max_bytes and journal.buffer_max_bytes of the matrix's daemons, in MiB. Above
    /// the 80 MiB default so that a pub/sub burst published faster than it is applied is
    /// measured, not refused (the default phase keeps the defaults and reports its loss).
    #[arg(long, default_value_t = 512)]
    queue_mib: u64,
    /// Reset pg_stat_statements before each matrix run and print its database's top statements
    /// after it (needs pg_stat_statements in shared_preload_libraries).
    #[arg(long)]
    pg_stat_statements: bool,
}

/// One key space of the matrix: `accounts` × `symbols`.
#[derive(Debug, Clone, Copy)]
struct KeySpace {
    accounts: usize,
    symbols: usize,
}

impl FromStr for KeySpace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .trim()
            .split_once(['x', 'X', '×'])
            .ok_or_else(|| format!("{s:?}: expected ACCOUNTSxSYMBOLS, e.g. 50x200"))?;
        let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|n| *n > 0);
        match (parse(a), parse(b)) {
            (Some(accounts), Some(symbols)) => Ok(KeySpace { accounts, symbols }),
            _ => Err(format!(
                "{s:?}: accounts and symbols must be whole numbers ≥ 1"
            )),
        }
    }
}

impl std::fmt::Display for KeySpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.accounts, self.symbols)
    }
}

/// How the matrix's events reach the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Case {
    /// PUBLISH as fast as Redis takes it.
    #[value(name = "pubsub")]
    PubSub,
    /// XADDed before the daemon starts; timed from its consumer group's creation.
    Drain,
    /// XADD as fast as Redis takes it, the daemon reading.
    Stream,
    /// PUBLISH with transport.journal = true.
    Journal,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::PubSub => "pub/sub burst",
            Case::Drain => "stream drain",
            Case::Stream => "stream while publishing",
            Case::Journal => "pub/sub + journal",
        }
    }
}

/// The streams' entry field, as the daemon's default `streams.field`.
const STREAM_FIELD: &str = "event";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let databases = Databases::new(&args);
    let result = run(&args, &databases).await;
    // Whatever happened, leave no database behind (a daemon still running was killed when its
    // Child was dropped: kill_on_drop).
    let cleanup = databases.drop_all().await;
    result.and(cleanup)
}

async fn run(args: &Args, databases: &Databases) -> anyhow::Result<()> {
    let binary = daemon_binary(args)?;
    let started = Instant::now();
    databases.make_template().await?;
    find_postmaster(&args.database_url).await?;
    if args.pg_stat_statements {
        pg_stat::setup(&args.database_url).await?;
    }
    if !args.matrix_only {
        bench(args, databases, &binary).await?;
    }
    if !args.key_spaces.is_empty() && !args.cases.is_empty() {
        matrix(args, databases, &binary).await?;
    }
    println!("\nwhole run: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The bench's databases: a migrated template, and clones of it made and dropped per run.
struct Databases {
    admin_url: String,
    template: String,
    prefix: String,
    /// Every database made and not dropped yet.
    made: Mutex<Vec<String>>,
}

impl Databases {
    fn new(args: &Args) -> Self {
        let prefix = format!("bench_sync_{}", std::process::id());
        Databases {
            admin_url: args.database_url.clone(),
            template: format!("{prefix}_tpl"),
            prefix,
            made: Mutex::new(Vec::new()),
        }
    }

    fn url(&self, db: &str) -> anyhow::Result<String> {
        database_url(&self.admin_url, db)
    }

    /// Migrating once and cloning costs ~0.1 s a run instead of the migrations' seconds.
    async fn make_template(&self) -> anyhow::Result<()> {
        self.made
            .lock()
            .expect("unpoisoned")
            .push(self.template.clone());
        trading_sync::db::migrate::migrate(&DatabaseConfig {
            url: self.url(&self.template)?,
            ..DatabaseConfig::default()
        })
        .await
        .context("while creating the bench's template database")?;
        Ok(())
    }

    /// A fresh migrated database `<prefix>_<name>`; returns its name.
    async fn create(&self, name: &str) -> anyhow::Result<String> {
        let db = format!("{}_{name}", self.prefix);
        self.made.lock().expect("unpoisoned").push(db.clone());
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await?;
        // The template's last session may still be closing: CREATE … TEMPLATE refuses then.
        let mut tries = 0;
        loop {
            match admin
                .batch_execute(&format!(
                    "CREATE DATABASE \"{db}\" TEMPLATE \"{}\"",
                    self.template
                ))
                .await
            {
                Ok(()) => return Ok(db),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("while creating {db}")),
            }
        }
    }

    async fn drop(&self, db: &str) -> anyhow::Result<()> {
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await
            .with_context(|| format!("while dropping {db}"))?;
        self.made.lock().expect("unpoisoned").retain(|d| d != db);
        Ok(())
    }

    async fn drop_all(&self) -> anyhow::Result<()> {
        let made = self.made.lock().expect("unpoisoned").clone();
        for db in made.iter().rev() {
            self.drop(db).await?;
        }
        Ok(())
    }
}

fn daemon_binary(args: &Args) -> anyhow::Result<PathBuf> {
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
    Ok(binary.canonicalize()?)
}

/// `trading-sync run` with the bench's settings: an empty working directory (a ./config.toml
/// of the checkout must not change the figures, nor stop a binary older than it), defaults plus
/// the variables below and `extra`.
struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    workdir: PathBuf,
}

fn spawn_daemon(
    binary: &Path,
    args: &Args,
    prefix: &str,
    database_url: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Daemon> {
    let workdir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&workdir)?;
    let mut command = tokio::process::Command::new(binary);
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
    for (variable, value) in extra {
        command.env(variable, value);
    }
    let child = command
        .arg("run")
        .current_dir(&workdir)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", &args.redis_url)
        .env("TRADING_SYNC__REDIS__CHANNEL_PREFIX", prefix)
        .env("TRADING_SYNC__INDICATORS__ENABLED", "false")
        .env(
            "TRADING_SYNC__SYNC__WRITER_CONNECTIONS",
            args.writer_connections.to_string(),
        )
        .env("TRADING_SYNC__HTTP__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("while starting {}", binary.display()))?;
    let pid = child.id().context("the daemon has no pid")?;
    Ok(Daemon {
        child,
        pid,
        workdir,
    })
}

/// SIGTERM, expecting an exit within 30 s.
async fn stop_daemon(mut daemon: Daemon) -> anyhow::Result<ExitStatus> {
    let pid = daemon.pid;
    let stopped = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(stopped.success(), "kill -TERM {pid} failed");
    let exit = tokio::time::timeout(Duration::from_secs(30), daemon.child.wait())
        .await
        .context("the daemon did not exit within 30 s of SIGTERM")??;
    let _ = std::fs::remove_dir(&daemon.workdir);
    Ok(exit)
}

/// Phases 1–4: the default key space's burst, paced latency and ceiling.
async fn bench(args: &Args, databases: &Databases, binary: &Path) -> anyhow::Result<()> {
    // The workload, generated before anything is timed.
    let mut generator = Generator::new(Spec {
        seed: args.seed,
        id_prefix: "BS".into(),
        duplicate_fraction: args.duplicate_fraction,
        position_every: 1_000,
        bar_every: 500,
        ..Spec::default()
    });
    let burst = generator.generate(args.burst_trades);
    let burst_expected = generator.expected();
    // Paced trades so that all its messages (with republished and side events) last paced_secs.
    let per_trade = 1.0 + args.duplicate_fraction + 1.0 / 1_000.0 + 1.0 / 500.0;
    let paced_trades = (args.paced_rate * args.paced_secs / per_trade) as u64;
    let paced = generator.generate(paced_trades);
    let all_expected = generator.expected();
    let burst_counts = loadgen::published(&burst);

    let daemon_db = databases.create("default").await?;
    let daemon_url = databases.url(&daemon_db)?;
    let client = connect(&daemon_url).await?;
    let environment = environment(&client, args).await?;

    let prefix = format!("{}_default", databases.prefix);
    let mut daemon = spawn_daemon(binary, args, &prefix, &daemon_url, &[])?;
    let daemon_pid = daemon.pid;
    let mut redis = connect_redis(args).await?;
    wait_subscribed(&mut redis, &prefix, &mut daemon.child).await?;

    // 1. Burst.
    let idle_rss = memory(daemon_pid)?;
    let cpu_before = cpu_seconds(daemon_pid);
    let watcher = {
        let client = connect(&daemon_url).await?;
        let ends = (burst_expected.last_seq, burst_expected.trades);
        tokio::spawn(async move {
            watch_growth(&client, "BS", ends, Duration::from_secs(3), daemon_pid).await
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
    let exit = stop_daemon(daemon).await?;
    drop(client);
    databases.drop(&daemon_db).await?;

    // 4. Ceiling.
    // Small batches of paced trades on top, after the ceiling's own check.
    let small = &paced[..paced.len().min(5_000)];
    let ceiling_db = databases.create("default_ceiling").await?;
    let ceiling = ceiling(
        &databases.url(&ceiling_db)?,
        &burst,
        args.batch,
        args.writer_connections,
        &burst_expected,
        small,
    )
    .await?;
    databases.drop(&ceiling_db).await?;

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
        "ceiling: store::apply_parallel loop, no Redis/JSON",
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
    wait_per_channel(redis, prefix, daemon, "subscribing", |redis, key| {
        Box::pin(async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(key)
                .query_async(redis)
                .await?;
            Ok(n == 1)
        })
    })
    .await
}

/// Whether one channel's key (`<prefix>:<suffix>`) is ready, asked on the bench's connection.
type ChannelCheck = for<'a> fn(
    &'a mut redis::aio::MultiplexedConnection,
    String,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<bool>> + Send + 'a>,
>;

/// Until `ready` holds for each channel's key (`<prefix>:<suffix>`), polling every 1 ms (the
/// stream drain is timed from the groups' creation) for at most 30 s; fails at once if the
/// daemon exits. `waiting_for` names what is awaited.
async fn wait_per_channel(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    daemon: &mut tokio::process::Child,
    waiting_for: &str,
    ready: ChannelCheck,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut done = 0;
        for suffix in ["trades", "positions", "market_data"] {
            done += usize::from(ready(redis, format!("{prefix}:{suffix}")).await?);
        }
        if done == 3 {
            return Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            bail!("the daemon exited before {waiting_for}: {status}");
        }
        if Instant::now() > deadline {
            bail!("the daemon was not done {waiting_for} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
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

/// Watches the ledger until it holds trade `last` and then `trades` trades in all: with several
/// writer connections a batch's partitions commit in any order, so the highest id can land
/// before the rest of its batch.
async fn watch_growth(
    client: &tokio_postgres::Client,
    prefix: &str,
    (last, trades): (u64, u64),
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
        if max >= Some(last) && loadgen::applied_count(client, prefix).await? >= trades {
            growth.completed = Some(Instant::now());
            return Ok(growth);
        }
        if now.duration_since(growth.last_growth) > stall {
            return Ok(growth);
        }
        // Every 10 ms, not faster: while a batch is in flight its uncommitted index entries sit
        // at the top of the ledger's key, and each max(trade_id) walks past them (measured at
        // 2 ms: ~3.7 ms and ~275 buffers a call, a visible share of PostgreSQL's CPU). 10 ms is
        // 0.2% of a 5 s run.
        tokio::time::sleep(Duration::from_millis(10)).await;
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

fn inbound(chunk: &[Message]) -> Vec<Inbound> {
    chunk
        .iter()
        .map(|m| Inbound::new(channel_kind(m.channel), m.payload.clone()))
        .collect()
}

/// The messages cut into batches of `batch` and each decoded and planned, as the writer does;
/// and how long that took on one thread.
fn plan_batches(messages: &[Message], batch: usize) -> (Vec<fold::BatchPlan>, f64) {
    let limits = DecodeLimits::default();
    let batches: Vec<Vec<Inbound>> = messages.chunks(batch.max(1)).map(inbound).collect();
    let planning = Instant::now();
    let plans = batches.iter().map(|b| fold::plan(b, &limits)).collect();
    (plans, planning.elapsed().as_secs_f64())
}

/// The ceiling's loop: `store::apply_parallel` of each plan, back to back on `sessions` (the
/// daemon's writer connections), as the writer does with nothing else to wait for. Seconds and
/// CPU used.
async fn apply_plans(
    sessions: &mut [(tokio_postgres::Client, Statements)],
    plans: &[fold::BatchPlan],
) -> anyhow::Result<(f64, CpuSample)> {
    let before = cpu_seconds(std::process::id());
    let started = Instant::now();
    for plan in plans {
        let committed = std::sync::Mutex::new(store::Applied::default());
        store::apply_parallel(sessions, plan, &committed).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((secs, cpu_seconds(std::process::id()).since(&before)))
}

/// `count` connections with the writer's prepared statements.
async fn sessions(
    url: &str,
    count: usize,
) -> anyhow::Result<Vec<(tokio_postgres::Client, Statements)>> {
    let mut sessions = Vec::new();
    for _ in 0..count.max(1) {
        let client = connect(url).await?;
        let stmts = Statements::prepare(&client).await?;
        sessions.push((client, stmts));
    }
    Ok(sessions)
}

/// The burst's batches, planned up front, applied back to back with the daemon's own SQL.
async fn ceiling(
    url: &str,
    messages: &[Message],
    batch: usize,
    connections: usize,
    expected: &Expected,
    small: &[Message],
) -> anyhow::Result<Ceiling> {
    let limits = DecodeLimits::default();
    let (plans, plan_secs) = plan_batches(messages, batch);
    let mut sessions = sessions(url, connections).await?;
    let (secs, cpu) = apply_plans(&mut sessions, &plans).await?;
    let (client, stmts) = &mut sessions[0];
    let report = loadgen::verify(client, expected).await?;

    let small_size = 25;
    let mut ms: Vec<f64> = Vec::new();
    for chunk in small.chunks(small_size) {
        let plan = fold::plan(&inbound(chunk), &limits);
        let at = Instant::now();
        store::apply(client, stmts, &plan).await?;
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

/// The bench's PostgreSQL server process, when it runs on this machine: only it and its
/// children count as "postgres"; another cluster's processes (other work sharing the machine)
/// count as "other".
static POSTMASTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

async fn find_postmaster(url: &str) -> anyhow::Result<()> {
    let client = connect(url).await?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    // A remote server's pid means nothing here: then every postgres process counts.
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap_or_default();
    let ppid = stat.rsplit_once(')').and_then(|(head, tail)| {
        head.ends_with("(postgres")
            .then(|| tail.split_whitespace().nth(1)?.parse::<u32>().ok())?
    });
    if let Some(ppid) = ppid {
        let _ = POSTMASTER.set(ppid);
    }
    Ok(())
}

/// CPU seconds (user + system) by process group: the daemon (`main`), the bench's PostgreSQL
/// server, redis-server, this bench, and everything else.
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
        let ticks = |i: usize| ticks_field(&fields, i);
        // utime and stime are fields 14 and 15 of stat; tail starts at field 3 (ppid: 4).
        let secs = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
        let group = if pid == main && main != me {
            "daemon"
        } else if pid == me {
            "bench"
        } else if comm == "postgres"
            && POSTMASTER
                .get()
                .is_none_or(|pm| pid == *pm || ticks_field(&fields, 1) == f64::from(*pm))
        {
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

fn ticks_field(fields: &[&str], i: usize) -> f64 {
    fields
        .get(i)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(0.0)
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

// ---------------------------------------------------------------------------------------------
// The key-space matrix

/// One transport run of the matrix.
struct CaseRun {
    /// Distinct trades in the ledger / first publish (or the group's creation) → ledger complete.
    rate: f64,
    secs: f64,
    completed: bool,
    /// Messages/s of the publisher alone (0 for the drain: published before the start).
    publisher_rate: f64,
    report: Report,
    cpu: CpuSample,
    peak_rss_mib: f64,
    exit: ExitStatus,
    statements: Vec<String>,
}

/// One ceiling run of the matrix.
struct CeilingRun {
    rate: f64,
    cpu: CpuSample,
    report: Report,
    statements: Vec<String>,
}

/// Phase 5: every key space × every transport, each beside its ceiling.
async fn matrix(args: &Args, databases: &Databases, binary: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut details = Vec::new();
    let mut n = 0;
    for key_space in &args.key_spaces {
        // Trades only and position snapshots: no bars. The streams case reads each channel's
        // key on its own, so a bar could be applied before the trades that create the rows it
        // marks; which rows it marks would then depend on the transport, not the daemon.
        let mut generator = Generator::new(Spec {
            seed: args.seed,
            id_prefix: "KS".into(),
            duplicate_fraction: args.duplicate_fraction,
            position_every: 1_000,
            bar_every: 0,
            accounts: key_space.accounts,
            symbols: key_space.symbols,
            strategies: args.strategies,
        });
        let universe = generator.universe_rows();
        let messages = generator.generate(args.case_trades);
        let expected = generator.expected();
        let (plans, plan_secs) = plan_batches(&messages, args.batch);
        let rows_per_batch = plans
            .iter()
            .map(|p| fold::fold(p.trades.iter()).portfolio.len())
            .sum::<usize>() as f64
            / plans.len().max(1) as f64;
        let label = format!(
            "{key_space} ({universe} rows, {} touched; {rows_per_batch:.0} per batch)",
            expected.portfolio.len()
        );
        eprintln!(
            "bench_sync: key space {label}: {} messages ({:.1} MB), planned in {plan_secs:.2} s",
            messages.len(),
            messages.iter().map(|m| m.payload.len()).sum::<usize>() as f64 / 1e6
        );
        for &case in &args.cases {
            n += 1;
            let run = run_case(args, databases, binary, case, n, &messages, &expected).await?;
            let ceiling = run_ceiling(args, databases, n, &plans, &expected).await?;
            let ratio = 100.0 * run.rate / ceiling.rate;
            let line = format!(
                "| {label} | {} | {:.0}{} | {:.0} | {ratio:.0}% | {} / {} | {} | {} |",
                case.label(),
                run.rate,
                if run.completed { "" } else { " (INCOMPLETE)" },
                ceiling.rate,
                run.report.lost,
                run.report.duplicated,
                cpu_columns(&run.cpu, &["daemon", "postgres", "redis", "other"]),
                cpu_columns(&ceiling.cpu, &["bench", "postgres", "other"]),
            );
            eprintln!(
                "bench_sync: {line} {:.2} s, publisher {:.0} msg/s, peak RSS {:.1} MiB, {}",
                run.secs, run.publisher_rate, run.peak_rss_mib, run.exit
            );
            lines.push(line);
            for (name, report) in [("run", &run.report), ("ceiling", &ceiling.report)] {
                if !report.is_exact() {
                    details.push(format!("{key_space} {} {name}: {report}", case.label()));
                }
            }
            if !run.exit.success() {
                details.push(format!(
                    "{key_space} {}: the daemon exited with {} after SIGTERM",
                    case.label(),
                    run.exit
                ));
            }
            for (name, statements) in [
                ("daemon", &run.statements),
                ("ceiling", &ceiling.statements),
            ] {
                if !statements.is_empty() {
                    details.push(format!(
                        "{key_space} {} {name}, pg_stat_statements (ms total, calls, rows, \
                         ms/call; statement):\n  {}",
                        case.label(),
                        statements.join("\n  ")
                    ));
                }
            }
        }
    }
    println!();
    println!(
        "key-space matrix: {} trades per run (+{:.0}% republished, 1 position per 1,000), \
         batches of {}, queue {} MiB; {:.0} s",
        args.case_trades,
        args.duplicate_fraction * 100.0,
        args.batch,
        args.queue_mib,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| accounts×symbols | transport | trades/s | ceiling trades/s | run / ceiling | \
         lost / dup | run CPU s: daemon / pg / redis / other | ceiling CPU s: bench / pg / other |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for line in &lines {
        println!("{line}");
    }
    for detail in &details {
        println!("\n{detail}");
    }
    Ok(())
}

fn cpu_columns(cpu: &CpuSample, groups: &[&str]) -> String {
    groups
        .iter()
        .map(|g| format!("{:.1}", cpu.0.get(g).copied().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The daemon through one transport: from the first publish (for the drain, from the moment
/// its consumer group exists, i.e. it starts reading) until the ledger holds the last trade.
async fn run_case(
    args: &Args,
    databases: &Databases,
    binary: &Path,
    case: Case,
    n: usize,
    messages: &[Message],
    expected: &Expected,
) -> anyhow::Result<CaseRun> {
    let db = databases.create(&format!("run{n}")).await?;
    let url = databases.url(&db)?;
    let prefix = format!("{}_run{n}", databases.prefix);
    let room = (args.queue_mib * 1024 * 1024).to_string();
    let mut env = vec![("TRADING_SYNC__SYNC__QUEUE_MAX_BYTES", room.clone())];
    match case {
        Case::PubSub => {}
        Case::Drain | Case::Stream => {
            for channel in ["TRADES", "POSITIONS", "MARKET_DATA"] {
                env.push((transport_variable(channel), "stream".into()));
            }
        }
        Case::Journal => {
            env.push(("TRADING_SYNC__TRANSPORT__JOURNAL", "true".into()));
            env.push(("TRADING_SYNC__JOURNAL__BUFFER_MAX_BYTES", room));
        }
    }
    let mut redis = connect_redis(args).await?;
    if case == Case::Drain {
        loadgen::xadd_burst(&mut redis, &prefix, STREAM_FIELD, messages, 256).await?;
    }
    let client = connect(&url).await?;
    if args.pg_stat_statements {
        pg_stat::reset(&client).await?;
    }
    let mut daemon = spawn_daemon(binary, args, &prefix, &url, &env)?;
    match case {
        Case::PubSub | Case::Journal => {
            wait_subscribed(&mut redis, &prefix, &mut daemon.child).await?;
        }
        Case::Drain | Case::Stream => wait_groups(&mut redis, &prefix, &mut daemon.child).await?,
    }
    let cpu_before = cpu_seconds(daemon.pid);
    let watcher = {
        let client = connect(&url).await?;
        let (ends, pid) = ((expected.last_seq, expected.trades), daemon.pid);
        tokio::spawn(
            async move { watch_growth(&client, "KS", ends, Duration::from_secs(5), pid).await },
        )
    };
    let started = Instant::now();
    match case {
        Case::PubSub | Case::Journal => {
            loadgen::publish_burst(&mut redis, &prefix, messages, 256).await?;
        }
        Case::Stream => {
            loadgen::xadd_burst(&mut redis, &prefix, STREAM_FIELD, messages, 256).await?;
        }
        Case::Drain => {}
    }
    let published_in = started.elapsed().as_secs_f64();
    let growth = watcher.await??;
    let rss = memory(daemon.pid)?;
    let cpu = growth.cpu_at_last_growth.since(&cpu_before);
    let secs = growth.last_growth.duration_since(started).as_secs_f64();
    // Republications published after the last new trade are still owed a (no-op) commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = loadgen::verify(&client, expected).await?;
    let statements = if args.pg_stat_statements {
        pg_stat::top(&client).await?
    } else {
        Vec::new()
    };
    let exit = stop_daemon(daemon).await?;
    let mut keys: Vec<String> = ["trades", "positions", "market_data", "journal"]
        .iter()
        .map(|k| format!("{prefix}:{k}"))
        .collect();
    keys.dedup();
    let () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
    drop(client);
    databases.drop(&db).await?;
    Ok(CaseRun {
        rate: report.trades_in_ledger as f64 / secs,
        secs,
        completed: growth.completed.is_some(),
        publisher_rate: if case == Case::Drain {
            0.0
        } else {
            messages.len() as f64 / published_in
        },
        report,
        cpu,
        peak_rss_mib: rss.hwm_kib as f64 / 1024.0,
        exit,
        statements,
    })
}

fn transport_variable(channel: &str) -> &'static str {
    match channel {
        "TRADES" => "TRADING_SYNC__TRANSPORT__TRADES",
        "POSITIONS" => "TRADING_SYNC__TRANSPORT__POSITIONS",
        _ => "TRADING_SYNC__TRANSPORT__MARKET_DATA",
    }
}

/// The ceiling of a matrix run: its workload's plans through `store::apply_parallel` on a fresh
/// database, with the daemon's writer connections.
async fn run_ceiling(
    args: &Args,
    databases: &Databases,
    n: usize,
    plans: &[fold::BatchPlan],
    expected: &Expected,
) -> anyhow::Result<CeilingRun> {
    let db = databases.create(&format!("ceiling{n}")).await?;
    let mut sessions = sessions(&databases.url(&db)?, args.writer_connections).await?;
    if args.pg_stat_statements {
        pg_stat::reset(&sessions[0].0).await?;
    }
    let (secs, cpu) = apply_plans(&mut sessions, plans).await?;
    let client = &sessions[0].0;
    let statements = if args.pg_stat_statements {
        pg_stat::top(client).await?
    } else {
        Vec::new()
    };
    let report = loadgen::verify(client, expected).await?;
    drop(sessions);
    databases.drop(&db).await?;
    Ok(CeilingRun {
        rate: expected.trades as f64 / secs,
        cpu,
        report,
        statements,
    })
}

/// Until the daemon's consumer group exists on each channel's stream: it creates them
/// (MKSTREAM) just before its first read.
async fn wait_groups(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    daemon: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    wait_per_channel(
        redis,
        prefix,
        daemon,
        "creating its consumer groups",
        |redis, key| {
            Box::pin(async move {
                // An error (no such key yet) counts as not ready.
                let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query_async(redis)
                    .await;
                Ok(groups.is_ok_and(|g| !g.is_empty()))
            })
        },
    )
    .await
}

/// pg_stat_statements, per bench database: reset before a run, its top statements after.
mod pg_stat {
    use anyhow::Context;

    pub async fn setup(admin_url: &str) -> anyhow::Result<()> {
        let client = super::connect(admin_url).await?;
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .context("pg_stat_statements is not available")?;
        client
            .query_one("SELECT count(*) FROM pg_stat_statements", &[])
            .await
            .context("pg_stat_statements is not in shared_preload_libraries")?;
        Ok(())
    }

    /// The extension lives in the admin database; its figures are cluster-wide, filtered by
    /// database here, so any connection to the cluster can read and reset them.
    pub async fn reset(client: &tokio_postgres::Client) -> anyhow::Result<()> {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await?;
        client
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await?;
        Ok(())
    }

    pub async fn top(client: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
        let rows = client
            .query(
                "SELECT round(total_exec_time::numeric, 0)::text, calls, rows, \
                        round((total_exec_time / greatest(calls, 1))::numeric, 2)::text, \
                        shared_blks_hit + shared_blks_read, shared_blks_dirtied, wal_bytes::text, \
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 70) \
                 FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 ORDER BY total_exec_time DESC LIMIT 8",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                format!(
                    "{:>7} ms {:>6} calls {:>8} rows {:>8} ms/call; blocks {} dirtied {} \
                     WAL {} B; {}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, String>(3),
                    r.get::<_, i64>(4),
                    r.get::<_, i64>(5),
                    r.get::<_, String>(6),
                    r.get::<_, String>(7),
                )
            })
            .collect())
    }
}
