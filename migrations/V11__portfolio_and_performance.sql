-- V11: analytics.portfolio_summary and analytics.performance_metrics — the aggregates trading-sync
-- maintains from data_sync events (EVENTS.md).
--
-- The seed only names these tables; their shape follows from its DataSynchronizer.sync_trade_data
-- (section 5), which upserts portfolio_summary ON CONFLICT (account_id, symbol) and
-- performance_metrics ON CONFLICT (strategy, date) — so those are the primary keys here. Deviations
-- from what that code implies, and why:
-- * Exactly-once: the seed adds every received trade's deltas, so a redelivered or replayed event is
--   counted twice. Here the deltas of a trade are applied in the same transaction that inserts its
--   trade_id into analytics.applied_trades (V12); a trade already there changes nothing.
-- * performance_metrics keeps integer counts (total_trades, winning_trades) and DERIVES win_rate from
--   them as a generated column. The seed maintains win_rate as a running average,
--   (win_rate * total_trades + x) / (total_trades + 1): rounded at every step, wrong as soon as one
--   event is replayed, lost or applied concurrently, and impossible to repair without the history.
--   Integer counts are exact and commutative, so order and batching do not matter.
-- * The seed's last_updated column is called updated_at and maintained by the shared trigger.
-- * Money and aggregate columns are NUMERIC(20,4): sums over a whole trading history outgrow the
--   per-trade NUMERIC(15,4) of execution.trades. Bounded precision also keeps every value decodable
--   by rust_decimal (PITFALLS.md: unbounded NUMERIC with > 28 fractional digits decodes as 0).
-- * No FK from symbol / strategy to the master tables: an event for a symbol or strategy missing from
--   them must still be counted, not dead-lettered.

CREATE TABLE analytics.portfolio_summary (
    account_id             VARCHAR(50)    NOT NULL,
    symbol                 VARCHAR(20)    NOT NULL,

    -- Trade deltas: each trade summed exactly once (guarded by analytics.applied_trades).
    trade_count            BIGINT         NOT NULL DEFAULT 0,
    net_quantity           NUMERIC(20,4)  NOT NULL DEFAULT 0,
    total_value            NUMERIC(20,4)  NOT NULL DEFAULT 0,
    realized_pnl           NUMERIC(20,4)  NOT NULL DEFAULT 0,
    commission             NUMERIC(20,4)  NOT NULL DEFAULT 0,
    last_trade_at          TIMESTAMPTZ,

    -- Position snapshot: last writer by as_of wins.
    quantity               NUMERIC(15,4),
    avg_price              NUMERIC(15,4),
    position_realized_pnl  NUMERIC(20,4),
    -- What the position event itself reported; used only until a bar gives us a price.
    reported_market_value   NUMERIC(20,4),
    reported_unrealized_pnl NUMERIC(20,4),
    position_as_of         TIMESTAMPTZ,

    -- Mark to market from market_data_updated events.
    last_price             NUMERIC(15,4),
    last_price_at          TIMESTAMPTZ,
    -- Generated, so that a new price, a new snapshot or a new trade can never leave them stale:
    -- every writer sets only the inputs. The position is the snapshot's quantity/avg_price when
    -- one was received; otherwise it is derived from the trades: value = net_quantity x price and
    -- unrealized = value - net invested (total_value) - realized_pnl.
    market_value           NUMERIC(20,4) GENERATED ALWAYS AS (
                               COALESCE(COALESCE(quantity, net_quantity) * last_price,
                                        reported_market_value)) STORED,
    unrealized_pnl         NUMERIC(20,4) GENERATED ALWAYS AS (
                               CASE
                                   WHEN last_price IS NULL THEN reported_unrealized_pnl
                                   WHEN quantity IS NOT NULL AND avg_price IS NOT NULL
                                       THEN (last_price - avg_price) * quantity
                                   ELSE net_quantity * last_price - total_value - realized_pnl
                               END) STORED,

    created_at             TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT portfolio_summary_pkey PRIMARY KEY (account_id, symbol),
    CONSTRAINT portfolio_summary_trade_count_check CHECK (trade_count >= 0),
    CONSTRAINT portfolio_summary_commission_check CHECK (commission >= 0),
    CONSTRAINT portfolio_summary_quantity_check CHECK (quantity >= 0),
    CONSTRAINT portfolio_summary_avg_price_check CHECK (avg_price >= 0),
    CONSTRAINT portfolio_summary_last_price_check CHECK (last_price > 0)
);

-- Mark-to-market updates every row of one symbol (all accounts holding it).
CREATE INDEX idx_portfolio_summary_symbol ON analytics.portfolio_summary (symbol);

CREATE TRIGGER trg_portfolio_summary_updated_at
    BEFORE UPDATE ON analytics.portfolio_summary
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE analytics.portfolio_summary IS
    'One row per (account_id, symbol). Written ONLY by trading-sync: trade deltas (exactly once per trade_id), '
    'position snapshots (latest as_of wins) and mark to market.';
