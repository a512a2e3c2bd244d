//! One indicator run: which symbols, incremental or full, spread over a few connections.
//!
//! Work is cut into chunks of symbols; each chunk is one transaction on one connection: take
//! the symbols' advisory locks (a symbol another instance holds is skipped), read their states
//! and bars, compute on a blocking thread, write rows, latest rows and states, commit. A chunk
//! that fails is retried one symbol per transaction, so one bad symbol costs only itself.
//!
//! Per symbol (INDICATORS.md, "Revisions"), from the bar changes market_data's triggers
//! recorded (V19) and the persisted state: no change, nothing is read; changes only after the
//! state's last date, the bars after it are read and folded into the state; a change on or
//! before it (a revised, inserted or deleted past bar, however old), the symbol is recomputed
//! from its first bar in the same transaction and its rows from the changed date on upserted,
//! which rewrites exactly the rows whose rounded values changed. The change rows read are
//! consumed in the transaction that wrote their results.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::replica::{BarSource, ReadOn, ReplicaSettings};
use super::step::{self, Bar, IndicatorRow, IndicatorState, SkipReason};
use super::store::{
    self, bar_date, BarChange, ListedSymbol, Overflow, PiecePool, RawBar, RowEncoder, StateToSave,
};
use super::IndicatorError;
use crate::core::progress::Progress;
use crate::db::Connector;

/// A run that wrote at least this many rows, and at least a tenth of technical_indicators'
/// size (a backfill, a `--full` run, a large revision), refreshes the statistics of the
/// indicator tables (through V26's function: trading_sync cannot ANALYZE them itself). A daily
/// incremental run writes about one row per symbol and is left to autovacuum and maintenance's
/// nightly refresh.
const ANALYZE_AFTER_ROWS: u64 = 10_000;
/// The tables a run writes or consumes.
const ANALYZED_TABLES: &[&str] = &[
    "indicator_bar_changes",
    "indicator_state",
    "technical_indicators",
    "technical_indicators_latest",
];

/// Tuning of a run. `Default` is what the daemon and the CLI use.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// A bar's date is its timestamp's date in this zone (the exchange's calendar).
    pub bar_timezone: Tz,
    /// Connections (and chunks in flight). PostgreSQL's per-row insert work dominates a
    /// backfill, so more than the server's cores only adds contention.
    pub connections: usize,
    /// Symbols per transaction when they have a state: a daily run reads ~200 bars each.
    pub incremental_chunk: usize,
    /// Symbols per transaction when they are computed from their first bar: each may bring
    /// thousands of rows, and a chunk's rows are held in memory until written.
    pub full_chunk: usize,
    /// Interval of the progress log line of long runs.
    pub progress_every: Duration,
    /// Where bars are read, if not on the primary.
    pub replica: Option<ReplicaSettings>,
    /// Told how many symbols are done of how many (the command line's bar); the daemon's runs
    /// have none and log their progress line every `progress_every`.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            bar_timezone: chrono_tz::America::New_York,
            connections: 2,
            incremental_chunk: 500,
            full_chunk: 64,
            progress_every: Duration::from_secs(5),
            replica: None,
            progress: None,
        }
    }
}

/// Which symbols a run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every symbol with at least one yahoo bar.
    All,
    /// These symbols (duplicates ignored); one without yahoo bars has nothing to compute.
    Symbols(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Continue each symbol from its persisted state; recompute only revised symbols.
    Incremental,
    /// Ignore states: recompute every selected symbol from its first bar, replacing its rows.
    Full,
}

