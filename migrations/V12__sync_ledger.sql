-- V12: analytics.applied_trades (the exactly-once ledger) and analytics.dead_letters.
--
-- Not in the seed: they exist because its DataSynchronizer double-counts redelivered trades and
-- drops (or crashes on) bad messages. See EVENTS.md.

-- A trade's deltas go into portfolio_summary / performance_metrics in the same transaction that
-- inserts its trade_id here; INSERT ... ON CONFLICT (trade_id) DO NOTHING RETURNING tells the daemon
-- whether the trade is new. Rows may be deleted by retention (by applied_at) once redelivery of that
-- trade is no longer possible; after that a replay of it would be counted again.
CREATE TABLE analytics.applied_trades (
    trade_id     VARCHAR(100)   PRIMARY KEY,
    account_id   VARCHAR(50)    NOT NULL,
    symbol       VARCHAR(20)    NOT NULL,
    strategy     VARCHAR(100),
    executed_at  TIMESTAMPTZ    NOT NULL,
    applied_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT applied_trades_trade_id_not_blank CHECK (trade_id <> '')
);

CREATE INDEX idx_applied_trades_applied_at ON analytics.applied_trades (applied_at);

COMMENT ON TABLE analytics.applied_trades IS
    'Trades whose deltas are in portfolio_summary/performance_metrics, one row per trade_id (exactly-once ledger). Append-only.';
COMMENT ON COLUMN analytics.applied_trades.trade_id IS 'Idempotency key from the trade_executed event.';
COMMENT ON COLUMN analytics.applied_trades.account_id IS 'Account the deltas went to (for audits and repairs).';
COMMENT ON COLUMN analytics.applied_trades.symbol IS 'Symbol the deltas went to.';
COMMENT ON COLUMN analytics.applied_trades.strategy IS 'Strategy the deltas went to; NULL if the event had none.';
COMMENT ON COLUMN analytics.applied_trades.executed_at IS 'Execution time of the trade (event executed_at, or envelope timestamp).';
COMMENT ON COLUMN analytics.applied_trades.applied_at IS 'When trading-sync applied it; retention deletes by this.';


-- Every message that could not be applied, kept as received so it can be inspected and replayed.
-- payload is BYTEA, not TEXT or JSONB: the message may not be valid UTF-8 or JSON at all, and TEXT
-- would refuse it (the dead letter itself would then fail).
CREATE TABLE analytics.dead_letters (
    id              BIGSERIAL     PRIMARY KEY,
    received_at     TIMESTAMPTZ   NOT NULL DEFAULT now(),
    channel         TEXT          NOT NULL,
    payload         BYTEA         NOT NULL,
    error           TEXT          NOT NULL,
    event_type      TEXT,
    trade_id        TEXT,
    stream_id       TEXT,
    delivery_count  INTEGER,

    CONSTRAINT dead_letters_delivery_count_check CHECK (delivery_count >= 0)
);

CREATE INDEX idx_dead_letters_received_at ON analytics.dead_letters (received_at);

COMMENT ON TABLE analytics.dead_letters IS 'Messages trading-sync could not apply, with the raw payload. Append-only; retention deletes by received_at.';
COMMENT ON COLUMN analytics.dead_letters.id IS 'Surrogate key.';
COMMENT ON COLUMN analytics.dead_letters.received_at IS 'When the message was dead-lettered.';
COMMENT ON COLUMN analytics.dead_letters.channel IS 'Pub/sub channel or stream key it arrived on.';
COMMENT ON COLUMN analytics.dead_letters.payload IS 'Raw bytes as received (may be non-UTF-8 or not JSON).';
COMMENT ON COLUMN analytics.dead_letters.error IS 'Why it could not be applied.';
COMMENT ON COLUMN analytics.dead_letters.event_type IS 'Envelope type, if it could be read.';
COMMENT ON COLUMN analytics.dead_letters.trade_id IS 'data.trade_id, if it could be read.';
COMMENT ON COLUMN analytics.dead_letters.stream_id IS 'Redis stream entry id when it came from a stream; NULL for pub/sub.';
COMMENT ON COLUMN analytics.dead_letters.delivery_count IS 'Stream delivery count at dead-lettering, if from a stream.';
