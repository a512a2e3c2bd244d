//! The bounded, byte-sized queue between reading Redis and writing PostgreSQL.
//!
//! Reading must never wait on the database: a subscriber that stops reading makes Redis drop it
//! at its pub/sub output-buffer limit, losing everything buffered. So the reader offers each
//! message without blocking; the queue accounts the bytes of every message received and not yet
//! committed, and refuses — counting and logging it — only past `queue_max_bytes`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::core::ChannelKind;

/// One message as received, not yet decoded.
#[derive(Debug)]
pub struct Inbound {
    pub channel: ChannelKind,
    /// The raw bytes, kept as received so a dead letter stores exactly what was published.
    pub payload: Vec<u8>,
    /// For publish-to-commit latency and the queue-age metric.
    pub received_at: Instant,
    /// Set for stream entries: what to XACK once the entry's fate is committed.
    pub ack: Option<StreamAck>,
    /// Set when the message arrived larger than `sync.max_message_bytes`: it will be
    /// dead-lettered, and `payload` may be only its first bytes.
    pub oversized: Option<Oversized>,
}

/// What is known of a message refused for its size at the ingest edge. redis-rs has read it
/// whole; from here on only what the dead letter keeps is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    /// The message's size as received.
    pub size: usize,
    /// SHA-256 of the whole message, so a copy held elsewhere can be matched.
    pub sha256: [u8; 32],
}

impl Oversized {
    /// Whether the payload still holds the whole message (a replay can use it).
    pub(crate) fn whole(&self, payload: &[u8]) -> bool {
        payload.len() == self.size
    }
}

/// How much of a message the ingest edge keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EdgeLimits {
    /// `sync.max_message_bytes`: larger messages are refused (dead-lettered unparsed).
    pub max_message_bytes: usize,
    /// `sync.dead_letter_max_bytes`: a refused message up to this size is kept whole (replayable
    /// once the limit is raised); a larger one only its first [`OVERSIZED_PREFIX_BYTES`].
    pub dead_letter_max_bytes: usize,
}

/// What is kept of a message too large even for a dead letter: enough to see what it was.
pub(crate) const OVERSIZED_PREFIX_BYTES: usize = 4096;

/// A stream entry to acknowledge after its transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAck {
    pub key: std::sync::Arc<str>,
    pub id: String,
    /// How many times Redis has delivered the entry (XPENDING), when known.
    pub deliveries: Option<u32>,
    /// Why the entry must be dead-lettered without decoding (delivered too often, no event
    /// field); None for a normal entry.
    pub reject: Option<String>,
}

impl Inbound {
    /// A pub/sub message: nothing to acknowledge.
    pub fn new(channel: ChannelKind, payload: Vec<u8>) -> Self {
        Inbound {
            channel,
            payload,
            received_at: Instant::now(),
            ack: None,
            oversized: None,
        }
    }

    /// A message as it arrives at the ingest edge: one over `max_message_bytes` is marked, and
    /// cut to a prefix when over `dead_letter_max_bytes` too, before it is queued or journaled —
    /// a 50 MiB message then costs its 4 KiB prefix, not 50 MiB of queue, journal and table.
    pub(crate) fn received(
        channel: ChannelKind,
        mut payload: Vec<u8>,
        limits: &EdgeLimits,
    ) -> Self {
        use sha2::Digest;
        let oversized = (payload.len() > limits.max_message_bytes).then(|| {
            let marker = Oversized {
                size: payload.len(),
                sha256: sha2::Sha256::digest(&payload).into(),
            };
            if payload.len() > limits.dead_letter_max_bytes {
                // Copied out while the message is still allocated, then the message freed: a
                // shrink in place can leave the small block inside the freed hole, which the
                // next large message then cannot reuse.
                // Never longer than the message: dead_letter_max_bytes may be below 4 KiB.
                let keep = OVERSIZED_PREFIX_BYTES.min(limits.dead_letter_max_bytes);
                let prefix = payload[..keep].to_vec();
                payload = prefix;
            }
            marker
        });
        Inbound {
            oversized,
            ..Inbound::new(channel, payload)
        }
    }

    /// Bytes this message holds against the queue's budget (payload plus bookkeeping).
    pub(crate) fn cost(&self) -> usize {
        self.payload.len() + std::mem::size_of::<Inbound>()
    }
}

/// Counters shared by both ends; read by metrics and the drain report.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Bytes received and not yet released by the writer (committed or dead-lettered).
    pub bytes: AtomicUsize,
    /// Messages received and not yet released.
    pub depth: AtomicUsize,
    /// Messages refused because the queue was full: lost, and said so.
    pub refused: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct QueueSender {
    tx: mpsc::UnboundedSender<Inbound>,
    stats: Arc<QueueStats>,
    max_bytes: usize,
    /// Signalled when budget is released, for senders that can afford to wait.
    space: Arc<tokio::sync::Notify>,
}

pub(crate) struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<Inbound>,
    stats: Arc<QueueStats>,
    space: Arc<tokio::sync::Notify>,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("queue full ({bytes} of {max_bytes} bytes in use)")]
    Full { bytes: usize, max_bytes: usize },
    #[error("queue closed (the writer has stopped)")]
    Closed,
}

/// `stats` is passed in so that health endpoints and tests can watch the queue.
pub(crate) fn queue(max_bytes: usize, stats: Arc<QueueStats>) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let space = Arc::new(tokio::sync::Notify::new());
    (
        QueueSender {
            tx,
            stats: stats.clone(),
            max_bytes,
            space: space.clone(),
        },
        QueueReceiver { rx, stats, space },
    )
}

