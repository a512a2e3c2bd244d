//! PostgreSQL out: the batch writer.
//!
//! Takes raw messages from the queue, groups them into batches of up to `batch_max_events` or
//! `batch_max_wait_ms`, plans each batch (pure, [`fold`]) and applies it in one transaction
//! ([`store`]). Transient database errors are retried with backoff while the batch waits — no
//! event dropped, none applied twice (the ledger). A data error splits the batch until the
//! offending events are isolated and dead-lettered; the rest commit.
//!
//! It must not read Redis or decode outside [`fold::plan`].

pub mod fold;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::daemon::heartbeat::Heartbeat;
use crate::events::{ChannelKind, DecodeLimits};
use crate::ingest::queue::{Inbound, QueueReceiver, StreamAck};
use fold::{channel_index, plan, DeadLetter};

const CHANNELS: [ChannelKind; 3] = [
    ChannelKind::Trades,
    ChannelKind::Positions,
    ChannelKind::MarketData,
];

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the database refused the batch with an error retrying cannot fix: {0}")]
    Fatal(#[source] tokio_postgres::Error),
}

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// Everything received was committed or dead-lettered.
    Drained,
    /// The drain deadline passed with this many messages uncommitted (logged with counts).
    DeadlineExceeded { left: usize },
}

/// Running totals, for the summary log line, /readyz detail and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    /// Per channel (fold::channel_index order): events whose effect was applied.
    pub applied: [AtomicU64; 3],
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Beats on every loop turn, idle or not.
    pub heartbeat: Heartbeat,
}

