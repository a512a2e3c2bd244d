//! `trading-sync run`: wires Redis in → queue → batch writer → PostgreSQL, plus the HTTP port,
//! scheduled maintenance, the systemd watchdog and the periodic summary, and stops it all
//! cleanly.
//!
//! Owns task lifetimes only: every task gets a CancellationToken passed in and is awaited before
//! `run` returns, so nothing is left detached. Shutdown order matters: Redis is unsubscribed
//! first (nothing new arrives), then the journal appender journals what it holds, then the
//! writer drains what was received.

pub mod http;
pub mod notify;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::apply::{Writer, WriterEnd, WriterSettings};
use crate::config::Config;
use crate::core::health::{JournalHealth, StreamHealth, SubscriptionHealth, WriterStats};
use crate::core::queue::{self, QueueStats};
use crate::core::ChannelKind;
use crate::events::DecodeLimits;
use crate::ingest::journal::{JournalAppender, JournalTrim};
use crate::ingest::pubsub::PubSubSource;
use crate::ingest::streams::{KeyRole, StreamSource};

/// Shared state the daemon exposes (health endpoints, watchdog, summary, tests).
#[derive(Debug, Default)]
pub struct DaemonState {
    pub subscription: Arc<SubscriptionHealth>,
    pub streams: Arc<StreamHealth>,
    pub journal: Arc<JournalHealth>,
    pub queue: Arc<QueueStats>,
    pub writer: Arc<WriterStats>,
    /// Which transports this instance reads; readiness requires each to be live.
    pub uses_pubsub: std::sync::atomic::AtomicBool,
    pub uses_streams: std::sync::atomic::AtomicBool,
    pub uses_journal: std::sync::atomic::AtomicBool,
}

impl DaemonState {
    /// Messages received and not yet committed or dead-lettered.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth.load(Ordering::Acquire)
    }

    /// Messages received, per transport: pub/sub deliveries (journaled or not) and stream entries
    /// delivered for the first time. Without the journal, at the end of a run it equals applied
    /// + duplicates + dead-lettered + refused + left uncommitted.
    pub fn received(&self) -> u64 {
        self.subscription.received.load(Ordering::Relaxed)
            + self.streams.received.load(Ordering::Relaxed)
    }

    /// Every configured transport is connected (pub/sub subscribed, stream reader live).
    pub fn ingest_live(&self) -> bool {
        (!self.uses_pubsub.load(Ordering::Relaxed)
            || self.subscription.live.load(Ordering::Acquire))
            && (!self.uses_streams.load(Ordering::Relaxed)
                || self.streams.live.load(Ordering::Acquire))
    }
}

