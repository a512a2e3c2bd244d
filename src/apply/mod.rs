//! PostgreSQL out: the batch writer.
//!
//! Takes raw messages from the queue, groups them into batches of up to `batch_max_events` or
//! `batch_max_wait_ms`, plans each batch (pure, [`fold`]) and applies it in one transaction
//! ([`store`]). Every database error but a data error is retried with backoff while the batch
//! and the queue wait — no event dropped, none applied twice (the ledger): connection loss,
//! refusals (a database closed for maintenance, a server starting or shutting down), a read-only
//! server (a demoted primary, a standby), timeouts, and — slowly, with an error log, a metric and
//! /readyz at 503 — errors only an operator can fix (a revoked grant, a dropped table, a rotated
//! password). Exiting on those would turn a fixable mistake into lost data. A data error splits
//! the batch until the offending events are isolated and dead-lettered; the rest commit.
//!
//! It must not read Redis or decode outside [`fold::plan`].

pub mod dead_letters;
pub mod fold;
pub mod retention;
pub mod store;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::health::WriterStats;
use crate::core::queue::{Inbound, QueueReceiver, StreamAck};
use crate::core::Backoff;
use crate::core::ChannelKind;
use crate::db::{Connector, ErrorClass};
use crate::events::DecodeLimits;
use fold::{plan, DeadLetter};

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// Everything received was committed or dead-lettered.
    Drained,
    /// The drain deadline passed with this many messages uncommitted (logged with counts).
    DeadlineExceeded { left: usize },
}

pub(crate) struct WriterSettings {
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    pub drain_deadline: Duration,
    pub limits: DecodeLimits,
    /// Where to connect; the writer holds `connections` connections of its own and reconnects
    /// as needed.
    pub pg: Connector,
    /// `sync.writer_connections`: a large batch is split by account across this many
    /// connections and committed in parallel ([`store::apply_parallel`]).
    pub connections: usize,
    pub max_backoff: Duration,
    /// A batch commit slower than this is logged and counted as a slow query.
    pub slow_query: Duration,
    /// Set on the writer's connection: a statement waiting on a lock or running away turns into
    /// a retry instead of a silent stall that would stop the watchdog's pings.
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// `redis.channel_prefix`: dead letters record the channel name as received.
    pub channel_prefix: String,
}

/// The server a new writer session reached: with several hosts in `database.url`, the log then
/// says which one is the primary now (after a failover, the promoted standby).
const SERVER_ADDRESS_SQL: &str = "SELECT host(inet_server_addr()), inet_server_port()";

/// The first retry's wait after a failed attempt.
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Backoff cap for errors an operator must fix: slow enough not to flood the server's log.
const BLOCKED_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The batch writer. `shutdown` starts the drain: the queue is closed to new messages and what
/// it holds is committed within `drain_deadline`.
pub(crate) struct Writer {
    settings: WriterSettings,
    /// Symbols with a new yahoo bar, handed to the indicator job after commit.
    indicator_symbols: Option<mpsc::UnboundedSender<String>>,
    /// The writer's own connections with their prepared statements; empty after a failure
    /// (a retry then reconnects them all: the server that failed one likely failed the rest).
    sessions: Vec<(tokio_postgres::Client, store::Statements)>,
    /// Cancelled when the daemon stops: starts the drain.
    shutdown: CancellationToken,
    /// Set when the drain started: the instant by which the writer gives up.
    drain_deadline: Option<tokio::time::Instant>,
    stats: Arc<WriterStats>,
    /// Stream entries whose fate is committed, to XACK (only with the stream transport).
    acks: Option<mpsc::UnboundedSender<Vec<StreamAck>>>,
    /// Set while batches fail to reach the database.
    outage: Option<Outage>,
}

enum Failure {
    /// Worth retrying at once: the connection, the server's state, contention.
    Transient(tokio_postgres::Error),
    /// The attempt outlived its limit (statement_timeout's 57014, or no answer at all within
    /// [`Writer::attempt_limit`]): retried in halves, or it would time out forever.
    Slow(Option<tokio_postgres::Error>),
    /// The events' fault: split the batch and dead-letter the offenders.
    Data(tokio_postgres::Error),
    /// Only an operator can fix it; retried slowly meanwhile.
    Blocked(tokio_postgres::Error),
}

