-- V31: cheaper updates of the two aggregates trading-sync upserts every batch.
--
-- 1. The updated_at triggers skip rows whose statement already set updated_at to now().
--    shared.set_updated_at() is plpgsql: one function call per updated row (6.5% of the writer
--    backend's CPU at 10,000 portfolio rows). trading-sync's statements now set
--    updated_at = now() themselves, and a WHEN clause (a plain expression, no function call)
--    skips the trigger for those rows. The result is the same as before for every writer: after
--    any UPDATE, updated_at = now() (the trigger still fires, and sets it, whenever the
--    statement left any other value — it did not set it, or set it to something else).
--    The trigger stays attached (every table with updated_at has it: V1's rule).
-- 2. fillfactor 80 on portfolio_summary and performance_metrics: updates leave the indexed key
--    columns (account_id, symbol / strategy, date) unchanged, so they can be HOT (no new index
--    entries) when the row's page has room. SET (fillfactor) applies to pages written from now
--    on; existing full pages gain room only as rows move or after a rewrite, which this
--    migration does not do (VACUUM FULL or CLUSTER take an ACCESS EXCLUSIVE lock: the
--    operator's choice, at a quiet time).

DROP TRIGGER trg_portfolio_summary_updated_at ON analytics.portfolio_summary;
CREATE TRIGGER trg_portfolio_summary_updated_at
    BEFORE UPDATE ON analytics.portfolio_summary
    FOR EACH ROW
    WHEN (NEW.updated_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION shared.set_updated_at();

DROP TRIGGER trg_performance_metrics_updated_at ON analytics.performance_metrics;
CREATE TRIGGER trg_performance_metrics_updated_at
    BEFORE UPDATE ON analytics.performance_metrics
    FOR EACH ROW
    WHEN (NEW.updated_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION shared.set_updated_at();

ALTER TABLE analytics.portfolio_summary SET (fillfactor = 80);
ALTER TABLE analytics.performance_metrics SET (fillfactor = 80);

COMMENT ON COLUMN analytics.portfolio_summary.updated_at IS
    'Last modification time: set by trading-sync''s statements, else by the trigger.';
COMMENT ON COLUMN analytics.performance_metrics.updated_at IS
    'Last modification time: set by trading-sync''s statements, else by the trigger.';
