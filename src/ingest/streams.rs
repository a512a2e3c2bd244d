//! Redis streams in: the same `data_sync:*` keys read through a consumer group.
//!
//! Durable where pub/sub is not: an entry stays pending in Redis until the transaction that
//! applied it has committed and the writer hands it back here to XACK. On start a consumer
//! re-reads its own pending entries; entries left pending by a dead consumer are taken over with
//! XAUTOCLAIM after `claim_idle_ms`; an entry delivered more than `max_deliveries` times is
//! dead-lettered (by the writer) and acknowledged. Reading waits when the queue is full —
//! Redis keeps the entries, so backpressure loses nothing.
//!
//! The pub/sub journal ([`super::journal`]) is one more key read here: its entries name their
//! channel, and the acker trims what every group has acknowledged.
//!
//! It must not decode events or touch PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{IngestError, Reconnecting};
use super::journal::{self, JournalTrim};
use crate::config::{RedisEndpoint, StreamsConfig};
use crate::core::health::StreamHealth;
use crate::core::Backoff;

/// The first retry's wait after a failed read.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The waits between XACK retries.
const ACK_FIRST_RETRY: Duration = Duration::from_millis(100);
const ACK_MAX_RETRY: Duration = Duration::from_millis(3200);
use crate::core::queue::{EdgeLimits, Inbound, QueueSender, StreamAck};
use crate::core::ChannelKind;

/// What a stream key carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// A `data_sync:*` key publishers XADD to: every entry is an event of this channel.
    Channel(ChannelKind),
    /// The pub/sub journal: each entry names its channel.
    Journal,
}

pub struct StreamSource {
    pub endpoint: RedisEndpoint,
    /// Stream keys read, with what each carries.
    pub keys: Vec<(Arc<str>, KeyRole)>,
    pub settings: StreamsConfig,
    pub consumer: String,
    pub max_backoff: Duration,
    pub health: Arc<StreamHealth>,
    /// Set when the journal is among the keys.
    pub journal: Option<JournalTrim>,
    /// Oversized entries of the channel keys are cut as they are read.
    pub edge: EdgeLimits,
    /// How many entries the next XREADGROUP asks for. A reply is read whole into memory, so
    /// reads start at one entry and double while entries are small, up to `read_count`, and
    /// fall back to one after an oversized entry: a backlog of large entries then costs one
    /// entry's memory at a time, not `read_count` of them.
    pub read_size: ReadSize,
}

/// The adaptive COUNT of the stream reader's reads (see [`StreamSource::read_size`]).
#[derive(Debug, Default)]
pub struct ReadSize(std::sync::atomic::AtomicUsize);

impl ReadSize {
    fn next(&self, max: usize) -> usize {
        self.0.load(Ordering::Relaxed).clamp(1, max)
    }

    /// After a read of `entries` (asked for `next(max)`): back to one after an oversized entry
    /// or an empty reply (idle: the next burst may be of large entries), double after a full
    /// reply of small ones, unchanged otherwise. So COUNT is large only while a backlog of small
    /// entries is being read.
    fn after(&self, oversized: bool, entries: usize, max: usize) {
        let asked = self.next(max);
        let next = if oversized || entries == 0 {
            1
        } else if entries >= asked {
            (asked * 2).min(max)
        } else {
            asked
        };
        self.0.store(next, Ordering::Relaxed);
    }
}

/// Why a reading session ended.
enum SessionEnd {
    Shutdown,
    /// The connection failed; reconnect after a backoff.
    Disconnected(redis::RedisError),
}

impl StreamSource {
    /// Checks that Redis answers and creates the consumer groups; fails fast at startup.
    pub async fn prepare(&self) -> Result<(), IngestError> {
        let mut conn = self.connection(false).await?;
        self.create_groups(&mut conn)
            .await
            .map_err(IngestError::Groups)
    }

