//! The daemon's scheduled work beside the data path: maintenance on its cron schedule, and
//! reconcile at start, after each resubscription and on its interval. Each runs under
//! [`super::supervise::supervise`]; an error returned here restarts the loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::DaemonState;
use crate::config::Config;
use crate::core::Backoff;
use crate::db::Connector;
use crate::reconcile::{Outcome, Prepared, Request, Settings, Trigger};

/// Maintenance once at start (partitions ahead matter at once), then on its cron schedule.
pub(super) async fn maintenance_loop(
    config: Config,
    pg: Connector,
    slow_query: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cron = config.maintenance_schedule()?;
    let tz = config.maintenance_tz()?;
    loop {
        let client = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            c = pg.connect() => c.context("while connecting for maintenance")?,
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = crate::maintenance::run_once(&client, &config.maintenance, slow_query) => {
                r.context("while running maintenance")?;
            }
        }
        drop(client);
        let now = chrono::Utc::now().with_timezone(&tz);
        let next = cron
            .find_next_occurrence(&now, false)
            .context("while computing the next maintenance time")?;
        let wait = (next.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        tracing::debug!(next = %next, "next maintenance run");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Reconcile (src/reconcile) inside the daemon. Each run covers the trade rows written up to
/// `grace` before it, so a run meant to cover "everything committed before T" happens at
/// T + grace:
/// * at start, once the backlog present at start has been applied (events merely waiting are not
///   healed from their rows), and not before start + grace (trades committed while the daemon was
///   down must age past the grace period first);
/// * `grace` after every pub/sub resubscription (what was published while unsubscribed is gone);
/// * every `interval`, skipped when any instance ran within 90% of it: once per interval across
///   instances.
///
/// Event-driven runs wait for another instance's run to finish; scheduled ones skip it.
pub(super) async fn reconcile_loop(
    settings: Settings,
    pg: Connector,
    interval: Duration,
    state: Arc<DaemonState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::time::Instant;
    const BACKLOG_WAIT_MAX: Duration = Duration::from_secs(60);
    const RETRY_FIRST: Duration = Duration::from_secs(1);
    // Failed runs are retried sooner than the next interval, never later.
    let mut retry = Backoff::new(RETRY_FIRST, interval);
    // Kept between runs with its prepared statements; dropped after any failure.
    let mut connection: Option<(tokio_postgres::Client, Prepared)> = None;
    let started = Instant::now();
    let grace = settings.grace;
    // Up to BACKLOG_WAIT_MAX for the backlog: past it, healing what is merely waiting is harmless
    // (the ledger), only wasted work.
    loop {
        let streams_done = !state.uses_streams.load(Ordering::Relaxed)
            || state.streams.caught_up.load(Ordering::Acquire);
        if (streams_done && state.queue_depth() == 0) || started.elapsed() >= BACKLOG_WAIT_MAX {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let mut due: Option<(Trigger, Instant)> = Some((Trigger::Start, started + grace));
    let mut disconnects = state.subscription.disconnects.load(Ordering::Acquire);
    let mut next_scheduled = started + interval;
    loop {
        let now = Instant::now();
        let seen = state.subscription.disconnects.load(Ordering::Acquire);
        if seen != disconnects && state.subscription.live.load(Ordering::Acquire) {
            disconnects = seen;
            due = Some((Trigger::Resubscribed, now + grace));
        }
        let request = match due {
            Some((trigger, at)) if now >= at => {
                due = None;
                Some(Request {
                    trigger,
                    since: None,
                    dry_run: false,
                    skip_if_ran_within: None,
                    lock_wait: Duration::from_secs(600),
                })
            }
            _ if now >= next_scheduled => Some(Request {
                trigger: Trigger::Interval,
                since: None,
                dry_run: false,
                skip_if_ran_within: Some(interval.mul_f64(0.9)),
                lock_wait: Duration::ZERO,
            }),
            _ => None,
        };
        if let Some(request) = request {
            next_scheduled = now + interval;
            let run = async {
                if connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    let client = pg
                        .connect()
                        .await
                        .context("while connecting for reconcile")?;
                    let prepared = Prepared::prepare(&client)
                        .await
                        .context("while preparing reconcile's statements")?;
                    connection = Some((client, prepared));
                }
                let (client, prepared) = connection.as_mut().expect("connected above");
                let outcome =
                    crate::reconcile::run_prepared(client, prepared, &settings, &request).await;
                if outcome.is_err() {
                    // Whatever failed, the next attempt starts from a fresh session.
                    connection = None;
                }
                outcome.context("while reconciling")
            };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = run => r,
            };
            match outcome {
                Ok(Outcome::Ran(_)) => retry.reset(),
                Ok(skipped) => {
                    tracing::debug!(
                        trigger = request.trigger.as_str(),
                        ?skipped,
                        "reconcile skipped"
                    )
                }
                // A deadlock with the writer's marks, a restarting server, a revoked grant: the
                // run rolled back and the change log still holds its rows. Retried with backoff,
                // the same trigger, rather than restarting the task (which would redo the start).
                Err(e) => {
                    let retry_in = retry.fail();
                    metrics::counter!("trading_sync_reconcile_failures_total").increment(1);
                    tracing::warn!(
                        trigger = request.trigger.as_str(),
                        error = format!("{e:#}"),
                        retry_in_ms = retry_in.as_millis() as u64,
                        "reconcile failed; it will be retried"
                    );
                    if request.trigger == Trigger::Interval {
                        next_scheduled = Instant::now() + retry_in;
                    } else {
                        due = Some((request.trigger, Instant::now() + retry_in));
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
