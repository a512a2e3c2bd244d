//! The pub/sub journal (`transport.journal = true`): every pub/sub message is XADDed on receipt
//! and applied from the journal stream, so a PostgreSQL outage or a crash after receipt loses
//! nothing; applied entries are trimmed. Known workloads from the load generator, checked
//! against its own sums: 0 lost, 0 duplicated.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::process::Daemon;
use common::{eventually, publish_counted, spawn_app, subscribers, unique_name, xlen, TestDb};
use loadgen::{Expected, Generator, Spec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamRangeReply};
use trading_sync::config::Config;

fn journal_on(consumer: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.transport.journal = true;
        c.streams.consumer = Some(consumer.to_owned());
        c.streams.block_ms = 200;
        c.journal.trim_interval_ms = 50;
    }
}

/// Trades with republished duplicates, position snapshots and bars, as the publishers send them.
fn generator(seed: u64) -> Generator {
    Generator::new(Spec {
        seed,
        duplicate_fraction: 0.01,
        position_every: 60,
        bar_every: 40,
        ..Spec::default()
    })
}

async fn redis() -> MultiplexedConnection {
    loadgen::connect_redis(&common::redis_url())
        .await
        .expect("redis")
}

async fn wait_for_all(client: &tokio_postgres::Client, expected: &Expected, limit: Duration) {
    eventually("every trade applied", limit, || async {
        let n = loadgen::ledger_count(client, expected).await.ok()?;
        (n == expected.trades).then_some(())
    })
    .await;
}

async fn assert_exact(client: &tokio_postgres::Client, expected: &Expected) {
    let report = loadgen::verify(client, expected).await.unwrap();
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report}");
    assert!(report.is_exact(), "{report}");
}

fn assert_all_delivered(receivers: &[i64]) {
    let missed = receivers.iter().filter(|&&n| n != 1).count();
    assert_eq!(
        missed, 0,
        "PUBLISHes that did not reach exactly one subscriber"
    );
}

#[tokio::test]
async fn journal_holds_what_postgres_cannot_take_and_is_trimmed_once_applied() {
    let app = spawn_app(journal_on("outage")).await;
    let key = app.config.journal_key();
    let mut conn = redis().await;
    let mut g = generator(12);
    let messages = g.generate(3_000);
    let expected = g.expected();

    // PostgreSQL "down" for the writer: its first statement waits on this lock.
    let locker = common::connect(&app.db.url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE analytics.applied_trades IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let receivers = publish_counted(&mut conn, &app.config.redis.channel_prefix, &messages, 500)
        .await
        .unwrap();
    assert_all_delivered(&receivers);
    eventually(
        "every message in the journal",
        Duration::from_secs(30),
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            let want = messages.len() as u64;
            async move { (xlen(&mut conn, &key).await == want).then_some(()) }
        },
    )
    .await;
    // Read through the lock holder: nothing committed, so nothing may have been trimmed.
    assert_eq!(loadgen::ledger_count(&locker, &expected).await.unwrap(), 0);
    assert_eq!(app.state.journal.trimmed.load(Ordering::Relaxed), 0);

    locker.batch_execute("ROLLBACK").await.unwrap();
    wait_for_all(&app.db.client, &expected, Duration::from_secs(60)).await;
    assert_exact(&app.db.client, &expected).await;
    eventually(
        "the journal trimmed to nothing",
        Duration::from_secs(30),
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move { (xlen(&mut conn, &key).await == 0).then_some(()) }
        },
    )
    .await;
    let journal = &app.state.journal;
    assert_eq!(
        journal.appended.load(Ordering::Relaxed),
        messages.len() as u64
    );
    // The trimmer counts what XTRIM removed after the reply, so the count may trail XLEN by
    // a moment; it must then be every message, no more.
    let trimmed = eventually("the trim counted", Duration::from_secs(10), || async {
        let n = journal.trimmed.load(Ordering::Relaxed);
        (n >= messages.len() as u64).then_some(n)
    })
    .await;
    assert_eq!(trimmed, messages.len() as u64);
    assert_eq!(journal.bypassed.load(Ordering::Relaxed), 0);
    app.stop().await.unwrap();
    common::delete_keys(&[&key]).await;
}

