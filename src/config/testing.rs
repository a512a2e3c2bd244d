//! What the config tests share: validating tweaked defaults, a numeric setting's bounds, and a
//! jail for the tests that read the environment or files.

use figment::Jail;

use super::{Config, ConfigError};

/// The key and message `Config::validate` refuses the defaults with once `tweak`ed.
pub(super) fn refusal(tweak: impl FnOnce(&mut Config)) -> (String, String) {
    let mut config = Config::default();
    tweak(&mut config);
    match config.validate() {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        Err(other) => panic!("refused, but not with a key: {other}"),
        Ok(()) => panic!("accepted"),
    }
}

/// Asserts `Config::validate` refuses the tweaked defaults under `key`; returns the message.
#[track_caller]
pub(super) fn assert_refused(key: &str, tweak: impl FnOnce(&mut Config)) -> String {
    let (named, message) = refusal(tweak);
    assert_eq!(named, key, "refused under another key: {message}");
    message
}

#[track_caller]
pub(super) fn assert_accepted(tweak: impl FnOnce(&mut Config)) {
    let mut config = Config::default();
    tweak(&mut config);
    if let Err(e) = config.validate() {
        panic!("refused: {e}");
    }
}

/// A numeric setting's bounds: `min` and `max` accepted, one past either refused under `key`
/// with both bounds in the message.
#[track_caller]
pub(super) fn assert_range(key: &str, min: u64, max: u64, set: impl Fn(&mut Config, u64)) {
    let bounds = format!("{min}..={max}");
    if min > 0 {
        let message = assert_refused(key, |c| set(c, min - 1));
        assert!(message.contains(&bounds), "{message}");
    }
    assert_accepted(|c| set(c, min));
    assert_accepted(|c| set(c, max));
    let message = assert_refused(key, |c| set(c, max + 1));
    assert!(message.contains(&bounds), "{message}");
}

/// Runs `f` in a figment jail: a fresh working directory, one jailed test at a time, every
/// variable set there restored afterwards. The variables the loader reads are removed first,
/// so that the developer's (or CI's) own settings cannot leak into what is tested; the rest of
/// the environment is left alone for the tests running beside it. The tests' closures return
/// figment's large error boxed; the one handed to figment has to return it as figment says.
#[allow(clippy::result_large_err)]
pub(super) fn jail(f: impl FnOnce(&mut Jail) -> Result<(), Box<figment::Error>>) {
    Jail::expect_with(|jail| {
        let read_by_config = |name: &str| {
            name.starts_with("TRADING_SYNC")
                || name.ends_with("_URL")
                || name.ends_with("_URL_FILE")
                || name == "CREDENTIALS_DIRECTORY"
        };
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str().filter(|n| read_by_config(n)) {
                // set_env records the old value for the jail to restore; then it is removed.
                jail.set_env(name, "");
                std::env::remove_var(name);
            }
        }
        f(jail).map_err(|e| *e)
    });
}
