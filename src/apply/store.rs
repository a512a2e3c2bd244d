//! The SQL of one batch, run in one transaction: dead letters, the trade-id ledger, the folded
//! upserts, position snapshots and marks to market.
//!
//! Each statement is a multi-row UNNEST over arrays in key order, so a batch costs a fixed
//! handful of round trips whatever its size, and concurrent instances lock rows in the same
//! order. A trade's effect and its ledger row commit together: that is the exactly-once.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use super::fold::{BatchPlan, DeadLetter, Folded, Writes};
use crate::core::{ChannelKind, PerChannel};
use crate::db::ErrorClass;

/// Records trade ids with each trade's contribution to the aggregates (what `verify` recomputes
/// them from); returns the ids not seen before (conflicts are duplicates).
const INSERT_LEDGER: &str = "\
INSERT INTO analytics.applied_trades
    (trade_id, account_id, symbol, strategy, executed_at, net_quantity, price, total_value,
     realized_pnl, commission, is_win, trade_date, source)
SELECT u.*, $13::text
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::numeric[],
            $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[], $11::bool[],
            $12::date[]) AS u
ON CONFLICT (trade_id) DO NOTHING
RETURNING trade_id";

/// The upserts and the mark set `updated_at` themselves: the tables' trigger (V31) then skips
/// the row instead of calling plpgsql for it.
const UPSERT_PORTFOLIO: &str = "\
INSERT INTO analytics.portfolio_summary AS ps
    (account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, commission, last_trade_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::numeric[], $5::numeric[],
                     $6::numeric[], $7::numeric[], $8::timestamptz[])
ON CONFLICT (account_id, symbol) DO UPDATE SET
    trade_count   = ps.trade_count + EXCLUDED.trade_count,
    net_quantity  = ps.net_quantity + EXCLUDED.net_quantity,
    total_value   = ps.total_value + EXCLUDED.total_value,
    realized_pnl  = ps.realized_pnl + EXCLUDED.realized_pnl,
    commission    = ps.commission + EXCLUDED.commission,
    last_trade_at = GREATEST(ps.last_trade_at, EXCLUDED.last_trade_at),
    updated_at    = now()";

const UPSERT_METRICS: &str = "\
INSERT INTO analytics.performance_metrics AS pm
    (strategy, date, total_trades, winning_trades, realized_pnl, volume, notional, commission)
SELECT * FROM unnest($1::text[], $2::date[], $3::int8[], $4::int8[], $5::numeric[],
                     $6::numeric[], $7::numeric[], $8::numeric[])
ON CONFLICT (strategy, date) DO UPDATE SET
    total_trades   = pm.total_trades + EXCLUDED.total_trades,
    winning_trades = pm.winning_trades + EXCLUDED.winning_trades,
    realized_pnl   = pm.realized_pnl + EXCLUDED.realized_pnl,
    volume         = pm.volume + EXCLUDED.volume,
    notional       = pm.notional + EXCLUDED.notional,
    commission     = pm.commission + EXCLUDED.commission,
    updated_at     = now()";

/// Last writer wins by as_of; a field the snapshot leaves out keeps its previous value.
const UPSERT_POSITIONS: &str = "\
INSERT INTO analytics.portfolio_summary AS ps
    (account_id, symbol, quantity, avg_price, position_realized_pnl,
     reported_market_value, reported_unrealized_pnl, position_as_of)
SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $5::numeric[],
                     $6::numeric[], $7::numeric[], $8::timestamptz[])
ON CONFLICT (account_id, symbol) DO UPDATE SET
    quantity                = COALESCE(EXCLUDED.quantity, ps.quantity),
    avg_price               = COALESCE(EXCLUDED.avg_price, ps.avg_price),
    position_realized_pnl   = COALESCE(EXCLUDED.position_realized_pnl, ps.position_realized_pnl),
    reported_market_value   = COALESCE(EXCLUDED.reported_market_value, ps.reported_market_value),
    reported_unrealized_pnl = COALESCE(EXCLUDED.reported_unrealized_pnl, ps.reported_unrealized_pnl),
    position_as_of          = EXCLUDED.position_as_of,
    updated_at              = now()
