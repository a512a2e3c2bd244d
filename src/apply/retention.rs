//! The ledger-retention horizon every path that applies a trade after the fact respects
//! (reconcile from trade rows, `dead-letters replay` from stored events): maintenance deletes
//! ledger rows past `maintenance.ledger_retention_days`, folding them into a baseline, so a
//! trade executed before the horizon may have been counted already with no ledger row left to
//! say so. Applying it again would count it twice; it is refused as `beyond_retention`.

use chrono::{DateTime, Utc};

/// The database clock, and the retention horizon on it: the later of the configured one ($1,
/// days; 0 = ledger kept forever) and what retention has retired through (V21's watermark),
/// plus a day's margin — a trade's executed_at in its row and in its event may differ a little,
/// and retention compares the event's. NULL when nothing can have been retired. FOR SHARE:
/// retention raises the watermark (an UPDATE of that row) before it deletes, so it waits for a
/// transaction that read it, and the next one sees the new value; a retention run cannot retire
/// a trade's ledger row between the read and the apply.
pub const HORIZON: &str = "\
SELECT now(),
       NULLIF(GREATEST(r.retired_through,
                       CASE WHEN $1::int4 > 0 THEN now() - make_interval(days => $1::int4) END),
              '-infinity') + interval '1 day'
  FROM analytics.ledger_retention r
   FOR SHARE";

/// `maintenance.ledger_retention_days` as HORIZON's parameter.
pub fn horizon_days(ledger_retention_days: u32) -> i32 {
    i32::try_from(ledger_retention_days).unwrap_or(i32::MAX)
}

/// Whether a trade executed at `executed_at` is past the horizon HORIZON returned.
pub fn beyond(executed_at: DateTime<Utc>, horizon: Option<DateTime<Utc>>) -> bool {
    horizon.is_some_and(|h| executed_at < h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_horizon_is_beyond_and_no_horizon_refuses_nothing() {
        let h: DateTime<Utc> = "2026-01-10T00:00:00Z".parse().unwrap();
        assert!(beyond("2026-01-09T23:59:59Z".parse().unwrap(), Some(h)));
        assert!(!beyond(h, Some(h)));
        assert!(!beyond("2000-01-01T00:00:00Z".parse().unwrap(), None));
        assert_eq!(horizon_days(u32::MAX), i32::MAX);
        assert_eq!(horizon_days(400), 400);
    }
}
