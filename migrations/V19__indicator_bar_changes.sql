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
-- Exactly-once hand-off: every change bumps change_seq (from a sequence). The job reads the row
-- before it reads bars, and in the transaction that writes the results deletes it only if change_seq
-- is still what it read. A write that commits in between (or is still open: the DELETE waits for its
-- row lock, then re-checks) leaves the row for the next run.
--
-- Upserts that rewrite a bar with identical values (Yahoo re-sends the last days) are not changes:
-- old and new rows cancel out (EXCEPT ALL), so a daily re-download does not force recomputes.
--
-- Limits, by PostgreSQL's design: statement triggers of a partitioned table fire for statements on
-- data_ingestion.market_data, not for statements addressed to one partition directly (V17 grants
-- nothing on the partitions; data_ingestion.ensure_market_data_partition moves rows between
-- partitions without changing any bar, which must not count); TRUNCATE of market_data marks every
-- computed symbol as changed from the beginning. `trading-sync indicators --full` recomputes
-- regardless, for anything done behind the triggers' back.

CREATE TABLE analytics.indicator_bar_changes (
    symbol      VARCHAR(20)   PRIMARY KEY,
    earliest    TIMESTAMPTZ   NOT NULL,
    change_seq  BIGINT        NOT NULL,
    changed_at  TIMESTAMPTZ   NOT NULL DEFAULT now()
);

COMMENT ON TABLE analytics.indicator_bar_changes IS
    'Symbols whose yahoo bars changed since the indicator job last consumed them (written by market_data triggers; deleted by trading-sync). No FK: bars may precede symbol metadata.';
COMMENT ON COLUMN analytics.indicator_bar_changes.symbol IS 'Symbol whose yahoo bars changed.';
COMMENT ON COLUMN analytics.indicator_bar_changes.earliest IS 'Earliest bar timestamp inserted, deleted or changed since the job last consumed this row (-infinity: everything).';
COMMENT ON COLUMN analytics.indicator_bar_changes.change_seq IS 'Bumped by every change; the job deletes the row only if it is unchanged since it was read.';
COMMENT ON COLUMN analytics.indicator_bar_changes.changed_at IS 'Time of the last change recorded.';

CREATE SEQUENCE analytics.indicator_bar_changes_seq AS BIGINT;

-- One function for the four events. PL/pgSQL plans a statement when it first runs it, and a
-- transition table exists only in the triggers that declare it, so each event reads its tables in
-- its own branch; the branches reduce to (symbol, earliest) pairs and share one upsert.
-- SECURITY DEFINER: the ingestion services that write market_data need no grant on analytics.
-- Symbols are upserted in sorted order so two concurrent ingestion statements lock change rows in
-- the same order and cannot deadlock on them.
CREATE FUNCTION analytics.record_bar_changes()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_symbols  text[];
    v_earliest timestamptz[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(symbol), array_agg(ts) INTO v_symbols, v_earliest
          FROM (SELECT symbol, min("timestamp") AS ts FROM new_bars
                 WHERE data_source = 'yahoo' GROUP BY symbol) x;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(symbol), array_agg(ts) INTO v_symbols, v_earliest
          FROM (SELECT symbol, min("timestamp") AS ts FROM old_bars
                 WHERE data_source = 'yahoo' GROUP BY symbol) x;
    ELSIF TG_OP = 'UPDATE' THEN
        -- A row rewritten with the same values is in both tables and cancels out; one whose
        -- symbol, timestamp or source changed counts on both sides.
        SELECT array_agg(symbol), array_agg(ts) INTO v_symbols, v_earliest
          FROM (SELECT symbol, min("timestamp") AS ts
                  FROM ((SELECT id, symbol, "timestamp", close, volume, data_source FROM old_bars
                         EXCEPT ALL
                         SELECT id, symbol, "timestamp", close, volume, data_source FROM new_bars)
                        UNION ALL
                        (SELECT id, symbol, "timestamp", close, volume, data_source FROM new_bars
                         EXCEPT ALL
                         SELECT id, symbol, "timestamp", close, volume, data_source FROM old_bars)) d
                 WHERE data_source = 'yahoo' GROUP BY symbol) x;
    ELSIF TG_OP = 'TRUNCATE' THEN
        SELECT array_agg(symbol), array_agg('-infinity'::timestamptz) INTO v_symbols, v_earliest
          FROM analytics.indicator_state;
    END IF;

    IF v_symbols IS NOT NULL THEN
        INSERT INTO analytics.indicator_bar_changes AS c (symbol, earliest, change_seq)
        SELECT u.symbol, u.earliest, nextval('analytics.indicator_bar_changes_seq')
          FROM unnest(v_symbols, v_earliest) AS u(symbol, earliest)
         ORDER BY u.symbol
        ON CONFLICT (symbol) DO UPDATE
           SET earliest = LEAST(c.earliest, EXCLUDED.earliest),
               change_seq = EXCLUDED.change_seq,
               changed_at = now();
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

-- Bars stored before these triggers existed: every symbol with yahoo bars starts as changed from its
-- first bar, so the first run after this migration recomputes (and, through the change-only upsert,
-- rewrites only rows whose values differ) — the old per-run check is gone, and this is what it
-- would have caught.
INSERT INTO analytics.indicator_bar_changes (symbol, earliest, change_seq)
SELECT m.symbol, min(m."timestamp"), nextval('analytics.indicator_bar_changes_seq')
  FROM data_ingestion.market_data m
 WHERE m.data_source = 'yahoo'
 GROUP BY m.symbol;

-- The count behind the old check.
ALTER TABLE analytics.indicator_state DROP COLUMN rows_before_tail;

GRANT SELECT, DELETE ON analytics.indicator_bar_changes TO trading_sync;
