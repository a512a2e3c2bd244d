-- V30: two more outcomes of `dead-letters replay`, recorded in analytics.dead_letters.replay_result.
--
-- * 'stale': a position snapshot or a market-data bar that changed nothing — the books hold a
--   newer snapshot or price already (or no portfolio row has the bar's symbol). Until now such a
--   replay said 'applied'. Decided for good, as 'applied' and 'duplicate' are.
-- * 'beyond_retention': a trade executed before the ledger-retention horizon (V21's
--   analytics.ledger_retention.retired_through, or maintenance.ledger_retention_days, plus a
--   day): its ledger row may have been retired into the baseline, so applying it could count it
--   twice. Not applied; reconcile refuses the same trades. Taken again by the next replay (the
--   configured part of the horizon moves back if the setting is raised).

ALTER TABLE analytics.dead_letters
    DROP CONSTRAINT dead_letters_replay_result_check,
    ADD CONSTRAINT dead_letters_replay_result_check CHECK (
        replay_result IN ('applied', 'duplicate', 'stale', 'still_invalid', 'beyond_retention'));