#[tokio::test]
async fn journal_on_postgres_backends_terminated_mid_load_lose_and_double_nothing() {
    let app = spawn_app(|c| {
        journal_on("pgkill")(c);
        c.sync.batch_max_events = 200;
        c.sync.batch_max_wait_ms = 2;
    })
    .await;
    let key = app.config.journal_key();
    let mut g = generator(11);
    let messages = g.generate(8_000);
    let expected = g.expected();
    let total = messages.len();
    let prefix = app.config.redis.channel_prefix.clone();
    // Paced at ~10,000 messages/s: the load lasts long enough to be hit several times.
    let publisher = tokio::spawn(async move {
        let mut conn = redis().await;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut receivers = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(100) {
            tick.tick().await;
            receivers.extend(
                publish_counted(&mut conn, &prefix, chunk, 100)
                    .await
                    .unwrap(),
            );
        }
        receivers
    });
    let admin = common::connect(&common::admin_url()).await;
    let mut conn = redis().await;
    let (mut killed, mut longest) = (0usize, 0u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Every 100 ms until the last trade is applied, so the terminations fall on the whole
    // apply phase, not only on the publishing.
    loop {
        let applied = loadgen::ledger_count(&app.db.client, &expected)
            .await
            .unwrap();
        if applied == expected.trades && publisher.is_finished() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{applied} of {} trades applied in 120 s ({killed} connections killed)",
            expected.trades
        );
        killed += admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'trading-sync' \
                   AND pid <> pg_backend_pid()",
                &[&app.db.name],
            )
            .await
            .unwrap()
            .len();
        longest = longest.max(xlen(&mut conn, &key).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed >= 3, "only {killed} connections killed");
    assert_all_delivered(&publisher.await.unwrap());
    assert_exact(&app.db.client, &expected).await;
    eventually("the journal trimmed", Duration::from_secs(30), || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move { (xlen(&mut conn, &key).await == 0).then_some(()) }
    })
    .await;
    assert!(longest > 0, "the journal never held anything");
    assert_eq!(
        app.state.journal.appended.load(Ordering::Relaxed),
        total as u64
    );
    assert_eq!(app.state.journal.bypassed.load(Ordering::Relaxed), 0);
    eprintln!(
        "{} trades ({total} messages), {killed} backends terminated, journal peaked at {longest} entries",
        expected.trades
    );
    app.stop().await.unwrap();
    common::delete_keys(&[&key]).await;
}

async fn wait_subscribers(conn: &mut MultiplexedConnection, prefix: &str, want: i64) {
    eventually(
        &format!("{want} subscriber(s) on every channel"),
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            async move {
                subscribers(&mut conn, prefix)
                    .await
                    .iter()
                    .all(|&n| n == want)
                    .then_some(())
            }
        },
    )
    .await;
}

/// What the journal holds and owes, for a failure message: XLEN, the groups, the pending
/// entries with their consumers, and the first entries left.
async fn journal_state(conn: &mut MultiplexedConnection, key: &str) -> String {
    let show = |cmd: redis::Cmd| {
        let mut conn = conn.clone();
        async move {
            let reply: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
            format!("{reply:?}")
        }
    };
    let mut state = format!("XLEN {}", show(redis::cmd("XLEN").arg(key).clone()).await);
    state += &format!(
        "; XINFO GROUPS {}",
        show(redis::cmd("XINFO").arg("GROUPS").arg(key).clone()).await
    );
    state += &format!(
        "; XPENDING {}",
        show(
            redis::cmd("XPENDING")
                .arg(key)
                .arg("trading-sync")
                .arg("-")
                .arg("+")
                .arg(20)
                .clone()
        )
        .await
    );
    state += &format!(
        "; XRANGE (first 5 ids) {}",
        show(
            redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(5)
                .clone()
        )
        .await
    );
    state
}