    /// A connection of its own; a blocking one has no response timeout shorter than BLOCK
    /// (redis-rs's 500 ms default would fail every XREADGROUP BLOCK 2000).
    async fn connection(&self, blocking: bool) -> Result<MultiplexedConnection, IngestError> {
        let client = self
            .endpoint
            .client()
            .map_err(|e| IngestError::connect(&self.endpoint, e))?;
        let mut config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(Duration::from_secs(5)));
        if blocking {
            config = config.set_response_timeout(None);
        }
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| IngestError::connect(&self.endpoint, e))
    }

    async fn create_groups(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        for (key, role) in &self.keys {
            // Everything in the journal is owed to us, whatever start_id says for publishers'
            // streams: a group created after a Redis restart must read it from its start.
            let start_id = match role {
                KeyRole::Journal => "0",
                KeyRole::Channel(_) => self.settings.start_id.as_str(),
            };
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&**key)
                .arg(&self.settings.group)
                .arg(start_id)
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            match created {
                Ok(()) => {
                    tracing::info!(stream = %key, group = %self.settings.group, "created consumer group")
                }
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads until shutdown, reconnecting with capped backoff.
    pub async fn run_reader(&self, queue: QueueSender, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(FIRST_RETRY, self.max_backoff);
        loop {
            match self.session(&queue, &shutdown).await {
                SessionEnd::Shutdown => break,
                SessionEnd::Disconnected(e) => {
                    // A session that was reading worked: this failure starts a new series.
                    if self.health.live.load(Ordering::Acquire) {
                        backoff.reset();
                    }
                    let wait = backoff.fail();
                    self.health.live.store(false, Ordering::Release);
                    metrics::counter!("trading_sync_reconnects_total", "server" => "redis-streams")
                        .increment(1);
                    tracing::warn!(
                        server = "redis",
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "stream reader lost Redis; entries stay pending there and nothing is lost"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        self.health.live.store(false, Ordering::Release);
    }

    async fn session(&self, queue: &QueueSender, shutdown: &CancellationToken) -> SessionEnd {
        let mut conn = match self.connection(true).await {
            Ok(c) => c,
            Err(IngestError::Connect { error, .. }) => return SessionEnd::Disconnected(error),
            Err(e) => {
                return SessionEnd::Disconnected(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "bad stream configuration",
                    e.to_string(),
                )))
            }
        };
        if let Err(e) = self.create_groups(&mut conn).await {
            return SessionEnd::Disconnected(e);
        }
        self.health.live.store(true, Ordering::Release);

        // Our own pending entries first: delivered to us before a crash or restart, never acked.
        let mut cursors: Vec<String> = vec!["0".into(); self.keys.len()];
        loop {
            let reply = match self.read(&mut conn, &cursors, None).await {
                Ok(r) => r,
                Err(e) => return SessionEnd::Disconnected(e),
            };
            let mut any = false;
            for (index, key) in self.key_order(&reply) {
                if let Some(last) = key.ids.last() {
                    cursors[index] = last.id.clone();
                    any = true;
                }
            }
            if !any {
                break;
            }
            if let Err(end) = self.deliver(&mut conn, reply, true, queue, shutdown).await {
                return end;
            }
        }

        let claim_every = Duration::from_millis((self.settings.claim_idle_ms / 2).max(500));
        let mut next_claim = tokio::time::Instant::now();
        let new_only: Vec<String> = vec![">".into(); self.keys.len()];
        loop {
            self.health.heartbeat.beat();
            if tokio::time::Instant::now() >= next_claim {
                next_claim = tokio::time::Instant::now() + claim_every;
                if let Err(e) = self.claim_abandoned(&mut conn, queue, shutdown).await {
                    return e;
                }
                if let Err(e) = self.measure_lag(&mut conn).await {
                    return SessionEnd::Disconnected(e);
                }
            }
            let block = Some(self.settings.block_ms.min(claim_every.as_millis() as u64));
            tokio::select! {
                () = shutdown.cancelled() => return SessionEnd::Shutdown,
                () = queue.wait_below(self.settings.read_ahead) => {}
            }
            let reply = tokio::select! {
                () = shutdown.cancelled() => return SessionEnd::Shutdown,
                r = self.read(&mut conn, &new_only, block) => match r {
                    Ok(r) => r,
                    Err(e) => return SessionEnd::Disconnected(e),
                },
            };
            // Short of what this read asked for (the adaptive COUNT), not of read_count.
            let asked = self.read_size.next(self.settings.read_count);
            let short = reply.keys.iter().all(|k| k.ids.len() < asked);
            if let Err(end) = self.deliver(&mut conn, reply, false, queue, shutdown).await {
                return end;
            }
            if short {
                self.health.caught_up.store(true, Ordering::Release);
            }
        }
    }

    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        ids: &[String],
        block_ms: Option<u64>,
    ) -> redis::RedisResult<StreamReadReply> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.read_size.next(self.settings.read_count));
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS");
        for (key, _) in &self.keys {
            cmd.arg(&**key);
        }
        for id in ids {
            cmd.arg(id);
        }
        let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
        Ok(reply.unwrap_or_default())
    }

    /// Pairs each key of a reply with its index in `self.keys`.
    fn key_order<'a>(
        &self,
        reply: &'a StreamReadReply,
    ) -> impl Iterator<Item = (usize, &'a redis::streams::StreamKey)> + 'a {
        let names: Vec<Arc<str>> = self.keys.iter().map(|(k, _)| k.clone()).collect();
        reply.keys.iter().filter_map(move |k| {
            names
                .iter()
                .position(|n| **n == *k.key)
                .map(|index| (index, k))
        })
    }

    /// Queues entries (waiting for room). `redelivered` entries get their delivery count from
    /// XPENDING so that poison is recognised.
    async fn deliver(
        &self,
        conn: &mut MultiplexedConnection,
        reply: StreamReadReply,
        redelivered: bool,
        queue: &QueueSender,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        // Consumed, not cloned: a reply holds up to read_count entries per key.
        let entries = reply.keys.iter().map(|k| k.ids.len()).max().unwrap_or(0);
        let mut oversized = false;
        for key in reply.keys {
            let Some(index) = self.keys.iter().position(|(name, _)| **name == *key.key) else {
                continue;
            };
            oversized |= self
                .enqueue(conn, index, key.ids, redelivered, queue, shutdown)
                .await?;
        }
        self.read_size
            .after(oversized, entries, self.settings.read_count);
        Ok(())
    }

    async fn enqueue(
        &self,
        conn: &mut MultiplexedConnection,
        index: usize,
        entries: Vec<StreamId>,
        redelivered: bool,
        queue: &QueueSender,
        shutdown: &CancellationToken,
    ) -> Result<bool, SessionEnd> {
        if entries.is_empty() {
            return Ok(false);
        }
        let (key, role) = self.keys[index].clone();
        let deliveries = if redelivered {
            self.delivery_counts(conn, &key, &entries)
                .await
                .map_err(SessionEnd::Disconnected)?
        } else {
            HashMap::new()
        };
        tracing::debug!(stream = %key, entries = entries.len(), redelivered, "queueing stream entries");
        let mut oversized = false;
        for mut entry in entries {
            let count = deliveries.get(&entry.id).copied().unwrap_or(1);
            // Moved out of the entry: the payload is the bulk of it.
            let (payload, mut reject) = match entry.map.remove(&self.settings.field) {
                Some(Value::BulkString(bytes)) => (bytes, None),
                other => {
                    if let Some(value) = other {
                        entry.map.insert(self.settings.field.clone(), value);
                    }
                    (
                        describe_entry(&entry),
                        Some(format!(
                            "stream entry has no `{}` field holding the event",
                            self.settings.field
                        )),
                    )
                }
            };
            let channel = match role {
                KeyRole::Channel(channel) => channel,
                KeyRole::Journal => {
                    match journal::entry_channel(entry.map.get(journal::CHANNEL_FIELD)) {
                        Some(channel) => channel,
                        None => {
                            // Not written by us: dead-lettered (under trades, the first
                            // channel) rather than guessed at.
                            reject.get_or_insert_with(|| {
                                format!(
                                    "journal entry has no valid `{}` field",
                                    journal::CHANNEL_FIELD
                                )
                            });
                            ChannelKind::Trades
                        }
                    }
                }
            };
            if count > self.settings.max_deliveries {
                reject = Some(format!(
                    "delivered {count} times (streams.max_deliveries = {}) without being applied",
                    self.settings.max_deliveries
                ));
            }
            let mut inbound = match role {
                // Journaled by us: already cut at the pub/sub edge, marked in the entry.
                KeyRole::Journal => Inbound {
                    oversized: journal::entry_oversized(
                        entry.map.get(journal::SIZE_FIELD),
                        entry.map.get(journal::SHA256_FIELD),
                    ),
                    ..Inbound::new(channel, payload)
                },
                KeyRole::Channel(_) => Inbound::received(channel, payload, &self.edge),
            };
            oversized |= inbound.oversized.is_some();
            inbound.ack = Some(StreamAck {
                key: key.clone(),
                id: entry.id,
                deliveries: Some(count),
                reject,
            });
            self.health.read.fetch_add(1, Ordering::Relaxed);
            if matches!(role, KeyRole::Channel(_)) && !redelivered {
                self.health.received.fetch_add(1, Ordering::Relaxed);
            }
            // A journal entry was counted when pub/sub delivered it.
            if matches!(role, KeyRole::Channel(_)) {
                metrics::counter!("trading_sync_events_received_total", "channel" => channel.suffix())
                    .increment(1);
            }
            tokio::select! {
                // Not queued: it stays pending in Redis and is re-read at the next start.
                () = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                sent = queue.send_wait(inbound) => {
                    if sent.is_err() {
                        return Err(SessionEnd::Shutdown);
                    }
                }
            }
        }
        Ok(oversized)
    }

    /// Delivery counts of our pending entries in the id range of `entries`.
    async fn delivery_counts(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entries: &[StreamId],
    ) -> redis::RedisResult<HashMap<String, u32>> {
        let (first, last) = (&entries[0].id, &entries[entries.len() - 1].id);
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(key)
            .arg(&self.settings.group)
            .arg(first)
            .arg(last)
            .arg(entries.len())
            .arg(&self.consumer)
            .query_async(conn)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered as u32))
            .collect())
    }

    /// Takes over entries another consumer left pending longer than `claim_idle_ms`.
    async fn claim_abandoned(
        &self,
        conn: &mut MultiplexedConnection,
        queue: &QueueSender,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        for index in 0..self.keys.len() {
            let key = self.keys[index].0.clone();
            let mut cursor = "0-0".to_owned();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&*key)
                    .arg(&self.settings.group)
                    .arg(&self.consumer)
                    .arg(self.settings.claim_idle_ms)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.settings.read_count)
                    .query_async(conn)
                    .await
                    .map_err(SessionEnd::Disconnected)?;
                let claimed: Vec<StreamId> = reply.claimed;
                if !claimed.is_empty() {
                    self.health
                        .claimed
                        .fetch_add(claimed.len() as u64, Ordering::Relaxed);
                    metrics::counter!("trading_sync_stream_claimed_total")
                        .increment(claimed.len() as u64);
                    tracing::warn!(
                        stream = %key,
                        entries = claimed.len(),
                        "took over entries left pending by another consumer"
                    );
                    self.enqueue(conn, index, claimed, true, queue, shutdown)
                        .await?;
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(())
    }

    /// Pending entries, oldest pending age and stream length, summed over the keys.
    async fn measure_lag(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let (mut pending, mut oldest, mut length) = (0u64, 0u64, 0u64);
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for (key, role) in &self.keys {
            let summary: Value = redis::cmd("XPENDING")
                .arg(&**key)
                .arg(&self.settings.group)
                .query_async(conn)
                .await?;
            if let Value::Array(items) = summary {
                if let Some(Value::Int(n)) = items.first() {
                    pending += *n as u64;
                }
                if let Some(Value::BulkString(min_id)) = items.get(1) {
                    let ms = String::from_utf8_lossy(min_id)
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .unwrap_or(now_ms);
                    oldest = oldest.max(now_ms.saturating_sub(ms));
                }
            }
            let len: u64 = redis::cmd("XLEN").arg(&**key).query_async(conn).await?;
            length += len;
            if let (KeyRole::Journal, Some(trim)) = (role, &self.journal) {
                trim.health.length.store(len, Ordering::Relaxed);
                metrics::gauge!("trading_sync_journal_length").set(len as f64);
            }
        }
        self.health.pending.store(pending, Ordering::Relaxed);
        self.health
            .oldest_pending_ms
            .store(oldest, Ordering::Relaxed);
        self.health.length.store(length, Ordering::Relaxed);
        metrics::gauge!("trading_sync_stream_pending").set(pending as f64);
        metrics::gauge!("trading_sync_stream_oldest_pending_seconds").set(oldest as f64 / 1000.0);
        metrics::gauge!("trading_sync_stream_length").set(length as f64);
        Ok(())
    }

    /// XACKs what the writer committed. Runs until the writer drops its sender; during
    /// shutdown, an ack that keeps failing is given up after a few tries (the entries stay
    /// pending and are re-read, then recognised as duplicates, at the next start).
    pub async fn run_acker(
        &self,
        mut committed: mpsc::UnboundedReceiver<Vec<StreamAck>>,
        shutdown: CancellationToken,
    ) {
        let mut conn = Reconnecting::default();
        let journal_key = self
            .keys
            .iter()
            .find(|(_, role)| *role == KeyRole::Journal)
            .map(|(key, _)| key.clone());
        // When the journal is next trimmed: set by acks of journal entries, so an idle journal
        // costs no round trips — and once at start. A predecessor killed between its last ack
        // and the trim that ack scheduled leaves acknowledged entries behind, and nothing of
        // theirs is pending to be acknowledged (and so trimmed) here: without this trim they
        // would stay until new traffic comes, however long that is.
        let mut trim_at: Option<tokio::time::Instant> = match (&journal_key, &self.journal) {
            (Some(_), Some(_)) => Some(tokio::time::Instant::now()),
            _ => None,
        };
        loop {
            let acks = tokio::select! {
                acks = committed.recv() => match acks {
                    Some(acks) => acks,
                    None => break,
                },
                () = sleep_until_some(trim_at) => {
                    trim_at = None;
                    if let (Some(key), Some(trim)) = (&journal_key, &self.journal) {
                        if !self.trim_journal(&mut conn, key, trim).await {
                            trim_at = Some(tokio::time::Instant::now() + trim.interval);
                        }
                    }
                    continue;
                }
            };
            if let (Some(key), Some(trim)) = (&journal_key, &self.journal) {
                if trim_at.is_none() && acks.iter().any(|a| a.key == *key) {
                    trim_at = Some(tokio::time::Instant::now() + trim.interval);
                }
            }
            let mut by_key: BTreeMap<Arc<str>, Vec<String>> = BTreeMap::new();
            for ack in acks {
                by_key.entry(ack.key).or_default().push(ack.id);
            }
            let mut pipe = redis::pipe();
            for (key, ids) in &by_key {
                pipe.cmd("XACK")
                    .arg(&**key)
                    .arg(&self.settings.group)
                    .arg(ids)
                    .ignore();
            }
            // Capped low whatever redis.reconnect_max_backoff_ms says: a committed entry left
            // unacknowledged may be claimed and delivered again by another instance.
            let mut backoff = Backoff::new(ACK_FIRST_RETRY, self.max_backoff.min(ACK_MAX_RETRY));
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let result = conn
                    .run(
                        async || self.connection(false).await.map_err(|e| e.to_string()),
                        async |c: &mut MultiplexedConnection| {
                            pipe.query_async::<()>(c).await.map_err(|e| e.to_string())
                        },
                    )
                    .await;
                match result {
                    Ok(()) => {
                        let n: usize = by_key.values().map(Vec::len).sum();
                        self.health.acked.fetch_add(n as u64, Ordering::Relaxed);
                        metrics::counter!("trading_sync_stream_acked_total").increment(n as u64);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "cannot acknowledge stream entries; retrying");
                        if shutdown.is_cancelled() && attempt >= 3 {
                            break;
                        }
                        // Shutdown cuts the wait short: the last tries come at once, then the
                        // entries are left pending (re-read as duplicates at the next start).
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(backoff.fail()) => {}
                        }
                    }
                }
            }
        }
        // The writer is done: what it acknowledged last goes from the journal now, not at the
        // next start.
        if let (Some(key), Some(trim), Some(_)) = (&journal_key, &self.journal, trim_at) {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.trim_journal(&mut conn, key, trim),
            )
            .await;
        }
    }

    /// One trim of the journal; false if it failed (retried at the next interval).
    async fn trim_journal(&self, conn: &mut Reconnecting, key: &str, trim: &JournalTrim) -> bool {
        let result = conn
            .run(
                async || self.connection(false).await.map_err(|e| e.to_string()),
                async |c: &mut MultiplexedConnection| {
                    journal::trim(c, key, &trim.health)
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await;
        match result {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, stream = key, "cannot trim the journal; will retry");
                false
            }
        }
    }
}

