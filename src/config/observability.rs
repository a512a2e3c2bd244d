//! How the daemon is watched: `[http]` (/metrics, /healthz, /readyz) and `[log]` (format,
//! filter, summary lines).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve /metrics, /healthz and /readyz.
    pub enabled: bool,
    pub listen: String,
    /// /readyz answers 503 once the batch writer has held a batch uncommitted this long (the
    /// database refusing, a lock wait, a hang), not only when the database is unreachable.
    pub readyz_stall_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:9187".into(),
            readyz_stall_secs: 30,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        range("http.readyz_stall_secs", self.readyz_stall_secs, 1, 86_400)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError::invalid(
                "http.listen",
                format!("`{}` is not host:port: {e}", self.listen),
            )
        })
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd, text otherwise.
    #[default]
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// tracing filter used when RUST_LOG is unset.
    pub filter: Option<String>,
    /// Seconds between the info-level summary lines (rates, queue, lag); 0 = off.
    pub summary_interval_secs: u64,
    /// Write the daemon's own events and its performance records into `logging.system_logs` and
    /// `logging.performance_logs` (centralized logs).
    pub database: bool,
    /// The least severe level written there: `warn` (default), `error` or `info`.
    pub database_level: String,
}

/// What `log.database_level` accepts, lower case as written in the file.
const DATABASE_LEVELS: [(&str, tracing::Level); 3] = [
    ("error", tracing::Level::ERROR),
    ("warn", tracing::Level::WARN),
    ("info", tracing::Level::INFO),
];

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            filter: None,
            summary_interval_secs: 60,
            database: true,
            database_level: "warn".into(),
        }
    }
}

impl LogConfig {
    /// The summary interval, and the filter parsed as logging setup will parse it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        range(
            "log.summary_interval_secs",
            self.summary_interval_secs,
            0,
            86_400,
        )?;
        if let Some(filter) = &self.filter {
            tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| ConfigError::invalid("log.filter", e.to_string()))?;
        }
        self.database_level()?;
        Ok(())
    }

    /// `log.database_level` as a tracing level. Debug and trace are refused: at those levels the
    /// capture would cost every event of the data path a visit and a push.
    pub fn database_level(&self) -> Result<tracing::Level, ConfigError> {
        let wanted = self.database_level.trim().to_ascii_lowercase();
        DATABASE_LEVELS
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, level)| *level)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "log.database_level",
                    format!("`{}` is not one of warn, error, info", self.database_level),
                )
            })
    }

    /// The level captured for the database, or None with `log.database = false`.
    pub fn database_capture(&self) -> Option<tracing::Level> {
        if self.database {
            self.database_level().ok()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_range, assert_refused, jail};

    /// An address to bind, not a name to resolve; checked even with the server disabled.
    #[test]
    fn http_listen_is_host_and_port() {
        for listen in [
            "localhost",
            "localhost:9187",
            "127.0.0.1",
            "127.0.0.1:99999",
        ] {
            let message = assert_refused("http.listen", |c| {
                c.http.enabled = false;
                c.http.listen = listen.into();
            });
            assert!(message.contains(&format!("`{listen}`")), "{message}");
        }
        assert_accepted(|c| c.http.listen = "[::1]:9187".into());
    }

    #[test]
    fn http_readyz_stall_secs_bounds() {
        assert_range("http.readyz_stall_secs", 1, 86_400, |c, v| {
            c.http.readyz_stall_secs = v
        });
    }

    #[test]
    fn log_summary_interval_secs_bounds() {
        assert_range("log.summary_interval_secs", 0, 86_400, |c, v| {
            c.log.summary_interval_secs = v
        });
    }

    #[test]
    fn log_database_level_is_warn_error_or_info() {
        for level in ["debug", "trace", "warning", ""] {
            let message = assert_refused("log.database_level", |c| {
                c.log.database_level = level.into()
            });
            assert!(message.contains(&format!("`{level}`")), "{message}");
        }
        for level in ["warn", "error", "info", "ERROR"] {
            assert_accepted(|c| c.log.database_level = level.into());
        }
        let mut log = super::LogConfig::default();
        assert_eq!(log.database_capture(), Some(tracing::Level::WARN));
        log.database = false;
        assert_eq!(log.database_capture(), None);
    }

    /// From the file and the environment, as `check-config` and `run` read them.
    #[test]
    fn log_database_keys_load_from_the_file_and_the_environment() {
        use crate::config::{Config, ConfigError, ConfigSource};
        jail(|jail| {
            let source = ConfigSource {
                path: "config.toml".into(),
                required: true,
            };
            jail.create_file(
                "config.toml",
                "[log]\ndatabase = false\ndatabase_level = \"error\"\n",
            )?;
            let config = Config::load(&source).unwrap();
            assert!(!config.log.database);
            assert_eq!(config.log.database_level().unwrap(), tracing::Level::ERROR);
            jail.set_env("TRADING_SYNC__LOG__DATABASE", "true");
            jail.set_env("TRADING_SYNC__LOG__DATABASE_LEVEL", "info");
            let config = Config::load(&source).unwrap();
            assert_eq!(config.log.database_capture(), Some(tracing::Level::INFO));
            jail.set_env("TRADING_SYNC__LOG__DATABASE_LEVEL", "loud");
            match Config::load(&source) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "log.database_level"),
                other => panic!("not refused under log.database_level: {other:?}"),
            }
            Ok(())
        });
    }

    #[test]
    fn log_filter_parses_as_a_tracing_filter() {
        assert_refused("log.filter", |c| c.log.filter = Some("info,[".into()));
        assert_refused("log.filter", |c| {
            c.log.filter = Some("trading_sync=loud".into())
        });
        assert_accepted(|c| c.log.filter = Some("info,trading_sync=debug".into()));
    }
}
