//! The checks several sections share: numeric ranges, IANA time zones, cron schedules, and the
//! memory a byte budget must stay under. Each names the key it checks; none opens a connection.

use std::fmt;
use std::str::FromStr;

use super::ConfigError;

/// `value` within `min..=max`; an error names `key` and the bounds.
pub(super) fn range<T: PartialOrd + fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

pub(super) fn parse_tz(key: &str, name: &str) -> Result<chrono_tz::Tz, ConfigError> {
    name.parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{name}` is not an IANA time zone")))
}

/// A five-field cron expression that fires: croner also takes a sixth (seconds) field, which
/// would make `0 17 * * 1-5` mean something else if a field were added by mistake; and a date
/// that never comes (`0 17 31 2 *`) would make the scheduler fail at every start, restarting.
pub(super) fn parse_schedule(
    key: &str,
    expression: &str,
    tz: chrono_tz::Tz,
) -> Result<croner::Cron, ConfigError> {
    let fields = expression.split_whitespace().count();
    // "@daily" and the like are croner's nicknames for five-field expressions.
    if fields != 5 && !(fields == 1 && expression.starts_with('@')) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "`{expression}` has {fields} fields; five are expected (minute hour day month \
                 weekday)"
            ),
        ));
    }
    let cron = croner::Cron::from_str(expression).map_err(|e| {
        ConfigError::invalid(key, format!("`{expression}` is not a cron expression: {e}"))
    })?;
    let now = chrono::Utc::now().with_timezone(&tz);
    match cron.find_next_occurrence(&now, false) {
        // Within a leap cycle: `29 2` fires at least every eight years.
        Ok(next) if next - now <= chrono::Duration::days(8 * 366) => Ok(cron),
        _ => Err(ConfigError::invalid(
            key,
            format!("`{expression}` never fires (no date matches it)"),
        )),
    }
}

/// A byte budget the machine (or the cgroup) can hold: one larger than the memory there is
/// bounds nothing, and the process would be killed before reading paused.
pub(super) fn within_memory(key: &str, bytes: usize) -> Result<(), ConfigError> {
    match memory_limit() {
        Some(limit) if bytes as u64 > limit => Err(ConfigError::invalid(
            key,
            format!(
                "{bytes} bytes is more than this machine's (or cgroup's MemoryMax) {limit}: no \
                 bound at all"
            ),
        )),
        _ => Ok(()),
    }
}

/// The memory a queue can have at most: the machine's, or the cgroup's (systemd's MemoryMax)
/// when smaller. None when neither can be read (not Linux).
fn memory_limit() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
    let cgroup = cgroup_memory_limit();
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// The memory limit of this process's cgroup or of any cgroup above it (systemd puts a unit's
/// MemoryMax on the unit's own cgroup): v2's `memory.max`, v1's `memory.limit_in_bytes`; "max"
/// and v1's near-i64::MAX value mean none.
fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (root, file, path) = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            Some(("/sys/fs/cgroup".to_owned(), "memory.max", path.to_owned()))
        } else if controllers.split(',').any(|c| c == "memory") {
            Some((
                "/sys/fs/cgroup/memory".to_owned(),
                "memory.limit_in_bytes",
                path.to_owned(),
            ))
        } else {
            None
        }
    })?;
    let mut dir = std::path::PathBuf::from(format!("{root}{path}"));
    let mut limit: Option<u64> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            if let Ok(value) = text.trim().parse::<u64>() {
                if value < (1 << 62) {
                    limit = Some(limit.map_or(value, |l| l.min(value)));
                }
            }
        }
        if dir.as_os_str().len() <= root.len() || !dir.pop() {
            return limit;
        }
    }
}
