-- V32: the technical_indicators date BRIN (V20) stops asking autovacuum to summarize each range.
--
-- With pages_per_range = 1 and autosummarize on, every heap page an insert fills files one
-- summarization request in autovacuum's work-item queue, which holds 256. A backfill fills ~340k
-- pages (12.6 M rows) in about a minute, faster than autovacuum takes requests (once a naptime),
-- so nearly every request is refused, and each refusal writes a LOG line quoting the whole
-- COPY statement: ~280 MB of server log per backfill, 2 M lines (measured, issue #16). The
-- refused ranges stayed unsummarized anyway until the next VACUUM.
--
-- Without autosummarize, VACUUM summarizes new ranges; autovacuum runs one on an insert-only
-- table once enough rows were inserted (autovacuum_vacuum_insert_threshold/_scale_factor,
-- PostgreSQL 13+), which a backfill always passes. Until then a date query also reads the
-- unsummarized pages: slower, never a different result. An operator can summarize at once with
-- SELECT brin_summarize_new_values('analytics.idx_technical_indicators_date') as the owner.

ALTER INDEX analytics.idx_technical_indicators_date SET (autosummarize = off);
