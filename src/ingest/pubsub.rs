//! Redis pub/sub in: one RESP3 connection subscribed to the data_sync channels.
//!
//! redis-rs's ConnectionManager reconnects (capped exponential backoff) and resubscribes by
//! itself; its push sender hands us every message as soon as the socket is read. We never slow
//! that read down: each message goes straight into the byte-bounded queue. Every disconnect is
//! logged and counted — messages published while we were away are gone, and we say so, with
//! how long the subscription was down.
//!
//! With the journal on, the queue handed to [`PubSubSource::connect`] is the journal's buffer:
//! messages then reach the writer through the journal stream.
//!
//! It must not decode messages or touch PostgreSQL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio_util::sync::CancellationToken;

use crate::config::RedisEndpoint;

use crate::core::health::SubscriptionHealth;
use crate::core::queue::{EdgeLimits, Inbound, QueueSender, Refused};
use crate::core::ChannelKind;

use super::connection::IngestError;

pub struct PubSubSource {
    pub endpoint: RedisEndpoint,
    /// The channels subscribed to (those configured for pub/sub).
    pub channels: Vec<(String, ChannelKind)>,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    pub health: Arc<SubscriptionHealth>,
    /// The setting that sizes the queue messages go to, named when it is full.
    pub budget_key: &'static str,
    /// Oversized messages are cut here, before they are queued or journaled.
    pub edge: EdgeLimits,
}

impl PubSubSource {
    /// Connects and subscribes; fails fast when Redis is unreachable or refuses us, so a wrong
    /// URL or password stops the daemon at startup with the cause.
    pub async fn connect(&self, queue: QueueSender) -> Result<ConnectionManager, IngestError> {
        let channels = self.channels.clone();
        // Pushes, and so automatic resubscription, exist only in RESP3.
        let endpoint = self
            .endpoint
            .resp3()
            .map_err(|e| IngestError::Url(e.to_string()))?;
        let client = endpoint
            .client()
            .map_err(|e| IngestError::connect(&self.endpoint, e))?;
        let sender = push_handler(
            queue,
            channels.clone(),
            self.health.clone(),
            self.budget_key,
            self.edge,
        );
        let config = ConnectionManagerConfig::new()
            .set_push_sender(sender)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_max_delay(self.max_backoff)
            .set_min_delay(Duration::from_millis(50));
        // One attempt first: the manager retries its first connection several times with
        // backoff (40 s against a server that never answers the TLS handshake), and a wrong
        // URL, password or certificate must stop startup at once, with its cause.
        let probe = AsyncConnectionConfig::new().set_connection_timeout(Some(self.connect_timeout));
        client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
            .map_err(|e| IngestError::connect(&self.endpoint, e))?;
        let mut manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| IngestError::connect(&self.endpoint, e))?;
        for (name, _) in &channels {
            manager
                .subscribe(name)
                .await
                .map_err(|error| IngestError::Subscribe {
                    channel: name.clone(),
                    error,
                })?;
        }
        // Each SUBSCRIBE above returned only once Redis confirmed it.
        self.health.live.store(true, Ordering::Release);
        Ok(manager)
    }

    /// Keeps the connection alive until shutdown. While the subscription is down a PING drives
    /// the manager's reconnect; on shutdown we unsubscribe so Redis stops sending at once.
    pub async fn run(&self, mut manager: ConnectionManager, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    self.health.heartbeat.beat();
                    if !self.health.live.load(Ordering::Acquire) {
                        let _: Result<String, _> =
                            redis::cmd("PING").query_async(&mut manager).await;
                    }
                }
            }
        }
        for (name, _) in &self.channels {
            let _ = tokio::time::timeout(Duration::from_secs(1), manager.unsubscribe(name)).await;
        }
        self.health.live.store(false, Ordering::Release);
    }
}

/// Runs on redis-rs's reader: must be quick and must never refuse a push — a refused
/// Disconnection notice would hide a loss.
fn push_handler(
    queue: QueueSender,
    channels: Vec<(String, ChannelKind)>,
    health: Arc<SubscriptionHealth>,
    budget_key: &'static str,
    edge: EdgeLimits,
) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    let last_refusal_log = std::sync::Mutex::new(None::<Instant>);
    // When the subscription went down, to say how long the hole in the books is.
    let down_since = std::sync::Mutex::new(None::<Instant>);
    move |push: PushInfo| {
        match push.kind {
            PushKind::Message => {
                // Owned: the payload moves into the queue without a copy.
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return Ok(());
                };
                let Some(index) = channels.iter().position(|(n, _)| n.as_bytes() == &name[..])
                else {
                    return Ok(());
                };
                let kind = &channels[index].1;
                health.received.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("trading_sync_events_received_total", "channel" => kind.suffix())
                    .increment(1);
                let inbound = Inbound::received(*kind, payload, &edge);
                if let Err(refused) = queue.offer(inbound) {
                    metrics::counter!("trading_sync_queue_refused_total", "channel" => kind.suffix())
                        .increment(1);
                    log_refusal(&last_refusal_log, &refused, &queue, budget_key);
                }
            }
            PushKind::Subscribe => {
                let now = health.confirmed.fetch_add(1, Ordering::AcqRel) + 1;
                if now >= channels.len() && !health.live.swap(true, Ordering::AcqRel) {
                    let outage = down_since.lock().ok().and_then(|mut d| d.take());
                    match outage {
                        Some(since) => {
                            let down = since.elapsed();
                            metrics::counter!("trading_sync_redis_unsubscribed_milliseconds_total")
                                .increment(down.as_millis() as u64);
                            tracing::warn!(
                                server = "redis",
                                channels = channels.len(),
                                down_ms = down.as_millis() as u64,
                                disconnects_total = health.disconnects.load(Ordering::Relaxed),
                                "resubscribed to Redis channels; whatever was published in \
                                 those down_ms is lost"
                            );
                        }
                        None => {
                            tracing::info!(
                                channels = channels.len(),
                                "subscribed to Redis channels"
                            )
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                health.confirmed.store(0, Ordering::Release);
                health.live.store(false, Ordering::Release);
                health.disconnects.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut d) = down_since.lock() {
                    d.get_or_insert_with(Instant::now);
                }
                metrics::counter!("trading_sync_reconnects_total", "server" => "redis")
                    .increment(1);
                tracing::warn!(
                    server = "redis",
                    "disconnected from Redis; reconnecting. Possible loss: what Redis had \
                     accepted for us but not yet sent (all of it when the cut-off was its \
                     client-output-buffer-limit) and what is published until the subscription is \
                     back (pub/sub keeps nothing); reconcile heals the trades among it"
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// One warn line per second at most: a full queue under a burst would otherwise flood the log.
fn log_refusal(
    last: &std::sync::Mutex<Option<Instant>>,
    refused: &Refused,
    queue: &QueueSender,
    budget_key: &str,
) {
    let Ok(mut last) = last.lock() else { return };
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        error = %refused,
        refused_total = queue.stats().refused.load(Ordering::Relaxed),
        setting = budget_key,
        "queue full: incoming messages are being refused (lost); raise the setting or find \
         why the database (or, with the journal, Redis) is slow"
    );
}
