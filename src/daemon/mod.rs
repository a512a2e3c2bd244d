//! `trading-sync run`: wires Redis in → queue → batch writer → PostgreSQL, plus the HTTP port,
//! scheduled maintenance and reconcile, the systemd watchdog and the periodic summary, and stops
//! it all cleanly.
//!
//! Three steps, as in zero2prod's `Application`:
//! 1. [`Topology::from_config`] (pure): which channel is read through which transport;
//! 2. [`Daemon::build`]: connects, checks the schema, binds the HTTP port once, subscribes and
//!    prepares the consumer groups. Every startup failure (a wrong URL, a pending migration, a
//!    port in use) happens here, before READY=1;
//! 3. [`Daemon::run_until_stopped`]: spawns the tasks, waits for `shutdown`, drains in order and
//!    returns what the run did.
//!
//! Owns task lifetimes only: every task gets a CancellationToken passed in and is awaited before
//! `run_until_stopped` returns, so nothing is left detached. Shutdown order matters: Redis is
//! unsubscribed first (nothing new arrives), then the journal appender journals what it holds,
//! then the writer drains what was received, then the acker acknowledges what the writer
//! committed, then the background tasks stop.

mod background;
mod http;
mod monitor;
mod notify;
mod signals;
mod supervise;
mod topology;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::apply::{Writer, WriterEnd, WriterSettings};
use crate::config::Config;
use crate::core::health::{JournalHealth, StreamHealth, SubscriptionHealth, WriterStats};
use crate::core::queue::{self, EdgeLimits, QueueReceiver, QueueSender, QueueStats};
use crate::db::Connector;
use crate::events::DecodeLimits;
use crate::indicators::schedule::SchedulerSettings;
use crate::ingest::journal::{JournalAppender, JournalTrim};
use crate::ingest::pubsub::PubSubSource;
use crate::ingest::streams::StreamSource;
pub(crate) use signals::{cancel_on_signals, handle_daemon_signals};
use supervise::supervise;
pub(crate) use topology::Topology;

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
    pub(crate) fn received(&self) -> u64 {
        self.subscription.received.load(Ordering::Relaxed)
            + self.streams.received.load(Ordering::Relaxed)
    }

    /// Messages refused at a full queue or journal buffer.
    pub(crate) fn refused(&self) -> u64 {
        self.queue.refused.load(Ordering::Relaxed)
            + self.journal.buffer.refused.load(Ordering::Relaxed)
    }

    /// Every configured transport is connected (pub/sub subscribed, stream reader live).
    pub(crate) fn ingest_live(&self) -> bool {
        (!self.uses_pubsub.load(Ordering::Relaxed)
            || self.subscription.live.load(Ordering::Acquire))
            && (!self.uses_streams.load(Ordering::Relaxed)
                || self.streams.live.load(Ordering::Acquire))
    }
}

/// A daemon connected and subscribed, not yet running: what [`Daemon::build`] made.
pub struct Daemon {
    /// The settings it was built from; the background tasks read their sections from it.
    config: Config,
    /// What every stage reports, shared with the HTTP endpoints and the watchdog.
    state: Arc<DaemonState>,
    /// Where the writer, maintenance and reconcile connect (each holds its own connection).
    pg: Connector,
    /// For /readyz's database probe: a pooled connection answers at once.
    pool: deadpool_postgres::Pool,
    /// The HTTP port, bound in `build` so a port in use fails startup, and served from the same
    /// socket (a port picked by the kernel stays ours). None when `http.enabled` is false.
    http: Option<tokio::net::TcpListener>,
    /// The queue between the sources and the writer; the sources get clones of the sender.
    queue: (QueueSender, QueueReceiver),
    /// Subscribed and confirmed; run from `run_until_stopped`.
    pubsub: Option<(PubSubSource, redis::aio::ConnectionManager)>,
    /// With the journal: the appender and the buffer pub/sub fills.
    journal: Option<(JournalAppender, QueueReceiver)>,
    /// Consumer groups created; the reader and acker share it.
    streams: Option<Arc<StreamSource>>,
    writer: Writer,
    /// Yahoo bars seen by the writer reach the scheduler here (debounced there).
    indicators: Option<(SchedulerSettings, Option<UnboundedReceiver<String>>)>,
    /// Reconcile's settings and interval, when `[reconcile] enabled`.
    reconcile: Option<(crate::reconcile::Settings, Duration)>,
    /// Cancelled in order by `run_until_stopped`: ingest, then the writer, then the rest.
    stops: Stops,
}

