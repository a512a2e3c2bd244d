-- V10: analytics.technical_indicators_latest and analytics.technical_indicators.
--
-- Seed: "Technical Indicators Tables" (Analytics Schema Tables). Definitions of every column are in
-- INDICATORS.md. Deviations:
-- * volatility_20, price_change_1d, price_change_5d, price_change_30d are NUMERIC(12,2), not the seed's
--   NUMERIC(5,2): (5,2) holds at most 999.99, and a +1,000 % 30-bar move or a volatile penny stock's
--   annualised volatility exceeds that, so one symbol would abort the whole indicator batch with
--   "numeric field overflow". (12,2) holds up to 9,999,999,999.99 %; anything larger is written NULL by
--   the job, with a warning (INDICATORS.md, edge cases).
-- * technical_indicators spells out every indicator column (the seed elides them as "same indicator
--   fields as latest table") with identical types, and gets updated_at (rows are rewritten when Yahoo
--   revises history) with the shared trigger.
-- * Its unique key is named technical_indicators_symbol_date_key instead of the seed's unique_symbol_date
--   (index names are per schema; a generic name invites a clash).
-- * The seed lists "indexes on commonly filtered fields (RSI, SMA, volatility)" without defining them:
--   latest gets (rsi), (sma_50), (volatility_20) for screening; history gets (date) for
--   "all symbols on day D" (per-symbol history is served by the unique (symbol, date) index).
-- * CHECKs: rsi in [0, 100], volatility and widths >= 0, volumes >= 0. Fewer bars than a column needs
--   means NULL, never 0 (INDICATORS.md), so every indicator column is nullable.
-- * updated_at NOT NULL on latest (nullable in the seed).
-- Both tables reference data_ingestion.symbols ON DELETE CASCADE, as in the seed: the indicator job
-- must only write symbols present in data_ingestion.symbols.

CREATE TABLE analytics.technical_indicators_latest (
    symbol           VARCHAR(20)    PRIMARY KEY,
    calculated_date  DATE           NOT NULL,

    -- Moving averages (INDICATORS.md: sma = mean of the last N closes; ema seeded with the SMA)
    sma_20           NUMERIC(15,4),
    sma_50           NUMERIC(15,4),
    sma_200          NUMERIC(15,4),
    ema_12           NUMERIC(15,4),
    ema_26           NUMERIC(15,4),
    ema_50           NUMERIC(15,4),
    -- Momentum
    rsi              NUMERIC(5,2),
    rsi_14           NUMERIC(5,2),
    -- MACD(12, 26, 9), TA-Lib definition (INDICATORS.md)
    macd_line        NUMERIC(15,4),
    macd_signal      NUMERIC(15,4),
    macd_histogram   NUMERIC(15,4),
    -- Bollinger bands (20, 2), population standard deviation
    bb_upper         NUMERIC(15,4),
    bb_middle        NUMERIC(15,4),
    bb_lower         NUMERIC(15,4),
    bb_position      NUMERIC(5,4),
    bb_width         NUMERIC(10,4),
    -- Volatility and price changes: NUMERIC(12,2), widened from the seed's NUMERIC(5,2)
    volatility_20    NUMERIC(12,2),
    price_change_1d  NUMERIC(12,2),
    price_change_5d  NUMERIC(12,2),
    price_change_30d NUMERIC(12,2),
    -- Volume
    avg_volume_20    BIGINT,
    current_volume   BIGINT,

    updated_at       TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT technical_indicators_latest_symbol_fkey FOREIGN KEY (symbol)
        REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    CONSTRAINT technical_indicators_latest_rsi_range CHECK (rsi BETWEEN 0 AND 100 AND rsi_14 BETWEEN 0 AND 100),
    CONSTRAINT technical_indicators_latest_non_negative CHECK (
        volatility_20 >= 0 AND bb_width >= 0 AND avg_volume_20 >= 0 AND current_volume >= 0)
);

