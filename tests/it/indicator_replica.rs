//! The indicator job with `database.replica_url`: bars read on the replica, everything else on
//! the primary, and the results of a primary-only run — with the "replica" being the primary
//! itself, unreachable, and a real streaming standby (paused, then replaying).

use crate::common;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use metrics_exporter_prometheus::PrometheusHandle;
use rust_decimal::prelude::*;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use trading_sync::config::{Config, DatabaseConfig};
use trading_sync::db::Connector;
use trading_sync::indicators::job::{self, JobSettings, Mode, RunSummary, Selection};
use trading_sync::indicators::replica::ReplicaSettings;

use common::process::free_port;
use common::servers::PgServers;
use common::{connect, eventually, TestDb};

/// Symbols and their bar counts: a long series, shorter ones, one too short for most columns.
const SERIES: [(&str, usize); 5] = [
    ("AAA", 260),
    ("BBB", 120),
    ("CCC", 60),
    ("DDD", 30),
    ("EEE", 10),
];

fn settings(replica: Option<ReplicaSettings>) -> JobSettings {
    JobSettings {
        // Several chunks over two connections for a handful of symbols.
        incremental_chunk: 3,
        full_chunk: 2,
        replica,
        ..JobSettings::default()
    }
}

fn weekday(n: usize) -> NaiveDate {
    let mut day = NaiveDate::from_ymd_opt(2023, 1, 2).unwrap();
    let mut seen = 0;
    loop {
        if day.weekday().number_from_monday() <= 5 {
            if seen == n {
                return day;
            }
            seen += 1;
        }
        day = day.succ_opt().unwrap();
    }
}

/// A deterministic random walk: (date, close as NUMERIC(15,4) text, volume) of bars `from..to`.
fn bars(seed: u64, from: usize, to: usize) -> Vec<(NaiveDate, String, i64)> {
    let mut x = seed | 1;
    let mut c = 100.0_f64;
    let mut out = Vec::new();
    for i in 0..to {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c *= (0.04 * ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5)).exp();
        if i >= from {
            let ticks = (c * 10_000.0).round() as i64;
            let close = format!("{}.{:04}", ticks / 10_000, ticks % 10_000);
            out.push((weekday(i), close, 1_000 + (x % 100_000) as i64));
        }
    }
    out
}

