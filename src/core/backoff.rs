//! Capped exponential backoff: the one place "double the wait up to a cap" is written.

use std::time::Duration;

/// Waits between retries of one failing operation: `first`, doubled after each failure up to
/// `cap`, back to `first` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The wait after the first failure, and after any success.
    first: Duration,
    /// No wait grows past this.
    cap: Duration,
    /// The wait the next failure gets.
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        let first = first.min(cap);
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The wait after this failure; the one after the next failure doubles (up to the cap).
    pub fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        wait
    }

    /// A success: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Changes the cap (e.g. a slower pace for errors an operator must fix), keeping the wait.
    pub fn with_cap(&mut self, cap: Duration) -> &mut Self {
        self.cap = cap;
        self.next = self.next.min(cap);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let waits: Vec<_> = (0..5).map(|_| b.fail().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(50));
    }

    proptest! {
        #[test]
        fn never_exceeds_the_cap_and_never_shrinks(first in 1u64..10_000, cap in 1u64..100_000, n in 1usize..80) {
            let mut b = Backoff::new(Duration::from_millis(first), Duration::from_millis(cap));
            let mut last = Duration::ZERO;
            for _ in 0..n {
                let wait = b.fail();
                prop_assert!(wait <= Duration::from_millis(cap));
                prop_assert!(wait >= last);
                last = wait;
            }
        }
    }
}