/// Sleeps until `at`, or forever when None (a disabled select! branch).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A readable rendering of an entry without the expected field, kept as its dead letter's
/// payload.
fn describe_entry(entry: &StreamId) -> Vec<u8> {
    let mut fields: Vec<(&String, String)> = entry
        .map
        .iter()
        .map(|(k, v)| {
            let shown = match v {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            (k, shown)
        })
        .collect();
    fields.sort();
    format!("{fields:?}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::ReadSize;

    #[test]
    fn reads_grow_only_through_a_backlog_of_small_entries() {
        let size = ReadSize::default();
        let max = 1000;
        let mut seen = vec![size.next(max)];
        // A backlog of small entries: every reply full.
        for _ in 0..12 {
            let asked = size.next(max);
            size.after(false, asked, max);
            seen.push(size.next(max));
        }
        assert_eq!(&seen[..4], [1, 2, 4, 8]);
        assert_eq!(size.next(max), max);
        // Idle: an empty reply drops it back to one, so a burst of large entries that follows
        // is read one at a time.
        size.after(false, 0, max);
        assert_eq!(size.next(max), 1);
        // A full reply doubles it, a partial one keeps it, an oversized entry drops it to one.
        size.after(false, 1, max);
        size.after(false, 2, max);
        assert_eq!(size.next(max), 4);
        size.after(false, 3, max);
        assert_eq!(size.next(max), 4);
        size.after(true, 4, max);
        assert_eq!(size.next(max), 1);
    }
}