/// What a run did. Every selected symbol lands in exactly one of computed, up to date,
/// skipped (locked or unknown), failed, or — when there was nothing at all to compute — none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub symbols_selected: u64,
    /// Rows, latest row or state written.
    pub symbols_computed: u64,
    /// No bar changed since its state was written (or, never computed, no valid bar).
    pub symbols_up_to_date: u64,
    /// Another instance held the symbol's lock (it is computing it).
    pub skipped_locked: u64,
    /// Not in data_ingestion.symbols, which the indicator tables reference.
    pub skipped_unknown: u64,
    /// Of `symbols_computed`: recomputed from the first bar because history was revised or the
    /// stored state was unusable.
    pub recomputed_after_revision: u64,
    pub failures: u64,
    /// technical_indicators rows inserted or changed.
    pub rows_written: u64,
    /// Bars with a NULL, NaN or non-positive close.
    pub bars_skipped_invalid: u64,
    /// Second (and later) bars on a date that already had a valid bar.
    pub bars_skipped_duplicate_date: u64,
    /// Values written NULL because they did not fit their column.
    pub values_nulled: u64,
    /// Chunks whose bars were read on the replica.
    pub replica_reads: u64,
    /// Chunks whose bars were read on the primary although a replica is configured.
    pub replica_fallbacks: u64,
    /// The run stopped early on request; the symbols not reached are in no count.
    pub cancelled: bool,
    /// Indicator tables ANALYZEd after the run (0: too small a run, or it failed).
    pub tables_analyzed: i32,
    pub duration: Duration,
    /// Symbols skipped because locked, for a caller that wants to retry them.
    pub locked_symbols: Vec<String>,
    pub failed_symbols: Vec<String>,
}

impl RunSummary {
    fn merge(&mut self, o: RunSummary) {
        self.symbols_computed += o.symbols_computed;
        self.symbols_up_to_date += o.symbols_up_to_date;
        self.skipped_locked += o.skipped_locked;
        self.skipped_unknown += o.skipped_unknown;
        self.recomputed_after_revision += o.recomputed_after_revision;
        self.failures += o.failures;
        self.rows_written += o.rows_written;
        self.bars_skipped_invalid += o.bars_skipped_invalid;
        self.bars_skipped_duplicate_date += o.bars_skipped_duplicate_date;
        self.values_nulled += o.values_nulled;
        self.replica_reads += o.replica_reads;
        self.replica_fallbacks += o.replica_fallbacks;
        self.locked_symbols.extend(o.locked_symbols);
        self.failed_symbols.extend(o.failed_symbols);
    }
}