WHERE ps.position_as_of IS NULL OR ps.position_as_of <= EXCLUDED.position_as_of";

/// market_value and unrealized_pnl are generated columns: setting the price re-marks the row.
const MARK_TO_MARKET: &str = "\
UPDATE analytics.portfolio_summary AS ps
SET last_price = u.close, last_price_at = u.ts, updated_at = now()
FROM unnest($1::text[], $2::timestamptz[], $3::numeric[]) AS u(symbol, ts, close)
WHERE ps.symbol = u.symbol AND (ps.last_price_at IS NULL OR ps.last_price_at < u.ts)";

const INSERT_DEAD_LETTERS: &str = "\
INSERT INTO analytics.dead_letters
    (channel, payload, error, event_type, trade_id, stream_id, delivery_count, payload_bytes,
     payload_sha256, replayable, reason)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::int4[], $8::int8[], $9::bytea[], $10::bool[], $11::text[])";

/// The batch statements, prepared once per connection: a batch then costs one round trip per
/// statement instead of two.
pub struct Statements {
    /// The channel names dead letters record (V28: as received, prefix included).
    channels: PerChannel<String>,
    ledger: tokio_postgres::Statement,
    portfolio: tokio_postgres::Statement,
    metrics: tokio_postgres::Statement,
    positions: tokio_postgres::Statement,
    mark: tokio_postgres::Statement,
    dead_letters: tokio_postgres::Statement,
}

impl Statements {
    pub async fn prepare(client: &tokio_postgres::Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            channels: PerChannel::from_fn(|kind| kind.suffix().to_owned()),
            ledger: client.prepare(INSERT_LEDGER).await?,
            portfolio: client.prepare(UPSERT_PORTFOLIO).await?,
            metrics: client.prepare(UPSERT_METRICS).await?,
            positions: client.prepare(UPSERT_POSITIONS).await?,
            mark: client.prepare(MARK_TO_MARKET).await?,
            dead_letters: client.prepare(INSERT_DEAD_LETTERS).await?,
        })
    }

    /// Dead letters record their channel as `<prefix>:<suffix>`, the name it was received
    /// under (the pub/sub channel and the stream key are the same name). Without this, only
    /// the suffix: what reconcile and the tests, which never dead-letter, get.
    pub fn with_channel_prefix(mut self, prefix: &str) -> Self {
        self.channels = ChannelKind::names(prefix);
        self
    }
}

/// Where the trades of a plan come from, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TradeSource {
    /// `trade_executed` events.
    Event,
    /// execution.trades rows, through reconcile.
    Row,
}

impl TradeSource {
    fn as_str(self) -> &'static str {
        match self {
            TradeSource::Event => "event",
            TradeSource::Row => "row",
        }
    }
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub new_trades: u64,
    /// Their ids (reconcile reports which rows it healed).
    pub fresh: HashSet<String>,
    /// Trades already in the ledger (replays, another instance, a retried commit).
    pub ledger_duplicates: u64,
    pub positions: u64,
    pub marks: u64,
    /// Rows the snapshots and the bars changed: 0 when every one was older than what the books
    /// hold (a snapshot or price newer already), or a bar's symbol has no row.
    pub positions_changed: u64,
    pub marks_changed: u64,
    pub dead_letters: u64,
}

impl Applied {
    /// Adds what another transaction of the same batch applied.
    pub fn merge(&mut self, other: Applied) {
        self.new_trades += other.new_trades;
        self.fresh.extend(other.fresh);
        self.ledger_duplicates += other.ledger_duplicates;
        self.positions += other.positions;
        self.marks += other.marks;
        self.positions_changed += other.positions_changed;
        self.marks_changed += other.marks_changed;
        self.dead_letters += other.dead_letters;
    }
}

