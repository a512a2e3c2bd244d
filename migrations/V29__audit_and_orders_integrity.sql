-- V29: audit retention without a table lock, TRUNCATE in the audit trail, and a trade's order
-- kept in the trade's account.
--
-- 1. Retention without DDL. V24's shared.purge_audit_log(before) disabled the refusing trigger
--    with ALTER TABLE … DISABLE TRIGGER. That takes a SHARE ROW EXCLUSIVE lock on audit_log
--    (V24's comment said ACCESS EXCLUSIVE; it is weaker than that, but still conflicts with the
--    ROW EXCLUSIVE lock every INSERT takes), held until the purge's transaction ends: every
--    audited write of the seven tables — their triggers insert into audit_log — waited for the
--    whole DELETE, and the purge itself first waited for every open transaction that had written
--    one of them. Now:
--    * the refusing trigger lets a DELETE through only when the transaction-local setting
--      shared.audit_purge is 'on' AND the current user has the table owner's rights (its owner, a
--      member of the owning role, or a superuser: pg_has_role … MEMBER). The setting is an
--      ordinary placeholder any session can set; the ownership test is the fence. Non-owners have
--      no DELETE privilege on audit_log either (V24). The setting only keeps the owner from an
--      accidental DELETE: an owner can always ALTER the table, so this guards against mistakes,
--      not against the owner;
--    * the procedure sets that flag with set_config(…, true) around each batch of at most 10,000
--      rows and COMMITs between batches, so each batch holds its row locks briefly, a long purge
--      does not keep one snapshot open (vacuum can follow it), and nothing else takes a lock
--      stronger than ROW EXCLUSIVE, which INSERTs do not conflict with;
--    * it refuses a `before` later than now() - 1 day (22023): an accidental
--      `now() + interval '1 day'` must not erase the whole trail.
--    Transaction control has two consequences. A procedure that COMMITs must be CALLed outside a
--    transaction block (autocommit, or one CALL as a whole simple query); inside BEGIN … it fails
--    with 2D000 "invalid transaction termination" at its first COMMIT, which comes before any
--    DELETE, so nothing is removed and the caller's transaction is aborted. And a procedure with
--    a SET clause may not COMMIT, so V24's `SET search_path` goes: the tables and functions in
--    the body are schema-qualified instead (operators resolve in pg_catalog first, which is
--    searched before the search_path unless a caller lists it later). The procedure is not
--    SECURITY DEFINER: it runs with the caller's rights, which must be the owner's, so a
--    caller's search_path cannot lend it anything the caller could not do anyway.
--
-- 2. TRUNCATE leaves a trace. V24's triggers use transition tables, which TRUNCATE cannot have;
--    an AFTER TRUNCATE … FOR EACH STATEMENT trigger on each of the seven tables now writes one
--    'TRUNCATE' row (no record id, no values: the rows are gone and were not read), with the
--    same db_user (session_user), app.user_id, app.correlation_id, service, address and
--    transaction id as the other rows. TRUNCATE needs ownership or the TRUNCATE privilege, which
--    no service role has; the row is for the owner's and a DBA's hand. A TRUNCATE … CASCADE
--    writes one row per table it empties.
--
-- 3. A trade names an order of its own account. execution.trades.order_id referenced
--    orders(order_id) alone, and foreign-key checks bypass row-level security (PostgreSQL runs
--    them as the referenced table's owner), so a trading_app session of account A could insert a
--    trade naming account B's order — and learn from the error whether such an order id exists.
--    Now orders is UNIQUE (account_id, order_id), and trades has a composite FK
--    (account_id, order_id) → orders (account_id, order_id):
--    * MATCH SIMPLE (the default): a trade without an order (order_id NULL) is not checked, as
--      before;
--    * NOT VALID: rows already stored are not checked by this migration (a scan of every trade
--      under a lock, and one bad old row would make the migration fail); every row inserted or
--      updated from now on is. Once the data is known to be clean, an operator validates it — a
--      scan that takes only SHARE UPDATE EXCLUSIVE on trades (writes go on) and ROW SHARE on
--      orders:
--          -- trades that name another account's order (must return nothing):
--          SELECT t.trade_id, t.account_id, o.account_id AS order_account
--            FROM execution.trades t JOIN execution.orders o USING (order_id)
--           WHERE t.account_id <> o.account_id;
--          ALTER TABLE execution.trades VALIDATE CONSTRAINT trades_account_order_fkey;
--    * the unique index is built under a SHARE lock on orders (writes to orders wait for the
--      build, reads do not); orders is small next to trades. It also makes an order's account
--      immutable while trades reference it (NO ACTION), which the single-column FK allowed;
--    * no new index on trades: the check that runs when an order is deleted or re-keyed looks up
--      trades by (account_id, order_id), which idx_trades_order_id (V7) serves (an order id has
--      few trades);
--    * the single-column FK trades_order_id_fkey (V7) stays. Nothing relies on its ON DELETE
--      (NO ACTION, the same as the new one's), but it is VALIDATED: until an operator validates
--      the composite one it is the only constraint vouching that the existing trades name an
--      existing order. Once trades_account_order_fkey is validated it is redundant (it implies
--      it) and costs one more index probe per trade insert; an operator may drop it then.
--      strategy_engine.strategy_signals' FK to orders(order_id) (V8, ON DELETE SET NULL) is unaffected:
--      orders keeps its UNIQUE (order_id).
--
-- 4. strategy_engine.strategies.version changed meaning in V25 (no schema change here). V8 said
--    "incremented by the strategy engine when parameters change"; since V25 a trigger increments
--    it on EVERY UPDATE of the row (status, a timestamp, anything), as the optimistic-locking
--    version of every other edited table. A reader that took it for a parameter-set version
--    (e.g. to tag signals or results with "the parameters they ran with") must keep its own
--    parameters version or hash; the column's comment says so below.

-- 1. Retention ---------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION shared.refuse_audit_log_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- Only the owner's purge: the flag (transaction-local, set by shared.purge_audit_log around
    -- each batch) and the owner's rights. UPDATE and TRUNCATE are never let through.
    IF TG_OP = 'DELETE'
       AND current_setting('shared.audit_purge', true) = 'on'
       AND pg_has_role(current_user,
                       (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID),
                       'MEMBER') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'shared.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Retention is the owner''s CALL shared.purge_audit_log(before).';
END;
$fn$;

COMMENT ON FUNCTION shared.refuse_audit_log_change() IS
    'BEFORE UPDATE/DELETE/TRUNCATE statement trigger on shared.audit_log: refuses, except a DELETE by the owner with shared.audit_purge = on (set only by shared.purge_audit_log, transaction-local).';

-- CREATE OR REPLACE keeps the owner and the privileges (EXECUTE revoked from PUBLIC in V24) and
-- replaces the SET clause list: V24's SET search_path is gone, as transaction control needs.
CREATE OR REPLACE PROCEDURE shared.purge_audit_log(before timestamptz)
LANGUAGE plpgsql
AS $fn$
DECLARE
    batch_rows CONSTANT integer := 10000;
    started    timestamptz := pg_catalog.now();
    last_id    bigint := 0;
    max_id     bigint;
    deleted    bigint;
    top_id     bigint;
    purged     bigint := 0;
BEGIN
    IF before IS NULL OR before > started - interval '1 day' THEN
        RAISE EXCEPTION 'shared.purge_audit_log: before (%) must be at least 1 day ago', before
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'e.g. CALL shared.purge_audit_log(now() - interval ''7 years'');';
    END IF;
    -- Inside a transaction block this COMMIT fails (2D000) before anything is deleted.
    COMMIT;
    -- The last row to go, found once: rows are in id order by time (append-only), so each batch
    -- is a primary-key range scan from where the previous one stopped, never a rescan of the
    -- dead rows it left. `id + 0` keeps the planner off a backward primary-key scan, which would
    -- read every row to keep before reaching one to purge; the BRIN on "timestamp" serves this.
    SELECT pg_catalog.max(a.id + 0) INTO max_id
      FROM shared.audit_log a
     WHERE a."timestamp" < before;
    WHILE max_id IS NOT NULL AND last_id < max_id LOOP
        PERFORM pg_catalog.set_config('shared.audit_purge', 'on', true);
        WITH gone AS (
            DELETE FROM shared.audit_log
             WHERE id IN (SELECT a.id FROM shared.audit_log a
                           WHERE a.id > last_id
                             AND a.id <= max_id
                             AND a."timestamp" < before
                           ORDER BY a.id
                           LIMIT batch_rows)
            RETURNING id)
        SELECT pg_catalog.count(*), pg_catalog.max(gone.id) INTO deleted, top_id FROM gone;
        PERFORM pg_catalog.set_config('shared.audit_purge', '', true);
        purged := purged + deleted;
        COMMIT;
        EXIT WHEN deleted < batch_rows;
        last_id := top_id;
    END LOOP;
    INSERT INTO shared.audit_log
        (operation, table_name, new_values, user_id, correlation_id, service, client_addr,
         transaction_id)
    VALUES ('DELETE', 'shared.audit_log',
            pg_catalog.jsonb_build_object('purged_before', before, 'rows', purged),
            NULLIF(pg_catalog.current_setting('app.user_id', true), ''),
            NULLIF(pg_catalog.current_setting('app.correlation_id', true), ''),
            NULLIF(pg_catalog.left(pg_catalog.current_setting('application_name', true), 50), ''),
            pg_catalog.inet_client_addr(), pg_catalog.txid_current());
END;
$fn$;

REVOKE EXECUTE ON PROCEDURE shared.purge_audit_log(timestamptz) FROM PUBLIC;
COMMENT ON PROCEDURE shared.purge_audit_log(timestamptz) IS
    'Owner-run retention: deletes audit rows older than before (at least 1 day ago) in batches of 10,000, committing between them (CALL it outside a transaction block), without DDL or a table lock; records the purge as an audit row.';

-- 2. TRUNCATE ----------------------------------------------------------------------------------

CREATE FUNCTION shared.audit_truncate()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- db_user: its default, session_user (not changed by SECURITY DEFINER), as in V24.
    INSERT INTO shared.audit_log
        (operation, table_name, user_id, correlation_id, service, client_addr, transaction_id)
    VALUES ('TRUNCATE', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
            NULLIF(current_setting('app.user_id', true), ''),
            NULLIF(current_setting('app.correlation_id', true), ''),
            NULLIF(left(current_setting('application_name', true), 50), ''),
            inet_client_addr(), txid_current());
    RETURN NULL;
END;
$fn$;

REVOKE EXECUTE ON FUNCTION shared.audit_truncate() FROM PUBLIC;
COMMENT ON FUNCTION shared.audit_truncate() IS
    'AFTER TRUNCATE … FOR EACH STATEMENT trigger: one audit_log row (operation TRUNCATE, no record id or values) per table emptied.';

DO $$
DECLARE
    t record;
BEGIN
    -- The seven tables V24 audits.
    FOR t IN SELECT * FROM (VALUES
        ('execution', 'orders'),
        ('execution', 'trades'),
        ('execution', 'positions'),
        ('strategy_engine', 'strategies'),
        ('risk_management', 'risk_limits'),
        ('shared', 'system_config'),
        ('notification', 'notification_configs')) AS v(sch, tab)
    LOOP
        EXECUTE format(
            'CREATE TRIGGER trg_%2$s_audit_truncate AFTER TRUNCATE ON %1$I.%2$I
                 FOR EACH STATEMENT EXECUTE FUNCTION shared.audit_truncate()',
            t.sch, t.tab);
    END LOOP;
END;
$$;

-- 3. A trade's order in the trade's account ----------------------------------------------------

ALTER TABLE execution.orders
    ADD CONSTRAINT orders_account_order_key UNIQUE (account_id, order_id);
ALTER TABLE execution.trades
    ADD CONSTRAINT trades_account_order_fkey FOREIGN KEY (account_id, order_id)
        REFERENCES execution.orders (account_id, order_id) NOT VALID;

COMMENT ON CONSTRAINT orders_account_order_key ON execution.orders IS
    'Target of trades_account_order_fkey: a trade names an order of its own account.';
COMMENT ON CONSTRAINT trades_account_order_fkey ON execution.trades IS
    'A trade''s order belongs to the trade''s account (FK checks bypass RLS). NOT VALID for rows before V29: ALTER TABLE execution.trades VALIDATE CONSTRAINT trades_account_order_fkey.';

-- 4. strategies.version ------------------------------------------------------------------------

COMMENT ON COLUMN strategy_engine.strategies.version IS
    'Optimistic-locking version: +1 on every UPDATE of the row (trigger, V25), not only when parameters change (V8''s meaning). Keep a parameters version of your own if you need one.';