/// Runs the job once. Returns Err only when nothing could be done at all (no connection, the
/// symbol list unreadable); a failing symbol or chunk is logged, counted and skipped.
/// `cancel` stops the run between chunks (a chunk in flight commits or rolls back whole).
pub async fn run_once(
    pg: &Connector,
    settings: &JobSettings,
    selection: &Selection,
    mode: Mode,
    cancel: &CancellationToken,
) -> Result<RunSummary, IndicatorError> {
    let started = Instant::now();
    let result = run_inner(pg, settings, selection, mode, cancel, started).await;
    if let Some(progress) = &settings.progress {
        progress.finish();
    }
    let elapsed = started.elapsed();
    let outcome = match &result {
        Ok(s) if s.cancelled => "cancelled",
        Ok(s) if s.failures > 0 => "partial",
        Ok(_) => "ok",
        Err(_) => "error",
    };
    metrics::counter!("trading_sync_indicator_runs_total", "outcome" => outcome).increment(1);
    metrics::histogram!("trading_sync_indicator_run_seconds").record(elapsed.as_secs_f64());
    if let Err(e) = &result {
        crate::telemetry::record_performance(
            crate::telemetry::PerformanceLog::new("indicator_run", elapsed, false)
                .data(serde_json::json!({"mode": format!("{mode:?}"), "error": e.to_string()})),
        );
    }
    let mut summary = result?;
    summary.duration = elapsed;
    if !summary.cancelled && summary.rows_written >= ANALYZE_AFTER_ROWS {
        // Logged and counted in `refresh`; a failure leaves the rows written as they are.
        match pg.connect().await {
            Ok(client) => {
                let large = crate::db::statistics::is_large_change(
                    &client,
                    "technical_indicators",
                    summary.rows_written,
                    ANALYZE_AFTER_ROWS,
                )
                .await;
                if large {
                    if let Ok(n) =
                        crate::db::statistics::refresh(&client, Some(ANALYZED_TABLES), "indicators")
                            .await
                    {
                        summary.tables_analyzed = n;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot connect to refresh the indicator tables' statistics")
            }
        }
    }
    for (result, n) in [
        ("computed", summary.symbols_computed),
        ("up_to_date", summary.symbols_up_to_date),
        ("skipped_locked", summary.skipped_locked),
        ("skipped_unknown", summary.skipped_unknown),
        ("recomputed", summary.recomputed_after_revision),
        ("failed", summary.failures),
    ] {
        if n > 0 {
            metrics::counter!("trading_sync_indicator_symbols_total", "result" => result)
                .increment(n);
        }
    }
    tracing::info!(
        mode = ?mode,
        selected = summary.symbols_selected,
        computed = summary.symbols_computed,
        up_to_date = summary.symbols_up_to_date,
        skipped_locked = summary.skipped_locked,
        skipped_unknown = summary.skipped_unknown,
        recomputed = summary.recomputed_after_revision,
        failures = summary.failures,
        rows_written = summary.rows_written,
        bars_skipped_invalid = summary.bars_skipped_invalid,
        bars_skipped_duplicate_date = summary.bars_skipped_duplicate_date,
        values_nulled = summary.values_nulled,
        cancelled = summary.cancelled,
        tables_analyzed = summary.tables_analyzed,
        seconds = elapsed.as_secs_f64(),
        "indicator run finished"
    );
    record_run(&summary, mode);
    Ok(summary)
}

/// The run's `logging.performance_logs` row: successful when no symbol failed and it was not
/// cut short.
fn record_run(summary: &RunSummary, mode: Mode) {
    const LISTED: usize = 20;
    let record = crate::telemetry::PerformanceLog::new(
        "indicator_run",
        summary.duration,
        summary.failures == 0 && !summary.cancelled,
    )
    .rows(summary.rows_written)
    .data(serde_json::json!({
        "mode": format!("{mode:?}"),
        "symbols_selected": summary.symbols_selected,
        "symbols_computed": summary.symbols_computed,
        "symbols_up_to_date": summary.symbols_up_to_date,
        "skipped_locked": summary.skipped_locked,
        "skipped_unknown": summary.skipped_unknown,
        "recomputed_after_revision": summary.recomputed_after_revision,
        "failures": summary.failures,
        "failed_symbols": summary.failed_symbols.iter().take(LISTED).collect::<Vec<_>>(),
        "rows_written": summary.rows_written,
        "bars_skipped_invalid": summary.bars_skipped_invalid,
        "bars_skipped_duplicate_date": summary.bars_skipped_duplicate_date,
        "values_nulled": summary.values_nulled,
        "replica_reads": summary.replica_reads,
        "replica_fallbacks": summary.replica_fallbacks,
        "cancelled": summary.cancelled,
        "tables_analyzed": summary.tables_analyzed,
    }));
    crate::telemetry::record_performance(record);
}

/// What the workers have done so far, for the progress log line.
#[derive(Default)]
struct Done {
    symbols_done: AtomicU64,
    rows_written: AtomicU64,
}

async fn run_inner(
    pg: &Connector,
    settings: &JobSettings,
    selection: &Selection,
    mode: Mode,
    cancel: &CancellationToken,
    started: Instant,
) -> Result<RunSummary, IndicatorError> {
    let first = connect(pg).await?;
    let given = match selection {
        Selection::All => None,
        Selection::Symbols(list) => Some(list.as_slice()),
    };
    let listed = store::list_symbols(&first, given, mode == Mode::Full).await?;
    let mut summary = RunSummary {
        symbols_selected: listed.len() as u64,
        ..RunSummary::default()
    };
    let (known, unknown): (Vec<ListedSymbol>, Vec<ListedSymbol>) =
        listed.into_iter().partition(|s| s.known);
    if !unknown.is_empty() {
        summary.skipped_unknown = unknown.len() as u64;
        let names: Vec<&str> = unknown.iter().take(20).map(|s| s.symbol.as_str()).collect();
        tracing::warn!(
            count = unknown.len(),
            symbols = %names.join(","),
            "symbols with yahoo bars are missing from data_ingestion.symbols; skipped \
             (the indicator tables reference it)"
        );
    }
    let chunks = make_chunks(known, mode, settings);
    let total = summary.symbols_selected - summary.skipped_unknown;
    if chunks.is_empty() {
        return Ok(summary);
    }
    let queue = Arc::new(Mutex::new(chunks.into_iter().collect::<VecDeque<_>>()));
    let progress = Arc::new(Done::default());
    if let Some(watcher) = &settings.progress {
        watcher.start("symbols", Some(total));
    }
    let ctx = Arc::new(Ctx {
        pg: pg.clone(),
        tz: settings.bar_timezone,
        mode,
        replica: settings.replica.clone(),
        watcher: settings.progress.clone(),
        pool: PiecePool::default(),
    });
    let workers = settings
        .connections
        .max(1)
        .min(queue.lock().map(|q| q.len()).unwrap_or(1));
    let mut set = tokio::task::JoinSet::new();
    let mut first = Some(first);
    for _ in 0..workers {
        let (queue, progress, ctx, cancel) =
            (queue.clone(), progress.clone(), ctx.clone(), cancel.clone());
        let client = first.take();
        set.spawn(async move { worker(client, queue, progress, ctx, cancel).await });
    }
    let mut ticker = tokio::time::interval(settings.progress_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(Ok(part))) => summary.merge(part),
                Some(Ok(Err(e))) => {
                    // The worker could not even connect: its chunks stay queued for the others.
                    tracing::error!(error = %e, "an indicator worker stopped");
                }
                Some(Err(e)) => tracing::error!(error = %e, "an indicator worker panicked"),
            },
            _ = ticker.tick() => {
                tracing::info!(
                    done = progress.symbols_done.load(Ordering::Relaxed),
                    total,
                    rows_written = progress.rows_written.load(Ordering::Relaxed),
                    seconds = started.elapsed().as_secs_f64(),
                    "indicator run progress"
                );
            }
        }
    }
    // Chunks no worker took: every worker failed to connect, or the run was cancelled.
    let left: Vec<Vec<String>> = queue
        .lock()
        .map(|mut q| q.drain(..).collect())
        .unwrap_or_default();
    if cancel.is_cancelled() {
        summary.cancelled = true;
    } else if !left.is_empty() {
        let n: usize = left.iter().map(Vec::len).sum();
        summary.failures += n as u64;
        summary.failed_symbols.extend(left.into_iter().flatten());
        tracing::error!(symbols = n, "no connection left to compute these symbols");
    }
    Ok(summary)
}