/// Applies a plan of events in one transaction. Any error rolls everything back, so a retry is
/// safe.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    stmts: &Statements,
    plan: &BatchPlan,
) -> Result<Applied, tokio_postgres::Error> {
    write(client, stmts, &plan.writes()).await
}

/// Trades per partition below which a batch is not split: each partition is one more
/// transaction (a commit, an fsync, five round trips), worth it only for a large batch.
pub const MIN_PARTITION_TRADES: usize = 1_000;

/// How many of `sessions` a batch of `trades` is split across.
pub fn partitions_for(trades: usize, sessions: usize) -> usize {
    (trades / MIN_PARTITION_TRADES).clamp(1, sessions.max(1))
}

/// Applies a plan on several connections at once: its trades and snapshots split by account
/// ([`BatchPlan::split_by_account`]) into at most `sessions.len()` partitions, one transaction
/// each, all in flight together; then, once every partition committed, the marks and dead
/// letters in a transaction of their own. A batch too small to be worth splitting
/// ([`partitions_for`]) is one transaction, as in [`apply`].
///
/// Each transaction's [`Applied`] is added to `committed` as soon as it commits — also when
/// another fails, or the caller gives up on this future (a time limit): the caller counts what
/// reached the ledger either way. The first error is returned, one that is not the events'
/// fault preferred (a connection lost beside a data error must be retried as such).
///
/// Exactly-once holds per partition (each commits its trades' ledger rows with their effects),
/// and a retry of the whole batch after a partial failure is safe: the committed partitions'
/// trades are duplicates then, their snapshots no newer than what is stored, and the marks and
/// dead letters were not written yet. Partitions lock disjoint ledger and portfolio rows; the
/// few hot `performance_metrics` rows (strategy × day) are upserted last in each transaction,
/// in key order, so a partition waits for another's row lock only through that one's commit,
/// and never in a cycle.
pub async fn apply_parallel(
    sessions: &mut [(tokio_postgres::Client, Statements)],
    plan: &BatchPlan,
    committed: &Mutex<Applied>,
) -> Result<(), tokio_postgres::Error> {
    let record = |applied: Applied| {
        committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .merge(applied)
    };
    let parts = partitions_for(plan.trades.len(), sessions.len());
    let Some(((first, first_stmts), others)) = sessions.split_first_mut() else {
        panic!("apply_parallel needs at least one session");
    };
    if parts == 1 {
        record(write(first, first_stmts, &plan.writes()).await?);
        return Ok(());
    }
    let (shares, rest) = plan.split_by_account(parts);
    let all =
        std::iter::once((first, &*first_stmts)).chain(others.iter_mut().map(|(c, s)| (c, &*s)));
    let results = futures::future::join_all(all.zip(&shares).map(|((client, stmts), share)| {
        let record = &record;
        async move {
            let applied = write(client, stmts, share).await?;
            record(applied);
            Ok::<_, tokio_postgres::Error>(())
        }
    }))
    .await;
    let mut errors: Vec<tokio_postgres::Error> =
        results.into_iter().filter_map(Result::err).collect();
    if !errors.is_empty() {
        let worst = errors
            .iter()
            .position(|e| ErrorClass::of(e) != ErrorClass::Data)
            .unwrap_or(0);
        return Err(errors.swap_remove(worst));
    }
    if !rest.is_empty() {
        let (client, stmts) = &mut sessions[0];
        record(write(client, stmts, &rest).await?);
    }
    Ok(())
}

