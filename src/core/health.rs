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
    /// Batch commits slower than `database.slow_query_ms`.
    pub slow_commits: AtomicU64,
    /// Commit durations of the current summary interval (drained by the summary).
    pub commit_times: DurationSample,
}

impl WriterStats {
    pub(crate) fn applied_total(&self) -> u64 {
        self.applied
            .values()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// Durations recorded since the last [`DurationSample::drain`], as counts in log-spaced buckets
/// (four linear sub-buckets per power of two of microseconds). A percentile is reported as its
/// bucket's upper bound: never below the true value, and at most 25% above it (the widest
/// sub-bucket, the first of each octave, spans [2^o, 1.25·2^o); from 4 µs up, where bounds are
/// whole microseconds).
/// Recording is one relaxed atomic add and one atomic max: the writer's hot path takes no lock
/// and keeps no list, whatever the commit rate.
#[derive(Debug)]
pub struct DurationSample {
    buckets: [AtomicU64; SAMPLE_BUCKETS],
    max_us: AtomicU64,
}

/// 4 sub-buckets × 40 octaves: 1 µs up to 2^40 µs (12 days); anything longer lands in the last.
const SAMPLE_BUCKETS: usize = 160;

impl Default for DurationSample {
    fn default() -> Self {
        DurationSample {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
        }
    }
}

/// What a drained interval held.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DurationSummary {
    pub count: u64,
    /// Upper bounds of the buckets holding the 50th and 99th percentiles (never above `max`).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl DurationSample {
    pub fn record(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Takes the counts recorded since the last drain and starts a new interval. A record made
    /// during the drain counts in this interval or the next, never in neither.
    pub fn drain(&self) -> DurationSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let max_us = self.max_us.swap(0, Ordering::Relaxed);
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return DurationSummary::default();
        }
        // A record whose bucket add landed before the buckets' swap but whose max landed after
        // the max's swap is counted here with its max in the next interval: max_us may then read
        // less than a counted duration, 0 if it was the only one. The highest non-empty
        // bucket's lower bound is a duration this interval did reach; without this floor, p50,
        // p99 and max (which the percentiles are capped at) would read 0.
        let reached_us = counts
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, bucket_lower_us);
        let max_ms = max_us.max(reached_us) as f64 / 1_000.0;
        let percentile = |q: f64| {
            let rank = ((count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return (bucket_upper_us(i) as f64 / 1_000.0).min(max_ms);
                }
            }
            max_ms
        };
        DurationSummary {
            count,
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            max_ms,
        }
    }
}

/// Bucket `4·o + s` holds [2^o·(1 + s/4), 2^o·(1 + (s+1)/4)) µs; 0 and 1 µs share bucket 0.
fn bucket_of(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let sub = if octave >= 2 {
        ((us >> (octave - 2)) & 3) as usize
    } else {
        ((us << (2 - octave)) & 3) as usize
    };
    (octave * 4 + sub).min(SAMPLE_BUCKETS - 1)
}

/// The smallest whole µs a bucket holds (0 for bucket 0).
fn bucket_lower_us(bucket: usize) -> u64 {
    match bucket {
        0 => 0,
        b => bucket_upper_us(b - 1),
    }
}

/// The exclusive upper bound of a bucket, in whole µs (rounded up: the lowest octaves' buckets
/// are narrower than a microsecond).
fn bucket_upper_us(bucket: usize) -> u64 {
    let (octave, sub) = (bucket / 4, bucket % 4);
    ((1u64 << octave) * (5 + sub as u64)).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_duration_falls_below_its_buckets_bound_and_above_the_previous() {
        for us in [2u64, 3, 4, 5, 7, 8, 100, 1_000, 1_234, 65_535, 1 << 30] {
            let b = bucket_of(us);
            assert!(us < bucket_upper_us(b), "{us} in {b}");
            assert!(b == 0 || us >= bucket_upper_us(b - 1), "{us} in {b}");
            assert!(us >= bucket_lower_us(b), "{us} in {b}");
        }
    }

    /// The documented error: an upper bound at most 25% above the value, from 4 µs up.
    #[test]
    fn a_buckets_bound_is_at_most_25_percent_above_its_values() {
        let worst = (4u64..200_000)
            .map(|us| bucket_upper_us(bucket_of(us)) as f64 / us as f64)
            .fold(0.0, f64::max);
        assert!(worst <= 1.25 + 1e-9, "{worst}");
        assert!(worst > 1.24, "{worst}: the bound is tight");
    }

    /// A record counted in this interval whose max landed in the next one: the summary falls
    /// back to its bucket instead of reporting 0.
    #[test]
    fn a_count_without_its_max_still_reports_its_bucket() {
        let sample = DurationSample::default();
        // What `record` does, its atomic max not yet landed when the drain swaps.
        sample.buckets[bucket_of(2_000)].fetch_add(1, Ordering::Relaxed);
        let s = sample.drain();
        let lower = bucket_lower_us(bucket_of(2_000)) as f64 / 1_000.0;
        assert_eq!(s.count, 1);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (lower, lower, lower));
        assert!((1.6..=2.0).contains(&lower), "{lower}");
        // A lower max than a counted duration is lifted the same way.
        sample.record(Duration::from_micros(100));
        sample.buckets[bucket_of(50_000)].fetch_add(1, Ordering::Relaxed);
        let s = sample.drain();
        assert!(s.max_ms >= 40.0 && s.p99_ms == s.max_ms, "{s:?}");
    }

    #[test]
    fn percentiles_of_an_interval_and_a_fresh_start_after_the_drain() {
        let sample = DurationSample::default();
        assert_eq!(sample.drain(), DurationSummary::default());
        // 98 commits of 2 ms, one of 40 ms and one of 300 ms.
        for _ in 0..98 {
            sample.record(Duration::from_millis(2));
        }
        sample.record(Duration::from_millis(40));
        sample.record(Duration::from_millis(300));
        let s = sample.drain();
        assert_eq!(s.count, 100);
        assert!((2.0..=2.5).contains(&s.p50_ms), "{s:?}");
        assert!((40.0..=48.0).contains(&s.p99_ms), "{s:?}");
        assert_eq!(s.max_ms, 300.0);
        assert_eq!(sample.drain().count, 0);
    }
}