/// Symbols computed from scratch first (the long chunks), then the incremental ones; sorted,
/// so chunks follow the (symbol, date) key (see [`WritePlan::add`]).
fn make_chunks(known: Vec<ListedSymbol>, mode: Mode, settings: &JobSettings) -> Vec<Vec<String>> {
    let (cont, scratch): (Vec<ListedSymbol>, Vec<ListedSymbol>) = known
        .into_iter()
        .partition(|s| s.has_state && mode == Mode::Incremental);
    let mut chunks = Vec::new();
    for (list, size) in [
        (scratch, settings.full_chunk.max(1)),
        (cont, settings.incremental_chunk.max(1)),
    ] {
        let mut names: Vec<String> = list.into_iter().map(|s| s.symbol).collect();
        names.sort_unstable();
        chunks.extend(names.chunks(size).map(<[String]>::to_vec));
    }
    chunks
}

struct Ctx {
    pg: Connector,
    tz: Tz,
    mode: Mode,
    replica: Option<ReplicaSettings>,
    watcher: Option<Arc<dyn Progress>>,
    /// The run's reusable COPY buffers.
    pool: PiecePool,
}

async fn worker(
    client: Option<Client>,
    queue: Arc<Mutex<VecDeque<Vec<String>>>>,
    progress: Arc<Done>,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
) -> Result<RunSummary, IndicatorError> {
    let mut client = match client {
        Some(c) => c,
        None => connect(&ctx.pg).await?,
    };
    let mut bars = BarSource::new(ctx.replica.clone());
    let mut summary = RunSummary::default();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let Some(chunk) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            break;
        };
        let part = match process_chunk(&mut client, &mut bars, &chunk, &ctx).await {
            Ok(part) => part,
            Err(e) if chunk.len() > 1 => {
                tracing::warn!(
                    error = %e, symbols = chunk.len(),
                    "indicator chunk failed; retrying its symbols one per transaction"
                );
                let mut part = RunSummary::default();
                for symbol in &chunk {
                    part.merge(process_alone(&mut client, &mut bars, symbol, &ctx).await);
                }
                part
            }
            Err(e) => failed(&chunk[0], &e),
        };
        progress
            .symbols_done
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        progress
            .rows_written
            .fetch_add(part.rows_written, Ordering::Relaxed);
        if let Some(watcher) = &ctx.watcher {
            watcher.advance(chunk.len() as u64);
        }
        summary.merge(part);
    }
    Ok(summary)
}

/// A symbol whose transaction failed: logged here, counted by the caller's merge.
fn failed(symbol: &str, error: &IndicatorError) -> RunSummary {
    tracing::error!(symbol, error = %error, "indicators failed for symbol");
    RunSummary {
        failures: 1,
        failed_symbols: vec![symbol.to_owned()],
        ..RunSummary::default()
    }
}

