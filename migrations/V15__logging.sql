-- V15: logging.{system_logs, performance_logs} and their archives.
--
-- The seed defines only the indexes of these tables (section 3, "Logging Indexes", "Performance Logs
-- Indexes"), which imply the columns timestamp, service, level, correlation_id, event_type (system_logs)
-- and timestamp, service, operation (performance_logs); its DatabaseMaintenance.cleanup_old_logs
-- (section 6) adds created_at and implies logging.archived_system_logs with the same columns
-- (INSERT INTO archived_system_logs SELECT * FROM system_logs). We add archived_performance_logs for
-- the same purpose. The rest of the design is ours.
--
-- "timestamp" is when the event happened at the emitter; created_at is when the row was stored
-- (retention and archiving go by created_at, as in the seed).
--
-- The archives are created LIKE their source, so `SELECT *` lines up column for column; any column
-- added to a source table later must be added to its archive in the same migration. They keep the
-- source's id (no sequence default) and CHECKs. Archiving should move rows in one statement:
--   WITH moved AS (DELETE FROM logging.system_logs WHERE created_at < now() - $1::interval RETURNING *)
--   INSERT INTO logging.archived_system_logs SELECT * FROM moved;
-- (the seed's version runs INSERT and DELETE as separate statements and puts its parameter inside a
-- string literal, INTERVAL '%s days', where no driver substitutes it.)
-- Log tables are append-only: no updated_at.

CREATE TABLE logging.system_logs (
    id              BIGSERIAL      PRIMARY KEY,
    "timestamp"     TIMESTAMPTZ    NOT NULL DEFAULT now(),
    service         VARCHAR(50)    NOT NULL,
    level           VARCHAR(10)    NOT NULL,
    message         TEXT           NOT NULL,
    event_type      VARCHAR(100),
    correlation_id  VARCHAR(100),
    logger          VARCHAR(200),
    host            VARCHAR(255),
    process_id      INTEGER,
    data            JSONB,
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),

    -- Python logging levels and Rust tracing levels, as those libraries spell them.
    CONSTRAINT system_logs_level_check CHECK (level IN ('TRACE', 'DEBUG', 'INFO', 'WARN', 'WARNING', 'ERROR', 'CRITICAL')),
    CONSTRAINT system_logs_data_object CHECK (jsonb_typeof(data) = 'object')
);

CREATE INDEX idx_system_logs_timestamp ON logging.system_logs ("timestamp" DESC);
CREATE INDEX idx_system_logs_service_timestamp ON logging.system_logs (service, "timestamp" DESC);
CREATE INDEX idx_system_logs_level_timestamp ON logging.system_logs (level, "timestamp" DESC);
CREATE INDEX idx_system_logs_correlation ON logging.system_logs (correlation_id);
CREATE INDEX idx_system_logs_event_type ON logging.system_logs (event_type);
CREATE INDEX idx_system_logs_created_at ON logging.system_logs (created_at);

COMMENT ON TABLE logging.system_logs IS 'Structured log records from all services. Append-only; old rows move to archived_system_logs.';
COMMENT ON COLUMN logging.system_logs.id IS 'Surrogate key (kept when archived).';
COMMENT ON COLUMN logging.system_logs."timestamp" IS 'When the event was logged by the emitter.';
COMMENT ON COLUMN logging.system_logs.service IS 'Emitting service (data_ingestion, execution, trading-sync, ...).';
COMMENT ON COLUMN logging.system_logs.level IS 'TRACE, DEBUG, INFO, WARN/WARNING, ERROR, CRITICAL.';
COMMENT ON COLUMN logging.system_logs.message IS 'Log message.';
COMMENT ON COLUMN logging.system_logs.event_type IS 'Machine-readable event name, if any.';
COMMENT ON COLUMN logging.system_logs.correlation_id IS 'Correlation id (e.g. trade_id) for tracing across services.';
COMMENT ON COLUMN logging.system_logs.logger IS 'Logger / module path.';
COMMENT ON COLUMN logging.system_logs.host IS 'Host name of the emitter.';
COMMENT ON COLUMN logging.system_logs.process_id IS 'OS process id of the emitter.';
COMMENT ON COLUMN logging.system_logs.data IS 'Structured fields (JSON object).';
COMMENT ON COLUMN logging.system_logs.created_at IS 'When the row was stored; retention goes by this.';