/// The staged shutdown's three signals.
#[derive(Default)]
struct Stops {
    /// Sources: stop reading Redis (pub/sub unsubscribes, stream readers stop).
    ingest: CancellationToken,
    /// The writer: drain what was received within `sync.drain_deadline_ms`.
    writer: CancellationToken,
    /// Everything else: acker (once the writer is gone), HTTP, maintenance, reconcile, indicators.
    tasks: CancellationToken,
}

impl Daemon {
    /// Connects, checks the schema, binds the HTTP port, subscribes to the pub/sub channels and
    /// creates the stream consumer groups. Returns an error, naming the setting, for whatever
    /// would stop the daemon from doing its job; nothing has been read from Redis yet.
    pub async fn build(config: &Config) -> anyhow::Result<Daemon> {
        let config = config.clone();
        let pg =
            Connector::primary(&config.database).context("while reading the database settings")?;
        check_stall_limits(&config, notify::watchdog_interval())?;
        let mut client = pg
            .connect()
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
        let pool = crate::db::pool(&config.database, &pg).context("while creating the pool")?;

        let topology = Topology::from_config(&config);
        let state = Arc::new(DaemonState::default());
        state
            .uses_journal
            .store(topology.journal.is_some(), Ordering::Relaxed);
        state
            .uses_pubsub
            .store(topology.uses_pubsub(), Ordering::Relaxed);
        state
            .uses_streams
            .store(topology.uses_streams(), Ordering::Relaxed);

        let http = match config.http.enabled {
            true => Some(bind_http(&config).await?),
            false => None,
        };

        let queue = queue::queue(topology.queue_max_bytes, state.queue.clone());
        let redis = config
            .redis
            .endpoint()
            .context("while reading redis.password_file and the redis.tls_* files")?;
        let max_backoff = Duration::from_millis(config.redis.reconnect_max_backoff_ms);
        let edge = EdgeLimits {
            max_message_bytes: config.sync.max_message_bytes,
            dead_letter_max_bytes: config.sync.dead_letter_max_bytes,
        };

        // With the journal, pub/sub fills the appender's buffer; the journal stream feeds the
        // queue.
        let journal = topology.journal.as_ref().map(|key| {
            let budget = topology.journal_buffer_max_bytes.unwrap_or_default();
            let (tx, rx) = queue::queue(budget, state.journal.buffer.clone());
            let appender = JournalAppender {
                endpoint: redis.clone(),
                key: key.clone(),
                field: config.streams.field.clone(),
                batch: config.journal.append_batch,
                max_backoff,
                health: state.journal.clone(),
            };
            (appender, tx, rx)
        });
        let pubsub = if topology.uses_pubsub() {
            let target = match &journal {
                Some((_, buffer, _)) => buffer.clone(),
                None => queue.0.clone(),
            };
            let source = PubSubSource {
                endpoint: redis.clone(),
                channels: topology.pubsub.clone(),
                max_backoff,
                connect_timeout: Duration::from_millis(config.database.connect_timeout_ms),
                health: state.subscription.clone(),
                budget_key: topology.pubsub_budget_key(),
                edge,
            };
            let manager = source
                .connect(target)
                .await
                .context("while subscribing to Redis (redis.url)")?;
            Some((source, manager))
        } else {
            None
        };
        let journal = journal.map(|(appender, _, buffer)| (appender, buffer));
        let streams = if topology.uses_streams() {
            let source = Arc::new(StreamSource {
                endpoint: redis,
                keys: topology.stream_keys.clone(),
                settings: config.streams.clone(),
                consumer: config.streams.consumer_name(),
                max_backoff,
                health: state.streams.clone(),
                journal: topology.journal.as_ref().map(|_| JournalTrim {
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
        } else {
            None
        };

        let indicators = if config.indicators.enabled {
            let settings =
                SchedulerSettings::from_config(&config).context("while reading [indicators]")?;
            Some(settings)
        } else {
            None
        };
        let (indicator_tx, indicator_rx) =
            match indicators.is_some() && config.indicators.on_market_data {
                true => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    (Some(tx), Some(rx))
                }
                false => (None, None),
            };
        let reconcile = if config.reconcile.enabled {
            let settings = crate::reconcile::Settings::from_config(&config)
                .context("while reading [reconcile]")?;
            Some((
                settings,
                Duration::from_secs(config.reconcile.interval_secs),
            ))
        } else {
            None
        };
        let stops = Stops::default();
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
                connections: config.sync.writer_connections,
                max_backoff,
                slow_query: Duration::from_millis(config.database.slow_query_ms),
                statement_timeout: Duration::from_millis(config.database.statement_timeout_ms),
                lock_timeout: Duration::from_millis(config.database.lock_timeout_ms),
                channel_prefix: config.redis.channel_prefix.clone(),
            },
            indicator_tx,
            stops.writer.clone(),
            state.writer.clone(),
        );
        Ok(Daemon {
            config,
            state,
            pg,
            pool,
            http,
            queue,
            pubsub,
            journal,
            streams,
            writer,
            indicators: indicators.map(|settings| (settings, indicator_rx)),
            reconcile,
            stops,
        })
    }

    /// The port the HTTP endpoints answer on (`http.listen` with port 0 picks a free one).
    pub fn http_port(&self) -> Option<u16> {
        let listener = self.http.as_ref()?;
        listener.local_addr().ok().map(|addr| addr.port())
    }

    /// What every stage reports: counters, liveness, lag.
    pub fn state(&self) -> Arc<DaemonState> {
        self.state.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains and returns what the run did. Returns an
    /// error only for what the daemon cannot recover from (systemd then restarts it).
    pub async fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<StopReport> {
        let Daemon {
            config,
            state,
            pg,
            pool,
            http,
            queue: (queue_tx, queue_rx),
            pubsub,
            journal,
            streams,
            writer,
            indicators,
            reconcile,
            stops,
        } = self;

        // Read before anything is spawned: an error return must leave no task behind.
        let http = match http {
            Some(listener) => {
                let bound = listener
                    .local_addr()
                    .context("while reading the bound HTTP address")?;
                Some((listener, bound))
            }
            None => None,
        };
        // The acker outlives the writer's last commit: it stops when the writer drops its sender.
        let mut acker = None;
        let writer = match &streams {
            Some(source) => {
                let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel();
                let (source, stop) = (source.clone(), stops.tasks.clone());
                acker = Some(tokio::spawn(
                    async move { source.run_acker(ack_rx, stop).await },
                ));
                writer.with_acks(ack_tx)
            }
            None => writer,
        };
        let mut writer = tokio::spawn(writer.run(queue_rx));

        let mut background = tokio::task::JoinSet::new();
        if let Some((listener, listen)) = http {
            let (state, pool, stop) = (state.clone(), pool.clone(), stops.tasks.clone());
            let stall = Duration::from_secs(config.http.readyz_stall_secs);
            // The first run serves the socket bound in `build`; a restart binds the same address
            // and port, even when the port was picked by the kernel.
            let mut bound = Some(listener);
            background.spawn(supervise("http", stop.clone(), move || {
                let listener = bound.take();
                let (state, pool, stop) = (state.clone(), pool.clone(), stop.clone());
                async move {
                    let listener = match listener {
                        Some(listener) => listener,
                        None => tokio::net::TcpListener::bind(listen).await?,
                    };
                    http::serve(listener, state, pool, stall, stop).await?;
                    Ok(())
                }
            }));
        }
        if config.maintenance.enabled {
            let (config, pg, stop) = (config.clone(), pg.clone(), stops.tasks.clone());
            let slow_query = Duration::from_millis(config.database.slow_query_ms);
            background.spawn(supervise("maintenance", stop.clone(), move || {
                background::maintenance_loop(config.clone(), pg.clone(), slow_query, stop.clone())
            }));
        }
        if let Some((settings, mut symbols)) = indicators {
            let stop = stops.tasks.clone();
            background.spawn(supervise("indicators", stop.clone(), move || {
                // The receiver is single-use, so a restarted scheduler runs without the live
                // trigger; the cron schedule and its catch-up run still apply.
                let symbols = symbols
                    .take()
                    .unwrap_or_else(|| tokio::sync::mpsc::unbounded_channel().1);
                let (settings, stop) = (settings.clone(), stop.clone());
                async move {
                    crate::indicators::schedule::run_scheduler(settings, symbols, stop).await?;
                    Ok(())
                }
            }));
        }
        if let Some((settings, interval)) = reconcile {
            let (pg, state, stop) = (pg.clone(), state.clone(), stops.tasks.clone());
            background.spawn(supervise("reconcile", stop.clone(), move || {
                background::reconcile_loop(
                    settings.clone(),
                    pg.clone(),
                    interval,
                    state.clone(),
                    stop.clone(),
                )
            }));
        }
        {
            let (state, pool, stop) = (state.clone(), pool.clone(), stops.tasks.clone());
            let summary = Duration::from_secs(config.log.summary_interval_secs);
            background.spawn(supervise("monitor", stop.clone(), move || {
                let (state, pool, stop) = (state.clone(), pool.clone(), stop.clone());
                async move {
                    monitor::monitor(state, pool, summary, stop).await;
                    Ok(())
                }
            }));
        }

        let mut ingest = tokio::task::JoinSet::new();
        if let Some((source, manager)) = pubsub {
            let stop = stops.ingest.clone();
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
            let (stop, queue_tx) = (stops.ingest.clone(), queue_tx.clone());
            ingest.spawn(async move { source.run_reader(queue_tx, stop).await });
        }
        // Only the sources hold senders now: the queue closes when they are gone.
        drop(queue_tx);
        notify::ready();
        tracing::info!(prefix = %config.redis.channel_prefix, "trading-sync is running");

        let writer_failed = tokio::select! {
            () = shutdown.cancelled() => None,
            ended = &mut writer => Some(ended),
        };
        notify::stopping();
        stops.ingest.cancel();
        while ingest.join_next().await.is_some() {}
        stops.writer.cancel();
        let ended = match writer_failed {
            Some(ended) => ended,
            None => writer.await,
        };
        stops.tasks.cancel();
        if let Some(acker) = acker {
            let _ = acker.await;
        }
        while background.join_next().await.is_some() {}

        let left = match ended.context("the batch writer panicked")? {
            WriterEnd::Drained if !shutdown.is_cancelled() => {
                anyhow::bail!("the batch writer stopped on its own")
            }
            WriterEnd::Drained => 0,
            // Logged with counts by the writer too. Exit 0: the stop itself was asked for.
            WriterEnd::DeadlineExceeded { left } => left,
        };
        let report = StopReport::of(&state, left);
        report.log();
        Ok(report)
    }
}

/// `build` and `run_until_stopped` in one call: what `trading-sync run` does.
pub(crate) async fn run(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<StopReport> {
    Daemon::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// Binds `http.listen` once, before READY=1: a port conflict fails startup rather than leaving
/// a silent /metrics.
async fn bind_http(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let listen = config.http_listen()?;
    // The recorder is installed before any task records a metric, and every series the
    // dashboard and the alerting rules query exists from the first scrape.
    crate::telemetry::prometheus();
    crate::telemetry::register_series(config);
    if !listen.ip().is_loopback() {
        tracing::warn!(
            listen = %listen,
            "http.listen is not a loopback address: /metrics and /readyz answer anyone who \
             can reach it (no authentication)"
        );
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding http.listen ({listen})"))
}

/// A statement waiting on a lock does not beat the heartbeat: every stall limit must end before
/// systemd's watchdog would kill the daemon and its queue. The writer gives an attempt up after
/// twice the statement timeout (a batch is a few statements); a connection attempt may take
/// connect_timeout_ms.
fn check_stall_limits(config: &Config, watchdog: Option<Duration>) -> anyhow::Result<()> {
    let Some(watchdog) = watchdog else {
        return Ok(());
    };
    let database = &config.database;
    for (key, wait_ms, why) in [
        (
            "database.statement_timeout_ms",
            database.statement_timeout_ms * 2,
            " (twice the setting: a batch attempt is given up after two statement timeouts)",
        ),
        ("database.lock_timeout_ms", database.lock_timeout_ms, ""),
        (
            "database.connect_timeout_ms",
            database.connect_timeout_ms,
            "",
        ),
    ] {
        anyhow::ensure!(
            Duration::from_millis(wait_ms) < watchdog,
            "{key}: a wait of {wait_ms} ms{why} is not below the unit's WatchdogSec ({} ms): it \
             would stop the watchdog's pings and systemd would kill the daemon with its queue",
            watchdog.as_millis()
        );
    }
    Ok(())
}

/// What a run did, counted once at its end: the daemon's last log line, and what tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Messages received over every transport (see [`DaemonState::received`]).
    pub received: u64,
    /// Pub/sub messages written to the journal.
    pub journaled: u64,
    /// Pub/sub messages Redis refused to journal, handed to the writer directly.
    pub bypassed: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Refused at a full queue or journal buffer.
    pub refused: u64,
    /// Left uncommitted when the drain deadline passed.
    pub left: u64,
    /// Whether pub/sub was journaled: what was not applied waits in the journal.
    pub journal: bool,
}

impl StopReport {
    fn of(state: &DaemonState, left: usize) -> StopReport {
        StopReport {
            received: state.received(),
            journaled: state.journal.appended.load(Ordering::Relaxed),
            bypassed: state.journal.bypassed.load(Ordering::Relaxed),
            applied: state.writer.applied_total(),
            duplicates: state.writer.duplicates.load(Ordering::Relaxed),
            dead_lettered: state.writer.dead_lettered.load(Ordering::Relaxed),
            refused: state.refused(),
            left: left as u64,
            journal: state.uses_journal.load(Ordering::Relaxed),
        }
    }

    /// Whether everything received is accounted for (committed, dead-lettered or journaled).
    pub fn complete(&self) -> bool {
        self.left == 0 && self.refused == 0
    }

    pub fn outcome(&self) -> &'static str {
        match (self.left, self.refused, self.journal) {
            (0, 0, false) => "stopped; every received message is committed or dead-lettered",
            (0, 0, true) => {
                "stopped; every received message is committed, dead-lettered or kept in the \
                 journal for the next start"
            }
            (0, _, _) => {
                "stopped; every received message is committed or dead-lettered, except those \
                 refused when the queue was full (refused)"
            }
            _ => "stopped with received messages left uncommitted (left) or refused (refused)",
        }
    }

    /// One line, its level the outcome's: a run that lost or refused messages must not end
    /// quietly.
    fn log(&self) {
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    received = self.received,
                    journaled = self.journaled,
                    bypassed = self.bypassed,
                    applied = self.applied,
                    duplicates = self.duplicates,
                    dead_lettered = self.dead_lettered,
                    refused = self.refused,
                    left = self.left,
                    "{}",
                    self.outcome()
                )
            };
        }
        if self.complete() {
            line!(tracing::Level::INFO);
        } else {
            line!(tracing::Level::WARN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_limits_are_checked_only_under_a_watchdog() {
        let mut config = Config::default();
        config.database.statement_timeout_ms = 20_000;
        config.database.lock_timeout_ms = 1_000;
        config.database.connect_timeout_ms = 1_000;
        assert!(check_stall_limits(&config, None).is_ok());
        let error = check_stall_limits(&config, Some(Duration::from_secs(30))).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("database.statement_timeout_ms"),
            "{error}"
        );
        assert!(check_stall_limits(&config, Some(Duration::from_secs(41))).is_ok());
    }

    #[test]
    fn the_outcome_names_what_is_missing() {
        let report = StopReport {
            received: 5,
            journaled: 0,
            bypassed: 0,
            applied: 5,
            duplicates: 0,
            dead_lettered: 0,
            refused: 0,
            left: 0,
            journal: false,
        };
        assert!(report.complete());
        let refused = StopReport {
            refused: 1,
            ..report.clone()
        };
        assert!(!refused.complete() && refused.outcome().contains("refused"));
        let left = StopReport { left: 2, ..report };
        assert!(left.outcome().contains("left uncommitted"));
    }
}
