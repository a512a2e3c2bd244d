//! The pub/sub journal: pub/sub made durable on arrival (`transport.journal = true`).
//!
//! Pub/sub forgets a message once it is pushed to us, so a crash or a PostgreSQL outage after
//! receipt would lose what the queue held. With the journal, the push handler hands each message
//! to the [`JournalAppender`], which XADDs it (pipelined) to one journal stream; the stream reader
//! reads that stream through the consumer group like any stream key and feeds the writer. Past
//! the XADD everything is the stream transport's machinery: XACK after commit, own-pending
//! re-read on restart, XAUTOCLAIM of a dead instance's entries, dead letter after
//! `max_deliveries`.
//!
//! One stream for every channel, not one per channel: a single XADD order is the order of
//! receipt, which plain pub/sub keeps across channels too (a bar must not overtake the trade
//! that created the row it marks). Each entry names its channel in the `channel` field.
//!
//! Applied entries are trimmed with XTRIM MINID, never MAXLEN: the threshold is the oldest
//! entry some group still needs (pending, or not yet delivered), so trimming can only remove
//! what every group has acknowledged, whatever the backlog. MAXLEN would cut unapplied entries
//! during a PostgreSQL outage — the very case the journal exists for. The acker trims after
//! acknowledging journal entries and once at start: what a killed predecessor acknowledged but
//! had not trimmed yet goes without waiting for new traffic.
//!
//! It must not decode events or touch PostgreSQL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
use redis::{AsyncConnectionConfig, RedisResult, RetryMethod};
use tokio_util::sync::CancellationToken;

use super::connection::Reconnecting;
use crate::config::RedisEndpoint;
use crate::core::health::JournalHealth;
use crate::core::Backoff;

/// The first retry's wait after a failed round trip.
const FIRST_RETRY: Duration = Duration::from_millis(50);
use crate::core::queue::{Inbound, QueueReceiver, QueueSender};
use crate::core::ChannelKind;

/// The entry field naming the channel a journaled message arrived on.
pub const CHANNEL_FIELD: &str = "channel";
/// Entry fields of a message cut at the ingest edge: its size as received and its SHA-256 (hex).
pub const SIZE_FIELD: &str = "size";
pub const SHA256_FIELD: &str = "sha256";

/// The oversized marker a journal entry carries, if any.
pub fn entry_oversized(
    size: Option<&redis::Value>,
    sha256: Option<&redis::Value>,
) -> Option<crate::core::queue::Oversized> {
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
        _ => None,
    };
    let size = text(size)?.parse().ok()?;
    let hex = text(sha256)?;
    let mut sha = [0u8; 32];
    for (i, byte) in sha.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(crate::core::queue::Oversized { size, sha256: sha })
}

/// Journal trimming settings for the stream source's acker.
#[derive(Debug, Clone)]
pub struct JournalTrim {
    pub interval: Duration,
    pub health: Arc<JournalHealth>,
}

/// XADDs pub/sub messages to the journal stream.
pub struct JournalAppender {
    pub endpoint: RedisEndpoint,
    pub key: Arc<str>,
    /// Entry field holding the payload (`streams.field`, so the reader finds it).
    pub field: String,
    /// XADDs per pipelined round trip.
    pub batch: usize,
    pub max_backoff: Duration,
    pub health: Arc<JournalHealth>,
}

/// What became of one append round trip.
enum Appended {
    /// Every message is in the journal or was handed to the writer.
    Done,
    /// The connection failed: these messages are not known to be journaled; retry them.
    Retry(Vec<Inbound>),
}

