-- V18: analytics.indicator_state.rows_before_tail, the bar count behind the cheap revision check.
--
-- INDICATORS.md asks every run to detect revised history cheaply: compare the stored last <= 200
-- dates and closes with the database, plus the bar count and the first date. The tail comparison
-- needs no new column (closes / close_dates). The count does: comparing bars_consumed with a count
-- of *valid* bars would need the close of every bar of the symbol's history (a heap fetch per bar,
-- every run), while a count of all yahoo rows before the tail's first date is an index-only scan
-- of market_data's (symbol, timestamp, data_source) key. So the job stores that count here: rows
-- with a NULL, NaN or non-positive close and second rows on an already used date are included,
-- which also keeps such rows from looking like a revision on every run.
--
-- NULL (a state written before this column existed) means "unknown": the job recomputes that
-- symbol from its first bar once and fills it in.

ALTER TABLE analytics.indicator_state
    ADD COLUMN rows_before_tail BIGINT,
    ADD CONSTRAINT indicator_state_rows_before_tail_check CHECK (rows_before_tail >= 0);

COMMENT ON COLUMN analytics.indicator_state.rows_before_tail IS
    'Number of yahoo market_data rows (valid or not) of the symbol dated before close_dates[1], '
    'dates taken in the job''s bar time zone. A different count in the database means history was '
    'revised before the stored tail. NULL: unknown, recompute.';
