-- V2: the symbol master and the two tables that hang off it.
--
-- The seed only names these tables ("Symbol tables: symbols, delisted_symbols, symbol_data_status",
-- Phase 2.2) and makes key_statistics, institutional_holders and the technical indicator tables
-- reference data_ingestion.symbols(symbol) ON DELETE CASCADE; the columns below are our design.
--
-- symbol is VARCHAR(20) everywhere. The seed's key_statistics and institutional_holders use
-- VARCHAR(10), but market_data, orders, trades and the indicator tables use VARCHAR(20), and an FK from
-- a VARCHAR(10) column to this key would refuse every symbol of 11..20 characters that market_data
-- accepts (option and some FX/crypto tickers are that long). We widen those to 20 in their migrations.

CREATE TABLE data_ingestion.symbols (
    symbol      VARCHAR(20)  PRIMARY KEY,
    name        VARCHAR(255),
    exchange    VARCHAR(20),
    asset_type  VARCHAR(20)  NOT NULL DEFAULT 'stock',
    status      VARCHAR(20)  NOT NULL DEFAULT 'active',
    sector      VARCHAR(100),
    industry    VARCHAR(100),
    currency    CHAR(3),
    added_date  DATE         NOT NULL DEFAULT CURRENT_DATE,
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),

    -- Tickers are stored as given by the source ("BRK-B", "^GSPC", "EURUSD=X"), so no case rule;
    -- but an empty symbol or one with whitespace is always an ingestion bug.
    CONSTRAINT symbols_symbol_format CHECK (symbol <> '' AND symbol !~ '\s'),
    CONSTRAINT symbols_asset_type_check CHECK (
        asset_type IN ('stock', 'etf', 'fund', 'index', 'crypto', 'forex', 'future', 'option', 'bond', 'other')),
    CONSTRAINT symbols_status_check CHECK (status IN ('active', 'delisted', 'suspended', 'inactive')),
    CONSTRAINT symbols_currency_format CHECK (currency ~ '^[A-Z]{3}$')
);

-- Listing active symbols (the ingestion and indicator jobs' work lists) filters on status.
CREATE INDEX idx_symbols_status ON data_ingestion.symbols (status);
CREATE INDEX idx_symbols_exchange ON data_ingestion.symbols (exchange);

CREATE TRIGGER trg_symbols_updated_at
    BEFORE UPDATE ON data_ingestion.symbols
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE data_ingestion.symbols IS
    'Symbol master. Deleting a symbol cascades to its fundamentals, holders, status, delisting record and '
    'indicators (not to market_data, which has no FK: see V3).';
COMMENT ON COLUMN data_ingestion.symbols.symbol IS 'Ticker as the data source spells it; the key every other table uses.';
COMMENT ON COLUMN data_ingestion.symbols.name IS 'Company / instrument name, if known.';
COMMENT ON COLUMN data_ingestion.symbols.exchange IS 'Listing exchange code (e.g. NASDAQ, NYSE), if known.';
COMMENT ON COLUMN data_ingestion.symbols.asset_type IS 'Instrument class: stock, etf, fund, index, crypto, forex, future, option, bond, other.';
COMMENT ON COLUMN data_ingestion.symbols.status IS
    'active (ingested), delisted (see delisted_symbols), suspended (trading halted), inactive (no longer tracked).';
COMMENT ON COLUMN data_ingestion.symbols.sector IS 'Sector classification from the data source, if known.';
COMMENT ON COLUMN data_ingestion.symbols.industry IS 'Industry classification from the data source, if known.';
COMMENT ON COLUMN data_ingestion.symbols.currency IS 'ISO 4217 code of the quote currency, if known.';
COMMENT ON COLUMN data_ingestion.symbols.added_date IS 'Date the symbol was added to the universe.';
COMMENT ON COLUMN data_ingestion.symbols.created_at IS 'Row creation time.';
COMMENT ON COLUMN data_ingestion.symbols.updated_at IS 'Last modification time (trigger).';


-- One row per delisted symbol. Keyed by symbol: a symbol is delisted at most once in our universe; if a
-- ticker is relisted, the operator sets symbols.status back to active and deletes this row.
CREATE TABLE data_ingestion.delisted_symbols (
    symbol       VARCHAR(20)   PRIMARY KEY
                 REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    delist_date  DATE          NOT NULL,
    last_price   NUMERIC(15,4),
    reason       VARCHAR(100),
    notes        TEXT,
    created_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),

    CONSTRAINT delisted_symbols_last_price_positive CHECK (last_price > 0)
);

