//! Progress marks that the watchdog reads: a task beats each time its loop turns, and systemd
//! gets WATCHDOG=1 only while every task has beaten recently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process epoch of the last beat.
#[derive(Debug)]
pub(crate) struct Heartbeat(AtomicU64);

impl Default for Heartbeat {
    fn default() -> Self {
        let beat = Heartbeat(AtomicU64::new(0));
        beat.beat();
        beat
    }
}

impl Heartbeat {
    pub(crate) fn beat(&self) {
        self.0
            .store(epoch().elapsed().as_millis() as u64, Ordering::Release);
    }

    pub(crate) fn age(&self) -> Duration {
        let now = epoch().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.0.load(Ordering::Acquire)))
    }
}

/// Since when a task has been busy with one piece of work, if it is: /readyz tells a writer
/// stuck on a batch from one that is merely idle.
#[derive(Debug, Default)]
pub(crate) struct Since(AtomicU64);

impl Since {
    pub(crate) fn set(&self) {
        // 0 means "not busy": a mark of 0 ms after the epoch is stored as 1.
        let now = (epoch().elapsed().as_millis() as u64).max(1);
        self.0.store(now, Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// How long the current piece of work has taken so far; None when idle.
    pub(crate) fn age(&self) -> Option<Duration> {
        let since = self.0.load(Ordering::Acquire);
        (since != 0).then(|| {
            let now = epoch().elapsed().as_millis() as u64;
            Duration::from_millis(now.saturating_sub(since))
        })
    }
}