/// The writer's view of the database, logged once per change of state.
#[derive(Debug)]
struct Outage {
    since: Instant,
    retries: u64,
    blocked: bool,
}

impl Writer {
    pub(crate) fn new(
        settings: WriterSettings,
        indicator_symbols: Option<mpsc::UnboundedSender<String>>,
        shutdown: CancellationToken,
        stats: Arc<WriterStats>,
    ) -> Self {
        Writer {
            settings,
            indicator_symbols,
            sessions: Vec::new(),
            shutdown,
            drain_deadline: None,
            stats,
            acks: None,
            outage: None,
        }
    }

    /// Acknowledge stream entries through `acks` once committed.
    pub(crate) fn with_acks(mut self, acks: mpsc::UnboundedSender<Vec<StreamAck>>) -> Self {
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

    pub(crate) async fn run(mut self, mut queue: QueueReceiver) -> WriterEnd {
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
                            None => return WriterEnd::Drained,
                        }
                    } else {
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => continue,
                            _ = idle_beat.tick() => continue,
                            m = queue.recv() => match m {
                                Some(m) => m,
                                None => return WriterEnd::Drained,
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
            self.stats.busy.set();
            let (committed, next) = tokio::join!(self.commit(batch, planned), prefetch);
            self.stats.busy.clear();
            prefetched = next;
            if !committed {
                // Depth still counts this batch: it is released only once committed.
                let left = queue
                    .stats()
                    .depth
                    .load(std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    uncommitted = left,
                    "drain deadline passed; these received messages were not applied"
                );
                return WriterEnd::DeadlineExceeded { left };
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
    async fn commit(&mut self, batch: Vec<Inbound>, planned: Option<fold::BatchPlan>) -> bool {
        // The plan made ahead is for the whole batch's first attempt only.
        let mut planned = planned;
        // Work list of slices still to commit; a data error replaces a slice by its halves.
        let mut pending: Vec<Vec<Inbound>> = vec![batch];
        let mut backoff = Backoff::new(FIRST_RETRY, self.settings.max_backoff);
        let mut committed_earlier = HashSet::new();
        while let Some(slice) = pending.pop() {
            let started = Instant::now();
            let limit = self.attempt_limit();
            let committed = Mutex::new(store::Applied::default());
            let attempt = tokio::time::timeout(
                limit,
                self.try_commit(&slice, planned.take(), &committed, &mut committed_earlier),
            )
            .await;
            // What reached the ledger counts as applied, whatever became of the rest of the
            // attempt (another partition failed, or the time limit dropped it mid-way): a retry
            // finds those trades in the ledger and must not count them again.
            let committed = committed
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            self.count_new_trades(committed.new_trades);
            if !matches!(attempt, Ok(Ok(()))) {
                committed_earlier.extend(committed.fresh);
            }
            let outcome = match attempt {
                Ok(outcome) => outcome,
                Err(_) => {
                    // A silent connection: nothing resets it, and a wait on TCP retransmits
                    // would stop the heartbeat (the watchdog) and the drain.
                    self.sessions.clear();
                    if self.drain_deadline_passed() {
                        return false;
                    }
                    Err(Failure::Slow(None))
                }
            };
            match outcome {
                Ok(()) => {
                    self.database_back();
                    backoff.reset();
                    let took = started.elapsed();
                    crate::core::note_duration("batch", self.settings.slow_query, took);
                    self.stats.commit_times.record(took);
                    if took >= self.settings.slow_query {
                        self.stats.slow_commits.fetch_add(1, Ordering::Relaxed);
                    }
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
                        format!("refused by the database: {}", crate::db::error_text(&error)),
                    );
                    if !self.dead_letter_with_retry(letter).await {
                        return false;
                    }
                    self.acknowledge(&slice);
                }
                Err(Failure::Slow(error)) if slice.len() > 1 => {
                    let what = error.as_ref().map_or_else(
                        || format!("no answer within {} ms", limit.as_millis()),
                        crate::db::error_text,
                    );
                    tracing::warn!(
                        events = slice.len(),
                        error = %what,
                        "batch too slow for its time limit; retrying it in halves"
                    );
                    self.sessions.clear();
                    let mut left = slice;
                    let right = left.split_off(left.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(Failure::Slow(error)) => {
                    match &error {
                        Some(e) => self.database_failed(e, false, 1),
                        None => self.sessions.clear(),
                    }
                    if !self.pause(self.retry_wait(&mut backoff, false)).await {
                        return false;
                    }
                    pending.push(slice);
                }
                Err(Failure::Transient(error)) => {
                    self.database_failed(&error, false, slice.len());
                    if !self.pause(self.retry_wait(&mut backoff, false)).await {
                        return false;
                    }
                    pending.push(slice);
                }
                Err(Failure::Blocked(error)) => {
                    self.database_failed(&error, true, slice.len());
                    if !self.pause(self.retry_wait(&mut backoff, true)).await {
                        return false;
                    }
                    pending.push(slice);
                }
            }
        }
        true
    }

    /// How long one attempt may take before the connection is given up: twice the statement
    /// timeout (a batch is a handful of statements), and never past the drain deadline.
    fn attempt_limit(&self) -> Duration {
        let limit = self.settings.statement_timeout * 2;
        match self.drain_deadline {
            Some(deadline) => {
                limit.min(deadline.saturating_duration_since(tokio::time::Instant::now()))
            }
            None => limit,
        }
    }

    fn drain_deadline_passed(&self) -> bool {
        self.drain_deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    /// A batch could not reach the database: the connection is dropped (a read-only or
    /// refusing server must not be asked again on the same session: a retry may find the new
    /// primary), and the change of state is logged once.
    fn database_failed(&mut self, error: &tokio_postgres::Error, blocked: bool, events: usize) {
        self.sessions.clear();
        metrics::counter!("trading_sync_db_retries_total").increment(1);
        self.stats.database_failing.store(true, Ordering::Release);
        self.stats.blocked.store(blocked, Ordering::Release);
        metrics::gauge!("trading_sync_writer_blocked").set(f64::from(u8::from(blocked)));
        let changed = match &mut self.outage {
            Some(outage) => {
                outage.retries += 1;
                std::mem::replace(&mut outage.blocked, blocked) != blocked
            }
            None => {
                self.outage = Some(Outage {
                    since: Instant::now(),
                    retries: 1,
                    blocked,
                });
                true
            }
        };
        // A reconnect that fails on TLS says why (unknown CA, name mismatch, …).
        let error = crate::db::tls::describe(error);
        if !changed {
            tracing::debug!(error = %error, events, "database still unavailable; retrying");
        } else if blocked {
            tracing::error!(
                error = %error,
                events,
                "the database refuses the batch with an error an operator must fix (permission, \
                 schema, credentials); nothing is dropped: the batch and the queue wait and it is \
                 retried every 30 s"
            );
        } else {
            tracing::warn!(
                error = %error,
                events,
                "database unavailable; the batch and the queue wait and it is retried"
            );
        }
    }

    /// A batch committed: an outage, if any, is over.
    fn database_back(&mut self) {
        if let Some(outage) = self.outage.take() {
            self.stats.database_failing.store(false, Ordering::Release);
            self.stats.blocked.store(false, Ordering::Release);
            metrics::gauge!("trading_sync_writer_blocked").set(0.0);
            tracing::warn!(
                down_ms = outage.since.elapsed().as_millis() as u64,
                retries = outage.retries,
                "database available again; the waiting batches are being committed"
            );
        }
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

    /// False if the drain deadline passed first. Every failure is retried, the way a batch's
    /// is: a dead letter is received data too.
    async fn dead_letter_with_retry(&mut self, letter: DeadLetter) -> bool {
        let mut backoff = Backoff::new(FIRST_RETRY, self.settings.max_backoff);
        loop {
            let limit = self.attempt_limit();
            let attempt = async {
                let (client, stmts) = &mut self.sessions(1).await?[0];
                store::insert_dead_letters_only(client, stmts, std::slice::from_ref(&letter)).await
            };
            let Ok(result) = tokio::time::timeout(limit, attempt).await else {
                self.sessions.clear();
                if !self.pause(self.retry_wait(&mut backoff, false)).await {
                    return false;
                }
                continue;
            };
            let blocked = match result {
                Ok(()) => {
                    self.database_back();
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    record_dead_letters(std::slice::from_ref(&letter));
                    return true;
                }
                Err(e) => match classify(e) {
                    Failure::Transient(e) | Failure::Slow(Some(e)) => {
                        self.database_failed(&e, false, 1);
                        false
                    }
                    Failure::Slow(None) => false,
                    // A dead letter the database refuses as data cannot be split further: only
                    // an operator can help it, as with a permission error.
                    Failure::Data(e) | Failure::Blocked(e) => {
                        self.database_failed(&e, true, 1);
                        true
                    }
                },
            };
            if !self.pause(self.retry_wait(&mut backoff, blocked)).await {
                return false;
            }
        }
    }

    /// The wait before retrying after a failure: doubling up to `max_backoff`, or, for an error
    /// only an operator can fix, up to [`BLOCKED_MAX_BACKOFF`].
    fn retry_wait(&self, backoff: &mut Backoff, blocked: bool) -> Duration {
        let cap = match blocked {
            true => BLOCKED_MAX_BACKOFF.max(self.settings.max_backoff),
            false => self.settings.max_backoff,
        };
        backoff.with_cap(cap).fail()
    }

    /// At least `needed` of the writer's connections (one at the least), opened (again) as
    /// needed and all at once: a batch that is not split and a dead letter need only the first.
    /// If only some of the missing ones open, the batch is split across fewer; an error only
    /// when none is open.
    async fn sessions(
        &mut self,
        needed: usize,
    ) -> Result<&mut [(tokio_postgres::Client, store::Statements)], tokio_postgres::Error> {
        self.sessions.retain(|(client, _)| !client.is_closed());
        let have = self.sessions.len();
        let missing = needed
            .clamp(1, self.settings.connections.max(1))
            .saturating_sub(have);
        if missing > 0 {
            let opened =
                futures::future::join_all((have..have + missing).map(|i| self.connect(i))).await;
            let mut first_error = None;
            for result in opened {
                match result {
                    Ok(session) => self.sessions.push(session),
                    Err(e) => {
                        tracing::debug!(
                            error = %crate::db::tls::describe(&e),
                            "a writer connection could not be opened"
                        );
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let (true, Some(e)) = (self.sessions.is_empty(), first_error) {
                return Err(e);
            }
        }
        Ok(&mut self.sessions)
    }

    async fn connect(
        &self,
        index: usize,
    ) -> Result<(tokio_postgres::Client, store::Statements), tokio_postgres::Error> {
        // An outage is logged once, by `database_failed`; each attempt of it only at debug,
        // and a reconnect is counted once it succeeded (not once per retry).
        let reconnect = self.stats.batches.load(Ordering::Relaxed) > 0;
        if reconnect {
            tracing::debug!(server = "postgres", "reconnecting to PostgreSQL");
        }
        let (client, connection) = self.settings.pg.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "writer connection ended");
            }
        });
        // One round trip: the session's limits, and where it landed.
        let replies = client
            .simple_query(&format!(
                "SET statement_timeout = {}; SET lock_timeout = {}; {SERVER_ADDRESS_SQL}",
                self.settings.statement_timeout.as_millis(),
                self.settings.lock_timeout.as_millis()
            ))
            .await?;
        let server = replies.iter().find_map(|reply| match reply {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(format!(
                "{}:{}",
                row.get(0).unwrap_or("local socket"),
                row.get(1).unwrap_or("?")
            )),
            _ => None,
        });
        let statements = store::Statements::prepare(&client)
            .await?
            .with_channel_prefix(&self.settings.channel_prefix);
        // The first connection's line says where the writer is; the others would repeat it.
        if index == 0 {
            tracing::info!(
                server = server.as_deref().unwrap_or("?"),
                connections = self.settings.connections,
                "the writer is connected to PostgreSQL"
            );
            if reconnect {
                metrics::counter!("trading_sync_reconnects_total", "server" => "postgres")
                    .increment(1);
            }
        }
        Ok((client, statements))
    }

    /// Counts trades that reached the ledger.
    fn count_new_trades(&self, new_trades: u64) {
        self.stats.applied[ChannelKind::Trades].fetch_add(new_trades, Ordering::Relaxed);
        if new_trades > 0 {
            metrics::counter!("trading_sync_events_applied_total", "channel" => ChannelKind::Trades.suffix())
                .increment(new_trades);
        }
    }

    /// One attempt at a slice. What each of its transactions commits is added to `committed`
    /// as it happens (the caller counts it, whatever becomes of the rest). `committed_earlier`
    /// holds the trade ids that earlier attempts of this batch committed before failing: counted
    /// as applied then, each excuses one ledger duplicate of this attempt, once.
    async fn try_commit(
        &mut self,
        slice: &[Inbound],
        planned: Option<fold::BatchPlan>,
        committed: &Mutex<store::Applied>,
        committed_earlier: &mut HashSet<String>,
    ) -> Result<(), Failure> {
        let plan = planned.unwrap_or_else(|| plan(slice, &self.settings.limits));
        let needed = store::partitions_for(plan.trades.len(), self.settings.connections);
        let sessions = self.sessions(needed).await.map_err(classify)?;
        store::apply_parallel(sessions, &plan, committed)
            .await
            .map_err(classify)?;
        // Read, not taken: the caller counts the new trades, after a success as after a failure.
        let (new_trades, ledger_duplicates, positions, marks, dead_letters) = {
            let a = committed.lock().unwrap_or_else(PoisonError::into_inner);
            (
                a.new_trades,
                a.ledger_duplicates,
                a.positions,
                a.marks,
                a.dead_letters,
            )
        };
        let again = match committed_earlier.is_empty() {
            true => 0,
            false => plan
                .trades
                .iter()
                .filter(|t| committed_earlier.remove(&t.trade_id))
                .count() as u64,
        };
        debug_assert!(again <= ledger_duplicates);

        record_dead_letters(&plan.dead_letters);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(dead_letters, Ordering::Relaxed);
        for channel in ChannelKind::ALL
            .into_iter()
            .filter(|c| *c != ChannelKind::Trades)
        {
            let valid = plan.valid[channel];
            self.stats.applied[channel].fetch_add(valid, Ordering::Relaxed);
            if valid > 0 {
                metrics::counter!("trading_sync_events_applied_total", "channel" => channel.suffix())
                    .increment(valid);
            }
        }
        let duplicates = plan.duplicates_in_batch + ledger_duplicates.saturating_sub(again);
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
            new_trades,
            duplicates,
            positions,
            marks,
            dead_letters,
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

/// Sorts database failures by [`ErrorClass`]. Data errors are the events' fault (split and
/// dead-letter). A lost connection, a server starting or shutting down, a read-only server,
/// contention and passing states of the server (55000: a database closed to connections;
/// 55P03: lock_timeout; 40: deadlocks) pass by themselves: retry at once. Anything needing an
/// operator (a revoked grant, a rotated password, a dropped database) is retried slowly
/// meanwhile: nothing received is dropped for it.
fn classify(error: tokio_postgres::Error) -> Failure {
    match ErrorClass::of(&error) {
        ErrorClass::Connection | ErrorClass::Contention => Failure::Transient(error),
        ErrorClass::Slow => Failure::Slow(Some(error)),
        ErrorClass::Data => Failure::Data(error),
        ErrorClass::Operator => Failure::Blocked(error),
    }
}
