-- V28: dead letters an operator can filter by reason, trace to their channel, and replay.
--
-- `trading-sync dead-letters list|show|replay|purge` work on this table. What they need:
--
-- * reason: the stable machine label of why the message was refused (the decoder's error kind:
--   not_json, missing_field, bad_value …; oversized; database; stream_entry), the label the
--   metric trading_sync_events_dead_lettered_total{reason} already carries. Until now only the
--   human message (error) was stored, so nothing could be filtered by kind. Rows written before
--   V28 are classified from their message where its wording is unambiguous; the others are
--   'unclassified' (bad_value and out_of_range, for one, read alike).
-- * channel: from V28 on, the channel (or stream key) as received, prefix included
--   (data_sync:trades), as V12's comment always said. Rows written before V28 hold the bare
--   suffix (trades): the prefix was not stored and is not guessed here.
-- * replayed_at, replay_result: what the last `dead-letters replay` of the row did — 'applied'
--   (its effect is in the books now), 'duplicate' (the ledger had the trade already: another path
--   applied it) or 'still_invalid' (refused again; reason and error then hold the new refusal).
--   A replayed row stays: it is the record of what happened to the message.
--
-- The table stops being append-only: replay UPDATEs those columns (and reason and error of a row
-- still invalid), and `dead-letters purge` DELETEs rows by id or age, as retention already did.
-- trading_sync has held SELECT, INSERT, UPDATE and DELETE on it since V17 (granted below again,
-- idempotently, so that this file says what the commands rely on). Row-level security is not
-- enabled on it (V23 enabled it on the execution tables and portfolio_summary only), and no
-- application role (trading_app) has any grant on it: the payloads are any account's messages.

-- reason defaults to 'unclassified' for a row inserted by hand; the daemon always sets it.
ALTER TABLE analytics.dead_letters
    ADD COLUMN reason         TEXT NOT NULL DEFAULT 'unclassified',
    ADD COLUMN replayed_at    TIMESTAMPTZ,
    ADD COLUMN replay_result  TEXT;

-- The wordings of src/events (DecodeError's messages) and src/apply, newest first.
UPDATE analytics.dead_letters SET reason = CASE
    WHEN error LIKE 'refused by the database: %' THEN 'database'
    WHEN error LIKE 'message of % bytes is larger than sync.max_message_bytes%'
      OR error LIKE 'message is % bytes, over the %-byte limit; not parsed' THEN 'oversized'
    WHEN error LIKE 'message is not UTF-8%' THEN 'not_utf8'
    WHEN error LIKE 'not JSON: %' THEN 'not_json'
    WHEN error LIKE 'message is JSON %, not an object' THEN 'not_object'
    WHEN error LIKE 'unknown event type %' THEN 'unknown_type'
    WHEN error LIKE 'event type % belongs on the % channel, not on %' THEN 'wrong_channel'
    WHEN error LIKE '%: required field is missing or null' THEN 'missing_field'
    WHEN error LIKE '%: expected %, found %' THEN 'bad_type'
    WHEN error LIKE 'stream entry has no `%` field holding the event'
      OR error LIKE 'journal entry has no valid `%` field'
      OR error LIKE 'delivered % times (streams.max_deliveries = %) without being applied'
      THEN 'stream_entry'
    ELSE 'unclassified'
END;

ALTER TABLE analytics.dead_letters
    ADD CONSTRAINT dead_letters_reason_not_blank CHECK (reason <> ''),
    ADD CONSTRAINT dead_letters_replay_result_check CHECK (
        replay_result IN ('applied', 'duplicate', 'still_invalid')),
    ADD CONSTRAINT dead_letters_replayed_together CHECK (
        (replayed_at IS NULL) = (replay_result IS NULL));

-- `list --reason R` and `status` (the last 24 h by reason) read by reason and time; `list
-- --trade-id` looks one trade up. received_at alone is indexed since V12.
CREATE INDEX idx_dead_letters_reason_received_at ON analytics.dead_letters (reason, received_at);
CREATE INDEX idx_dead_letters_trade_id ON analytics.dead_letters (trade_id) WHERE trade_id IS NOT NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON analytics.dead_letters TO trading_sync;

COMMENT ON TABLE analytics.dead_letters IS
    'Messages trading-sync could not apply, with the raw payload. Not append-only since V28: `dead-letters replay` records each row''s outcome (replayed_at, replay_result; reason and error when refused again), `dead-letters purge` and retention delete.';
COMMENT ON COLUMN analytics.dead_letters.channel IS
    'Pub/sub channel or stream key as received, prefix included (data_sync:trades). Rows written before V28 hold the suffix only (trades).';
COMMENT ON COLUMN analytics.dead_letters.error IS
    'Why it could not be applied, for a person; after a replay that refused it again, the new refusal.';
COMMENT ON COLUMN analytics.dead_letters.reason IS
    'Stable label of the refusal (not_json, missing_field, oversized, database, stream_entry …), as in the metric''s reason label; unclassified for some rows written before V28 and rows inserted by hand.';
COMMENT ON COLUMN analytics.dead_letters.replayed_at IS 'When `dead-letters replay` last decided this row; NULL if never replayed.';
COMMENT ON COLUMN analytics.dead_letters.replay_result IS
    'applied (now in the books), duplicate (the ledger had the trade) or still_invalid (refused again: see reason, error).';
