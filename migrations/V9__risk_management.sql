-- V9: risk_management.{risk_limits, risk_events}.
--
-- The seed only names these tables ("Risk: risk_limits, risk_events"; "risk_management: Risk limits,
-- events, position limits"); the design is ours. A limit has a scope (account, symbol, strategy — each
-- NULL meaning "any") and a type; at most one limit per scope and type, enforced with
-- UNIQUE NULLS NOT DISTINCT (PostgreSQL 15+), since with plain UNIQUE two global limits of the same
-- type (all scope columns NULL) would not conflict.

CREATE TABLE risk_management.risk_limits (
    id                 SERIAL          PRIMARY KEY,
    account_id         VARCHAR(50),
    symbol             VARCHAR(20),
    strategy           VARCHAR(100),
    limit_type         VARCHAR(50)     NOT NULL,
    limit_value        NUMERIC(20,4)   NOT NULL,
    warning_threshold  NUMERIC(5,4),
    is_active          BOOLEAN         NOT NULL DEFAULT true,
    description        TEXT,
    created_at         TIMESTAMPTZ     NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ     NOT NULL DEFAULT now(),

    CONSTRAINT risk_limits_scope_type_key UNIQUE NULLS NOT DISTINCT (account_id, symbol, strategy, limit_type),
    CONSTRAINT risk_limits_type_check CHECK (limit_type IN (
        'max_position_quantity', 'max_position_value', 'max_order_quantity', 'max_order_value',
        'max_daily_loss', 'max_drawdown', 'max_leverage', 'max_concentration', 'max_open_orders',
        'max_daily_trades')),
    CONSTRAINT risk_limits_value_check CHECK (limit_value >= 0),
    CONSTRAINT risk_limits_warning_check CHECK (warning_threshold > 0 AND warning_threshold <= 1)
);

CREATE INDEX idx_risk_limits_account ON risk_management.risk_limits (account_id) WHERE is_active;

CREATE TRIGGER trg_risk_limits_updated_at
    BEFORE UPDATE ON risk_management.risk_limits
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE risk_management.risk_limits IS 'Risk limits by scope (account/symbol/strategy, NULL = any) and type.';
COMMENT ON COLUMN risk_management.risk_limits.id IS 'Surrogate key, referenced by risk_events.';
COMMENT ON COLUMN risk_management.risk_limits.account_id IS 'Account the limit applies to; NULL = all accounts.';
COMMENT ON COLUMN risk_management.risk_limits.symbol IS 'Symbol the limit applies to; NULL = all symbols.';
COMMENT ON COLUMN risk_management.risk_limits.strategy IS 'Strategy name the limit applies to; NULL = all strategies.';
COMMENT ON COLUMN risk_management.risk_limits.limit_type IS
    'What is limited. *_quantity in shares, *_value/*_loss in account currency, max_drawdown/max_concentration as fractions, max_leverage as a ratio, max_*_orders/trades as counts.';
COMMENT ON COLUMN risk_management.risk_limits.limit_value IS 'The limit, in the unit limit_type implies; >= 0.';
COMMENT ON COLUMN risk_management.risk_limits.warning_threshold IS 'Fraction of the limit at which a warning event is raised (e.g. 0.8); NULL = no warning.';
COMMENT ON COLUMN risk_management.risk_limits.is_active IS 'Inactive limits are kept for history but not enforced.';
COMMENT ON COLUMN risk_management.risk_limits.description IS 'Why the limit exists.';
COMMENT ON COLUMN risk_management.risk_limits.created_at IS 'Row creation time.';
COMMENT ON COLUMN risk_management.risk_limits.updated_at IS 'Last modification time (trigger).';