/// A connection of the job's own: session settings and staging tables in place.
async fn connect(pg: &Connector) -> Result<Client, IndicatorError> {
    let client = pg.connect().await?;
    client
        .batch_execute(store::SESSION_SETTINGS_SQL)
        .await
        .map_err(IndicatorError::query("configuring the session"))?;
    client
        .batch_execute(&store::CREATE_STAGING_SQL)
        .await
        .map_err(IndicatorError::query("creating staging tables"))?;
    Ok(client)
}

/// One symbol in its own transaction, reconnecting first if the connection died.
async fn process_alone(
    client: &mut Client,
    bars: &mut BarSource,
    symbol: &str,
    ctx: &Ctx,
) -> RunSummary {
    let result = async {
        if client.is_closed() {
            // Replaced only once the new session is set up: a client kept without its staging
            // tables would fail every symbol after this one.
            *client = connect(&ctx.pg).await?;
        }
        process_chunk(client, bars, &[symbol.to_owned()], ctx).await
    };
    result.await.unwrap_or_else(|e| failed(symbol, &e))
}

/// Where a symbol's computation starts.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    /// No bar changed since the state was written: nothing to read or compute.
    Unchanged,
    /// From the first bar; the reason decides how rows are written.
    Scratch(Scratch),
    /// From the persisted state, over bars after its last date.
    Continue(Box<IndicatorState>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scratch {
    /// No state: the symbol's rows (normally none) are replaced.
    NoState,
    /// `--full`: rows replaced.
    Forced,
    /// State unusable or history revised: rows upserted from `from` on (None: all of them),
    /// only changes written. Rows before the first changed bar come from the same bars
    /// through the same steps, so they are bit-identical and need not even be sent.
    Recompute {
        reason: String,
        from: Option<NaiveDate>,
    },
}

/// What to write for one symbol.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    /// Nothing new.
    Nothing,
    /// New rows after the state's last date.
    Append { after: NaiveDate },
    /// All rows replaced (delete, then copy).
    Replace,
    /// Rows from the date on (None: all) upserted, only changed ones written.
    Upsert { from: Option<NaiveDate> },
    /// No valid bar left: rows, latest row and state deleted.
    Vanish,
}

#[derive(Debug, Clone)]
pub(crate) struct Computed {
    pub symbol: String,
    pub write: Write,
    pub rows: Vec<IndicatorRow>,
    pub state: Option<StateToSave>,
    pub invalid: u64,
    pub duplicate: u64,
    pub recomputed: Option<String>,
}

/// Decides where to start and from when to read bars: `None` reads nothing, `Some(None)` the
/// whole history, `Some(Some(t))` the bars at or after `t`.
pub(crate) fn plan(
    stored: Option<IndicatorState>,
    change: Option<BarChange>,
    mode: Mode,
    tz: Tz,
) -> (Start, Option<Option<DateTime<Utc>>>) {
    let state = match (mode, stored) {
        (Mode::Full, _) => return (Start::Scratch(Scratch::Forced), Some(None)),
        (Mode::Incremental, None) => return (Start::Scratch(Scratch::NoState), Some(None)),
        (Mode::Incremental, Some(s)) => s,
    };
    let unusable = if state.spec_version != step::SPEC_VERSION {
        Some(format!(
            "state is of spec version {}, this build computes {}",
            state.spec_version,
            step::SPEC_VERSION
        ))
    } else if !state.is_consistent() {
        Some("stored state is inconsistent".to_owned())
    } else {
        None
    };
    let Some(last) = state.last_date.filter(|_| unusable.is_none()) else {
        let reason = unusable.unwrap_or_else(|| "stored state is empty".to_owned());
        return (
            Start::Scratch(Scratch::Recompute { reason, from: None }),
            Some(None),
        );
    };
    let Some(change) = change else {
        return (Start::Unchanged, None);
    };
    match change.earliest.map(|t| bar_date(tz, t)) {
        Some(d) if d > last => {
            let from = store::start_of_day(tz, last.succ_opt().unwrap_or(last));
            (Start::Continue(Box::new(state)), Some(Some(from)))
        }
        changed => {
            let reason = match changed {
                Some(d) => format!("a bar of {d} changed, on or before the last computed {last}"),
                None => "market_data was truncated".to_owned(),
            };
            let from = changed;
            (
                Start::Scratch(Scratch::Recompute { reason, from }),
                Some(None),
            )
        }
    }
}

