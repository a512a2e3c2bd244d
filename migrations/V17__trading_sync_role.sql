-- V17: trading_sync, the least-privilege role the daemon runs as.
--
-- The seed plans "service-specific users with appropriate permissions" (Phase 1.1) but connects every
-- service as postgres. trading-sync gets exactly what it uses:
--   * reads  data_ingestion.market_data (bars for indicators) and data_ingestion.symbols;
--   * writes every analytics table (aggregates, ledger, dead letters, indicators, indicator state);
--   * inserts, reads and deletes logging tables (its logs, and archiving/retention);
--   * creates market_data partitions only through the SECURITY DEFINER functions of V3.
-- Nothing in execution, strategy_engine, risk_management, notification or shared.
--
-- The role is NOLOGIN: it is a group of privileges, not an account. An operator gives it to the login
-- the daemon uses, e.g.
--     CREATE ROLE trading_sync_app LOGIN PASSWORD '...';
--     GRANT trading_sync TO trading_sync_app;
-- (a member role inherits the privileges by default, or can SET ROLE trading_sync).
-- Migrations themselves (and refinery's refinery_schema_history table) need an owner-level
-- connection; the daemon's serving connection should not be that one.
--
-- Roles are cluster-wide, while these migrations run per database, and test databases are cloned from
-- one migrated template; several databases may be migrated at the same time. So: create the role only
-- if it does not exist, and treat losing the race to a concurrent CREATE ROLE as success. An existing
-- role is left as it is (an operator may have changed it); only the grants below are (re)applied, and
-- GRANT is idempotent.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'trading_sync') THEN
        BEGIN
            CREATE ROLE trading_sync NOLOGIN;
            -- Only the creator comments: COMMENT ON ROLE writes a cluster-wide catalog row, and two
            -- databases commenting at once could fail with "tuple concurrently updated".
            COMMENT ON ROLE trading_sync IS
                'Least-privilege group role of the trading-sync daemon. GRANT trading_sync TO <login role>.';
        EXCEPTION
            -- 42710: "role already exists"; 23505: the concurrent insert into pg_authid won.
            WHEN duplicate_object OR unique_violation THEN
                NULL;
        END;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA data_ingestion, analytics, logging TO trading_sync;

-- Through the parent only: the partitions (market_data_yYYYY, market_data_default) get no grants, so
-- the role can read them as part of market_data but not address them directly.
GRANT SELECT ON data_ingestion.market_data, data_ingestion.symbols TO trading_sync;

-- Tables that exist now. A later migration that adds an analytics or logging table must GRANT on it
-- too (explicitly: ALTER DEFAULT PRIVILEGES would depend on which role runs that migration).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA analytics TO trading_sync;
GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA logging TO trading_sync;

-- nextval() for the serial columns the daemon inserts into.
GRANT USAGE ON SEQUENCE
    analytics.dead_letters_id_seq,
    analytics.technical_indicators_id_seq,
    logging.system_logs_id_seq,
    logging.performance_logs_id_seq
TO trading_sync;

GRANT EXECUTE ON FUNCTION
    data_ingestion.ensure_market_data_partition(integer),
    data_ingestion.ensure_market_data_partitions(integer, integer)
TO trading_sync;
