-- V24: the audit trail — who changed what, in shared.audit_log (V16), written by the database.
--
-- The review's DatabaseSecurity.audit_data_access (section 7) asks each service to insert its own
-- audit rows; a service that forgets, or a DBA's psql session, leaves no trace. Here triggers on
-- the tables compliance asks about write it: execution.orders, trades, positions,
-- strategy_engine.strategies, risk_management.risk_limits, shared.system_config and
-- notification.notification_configs.
--
-- * Statement-level triggers with transition tables, one per event: a transition table cannot be
--   declared on a trigger for several events, nor on TRUNCATE. One statement that writes 100,000
--   rows costs one INSERT … SELECT into audit_log, not 100,000 trigger calls. (A TRUNCATE of an
--   audited table is not recorded row by row: it needs ownership, which no service role has.)
-- * A row holds: the operation; the schema-qualified table; the record id (the table's key as
--   text: id, or key for system_config); old and new values as JSON objects (to_jsonb of the row);
--   the database user — session_user, the login that connected: the trigger function is SECURITY
--   DEFINER, so current_user inside it is the function's owner, and a SET ROLE does not hide who
--   logged in —; and app.user_id / app.correlation_id when the session sets them (NULL when unset or
--   ''). The application user stays in user_id, as the review's audit_data_access writes it, now
--   nullable; the database user gets its own column. Also the transaction id (to group one
--   transaction's rows), application_name (service) and the client's address.
-- * UPDATE rows are paired old/new by the record id. An UPDATE that changes the key itself (a
--   renamed system_config key) is recorded as the old row (new_values NULL) and the new row
--   (old_values NULL), both as UPDATE.
-- * SECURITY DEFINER, search_path pinned: the services writing these tables need no grant on
--   audit_log, and cannot write it by any other path.
-- * Append-only. No role has UPDATE, DELETE or TRUNCATE on audit_log (none was ever granted; revoked
--   from PUBLIC here to say so), and a trigger refuses them for everyone, its owner included.
--   Retention is the owner's procedure shared.purge_audit_log(before), below: it disables the
--   refusing trigger inside its own transaction (ALTER TABLE takes an ACCESS EXCLUSIVE lock, so no
--   other session writes or deletes meanwhile; the change is never visible outside it), deletes,
--   re-enables, and records the purge itself in audit_log. Only the table's owner (or a superuser)
--   can ALTER the table, so only they can run it.

ALTER TABLE shared.audit_log
    ALTER COLUMN user_id DROP NOT NULL,
    -- varchar -> text is binary compatible: no rewrite. An application user or correlation id
    -- longer than 100 characters must neither fail the audited statement nor be cut.
    ALTER COLUMN user_id TYPE TEXT,
    ALTER COLUMN correlation_id TYPE TEXT,
    -- Added without a default first: rows written before V24 keep NULL (not known) rather than
    -- the name of whoever runs this migration, which a default would stamp on them.
    ADD COLUMN db_user TEXT,
    ADD COLUMN transaction_id BIGINT;
ALTER TABLE shared.audit_log
    ALTER COLUMN db_user SET DEFAULT session_user,
    -- Every row from here on names its database user; NOT VALID leaves the older rows unchecked.
    ADD CONSTRAINT audit_log_db_user_known CHECK (db_user IS NOT NULL) NOT VALID;

COMMENT ON COLUMN shared.audit_log.user_id IS
    'Application user (app.user_id set by the session, or written by the service); NULL when not set.';
COMMENT ON COLUMN shared.audit_log.db_user IS
    'Database login that acted (session_user: not changed by SET ROLE or SECURITY DEFINER). NULL only on rows written before V24.';
COMMENT ON COLUMN shared.audit_log.transaction_id IS
    'Transaction that made the change (txid_current()); rows of one transaction share it.';
COMMENT ON COLUMN shared.audit_log.correlation_id IS
    'Correlation id of the request (app.correlation_id set by the session), for tracing.';
COMMENT ON COLUMN shared.audit_log.service IS
    'Service through which the action was taken: the session''s application_name for trigger rows.';
COMMENT ON COLUMN shared.audit_log.record_id IS
    'Key of the row acted on, as text (id; key for shared.system_config).';

-- Indexes: every audited row now costs an audit row, so each index on audit_log is paid on every
-- write of seven tables (a 100,000-row INSERT … SELECT into audit_log took 0.86 s with V16's
-- three B-trees and a (table_name, record_id) one, 0.29 s with the primary key alone). What
-- stays, for the questions asked of it:
-- * by time: a BRIN instead of V16's B-tree. Rows arrive in time order (append-only, now()), so
--   block ranges are tight, and time-bounded queries ("table X last week") read a few ranges and
--   filter — the trade V20 made for technical_indicators;
-- * the history of one row ("order 42"): (table_name, record_id), which also serves "table X" by
--   its prefix; V16's (table_name, timestamp) goes;
-- * by application user: only rows that have one (trigger rows of sessions that do not set
--   app.user_id have none).
-- Together 0.57 s for the same load.
DROP INDEX shared.idx_audit_log_timestamp;
DROP INDEX shared.idx_audit_log_table_timestamp;
DROP INDEX shared.idx_audit_log_user_timestamp;
CREATE INDEX idx_audit_log_timestamp_brin ON shared.audit_log USING brin ("timestamp");
CREATE INDEX idx_audit_log_table_record ON shared.audit_log (table_name, record_id);
CREATE INDEX idx_audit_log_user_timestamp ON shared.audit_log (user_id, "timestamp")
    WHERE user_id IS NOT NULL;

-- One function for every table and event; TG_ARGV[0] names the key column. PL/pgSQL plans a
-- statement when it first runs it, and a transition table exists only in the triggers that
-- declare it, so each event reads its tables in its own branch (as V19 does).
CREATE FUNCTION shared.audit_changes()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tbl      text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    key_col  text := TG_ARGV[0];
    app_user text := NULLIF(current_setting('app.user_id', true), '');
    corr     text := NULLIF(current_setting('app.correlation_id', true), '');
    svc      text := NULLIF(left(current_setting('application_name', true), 50), '');
    tx       bigint := txid_current();
    addr     inet := inet_client_addr();
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO shared.audit_log
            (operation, table_name, record_id, new_values, user_id, correlation_id, service,
             client_addr, transaction_id)
        SELECT 'INSERT', tbl, n.j ->> key_col, n.j, app_user, corr, svc, addr, tx
          FROM (SELECT to_jsonb(r) AS j FROM new_rows r) n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO shared.audit_log
            (operation, table_name, record_id, old_values, new_values, user_id, correlation_id,
             service, client_addr, transaction_id)
        SELECT 'UPDATE', tbl, COALESCE(n.j ->> key_col, o.j ->> key_col), o.j, n.j, app_user,
               corr, svc, addr, tx
          FROM (SELECT to_jsonb(r) AS j FROM old_rows r) o
          FULL JOIN (SELECT to_jsonb(r) AS j FROM new_rows r) n
            ON n.j ->> key_col = o.j ->> key_col;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO shared.audit_log
            (operation, table_name, record_id, old_values, user_id, correlation_id, service,
             client_addr, transaction_id)
        SELECT 'DELETE', tbl, o.j ->> key_col, o.j, app_user, corr, svc, addr, tx
          FROM (SELECT to_jsonb(r) AS j FROM old_rows r) o;
    END IF;
    RETURN NULL;
END;
$fn$;

REVOKE EXECUTE ON FUNCTION shared.audit_changes() FROM PUBLIC;
COMMENT ON FUNCTION shared.audit_changes() IS
    'AFTER … FOR EACH STATEMENT trigger with transition tables new_rows / old_rows: one audit_log row per row written. TG_ARGV[0]: the key column.';

-- Three triggers per table (transition tables allow one event per trigger).
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('execution', 'orders', 'id'),
        ('execution', 'trades', 'id'),
        ('execution', 'positions', 'id'),
        ('strategy_engine', 'strategies', 'id'),
        ('risk_management', 'risk_limits', 'id'),
        ('shared', 'system_config', 'key'),
        ('notification', 'notification_configs', 'id')) AS v(sch, tab, key_col)
    LOOP
        EXECUTE format(
            'CREATE TRIGGER trg_%2$s_audit_insert AFTER INSERT ON %1$I.%2$I
                 REFERENCING NEW TABLE AS new_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION shared.audit_changes(%3$L)',
            t.sch, t.tab, t.key_col);
        EXECUTE format(
            'CREATE TRIGGER trg_%2$s_audit_update AFTER UPDATE ON %1$I.%2$I
                 REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION shared.audit_changes(%3$L)',
            t.sch, t.tab, t.key_col);
        EXECUTE format(
            'CREATE TRIGGER trg_%2$s_audit_delete AFTER DELETE ON %1$I.%2$I
                 REFERENCING OLD TABLE AS old_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION shared.audit_changes(%3$L)',
            t.sch, t.tab, t.key_col);
    END LOOP;
