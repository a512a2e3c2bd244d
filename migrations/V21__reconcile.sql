-- V21: books that heal and prove themselves — what `trading-sync reconcile` and `verify` need.
--
-- Pub/sub keeps nothing for an absent subscriber, so every trade published while the daemon was
-- down (a deploy, a crash, a Redis restart, a network blip) used to be a permanent hole in the
-- aggregates. The truth is in this database: the execution service commits every fill to
-- execution.trades (the review's execute_trade, "Complex Transaction"). This migration lets the
-- daemon re-derive what events did not deliver, exactly once, and prove its sums:
--
-- 1. execution.trades.realized_pnl (nullable; NULL means 0, as in EVENTS.md): the one amount of a
--    trade event the seed's trades table lacks.
-- 2. analytics.trade_changes: an append-only log of trade rows written, fed by statement triggers
--    in the writing transaction, the way V19 records bar changes. Reconcile consumes it (deletes
--    exactly the rows it read) in the transaction that applies the trades. Not a timestamp
--    watermark: created_at is the transaction's start, so a long transaction commits "in the past"
--    and a watermark would skip it; a log row becomes visible exactly when its trade does. The log
--    starts here: older history is reached only through `reconcile --since`.
-- 3. The ledger records each applied trade's contribution (signed quantity, price, amounts, win,
--    trading date) and where it came from ('event' or 'row'), so `verify` can recompute every
--    aggregate from it. Ledger rows written before this migration have no contribution (NULLs);
--    the aggregates as they stand at this migration are carried forward as a per-key baseline
--    (analytics.ledger_baseline_*), so an upgraded database verifies clean. Retention folds the
--    contributions it retires into the baseline, in the same statement.
-- 4. analytics.reconcile_runs: one row per reconcile run (when, why, what it did), so instances
--    can tell that a scheduled run already happened, and operators can see the last one.
-- 5. trading_sync may now READ execution.trades, orders and positions (reconcile and verify).
--    This supersedes V7's "trading-sync neither reads nor writes them" and V17's "nothing in
--    execution": it still writes nothing there.
--
-- Run it with the old daemon stopped: an old binary still running after this commits would add
-- ledger rows without contributions and aggregates the baseline does not hold, and verify would
-- (rightly) report those keys. The seed below locks the ledger and the aggregates so that it is
-- consistent with every batch committed before it.

ALTER TABLE execution.trades ADD COLUMN realized_pnl NUMERIC(15,4);
COMMENT ON COLUMN execution.trades.realized_pnl IS
    'Realized P&L of this fill (NULL = 0, as in the trade_executed event). Read by trading-sync reconcile.';
COMMENT ON TABLE execution.trades IS
    'Executions (fills). Immutable once written, hence no updated_at. The source of truth trading-sync reconcile heals the aggregates from (read only).';
COMMENT ON TABLE execution.orders IS
    'Orders submitted by strategies; one row per order, status updated in place. trading-sync reads side and strategy of a fill''s order.';
COMMENT ON TABLE execution.positions IS
    'Current position per (account, symbol), long-only (quantity >= 0) as in the seed. trading-sync reconcile copies newer ones into portfolio_summary.';


CREATE TABLE analytics.trade_changes (
    id           BIGSERIAL      PRIMARY KEY,
    trade_id     VARCHAR(100)   NOT NULL,
    -- clock_timestamp(), not now(): the grace period is measured from when the row was written,
    -- which for a long transaction is much later than its start.
    recorded_at  TIMESTAMPTZ    NOT NULL DEFAULT clock_timestamp()
);

COMMENT ON TABLE analytics.trade_changes IS
    'execution.trades rows written and not yet reconciled, one row per trade and statement; written by triggers on execution.trades, deleted by trading-sync reconcile. Append-only otherwise.';
COMMENT ON COLUMN analytics.trade_changes.trade_id IS 'The trade row''s trade_id.';
COMMENT ON COLUMN analytics.trade_changes.recorded_at IS 'When the row was written (database clock); reconcile leaves rows younger than [reconcile] grace_ms.';

-- SECURITY DEFINER: the execution service needs no grant on analytics. Inserts and updates
-- (a side or realized_pnl filled in later, say) are both recorded; an applied trade recorded again
-- is found in the ledger and left alone.
CREATE FUNCTION analytics.record_trade_changes()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO analytics.trade_changes (trade_id) SELECT trade_id FROM new_trades;
    RETURN NULL;