-- Screening ("RSI < 30", "close above SMA 50", "volatility below X").
CREATE INDEX idx_technical_indicators_latest_rsi ON analytics.technical_indicators_latest (rsi);
CREATE INDEX idx_technical_indicators_latest_sma_50 ON analytics.technical_indicators_latest (sma_50);
CREATE INDEX idx_technical_indicators_latest_volatility_20 ON analytics.technical_indicators_latest (volatility_20);

CREATE TRIGGER trg_technical_indicators_latest_updated_at
    BEFORE UPDATE ON analytics.technical_indicators_latest
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE analytics.technical_indicators_latest IS
    'Indicator values of each symbol''s most recent yahoo bar, for screening. Written by trading-sync.';
COMMENT ON COLUMN analytics.technical_indicators_latest.symbol IS 'Symbol (FK, cascades with the symbol).';
COMMENT ON COLUMN analytics.technical_indicators_latest.calculated_date IS 'Date of the bar these values are for.';
COMMENT ON COLUMN analytics.technical_indicators_latest.sma_20 IS 'Simple moving average of the last 20 closes (NULL before bar 19).';
COMMENT ON COLUMN analytics.technical_indicators_latest.sma_50 IS 'Simple moving average of the last 50 closes (NULL before bar 49).';
COMMENT ON COLUMN analytics.technical_indicators_latest.sma_200 IS 'Simple moving average of the last 200 closes (NULL before bar 199).';
COMMENT ON COLUMN analytics.technical_indicators_latest.ema_12 IS 'Exponential moving average, N = 12, seeded with the first SMA.';
COMMENT ON COLUMN analytics.technical_indicators_latest.ema_26 IS 'Exponential moving average, N = 26, seeded with the first SMA.';
COMMENT ON COLUMN analytics.technical_indicators_latest.ema_50 IS 'Exponential moving average, N = 50, seeded with the first SMA.';
COMMENT ON COLUMN analytics.technical_indicators_latest.rsi IS 'Wilder RSI(14), 0..100 (same value as rsi_14; both kept for seed compatibility).';
COMMENT ON COLUMN analytics.technical_indicators_latest.rsi_14 IS 'Wilder RSI(14), 0..100.';
COMMENT ON COLUMN analytics.technical_indicators_latest.macd_line IS 'MACD line: TA-Lib fast EMA12 minus EMA26.';
COMMENT ON COLUMN analytics.technical_indicators_latest.macd_signal IS 'EMA9 of the MACD line.';
COMMENT ON COLUMN analytics.technical_indicators_latest.macd_histogram IS 'macd_line - macd_signal.';
COMMENT ON COLUMN analytics.technical_indicators_latest.bb_upper IS 'sma_20 + 2 * population std of the last 20 closes.';
COMMENT ON COLUMN analytics.technical_indicators_latest.bb_middle IS 'sma_20.';
COMMENT ON COLUMN analytics.technical_indicators_latest.bb_lower IS 'sma_20 - 2 * population std of the last 20 closes (may be negative).';
COMMENT ON COLUMN analytics.technical_indicators_latest.bb_position IS '(close - lower) / (upper - lower); NULL when the bands coincide. Bounded to about [-0.59, 1.59] because the close is one of the 20 values, so NUMERIC(5,4) cannot overflow.';
COMMENT ON COLUMN analytics.technical_indicators_latest.bb_width IS '(upper - lower) / middle * 100 (percent).';
COMMENT ON COLUMN analytics.technical_indicators_latest.volatility_20 IS 'Annualised volatility in percent: sample std of the last 20 log returns * sqrt(252) * 100.';
COMMENT ON COLUMN analytics.technical_indicators_latest.price_change_1d IS 'Percent change over 1 bar.';
COMMENT ON COLUMN analytics.technical_indicators_latest.price_change_5d IS 'Percent change over 5 bars.';
COMMENT ON COLUMN analytics.technical_indicators_latest.price_change_30d IS 'Percent change over 30 bars.';
COMMENT ON COLUMN analytics.technical_indicators_latest.avg_volume_20 IS 'Mean of the last 20 volumes, rounded to an integer.';
COMMENT ON COLUMN analytics.technical_indicators_latest.current_volume IS 'Volume of the bar.';
COMMENT ON COLUMN analytics.technical_indicators_latest.updated_at IS 'Last modification time (trigger).';