/// How long an append round trip in flight may still take once shutdown began, and each
/// one of the final flush: Redis answers in milliseconds when it is up at all.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl JournalAppender {
    /// Journals what the push handler buffers until `flush` is cancelled — which the caller
    /// does once pub/sub is unsubscribed — then journals what is left and returns. Messages
    /// that cannot be journaled by then (Redis down during shutdown) go to the writer through
    /// `direct`, which is still draining, instead of being dropped.
    pub async fn run(
        &self,
        mut buffer: QueueReceiver,
        direct: QueueSender,
        flush: CancellationToken,
    ) {
        let mut conn = Reconnecting::default();
        let mut idle_beat = tokio::time::interval(Duration::from_secs(1));
        let mut backoff = Backoff::new(FIRST_RETRY, self.max_backoff);
        let mut retry: Vec<Inbound> = Vec::new();
        loop {
            self.health.heartbeat.beat();
            let batch = if retry.is_empty() {
                let first = tokio::select! {
                    biased;
                    () = flush.cancelled() => break,
                    _ = idle_beat.tick() => continue,
                    m = buffer.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                self.fill(first, &mut buffer)
            } else {
                std::mem::take(&mut retry)
            };
            let replies = {
                let send = self.send(&mut conn, &batch);
                tokio::pin!(send);
                tokio::select! {
                    r = &mut send => r,
                    // Shutdown must not abandon a round trip that is about to land (its
                    // messages would be journaled twice), nor wait on a dead one for long.
                    () = flush.cancelled() => tokio::time::timeout(SHUTDOWN_GRACE, send)
                        .await
                        .unwrap_or_else(|_| Err(timed_out())),
                }
            };
            match self.settle(batch, replies, &mut conn, &buffer, &direct) {
                Appended::Done => backoff.reset(),
                Appended::Retry(left) => {
                    let wait = backoff.fail();
                    self.health.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("trading_sync_journal_append_retries_total").increment(1);
                    tracing::warn!(
                        messages = left.len(),
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot reach Redis to journal received messages; they wait in memory"
                    );
                    retry = left;
                    tokio::select! {
                        () = flush.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        // Unsubscribed: the buffer holds all that will ever arrive. One more try each while
        // Redis answers; after a failure the rest goes to the writer without waiting again.
        buffer.close();
        let mut left = retry;
        while let Some(m) = buffer.try_recv() {
            left.push(m);
        }
        let mut reachable = true;
        for chunk in chunks(left, self.batch) {
            if !reachable {
                self.bypass(chunk, &buffer, &direct, "Redis unreachable at shutdown");
                continue;
            }
            let replies = tokio::time::timeout(SHUTDOWN_GRACE, self.send(&mut conn, &chunk))
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            if let Appended::Retry(unsent) =
                self.settle(chunk, replies, &mut conn, &buffer, &direct)
            {
                reachable = false;
                self.bypass(unsent, &buffer, &direct, "Redis unreachable at shutdown");
            }
        }
    }

    /// Whatever is ready, up to `batch` messages.
    fn fill(&self, first: Inbound, buffer: &mut QueueReceiver) -> Vec<Inbound> {
        let mut batch = Vec::with_capacity(self.batch.min(1024));
        batch.push(first);
        while batch.len() < self.batch {
            match buffer.try_recv() {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        batch
    }

    /// One pipelined round trip of XADDs: the overall result is the connection's, each item
    /// Redis's answer to one XADD.
    async fn send(
        &self,
        conn: &mut Reconnecting,
        batch: &[Inbound],
    ) -> RedisResult<Vec<RedisResult<String>>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for m in batch {
            let xadd = pipe
                .cmd("XADD")
                .arg(&*self.key)
                .arg("*")
                .arg(CHANNEL_FIELD)
                .arg(m.channel.suffix())
                .arg(&self.field)
                .arg(&m.payload);
            if let Some(cut) = &m.oversized {
                let hex: String = cut.sha256.iter().map(|b| format!("{b:02x}")).collect();
                xadd.arg(SIZE_FIELD)
                    .arg(cut.size)
                    .arg(SHA256_FIELD)
                    .arg(hex);
            }
        }
        conn.run(
            async || self.connection().await,
            async |c: &mut MultiplexedConnection| pipe.query_async(c).await,
        )
        .await
    }

    /// Settles the messages Redis answered for (journaled, or bypassed on an error reply). On a
    /// connection failure every message comes back for a retry — a retried XADD that had in
    /// fact landed makes a second entry, which the trade-id ledger and the snapshots'
    /// last-writer-wins make harmless.
    fn settle(
        &self,
        batch: Vec<Inbound>,
        replies: RedisResult<Vec<RedisResult<String>>>,
        conn: &mut Reconnecting,
        buffer: &QueueReceiver,
        direct: &QueueSender,
    ) -> Appended {
        let replies = match replies {
            Ok(r) if r.len() == batch.len() => r,
            Ok(r) => {
                // Cannot happen on a healthy connection: start afresh.
                tracing::warn!(
                    sent = batch.len(),
                    replies = r.len(),
                    "journal reply count mismatch"
                );
                conn.reset();
                return Appended::Retry(batch);
            }
            Err(e) => {
                tracing::debug!(error = %e, "journal append failed");
                // Also when the round trip was abandoned on a timeout, before it could fail.
                conn.reset();
                return Appended::Retry(batch);
            }
        };
        let (mut done, mut done_bytes) = (0usize, 0usize);
        let mut retry = Vec::new();
        let mut refused = Vec::new();
        let mut reason = None;
        for (m, reply) in batch.into_iter().zip(replies) {
            match reply {
                Ok(_) => {
                    done += 1;
                    done_bytes += m.cost();
                }
                // LOADING, TRYAGAIN, READONLY (a failover): Redis will take it shortly.
                Err(e) if !matches!(e.retry_method(), RetryMethod::NoRetry) => retry.push(m),
                Err(e) => {
                    reason.get_or_insert_with(|| e.to_string());
                    refused.push(m);
                }
            }
        }
        if done > 0 {
            buffer.release(done, done_bytes);
            self.health
                .appended
                .fetch_add(done as u64, Ordering::Relaxed);
            metrics::counter!("trading_sync_journal_appended_total").increment(done as u64);
        }
        if let Some(reason) = reason {
            self.bypass(refused, buffer, direct, &reason);
        }
        if retry.is_empty() {
            Appended::Done
        } else {
            Appended::Retry(retry)
        }
    }

    /// Hands messages to the writer without the journal: applied as plain pub/sub would be,
    /// counted and logged, never dropped silently.
    fn bypass(
        &self,
        messages: Vec<Inbound>,
        buffer: &QueueReceiver,
        direct: &QueueSender,
        why: &str,
    ) {
        if messages.is_empty() {
            return;
        }
        let n = messages.len();
        let bytes: usize = messages.iter().map(Inbound::cost).sum();
        let mut refused = 0u64;
        for m in messages {
            let channel = m.channel;
            if direct.offer(m).is_err() {
                refused += 1;
                metrics::counter!("trading_sync_queue_refused_total", "channel" => channel.suffix())
                    .increment(1);
            }
        }
        buffer.release(n, bytes);
        self.health.bypassed.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("trading_sync_journal_bypassed_total").increment(n as u64);
        tracing::warn!(
            messages = n,
            lost = refused,
            reason = why,
            "could not journal received messages; handing them to the writer directly (not \
             durable until committed)"
        );
    }

    /// Its own connection, with a response timeout long enough for a large pipeline on a loaded
    /// machine: a timed-out round trip that did land would be journaled twice.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.endpoint
            .client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "journal append did not finish during shutdown",
    ))
}

fn chunks(mut messages: Vec<Inbound>, size: usize) -> Vec<Vec<Inbound>> {
    let mut out = Vec::new();
    while messages.len() > size {
        let rest = messages.split_off(size);
        out.push(std::mem::replace(&mut messages, rest));
    }
    if !messages.is_empty() {
        out.push(messages);
    }
    out
}

/// Reads the channel a journal entry names.
pub fn entry_channel(value: Option<&redis::Value>) -> Option<ChannelKind> {
    match value {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(ChannelKind::from_suffix),
        Some(redis::Value::SimpleString(s)) => ChannelKind::from_suffix(s),
        _ => None,
    }
}

/// A stream id as (milliseconds, sequence).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The smallest id greater than `id`.
fn next_id((ms, seq): (u64, u64)) -> (u64, u64) {
    match seq.checked_add(1) {
        Some(seq) => (ms, seq),
        None => (ms + 1, 0),
    }
}

/// The lowest id any group still needs: its oldest pending entry, or the first entry after the
/// last one it was delivered. None when the stream has no group (then nothing may go: a group
/// recreated after a Redis restart reads the stream from its start).
///
/// Each group's last-delivered id is read before its pending entries: an entry delivered in
/// between has a higher id, and one acknowledged in between is no longer needed, so the
/// threshold never passes an entry still owed to a group.
pub async fn trim_threshold(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> RedisResult<Option<(u64, u64)>> {
    let exists: bool = redis::cmd("EXISTS").arg(key).query_async(conn).await?;
    if !exists {
        return Ok(None);
    }
    let info: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await?;
    let mut threshold: Option<(u64, u64)> = None;
    for group in &info.groups {
        let Some(delivered) = parse_id(&group.last_delivered_id) else {
            return Ok(None);
        };
        let mut needed = next_id(delivered);
        if group.pending > 0 {
            let pending: StreamPendingReply = redis::cmd("XPENDING")
                .arg(key)
                .arg(&group.name)
                .query_async(conn)
                .await?;
            if let StreamPendingReply::Data(data) = pending {
                match parse_id(&data.start_id) {
                    Some(oldest) => needed = needed.min(oldest),
                    None => return Ok(None),
                }
            }
        }
        threshold = Some(threshold.map_or(needed, |t| t.min(needed)));
    }
    Ok(threshold)
}

/// Removes the entries every group has acknowledged; returns how many went.
pub async fn trim(
    conn: &mut MultiplexedConnection,
    key: &str,
    health: &JournalHealth,
) -> RedisResult<u64> {
    let started = Instant::now();
    let Some((ms, seq)) = trim_threshold(conn, key).await? else {
        return Ok(0);
    };
    let removed: u64 = redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(conn)
        .await?;
    let length: u64 = redis::cmd("XLEN").arg(key).query_async(conn).await?;
    health.trimmed.fetch_add(removed, Ordering::Relaxed);
    health.length.store(length, Ordering::Relaxed);
    metrics::counter!("trading_sync_journal_trimmed_total").increment(removed);
    metrics::gauge!("trading_sync_journal_length").set(length as f64);
    tracing::debug!(
        removed,
        length,
        took_ms = started.elapsed().as_millis() as u64,
        "journal trimmed"
    );
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_step() {
        assert_eq!(parse_id("1700000000000-5"), Some((1_700_000_000_000, 5)));
        assert_eq!(parse_id("0-0"), Some((0, 0)));
        assert_eq!(parse_id("12"), None);
        assert_eq!(parse_id("a-1"), None);
        assert_eq!(next_id((7, 3)), (7, 4));
        assert_eq!(next_id((7, u64::MAX)), (8, 0));
        // Ordering is numeric, not textual: "9-0" < "10-0".
        assert!(parse_id("9-0") < parse_id("10-0"));
    }

    #[test]
    fn chunks_keep_order_and_size() {
        let messages: Vec<Inbound> = (0..5)
            .map(|i| Inbound::new(ChannelKind::Trades, vec![i]))
            .collect();
        let sizes: Vec<Vec<u8>> = chunks(messages, 2)
            .iter()
            .map(|c| c.iter().map(|m| m.payload[0]).collect())
            .collect();
        assert_eq!(sizes, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(chunks(Vec::new(), 3).is_empty());
    }

    #[test]
    fn entry_channels_are_read_exactly() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            entry_channel(Some(&bulk("trades"))),
            Some(ChannelKind::Trades)
        );
        assert_eq!(
            entry_channel(Some(&bulk("market_data"))),
            Some(ChannelKind::MarketData)
        );
        assert_eq!(entry_channel(Some(&bulk("Trades"))), None);
        assert_eq!(entry_channel(Some(&redis::Value::Int(1))), None);
        assert_eq!(entry_channel(None), None);
    }
}
