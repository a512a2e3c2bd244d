//! Failover to a promoted primary: a private primary with a synchronous streaming standby; the
//! daemon (a child process, trades as a stream) is given both hosts in `database.url` with
//! `target_session_attrs=read-write`. Mid-load the primary is stopped the way a crash stops it
//! (`pg_ctl stop -m immediate`), the standby is refused as read-only until it is promoted, then
//! promoted. The daemon must find the new primary by itself and end with every trade applied
//! exactly once, every entry acknowledged, and `/readyz` at 200 again (the pool's connections
//! to the dead host discarded).

use crate::common;

use std::time::{Duration, Instant};

use common::process::{free_port, http_get, Daemon};
use common::servers::PgServers;
use common::{connect, eventually, unique_name};
use trading_sync::config::DatabaseConfig;

/// Trades published, and at what rate: the load spans the failover (a few seconds) so that
/// batches are in flight when the primary dies and entries keep arriving while it is gone.
const TRADES: u64 = 6_000;
const RATE: f64 = 2_000.0;
/// The primary is stopped once this many trades are committed on it.
const KILL_AFTER: u64 = 1_500;

const LEDGER_COUNT: &str = "SELECT count(*) FROM analytics.applied_trades";
/// On a standby: it has replayed every WAL record it received (and flushed).
const REPLAYED_ALL: &str =
    "SELECT COALESCE(pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(), false)";

/// XADDs `messages` to `<prefix>:trades` at `rate` per second, in one pipeline per 10 ms tick.
fn spawn_paced_stream_publisher(
    key: String,
    messages: Vec<loadgen::Message>,
    rate: f64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = loadgen::connect_redis(&common::redis_url()).await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (start, mut sent) = (Instant::now(), 0);
        while sent < messages.len() {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(messages.len());
            if due <= sent {
                continue;
            }
            let mut pipe = redis::pipe();
            for m in &messages[sent..due] {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("event")
                    .arg(&m.payload)
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
            sent = due;
        }
    })
}

async fn count(client: &tokio_postgres::Client) -> Option<u64> {
    let n: i64 = client.query_one(LEDGER_COUNT, &[]).await.ok()?.get(0);
    Some(n as u64)
}

