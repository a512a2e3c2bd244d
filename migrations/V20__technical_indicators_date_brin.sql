-- V20: analytics.technical_indicators' date index becomes a BRIN index.
--
-- V10 added a B-tree on (date) for "all symbols on day D" (not in the seed, which indexes the history
-- only by (symbol, date)). It was a quarter of PostgreSQL's per-row insert cost, which bounds a
-- backfill: COPY of 161k rows into the table measured 8.0 µs/row with it and 6.1 without (the
-- foreign key is another ~2). The 12.6 M-row backfill (5,000 symbols x 10 years) took 67-71 s with
-- it and 54.5 s with this index, on 2 cores.
--
-- The price is paid by date queries on the history, measured on that 12.6 M-row table:
--   WHERE date = D (5,000 rows):        B-tree 4 ms, this BRIN 123 ms, no date index 190 ms
--                                       (an index-only scan of the whole (symbol, date) key);
--   WHERE date BETWEEN (one month):     B-tree 3 ms, this BRIN 113 ms.
-- Screening on the current day is served by technical_indicators_latest; per-symbol history by the
-- (symbol, date) key. A deployment that screens history by date all day and backfills rarely may
-- prefer the B-tree back: CREATE INDEX CONCURRENTLY ... (date), then drop this one.
--
-- A BRIN index works here because the writer controls the physical order: trading-sync writes a
-- symbol's rows in date order (a backfill: one symbol after another; a daily run: one new date for
-- every symbol), so a heap page holds ~30 consecutive dates of one symbol, or one date of ~30
-- symbols. With one page per range a date query reads the whole BRIN (9 MB at 12.6 M rows) and ~7%
-- of the heap (a page where one symbol's history ends and the next begins spans every date).
-- autosummarize: ranges are summarized as they fill, not only at the next VACUUM (an unsummarized
-- range is read by every query). Rows rewritten by a revision move to other pages and widen those
-- ranges; that costs reads, never results.

DROP INDEX analytics.idx_technical_indicators_date;

CREATE INDEX idx_technical_indicators_date ON analytics.technical_indicators
    USING brin (date) WITH (pages_per_range = 1, autosummarize = on);

COMMENT ON INDEX analytics.idx_technical_indicators_date IS
    'BRIN on date for "all symbols on day D"; selective because trading-sync writes rows symbol by symbol in date order (V20).';
