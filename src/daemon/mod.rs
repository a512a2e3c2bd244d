//! `trading-sync run`: wires Redis in → queue → batch writer → PostgreSQL, and stops it cleanly.
//!
//! Owns task lifetimes only: every task gets the shutdown token passed in and is awaited before
//! `run` returns, so nothing is left detached.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::apply::{Writer, WriterEnd, WriterSettings};
use crate::config::Config;
use crate::events::DecodeLimits;
use crate::ingest::pubsub::{PubSubSource, SubscriptionHealth};
use crate::ingest::queue::{self, QueueStats};

/// Shared state the daemon exposes (health endpoints, tests).
#[derive(Debug, Default)]
pub struct DaemonState {
    pub subscription: Arc<SubscriptionHealth>,
    pub queue: Arc<QueueStats>,
}

impl DaemonState {
    /// Messages received and not yet committed or dead-lettered.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Runs until `shutdown` is cancelled, then drains and returns. `ready` is called once the
/// database is reachable, the schema current and every subscription confirmed.
pub async fn run(
    config: &Config,
    shutdown: CancellationToken,
    state: Arc<DaemonState>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let pg = config
        .pg_config()
        .context("while reading the database settings")?;
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

    let (queue_tx, queue_rx) = queue::queue(config.sync.queue_max_bytes, state.queue.clone());
    let source = PubSubSource {
        url: config
            .redis
            .effective_url()
            .context("while reading redis.password_file")?,
        prefix: config.redis.channel_prefix.clone(),
        max_backoff: Duration::from_millis(config.redis.reconnect_max_backoff_ms),
        connect_timeout: Duration::from_millis(config.database.connect_timeout_ms),
        health: state.subscription.clone(),
    };
    let manager = source
        .connect(queue_tx)
        .await
        .context("while subscribing to Redis (redis.url)")?;

    let writer = Writer::new(
        WriterSettings {
            batch_max_events: config.sync.batch_max_events,
            batch_max_wait: Duration::from_millis(config.sync.batch_max_wait_ms),
            drain_deadline: Duration::from_millis(config.sync.drain_deadline_ms),
            limits: DecodeLimits {
                max_message_bytes: config.sync.max_message_bytes,
                exchange_tz: config.exchange_tz()?,
            },
            pg,
            max_backoff: Duration::from_millis(config.redis.reconnect_max_backoff_ms),
        },
        None,
        shutdown.clone(),
    );
    let writer = tokio::spawn(writer.run(queue_rx));
    ready();
    tracing::info!(prefix = %config.redis.channel_prefix, "trading-sync is running");

    source.run(manager, shutdown.clone()).await;
    let end = writer
        .await
        .context("the batch writer panicked")?
        .context("while applying events")?;
    match end {
        WriterEnd::Drained => {
            tracing::info!("drained; every received message is committed or dead-lettered");
            Ok(())
        }
        WriterEnd::DeadlineExceeded { left } => {
            // Logged with counts by the writer; exiting 0 because the stop itself was asked for.
            tracing::warn!(left, "stopped with messages left uncommitted");
            Ok(())
        }
    }
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
