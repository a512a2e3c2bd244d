//! Liveness and lag of each stage, written by the stage and read by the daemon's endpoints,
//! watchdog, summary and drain report. Plain counters: no stage reads another's.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::heartbeat::{Heartbeat, Since};
use super::PerChannel;
use crate::core::queue::QueueStats;

/// Liveness of the subscription, read by /readyz and the watchdog.
#[derive(Debug, Default)]
pub struct SubscriptionHealth {
    /// True while every channel's subscription is confirmed on the current connection.
    pub live: AtomicBool,
    /// Confirmed subscriptions on the current connection.
    pub(crate) confirmed: AtomicUsize,
    pub disconnects: AtomicU64,
    pub received: AtomicU64,
    /// Beats each time the session loop turns (watchdog).
    pub(crate) heartbeat: Heartbeat,
}

/// Consumer lag and liveness, for /readyz, metrics and tests.
#[derive(Debug, Default)]
pub struct StreamHealth {
    /// True while the reader's connection works.
    pub live: AtomicBool,
    pub read: AtomicU64,
    /// Entries of the channel keys delivered to this consumer for the first time: what "received"
    /// means for the stream transport (a redelivery or a takeover was received before, by this
    /// process or another; a journal entry was received as a pub/sub message).
    pub received: AtomicU64,
    pub claimed: AtomicU64,
    pub acked: AtomicU64,
    /// Entries pending for the group (all consumers), summed over keys.
    pub pending: AtomicU64,
    /// Age of the oldest pending entry, milliseconds.
    pub oldest_pending_ms: AtomicU64,
    /// Entries in the streams (XLEN), summed.
    pub length: AtomicU64,
    /// Set once a read of new entries came back short: the backlog present at start has been
    /// read (reconcile's start run waits for it, so waiting entries are not healed from rows).
    pub caught_up: AtomicBool,
    pub(crate) heartbeat: Heartbeat,
}

/// Counters of the journal, for metrics, /readyz and tests.
#[derive(Debug, Default)]
pub struct JournalHealth {
    /// Messages XADDed to the journal.
    pub appended: AtomicU64,
    /// Messages Redis refused to journal (an error reply retrying cannot fix, e.g. OOM), handed
    /// to the writer directly instead: applied, but not durable until committed.
    pub bypassed: AtomicU64,
    /// Append round trips retried after a lost connection.
    pub retries: AtomicU64,
    /// Entries removed by XTRIM MINID after every group acknowledged them.
    pub trimmed: AtomicU64,
    /// XLEN of the journal at the last trim or lag measurement.
    pub length: AtomicU64,
    /// The buffer between the push handler and the appender.
    pub buffer: Arc<QueueStats>,
    /// Beats each time the appender's loop turns (watchdog).
    pub(crate) heartbeat: Heartbeat,
}

/// Running totals, for the summary log line, /readyz detail and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    /// Per channel: events whose effect was applied.
    pub applied: PerChannel<AtomicU64>,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Beats on every loop turn, idle or not.
    pub(crate) heartbeat: Heartbeat,
    /// Set while the writer holds a batch it has not committed yet: how long it has been stuck.
    pub(crate) busy: Since,
    /// True while batches fail to reach the database (any error but a data error).
    pub database_failing: AtomicBool,
    /// True while that error is one retrying alone cannot fix (permissions, schema, password).
    pub blocked: AtomicBool,
}

impl WriterStats {
    pub(crate) fn applied_total(&self) -> u64 {
        self.applied
            .values()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}