CREATE TABLE risk_management.risk_events (
    id              BIGSERIAL       PRIMARY KEY,
    risk_limit_id   INTEGER
                    REFERENCES risk_management.risk_limits (id) ON DELETE SET NULL,
    event_type      VARCHAR(50)     NOT NULL,
    severity        VARCHAR(10)     NOT NULL,
    account_id      VARCHAR(50),
    symbol          VARCHAR(20),
    strategy        VARCHAR(100),
    order_id        VARCHAR(100),
    observed_value  NUMERIC(20,4),
    limit_value     NUMERIC(20,4),
    message         TEXT            NOT NULL,
    action_taken    VARCHAR(30)     NOT NULL DEFAULT 'none',
    details         JSONB,
    occurred_at     TIMESTAMPTZ     NOT NULL DEFAULT now(),
    resolved_at     TIMESTAMPTZ,
    resolved_by     VARCHAR(100),
    created_at      TIMESTAMPTZ     NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ     NOT NULL DEFAULT now(),

    CONSTRAINT risk_events_type_check CHECK (event_type IN ('limit_warning', 'limit_breach', 'order_rejected', 'manual_halt', 'other')),
    CONSTRAINT risk_events_severity_check CHECK (severity IN ('info', 'warning', 'critical')),
    CONSTRAINT risk_events_action_check CHECK (action_taken IN (
        'none', 'alerted', 'order_rejected', 'position_reduced', 'trading_halted')),
    CONSTRAINT risk_events_resolution_check CHECK (resolved_at >= occurred_at),
    CONSTRAINT risk_events_details_object CHECK (jsonb_typeof(details) = 'object')
);

-- No FK on order_id: the risk service records rejections of orders that were never stored.
CREATE INDEX idx_risk_events_occurred_at ON risk_management.risk_events (occurred_at DESC);
CREATE INDEX idx_risk_events_account_occurred_at ON risk_management.risk_events (account_id, occurred_at DESC);
CREATE INDEX idx_risk_events_risk_limit_id ON risk_management.risk_events (risk_limit_id);
CREATE INDEX idx_risk_events_unresolved ON risk_management.risk_events (occurred_at DESC)
    WHERE resolved_at IS NULL AND severity IN ('warning', 'critical');

CREATE TRIGGER trg_risk_events_updated_at
    BEFORE UPDATE ON risk_management.risk_events
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE risk_management.risk_events IS 'Risk warnings, breaches and actions; updated only to resolve them.';
COMMENT ON COLUMN risk_management.risk_events.id IS 'Surrogate key.';
COMMENT ON COLUMN risk_management.risk_events.risk_limit_id IS 'Limit concerned, if any (SET NULL if the limit row is deleted).';
COMMENT ON COLUMN risk_management.risk_events.event_type IS 'limit_warning, limit_breach, order_rejected, manual_halt, other.';
COMMENT ON COLUMN risk_management.risk_events.severity IS 'info, warning, critical.';
COMMENT ON COLUMN risk_management.risk_events.account_id IS 'Account concerned, if any.';
COMMENT ON COLUMN risk_management.risk_events.symbol IS 'Symbol concerned, if any.';
COMMENT ON COLUMN risk_management.risk_events.strategy IS 'Strategy concerned, if any.';
COMMENT ON COLUMN risk_management.risk_events.order_id IS 'Order concerned, if any (no FK: rejected orders may not be stored).';
COMMENT ON COLUMN risk_management.risk_events.observed_value IS 'Measured value that triggered the event.';
COMMENT ON COLUMN risk_management.risk_events.limit_value IS 'Limit in force at the time (copied: the limit may change later).';
COMMENT ON COLUMN risk_management.risk_events.message IS 'Human-readable description.';
COMMENT ON COLUMN risk_management.risk_events.action_taken IS 'none, alerted, order_rejected, position_reduced, trading_halted.';
COMMENT ON COLUMN risk_management.risk_events.details IS 'Structured detail (JSON object).';
COMMENT ON COLUMN risk_management.risk_events.occurred_at IS 'When the condition was detected.';
COMMENT ON COLUMN risk_management.risk_events.resolved_at IS 'When it was resolved / acknowledged; NULL = open.';
COMMENT ON COLUMN risk_management.risk_events.resolved_by IS 'Who or what resolved it.';
COMMENT ON COLUMN risk_management.risk_events.created_at IS 'Row creation time.';
COMMENT ON COLUMN risk_management.risk_events.updated_at IS 'Last modification time (trigger).';
