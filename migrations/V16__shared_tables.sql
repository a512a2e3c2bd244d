-- V16: shared.{audit_log, system_config}.
--
-- The seed names both ("Shared: audit_log, system_config") and writes audit_log in
-- DatabaseSecurity.audit_data_access (section 7):
--   INSERT INTO audit_log (user_id, table_name, operation, timestamp) VALUES (...)
-- so those four columns exist with those names; the rest of the design is ours.

-- Append-only: an audit record is never updated (no updated_at). Writers should be granted INSERT only.
CREATE TABLE shared.audit_log (
    id              BIGSERIAL      PRIMARY KEY,
    "timestamp"     TIMESTAMPTZ    NOT NULL DEFAULT now(),
    user_id         VARCHAR(100)   NOT NULL,
    service         VARCHAR(50),
    table_name      VARCHAR(200)   NOT NULL,
    operation       VARCHAR(20)    NOT NULL,
    record_id       TEXT,
    old_values      JSONB,
    new_values      JSONB,
    client_addr     INET,
    correlation_id  VARCHAR(100),

    CONSTRAINT audit_log_operation_check CHECK (
        operation IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'EXPORT', 'LOGIN')),
    CONSTRAINT audit_log_old_values_object CHECK (jsonb_typeof(old_values) = 'object'),
    CONSTRAINT audit_log_new_values_object CHECK (jsonb_typeof(new_values) = 'object')
);

CREATE INDEX idx_audit_log_timestamp ON shared.audit_log ("timestamp" DESC);
CREATE INDEX idx_audit_log_table_timestamp ON shared.audit_log (table_name, "timestamp" DESC);
CREATE INDEX idx_audit_log_user_timestamp ON shared.audit_log (user_id, "timestamp" DESC);

COMMENT ON TABLE shared.audit_log IS 'Who did what to which table and when, for compliance. Append-only.';
COMMENT ON COLUMN shared.audit_log.id IS 'Surrogate key.';
COMMENT ON COLUMN shared.audit_log."timestamp" IS 'When the audited action happened.';
COMMENT ON COLUMN shared.audit_log.user_id IS 'Application user or database role that acted.';
COMMENT ON COLUMN shared.audit_log.service IS 'Service through which the action was taken, if any.';
COMMENT ON COLUMN shared.audit_log.table_name IS 'Schema-qualified table acted on (e.g. execution.orders).';
COMMENT ON COLUMN shared.audit_log.operation IS 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, EXPORT, LOGIN (upper case).';
COMMENT ON COLUMN shared.audit_log.record_id IS 'Key of the row acted on, as text, if a single row.';
COMMENT ON COLUMN shared.audit_log.old_values IS 'Row values before the change (JSON object), for UPDATE/DELETE.';
COMMENT ON COLUMN shared.audit_log.new_values IS 'Row values after the change (JSON object), for INSERT/UPDATE.';
COMMENT ON COLUMN shared.audit_log.client_addr IS 'Client network address, if known.';
COMMENT ON COLUMN shared.audit_log.correlation_id IS 'Correlation id of the request, for tracing.';


-- Runtime settings shared by services, one JSON value per dotted key (e.g. 'risk.max_daily_loss').
-- Not for secrets: anything that can read configuration could read them.
CREATE TABLE shared.system_config (
    key          VARCHAR(100)   PRIMARY KEY,
    value        JSONB          NOT NULL,
    description  TEXT,
    updated_by   VARCHAR(100),
    created_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT system_config_key_format CHECK (key ~ '^[a-z0-9_]+(\.[a-z0-9_]+)*$')
);

CREATE TRIGGER trg_system_config_updated_at
    BEFORE UPDATE ON shared.system_config
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE shared.system_config IS 'Shared runtime configuration, key -> JSON value. No secrets.';
COMMENT ON COLUMN shared.system_config.key IS 'Dotted lower-case key, e.g. risk.max_daily_loss.';
COMMENT ON COLUMN shared.system_config.value IS 'Value as JSON (number, string, object, ...).';
COMMENT ON COLUMN shared.system_config.description IS 'What the setting controls and its unit.';
COMMENT ON COLUMN shared.system_config.updated_by IS 'Who last changed it.';
COMMENT ON COLUMN shared.system_config.created_at IS 'Row creation time.';
COMMENT ON COLUMN shared.system_config.updated_at IS 'Last modification time (trigger).';
