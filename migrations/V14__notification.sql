-- V14: notification.{notification_configs, notification_logs}.
--
-- The seed only names these tables ("Notification: notification_configs, notification_logs";
-- "Alert configurations, notification logs"); the design is ours. Credentials (SMTP passwords,
-- webhook tokens) do not belong in these rows: settings holds non-secret options, and secrets come
-- from the notifier's own configuration.

CREATE TABLE notification.notification_configs (
    id                SERIAL         PRIMARY KEY,
    name              VARCHAR(100)   NOT NULL UNIQUE,
    channel           VARCHAR(20)    NOT NULL,
    event_type        VARCHAR(100)   NOT NULL,
    min_severity      VARCHAR(10)    NOT NULL DEFAULT 'warning',
    destination       TEXT           NOT NULL,
    settings          JSONB          NOT NULL DEFAULT '{}'::jsonb,
    throttle_seconds  INTEGER        NOT NULL DEFAULT 0,
    is_enabled        BOOLEAN        NOT NULL DEFAULT true,
    created_at        TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT notification_configs_channel_check CHECK (
        channel IN ('email', 'slack', 'webhook', 'sms', 'telegram', 'discord', 'pagerduty')),
    CONSTRAINT notification_configs_severity_check CHECK (min_severity IN ('info', 'warning', 'error', 'critical')),
    CONSTRAINT notification_configs_event_type_not_blank CHECK (btrim(event_type) <> ''),
    CONSTRAINT notification_configs_destination_not_blank CHECK (btrim(destination) <> ''),
    CONSTRAINT notification_configs_settings_object CHECK (jsonb_typeof(settings) = 'object'),
    CONSTRAINT notification_configs_throttle_check CHECK (throttle_seconds >= 0)
);

-- The notifier looks up enabled routes by event type.
CREATE INDEX idx_notification_configs_event_type ON notification.notification_configs (event_type) WHERE is_enabled;

CREATE TRIGGER trg_notification_configs_updated_at
    BEFORE UPDATE ON notification.notification_configs
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE notification.notification_configs IS 'Alert routes: which events go to which channel and destination. No secrets here.';
COMMENT ON COLUMN notification.notification_configs.id IS 'Surrogate key, referenced by notification_logs.';
COMMENT ON COLUMN notification.notification_configs.name IS 'Unique human-readable name of the route.';
COMMENT ON COLUMN notification.notification_configs.channel IS 'email, slack, webhook, sms, telegram, discord, pagerduty.';
COMMENT ON COLUMN notification.notification_configs.event_type IS 'Event type routed (e.g. risk_event, trade_executed, dead_letter); * for all.';
COMMENT ON COLUMN notification.notification_configs.min_severity IS 'Lowest severity sent: info, warning, error, critical.';
COMMENT ON COLUMN notification.notification_configs.destination IS 'Address for the channel (email address, channel name, URL without credentials).';
COMMENT ON COLUMN notification.notification_configs.settings IS 'Non-secret channel options (JSON object).';
COMMENT ON COLUMN notification.notification_configs.throttle_seconds IS 'Minimum seconds between two notifications of this route; 0 = no throttling.';
COMMENT ON COLUMN notification.notification_configs.is_enabled IS 'Disabled routes are kept but not used.';
COMMENT ON COLUMN notification.notification_configs.created_at IS 'Row creation time.';
COMMENT ON COLUMN notification.notification_configs.updated_at IS 'Last modification time (trigger).';


CREATE TABLE notification.notification_logs (
    id              BIGSERIAL      PRIMARY KEY,
    config_id       INTEGER
                    REFERENCES notification.notification_configs (id) ON DELETE SET NULL,
    channel         VARCHAR(20)    NOT NULL,
    event_type      VARCHAR(100)   NOT NULL,
    severity        VARCHAR(10)    NOT NULL,
    destination     TEXT,
    subject         TEXT,
    message         TEXT           NOT NULL,
    status          VARCHAR(20)    NOT NULL DEFAULT 'pending',
    attempts        INTEGER        NOT NULL DEFAULT 0,
    error_message   TEXT,
    correlation_id  VARCHAR(100),
    sent_at         TIMESTAMPTZ,
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT notification_logs_severity_check CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    CONSTRAINT notification_logs_status_check CHECK (status IN ('pending', 'sent', 'failed', 'suppressed')),
    CONSTRAINT notification_logs_attempts_check CHECK (attempts >= 0),
    CONSTRAINT notification_logs_sent_has_time CHECK (status <> 'sent' OR sent_at IS NOT NULL)
);

CREATE INDEX idx_notification_logs_created_at ON notification.notification_logs (created_at DESC);
CREATE INDEX idx_notification_logs_config_id ON notification.notification_logs (config_id, created_at DESC);
-- The sender retries pending and failed notifications.
CREATE INDEX idx_notification_logs_unsent ON notification.notification_logs (created_at)
    WHERE status IN ('pending', 'failed');

CREATE TRIGGER trg_notification_logs_updated_at
    BEFORE UPDATE ON notification.notification_logs
    FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at();

COMMENT ON TABLE notification.notification_logs IS 'Every notification attempted, with its delivery status.';
COMMENT ON COLUMN notification.notification_logs.id IS 'Surrogate key.';
COMMENT ON COLUMN notification.notification_logs.config_id IS 'Route used (SET NULL if the route is deleted; channel/destination keep the facts).';
COMMENT ON COLUMN notification.notification_logs.channel IS 'Channel used (copied from the route).';
COMMENT ON COLUMN notification.notification_logs.event_type IS 'Event type that caused it.';
COMMENT ON COLUMN notification.notification_logs.severity IS 'info, warning, error, critical.';
COMMENT ON COLUMN notification.notification_logs.destination IS 'Where it was sent (copied from the route).';
COMMENT ON COLUMN notification.notification_logs.subject IS 'Subject / title, if the channel has one.';
COMMENT ON COLUMN notification.notification_logs.message IS 'Body sent.';
COMMENT ON COLUMN notification.notification_logs.status IS 'pending, sent (sent_at set), failed (will retry), suppressed (throttled or disabled).';
COMMENT ON COLUMN notification.notification_logs.attempts IS 'Delivery attempts so far.';
COMMENT ON COLUMN notification.notification_logs.error_message IS 'Last delivery error.';
COMMENT ON COLUMN notification.notification_logs.correlation_id IS 'Correlation id of the triggering event, for tracing.';
COMMENT ON COLUMN notification.notification_logs.sent_at IS 'When delivery succeeded.';
COMMENT ON COLUMN notification.notification_logs.created_at IS 'Row creation time.';
COMMENT ON COLUMN notification.notification_logs.updated_at IS 'Last modification time (trigger).';
