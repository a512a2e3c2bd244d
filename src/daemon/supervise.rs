//! The one way a long-running background task runs: restarted with capped backoff after an
//! error or a panic, until shutdown. The data path (sources, writer, acker) is not restarted
//! here — each reconnects inside its own loop, and a writer that ends ends the daemon.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::core::Backoff;

/// First wait after a failure, and the cap: a task failing at once every time (a revoked grant)
/// is retried every minute, not in a loop that floods the logs.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Runs `task` until it returns Ok or `shutdown` is cancelled. A failure — an error, with its
/// cause chain, or a panic — is logged, counted in `trading_sync_task_restarts_total{task}`
/// and retried after a backoff. An error once shutdown has begun is only logged at debug: it is
/// most likely the shutdown itself.
pub async fn supervise<F, Fut>(name: &'static str, shutdown: CancellationToken, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let started = tokio::time::Instant::now();
        let failure = match AssertUnwindSafe(task()).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => panic_text(panic.as_ref()),
        };
        if shutdown.is_cancelled() {
            tracing::debug!(task = name, error = failure, "task ended during shutdown");
            return;
        }
        // A task that ran a while before failing worked: its failure starts a new series.
        if started.elapsed() >= MAX_RETRY {
            backoff.reset();
        }
        let wait = backoff.fail();
        metrics::counter!("trading_sync_task_restarts_total", "task" => name).increment(1);
        tracing::error!(
            task = name,
            error = failure,
            retry_in_s = wait.as_secs(),
            "task failed; restarting it"
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn restarts_after_errors_and_panics_until_the_task_succeeds() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervise("test", CancellationToken::new(), move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => anyhow::bail!("first run fails"),
                    1 => panic!("second run panics"),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_double_and_start_over_after_a_run_that_lasted() {
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = starts.clone();
        supervise("test", CancellationToken::new(), move || {
            let mut starts = seen.lock().unwrap();
            starts.push(tokio::time::Instant::now());
            let run = starts.len();
            async move {
                match run {
                    // Fails at once twice, then after a long run, then succeeds.
                    1 | 2 => anyhow::bail!("fails at once"),
                    3 => {
                        tokio::time::sleep(Duration::from_secs(120)).await;
                        anyhow::bail!("fails after a long run")
                    }
                    _ => Ok(()),
                }
            }
        })
        .await;
        let starts = starts.lock().unwrap();
        let gaps: Vec<_> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        // 1 s, then 2 s, then the long run (120 s) plus a wait started over at 1 s.
        assert_eq!(gaps, [1, 2, 121]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_between_runs() {
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (counted, stop) = (runs.clone(), shutdown.clone());
        supervise("test", shutdown.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // Cancelled while the task fails: no further run.
            stop.cancel();
            async { anyhow::bail!("fails") }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