COMMENT ON COLUMN analytics.portfolio_summary.account_id IS 'Account.';
COMMENT ON COLUMN analytics.portfolio_summary.symbol IS 'Symbol (no FK: trades of unknown symbols are still counted).';
COMMENT ON COLUMN analytics.portfolio_summary.trade_count IS 'Number of distinct trades applied.';
COMMENT ON COLUMN analytics.portfolio_summary.net_quantity IS 'Sum of traded quantity, signed: buys +, sells -.';
COMMENT ON COLUMN analytics.portfolio_summary.total_value IS 'Sum of trade total_value (quantity x price when absent), negative for sells.';
COMMENT ON COLUMN analytics.portfolio_summary.realized_pnl IS 'Sum of the trades'' realized_pnl.';
COMMENT ON COLUMN analytics.portfolio_summary.commission IS 'Sum of the trades'' commission (>= 0).';
COMMENT ON COLUMN analytics.portfolio_summary.last_trade_at IS 'Latest executed_at among applied trades.';
COMMENT ON COLUMN analytics.portfolio_summary.quantity IS 'Position quantity from the latest position_updated event (>= 0).';
COMMENT ON COLUMN analytics.portfolio_summary.avg_price IS 'Position average price from the latest position_updated event.';
COMMENT ON COLUMN analytics.portfolio_summary.position_realized_pnl IS 'Realized P&L as reported by the latest position_updated event.';
COMMENT ON COLUMN analytics.portfolio_summary.position_as_of IS 'as_of of the stored position snapshot; older snapshots are ignored.';
COMMENT ON COLUMN analytics.portfolio_summary.last_price IS 'Close of the latest bar used for mark to market.';
COMMENT ON COLUMN analytics.portfolio_summary.last_price_at IS 'Bar time of last_price; older bars are ignored.';
COMMENT ON COLUMN analytics.portfolio_summary.reported_market_value IS 'market_value as sent by the latest position_updated event; shown in market_value until a bar arrives.';
COMMENT ON COLUMN analytics.portfolio_summary.reported_unrealized_pnl IS 'unrealized_pnl as sent by the latest position_updated event; shown in unrealized_pnl until a bar arrives.';
COMMENT ON COLUMN analytics.portfolio_summary.market_value IS 'Generated: COALESCE(quantity, net_quantity) x last_price; reported_market_value while no price is known.';
COMMENT ON COLUMN analytics.portfolio_summary.unrealized_pnl IS 'Generated: (last_price - avg_price) x quantity with a snapshot, else net_quantity x last_price - total_value - realized_pnl; reported_unrealized_pnl while no price is known.';
COMMENT ON COLUMN analytics.portfolio_summary.created_at IS 'Row creation time.';
COMMENT ON COLUMN analytics.portfolio_summary.updated_at IS 'Last modification time (trigger).';


CREATE TABLE analytics.performance_metrics (
    strategy        VARCHAR(100)   NOT NULL,
    date            DATE           NOT NULL,
    total_trades    BIGINT         NOT NULL DEFAULT 0,
    winning_trades  BIGINT         NOT NULL DEFAULT 0,
    win_rate        NUMERIC(7,6)   GENERATED ALWAYS AS (
                        CASE WHEN total_trades > 0
                             THEN round(winning_trades::numeric / total_trades, 6)
                        END) STORED,
    realized_pnl    NUMERIC(20,4)  NOT NULL DEFAULT 0,
    volume          NUMERIC(20,4)  NOT NULL DEFAULT 0,
    notional        NUMERIC(20,4)  NOT NULL DEFAULT 0,
    commission      NUMERIC(20,4)  NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT performance_metrics_pkey PRIMARY KEY (strategy, date),
    CONSTRAINT performance_metrics_trade_counts_check CHECK (0 <= winning_trades AND winning_trades <= total_trades),
    CONSTRAINT performance_metrics_non_negative CHECK (volume >= 0 AND notional >= 0 AND commission >= 0)
);

-- "All strategies on day D" (the primary key serves per-strategy history).
CREATE INDEX idx_performance_metrics_date ON analytics.performance_metrics (date);

CREATE TRIGGER trg_performance_metrics_updated_at
    BEFORE UPDATE ON analytics.performance_metrics
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE analytics.performance_metrics IS
    'Per strategy and trading date (executed_at in the exchange time zone): trade counts and sums. Written ONLY by trading-sync.';
COMMENT ON COLUMN analytics.performance_metrics.strategy IS 'Strategy name as sent in the trade event (no FK).';
COMMENT ON COLUMN analytics.performance_metrics.date IS 'Trading date of executed_at in the configured exchange time zone.';
COMMENT ON COLUMN analytics.performance_metrics.total_trades IS 'Distinct trades applied.';
COMMENT ON COLUMN analytics.performance_metrics.winning_trades IS 'Of those, winners (event win_rate = 1, or realized_pnl > 0 when absent).';
COMMENT ON COLUMN analytics.performance_metrics.win_rate IS 'Generated: winning_trades / total_trades rounded to 6 places; NULL when there are no trades. Never written.';
COMMENT ON COLUMN analytics.performance_metrics.realized_pnl IS 'Sum of realized_pnl.';
COMMENT ON COLUMN analytics.performance_metrics.volume IS 'Sum of traded quantity (unsigned).';
COMMENT ON COLUMN analytics.performance_metrics.notional IS 'Sum of |total_value|.';
COMMENT ON COLUMN analytics.performance_metrics.commission IS 'Sum of commission.';
COMMENT ON COLUMN analytics.performance_metrics.created_at IS 'Row creation time.';
COMMENT ON COLUMN analytics.performance_metrics.updated_at IS 'Last modification time (trigger).';