async fn insert_bars(client: &Client, symbol: &str, bars: &[(NaiveDate, String, i64)]) {
    let dates: Vec<NaiveDate> = bars.iter().map(|b| b.0).collect();
    let closes: Vec<&str> = bars.iter().map(|b| b.1.as_str()).collect();
    let volumes: Vec<i64> = bars.iter().map(|b| b.2).collect();
    client
        .execute(
            "INSERT INTO data_ingestion.market_data
                 (symbol, \"timestamp\", open, high, low, close, volume)
             SELECT $1, b.d::timestamp AT TIME ZONE 'America/New_York',
                    b.c::numeric, b.c::numeric, b.c::numeric, b.c::numeric, b.v
               FROM unnest($2::date[], $3::text[], $4::bigint[]) AS b(d, c, v)",
            &[&symbol, &dates, &closes, &volumes],
        )
        .await
        .unwrap();
}

/// The five symbols with their first bars.
async fn write_history(client: &Client) {
    for (i, (symbol, n)) in SERIES.iter().enumerate() {
        client
            .execute(
                "INSERT INTO data_ingestion.symbols (symbol) VALUES ($1)",
                &[symbol],
            )
            .await
            .unwrap();
        insert_bars(client, symbol, &bars(i as u64 + 1, 0, *n)).await;
    }
}

/// Five new bars for AAA and BBB (appends) and a revised close 40 bars back in CCC (a
/// recompute); DDD and EEE unchanged.
async fn write_changes(client: &Client) {
    for (i, (symbol, n)) in SERIES.iter().enumerate().take(2) {
        insert_bars(client, symbol, &bars(i as u64 + 1, *n, n + 5)).await;
    }
    let n = client
        .execute(
            "UPDATE data_ingestion.market_data
                SET close = close * 1.5, open = open * 1.5, high = high * 1.5, low = low * 1.5
              WHERE symbol = 'CCC' AND (\"timestamp\" AT TIME ZONE 'America/New_York')::date = $1",
            &[&weekday(SERIES[2].1 - 40)],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// Everything the job writes, as text: rows, latest rows, states, and change rows left.
async fn dump(client: &Client) -> Vec<String> {
    common::first_column(
        client,
        "SELECT 'row ' || (to_jsonb(t) - 'id' - 'created_at' - 'updated_at')::text
               FROM analytics.technical_indicators t
             UNION ALL
             SELECT 'latest ' || (to_jsonb(l) - 'updated_at')::text
               FROM analytics.technical_indicators_latest l
             UNION ALL
             SELECT 'state ' || (to_jsonb(s) - 'updated_at')::text FROM analytics.indicator_state s
             UNION ALL
             SELECT 'change ' || symbol FROM analytics.indicator_bar_changes
             ORDER BY 1",
    )
    .await
}

/// The dump's real content, not only its equality with another: a row per bar, no change row
/// left, and AAA's last sma_20 the exact mean of its last 20 closes (within NUMERIC rounding).
async fn assert_computed(client: &Client, dump: &[String], changed: bool) {
    let extra = |i: usize| if changed && i < 2 { 5 } else { 0 };
    let rows = SERIES
        .iter()
        .enumerate()
        .map(|(i, (_, n))| n + extra(i))
        .sum::<usize>();
    assert_eq!(dump.iter().filter(|l| l.starts_with("row ")).count(), rows);
    assert_eq!(dump.iter().filter(|l| l.starts_with("state ")).count(), 5);
    assert!(!dump.iter().any(|l| l.starts_with("change ")), "{dump:?}");
    let n = SERIES[0].1 + extra(0);
    let exact = bars(1, n - 20, n)
        .iter()
        .map(|b| Decimal::from_str(&b.1).unwrap())
        .sum::<Decimal>()
        / Decimal::from(20);
    let sma_20: String = client
        .query_one(
            "SELECT sma_20::text FROM analytics.technical_indicators
              WHERE symbol = 'AAA' ORDER BY date DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let sma_20 = Decimal::from_str(&sma_20).unwrap();
    assert!(
        (sma_20 - exact).abs() <= Decimal::new(50_001, 9),
        "{sma_20} vs {exact}"
    );
}

async fn run(pg: &Connector, replica: Option<ReplicaSettings>) -> RunSummary {
    let s = job::run_once(
        pg,
        &settings(replica),
        &Selection::All,
        Mode::Incremental,
        &CancellationToken::new(),
    )
    .await
    .expect("indicator run");
    assert_eq!(s.failures, 0, "{s:?}");
    s
}

/// A summary without what depends on where bars were read, or on time.
fn outcome(s: &RunSummary) -> RunSummary {
    RunSummary {
        replica_reads: 0,
        replica_fallbacks: 0,
        duration: Duration::ZERO,
        ..s.clone()
    }
}

fn replica(url: &str, primary: &Connector, max_wait: Duration) -> ReplicaSettings {
    ReplicaSettings {
        pg: connector(url),
        primary: primary.clone(),
        max_wait,
    }
}

/// The daemon's way to `url`, as built from `database.url`.
fn connector(url: &str) -> Connector {
    Connector::primary(&DatabaseConfig {
        url: url.into(),
        ..DatabaseConfig::default()
    })
    .unwrap()
}

/// The process's metrics, rendered as Prometheus text: the library's one recorder, shared with
/// the daemons other tests of this binary start.
fn prometheus() -> &'static PrometheusHandle {
    trading_sync::telemetry::prometheus()
}

fn counter(line_prefix: &str) -> u64 {
    prometheus()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Log output of the current thread (the test runtime's only thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Warnings and errors into `logs`, one line each.
fn warnings(logs: &Logs) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish()
}

#[tokio::test]
async fn replica_url_naming_the_primary_itself_gives_identical_results() {
    let (plain, read_here) = (TestDb::new().await, TestDb::new().await);
    let mut config = Config::default();
    config.database = read_here.config();
    config.database.replica_url = Some(read_here.url.clone());
    let replica = ReplicaSettings::from_config(&config)
        .unwrap()
        .expect("replica settings");
    let pg = Connector::primary(&config.database).unwrap();
    for db in [&plain, &read_here] {
        write_history(&db.client).await;
    }

    let base = run(&Connector::primary(&plain.config()).unwrap(), None).await;
    let got = run(&pg, Some(replica.clone())).await;
    assert_eq!(outcome(&got), outcome(&base));
    // Five symbols from scratch, two per chunk: three chunks, each read on the "replica".
    assert_eq!((base.replica_reads, base.replica_fallbacks), (0, 0));
    assert_eq!((got.replica_reads, got.replica_fallbacks), (3, 0));
    let want = dump(&plain.client).await;
    assert_computed(&plain.client, &want, false).await;
    assert_eq!(dump(&read_here.client).await, want);

    for db in [&plain, &read_here] {
        write_changes(&db.client).await;
    }
    let base = run(&Connector::primary(&plain.config()).unwrap(), None).await;
    let got = run(&pg, Some(replica.clone())).await;
    assert_eq!(outcome(&got), outcome(&base));
    assert_eq!(
        (base.symbols_computed, base.recomputed_after_revision),
        (3, 1)
    );
    // AAA, BBB and CCC changed; whichever chunks hold them read bars, the other reads none.
    assert!(
        (1..=2).contains(&got.replica_reads) && got.replica_fallbacks == 0,
        "{got:?}"
    );
    let want = dump(&plain.client).await;
    assert_computed(&plain.client, &want, true).await;
    assert_eq!(dump(&read_here.client).await, want);

    // Nothing changed: nothing to read anywhere.
    let got = run(&pg, Some(replica)).await;
    assert_eq!((got.symbols_up_to_date, got.replica_reads), (5, 0));
    assert_eq!(dump(&read_here.client).await, want);
}

#[tokio::test]
async fn unreachable_replica_falls_back_to_the_primary_and_says_so() {
    let (plain, db) = (TestDb::new().await, TestDb::new().await);
    for db in [&plain, &db] {
        write_history(&db.client).await;
    }
    let pg = Connector::primary(&db.config()).unwrap();
    // Port 1: connection refused at once.
    let unreachable = replica(
        &format!("postgres://postgres@127.0.0.1:1/{}", db.name),
        &pg,
        Duration::from_secs(5),
    );
    let metric = "trading_sync_indicator_replica_fallbacks_total{reason=\"connect\"} ";
    let before = counter(metric);
    let logs = Logs::default();
    let got = {
        let _guard = tracing::subscriber::set_default(warnings(&logs));
        run(&pg, Some(unreachable)).await
    };
    let base = run(&Connector::primary(&plain.config()).unwrap(), None).await;
    assert_eq!(outcome(&got), outcome(&base));
    assert_eq!(
        (got.replica_reads, got.replica_fallbacks),
        (0, 3),
        "{got:?}"
    );
    assert!(counter(metric) >= before + 3, "{}", prometheus().render());
    let text = logs.text();
    assert!(
        text.contains("instead of the replica") && text.contains("replica unreachable"),
        "{text}"
    );
    let want = dump(&plain.client).await;
    assert_computed(&plain.client, &want, false).await;
    assert_eq!(dump(&db.client).await, want);
}

/// A throwaway primary with a hot standby made by `pg_basebackup -R`, both on free ports. Not a
/// standby of the shared test cluster: that one holds every other database on the machine
/// (gigabytes with the benchmark's), which pg_basebackup would copy whole.
struct Pair {
    servers: PgServers,
    primary_port: u16,
    standby_port: u16,
}

impl Pair {
    /// None, with the reason printed, when this machine has no PostgreSQL server binaries.
    fn start() -> Option<Pair> {
        let servers = PgServers::new("ts_replica", &["initdb", "pg_ctl", "pg_basebackup"])?;
        let pair = Pair {
            servers,
            primary_port: free_port(),
            standby_port: free_port(),
        };
        pair.servers.initdb("primary");
        pair.servers.start("primary", pair.primary_port, &[]);
        Some(pair)
    }

    /// Copies the primary as it is now into a standby and starts it.
    fn start_standby(&self) {
        self.servers.base_backup(self.primary_port, "standby");
        self.servers.start("standby", self.standby_port, &[]);
    }

    fn url(&self, port: u16, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{database}")
    }
}

#[tokio::test]
async fn streaming_replica_is_read_only_after_replaying_the_chunks_changes() {
    let Some(pair) = Pair::start() else {
        return;
    };
    let primary_url = pair.url(pair.primary_port, "trading");
    trading_sync::db::migrate::migrate(&DatabaseConfig {
        url: primary_url.clone(),
        ..DatabaseConfig::default()
    })
    .await
    .expect("migrating the throwaway primary");
    pair.start_standby();
    let standby_url = pair.url(pair.standby_port, "trading");
    let (primary, standby) = (connect(&primary_url).await, connect(&standby_url).await);
    let pg = connector(&primary_url);
    let plain = TestDb::new().await;
    let plain_pg = Connector::primary(&plain.config()).unwrap();

    // A standby that has not replayed the bars: every chunk waits, then reads the primary.
    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    eventually("replay to pause", Duration::from_secs(10), || async {
        let state: String = standby
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .await
            .unwrap()
            .get(0);
        (state == "paused").then_some(())
    })
    .await;
    write_history(&primary).await;
    write_history(&plain.client).await;
    let stale = replica(&standby_url, &pg, Duration::from_millis(300));
    let logs = Logs::default();
    let got = {
        let _guard = tracing::subscriber::set_default(warnings(&logs));
        run(&pg, Some(stale)).await
    };
    let text = logs.text();
    assert!(text.contains("short of the primary's"), "{text}");
    // Only the three fallbacks: in particular, the flushes the waits asked for worked.
    assert_eq!(text.lines().count(), 3, "{text}");
    let bars_there: i64 = standby
        .query_one("SELECT count(*) FROM data_ingestion.market_data", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bars_there, 0, "the standby was to stay stale");
    assert_eq!(
        (got.replica_reads, got.replica_fallbacks),
        (0, 3),
        "{got:?}"
    );
    // The same standby for a primary of another cluster is refused, not trusted.
    let foreign = replica(&standby_url, &plain_pg, Duration::from_secs(5));
    let base = run(&plain_pg, Some(foreign)).await;
    assert_eq!((base.replica_reads, base.replica_fallbacks), (0, 3));
    assert_eq!(outcome(&got), outcome(&base));
    let want = dump(&plain.client).await;
    assert_computed(&plain.client, &want, false).await;
    assert_eq!(dump(&primary).await, want);

    // Changes written while replay is paused; the run starts waiting for them, replay
    // resumes, and the bars are read on the standby.
    write_changes(&primary).await;
    write_changes(&plain.client).await;
    let waiting = replica(&standby_url, &pg, Duration::from_secs(30));
    let job = tokio::spawn({
        let pg = pg.clone();
        async move { run(&pg, Some(waiting)).await }
    });
    eventually(
        "the job to poll the standby's replay position",
        Duration::from_secs(20),
        || async {
            let n: i64 = standby
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE application_name = 'trading-sync'
                        AND query LIKE '%pg_last_wal_replay_lsn%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n > 0).then_some(())
        },
    )
    .await;
    standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let got = job.await.expect("job task");
    let base = run(&plain_pg, None).await;
    assert_eq!(outcome(&got), outcome(&base));
    assert!(
        got.replica_reads >= 1 && got.replica_fallbacks == 0,
        "{got:?}"
    );
    let want = dump(&plain.client).await;
    assert_computed(&plain.client, &want, true).await;
    assert_eq!(dump(&primary).await, want);
}
