-- V7: execution.{orders, trades, positions} and their enum types.
--
-- Seed: "Orders Table", "Trades Table", "Positions Table" (section 2) and the indexing strategy
-- (section 3). The execution service owns these tables; trading-sync neither reads nor writes them (it
-- learns about trades and positions from data_sync events). Deviations:
-- * The enum types live in the execution schema (the seed creates them unqualified, i.e. in public).
-- * created_at / updated_at NOT NULL, with the updated_at trigger on orders.
-- * orders: a limit / stop_limit order must carry a price and a stop / stop_limit order a stop_price;
--   the seed checks only that they are positive when present. time_in_force NOT NULL (it has a default).
-- * trades: `side` is added (nullable, for writers that do not send it yet). The seed's trades table
--   has quantity > 0 and no side, so a fill without an order_id cannot be told apart as buy or sell.
--   commission NOT NULL (it has a default, and NULL commission would make sums NULL).
--   trade_type is checked against the seed's own list ('opening', 'closing', 'partial').
--   An index on order_id is added: the FK has none in the seed, so every order delete or key update
--   would scan trades, and "fills of this order" is the commonest join.
-- * positions: the seed's idx_positions_account_id is not created (account_id leads the
--   UNIQUE (account_id, symbol) index). last_updated is kept as the seed's business timestamp (the time
--   the execution service says the position is as of); updated_at is added as the row-change time
--   maintained by the trigger, like every other table. avg_price must be >= 0.
-- * The seed's CHECK constraint names (positive_quantity, ...) are kept; they are per table in
--   PostgreSQL, so orders and trades can both have one.

CREATE TYPE execution.order_side    AS ENUM ('buy', 'sell');
CREATE TYPE execution.order_type    AS ENUM ('market', 'limit', 'stop', 'stop_limit');
CREATE TYPE execution.order_status  AS ENUM ('pending', 'submitted', 'filled', 'partially_filled', 'cancelled', 'rejected');
CREATE TYPE execution.time_in_force AS ENUM ('day', 'gtc', 'ioc', 'fok');

CREATE TABLE execution.orders (
    id             BIGSERIAL                PRIMARY KEY,
    order_id       VARCHAR(100)             NOT NULL UNIQUE,
    account_id     VARCHAR(50)              NOT NULL,
    symbol         VARCHAR(20)              NOT NULL,
    side           execution.order_side     NOT NULL,
    order_type     execution.order_type     NOT NULL,
    quantity       NUMERIC(15,4)            NOT NULL,
    price          NUMERIC(15,4),
    stop_price     NUMERIC(15,4),
    time_in_force  execution.time_in_force  NOT NULL DEFAULT 'day',
    status         execution.order_status   NOT NULL DEFAULT 'pending',
    strategy       VARCHAR(100),
    session_id     VARCHAR(100),
    created_at     TIMESTAMPTZ              NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ              NOT NULL DEFAULT now(),

    CONSTRAINT positive_quantity CHECK (quantity > 0),
    CONSTRAINT valid_price CHECK (price IS NULL OR price > 0),
    CONSTRAINT valid_stop_price CHECK (stop_price IS NULL OR stop_price > 0),
    CONSTRAINT limit_order_has_price CHECK (order_type NOT IN ('limit', 'stop_limit') OR price IS NOT NULL),
    CONSTRAINT stop_order_has_stop_price CHECK (order_type NOT IN ('stop', 'stop_limit') OR stop_price IS NOT NULL)
);

CREATE INDEX idx_orders_symbol_status ON execution.orders (symbol, status);
CREATE INDEX idx_orders_strategy ON execution.orders (strategy);
CREATE INDEX idx_orders_created_at ON execution.orders (created_at DESC);
CREATE INDEX idx_orders_account_id ON execution.orders (account_id);

CREATE TRIGGER trg_orders_updated_at
    BEFORE UPDATE ON execution.orders
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE execution.orders IS 'Orders submitted by strategies; one row per order, status updated in place.';


CREATE TABLE execution.trades (
    id               BIGSERIAL             PRIMARY KEY,
    trade_id         VARCHAR(100)          NOT NULL UNIQUE,
    order_id         VARCHAR(100)          REFERENCES execution.orders (order_id),
    account_id       VARCHAR(50)           NOT NULL,
    symbol           VARCHAR(20)           NOT NULL,
    side             execution.order_side,
    quantity         NUMERIC(15,4)         NOT NULL,
    price            NUMERIC(15,4)         NOT NULL,
    commission       NUMERIC(10,4)         NOT NULL DEFAULT 0,
    executed_at      TIMESTAMPTZ           NOT NULL,
    settlement_date  DATE,
    strategy         VARCHAR(100),
    trade_type       VARCHAR(20),
    created_at       TIMESTAMPTZ           NOT NULL DEFAULT now(),

    CONSTRAINT positive_quantity CHECK (quantity > 0),
    CONSTRAINT positive_price CHECK (price > 0),
    CONSTRAINT non_negative_commission CHECK (commission >= 0),
    CONSTRAINT valid_trade_type CHECK (trade_type IN ('opening', 'closing', 'partial'))
);

CREATE INDEX idx_trades_symbol_executed_at ON execution.trades (symbol, executed_at DESC);
CREATE INDEX idx_trades_strategy ON execution.trades (strategy);
CREATE INDEX idx_trades_account_id ON execution.trades (account_id);
CREATE INDEX idx_trades_order_id ON execution.trades (order_id);

COMMENT ON TABLE execution.trades IS 'Executions (fills). Immutable once written, hence no updated_at.';
COMMENT ON COLUMN execution.trades.side IS 'buy / sell. Not in the seed; nullable until every writer sends it.';
COMMENT ON COLUMN execution.trades.trade_type IS 'opening, closing or partial (seed''s values).';


CREATE TABLE execution.positions (
    id              BIGSERIAL       PRIMARY KEY,
    account_id      VARCHAR(50)     NOT NULL,
    symbol          VARCHAR(20)     NOT NULL,
    quantity        NUMERIC(15,4)   NOT NULL,
    avg_price       NUMERIC(15,4)   NOT NULL,
    market_value    NUMERIC(15,4),
    unrealized_pnl  NUMERIC(15,4),
    realized_pnl    NUMERIC(15,4)   NOT NULL DEFAULT 0,
    last_updated    TIMESTAMPTZ     NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ     NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ     NOT NULL DEFAULT now(),

    CONSTRAINT unique_account_symbol UNIQUE (account_id, symbol),
    CONSTRAINT non_negative_quantity CHECK (quantity >= 0),
    CONSTRAINT non_negative_avg_price CHECK (avg_price >= 0)
);

CREATE INDEX idx_positions_symbol ON execution.positions (symbol);
CREATE INDEX idx_positions_last_updated ON execution.positions (last_updated DESC);

CREATE TRIGGER trg_positions_updated_at
    BEFORE UPDATE ON execution.positions
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE execution.positions IS 'Current position per (account, symbol), long-only (quantity >= 0) as in the seed.';
COMMENT ON COLUMN execution.positions.last_updated IS 'Business time the position is as of (set by the execution service).';
COMMENT ON COLUMN execution.positions.updated_at IS 'Row modification time (trigger).';