END;
$fn$;

CREATE TRIGGER trg_trades_changes_insert
    AFTER INSERT ON execution.trades
    REFERENCING NEW TABLE AS new_trades
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_trade_changes();
CREATE TRIGGER trg_trades_changes_update
    AFTER UPDATE ON execution.trades
    REFERENCING NEW TABLE AS new_trades
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_trade_changes();


-- Each applied trade's contribution to the aggregates. NULL on rows written before V21 (their
-- contributions are in the baseline below); all set on every later row.
ALTER TABLE analytics.applied_trades
    ADD COLUMN net_quantity  NUMERIC(15,4),
    ADD COLUMN price         NUMERIC(15,4),
    ADD COLUMN total_value   NUMERIC(15,4),
    ADD COLUMN realized_pnl  NUMERIC(15,4),
    ADD COLUMN commission    NUMERIC(15,4),
    ADD COLUMN is_win        BOOLEAN,
    ADD COLUMN trade_date    DATE,
    ADD COLUMN source        TEXT,
    ADD CONSTRAINT applied_trades_contribution_complete CHECK (
        (net_quantity IS NULL AND total_value IS NULL AND realized_pnl IS NULL AND commission IS NULL
         AND is_win IS NULL AND trade_date IS NULL AND source IS NULL)
        OR (net_quantity IS NOT NULL AND total_value IS NOT NULL AND realized_pnl IS NOT NULL
            AND commission IS NOT NULL AND is_win IS NOT NULL AND trade_date IS NOT NULL
            AND source IN ('event', 'row'))),
    ADD CONSTRAINT applied_trades_commission_check CHECK (commission >= 0);

COMMENT ON TABLE analytics.applied_trades IS
    'Trades whose deltas are in portfolio_summary/performance_metrics, one row per trade_id (exactly-once ledger), with each trade''s contribution. Rows leave only through retention, which folds them into analytics.ledger_baseline_*.';
