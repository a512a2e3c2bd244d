-- V1: the eight service schemas and the one trigger function every table with an updated_at uses.
--
-- Seed: "Database Architecture - Detailed Review", section 1.3 ("Create service-specific schemas") and
-- "What Gets Created". The seed creates the schemas in a database it calls trading_system; which
-- database these migrations run in is the operator's choice (the daemon's connection URL).
--
-- Conventions for every later migration (say so here once, so each file does not repeat it):
--   * every object is schema-qualified; nothing relies on search_path;
--   * created_at / updated_at are TIMESTAMPTZ NOT NULL DEFAULT now() (the seed leaves them nullable,
--     which only lets a bad writer store NULL there);
--   * a table that has updated_at gets a BEFORE UPDATE trigger calling shared.set_updated_at().
--     The seed writes one trigger function per table (update_key_statistics_updated_at); one shared
--     function does the same job and cannot drift between tables.
--   * each file runs inside one transaction (refinery, or psql -1), so nothing here may use
--     CREATE INDEX CONCURRENTLY, VACUUM, or other commands that refuse to run in a transaction.

CREATE SCHEMA data_ingestion;
COMMENT ON SCHEMA data_ingestion IS
    'Raw ingested data: market bars, symbol master, fundamentals, ingestion status and quality logs.';

CREATE SCHEMA strategy_engine;
COMMENT ON SCHEMA strategy_engine IS 'Strategy definitions, the signals they emit and their own performance records.';

CREATE SCHEMA execution;
COMMENT ON SCHEMA execution IS 'Orders, trades (fills) and positions: the execution service''s ledger.';

CREATE SCHEMA risk_management;
COMMENT ON SCHEMA risk_management IS 'Risk limits and the events raised when they are approached or breached.';

CREATE SCHEMA analytics;
COMMENT ON SCHEMA analytics IS
    'Derived data: portfolio and strategy aggregates and technical indicators. Written by trading-sync.';

CREATE SCHEMA notification;
COMMENT ON SCHEMA notification IS 'Alert routing configuration and the log of notifications sent.';

CREATE SCHEMA logging;
COMMENT ON SCHEMA logging IS 'Centralised structured logs from all services, and their archives.';

CREATE SCHEMA shared;
COMMENT ON SCHEMA shared IS 'Cross-service utilities: audit log, system configuration, common functions.';

-- One trigger function for all updated_at columns. now() (transaction start time) rather than
-- clock_timestamp(): every row a transaction touches gets the same stamp, the same value a DEFAULT now()
-- would have given, so created_at <= updated_at holds for rows inserted and updated in one transaction.
-- pg_catalog.now() is qualified so the function does not depend on the caller's search_path.
CREATE FUNCTION shared.set_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION shared.set_updated_at() IS
    'BEFORE UPDATE row trigger: sets NEW.updated_at to now(). Attach to every table with an updated_at column.';