/// Waits up to 30 s for the journal to be empty; on timeout the panic shows what is left.
async fn wait_trimmed(conn: &mut MultiplexedConnection, key: &str) {
    let limit = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + limit;
    while xlen(conn, key).await != 0 {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for the journal trimmed: {}",
                journal_state(conn, key).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Environment of a journaling daemon that a test kills and restarts: a fixed consumer name
/// (the successor re-reads its predecessor's pending entries), short blocking reads, no HTTP.
fn killable_daemon_env(consumer: &str, trim_interval_ms: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TRADING_SYNC__TRANSPORT__JOURNAL", "true".into()),
        ("TRADING_SYNC__STREAMS__CONSUMER", consumer.into()),
        ("TRADING_SYNC__STREAMS__BLOCK_MS", "200".into()),
        (
            "TRADING_SYNC__JOURNAL__TRIM_INTERVAL_MS",
            trim_interval_ms.into(),
        ),
        ("TRADING_SYNC__HTTP__ENABLED", "false".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

/// Rounds of load; each ends with a SIGKILL once the round is in the journal: on even rounds
/// while the ledger is locked (nothing of the round committed), on odd rounds at a random point
/// of the writer's progress (some committed, some maybe committed but not acknowledged).
#[tokio::test]
async fn journal_on_daemon_sigkilled_after_receipt_loses_and_doubles_nothing() {
    const ROUNDS: usize = 8;
    const TRADES_PER_ROUND: u64 = 4_000;
    let db = TestDb::new().await;
    let prefix = unique_name("ts_test");
    let key = format!("{prefix}:journal");
    let env = killable_daemon_env("crashy", "100");
    let mut conn = redis().await;
    let mut g = generator(21);
    let mut rng = StdRng::seed_from_u64(7);
    let mut published = 0u64;
    let mut backlogs = Vec::new();
    let mut daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    for round in 0..ROUNDS {
        wait_subscribers(&mut conn, &prefix, 1).await;
        let messages = g.generate(TRADES_PER_ROUND);
        let so_far = g.expected();
        let locker = if round % 2 == 0 {
            let locker = common::connect(&db.url).await;
            locker
                .batch_execute(
                    "BEGIN; LOCK TABLE analytics.applied_trades IN ACCESS EXCLUSIVE MODE",
                )
                .await
                .unwrap();
            Some(locker)
        } else {
            None
        };
        let receivers = publish_counted(&mut conn, &prefix, &messages, 500)
            .await
            .unwrap();
        assert_all_delivered(&receivers);
        published += messages.len() as u64;
        eventually("the round in the journal", Duration::from_secs(30), || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move { (common::entries_added(&mut conn, &key).await >= published).then_some(()) }
        })
        .await;
        let committed = match &locker {
            Some(locker) => loadgen::ledger_count(locker, &so_far).await.unwrap(),
            None => {
                let before = so_far.trades - TRADES_PER_ROUND;
                let target = before + TRADES_PER_ROUND * rng.random_range(5..90) / 100;
                eventually(
                    "the writer part-way through the round",
                    Duration::from_secs(60),
                    || async {
                        let n = loadgen::ledger_count(&db.client, &so_far).await.ok()?;
                        (n >= target).then_some(n)
                    },
                )
                .await
            }
        };
        daemon.kill9();
        let after: u64 = match &locker {
            Some(locker) => loadgen::ledger_count(locker, &so_far).await.unwrap(),
            None => loadgen::ledger_count(&db.client, &so_far).await.unwrap(),
        };
        backlogs.push(so_far.trades - after);
        if let Some(locker) = locker {
            assert_eq!(after, committed, "a commit got past the lock");
            locker.batch_execute("ROLLBACK").await.unwrap();
        }
        // The killed instance's subscription must be gone before the next round is published,
        // or a PUBLISH could count it as a receiver.
        wait_subscribers(&mut conn, &prefix, 0).await;
        daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    }
    let expected = g.expected();
    wait_for_all(&db.client, &expected, Duration::from_secs(180)).await;
    assert_exact(&db.client, &expected).await;
    wait_trimmed(&mut conn, &key).await;
    daemon.sigterm();
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.log_text()
    );
    eprintln!(
        "{} trades ({published} messages), {ROUNDS} SIGKILLs; uncommitted trades at each kill: {backlogs:?}",
        expected.trades
    );
    // Even rounds kill with the whole round uncommitted: the kills did hit received work.
    assert!(backlogs.iter().step_by(2).all(|&b| b >= TRADES_PER_ROUND));
    common::delete_keys(&[&key]).await;
}

/// An instance killed after acknowledging the whole journal but before the trim that its acks
/// scheduled leaves nothing pending: its successor has no journal entry to acknowledge, and
/// must still trim what was left, without waiting for new traffic. The first instance's trim
/// interval is an hour, so the kill is sure to land in that window; the successor's is too,
/// so only a trim at start can empty the journal in time.
#[tokio::test]
async fn journal_acknowledged_but_untrimmed_at_a_kill_is_trimmed_by_the_next_instance() {
    let db = TestDb::new().await;
    let prefix = unique_name("ts_test");
    let key = format!("{prefix}:journal");
    let env = killable_daemon_env("untrimmed", "3600000");
    let mut conn = redis().await;
    let mut g = generator(22);
    let mut daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    wait_subscribers(&mut conn, &prefix, 1).await;
    let messages = g.generate(500);
    let expected = g.expected();
    let receivers = publish_counted(&mut conn, &prefix, &messages, 500)
        .await
        .unwrap();
    assert_all_delivered(&receivers);
    wait_for_all(&db.client, &expected, Duration::from_secs(60)).await;
    // Every entry delivered to the group and acknowledged: nothing left for a successor to ack.
    eventually(
        "the whole journal acknowledged",
        Duration::from_secs(30),
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            let published = messages.len() as u64;
            async move {
                if common::entries_added(&mut conn, &key).await < published {
                    return None;
                }
                let last: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let group = groups.groups.first()?;
                (group.pending == 0 && group.last_delivered_id == last.ids.first()?.id)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        xlen(&mut conn, &key).await,
        messages.len() as u64,
        "trimmed before the kill"
    );
    daemon.kill9();
    wait_subscribers(&mut conn, &prefix, 0).await;
    daemon = Daemon::start_with_prefix(&db, &common::redis_url(), &prefix, &env);
    wait_trimmed(&mut conn, &key).await;
    daemon.sigterm();
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.log_text()
    );
    assert_exact(&db.client, &expected).await;
    common::delete_keys(&[&key]).await;
}

/// The trim threshold is the lowest id any group still needs: a second group on the journal
/// (an auditor, say) keeps entries it has not read, and they go once it has.
#[tokio::test]
async fn trimming_keeps_what_another_group_has_not_read() {
    let prefix = unique_name("ts_test");
    let key = format!("{prefix}:journal");
    let mut conn = redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("audit")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let app = spawn_app(|c| {
        c.redis.channel_prefix = prefix.clone();
        journal_on("trimmer")(c);
    })
    .await;
    let mut g = generator(13);
    let messages = g.generate(500);
    let expected = g.expected();
    assert_all_delivered(
        &publish_counted(&mut conn, &prefix, &messages, 100)
            .await
            .unwrap(),
    );
    wait_for_all(&app.db.client, &expected, Duration::from_secs(30)).await;
    assert_exact(&app.db.client, &expected).await;
    // Applied and acknowledged by our group, yet every entry stays: audit has read none.
    eventually(
        "our group's entries acknowledged",
        Duration::from_secs(10),
        || async {
            (app.state.streams.acked.load(Ordering::Relaxed) == messages.len() as u64).then_some(())
        },
    )
    .await;
    let trims = app.state.journal.trimmed.load(Ordering::Relaxed);
    assert_eq!(xlen(&mut conn, &key).await, messages.len() as u64);
    assert_eq!(trims, 0);

    // The auditor reads half and acknowledges a quarter: the first unacknowledged one bounds.
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("a1")
        .arg("COUNT")
        .arg(messages.len() / 2)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), messages.len() / 2);
    // Each entry is the message as received, with the channel it came on.
    let first = &read.keys[0].ids[0];
    assert_eq!(
        first.get::<Vec<u8>>("event").as_deref(),
        Some(&messages[0].payload[..])
    );
    assert_eq!(
        first.get::<String>("channel").as_deref(),
        Some(messages[0].channel.suffix())
    );
    let quarter = messages.len() / 4;
    let _: i64 = redis::cmd("XACK")
        .arg(&key)
        .arg("audit")
        .arg(&ids[..quarter])
        .query_async(&mut conn)
        .await
        .unwrap();
    // A trim runs after our group's next acknowledgement: publish one more message.
    let mut more = g.generate(1);
    more.truncate(1);
    assert_all_delivered(&publish_counted(&mut conn, &prefix, &more, 1).await.unwrap());
    let want = (messages.len() - quarter + 1) as u64;
    eventually(
        "trimmed to the auditor's oldest pending entry",
        Duration::from_secs(10),
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move { (xlen(&mut conn, &key).await == want).then_some(()) }
        },
    )
    .await;
    app.stop().await.unwrap();
    common::delete_keys(&[&key]).await;
}