/// Computes one symbol from the bars `plan` asked for, sorted by time.
pub(crate) fn compute(symbol: &str, start: Start, bars: &[RawBar], tz: Tz) -> Computed {
    let recomputed = match &start {
        Start::Scratch(Scratch::Recompute { reason, .. }) => Some(reason.clone()),
        _ => None,
    };
    let never_computed = matches!(start, Start::Scratch(Scratch::NoState));
    let (mut state, write) = match start {
        Start::Unchanged => (None, Write::Nothing),
        Start::Continue(state) => {
            let after = state.last_date.unwrap_or(NaiveDate::MIN);
            (Some(*state), Write::Append { after })
        }
        Start::Scratch(why) => (
            Some(IndicatorState::new()),
            match why {
                Scratch::Recompute { from, .. } => Write::Upsert { from },
                Scratch::NoState | Scratch::Forced => Write::Replace,
            },
        ),
    };
    let mut rows = Vec::with_capacity(bars.len());
    let (mut invalid, mut duplicate) = (0, 0);
    if let Some(state) = state.as_mut() {
        for raw in bars {
            match step::try_step(state, &to_bar(raw, bar_date(tz, raw.ts))) {
                Ok(row) => rows.push(row),
                Err(SkipReason::InvalidClose) => invalid += 1,
                Err(SkipReason::NotAfterLastDate) => duplicate += 1,
            }
        }
    }
    let state = state.filter(|s| s.last_date.is_some());
    let write = match (write, &state) {
        // Bars changed after the last one computed, but none of them is valid (or new).
        (Write::Append { .. }, _) if rows.is_empty() => Write::Nothing,
        // No valid bar at all: nothing to write for a symbol never computed (and counted as
        // up to date, not again as computed on every run); a computed one loses its rows and
        // state.
        (Write::Replace, None) if never_computed => Write::Nothing,
        (Write::Replace | Write::Upsert { .. }, None) => Write::Vanish,
        (write, _) => write,
    };
    let state = match write {
        Write::Nothing | Write::Vanish => None,
        _ => state.map(|state| StateToSave {
            symbol: symbol.to_owned(),
            state,
        }),
    };
    Computed {
        symbol: symbol.to_owned(),
        write,
        rows,
        state,
        invalid,
        duplicate,
        recomputed,
    }
}

fn to_bar(raw: &RawBar, date: NaiveDate) -> Bar {
    Bar {
        date,
        // NULL is as much "not a bar" as NaN; step refuses both.
        close: raw.close.unwrap_or(f64::NAN),
        // A bar without a volume still has a price; its volume counts as 0.
        volume: raw.volume.unwrap_or(0),
    }
}

/// One chunk in one transaction.
async fn process_chunk(
    client: &mut Client,
    bars: &mut BarSource,
    symbols: &[String],
    ctx: &Ctx,
) -> Result<RunSummary, IndicatorError> {
    let mut summary = RunSummary::default();
    let tx = client
        .transaction()
        .await
        .map_err(IndicatorError::query("beginning a transaction"))?;
    tx.batch_execute(store::TX_SETTINGS_SQL)
        .await
        .map_err(IndicatorError::query("configuring the transaction"))?;
    let locked = store::try_lock_symbols(&tx, symbols).await?;
    let mut mine = Vec::with_capacity(symbols.len());
    for (symbol, got) in symbols.iter().zip(locked) {
        if got {
            mine.push(symbol.clone());
        } else {
            tracing::debug!(symbol = %symbol, "locked by another instance; skipped");
            summary.skipped_locked += 1;
            summary.locked_symbols.push(symbol.clone());
        }
    }
    if mine.is_empty() {
        tx.commit()
            .await
            .map_err(IndicatorError::query("committing"))?;
        return Ok(summary);
    }
    // Read after the locks: under READ COMMITTED these statements see the commit of an
    // instance that held a lock a moment ago, never a state it is about to replace. Changes
    // before bars: a bar committed after this read comes with a change row this chunk did not
    // read and so does not consume; it is never lost between the two reads.
    let mut changes = store::load_changes(&tx, &mine).await?;
    let mut states = store::load_states(&tx, &mine).await?;
    let mut consumed = Vec::new();
    let mut planned = Vec::with_capacity(mine.len());
    let mut requests = Vec::new();
    for symbol in mine {
        let change = changes.remove(&symbol);
        if let Some(c) = &change {
            consumed.extend_from_slice(&c.ids);
        }
        let (start, read) = plan(states.remove(&symbol), change, ctx.mode, ctx.tz);
        let slot = read.map(|from| {
            requests.push((symbol.clone(), from));
            requests.len() - 1
        });
        planned.push((symbol, start, slot));
    }
    let (reads, read_on) = bars.load_bars(&tx, &requests).await?;
    match read_on {
        ReadOn::Primary => {}
        ReadOn::Replica => summary.replica_reads += 1,
        ReadOn::Fallback => summary.replica_fallbacks += 1,
    }
    let tz = ctx.tz;
    let pool = ctx.pool.clone();
    let plan = blocking(move || compute_chunk(planned, &reads, tz, &pool)).await?;
    summary.merge(plan.summary.clone());
    write(&tx, plan, &mut summary).await?;
    store::consume_changes(&tx, &consumed).await?;
    tx.commit()
        .await
        .map_err(IndicatorError::query("committing"))?;
    Ok(summary)
}