/// The daemon's JSON log lines whose message starts with `message`, fields flattened or not.
fn lines_starting(daemon: &Daemon, message: &str) -> Vec<serde_json::Value> {
    daemon
        .logs()
        .into_iter()
        .map(|line| line.get("fields").cloned().unwrap_or(line))
        .filter(|fields| {
            fields
                .get("message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

#[tokio::test]
async fn the_daemon_follows_a_promoted_standby_losing_and_duplicating_nothing() {
    let Some(servers) = PgServers::new("ts_failover", &["initdb", "pg_ctl", "pg_basebackup"])
    else {
        return;
    };
    let (primary_port, standby_port) = (free_port(), free_port());
    let url =
        |port: u16, database: &str| format!("postgres://postgres@127.0.0.1:{port}/{database}");
    servers.initdb("primary");
    servers.start("primary", primary_port, &[]);
    trading_sync::db::migrate::migrate(&DatabaseConfig {
        url: url(primary_port, "trading"),
        ..DatabaseConfig::default()
    })
    .await
    .expect("migrating the throwaway primary");
    servers.base_backup(primary_port, "standby");
    servers.start("standby", standby_port, &[]);
    // Synchronous from here on, set on the primary alone (after the copy): the promoted standby
    // must not wait for a standby of its own.
    let admin = connect(&url(primary_port, "postgres")).await;
    admin
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    eventually(
        "the standby streaming synchronously",
        Duration::from_secs(20),
        || async {
            let state: Option<String> = admin
                .query_opt("SELECT sync_state FROM pg_stat_replication", &[])
                .await
                .unwrap()
                .map(|r| r.get(0));
            (state.as_deref() == Some("sync")).then_some(())
        },
    )
    .await;
    drop(admin);

    let both = format!(
        "postgres://postgres@127.0.0.1:{primary_port},127.0.0.1:{standby_port}/trading\
         ?target_session_attrs=read-write"
    );
    let prefix = unique_name("ts_failover");
    let key = format!("{prefix}:trades");
    let env: Vec<(&str, String)> = vec![
        ("TRADING_SYNC__TRANSPORT__TRADES", "stream".into()),
        ("TRADING_SYNC__STREAMS__CONSUMER", "failover".into()),
        ("TRADING_SYNC__STREAMS__BLOCK_MS", "200".into()),
        // The default backoff cap, so the measured time is the one a default install gets.
        (
            "TRADING_SYNC__REDIS__RECONNECT_MAX_BACKOFF_MS",
            "5000".into(),
        ),
        // The writer's retries (debug) name the error of each attempt; http=info gives the port.
        (
            "RUST_LOG",
            "warn,trading_sync::apply=debug,trading_sync::daemon::http=info".into(),
        ),
    ];
    let mut daemon = Daemon::start_on_url(&both, &common::redis_url(), &prefix, &env);
    let port = daemon.port().await;
    let ready = || async move {
        let (code, _) = http_get(port, "/readyz").await?;
        (code == 200).then_some(())
    };
    eventually("the daemon ready", Duration::from_secs(20), ready).await;

    let mut generator = loadgen::Generator::new(loadgen::Spec {
        seed: 12,
        id_prefix: "FO".into(),
        position_every: 0,
        bar_every: 0,
        ..Default::default()
    });
    let messages = generator.generate(TRADES);
    let expected = generator.expected();
    let publisher = spawn_paced_stream_publisher(key.clone(), messages, RATE);

    let primary = connect(&url(primary_port, "trading")).await;
    eventually(
        "trades committed on the first primary",
        Duration::from_secs(20),
        || async { (count(&primary).await? >= KILL_AFTER).then_some(()) },
    )
    .await;
    drop(primary);
    let died = Instant::now();
    servers.stop_immediate("primary");
    let standby = connect(&url(standby_port, "trading")).await;
    // Synchronous commit waits for the standby's flush, not its replay: what it received is
    // replayed first, then its ledger is every commit the daemon saw acknowledged.
    eventually(
        "the standby replaying all it received",
        Duration::from_secs(10),
        || async {
            let row = standby.query_one(REPLAYED_ALL, &[]).await.ok()?;
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await;
    let at_death = count(&standby).await.expect("the standby answers");
    // Before promotion the standby is reached and refused (read-only), and that is retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("database does not allow writes") {
        assert!(
            Instant::now() < deadline,
            "the writer was not refused by the read-only standby within 10 s:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers.promote("standby");
    let promoted = died.elapsed();
    let first_commit = eventually(
        "the first commit on the new primary",
        Duration::from_secs(15),
        || async { (count(&standby).await? > at_death).then(|| died.elapsed()) },
    )
    .await;

    publisher.await.unwrap();
    eventually(
        "every trade on the new primary",
        Duration::from_secs(20),
        || async {
            (loadgen::ledger_count(&standby, &expected).await.ok()? >= TRADES).then_some(())
        },
    )
    .await;
    let report = loadgen::verify(&standby, &expected).await.unwrap();
    assert!(report.is_exact(), "{report}");
    assert_eq!(
        (report.trades_in_ledger, report.lost, report.duplicated),
        (TRADES, 0, 0),
        "{report}"
    );
    eventually(
        "every entry acknowledged",
        Duration::from_secs(10),
        || async {
            (common::stream_pending(&mut redis_conn().await, &key).await == 0).then_some(())
        },
    )
    .await;
    // The pool's connections to the dead host are discarded and replaced through the list.
    eventually("/readyz at 200 again", Duration::from_secs(10), ready).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited: {}",
        daemon.log_text()
    );
    // The writer says where it went.
    let reached: Vec<String> = lines_starting(&daemon, "the writer is connected to PostgreSQL")
        .iter()
        .filter_map(|l| Some(l.get("server")?.as_str()?.to_owned()))
        .collect();
    assert_eq!(
        reached.first().zip(reached.last()),
        Some((
            &format!("127.0.0.1:{primary_port}"),
            &format!("127.0.0.1:{standby_port}")
        )),
        "{reached:?}"
    );
    let back = lines_starting(&daemon, "database available again");
    let down_ms = back
        .first()
        .and_then(|l| l.get("down_ms")?.as_u64())
        .unwrap_or_else(|| panic!("no recovery line:\n{}", daemon.log_text()));
    eprintln!(
        "failover: primary stopped (-m immediate) with {at_death} of {TRADES} trades committed; \
         standby promoted {} ms after the primary's death; first commit on the new primary \
         {} ms after the death ({} ms after the promotion); writer down {down_ms} ms; \
         {report}",
        promoted.as_millis(),
        first_commit.as_millis(),
        first_commit.saturating_sub(promoted).as_millis(),
    );

    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(20)).success());
    common::delete_keys(&[&key]).await;
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    loadgen::connect_redis(&common::redis_url()).await.unwrap()
}
