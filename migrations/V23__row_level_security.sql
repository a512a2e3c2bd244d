-- V23: row-level security — an application session sees and writes only its own account.
--
-- The review's DatabaseSecurity.setup_row_level_security (section 7) enables RLS on trades,
-- positions and orders with one policy, `account_id = current_setting('app.current_account_id')`,
-- for a role trading_app. Here:
--
-- * trading_app is created if missing, NOLOGIN like trading_sync (V17): a group of privileges an
--   operator grants to the login each application service uses.
--     - execution.orders, trades, positions: read and write, its account's rows only;
--     - analytics.portfolio_summary: read only, its account's rows only (trading-sync alone
--       writes it);
--     - analytics.technical_indicators and technical_indicators_latest: read (market-wide values
--       computed from public bars; nothing of any account is in them);
--     - analytics.performance_metrics: NOT granted. It has no account column: one row sums every
--       account's trades of a strategy on a day (P&L, volume, notional, win counts), so an account's
--       session reading it would learn what the other accounts did. There is no row it could be
--       given without that leak; a per-account view of it would have to come from the trades.
--     - nothing else (the ledger, its baselines, dead letters — raw messages of every account —,
--       the change logs, shared.*): privileges closed, so there is nothing to filter.
-- * Which tables get RLS: those keyed by account that trading_app can reach — the three execution
--   tables and portfolio_summary. The other account-keyed tables (analytics.applied_trades,
--   analytics.ledger_baseline_portfolio, risk_management.risk_limits and risk_events) are closed
--   to trading_app by privileges, which is stronger than a row filter, and are read whole by the
--   services that own them; enabling RLS there would only add policies for those owners to keep.
--   A later migration that grants trading_app one of them must enable RLS on it in the same file.
-- * The account is `current_setting('app.current_account_id', true)`: the missing_ok form, so a
--   session that never set it gets NULL and sees nothing instead of an error. After RESET (or a
--   SET LOCAL that ended with its transaction) the same call returns '' (a placeholder variable
--   once defined stays defined), so '' is treated as unset too: NULLIF(…, '') makes both NULL, and
--   `account_id = NULL` is never true. The setting is an ordinary, user-settable variable: the
--   trust is in the application that sets it, as in the review; RLS keeps an honest application's
--   bug (a missing WHERE) from reaching another account.
-- * WITH CHECK repeats the USING expression, so a row can be neither inserted into another account
--   nor moved there by an UPDATE: "new row violates row-level security policy" (42501).
-- * Behind a connection pooler (pgbouncer in transaction mode, or a pool whose sessions are reused
--   by other requests) set the account per transaction with `SET LOCAL app.current_account_id =
--   'A'` (or `set_config('app.current_account_id', 'A', true)`) inside BEGIN … COMMIT: it ends
--   with the transaction, so the next borrower of the connection starts with '' and sees nothing,
--   never the previous request's account.
-- * trading_sync keeps exactly what it had, through its own policies: every row of
--   portfolio_summary (trade deltas, position snapshots, the mark-to-market UPDATE of every
--   account holding a symbol, reconcile), and read access to every row of the three execution
--   tables (reconcile and verify). Without these, enabling RLS would silently give it zero rows.
--   Policies are permissive and OR together: a login that is a member of both trading_app and
--   trading_sync sees everything. Give each login one of them.
-- * No FORCE ROW LEVEL SECURITY. FORCE subjects the table's owner to the policies; a superuser
--   bypasses them whatever FORCE says. The owner here is the schema owner that runs migrations
--   and owner-run procedures (backfills like V21's seed, retention, pg_dump); no application
--   connects as it. With FORCE and a non-superuser owner those would need policies of their own,
--   and a missing one would make a migration's INSERT … SELECT silently see zero rows. Referential
--   integrity checks bypass RLS either way (PostgreSQL's rule), and SECURITY DEFINER functions
--   (V21's change log, the audit trail) read only transition tables, which RLS does not filter.
--
-- Roles are cluster-wide while migrations run per database, possibly concurrently (V17): create
-- the role only if missing and treat a lost CREATE ROLE race as success; an existing role is left
-- as it is and only the grants below are applied (GRANT is idempotent).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'trading_app') THEN
        BEGIN
            CREATE ROLE trading_app NOLOGIN;
            COMMENT ON ROLE trading_app IS
                'Application services: their account''s execution rows and portfolio (RLS on app.current_account_id). GRANT trading_app TO <login role>.';
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
        END;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA execution, analytics TO trading_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON execution.orders, execution.trades, execution.positions
    TO trading_app;
GRANT USAGE ON SEQUENCE execution.orders_id_seq, execution.trades_id_seq, execution.positions_id_seq
    TO trading_app;
GRANT SELECT ON analytics.portfolio_summary,
                analytics.technical_indicators,
                analytics.technical_indicators_latest
    TO trading_app;

ALTER TABLE execution.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE execution.trades ENABLE ROW LEVEL SECURITY;
ALTER TABLE execution.positions ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics.portfolio_summary ENABLE ROW LEVEL SECURITY;

-- The application: its account only, for every command it has a grant for.
CREATE POLICY orders_app_account ON execution.orders
    FOR ALL TO trading_app
    USING (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''))
    WITH CHECK (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''));
CREATE POLICY trades_app_account ON execution.trades
    FOR ALL TO trading_app
    USING (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''))
    WITH CHECK (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''));
CREATE POLICY positions_app_account ON execution.positions
    FOR ALL TO trading_app
    USING (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''))
    WITH CHECK (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''));
CREATE POLICY portfolio_summary_app_account ON analytics.portfolio_summary
    FOR SELECT TO trading_app
    USING (account_id = NULLIF(pg_catalog.current_setting('app.current_account_id', true), ''));

-- The daemon: reads every execution row (reconcile, verify) and writes every portfolio row.
CREATE POLICY orders_sync_read ON execution.orders
    FOR SELECT TO trading_sync USING (true);
CREATE POLICY trades_sync_read ON execution.trades
    FOR SELECT TO trading_sync USING (true);
CREATE POLICY positions_sync_read ON execution.positions
    FOR SELECT TO trading_sync USING (true);
CREATE POLICY portfolio_summary_sync_all ON analytics.portfolio_summary
    FOR ALL TO trading_sync USING (true) WITH CHECK (true);

COMMENT ON POLICY orders_app_account ON execution.orders IS
    'trading_app: rows of app.current_account_id only (unset or empty: none); cannot insert into or move to another account.';
COMMENT ON POLICY trades_app_account ON execution.trades IS
    'trading_app: rows of app.current_account_id only (unset or empty: none); cannot insert into or move to another account.';
COMMENT ON POLICY positions_app_account ON execution.positions IS
    'trading_app: rows of app.current_account_id only (unset or empty: none); cannot insert into or move to another account.';
COMMENT ON POLICY portfolio_summary_app_account ON analytics.portfolio_summary IS
    'trading_app: reads rows of app.current_account_id only (unset or empty: none). Written by trading-sync alone.';
COMMENT ON POLICY orders_sync_read ON execution.orders IS 'trading_sync reads every order (reconcile: a fill''s side and strategy).';
COMMENT ON POLICY trades_sync_read ON execution.trades IS 'trading_sync reads every trade (reconcile, verify).';
COMMENT ON POLICY positions_sync_read ON execution.positions IS 'trading_sync reads every position (reconcile copies newer snapshots).';
COMMENT ON POLICY portfolio_summary_sync_all ON analytics.portfolio_summary IS
    'trading_sync writes every row: trade deltas, position snapshots, mark to market of every account holding a symbol.';