/// Computes a chunk's symbols from the bars read for them (`slot`: their index in `reads`) and
/// encodes what to write, one symbol at a time: a symbol's rows are encoded and dropped before
/// the next is computed, so a chunk holds its COPY payload but never all its rows (~350 bytes
/// each, 56 MB for a 64-symbol backfill chunk, fresh pages to fault in for every chunk).
/// Symbols in name order, rows in date order: the rows go out in (symbol, date) order (see
/// [`WritePlan::add`]).
fn compute_chunk(
    mut planned: Vec<(String, Start, Option<usize>)>,
    reads: &[Vec<RawBar>],
    tz: Tz,
    pool: &PiecePool,
) -> WritePlan {
    planned.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut plan = WritePlan::new(pool);
    for (symbol, start, slot) in planned {
        let bars = slot.map_or(&[][..], |i| reads[i].as_slice());
        plan.add(compute(&symbol, start, bars, tz));
    }
    plan
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IndicatorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IndicatorError::Panicked(e.to_string()))
}

/// A chunk's writes, encoded.
struct WritePlan {
    summary: RunSummary,
    delete_from: Vec<(String, Option<NaiveDate>)>,
    direct: RowEncoder,
    staged: RowEncoder,
    staged_targets: Vec<(String, Option<NaiveDate>)>,
    latest: Vec<String>,
    states: Vec<StateToSave>,
    vanished: Vec<String>,
}

impl WritePlan {
    fn new(pool: &PiecePool) -> WritePlan {
        WritePlan {
            summary: RunSummary::default(),
            delete_from: Vec::new(),
            direct: RowEncoder::with_pool(pool.clone()),
            staged: RowEncoder::with_pool(pool.clone()),
            staged_targets: Vec::new(),
            latest: Vec::new(),
            states: Vec::new(),
            vanished: Vec::new(),
        }
    }

    /// Adds one computed symbol: counts, warnings, its rows encoded, its state.
    ///
    /// Rows are encoded as they come, so a chunk's rows go out in (symbol, date) order when its
    /// symbols are added in name order ([`compute_chunk`]) — the order of the table's unique
    /// key. The date index is a BRIN (V20) and only selective because of this order: a heap
    /// page then holds consecutive dates of one symbol (a backfill) or one date of many (a
    /// daily run). For the insert cost itself the order hardly matters (the 12.6 M-row backfill
    /// measured 67-71 s either way with V10's B-tree date index).
    fn add(&mut self, c: Computed) {
        let s = &mut self.summary;
        s.bars_skipped_invalid += c.invalid;
        s.bars_skipped_duplicate_date += c.duplicate;
        if c.invalid > 0 {
            tracing::warn!(
                symbol = %c.symbol, bars = c.invalid,
                "bars with a NULL, NaN or non-positive close skipped"
            );
        }
        if c.duplicate > 0 {
            tracing::warn!(
                symbol = %c.symbol, bars = c.duplicate,
                "second bars on an already used date skipped (the first one of the day counts)"
            );
        }
        if let Some(reason) = &c.recomputed {
            s.recomputed_after_revision += 1;
            tracing::info!(symbol = %c.symbol, reason = %reason, "recomputing from the first bar");
        }
        let (encoder, from) = match &c.write {
            Write::Nothing => {
                s.symbols_up_to_date += 1;
                return;
            }
            Write::Append { after } => {
                self.delete_from.push((c.symbol.clone(), after.succ_opt()));
                (&mut self.direct, NaiveDate::MIN)
            }
            Write::Replace | Write::Vanish => {
                self.delete_from.push((c.symbol.clone(), None));
                (&mut self.direct, NaiveDate::MIN)
            }
            Write::Upsert { from } => {
                self.staged_targets.push((c.symbol.clone(), *from));
                (&mut self.staged, from.unwrap_or(NaiveDate::MIN))
            }
        };
        s.symbols_computed += 1;
        self.latest.push(c.symbol.clone());
        let mut overflows = Vec::new();
        for row in c.rows.iter().filter(|row| row.date >= from) {
            encoder.push(&c.symbol, row, &mut overflows);
        }
        self.summary.values_nulled += overflows.len() as u64;
        log_overflows(&c.symbol, &overflows);
        match c.state {
            Some(state) => self.states.push(state),
            None => self.vanished.push(c.symbol),
        }
    }
}