CREATE TABLE analytics.technical_indicators (
    id               BIGSERIAL      PRIMARY KEY,
    symbol           VARCHAR(20)    NOT NULL,
    date             DATE           NOT NULL,

    -- Moving averages (INDICATORS.md: sma = mean of the last N closes; ema seeded with the SMA)
    sma_20           NUMERIC(15,4),
    sma_50           NUMERIC(15,4),
    sma_200          NUMERIC(15,4),
    ema_12           NUMERIC(15,4),
    ema_26           NUMERIC(15,4),
    ema_50           NUMERIC(15,4),
    -- Momentum
    rsi              NUMERIC(5,2),
    rsi_14           NUMERIC(5,2),
    -- MACD(12, 26, 9), TA-Lib definition (INDICATORS.md)
    macd_line        NUMERIC(15,4),
    macd_signal      NUMERIC(15,4),
    macd_histogram   NUMERIC(15,4),
    -- Bollinger bands (20, 2), population standard deviation
    bb_upper         NUMERIC(15,4),
    bb_middle        NUMERIC(15,4),
    bb_lower         NUMERIC(15,4),
    bb_position      NUMERIC(5,4),
    bb_width         NUMERIC(10,4),
    -- Volatility and price changes: NUMERIC(12,2), widened from the seed's NUMERIC(5,2)
    volatility_20    NUMERIC(12,2),
    price_change_1d  NUMERIC(12,2),
    price_change_5d  NUMERIC(12,2),
    price_change_30d NUMERIC(12,2),
    -- Volume
    avg_volume_20    BIGINT,
    current_volume   BIGINT,

    created_at       TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT technical_indicators_symbol_date_key UNIQUE (symbol, date),
    CONSTRAINT technical_indicators_symbol_fkey FOREIGN KEY (symbol)
        REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    CONSTRAINT technical_indicators_rsi_range CHECK (rsi BETWEEN 0 AND 100 AND rsi_14 BETWEEN 0 AND 100),
    CONSTRAINT technical_indicators_non_negative CHECK (
        volatility_20 >= 0 AND bb_width >= 0 AND avg_volume_20 >= 0 AND current_volume >= 0)
);

CREATE INDEX idx_technical_indicators_date ON analytics.technical_indicators (date);

CREATE TRIGGER trg_technical_indicators_updated_at
    BEFORE UPDATE ON analytics.technical_indicators
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE analytics.technical_indicators IS
    'Indicator time series, one row per (symbol, date of a yahoo bar). Written by trading-sync.';
COMMENT ON COLUMN analytics.technical_indicators.id IS 'Surrogate key.';
COMMENT ON COLUMN analytics.technical_indicators.symbol IS 'Symbol (FK, cascades with the symbol).';
COMMENT ON COLUMN analytics.technical_indicators.date IS 'Date of the bar these values are for.';
COMMENT ON COLUMN analytics.technical_indicators.created_at IS 'Row creation time.';
COMMENT ON COLUMN analytics.technical_indicators.updated_at IS 'Last modification time (trigger).';

-- The indicator columns mean exactly what they mean in technical_indicators_latest: copy their
-- comments rather than repeat them.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT a.attname, d.description
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_description d
            ON d.objoid = a.attrelid AND d.objsubid = a.attnum
           AND d.classoid = 'pg_catalog.pg_class'::regclass
         WHERE a.attrelid = 'analytics.technical_indicators_latest'::regclass
           AND a.attname NOT IN ('symbol', 'calculated_date', 'updated_at')
    LOOP
        EXECUTE format('COMMENT ON COLUMN analytics.technical_indicators.%I IS %L', r.attname, r.description);
    END LOOP;
END;
$$;
