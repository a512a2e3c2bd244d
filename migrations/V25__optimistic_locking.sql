-- V25: optimistic locking — a version on the rows that are edited concurrently.
--
-- The review's OptimisticLockingMixin (section 4) gives each model `version INTEGER NOT NULL
-- DEFAULT 1` and updates with `… WHERE id = :id AND version = :current`, raising when no row
-- matched: someone else changed the row since it was read. Here the column exists on
-- execution.orders, execution.positions, strategy_engine.strategies (already since V8),
-- risk_management.risk_limits, shared.system_config and notification.notification_configs, and a
-- BEFORE UPDATE trigger sets NEW.version := OLD.version + 1 on every UPDATE:
--
-- * a writer that does not know about versions (a psql session, a service without the mixin)
--   still moves the version, so a concurrent optimistic writer notices its change;
-- * a writer that increments it itself, as the mixin does (`version = version + 1`), is not counted
--   twice: the trigger computes from OLD, whatever NEW says.
--
-- The idiom (README, "Security inside the database"):
--     UPDATE execution.orders SET status = 'cancelled' WHERE id = $1 AND version = $2;
--     -- 0 rows: stale version (or the row is gone): re-read and decide again.
--
-- execution.trades gets none: a fill is immutable once written (V7). ADD COLUMN with a constant
-- default is a catalog change (no rewrite) since PostgreSQL 11; every existing row starts at 1.

ALTER TABLE execution.orders ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE execution.positions ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE strategy_engine.strategies ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE risk_management.risk_limits ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE shared.system_config ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE notification.notification_configs ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;

CREATE FUNCTION shared.bump_version()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION shared.bump_version() IS
    'BEFORE UPDATE row trigger: NEW.version := OLD.version + 1 (optimistic locking; an application increment is not counted twice).';

CREATE TRIGGER trg_orders_version BEFORE UPDATE ON execution.orders
    FOR EACH ROW EXECUTE FUNCTION shared.bump_version();
CREATE TRIGGER trg_positions_version BEFORE UPDATE ON execution.positions
    FOR EACH ROW EXECUTE FUNCTION shared.bump_version();
CREATE TRIGGER trg_strategies_version BEFORE UPDATE ON strategy_engine.strategies
    FOR EACH ROW EXECUTE FUNCTION shared.bump_version();
CREATE TRIGGER trg_risk_limits_version BEFORE UPDATE ON risk_management.risk_limits
    FOR EACH ROW EXECUTE FUNCTION shared.bump_version();
CREATE TRIGGER trg_system_config_version BEFORE UPDATE ON shared.system_config
    FOR EACH ROW EXECUTE FUNCTION shared.bump_version();
CREATE TRIGGER trg_notification_configs_version BEFORE UPDATE ON notification.notification_configs
    FOR EACH ROW EXECUTE FUNCTION shared.bump_version();

COMMENT ON COLUMN execution.orders.version IS 'Optimistic-locking version: +1 on every UPDATE (trigger).';
COMMENT ON COLUMN execution.positions.version IS 'Optimistic-locking version: +1 on every UPDATE (trigger).';
COMMENT ON COLUMN strategy_engine.strategies.version IS 'Optimistic-locking version: +1 on every UPDATE (trigger; V25).';
COMMENT ON COLUMN risk_management.risk_limits.version IS 'Optimistic-locking version: +1 on every UPDATE (trigger).';
COMMENT ON COLUMN shared.system_config.version IS 'Optimistic-locking version: +1 on every UPDATE (trigger).';
COMMENT ON COLUMN notification.notification_configs.version IS 'Optimistic-locking version: +1 on every UPDATE (trigger).';
