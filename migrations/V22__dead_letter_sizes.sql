-- V22: dead letters of oversized messages keep what can be kept, and say what was cut.
--
-- A message larger than sync.max_message_bytes is refused at the ingest edge, before it is queued
-- or journaled. Its dead letter keeps the whole payload up to sync.dead_letter_max_bytes (so it
-- can be replayed once the limit is raised); a larger one keeps its first 4 KiB, its size as
-- received and its SHA-256, and is marked not replayable. Until now a 50 MiB message was stored
-- as a 50 MiB row, kept for dead_letter_retention_days.

ALTER TABLE analytics.dead_letters
    ADD COLUMN payload_bytes   BIGINT,
    ADD COLUMN payload_sha256  BYTEA,
    ADD COLUMN replayable      BOOLEAN NOT NULL DEFAULT true;

UPDATE analytics.dead_letters SET payload_bytes = octet_length(payload);

ALTER TABLE analytics.dead_letters
    ALTER COLUMN payload_bytes SET NOT NULL,
    ADD CONSTRAINT dead_letters_payload_cut_check CHECK (
        (replayable AND octet_length(payload) = payload_bytes AND payload_sha256 IS NULL)
        OR (NOT replayable AND octet_length(payload) < payload_bytes
            AND payload_sha256 IS NOT NULL AND octet_length(payload_sha256) = 32));

COMMENT ON COLUMN analytics.dead_letters.payload IS
    'Raw bytes as received (may be non-UTF-8 or not JSON); only the first 4 KiB when replayable is false.';
COMMENT ON COLUMN analytics.dead_letters.payload_bytes IS 'Size of the message as received.';
COMMENT ON COLUMN analytics.dead_letters.payload_sha256 IS 'SHA-256 of the whole message, when payload holds only its first bytes.';
COMMENT ON COLUMN analytics.dead_letters.replayable IS 'Whether payload is the whole message (larger than sync.dead_letter_max_bytes: not).';
