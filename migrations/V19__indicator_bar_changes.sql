-- V19: analytics.indicator_bar_changes — which symbols' yahoo bars changed since the indicator job
-- last looked, and from which bar on. Replaces the per-run comparison of V18.
--
-- INDICATORS.md asks every run to detect revised history (a changed past bar, a new earlier bar, a
-- changed bar count). Until now each run compared the stored last 200 dates and closes and a count
-- of every older row with market_data: about 2,700 index entries per symbol, every run, whether
-- anything changed or not (2.2 s of a 4.3 s no-op run over 5,000 symbols), and blind to a changed
-- close older than the last 200 bars. Here market_data reports its own changes instead: statement
-- triggers with transition tables record, per symbol, the earliest timestamp of a yahoo row that was
-- inserted, deleted, or updated in a column the indicators read (symbol, timestamp, close, volume,
-- data_source). The job then reads only symbols that changed, and for each:
--   * earliest change after the state's last bar date: an append, fold the new bars;
--   * on or before it: a revision, recompute from the first bar and rewrite rows from that date on.
-- Every change is seen, however old, and an unchanged symbol costs nothing.
--
-- Append-only, one row per (statement, symbol): ingestion transactions only ever INSERT here, so
-- they never wait for one another or for the job, and cannot deadlock on this table (an upsert of
-- one row per symbol would serialise every writer of a symbol until commit). The job reads a
-- symbol's rows before its bars and, in the transaction that writes the results, deletes exactly
-- the rows it read (by id). A row committed after that read, or still uncommitted, is not among
-- them and is left for the next run.
--
-- Upserts that rewrite a bar with identical values (Yahoo re-sends the last days) are not changes:
-- old and new rows cancel out (EXCEPT ALL), so a daily re-download does not force recomputes.
--
-- A symbol inserted into data_ingestion.symbols is recorded as changed from the beginning: bars that
-- arrived before it was registered (skipped then: the indicator tables reference the symbol), or a
-- symbol deleted (its indicators cascade away) and registered again, are computed at the next run.
--
-- Limits, by PostgreSQL's design: statement triggers of a partitioned table fire for statements on
-- data_ingestion.market_data, not for statements addressed to one partition directly (V17 grants
-- nothing on the partitions; data_ingestion.ensure_market_data_partition moves rows through the
-- parent, which records them, costing one needless recompute). TRUNCATE of market_data marks every
-- symbol, computed or registered, as changed from the beginning. `trading-sync indicators --full`
-- recomputes every registered symbol with yahoo bars regardless, for anything done behind the
-- triggers' back.

CREATE TABLE analytics.indicator_bar_changes (
    id           BIGSERIAL     PRIMARY KEY,
    symbol       VARCHAR(20)   NOT NULL,
    earliest     TIMESTAMPTZ   NOT NULL,
    recorded_at  TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX idx_indicator_bar_changes_symbol ON analytics.indicator_bar_changes (symbol);

COMMENT ON TABLE analytics.indicator_bar_changes IS
    'Changes to yahoo bars not yet consumed by the indicator job, one row per (statement, symbol); written by market_data triggers, deleted by trading-sync. No FK: bars may precede symbol metadata.';
COMMENT ON COLUMN analytics.indicator_bar_changes.id IS 'Identifies the rows a run read, and so may delete.';
COMMENT ON COLUMN analytics.indicator_bar_changes.symbol IS 'Symbol whose yahoo bars changed.';
COMMENT ON COLUMN analytics.indicator_bar_changes.earliest IS 'Earliest bar timestamp the statement inserted, deleted or changed (-infinity: everything).';
COMMENT ON COLUMN analytics.indicator_bar_changes.recorded_at IS 'When the change was recorded.';

-- One function for every event. PL/pgSQL plans a statement when it first runs it, and a transition
-- table exists only in the triggers that declare it, so each event reads its tables in its own
-- branch. SECURITY DEFINER: the ingestion services that write market_data need no grant on
-- analytics.
CREATE FUNCTION analytics.record_bar_changes()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_TABLE_NAME = 'symbols' THEN
        INSERT INTO analytics.indicator_bar_changes (symbol, earliest)
        SELECT symbol, '-infinity'::timestamptz FROM new_symbols;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO analytics.indicator_bar_changes (symbol, earliest)
        SELECT symbol, min("timestamp") FROM new_bars
         WHERE data_source = 'yahoo' GROUP BY symbol;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO analytics.indicator_bar_changes (symbol, earliest)
        SELECT symbol, min("timestamp") FROM old_bars
         WHERE data_source = 'yahoo' GROUP BY symbol;
    ELSIF TG_OP = 'UPDATE' THEN
        -- A row rewritten with the same values is in both tables and cancels out; one whose
        -- symbol, timestamp or source changed counts on both sides.
        INSERT INTO analytics.indicator_bar_changes (symbol, earliest)
        SELECT symbol, min("timestamp")
          FROM ((SELECT id, symbol, "timestamp", close, volume, data_source FROM old_bars
                 EXCEPT ALL
                 SELECT id, symbol, "timestamp", close, volume, data_source FROM new_bars)
                UNION ALL
                (SELECT id, symbol, "timestamp", close, volume, data_source FROM new_bars
                 EXCEPT ALL
                 SELECT id, symbol, "timestamp", close, volume, data_source FROM old_bars)) d
         WHERE data_source = 'yahoo' GROUP BY symbol;
    ELSIF TG_OP = 'TRUNCATE' THEN
        INSERT INTO analytics.indicator_bar_changes (symbol, earliest)
        SELECT symbol, '-infinity'::timestamptz FROM analytics.indicator_state
        UNION
        SELECT symbol, '-infinity'::timestamptz FROM data_ingestion.symbols;
    END IF;
    RETURN NULL;
END;
$fn$;

-- A trigger may only declare the transition tables of its own event, hence one per event.
CREATE TRIGGER trg_market_data_bar_changes_insert
    AFTER INSERT ON data_ingestion.market_data
    REFERENCING NEW TABLE AS new_bars
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_bar_changes();
CREATE TRIGGER trg_market_data_bar_changes_update
    AFTER UPDATE ON data_ingestion.market_data
    REFERENCING OLD TABLE AS old_bars NEW TABLE AS new_bars
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_bar_changes();
CREATE TRIGGER trg_market_data_bar_changes_delete
    AFTER DELETE ON data_ingestion.market_data
    REFERENCING OLD TABLE AS old_bars
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_bar_changes();
CREATE TRIGGER trg_market_data_bar_changes_truncate
    AFTER TRUNCATE ON data_ingestion.market_data
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_bar_changes();
CREATE TRIGGER trg_symbols_bar_changes_insert
    AFTER INSERT ON data_ingestion.symbols
    REFERENCING NEW TABLE AS new_symbols
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.record_bar_changes();

-- Bars stored before these triggers existed, and states that outlived their bars: every such
-- symbol starts as changed from its first bar, so the first run after this migration recomputes it
-- (rewriting, through the change-only upsert, only rows whose values differ) — the old per-run check
-- is gone, and this is what it would have caught.
INSERT INTO analytics.indicator_bar_changes (symbol, earliest)
SELECT m.symbol, min(m."timestamp")
  FROM data_ingestion.market_data m
 WHERE m.data_source = 'yahoo'
 GROUP BY m.symbol
UNION ALL
SELECT st.symbol, '-infinity'::timestamptz FROM analytics.indicator_state st;

-- The count behind the old check.
ALTER TABLE analytics.indicator_state DROP COLUMN rows_before_tail;

GRANT SELECT, DELETE ON analytics.indicator_bar_changes TO trading_sync;
