-- V6: data_ingestion.data_quality_logs — findings of data quality checks on ingested data.
--
-- The seed only names this table ("Market Data: ... data_quality_logs"); the design is ours.
-- Append-only (a finding is a fact about a moment), hence no updated_at. No FK to symbols: a finding
-- may concern a symbol not (yet) in the symbol master — that can be the finding — and the log should
-- outlive a deleted symbol.

CREATE TABLE data_ingestion.data_quality_logs (
    id               BIGSERIAL     PRIMARY KEY,
    symbol           VARCHAR(20),
    data_source      VARCHAR(50),
    check_name       VARCHAR(100)  NOT NULL,
    severity         VARCHAR(10)   NOT NULL,
    message          TEXT          NOT NULL,
    records_checked  BIGINT,
    records_failed   BIGINT,
    period_start     TIMESTAMPTZ,
    period_end       TIMESTAMPTZ,
    details          JSONB,
    created_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),

    CONSTRAINT data_quality_logs_severity_check CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    CONSTRAINT data_quality_logs_counts_check CHECK (
        records_checked >= 0 AND records_failed >= 0 AND records_failed <= records_checked),
    CONSTRAINT data_quality_logs_period_check CHECK (period_end >= period_start),
    CONSTRAINT data_quality_logs_details_object CHECK (jsonb_typeof(details) = 'object')
);

CREATE INDEX idx_data_quality_logs_created_at ON data_ingestion.data_quality_logs (created_at DESC);
CREATE INDEX idx_data_quality_logs_symbol_created_at ON data_ingestion.data_quality_logs (symbol, created_at DESC);
CREATE INDEX idx_data_quality_logs_problems ON data_ingestion.data_quality_logs (created_at DESC)
    WHERE severity IN ('error', 'critical');

COMMENT ON TABLE data_ingestion.data_quality_logs IS 'Append-only findings of data quality checks.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.id IS 'Surrogate key.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.symbol IS 'Symbol concerned; NULL for a check over many symbols. No FK (see table comment in V6).';
COMMENT ON COLUMN data_ingestion.data_quality_logs.data_source IS 'Provider whose data was checked, if specific.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.check_name IS 'Name of the check (e.g. missing_bars, price_spike, stale_data).';
COMMENT ON COLUMN data_ingestion.data_quality_logs.severity IS 'info, warning, error, critical.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.message IS 'Human-readable finding.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.records_checked IS 'Rows examined by the check, if counted.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.records_failed IS 'Rows that failed the check (<= records_checked).';
COMMENT ON COLUMN data_ingestion.data_quality_logs.period_start IS 'Start of the data period checked.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.period_end IS 'End of the data period checked (>= period_start).';
COMMENT ON COLUMN data_ingestion.data_quality_logs.details IS 'Structured detail (JSON object), e.g. offending timestamps.';
COMMENT ON COLUMN data_ingestion.data_quality_logs.created_at IS 'When the finding was recorded.';