impl QueueSender {
    /// Queues without waiting. The caller logs and counts a refusal.
    pub(crate) fn offer(&self, message: Inbound) -> Result<(), Refused> {
        self.reserve_and_send(message).map_err(|(refused, _)| {
            if matches!(refused, Refused::Full { .. }) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            refused
        })
    }

    /// Reserves budget and sends; on failure the message comes back to the caller (a large Err
    /// by design: it is the message itself, returned on the cold path).
    #[allow(clippy::result_large_err)]
    fn reserve_and_send(&self, message: Inbound) -> Result<(), (Refused, Inbound)> {
        let cost = message.cost();
        // fetch_update makes check-and-reserve atomic across concurrent offerers.
        let reserved =
            self.stats
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bytes| {
                    (bytes + cost <= self.max_bytes).then_some(bytes + cost)
                });
        if let Err(bytes) = reserved {
            let full = Refused::Full {
                bytes,
                max_bytes: self.max_bytes,
            };
            return Err((full, message));
        }
        self.stats.depth.fetch_add(1, Ordering::AcqRel);
        self.tx.send(message).map_err(|returned| {
            self.stats.bytes.fetch_sub(cost, Ordering::AcqRel);
            self.stats.depth.fetch_sub(1, Ordering::AcqRel);
            (Refused::Closed, returned.0)
        })
    }

    /// Queues, waiting for budget if the queue is full: for stream entries, which Redis keeps
    /// safely until read, so waiting (backpressure) is better than refusing.
    pub(crate) async fn send_wait(&self, mut message: Inbound) -> Result<(), Refused> {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.reserve_and_send(message) {
                Ok(()) => return Ok(()),
                Err((Refused::Closed, _)) => return Err(Refused::Closed),
                Err((Refused::Full { .. }, returned)) => {
                    message = returned;
                    space.await;
                }
            }
        }
    }

    /// Waits until fewer than `depth` messages are queued or in flight.
    pub(crate) async fn wait_below(&self, depth: usize) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if self.stats.depth.load(Ordering::Acquire) < depth || self.tx.is_closed() {
                return;
            }
            space.await;
        }
    }

    pub(crate) fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }
}

impl QueueReceiver {
    /// Waits for the next message; None once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }

    /// Takes a message if one is ready.
    pub(crate) fn try_recv(&mut self) -> Option<Inbound> {
        self.rx.try_recv().ok()
    }

    /// Gives back the budget of messages whose fate is sealed (committed or dead-lettered).
    pub(crate) fn release(&self, messages: usize, bytes: usize) {
        self.stats.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.stats.depth.fetch_sub(messages, Ordering::AcqRel);
        self.space.notify_waiters();
    }

    /// Stops accepting: later offers are refused as Closed, queued messages can still be read.
    pub(crate) fn close(&mut self) {
        self.rx.close();
        // Wake waiting senders so they see the queue closed.
        self.space.notify_waiters();
    }

    pub(crate) fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Inbound {
        Inbound::new(ChannelKind::Trades, vec![b'x'; len])
    }

    #[tokio::test]
    async fn a_waiting_sender_resumes_when_budget_is_released() {
        let one = message(100).cost();
        let (tx, mut rx) = queue(one, Default::default());
        tx.offer(message(100)).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_wait(message(100)).await }
        });
        let first = rx.recv().await.unwrap();
        assert!(!waiting.is_finished());
        rx.release(1, first.cost());
        waiting.await.unwrap().unwrap();
        assert_eq!(tx.stats().depth.load(Ordering::Relaxed), 1);
        assert_eq!(
            tx.stats().refused.load(Ordering::Relaxed),
            0,
            "waiting is not refusing"
        );
    }

    #[tokio::test]
    async fn refuses_past_the_byte_budget_and_counts_it() {
        let one = message(100).cost();
        let (tx, mut rx) = queue(one * 2, Default::default());
        tx.offer(message(100)).unwrap();
        tx.offer(message(100)).unwrap();
        assert!(matches!(tx.offer(message(100)), Err(Refused::Full { .. })));
        assert_eq!(tx.stats().refused.load(Ordering::Relaxed), 1);
        assert_eq!(tx.stats().depth.load(Ordering::Relaxed), 2);

        let got = rx.recv().await.unwrap();
        // Budget comes back only on release, not on receipt: in-flight batches still count.
        assert!(tx.offer(message(100)).is_err());
        rx.release(1, got.cost());
        tx.offer(message(100)).unwrap();
        assert_eq!(tx.stats().bytes.load(Ordering::Relaxed), one * 2);
    }

    #[tokio::test]
    async fn closed_queue_refuses_and_keeps_accounting_straight() {
        let (tx, mut rx) = queue(1 << 20, Default::default());
        rx.close();
        assert_eq!(tx.offer(message(10)), Err(Refused::Closed));
        assert_eq!(tx.stats().bytes.load(Ordering::Relaxed), 0);
        assert_eq!(tx.stats().depth.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_edge_keeps_what_the_limits_allow_and_never_more_than_the_message() {
        for (max, dead, size, kept) in [
            (1024, 2048, 3000, 2048),
            (1024, 2048, 2000, 2000),
            (1024, 2048, 1000, 1000),
            (65536, 1 << 20, 5 << 20, OVERSIZED_PREFIX_BYTES),
            (256, 256, 257, 256),
        ] {
            let limits = EdgeLimits {
                max_message_bytes: max,
                dead_letter_max_bytes: dead,
            };
            let inbound = Inbound::received(ChannelKind::Trades, vec![7; size], &limits);
            assert_eq!(inbound.payload.len(), kept, "{max} {dead} {size}");
            assert_eq!(
                inbound.oversized.as_ref().map(|o| o.size),
                (size > max).then_some(size)
            );
        }
    }
}
