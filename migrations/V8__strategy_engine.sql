-- V8: strategy_engine.{strategies, strategy_signals, strategy_performance}.
--
-- The seed only names these tables ("Strategy: strategies, strategy_signals, strategy_performance");
-- the design is ours. Elsewhere the seed identifies a strategy by name (orders.strategy,
-- trades.strategy, performance_metrics.strategy are VARCHAR(100)), so strategies.name is that
-- VARCHAR(100) and is unique. Those columns get no FK to it: orders and trades must not be refused
-- because a strategy row is missing, and trading-sync must count every trade it is sent.
--
-- strategy_performance is the strategy engine's own daily record (returns, drawdown, Sharpe — from its
-- book or a backtest); analytics.performance_metrics (V11) is trading-sync's trade-count aggregate.

CREATE TABLE strategy_engine.strategies (
    id             SERIAL         PRIMARY KEY,
    name           VARCHAR(100)   NOT NULL UNIQUE,
    description    TEXT,
    strategy_type  VARCHAR(50),
    parameters     JSONB          NOT NULL DEFAULT '{}'::jsonb,
    is_active      BOOLEAN        NOT NULL DEFAULT false,
    version        INTEGER        NOT NULL DEFAULT 1,
    created_at     TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT strategies_name_not_blank CHECK (btrim(name) <> ''),
    CONSTRAINT strategies_parameters_object CHECK (jsonb_typeof(parameters) = 'object'),
    CONSTRAINT strategies_version_positive CHECK (version >= 1)
);

CREATE INDEX idx_strategies_active ON strategy_engine.strategies (name) WHERE is_active;

CREATE TRIGGER trg_strategies_updated_at
    BEFORE UPDATE ON strategy_engine.strategies
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE strategy_engine.strategies IS 'Strategy definitions. name is the key other schemas store (without FK).';
COMMENT ON COLUMN strategy_engine.strategies.id IS 'Surrogate key, referenced by signals and performance.';
COMMENT ON COLUMN strategy_engine.strategies.name IS 'Unique strategy name, as stored in orders/trades/performance_metrics.strategy.';
COMMENT ON COLUMN strategy_engine.strategies.description IS 'What the strategy does.';
COMMENT ON COLUMN strategy_engine.strategies.strategy_type IS 'Family (momentum, mean_reversion, ...), free text.';
COMMENT ON COLUMN strategy_engine.strategies.parameters IS 'Parameter set (JSON object).';
COMMENT ON COLUMN strategy_engine.strategies.is_active IS 'Whether the strategy is live. New strategies start inactive.';
COMMENT ON COLUMN strategy_engine.strategies.version IS 'Incremented by the strategy engine when parameters change.';
COMMENT ON COLUMN strategy_engine.strategies.created_at IS 'Row creation time.';
COMMENT ON COLUMN strategy_engine.strategies.updated_at IS 'Last modification time (trigger).';