CREATE INDEX idx_delisted_symbols_delist_date ON data_ingestion.delisted_symbols (delist_date);

CREATE TRIGGER trg_delisted_symbols_updated_at
    BEFORE UPDATE ON data_ingestion.delisted_symbols
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE data_ingestion.delisted_symbols IS 'Delisting record for symbols whose status is delisted.';
COMMENT ON COLUMN data_ingestion.delisted_symbols.symbol IS 'The delisted symbol (FK, cascades with the symbol).';
COMMENT ON COLUMN data_ingestion.delisted_symbols.delist_date IS 'Last trading date / effective delisting date.';
COMMENT ON COLUMN data_ingestion.delisted_symbols.last_price IS 'Last known close before delisting, if known.';
COMMENT ON COLUMN data_ingestion.delisted_symbols.reason IS 'Short reason code (merger, bankruptcy, no_data, ...).';
COMMENT ON COLUMN data_ingestion.delisted_symbols.notes IS 'Free-text detail.';
COMMENT ON COLUMN data_ingestion.delisted_symbols.created_at IS 'Row creation time.';
COMMENT ON COLUMN data_ingestion.delisted_symbols.updated_at IS 'Last modification time (trigger).';


-- Per symbol, per day, per data source: did ingestion get the data? Lets the ingestion job retry only
-- what failed and tell "no bar because holiday" (no_data) from "no bar because error" (failed).
CREATE TABLE data_ingestion.symbol_data_status (
    id               BIGSERIAL    PRIMARY KEY,
    symbol           VARCHAR(20)  NOT NULL
                     REFERENCES data_ingestion.symbols (symbol) ON DELETE CASCADE,
    date             DATE         NOT NULL,
    data_source      VARCHAR(50)  NOT NULL DEFAULT 'yahoo',
    status           VARCHAR(20)  NOT NULL DEFAULT 'pending',
    attempts         INTEGER      NOT NULL DEFAULT 0,
    error_message    TEXT,
    last_attempt_at  TIMESTAMPTZ,
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),

    CONSTRAINT symbol_data_status_symbol_date_source_key UNIQUE (symbol, date, data_source),
    CONSTRAINT symbol_data_status_status_check CHECK (status IN ('pending', 'success', 'failed', 'no_data', 'skipped')),
    CONSTRAINT symbol_data_status_attempts_check CHECK (attempts >= 0),
    CONSTRAINT symbol_data_status_error_on_failure CHECK (status <> 'failed' OR error_message IS NOT NULL)
);

-- The retry job looks for recent failures; a partial index keeps that lookup small.
CREATE INDEX idx_symbol_data_status_failed ON data_ingestion.symbol_data_status (date)
    WHERE status IN ('failed', 'pending');
CREATE INDEX idx_symbol_data_status_date ON data_ingestion.symbol_data_status (date);

CREATE TRIGGER trg_symbol_data_status_updated_at
    BEFORE UPDATE ON data_ingestion.symbol_data_status
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE data_ingestion.symbol_data_status IS 'Ingestion outcome per (symbol, date, data_source).';
COMMENT ON COLUMN data_ingestion.symbol_data_status.id IS 'Surrogate key.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.symbol IS 'Symbol (FK, cascades with the symbol).';
COMMENT ON COLUMN data_ingestion.symbol_data_status.date IS 'Trading date the status is about.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.data_source IS 'Provider (yahoo, polygon, ...).';
COMMENT ON COLUMN data_ingestion.symbol_data_status.status IS 'pending, success, failed (error_message required), no_data (provider had none), skipped.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.attempts IS 'Number of fetch attempts so far.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.error_message IS 'Last error, required when status = failed.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.last_attempt_at IS 'Time of the last fetch attempt.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.created_at IS 'Row creation time.';
COMMENT ON COLUMN data_ingestion.symbol_data_status.updated_at IS 'Last modification time (trigger).';
