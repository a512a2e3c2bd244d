//! The daemon's background jobs: `[indicators]` (technical indicators, on a schedule and after
//! new bars), `[maintenance]` (partitions, log archiving, retention) and `[reconcile]` (healing
//! the aggregates from the source tables).

use serde::{Deserialize, Serialize};

use super::check::{parse_schedule, parse_tz, range};
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndicatorsConfig {
    /// Whether the daemon runs the indicator job at all.
    pub enabled: bool,
    /// Five-field cron expression, evaluated in `timezone`.
    pub schedule: String,
    pub timezone: String,
    /// Run once at start to catch up on bars that arrived while the daemon was down.
    pub run_at_start: bool,
    /// Recompute a symbol seconds after a `market_data_updated` event for a yahoo bar.
    pub on_market_data: bool,
    /// Quiet period that folds a burst of bar events into one run.
    pub debounce_ms: u64,
    /// How long a chunk waits for `database.replica_url` to replay the primary's WAL before
    /// reading its bars from the primary instead.
    pub replica_max_wait_ms: u64,
}

impl Default for IndicatorsConfig {
    fn default() -> Self {
        IndicatorsConfig {
            enabled: true,
            schedule: "0 17 * * 1-5".into(),
            timezone: "America/New_York".into(),
            run_at_start: true,
            on_market_data: true,
            debounce_ms: 2_000,
            replica_max_wait_ms: 5_000,
        }
    }
}

impl IndicatorsConfig {
    /// Zone and schedule (checked even when disabled: enabling it must not be what breaks a
    /// start), the debounce and the replica wait.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.schedule()?;
        range("indicators.debounce_ms", self.debounce_ms, 0, 3_600_000)?;
        range(
            "indicators.replica_max_wait_ms",
            self.replica_max_wait_ms,
            0,
            600_000,
        )
    }

    pub fn tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        parse_tz("indicators.timezone", &self.timezone)
    }

    /// The schedule in its zone; an invalid zone is reported first, under its own key.
    pub fn schedule(&self) -> Result<croner::Cron, ConfigError> {
        parse_schedule("indicators.schedule", &self.schedule, self.tz()?)
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Run the seed's DatabaseMaintenance tasks inside the daemon (once across instances).
    pub enabled: bool,
    /// Five-field cron expression in `timezone`.
    pub schedule: String,
    pub timezone: String,
    /// Create market_data yearly partitions up to this many years ahead (0 = off).
    pub partitions_ahead_years: u32,
    /// logging.system_logs / performance_logs older than this move to the archive tables (0 = keep).
    pub log_retention_days: u32,
    /// Archive (as the seed does) rather than delete old logs.
    pub archive_logs: bool,
    /// analytics.dead_letters older than this are deleted (0 = keep).
    pub dead_letter_retention_days: u32,
    /// analytics.applied_trades rows older than this are deleted (0 = keep). A trade replayed
    /// after its ledger row is gone would be counted again: keep this longer than any replay.
    pub ledger_retention_days: u32,
    /// ANALYZE every analytics table (the review's update_statistics), through V26's function.
    pub analyze: bool,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            schedule: "30 3 * * *".into(),
            timezone: "America/New_York".into(),
            partitions_ahead_years: 1,
            log_retention_days: 30,
            archive_logs: true,
            dead_letter_retention_days: 90,
            ledger_retention_days: 400,
            analyze: true,
        }
    }
}

impl MaintenanceConfig {
    /// Zone and schedule, and the horizons that reach PostgreSQL as dates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.schedule()?;
        // Reconcile and verify compute a horizon from it: past ~2.4 M days PostgreSQL's
        // timestamps overflow and every run would fail.
        range(
            "maintenance.ledger_retention_days",
            self.ledger_retention_days,
            0,
            36_500,
        )?;
        range(
            "maintenance.partitions_ahead_years",
            self.partitions_ahead_years,
            0,
            50,
        )
    }

    pub fn tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        parse_tz("maintenance.timezone", &self.timezone)
    }

    /// The schedule in its zone; an invalid zone is reported first, under its own key.
    pub fn schedule(&self) -> Result<croner::Cron, ConfigError> {
        parse_schedule("maintenance.schedule", &self.schedule, self.tz()?)
    }
}