CREATE TABLE strategy_engine.strategy_signals (
    id            BIGSERIAL      PRIMARY KEY,
    strategy_id   INTEGER        NOT NULL
                  REFERENCES strategy_engine.strategies (id) ON DELETE CASCADE,
    symbol        VARCHAR(20)    NOT NULL,
    signal_type   VARCHAR(10)    NOT NULL,
    strength      NUMERIC(5,4),
    price         NUMERIC(15,4),
    quantity      NUMERIC(15,4),
    generated_at  TIMESTAMPTZ    NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ,
    status        VARCHAR(20)    NOT NULL DEFAULT 'new',
    order_id      VARCHAR(100)
                  REFERENCES execution.orders (order_id) ON DELETE SET NULL,
    metadata      JSONB,
    created_at    TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT strategy_signals_type_check CHECK (signal_type IN ('buy', 'sell', 'hold', 'exit')),
    CONSTRAINT strategy_signals_strength_check CHECK (strength BETWEEN 0 AND 1),
    CONSTRAINT strategy_signals_price_check CHECK (price > 0),
    CONSTRAINT strategy_signals_quantity_check CHECK (quantity > 0),
    CONSTRAINT strategy_signals_expiry_check CHECK (expires_at > generated_at),
    CONSTRAINT strategy_signals_status_check CHECK (status IN ('new', 'acted', 'expired', 'rejected', 'cancelled')),
    CONSTRAINT strategy_signals_acted_has_order CHECK (status <> 'acted' OR order_id IS NOT NULL),
    CONSTRAINT strategy_signals_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

CREATE INDEX idx_strategy_signals_strategy_generated ON strategy_engine.strategy_signals (strategy_id, generated_at DESC);
CREATE INDEX idx_strategy_signals_symbol_generated ON strategy_engine.strategy_signals (symbol, generated_at DESC);
-- FK index (ON DELETE SET NULL from orders) and signal -> order lookups.
CREATE INDEX idx_strategy_signals_order_id ON strategy_engine.strategy_signals (order_id) WHERE order_id IS NOT NULL;
-- The order router polls for signals not yet acted on.
CREATE INDEX idx_strategy_signals_new ON strategy_engine.strategy_signals (generated_at) WHERE status = 'new';

CREATE TRIGGER trg_strategy_signals_updated_at
    BEFORE UPDATE ON strategy_engine.strategy_signals
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE strategy_engine.strategy_signals IS 'Signals emitted by strategies and what became of them.';
COMMENT ON COLUMN strategy_engine.strategy_signals.id IS 'Surrogate key.';
COMMENT ON COLUMN strategy_engine.strategy_signals.strategy_id IS 'Emitting strategy (cascades with it).';
COMMENT ON COLUMN strategy_engine.strategy_signals.symbol IS 'Instrument the signal is about.';
COMMENT ON COLUMN strategy_engine.strategy_signals.signal_type IS 'buy, sell, hold, exit.';
COMMENT ON COLUMN strategy_engine.strategy_signals.strength IS 'Confidence in [0, 1], if the strategy provides one.';
COMMENT ON COLUMN strategy_engine.strategy_signals.price IS 'Reference / suggested price, if any.';
COMMENT ON COLUMN strategy_engine.strategy_signals.quantity IS 'Suggested quantity, if any.';
COMMENT ON COLUMN strategy_engine.strategy_signals.generated_at IS 'When the signal was generated.';
COMMENT ON COLUMN strategy_engine.strategy_signals.expires_at IS 'After this the signal must not be acted on.';
COMMENT ON COLUMN strategy_engine.strategy_signals.status IS 'new, acted (order_id set), expired, rejected (e.g. by risk), cancelled.';
COMMENT ON COLUMN strategy_engine.strategy_signals.order_id IS 'Order placed for this signal; set NULL if the order row is deleted.';
COMMENT ON COLUMN strategy_engine.strategy_signals.metadata IS 'Indicator values etc. behind the signal (JSON object).';
COMMENT ON COLUMN strategy_engine.strategy_signals.created_at IS 'Row creation time.';
COMMENT ON COLUMN strategy_engine.strategy_signals.updated_at IS 'Last modification time (trigger).';


CREATE TABLE strategy_engine.strategy_performance (
    strategy_id      INTEGER        NOT NULL
                     REFERENCES strategy_engine.strategies (id) ON DELETE CASCADE,
    date             DATE           NOT NULL,
    daily_return     NUMERIC(12,6),
    total_return     NUMERIC(12,6),
    sharpe_ratio     NUMERIC(10,4),
    sortino_ratio    NUMERIC(10,4),
    max_drawdown     NUMERIC(12,6),
    volatility       NUMERIC(12,6),
    total_trades     INTEGER        NOT NULL DEFAULT 0,
    winning_trades   INTEGER        NOT NULL DEFAULT 0,
    realized_pnl     NUMERIC(20,4)  NOT NULL DEFAULT 0,
    unrealized_pnl   NUMERIC(20,4),
    equity           NUMERIC(20,4),
    is_backtest      BOOLEAN        NOT NULL DEFAULT false,
    created_at       TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT strategy_performance_pkey PRIMARY KEY (strategy_id, date, is_backtest),
    CONSTRAINT strategy_performance_trades_check CHECK (total_trades >= 0 AND winning_trades BETWEEN 0 AND total_trades),
    CONSTRAINT strategy_performance_drawdown_check CHECK (max_drawdown BETWEEN 0 AND 1),
    CONSTRAINT strategy_performance_volatility_check CHECK (volatility >= 0)
);

CREATE INDEX idx_strategy_performance_date ON strategy_engine.strategy_performance (date);

CREATE TRIGGER trg_strategy_performance_updated_at
    BEFORE UPDATE ON strategy_engine.strategy_performance
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE strategy_engine.strategy_performance IS
    'Daily performance of a strategy as the strategy engine measures it (live and backtest kept apart).';
COMMENT ON COLUMN strategy_engine.strategy_performance.strategy_id IS 'Strategy (cascades with it).';
COMMENT ON COLUMN strategy_engine.strategy_performance.date IS 'Trading date.';
COMMENT ON COLUMN strategy_engine.strategy_performance.daily_return IS 'Return of the day as a fraction (0.01 = 1%).';
COMMENT ON COLUMN strategy_engine.strategy_performance.total_return IS 'Cumulative return since inception as a fraction.';
COMMENT ON COLUMN strategy_engine.strategy_performance.sharpe_ratio IS 'Annualised Sharpe ratio to date.';
COMMENT ON COLUMN strategy_engine.strategy_performance.sortino_ratio IS 'Annualised Sortino ratio to date.';
COMMENT ON COLUMN strategy_engine.strategy_performance.max_drawdown IS 'Maximum drawdown to date as a positive fraction in [0, 1].';
COMMENT ON COLUMN strategy_engine.strategy_performance.volatility IS 'Annualised volatility of daily returns as a fraction.';
COMMENT ON COLUMN strategy_engine.strategy_performance.total_trades IS 'Trades closed on the day.';
COMMENT ON COLUMN strategy_engine.strategy_performance.winning_trades IS 'Of those, trades with positive P&L.';
COMMENT ON COLUMN strategy_engine.strategy_performance.realized_pnl IS 'Realized P&L of the day.';
COMMENT ON COLUMN strategy_engine.strategy_performance.unrealized_pnl IS 'Unrealized P&L at end of day.';
COMMENT ON COLUMN strategy_engine.strategy_performance.equity IS 'Strategy equity at end of day.';
COMMENT ON COLUMN strategy_engine.strategy_performance.is_backtest IS 'true for backtest results, false for live trading.';
COMMENT ON COLUMN strategy_engine.strategy_performance.created_at IS 'Row creation time.';
COMMENT ON COLUMN strategy_engine.strategy_performance.updated_at IS 'Last modification time (trigger).';