COMMENT ON COLUMN analytics.applied_trades.net_quantity IS 'Contribution to portfolio_summary.net_quantity: +quantity for a buy (or no side), -quantity for a sell, 0 without a quantity. |net_quantity| is the volume.';
COMMENT ON COLUMN analytics.applied_trades.price IS 'Price the trade was applied with (NULL if the event had none); verify compares it with the trade row.';
COMMENT ON COLUMN analytics.applied_trades.total_value IS 'Contribution to total_value (its absolute value to notional).';
COMMENT ON COLUMN analytics.applied_trades.realized_pnl IS 'Contribution to realized_pnl.';
COMMENT ON COLUMN analytics.applied_trades.commission IS 'Contribution to commission.';
COMMENT ON COLUMN analytics.applied_trades.is_win IS 'Counted in performance_metrics.winning_trades.';
COMMENT ON COLUMN analytics.applied_trades.trade_date IS 'performance_metrics.date it was counted on (executed_at in the exchange time zone).';
COMMENT ON COLUMN analytics.applied_trades.source IS '''event'' (a trade_executed event) or ''row'' (reconcile, from execution.trades); NULL before V21.';


-- What the aggregates held that the ledger's contributions do not explain: their state at this
-- migration, plus whatever retention has retired since. verify expects, per key,
-- baseline + sum(ledger contributions) = aggregate.
CREATE TABLE analytics.ledger_baseline_portfolio (
    account_id    VARCHAR(50)     NOT NULL,
    symbol        VARCHAR(20)     NOT NULL,
    trade_count   BIGINT          NOT NULL,
    net_quantity  NUMERIC(20,4)   NOT NULL,
    total_value   NUMERIC(20,4)   NOT NULL,
    realized_pnl  NUMERIC(20,4)   NOT NULL,
    commission    NUMERIC(20,4)   NOT NULL,
    CONSTRAINT ledger_baseline_portfolio_pkey PRIMARY KEY (account_id, symbol)
);

CREATE TABLE analytics.ledger_baseline_metrics (
    strategy        VARCHAR(100)   NOT NULL,
    date            DATE           NOT NULL,
    total_trades    BIGINT         NOT NULL,
    winning_trades  BIGINT         NOT NULL,
    realized_pnl    NUMERIC(20,4)  NOT NULL,
    volume          NUMERIC(20,4)  NOT NULL,
    notional        NUMERIC(20,4)  NOT NULL,
    commission      NUMERIC(20,4)  NOT NULL,
    CONSTRAINT ledger_baseline_metrics_pkey PRIMARY KEY (strategy, date)
);

COMMENT ON TABLE analytics.ledger_baseline_portfolio IS
    'Per (account, symbol): trade sums carried forward — the aggregates as they stood at V21, plus ledger contributions retired by retention since. Written by migrations and maintenance only.';
COMMENT ON TABLE analytics.ledger_baseline_metrics IS
    'Per (strategy, date): trade sums carried forward — as ledger_baseline_portfolio, for performance_metrics.';

LOCK TABLE analytics.applied_trades, analytics.portfolio_summary, analytics.performance_metrics
    IN SHARE MODE;

INSERT INTO analytics.ledger_baseline_portfolio
SELECT account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, commission
  FROM analytics.portfolio_summary
 WHERE trade_count <> 0 OR net_quantity <> 0 OR total_value <> 0 OR realized_pnl <> 0 OR commission <> 0;

INSERT INTO analytics.ledger_baseline_metrics
SELECT strategy, date, total_trades, winning_trades, realized_pnl, volume, notional, commission
  FROM analytics.performance_metrics;


-- How far back retention has retired ledger rows: a row goes once both its applied_at and its
-- executed_at are older than the cutoff, and retention raises this watermark in the transaction
-- that deletes. Reconcile refuses trades executed before max(watermark, configured horizon) plus a
-- day's margin (a trade's executed_at in its row and in its event may differ slightly), reading it
-- FOR SHARE in each chunk's transaction, so a retention run between two chunks cannot make a
-- retired trade look missing. Kept in the database, not taken from the configuration: a command
-- run from a shell, or a lowered or disabled retention, still knows what was retired.
CREATE TABLE analytics.ledger_retention (
    singleton        BOOLEAN       PRIMARY KEY DEFAULT true CHECK (singleton),
    retired_through  TIMESTAMPTZ   NOT NULL DEFAULT '-infinity'
);
INSERT INTO analytics.ledger_retention DEFAULT VALUES;
COMMENT ON TABLE analytics.ledger_retention IS
    'One row: ledger rows executed and applied before retired_through may have been retired (folded into the baseline).';


CREATE TABLE analytics.reconcile_runs (
    id                   BIGSERIAL     PRIMARY KEY,
    started_at           TIMESTAMPTZ   NOT NULL,
    finished_at          TIMESTAMPTZ   NOT NULL DEFAULT clock_timestamp(),
    -- 'start', 'resubscribed', 'interval' (the daemon) or 'command' (trading-sync reconcile).
    trigger              TEXT          NOT NULL,
    instance             TEXT          NOT NULL,
    since                TIMESTAMPTZ,
    trades_applied       BIGINT        NOT NULL,
    trades_present       BIGINT        NOT NULL,
    trades_unusable      BIGINT        NOT NULL,
    positions_refreshed  BIGINT        NOT NULL,
    rows_priced          BIGINT        NOT NULL
);

CREATE INDEX idx_reconcile_runs_started_at ON analytics.reconcile_runs (started_at);

COMMENT ON TABLE analytics.reconcile_runs IS
    'One row per committed reconcile run (dry runs leave none); the daemon skips a scheduled run when another instance ran within the interval. Kept 30 days.';


GRANT USAGE ON SCHEMA execution TO trading_sync;
GRANT SELECT ON execution.trades, execution.orders, execution.positions TO trading_sync;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    analytics.trade_changes,
    analytics.ledger_baseline_portfolio,
    analytics.ledger_baseline_metrics,
    analytics.reconcile_runs
TO trading_sync;
GRANT SELECT, UPDATE ON analytics.ledger_retention TO trading_sync;
GRANT USAGE ON SEQUENCE analytics.trade_changes_id_seq, analytics.reconcile_runs_id_seq TO trading_sync;

-- `run` reads the migration history at start (it refuses a schema older than the binary), and a
-- login in trading_sync could not: its start failed with "error getting applied migrations".
GRANT SELECT ON public.refinery_schema_history TO trading_sync;