/// `reconcile`: heal the aggregates from execution.trades, execution.positions and market_data
/// (what events did not deliver), in the daemon and as a command.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run it inside the daemon: at start once the backlog drained, after every Redis
    /// resubscription, and every `interval_secs` (once across instances).
    pub enabled: bool,
    /// Seconds between scheduled runs.
    pub interval_secs: u64,
    /// Trade rows written less than this long ago (database clock) are left for a later run, so
    /// that an event still in flight is applied from the event, not raced.
    pub grace_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            enabled: true,
            interval_secs: 300,
            grace_ms: 5_000,
        }
    }
}

impl ReconcileConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        range("reconcile.interval_secs", self.interval_secs, 1, 86_400)?;
        range("reconcile.grace_ms", self.grace_ms, 0, 3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_range, assert_refused};

    #[test]
    fn indicators_timezone_is_an_iana_zone() {
        assert_refused("indicators.timezone", |c| {
            c.indicators.timezone = "New York".into()
        });
    }

    /// Five fields that fire: a sixth field would be read as seconds, a date that never comes
    /// would fail the scheduler at every start. Checked even with the job disabled.
    #[test]
    fn indicators_schedule_is_five_fields_that_fire() {
        for (schedule, says) in [
            ("0 0 17 * * 1-5", "has 6 fields"),
            ("17 * *", "has 3 fields"),
            ("61 * * * *", "is not a cron expression"),
            ("0 17 31 2 *", "never fires"),
            ("@sometimes", "is not a cron expression"),
        ] {
            let message = assert_refused("indicators.schedule", |c| {
                c.indicators.enabled = false;
                c.indicators.schedule = schedule.into();
            });
            assert!(message.contains(says), "{schedule}: {message}");
        }
        // Once every four years still fires.
        assert_accepted(|c| c.indicators.schedule = "0 12 29 2 *".into());
        assert_accepted(|c| c.indicators.schedule = "@daily".into());
    }

    #[test]
    fn indicators_debounce_ms_bounds() {
        assert_range("indicators.debounce_ms", 0, 3_600_000, |c, v| {
            c.indicators.debounce_ms = v
        });
    }

    #[test]
    fn indicators_replica_max_wait_ms_bounds() {
        assert_range("indicators.replica_max_wait_ms", 0, 600_000, |c, v| {
            c.indicators.replica_max_wait_ms = v
        });
    }

    #[test]
    fn maintenance_timezone_is_an_iana_zone() {
        assert_refused("maintenance.timezone", |c| {
            c.maintenance.timezone = "Europe/Atlantis".into()
        });
    }

    #[test]
    fn maintenance_schedule_is_five_fields_that_fire() {
        for (schedule, says) in [
            ("30 3 30 2 *", "never fires"),
            ("0 30 3 * * *", "has 6 fields"),
            ("30 25 * * *", "is not a cron expression"),
        ] {
            let message = assert_refused("maintenance.schedule", |c| {
                c.maintenance.schedule = schedule.into()
            });
            assert!(message.contains(says), "{schedule}: {message}");
        }
        assert_accepted(|c| c.maintenance.schedule = "@weekly".into());
    }

    #[test]
    fn maintenance_ledger_retention_days_bounds() {
        assert_range("maintenance.ledger_retention_days", 0, 36_500, |c, v| {
            c.maintenance.ledger_retention_days = v as u32
        });
    }

    #[test]
    fn maintenance_partitions_ahead_years_bounds() {
        assert_range("maintenance.partitions_ahead_years", 0, 50, |c, v| {
            c.maintenance.partitions_ahead_years = v as u32
        });
    }

    #[test]
    fn reconcile_interval_secs_bounds() {
        assert_range("reconcile.interval_secs", 1, 86_400, |c, v| {
            c.reconcile.interval_secs = v
        });
    }

    #[test]
    fn reconcile_grace_ms_bounds() {
        assert_range("reconcile.grace_ms", 0, 3_600_000, |c, v| {
            c.reconcile.grace_ms = v
        });
    }
}