impl WriterStats {
    pub fn applied_total(&self) -> u64 {
        self.applied.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

pub struct WriterSettings {
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    pub drain_deadline: Duration,
    pub limits: DecodeLimits,
    /// Where to connect; the writer holds one connection of its own and reconnects as needed.
    pub pg: tokio_postgres::Config,
    pub max_backoff: Duration,
    /// A batch commit slower than this is logged and counted as a slow query.
    pub slow_query: Duration,
}

/// The batch writer. `shutdown` starts the drain: the queue is closed to new messages and what
/// it holds is committed within `drain_deadline`.
pub struct Writer {
    settings: WriterSettings,
    /// Symbols with a new yahoo bar, handed to the indicator job after commit.
    indicator_symbols: Option<mpsc::UnboundedSender<String>>,
    /// The writer's own connection with its prepared statements; None after a failure.
    client: Option<(tokio_postgres::Client, store::Statements)>,
    /// Cancelled when the daemon stops: starts the drain.
    shutdown: CancellationToken,
    /// Set when the drain started: the instant by which the writer gives up.
    drain_deadline: Option<tokio::time::Instant>,
    stats: Arc<WriterStats>,
    /// Stream entries whose fate is committed, to XACK (only with the stream transport).
    acks: Option<mpsc::UnboundedSender<Vec<StreamAck>>>,
}

enum Failure {
    Transient(tokio_postgres::Error),
    Data(tokio_postgres::Error),
    Fatal(tokio_postgres::Error),
}

impl Writer {
    pub fn new(
        settings: WriterSettings,
        indicator_symbols: Option<mpsc::UnboundedSender<String>>,
        shutdown: CancellationToken,
        stats: Arc<WriterStats>,
    ) -> Self {
        Writer {
            settings,
            indicator_symbols,
            client: None,
            shutdown,
            drain_deadline: None,
            stats,
            acks: None,
        }
    }

    /// Acknowledge stream entries through `acks` once committed.
    pub fn with_acks(mut self, acks: mpsc::UnboundedSender<Vec<StreamAck>>) -> Self {
        self.acks = Some(acks);
        self
    }

    fn acknowledge(&self, messages: &[Inbound]) {
        if let Some(tx) = &self.acks {
            let acks: Vec<StreamAck> = messages.iter().filter_map(|m| m.ack.clone()).collect();
            if !acks.is_empty() {
                let _ = tx.send(acks);
            }
        }
    }

    pub async fn run(mut self, mut queue: QueueReceiver) -> Result<WriterEnd, ApplyError> {
        let shutdown = self.shutdown.clone();
        // Beats while idle too: an empty queue is not a stuck writer.
        let mut idle_beat = tokio::time::interval(Duration::from_secs(1));
        // The next batch, taken from the queue and planned while the previous one committed:
        // decoding (CPU) and the transaction (database) then overlap instead of alternating.
        let mut prefetched: Option<(Vec<Inbound>, fold::BatchPlan)> = None;
        loop {
            self.stats.heartbeat.beat();
            if shutdown.is_cancelled() {
                self.start_drain(&mut queue);
            }
            let (batch, planned) = match prefetched.take() {
                Some((batch, plan)) => (batch, Some(plan)),
                None => {
                    let first = if self.drain_deadline.is_some() {
                        // Draining: the queue is closed, so None means it is empty.
                        match queue.try_recv() {
                            Some(m) => m,
                            None => return Ok(WriterEnd::Drained),
                        }
                    } else {
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => continue,
                            _ = idle_beat.tick() => continue,
                            m = queue.recv() => match m {
                                Some(m) => m,
                                None => return Ok(WriterEnd::Drained),
                            },
                        }
                    };
                    (self.collect(first, &mut queue).await, None)
                }
            };
            let bytes: usize = batch.iter().map(Inbound::cost).sum();
            let count = batch.len();
            let (limits, max) = (self.settings.limits, self.settings.batch_max_events);
            let prefetch = async {
                let mut next = Vec::new();
                while next.len() < max {
                    match queue.try_recv() {
                        Some(m) => next.push(m),
                        None => break,
                    }
                }
                if next.is_empty() {
                    return None;
                }
                let planned = tokio::task::spawn_blocking(move || {
                    let p = plan(&next, &limits);
                    (next, p)
                })
                .await
                .expect("planning a batch never panics");
                Some(planned)
            };
            let (committed, next) = tokio::join!(self.commit(batch, planned), prefetch);
            prefetched = next;
            if !committed? {
                // Depth still counts this batch: it is released only once committed.
                let left = queue
                    .stats()
                    .depth
                    .load(std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    uncommitted = left,
                    "drain deadline passed; these received messages were not applied"
                );
                return Ok(WriterEnd::DeadlineExceeded { left });
            }
            queue.release(count, bytes);
        }
    }

    /// Closes the queue to new messages and starts the drain clock (once).
    fn start_drain(&mut self, queue: &mut QueueReceiver) {
        // Idempotent; the deadline may already run if shutdown came during a retry pause.
        queue.close();
        if self.drain_deadline.is_none() {
            self.drain_deadline = Some(tokio::time::Instant::now() + self.settings.drain_deadline);
            tracing::info!(
                queued = queue
                    .stats()
                    .depth
                    .load(std::sync::atomic::Ordering::Relaxed),
                deadline_ms = self.settings.drain_deadline.as_millis() as u64,
                "draining the queue before exit"
            );
        }
    }

    /// Fills a batch: whatever is ready at once, then waits up to batch_max_wait for more.
    async fn collect(&self, first: Inbound, queue: &mut QueueReceiver) -> Vec<Inbound> {
        let draining = self.drain_deadline.is_some();
        let max = self.settings.batch_max_events;
        let mut batch = Vec::with_capacity(max.min(1024));
        batch.push(first);
        // The window runs from the first message's arrival, not from now: time it already waited
        // behind the previous commit counts.
        let until =
            tokio::time::Instant::from_std(batch[0].received_at) + self.settings.batch_max_wait;
        while batch.len() < max {
            if let Some(m) = queue.try_recv() {
                batch.push(m);
                continue;
            }
            if draining {
                break;
            }
            match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(m)) => batch.push(m),
                Ok(None) | Err(_) => break,
            }
        }
        batch
    }

    /// Commits a batch, retrying transient failures and isolating bad events. Returns false
    /// if the drain deadline passed before it could commit.
    async fn commit(
        &mut self,
        batch: Vec<Inbound>,
        planned: Option<fold::BatchPlan>,
    ) -> Result<bool, ApplyError> {
        // The plan made ahead is for the whole batch's first attempt only.
        let mut planned = planned;
        // Work list of slices still to commit; a data error replaces a slice by its halves.
        let mut pending: Vec<Vec<Inbound>> = vec![batch];
        let mut backoff = Duration::from_millis(50);
        while let Some(slice) = pending.pop() {
            let started = Instant::now();
            match self.try_commit(&slice, planned.take()).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    let took = started.elapsed();
                    crate::maintenance::note_duration("batch", self.settings.slow_query, took);
                    self.acknowledge(&slice);
                    metrics::histogram!("trading_sync_commit_seconds").record(took.as_secs_f64());
                    metrics::histogram!("trading_sync_batch_events").record(slice.len() as f64);
                }
                Err(Failure::Data(error)) if slice.len() > 1 => {
                    tracing::warn!(
                        events = slice.len(),
                        error = %error,
                        "batch refused by a data error; splitting it to isolate the bad events"
                    );
                    let mut left = slice;
                    let right = left.split_off(left.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(Failure::Data(error)) => {
                    let letter = DeadLetter::new(
                        &slice[0],
                        "database",
                        format!("refused by the database: {}", db_error_text(&error)),
                    );
                    if !self.dead_letter_with_retry(letter).await? {
                        return Ok(false);
                    }
                    self.acknowledge(&slice);
                }
                Err(Failure::Fatal(error)) => return Err(ApplyError::Fatal(error)),
                Err(Failure::Transient(error)) => {
                    self.client = None;
                    metrics::counter!("trading_sync_db_retries_total").increment(1);
                    tracing::warn!(
                        error = %error,
                        events = slice.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "database unavailable; the batch waits and will be retried"
                    );
                    if !self.pause(backoff).await {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    pending.push(slice);
                }
            }
        }
        Ok(true)
    }

    /// Sleeps for a backoff; false if the drain deadline passes first. Shutdown during the
    /// sleep starts the drain clock but does not abandon the batch: received messages are still
    /// owed a commit until the deadline.
    async fn pause(&mut self, backoff: Duration) -> bool {
        self.stats.heartbeat.beat();
        let wake = tokio::time::Instant::now() + backoff;
        if self.drain_deadline.is_none() {
            tokio::select! {
                () = tokio::time::sleep_until(wake) => return true,
                () = self.shutdown.cancelled() => {
                    self.drain_deadline =
                        Some(tokio::time::Instant::now() + self.settings.drain_deadline);
                }
            }
        }
        let deadline = self.drain_deadline.expect("set above");
        tokio::time::sleep_until(wake.min(deadline)).await;
        wake <= deadline
    }

    /// Ok(false) if the drain deadline passed first.
    async fn dead_letter_with_retry(&mut self, letter: DeadLetter) -> Result<bool, ApplyError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    if !self.pause(backoff).await {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    tracing::warn!(error = %e, "cannot reach the database to dead-letter");
                    continue;
                }
            };
            let (client, stmts) = client;
            match store::insert_dead_letters_only(client, stmts, std::slice::from_ref(&letter))
                .await
            {
                Ok(()) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    record_dead_letters(std::slice::from_ref(&letter));
                    return Ok(true);
                }
                Err(e) => match classify(e) {
                    Failure::Transient(_) => {
                        self.client = None;
                        if !self.pause(backoff).await {
                            return Ok(false);
                        }
                        backoff = (backoff * 2).min(self.settings.max_backoff);
                    }
                    Failure::Data(e) | Failure::Fatal(e) => return Err(ApplyError::Fatal(e)),
                },
            }
        }
    }

    async fn client(
        &mut self,
    ) -> Result<&mut (tokio_postgres::Client, store::Statements), tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            if self.stats.batches.load(Ordering::Relaxed) > 0 {
                metrics::counter!("trading_sync_reconnects_total", "server" => "postgres")
                    .increment(1);
                tracing::warn!(server = "postgres", "reconnecting to PostgreSQL");
            }
            let (client, connection) = self.settings.pg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "writer connection ended");
                }
            });
            let statements = store::Statements::prepare(&client).await?;
            self.client = Some((client, statements));
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    async fn try_commit(
        &mut self,
        slice: &[Inbound],
        planned: Option<fold::BatchPlan>,
    ) -> Result<(), Failure> {
        let plan = planned.unwrap_or_else(|| plan(slice, &self.settings.limits));
        let (client, stmts) = self.client().await.map_err(classify)?;
        let applied = store::apply(client, stmts, &plan).await.map_err(classify)?;

        record_dead_letters(&plan.dead_letters);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(applied.dead_letters, Ordering::Relaxed);
        for channel in CHANNELS {
            let valid = plan.valid[channel_index(channel)];
            let applied_here = if channel == ChannelKind::Trades {
                applied.new_trades
            } else {
                valid
            };
            self.stats.applied[channel_index(channel)].fetch_add(applied_here, Ordering::Relaxed);
            if applied_here > 0 {
                metrics::counter!("trading_sync_events_applied_total", "channel" => channel.suffix())
                    .increment(applied_here);
            }
        }
        let duplicates = plan.duplicates_in_batch + applied.ledger_duplicates;
        self.stats
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        if duplicates > 0 {
            metrics::counter!("trading_sync_events_duplicate_total", "channel" => "trades")
                .increment(duplicates);
        }
        let now = Instant::now();
        for m in slice {
            metrics::histogram!("trading_sync_receive_to_commit_seconds")
                .record(now.duration_since(m.received_at).as_secs_f64());
        }
        tracing::debug!(
            events = slice.len(),
            new_trades = applied.new_trades,
            duplicates,
            positions = applied.positions,
            marks = applied.marks,
            dead_letters = applied.dead_letters,
            "batch committed"
        );
        if let Some(tx) = &self.indicator_symbols {
            for symbol in plan.yahoo_symbols {
                let _ = tx.send(symbol);
            }
        }
        Ok(())
    }
}

fn record_dead_letters(letters: &[DeadLetter]) {
    for d in letters {
        metrics::counter!(
            "trading_sync_events_dead_lettered_total",
            "channel" => d.channel.suffix(),
            "reason" => d.kind
        )
        .increment(1);
        tracing::warn!(
            channel = d.channel.suffix(),
            reason = d.kind,
            event_type = d.event_type.as_deref(),
            trade_id = d.trade_id.as_deref(),
            error = %d.error,
            bytes = d.payload.len(),
            "message dead-lettered"
        );
    }
}

/// Sorts database failures: data errors are the events' fault (split and dead-letter),
/// connection and contention errors pass (retry), anything else is a bug or a broken schema.
fn classify(error: tokio_postgres::Error) -> Failure {
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection broke or could not be made.
        return Failure::Transient(error);
    };
    let code = code.code();
    match &code[..2] {
        "22" | "23" => Failure::Data(error),
        // connection exception, insufficient resources, operator intervention (shutdown,
        // pg_terminate_backend), serialization failure / deadlock.
        "08" | "53" | "57" | "40" => Failure::Transient(error),
        _ if code == "55P03" => Failure::Transient(error), // lock_not_available
        _ => Failure::Fatal(error),
    }
}

fn db_error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}