/// One transaction of [`Writes`].
async fn write(
    client: &mut tokio_postgres::Client,
    stmts: &Statements,
    writes: &Writes<'_>,
) -> Result<Applied, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let applied = write_in(&tx, stmts, writes, TradeSource::Event).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Applies a plan inside a transaction the caller owns and commits (reconcile adds its own
/// statements to it). Trades whose id is in the ledger already change nothing.
pub(crate) async fn apply_in(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &Statements,
    plan: &BatchPlan,
    source: TradeSource,
) -> Result<Applied, tokio_postgres::Error> {
    write_in(tx, stmts, &plan.writes(), source).await
}

/// The statements of one transaction, `performance_metrics` last: its rows are the ones every
/// partition and every instance shares, so their locks are taken as late as possible.
async fn write_in(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &Statements,
    writes: &Writes<'_>,
    source: TradeSource,
) -> Result<Applied, tokio_postgres::Error> {
    let mut applied = Applied::default();

    if !writes.dead_letters.is_empty() {
        insert_dead_letters(tx, stmts, writes.dead_letters).await?;
        applied.dead_letters = writes.dead_letters.len() as u64;
    }

    let mut folded = Folded::default();
    if !writes.trades.is_empty() {
        let t = &writes.trades;
        let ids: Vec<&str> = t.iter().map(|t| t.trade_id.as_str()).collect();
        let accounts: Vec<&str> = t.iter().map(|t| t.account_id.as_str()).collect();
        let symbols: Vec<&str> = t.iter().map(|t| t.symbol.as_str()).collect();
        let strategies: Vec<Option<&str>> = t.iter().map(|t| t.strategy.as_deref()).collect();
        let executed: Vec<DateTime<Utc>> = t.iter().map(|t| t.executed_at).collect();
        let net_quantities: Vec<Decimal> = t.iter().map(|t| t.signed_quantity()).collect();
        let prices: Vec<Option<Decimal>> = t.iter().map(|t| t.price).collect();
        let totals: Vec<Decimal> = t.iter().map(|t| t.total_value).collect();
        let pnls: Vec<Decimal> = t.iter().map(|t| t.realized_pnl).collect();
        let commissions: Vec<Decimal> = t.iter().map(|t| t.commission).collect();
        let wins: Vec<bool> = t.iter().map(|t| t.is_win).collect();
        let dates: Vec<NaiveDate> = t.iter().map(|t| t.trade_date).collect();
        let stmt = &stmts.ledger;
        let fresh: HashSet<String> = tx
            .query(
                stmt,
                &[
                    &ids,
                    &accounts,
                    &symbols,
                    &strategies,
                    &executed,
                    &net_quantities,
                    &prices,
                    &totals,
                    &pnls,
                    &commissions,
                    &wins,
                    &dates,
                    &source.as_str(),
                ],
            )
            .await?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        applied.new_trades = fresh.len() as u64;
        applied.ledger_duplicates = (t.len() - fresh.len()) as u64;

        folded.add(t.iter().copied().filter(|t| fresh.contains(&t.trade_id)));
        applied.fresh = fresh;
        if !folded.portfolio.is_empty() {
            let p = &folded.portfolio;
            let stmt = &stmts.portfolio;
            tx.execute(
                stmt,
                &[
                    &p.keys().map(|k| k.0).collect::<Vec<_>>(),
                    &p.keys().map(|k| k.1).collect::<Vec<_>>(),
                    &p.values().map(|d| d.trade_count).collect::<Vec<_>>(),
                    &p.values().map(|d| d.net_quantity).collect::<Vec<_>>(),
                    &p.values().map(|d| d.total_value).collect::<Vec<_>>(),
                    &p.values().map(|d| d.realized_pnl).collect::<Vec<_>>(),
                    &p.values().map(|d| d.commission).collect::<Vec<_>>(),
                    &p.values().map(|d| d.last_trade_at).collect::<Vec<_>>(),
                ],
            )
            .await?;
        }
    }

    if !writes.positions.is_empty() {
        let p = &writes.positions;
        let stmt = &stmts.positions;
        applied.positions_changed = tx
            .execute(
                stmt,
                &[
                    &p.iter().map(|p| p.account_id.as_str()).collect::<Vec<_>>(),
                    &p.iter().map(|p| p.symbol.as_str()).collect::<Vec<_>>(),
                    &p.iter()
                        .map(|p| p.quantity)
                        .collect::<Vec<Option<Decimal>>>(),
                    &p.iter().map(|p| p.avg_price).collect::<Vec<_>>(),
                    &p.iter().map(|p| p.realized_pnl).collect::<Vec<_>>(),
                    &p.iter().map(|p| p.market_value).collect::<Vec<_>>(),
                    &p.iter().map(|p| p.unrealized_pnl).collect::<Vec<_>>(),
                    &p.iter().map(|p| p.as_of).collect::<Vec<_>>(),
                ],
            )
            .await?;
        applied.positions = p.len() as u64;
    }

    if !writes.marks.is_empty() {
        let bars = &writes.marks;
        let stmt = &stmts.mark;
        applied.marks_changed = tx
            .execute(
                stmt,
                &[
                    &bars.iter().map(|b| b.symbol.as_str()).collect::<Vec<_>>(),
                    &bars.iter().map(|b| b.timestamp).collect::<Vec<_>>(),
                    &bars.iter().map(|b| b.close).collect::<Vec<_>>(),
                ],
            )
            .await?;
        applied.marks = bars.len() as u64;
    }

    if !folded.metrics.is_empty() {
        let m = &folded.metrics;
        let stmt = &stmts.metrics;
        tx.execute(
            stmt,
            &[
                &m.keys().map(|k| k.0).collect::<Vec<_>>(),
                &m.keys().map(|k| k.1).collect::<Vec<NaiveDate>>(),
                &m.values().map(|d| d.total_trades).collect::<Vec<_>>(),
                &m.values().map(|d| d.winning_trades).collect::<Vec<_>>(),
                &m.values().map(|d| d.realized_pnl).collect::<Vec<_>>(),
                &m.values().map(|d| d.volume).collect::<Vec<_>>(),
                &m.values().map(|d| d.notional).collect::<Vec<_>>(),
                &m.values().map(|d| d.commission).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    Ok(applied)
}

/// Dead letters alone, in their own transaction: used for events the database itself refused.
pub(crate) async fn insert_dead_letters_only(
    client: &mut tokio_postgres::Client,
    stmts: &Statements,
    letters: &[DeadLetter],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    insert_dead_letters(&tx, stmts, letters).await?;
    tx.commit().await
}

async fn insert_dead_letters(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &Statements,
    letters: &[DeadLetter],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &stmts.dead_letters,
        &[
            &letters
                .iter()
                .map(|d| stmts.channels[d.channel].as_str())
                .collect::<Vec<_>>(),
            &letters
                .iter()
                .map(|d| d.payload.as_slice())
                .collect::<Vec<_>>(),
            &letters
                .iter()
                .map(|d| text_safe(&d.error))
                .collect::<Vec<_>>(),
            &letters
                .iter()
                .map(|d| d.event_type.as_deref().map(text_safe))
                .collect::<Vec<_>>(),
            &letters
                .iter()
                .map(|d| d.trade_id.as_deref().map(text_safe))
                .collect::<Vec<_>>(),
            &letters
                .iter()
                .map(|d| d.stream_id.as_deref())
                .collect::<Vec<_>>(),
            &letters.iter().map(|d| d.delivery_count).collect::<Vec<_>>(),
            &letters.iter().map(|d| d.size as i64).collect::<Vec<_>>(),
            &letters
                .iter()
                .map(|d| d.sha256.as_ref().map(|h| h.as_slice()))
                .collect::<Vec<_>>(),
            &letters
                .iter()
                .map(DeadLetter::replayable)
                .collect::<Vec<_>>(),
            &letters.iter().map(|d| d.kind).collect::<Vec<_>>(),
        ],
    )
    .await?;
    Ok(())
}

/// PostgreSQL text cannot hold NUL; a dead letter's reason may quote the bad input.
fn text_safe(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}
