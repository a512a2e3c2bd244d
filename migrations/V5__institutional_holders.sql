-- V5: data_ingestion.institutional_holders — major institutional shareholders per symbol.
--
-- Seed: "Institutional Holders Table" (section 2). Deviations:
-- * symbol VARCHAR(20), not VARCHAR(10) (it references data_ingestion.symbols; see V2/V4).
-- * data_source NOT NULL (it has a default; NULL would only mean "unknown provider").
-- * shares, value, percent_held must be >= 0.
-- * The seed's idx_institutional_holders_symbol (symbol) is not created: symbol leads the UNIQUE
--   (symbol, holder_name, date_reported) index and the two (symbol, ...) indexes below.

CREATE TABLE data_ingestion.institutional_holders (
    id             SERIAL         PRIMARY KEY,
    symbol         VARCHAR(20)    NOT NULL,
    date_reported  DATE           NOT NULL,
    holder_name    VARCHAR(255)   NOT NULL,
    shares         BIGINT,
    value          BIGINT,
    percent_held   NUMERIC(10,4),
    data_source    VARCHAR(50)    NOT NULL DEFAULT 'yahoo',
    created_at     TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT institutional_holders_symbol_holder_date_key UNIQUE (symbol, holder_name, date_reported),
    CONSTRAINT institutional_holders_symbol_fkey FOREIGN KEY (symbol)
        REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    CONSTRAINT institutional_holders_non_negative CHECK (shares >= 0 AND value >= 0 AND percent_held >= 0)
);

CREATE INDEX idx_institutional_holders_date ON data_ingestion.institutional_holders (date_reported);
CREATE INDEX idx_institutional_holders_shares ON data_ingestion.institutional_holders (symbol, shares DESC);
CREATE INDEX idx_institutional_holders_percent ON data_ingestion.institutional_holders (symbol, percent_held DESC);

CREATE TRIGGER trg_institutional_holders_updated_at
    BEFORE UPDATE ON data_ingestion.institutional_holders
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE data_ingestion.institutional_holders IS 'Institutional holders per symbol as reported on date_reported.';
COMMENT ON COLUMN data_ingestion.institutional_holders.id IS 'Surrogate key.';
COMMENT ON COLUMN data_ingestion.institutional_holders.symbol IS 'Symbol (FK, cascades with the symbol).';
COMMENT ON COLUMN data_ingestion.institutional_holders.date_reported IS 'Filing / report date of the holding.';
COMMENT ON COLUMN data_ingestion.institutional_holders.holder_name IS 'Institution name as reported.';
COMMENT ON COLUMN data_ingestion.institutional_holders.shares IS 'Shares held.';
COMMENT ON COLUMN data_ingestion.institutional_holders.value IS 'Value of the holding in the quote currency (whole units).';
COMMENT ON COLUMN data_ingestion.institutional_holders.percent_held IS 'Fraction of shares outstanding (0.05 = 5%).';
COMMENT ON COLUMN data_ingestion.institutional_holders.data_source IS 'Provider.';
COMMENT ON COLUMN data_ingestion.institutional_holders.created_at IS 'Row creation time.';
COMMENT ON COLUMN data_ingestion.institutional_holders.updated_at IS 'Last modification time (trigger).';
