-- V26: the planner's statistics for the analytics tables, refreshed by trading-sync.
--
-- The review's DatabaseMaintenance.update_statistics runs ANALYZE. On PostgreSQL 15 only a table's
-- owner (or the database owner, or a superuser) may ANALYZE it; anyone else gets a WARNING
-- "skipping … only table or database owner can analyze it" and nothing happens — no error, so a
-- daemon running as trading_sync would have skipped it silently. This SECURITY DEFINER function,
-- owned by the migrations' owner, analyzes the analytics tables for trading_sync: on maintenance's
-- schedule, and after a large indicator backfill or reconcile (which change more rows at once
-- than autovacuum's analyze threshold expects of a quiet table, and whose next queries plan on the
-- new sizes).
--
-- * tables: names in the analytics schema (e.g. '{portfolio_summary,performance_metrics}'), or NULL
--   for every ordinary table there. A name outside analytics, or unknown, is refused: the caller
--   cannot point the owner's privilege elsewhere.
-- * search_path pinned; names quoted with %I.
-- * lock_timeout: ANALYZE takes SHARE UPDATE EXCLUSIVE, which waits for another ANALYZE or VACUUM
--   of the table and for DDL; it never blocks readers or writers. A wait longer than 10 s fails
--   the call (the caller logs and counts it) instead of stalling maintenance.
-- * Returns the tables analyzed.

CREATE FUNCTION analytics.refresh_statistics(tables text[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    t text;
    n integer := 0;
BEGIN
    IF tables IS NOT NULL THEN
        SELECT u.name INTO t
          FROM unnest(tables) AS u(name)
         WHERE NOT EXISTS (SELECT 1 FROM pg_class c
                            WHERE c.relnamespace = 'analytics'::regnamespace
                              AND c.relname = u.name AND c.relkind IN ('r', 'p'))
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'analytics.refresh_statistics: % is not a table of the analytics schema',
                quote_literal(t) USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    FOR t IN
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'analytics'::regnamespace AND c.relkind IN ('r', 'p')
           AND (tables IS NULL OR c.relname = ANY (tables))
         ORDER BY c.relname
    LOOP
        EXECUTE format('ANALYZE analytics.%I', t);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$fn$;

REVOKE EXECUTE ON FUNCTION analytics.refresh_statistics(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics.refresh_statistics(text[]) TO trading_sync;

COMMENT ON FUNCTION analytics.refresh_statistics(text[]) IS
    'ANALYZE the named analytics tables (NULL: all) as their owner, for trading_sync (PostgreSQL 15 lets only the owner ANALYZE). Returns the count.';