CREATE TABLE logging.performance_logs (
    id              BIGSERIAL         PRIMARY KEY,
    "timestamp"     TIMESTAMPTZ       NOT NULL DEFAULT now(),
    service         VARCHAR(50)       NOT NULL,
    operation       VARCHAR(200)      NOT NULL,
    duration_ms     DOUBLE PRECISION  NOT NULL,
    success         BOOLEAN           NOT NULL DEFAULT true,
    rows_affected   BIGINT,
    correlation_id  VARCHAR(100),
    data            JSONB,
    created_at      TIMESTAMPTZ       NOT NULL DEFAULT now(),

    -- NaN compares greater than everything in PostgreSQL, so ">= 0" alone would accept it; the upper
    -- bound rejects NaN and infinity.
    CONSTRAINT performance_logs_duration_check CHECK (duration_ms >= 0 AND duration_ms < 'Infinity'::float8),
    CONSTRAINT performance_logs_rows_check CHECK (rows_affected >= 0),
    CONSTRAINT performance_logs_data_object CHECK (jsonb_typeof(data) = 'object')
);

CREATE INDEX idx_performance_logs_service_timestamp ON logging.performance_logs (service, "timestamp" DESC);
CREATE INDEX idx_performance_logs_operation ON logging.performance_logs (operation);
CREATE INDEX idx_performance_logs_created_at ON logging.performance_logs (created_at);

COMMENT ON TABLE logging.performance_logs IS 'Timings of operations (queries, jobs, batches). Append-only; old rows move to archived_performance_logs.';
COMMENT ON COLUMN logging.performance_logs.id IS 'Surrogate key (kept when archived).';
COMMENT ON COLUMN logging.performance_logs."timestamp" IS 'When the operation finished.';
COMMENT ON COLUMN logging.performance_logs.service IS 'Service that ran the operation.';
COMMENT ON COLUMN logging.performance_logs.operation IS 'Operation name (e.g. apply_batch, indicator_run, query name).';
COMMENT ON COLUMN logging.performance_logs.duration_ms IS 'Wall-clock duration in milliseconds (finite, >= 0).';
COMMENT ON COLUMN logging.performance_logs.success IS 'Whether the operation succeeded.';
COMMENT ON COLUMN logging.performance_logs.rows_affected IS 'Rows / items processed, if meaningful.';
COMMENT ON COLUMN logging.performance_logs.correlation_id IS 'Correlation id for tracing, if any.';
COMMENT ON COLUMN logging.performance_logs.data IS 'Extra structured fields (JSON object).';
COMMENT ON COLUMN logging.performance_logs.created_at IS 'When the row was stored; retention goes by this.';


CREATE TABLE logging.archived_system_logs
    (LIKE logging.system_logs INCLUDING CONSTRAINTS INCLUDING COMMENTS);
ALTER TABLE logging.archived_system_logs ADD PRIMARY KEY (id);
CREATE INDEX idx_archived_system_logs_created_at ON logging.archived_system_logs (created_at);
COMMENT ON TABLE logging.archived_system_logs IS 'system_logs rows past retention; same columns, same ids.';

CREATE TABLE logging.archived_performance_logs
    (LIKE logging.performance_logs INCLUDING CONSTRAINTS INCLUDING COMMENTS);
ALTER TABLE logging.archived_performance_logs ADD PRIMARY KEY (id);
CREATE INDEX idx_archived_performance_logs_created_at ON logging.archived_performance_logs (created_at);
COMMENT ON TABLE logging.archived_performance_logs IS 'performance_logs rows past retention; same columns, same ids.';