/// An XADD Redis answers with an error (here WRONGTYPE: someone put a string at the journal's
/// key) is not retried forever nor dropped: the message goes to the writer directly, counted.
/// Once the key is fixed the journal is used again.
#[tokio::test]
async fn messages_redis_refuses_to_journal_are_applied_directly_and_counted() {
    let app = spawn_app(journal_on("bypass")).await;
    let key = app.config.journal_key();
    let prefix = app.config.redis.channel_prefix.clone();
    let mut conn = redis().await;
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut g = Generator::new(Spec {
        seed: 14,
        position_every: 0,
        bar_every: 0,
        ..Spec::default()
    });
    let refused = g.generate(200);
    assert_all_delivered(
        &publish_counted(&mut conn, &prefix, &refused, 50)
            .await
            .unwrap(),
    );
    wait_for_all(&app.db.client, &g.expected(), Duration::from_secs(30)).await;
    assert_eq!(app.state.journal.bypassed.load(Ordering::Relaxed), 200);
    assert_eq!(app.state.journal.appended.load(Ordering::Relaxed), 0);

    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let journaled = g.generate(300);
    assert_all_delivered(
        &publish_counted(&mut conn, &prefix, &journaled, 50)
            .await
            .unwrap(),
    );
    let expected = g.expected();
    wait_for_all(&app.db.client, &expected, Duration::from_secs(30)).await;
    assert_exact(&app.db.client, &expected).await;
    assert_eq!(app.state.journal.appended.load(Ordering::Relaxed), 300);
    assert_eq!(app.state.journal.bypassed.load(Ordering::Relaxed), 200);
    app.stop().await.unwrap();
    common::delete_keys(&[&key]).await;
}