/// Runs until `shutdown` is cancelled, then drains and returns. `ready` is called once the
/// database is reachable, the schema current and every subscription confirmed. Returns an error
/// only for what the daemon cannot recover from (systemd then restarts it).
pub async fn run(
    config: &Config,
    shutdown: CancellationToken,
    state: Arc<DaemonState>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let pg = config
        .pg_config()
        .context("while reading the database settings")?;
    // A statement waiting on a lock does not beat the heartbeat: every stall limit must end
    // before systemd's watchdog would kill the daemon and its queue.
    if let Some(watchdog) = notify::watchdog_interval() {
        // The writer gives an attempt up after twice the statement timeout (a batch is a few
        // statements); a connection attempt may take connect_timeout_ms.
        for (key, wait_ms) in [
            (
                "database.statement_timeout_ms",
                config.database.statement_timeout_ms * 2,
            ),
            ("database.lock_timeout_ms", config.database.lock_timeout_ms),
            (
                "database.connect_timeout_ms",
                config.database.connect_timeout_ms,
            ),
        ] {
            anyhow::ensure!(
                Duration::from_millis(wait_ms) < watchdog,
                "{key}: a wait of {wait_ms} ms (twice the setting for statement_timeout_ms) is \
                 not below the unit's WatchdogSec ({} ms): it would stop the watchdog's pings \
                 and systemd would kill the daemon with its queue",
                watchdog.as_millis()
            );
        }
    }
    let mut client = crate::db::connect(&pg)
        .await
        .context("while connecting to PostgreSQL (database.url)")?;
    let pending = crate::db::migrate::pending(&mut client)
        .await
        .context("while checking the schema version")?;
    anyhow::ensure!(
        pending.is_empty(),
        "the database schema is behind this binary (pending: {}); run `trading-sync migrate`",
        pending.join(", ")
    );
    drop(client);
    let pool = crate::db::pool(&config.database).context("while creating the pool")?;

    let (queue_tx, queue_rx) = queue::queue(config.sync.queue_max_bytes, state.queue.clone());
    let redis_url = config
        .redis
        .effective_url()
        .context("while reading redis.password_file")?;
    let all_channels: Vec<_> = ChannelKind::names(&config.redis.channel_prefix)
        .iter()
        .map(|(kind, name)| (name.clone(), kind))
        .collect();
    let pubsub_channels: Vec<_> = all_channels
        .iter()
        .filter(|(_, kind)| config.transport.for_channel(*kind).pubsub())
        .cloned()
        .collect();
    let mut stream_keys: Vec<_> = all_channels
        .iter()
        .filter(|(_, kind)| config.transport.for_channel(*kind).stream())
        .map(|(name, kind)| (Arc::<str>::from(name.as_str()), KeyRole::Channel(*kind)))
        .collect();
    let journal_key: Option<Arc<str>> = (config.transport.journal && !pubsub_channels.is_empty())
        .then(|| config.journal_key().into());
    if let Some(key) = &journal_key {
        stream_keys.push((key.clone(), KeyRole::Journal));
    }
    state
        .uses_journal
        .store(journal_key.is_some(), Ordering::Relaxed);
    state
        .uses_pubsub
        .store(!pubsub_channels.is_empty(), Ordering::Relaxed);
    state
        .uses_streams
        .store(!stream_keys.is_empty(), Ordering::Relaxed);
    let max_backoff = Duration::from_millis(config.redis.reconnect_max_backoff_ms);
    let edge = queue::EdgeLimits {
        max_message_bytes: config.sync.max_message_bytes,
        dead_letter_max_bytes: config.sync.dead_letter_max_bytes,
    };

    // With the journal, pub/sub fills the appender's buffer; the journal stream feeds the queue.
    let journal = journal_key.as_ref().map(|key| {
        let (tx, rx) = queue::queue(
            config.journal.buffer_max_bytes,
            state.journal.buffer.clone(),
        );
        let appender = JournalAppender {
            url: redis_url.clone(),
            key: key.clone(),
            field: config.streams.field.clone(),
            batch: config.journal.append_batch,
            max_backoff,
            health: state.journal.clone(),
        };
        (appender, tx, rx)
    });
    let pubsub = if pubsub_channels.is_empty() {
        None
    } else {
        let (target, budget_key) = match &journal {
            Some((_, tx, _)) => (tx.clone(), "journal.buffer_max_bytes"),
            None => (queue_tx.clone(), "sync.queue_max_bytes"),
        };
        let source = PubSubSource {
            url: redis_url.clone(),
            channels: pubsub_channels,
            max_backoff,
            connect_timeout: Duration::from_millis(config.database.connect_timeout_ms),
            health: state.subscription.clone(),
            budget_key,
            edge,
        };
        let manager = source
            .connect(target)
            .await
            .context("while subscribing to Redis (redis.url)")?;
        Some((source, manager))
    };
    let journal = journal.map(|(appender, _, rx)| (appender, rx));
    let streams = if stream_keys.is_empty() {
        None
    } else {
        let source = Arc::new(StreamSource {
            url: redis_url,
            keys: stream_keys,
            settings: config.streams.clone(),
            consumer: config.streams.consumer_name(),
            max_backoff,
            health: state.streams.clone(),
            journal: journal_key.as_ref().map(|_| JournalTrim {
                interval: Duration::from_millis(config.journal.trim_interval_ms),
                health: state.journal.clone(),
            }),
            edge,
            read_size: Default::default(),
        });
        source
            .prepare()
            .await
            .context("while preparing the Redis stream consumer groups (redis.url)")?;
        Some(source)
    };

    // Three stop signals, cancelled in order: ingest, then the writer, then the rest.
    let ingest_stop = CancellationToken::new();
    let writer_stop = CancellationToken::new();
    let tasks_stop = CancellationToken::new();

    let slow_query = Duration::from_millis(config.database.slow_query_ms);
    // Yahoo bars seen by the writer go to the indicator scheduler (debounced there).
    let (indicator_tx, indicator_rx) =
        if config.indicators.enabled && config.indicators.on_market_data {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
    let indicator_settings = if config.indicators.enabled {
        Some(
            crate::indicators::schedule::SchedulerSettings::from_config(config)
                .context("while reading [indicators]")?,
        )
    } else {
        None
    };
    let writer = Writer::new(
        WriterSettings {
            batch_max_events: config.sync.batch_max_events,
            batch_max_wait: Duration::from_millis(config.sync.batch_max_wait_ms),
            drain_deadline: Duration::from_millis(config.sync.drain_deadline_ms),
            limits: DecodeLimits {
                max_message_bytes: config.sync.max_message_bytes,
                exchange_tz: config.exchange_tz()?,
            },
            pg: pg.clone(),
            max_backoff: Duration::from_millis(config.redis.reconnect_max_backoff_ms),
            slow_query,
            statement_timeout: Duration::from_millis(config.database.statement_timeout_ms),
            lock_timeout: Duration::from_millis(config.database.lock_timeout_ms),
        },
        indicator_tx.clone(),
        writer_stop.clone(),
        state.writer.clone(),
    );
    // The acker outlives the writer's last commit: it stops when the writer drops its sender.
    let mut acker = None;
    let writer = match &streams {
        Some(source) => {
            let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel();
            let (source, stop) = (source.clone(), tasks_stop.clone());
            acker = Some(tokio::spawn(
                async move { source.run_acker(ack_rx, stop).await },
            ));
            writer.with_acks(ack_tx)
        }
        None => writer,
    };
    let mut writer = tokio::spawn(writer.run(queue_rx));

    let mut background = tokio::task::JoinSet::new();
    if config.http.enabled {
        let listen = config.http_listen()?;
        // Bind before READY=1 so a port conflict fails startup rather than a silent /metrics.
        http::prometheus();
        let (state, pool, stop) = (state.clone(), pool.clone(), tasks_stop.clone());
        let stall = Duration::from_secs(config.http.readyz_stall_secs);
        if !listen.ip().is_loopback() {
            tracing::warn!(
                listen = %listen,
                "http.listen is not a loopback address: /metrics and /readyz answer anyone who \
                 can reach it (no authentication)"
            );
        }
        let listener_check = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("while binding http.listen ({listen})"))?;
        drop(listener_check);
        background.spawn(async move {
            if let Err(e) = http::serve(listen, state, pool, stall, stop).await {
                tracing::error!(error = %e, "the HTTP endpoint failed");
            }
        });
    }
    if config.maintenance.enabled {
        let (config, pg, stop) = (config.clone(), pg.clone(), tasks_stop.clone());
        background.spawn(supervise("maintenance", stop.clone(), move || {
            maintenance_loop(config.clone(), pg.clone(), slow_query, stop.clone())
        }));
    }
    if let Some(settings) = indicator_settings {
        let stop = tasks_stop.clone();
        background.spawn(async move {
            // The receiver is single-use, so a failed scheduler restarts without the live
            // trigger; the cron schedule and catch-up run still apply.
            let mut symbols = indicator_rx;
            let mut backoff = Duration::from_secs(1);
            loop {
                let rx = symbols.take().unwrap_or_else(|| tokio::sync::mpsc::unbounded_channel().1);
                match crate::indicators::schedule::run_scheduler(settings.clone(), rx, stop.clone()).await {
                    Ok(()) => return,
                    Err(_) if stop.is_cancelled() => return,
                    Err(e) => {
                        metrics::counter!("trading_sync_task_restarts_total", "task" => "indicators")
                            .increment(1);
                        tracing::error!(task = "indicators", error = %e, "indicator scheduler failed; restarting it");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        });
    }
    if config.reconcile.enabled {
        let settings = crate::reconcile::Settings::from_config(config)?;
        let interval = Duration::from_secs(config.reconcile.interval_secs);
        let (pg, state, stop) = (pg.clone(), state.clone(), tasks_stop.clone());
        background.spawn(supervise("reconcile", stop.clone(), move || {
            reconcile_loop(
                settings.clone(),
                pg.clone(),
                interval,
                state.clone(),
                stop.clone(),
            )
        }));
    }
    background.spawn(monitor(
        state.clone(),
        pool.clone(),
        Duration::from_secs(config.log.summary_interval_secs),
        tasks_stop.clone(),
    ));

    let mut ingest = tokio::task::JoinSet::new();
    if let Some((source, manager)) = pubsub {
        let stop = ingest_stop.clone();
        match journal {
            None => {
                ingest.spawn(async move { source.run(manager, stop).await });
            }
            Some((appender, buffer)) => {
                let direct = queue_tx.clone();
                ingest.spawn(async move {
                    // The appender flushes once pub/sub is unsubscribed, not before: messages
                    // arriving until then must still be journaled.
                    let flush = CancellationToken::new();
                    let subscribed = async {
                        source.run(manager, stop).await;
                        flush.cancel();
                    };
                    tokio::join!(subscribed, appender.run(buffer, direct, flush.clone()));
                });
            }
        }
    }
    if let Some(source) = streams {
        let (stop, queue_tx) = (ingest_stop.clone(), queue_tx.clone());
        ingest.spawn(async move { source.run_reader(queue_tx, stop).await });
    }
    // Only the sources hold senders now: the queue closes when they are gone.
    drop(queue_tx);
    ready();
    notify::ready();
    tracing::info!(prefix = %config.redis.channel_prefix, "trading-sync is running");

    let writer_failed = tokio::select! {
        () = shutdown.cancelled() => None,
        ended = &mut writer => Some(ended),
    };
    notify::stopping();
    ingest_stop.cancel();
    while ingest.join_next().await.is_some() {}
    writer_stop.cancel();
    let ended = match writer_failed {
        Some(ended) => ended,
        None => writer.await,
    };
    tasks_stop.cancel();
    if let Some(acker) = acker {
        let _ = acker.await;
    }
    while background.join_next().await.is_some() {}

    let received = state.received();
    let refused = state.queue.refused.load(Ordering::Relaxed)
        + state.journal.buffer.refused.load(Ordering::Relaxed);
    let left = match ended.context("the batch writer panicked")? {
        WriterEnd::Drained if !shutdown.is_cancelled() => {
            anyhow::bail!("the batch writer stopped on its own")
        }
        WriterEnd::Drained => 0,
        // Logged with counts by the writer too. Exit 0: the stop itself was asked for.
        WriterEnd::DeadlineExceeded { left } => left,
    };
    let journal = state.uses_journal.load(Ordering::Relaxed);
    let outcome = match (left, refused, journal) {
        (0, 0, false) => "stopped; every received message is committed or dead-lettered",
        (0, 0, true) => {
            "stopped; every received message is committed, dead-lettered or kept in the journal \
             for the next start"
        }
        (0, _, _) => {
            "stopped; every received message is committed or dead-lettered, except those refused \
             when the queue was full (refused)"
        }
        _ => "stopped with received messages left uncommitted (left) or refused (refused)",
    };
    let fields = (
        state.writer.applied_total(),
        state.writer.duplicates.load(Ordering::Relaxed),
        state.writer.dead_lettered.load(Ordering::Relaxed),
    );
    // One line, its level the outcome's: a run that lost or refused messages must not end quietly.
    macro_rules! final_line {
        ($level:expr) => {
            tracing::event!(
                $level,
                received,
                journaled = state.journal.appended.load(Ordering::Relaxed),
                bypassed = state.journal.bypassed.load(Ordering::Relaxed),
                applied = fields.0,
                duplicates = fields.1,
                dead_lettered = fields.2,
                refused,
                left,
                "{outcome}"
            )
        };
    }
    if left == 0 && refused == 0 {
        final_line!(tracing::Level::INFO);
    } else {
        final_line!(tracing::Level::WARN);
    }
    Ok(())
}

/// Restarts a failing task with capped backoff until shutdown; the failure is logged with its
/// cause chain. A task that returns Ok is done.
async fn supervise<F, Fut>(name: &'static str, shutdown: CancellationToken, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        match task().await {
            Ok(()) => return,
            Err(e) if shutdown.is_cancelled() => {
                tracing::debug!(
                    task = name,
                    error = format!("{e:#}"),
                    "task ended during shutdown"
                );
                return;
            }
            Err(e) => {
                metrics::counter!("trading_sync_task_restarts_total", "task" => name).increment(1);
                tracing::error!(
                    task = name,
                    error = format!("{e:#}"),
                    retry_in_s = backoff.as_secs(),
                    "task failed; restarting it"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Maintenance once at start (partitions ahead matter at once), then on its cron schedule.
async fn maintenance_loop(
    config: Config,
    pg: tokio_postgres::Config,
    slow_query: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cron = config.maintenance_schedule()?;
    let tz = config.maintenance_tz()?;
    loop {
        let client = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            c = crate::db::connect(&pg) => c.context("while connecting for maintenance")?,
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = crate::maintenance::run_once(&client, &config.maintenance, slow_query) => {
                r.context("while running maintenance")?;
            }
        }
        drop(client);
        let now = chrono::Utc::now().with_timezone(&tz);
        let next = cron
            .find_next_occurrence(&now, false)
            .context("while computing the next maintenance time")?;
        let wait = (next.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        tracing::debug!(next = %next, "next maintenance run");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Reconcile (src/reconcile) inside the daemon. Each run covers the trade rows written up to
/// `grace` before it, so a run meant to cover "everything committed before T" happens at
/// T + grace:
/// * at start, once the backlog present at start has been applied (events merely waiting are not
///   healed from their rows), and not before start + grace (trades committed while the daemon was
///   down must age past the grace period first);
/// * `grace` after every pub/sub resubscription (what was published while unsubscribed is gone);
/// * every `interval`, skipped when any instance ran within 90% of it: once per interval across
///   instances.
///
/// Event-driven runs wait for another instance's run to finish; scheduled ones skip it.
async fn reconcile_loop(
    settings: crate::reconcile::Settings,
    pg: tokio_postgres::Config,
    interval: Duration,
    state: Arc<DaemonState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use crate::reconcile::{Request, Trigger};
    use tokio::time::Instant;
    const BACKLOG_WAIT_MAX: Duration = Duration::from_secs(60);
    const RETRY_FIRST: Duration = Duration::from_secs(1);
    let mut failures = 0u32;
    // Kept between runs with its prepared statements; dropped after any failure.
    let mut connection: Option<(tokio_postgres::Client, crate::reconcile::Prepared)> = None;
    let started = Instant::now();
    let grace = settings.grace;
    // Up to BACKLOG_WAIT_MAX for the backlog: past it, healing what is merely waiting is harmless
    // (the ledger), only wasted work.
    loop {
        let streams_done = !state.uses_streams.load(Ordering::Relaxed)
            || state.streams.caught_up.load(Ordering::Acquire);
        if (streams_done && state.queue_depth() == 0) || started.elapsed() >= BACKLOG_WAIT_MAX {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let mut due: Option<(Trigger, Instant)> = Some((Trigger::Start, started + grace));
    let mut disconnects = state.subscription.disconnects.load(Ordering::Acquire);
    let mut next_scheduled = started + interval;
    loop {
        let now = Instant::now();
        let seen = state.subscription.disconnects.load(Ordering::Acquire);
        if seen != disconnects && state.subscription.live.load(Ordering::Acquire) {
            disconnects = seen;
            due = Some((Trigger::Resubscribed, now + grace));
        }
        let request = match due {
            Some((trigger, at)) if now >= at => {
                due = None;
                Some(Request {
                    trigger,
                    since: None,
                    dry_run: false,
                    skip_if_ran_within: None,
                    lock_wait: Duration::from_secs(600),
                })
            }
            _ if now >= next_scheduled => Some(Request {
                trigger: Trigger::Interval,
                since: None,
                dry_run: false,
                skip_if_ran_within: Some(interval.mul_f64(0.9)),
                lock_wait: Duration::ZERO,
            }),
            _ => None,
        };
        if let Some(request) = request {
            next_scheduled = now + interval;
            let run = async {
                if connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    let client = crate::db::connect(&pg)
                        .await
                        .context("while connecting for reconcile")?;
                    let prepared = crate::reconcile::Prepared::prepare(&client)
                        .await
                        .context("while preparing reconcile's statements")?;
                    connection = Some((client, prepared));
                }
                let (client, prepared) = connection.as_mut().expect("connected above");
                let outcome =
                    crate::reconcile::run_prepared(client, prepared, &settings, &request).await;
                if outcome.is_err() {
                    // Whatever failed, the next attempt starts from a fresh session.
                    connection = None;
                }
                outcome.context("while reconciling")
            };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = run => r,
            };
            match outcome {
                Ok(crate::reconcile::Outcome::Ran(_)) => failures = 0,
                Ok(skipped) => {
                    tracing::debug!(
                        trigger = request.trigger.as_str(),
                        ?skipped,
                        "reconcile skipped"
                    )
                }
                // A deadlock with the writer's marks, a restarting server, a revoked grant: the
                // run rolled back and the change log still holds its rows. Retried with backoff,
                // the same trigger, rather than restarting the task (which would redo the start).
                Err(e) => {
                    failures += 1;
                    let retry_in = RETRY_FIRST
                        .saturating_mul(2u32.saturating_pow(failures - 1))
                        .min(interval);
                    metrics::counter!("trading_sync_reconcile_failures_total").increment(1);
                    tracing::warn!(
                        trigger = request.trigger.as_str(),
                        error = format!("{e:#}"),
                        retry_in_ms = retry_in.as_millis() as u64,
                        "reconcile failed; it will be retried"
                    );
                    if request.trigger == Trigger::Interval {
                        next_scheduled = Instant::now() + retry_in;
                    } else {
                        due = Some((request.trigger, Instant::now() + retry_in));
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Once a second: gauges, the watchdog ping (only while the writer and the subscriber loops
/// turn), and every `summary` an info line with rates.
async fn monitor(
    state: Arc<DaemonState>,
    pool: deadpool_postgres::Pool,
    summary: Duration,
    shutdown: CancellationToken,
) {
    let watchdog = notify::watchdog_interval();
    let period = watchdog
        .map(|w| (w / 2).min(Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    let mut last_summary = tokio::time::Instant::now();
    let mut last = (0u64, 0u64);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let depth = state.queue.depth.load(Ordering::Relaxed);
        let bytes = state.queue.bytes.load(Ordering::Relaxed);
        metrics::gauge!("trading_sync_queue_depth").set(depth as f64);
        metrics::gauge!("trading_sync_queue_bytes").set(bytes as f64);
        if state.uses_journal.load(Ordering::Relaxed) {
            let buffer = &state.journal.buffer;
            metrics::gauge!("trading_sync_journal_buffer_bytes")
                .set(buffer.bytes.load(Ordering::Relaxed) as f64);
        }
        let live = state.ingest_live();
        metrics::gauge!("trading_sync_redis_subscribed").set(f64::from(u8::from(live)));
        let pool_status = pool.status();
        metrics::gauge!("trading_sync_pool_in_use")
            .set((pool_status.size - pool_status.available) as f64);
        metrics::gauge!("trading_sync_pool_waiting").set(pool_status.waiting as f64);
        http::prometheus().run_upkeep();

        if let Some(interval) = watchdog {
            let writer_age = state.writer.heartbeat.age();
            let subscriber_age = [
                (
                    state.uses_pubsub.load(Ordering::Relaxed),
                    &state.subscription.heartbeat,
                ),
                (
                    state.uses_streams.load(Ordering::Relaxed),
                    &state.streams.heartbeat,
                ),
                (
                    state.uses_journal.load(Ordering::Relaxed),
                    &state.journal.heartbeat,
                ),
            ]
            .iter()
            .filter(|(used, _)| *used)
            .map(|(_, beat)| beat.age())
            .max()
            .unwrap_or_default();
            if writer_age < interval && subscriber_age < interval {
                notify::watchdog();
            } else {
                tracing::error!(
                    writer_idle_ms = writer_age.as_millis() as u64,
                    subscriber_idle_ms = subscriber_age.as_millis() as u64,
                    "a task has stopped making progress; withholding the watchdog ping"
                );
            }
        }

        if !summary.is_zero() && last_summary.elapsed() >= summary {
            let secs = last_summary.elapsed().as_secs_f64();
            last_summary = tokio::time::Instant::now();
            let received = state.received();
            let applied = state.writer.applied_total();
            tracing::info!(
                received_per_s = ((received - last.0) as f64 / secs).round(),
                applied_per_s = ((applied - last.1) as f64 / secs).round(),
                received_total = received,
                applied_total = applied,
                duplicates_total = state.writer.duplicates.load(Ordering::Relaxed),
                dead_lettered_total = state.writer.dead_lettered.load(Ordering::Relaxed),
                queue_depth = depth,
                queue_bytes = bytes,
                refused_total = state.queue.refused.load(Ordering::Relaxed)
                    + state.journal.buffer.refused.load(Ordering::Relaxed),
                redis_subscribed = live,
                redis_disconnects_total = state.subscription.disconnects.load(Ordering::Relaxed),
                journal_appended_total = state.journal.appended.load(Ordering::Relaxed),
                journal_length = state.journal.length.load(Ordering::Relaxed),
                "summary"
            );
            last = (received, applied);
        }
    }
}

/// The daemon's signals: SIGTERM and SIGINT cancel `token` (the drain); SIGHUP calls `reload`
/// (what `systemctl reload` and a closing terminal send: never a reason to stop); SIGUSR1 and
/// SIGUSR2, whose default action would kill the process and its queue, are logged and ignored.
pub fn handle_daemon_signals(
    token: CancellationToken,
    reload: impl Fn() + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("while installing SIGHUP handler")?;
    let mut usr1 =
        signal(SignalKind::user_defined1()).context("while installing SIGUSR1 handler")?;
    let mut usr2 =
        signal(SignalKind::user_defined2()).context("while installing SIGUSR2 handler")?;
    cancel_on_signals(token.clone())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => reload(),
                _ = usr1.recv() => tracing::info!(signal = "SIGUSR1", "ignored"),
                _ = usr2.recv() => tracing::info!(signal = "SIGUSR2", "ignored"),
                () = token.cancelled() => return,
            }
        }
    });
    Ok(())
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("while installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("while installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
            () = token.cancelled() => return,
        }
        token.cancel();
    });
    Ok(())
}