END;
$$;


-- Append-only, for every role: no privileges, and a trigger refusing what a privilege or an owner
-- could still do.
REVOKE UPDATE, DELETE, TRUNCATE ON shared.audit_log FROM PUBLIC;

CREATE FUNCTION shared.refuse_audit_log_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'shared.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Retention is the owner''s CALL shared.purge_audit_log(before).';
END;
$fn$;

CREATE TRIGGER trg_audit_log_append_only
    BEFORE UPDATE OR DELETE ON shared.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_audit_log_change();
CREATE TRIGGER trg_audit_log_no_truncate
    BEFORE TRUNCATE ON shared.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_audit_log_change();

COMMENT ON TABLE shared.audit_log IS
    'Who did what to which table and when, for compliance. Append-only (no grants, and a trigger refuses UPDATE/DELETE/TRUNCATE); retention: CALL shared.purge_audit_log(before) as the owner.';

-- Retention, run by the owner (no EXECUTE for anyone else; it would fail without ownership anyway:
-- ALTER TABLE needs it). Not SECURITY DEFINER on purpose.
CREATE PROCEDURE shared.purge_audit_log(before timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    purged bigint;
BEGIN
    ALTER TABLE shared.audit_log DISABLE TRIGGER trg_audit_log_append_only;
    DELETE FROM shared.audit_log WHERE "timestamp" < before;
    GET DIAGNOSTICS purged = ROW_COUNT;
    ALTER TABLE shared.audit_log ENABLE TRIGGER trg_audit_log_append_only;
    INSERT INTO shared.audit_log
        (operation, table_name, new_values, user_id, correlation_id, service, client_addr,
         transaction_id)
    VALUES ('DELETE', 'shared.audit_log',
            jsonb_build_object('purged_before', before, 'rows', purged),
            NULLIF(current_setting('app.user_id', true), ''),
            NULLIF(current_setting('app.correlation_id', true), ''),
            NULLIF(left(current_setting('application_name', true), 50), ''),
            inet_client_addr(), txid_current());
END;
$fn$;

REVOKE EXECUTE ON PROCEDURE shared.purge_audit_log(timestamptz) FROM PUBLIC;
COMMENT ON PROCEDURE shared.purge_audit_log(timestamptz) IS
    'Owner-run retention: deletes audit rows older than before (inside the caller''s transaction, the append-only trigger disabled only there) and records the purge as an audit row.';
