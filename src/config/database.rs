//! `[database]`: where PostgreSQL is, its secrets, and the writer's time limits; the connection
//! settings every stage builds its connections from.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::secrets::read_secret;
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// libpq-style URL of the trading_system database; its password is a secret.
    pub url: String,
    /// File holding the password; overrides one in `url` so the URL itself can be public.
    pub password_file: Option<PathBuf>,
    /// A physical streaming replica of that database: the indicator job reads bars there.
    /// Its password is a secret, like `url`'s.
    pub replica_url: Option<String>,
    /// File holding the replica's password. Unset: `password_file` (a physical standby has
    /// the primary's roles).
    pub replica_password_file: Option<PathBuf>,
    /// Database `migrate` connects to when the target database does not exist yet.
    pub maintenance_db: String,
    /// Connections kept by the daemon's pool.
    pub pool_size: usize,
    /// How long a connection attempt may take before startup reports the host unreachable.
    pub connect_timeout_ms: u64,
    /// Queries slower than this are logged and counted (the seed's DatabaseMonitoring).
    pub slow_query_ms: u64,
    /// The batch writer's statement_timeout: a statement running longer is cancelled and the
    /// batch retried. Below the unit's WatchdogSec (30 s): a stuck statement does not beat the
    /// watchdog, and systemd would kill the daemon with its queue.
    pub statement_timeout_ms: u64,
    /// The batch writer's lock_timeout: a batch waiting this long on a row lock (a long
    /// transaction of someone else's) is rolled back and retried.
    pub lock_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/trading_system".into(),
            password_file: None,
            replica_url: None,
            replica_password_file: None,
            maintenance_db: "postgres".into(),
            pool_size: 8,
            connect_timeout_ms: 5_000,
            slow_query_ms: 1_000,
            statement_timeout_ms: 10_000,
            lock_timeout_ms: 5_000,
        }
    }
}

impl DatabaseConfig {
    /// URLs, secret files (read, as the connections will), pool size and time limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_pg_url("database.url", &self.url)?;
        if let Some(url) = &self.replica_url {
            validate_pg_url("database.replica_url", url)?;
        }
        if let Some(p) = &self.password_file {
            read_secret(p, "database.password_file")?;
        }
        if let Some(p) = &self.replica_password_file {
            read_secret(p, "database.replica_password_file")?;
        }
        range("database.pool_size", self.pool_size, 1, 512)?;
        range(
            "database.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        range("database.slow_query_ms", self.slow_query_ms, 1, 3_600_000)?;
        range(
            "database.statement_timeout_ms",
            self.statement_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "database.lock_timeout_ms",
            self.lock_timeout_ms,
            100,
            600_000,
        )
    }

    /// The primary's connection settings with the password file applied.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        self.connection_config(
            "database.url",
            &self.url,
            self.password_file
                .as_deref()
                .map(|p| (p, "database.password_file")),
        )
    }

    /// The replica's connection settings, if `replica_url` is set.
    pub fn replica_pg_config(&self) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        let Some(url) = &self.replica_url else {
            return Ok(None);
        };
        let password = match (&self.replica_password_file, &self.password_file) {
            (Some(p), _) => Some((p.as_path(), "database.replica_password_file")),
            (None, Some(p)) => Some((p.as_path(), "database.password_file")),
            (None, None) => None,
        };
        self.connection_config("database.replica_url", url, password)
            .map(Some)
    }

    fn connection_config(
        &self,
        key: &str,
        url: &str,
        password_file: Option<(&Path, &str)>,
    ) -> Result<tokio_postgres::Config, ConfigError> {
        let mut pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
        if let Some((path, key)) = password_file {
            pg.password(read_secret(path, key)?);
        }
        pg.connect_timeout(std::time::Duration::from_millis(self.connect_timeout_ms));
        if pg.get_application_name().is_none() {
            pg.application_name("trading-sync");
        }
        Ok(pg)
    }
}

/// A libpq-style URL with a database name; an error names `key`.
fn validate_pg_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let pg = tokio_postgres::Config::from_str(url)
        .map_err(|e| ConfigError::invalid(key, format!("not a PostgreSQL URL: {e}")))?;
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(ConfigError::invalid(
            key,
            "must start with postgres:// or postgresql://",
        ));
    }
    if pg.get_dbname().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(
            key,
            "names no database (add /trading_system)",
        ));
    }
    Ok(())
}
