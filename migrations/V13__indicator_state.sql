-- V13: analytics.indicator_state — the persisted state of the incremental indicator job.
--
-- Not in the seed. The seed's indicator job recomputes from a window of recent bars, which cannot
-- reproduce EMAs and Wilder averages that depend on the whole history (PITFALLS.md: a window-based
-- pipeline gets ema_50 wrong in the 4th decimal for 43% of symbols). INDICATORS.md requires the daily
-- run to equal a full recomputation bit for bit, so the state is stored losslessly: float8 only,
-- never NUMERIC (which would round the f64 values). It is written in the same transaction as the
-- indicator rows it produced.
--
-- The job must compare spec_version with its own and recompute the symbol from its first bar when they
-- differ; first_date / last_date / bars_consumed / close_dates / closes let it detect revised history
-- cheaply (INDICATORS.md, "Revisions").

CREATE TABLE analytics.indicator_state (
    symbol         VARCHAR(20)   PRIMARY KEY
                   REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    spec_version   INTEGER       NOT NULL,
    first_date     DATE          NOT NULL,
    last_date      DATE          NOT NULL,
    bars_consumed  BIGINT        NOT NULL,
    closes         float8[]      NOT NULL,
    close_dates    date[]        NOT NULL,
    volumes        bigint[]      NOT NULL,
    ema12          float8,
    ema26          float8,
    ema50          float8,
    macd_fast      float8,
    macd_signal    float8,
    macd_seed_sum  float8,
    avg_gain       float8,
    avg_loss       float8,
    prev_close     float8,
    updated_at     TIMESTAMPTZ   NOT NULL DEFAULT now(),

    CONSTRAINT indicator_state_closes_dates_same_length CHECK (cardinality(closes) = cardinality(close_dates)),
    CONSTRAINT indicator_state_closes_max CHECK (cardinality(closes) <= 200),
    CONSTRAINT indicator_state_volumes_max CHECK (cardinality(volumes) <= 20),
    CONSTRAINT indicator_state_no_null_elements CHECK (
        array_position(closes, NULL) IS NULL
        AND array_position(close_dates, NULL) IS NULL
        AND array_position(volumes, NULL) IS NULL),
    CONSTRAINT indicator_state_bars_check CHECK (
        bars_consumed >= cardinality(closes) AND bars_consumed >= cardinality(volumes)),
    CONSTRAINT indicator_state_dates_check CHECK (first_date <= last_date),
    CONSTRAINT indicator_state_spec_version_check CHECK (spec_version >= 1)
);

CREATE TRIGGER trg_indicator_state_updated_at
    BEFORE UPDATE ON analytics.indicator_state
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE analytics.indicator_state IS
    'Per-symbol state of the incremental indicator job (INDICATORS.md). Lossless: float8 only. Cascades with the symbol.';
COMMENT ON COLUMN analytics.indicator_state.symbol IS 'Symbol (FK, cascades with the symbol).';
COMMENT ON COLUMN analytics.indicator_state.spec_version IS 'Version of the indicator definitions that produced this state; a mismatch forces a full recompute.';
COMMENT ON COLUMN analytics.indicator_state.first_date IS 'Date of the first valid bar consumed.';
COMMENT ON COLUMN analytics.indicator_state.last_date IS 'Date of the last valid bar consumed.';
COMMENT ON COLUMN analytics.indicator_state.bars_consumed IS 'Number of valid bars folded into the state (i of the next bar).';
COMMENT ON COLUMN analytics.indicator_state.closes IS 'Last <= 200 closes, oldest first.';
COMMENT ON COLUMN analytics.indicator_state.close_dates IS 'Bar dates of closes, element for element (same length).';
COMMENT ON COLUMN analytics.indicator_state.volumes IS 'Last <= 20 volumes, oldest first.';
COMMENT ON COLUMN analytics.indicator_state.ema12 IS 'EMA(12) after the last bar; NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.ema26 IS 'EMA(26) after the last bar; NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.ema50 IS 'EMA(50) after the last bar; NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.macd_fast IS 'TA-Lib MACD fast EMA(12) (seeded at i = 25); NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.macd_signal IS 'MACD signal EMA(9) (seeded at i = 33); NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.macd_seed_sum IS 'Sum of raw MACD over i = 25.. while the signal is being seeded.';
COMMENT ON COLUMN analytics.indicator_state.avg_gain IS 'Wilder average gain; NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.avg_loss IS 'Wilder average loss; NULL before it is seeded.';
COMMENT ON COLUMN analytics.indicator_state.prev_close IS 'Close of the last valid bar (for the next difference / log return).';
COMMENT ON COLUMN analytics.indicator_state.updated_at IS 'Last modification time (trigger).';
