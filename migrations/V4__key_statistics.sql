-- V4: data_ingestion.key_statistics — Yahoo Finance fundamentals per symbol per date.
--
-- Seed: "Key Statistics Table" (section 2), taken column for column. Deviations:
-- * symbol VARCHAR(20), not VARCHAR(10): it references data_ingestion.symbols(symbol), which is
--   VARCHAR(20) like market_data; with 10 the FK column could not hold every valid symbol.
-- * data_source NOT NULL: the seed has it nullable with a default, but it is part of the UNIQUE key,
--   and NULLs are distinct in a UNIQUE constraint, so rows with data_source NULL could be duplicated
--   without limit.
-- * created_at / updated_at NOT NULL; the seed's per-table trigger function
--   update_key_statistics_updated_at() is replaced by the shared shared.set_updated_at().
-- * The seed's idx_key_statistics_symbol (symbol) and idx_key_statistics_symbol_date (symbol, date)
--   are not created: both are prefixes of the UNIQUE (symbol, date, data_source) index, which serves
--   the same lookups. Its date and screening indexes are kept.
-- * Counts (shares, volume) must be >= 0. Ratios and margins get no range CHECK: Yahoo legitimately
--   reports negative P/E and margins and institutional holdings above 100 %.

CREATE TABLE data_ingestion.key_statistics (
    id                        SERIAL         PRIMARY KEY,
    symbol                    VARCHAR(20)    NOT NULL,
    date                      DATE           NOT NULL,
    data_source               VARCHAR(50)    NOT NULL DEFAULT 'yahoo',

    -- Valuation metrics
    market_cap                BIGINT,
    enterprise_value          BIGINT,
    trailing_pe               NUMERIC(10,2),
    forward_pe                NUMERIC(10,2),
    peg_ratio                 NUMERIC(10,2),
    price_to_book             NUMERIC(10,2),
    price_to_sales            NUMERIC(10,2),
    enterprise_to_revenue     NUMERIC(10,2),
    enterprise_to_ebitda      NUMERIC(10,2),

    -- Profitability metrics (decimals: 0.15 = 15 %)
    profit_margin             NUMERIC(10,4),
    operating_margin          NUMERIC(10,4),
    return_on_assets          NUMERIC(10,4),
    return_on_equity          NUMERIC(10,4),
    gross_margin              NUMERIC(10,4),
    ebitda_margin             NUMERIC(10,4),

    -- Financial health
    revenue                   BIGINT,
    revenue_per_share         NUMERIC(10,2),
    earnings_per_share        NUMERIC(10,2),
    total_cash                BIGINT,
    total_debt                BIGINT,
    debt_to_equity            NUMERIC(10,2),
    current_ratio             NUMERIC(10,2),
    quick_ratio               NUMERIC(10,2),
    free_cash_flow            BIGINT,
    operating_cash_flow       BIGINT,

    -- Growth metrics (decimals)
    revenue_growth            NUMERIC(10,4),
    earnings_growth           NUMERIC(10,4),

    -- Trading metrics
    beta                      NUMERIC(10,2),
    fifty_two_week_high       NUMERIC(10,2),
    fifty_two_week_low        NUMERIC(10,2),
    fifty_day_average         NUMERIC(10,2),
    two_hundred_day_average   NUMERIC(10,2),
    average_volume            BIGINT,

    -- Dividend metrics (decimals)
    dividend_yield            NUMERIC(10,4),
    dividend_rate             NUMERIC(10,2),
    payout_ratio              NUMERIC(10,4),

    -- Share information
    shares_outstanding        BIGINT,
    float_shares              BIGINT,
    shares_short              BIGINT,
    short_ratio               NUMERIC(10,2),
    held_percent_insiders     NUMERIC(10,4),
    held_percent_institutions NUMERIC(10,4),

    created_at                TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT key_statistics_symbol_date_source_key UNIQUE (symbol, date, data_source),
    CONSTRAINT key_statistics_symbol_fkey FOREIGN KEY (symbol)
        REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    CONSTRAINT key_statistics_counts_non_negative CHECK (
        average_volume >= 0 AND shares_outstanding >= 0 AND float_shares >= 0 AND shares_short >= 0)
);

CREATE INDEX idx_key_statistics_date ON data_ingestion.key_statistics (date);
-- Screening indexes, as in the seed.
CREATE INDEX idx_key_statistics_valuation
    ON data_ingestion.key_statistics (trailing_pe, price_to_book, market_cap);
CREATE INDEX idx_key_statistics_profitability
    ON data_ingestion.key_statistics (return_on_equity, profit_margin);

CREATE TRIGGER trg_key_statistics_updated_at
    BEFORE UPDATE ON data_ingestion.key_statistics
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE data_ingestion.key_statistics IS
    'Fundamentals snapshot per (symbol, date, data_source); columns as in the seed (Yahoo Finance field names in snake_case). '
    'Ratios NUMERIC(10,2); percentages stored as decimals NUMERIC(10,4) (0.15 = 15%); amounts and counts BIGINT.';