/// One warning per column, not per value.
fn log_overflows(symbol: &str, overflows: &[Overflow]) {
    let mut by_column: BTreeMap<&str, (usize, &Overflow)> = BTreeMap::new();
    for o in overflows {
        by_column.entry(o.column).or_insert((0, o)).0 += 1;
    }
    for (column, (n, first)) in by_column {
        tracing::warn!(
            symbol, column, values = n, first_date = %first.date,
            first_value = first.value,
            "indicator values do not fit their column; written NULL"
        );
    }
}

async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    plan: WritePlan,
    summary: &mut RunSummary,
) -> Result<(), IndicatorError> {
    store::delete_rows_from(tx, &plan.delete_from).await?;
    if plan.direct.rows() > 0 {
        summary.rows_written +=
            store::copy_rows(tx, &store::COPY_ROWS_SQL, plan.direct.finish()).await?;
    }
    if !plan.staged_targets.is_empty() {
        summary.rows_written +=
            store::upsert_rows(tx, &plan.staged_targets, plan.staged.finish()).await?;
    }
    store::refresh_latest(tx, &plan.latest).await?;
    store::save_states(tx, &plan.states).await?;
    store::delete_states(tx, &plan.vanished).await?;
    Ok(())
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Client CPU of a backfill chunk: `cargo test --release --lib compute_chunk_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn compute_chunk_cost() {
        let tz = chrono_tz::America::New_York;
        let (symbols, n) = (64usize, 2520usize);
        let day0 = NaiveDate::from_ymd_opt(2015, 1, 2).unwrap();
        let reads: Vec<Vec<RawBar>> = (0..symbols)
            .map(|s| {
                let mut c = 10.0 + s as f64;
                (0..n)
                    .map(|i| {
                        c *= 1.0 + ((i * 7919 + s * 31) % 200) as f64 / 10_000.0 - 0.01;
                        RawBar {
                            ts: store::start_of_day(tz, day0 + chrono::Duration::days(i as i64)),
                            close: Some((c * 10_000.0).round() / 10_000.0),
                            volume: Some(100_000 + i as i64),
                        }
                    })
                    .collect()
            })
            .collect();
        let reps = 6;
        let pool = PiecePool::default();
        let mut best = f64::MAX;
        for _ in 0..reps {
            let planned = (0..symbols)
                .map(|s| {
                    (
                        format!("SYM{s:05}"),
                        Start::Scratch(Scratch::NoState),
                        Some(s),
                    )
                })
                .collect();
            let t = Instant::now();
            let plan = compute_chunk(planned, &reads, tz, &pool);
            // As the connection does: each piece dropped once sent.
            plan.direct.finish().drop_as_sent();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut steps = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            for (s, bars) in reads.iter().enumerate() {
                let c = compute(
                    &format!("SYM{s:05}"),
                    Start::Scratch(Scratch::NoState),
                    bars,
                    tz,
                );
                std::hint::black_box(c);
            }
            steps = steps.min(t.elapsed().as_secs_f64());
        }
        let per_row = |s: f64| s * 1e6 / (symbols * n) as f64;
        eprintln!(
            "compute_chunk: {:.3} us/row, of which compute {:.3} (best of {reps})",
            per_row(best),
            per_row(steps)
        );
    }
}
