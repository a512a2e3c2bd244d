//! Typed configuration: built-in defaults, then the TOML file, then the environment.
//!
//! This module owns the [`Config`] that gathers the sections, its loading and precedence, the
//! rules that span two sections, and the masked rendering `check-config` prints. Each section
//! lives in its own module with its defaults and its own `validate` beside its fields; secret
//! files and masking live in `secrets`. Nothing here opens a connection: everything is checkable
//! offline.
//!
//! Precedence (later wins): [`Config::default`] → the TOML file → `TRADING_SYNC__SECTION__KEY`
//! variables → `DATABASE_URL` / `REDIS_URL` (the names every PostgreSQL and Redis tool already
//! understands) → `DATABASE_URL_FILE` / `REDIS_URL_FILE` / `DATABASE_REPLICA_URL_FILE`. Secrets
//! may come from files (`database.password_file`, `database.replica_password_file`,
//! `redis.password_file`, `*_URL_FILE`); a relative secret path is
//! resolved against `$CREDENTIALS_DIRECTORY`, so systemd's `LoadCredential=` works unchanged.

mod check;
mod database;
mod jobs;
mod observability;
mod redis;
mod secrets;
mod sync;
mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use self::database::DatabaseConfig;
pub use self::jobs::{IndicatorsConfig, MaintenanceConfig, ReconcileConfig};
pub use self::observability::{HttpConfig, LogConfig, LogFormat};
pub use self::redis::RedisConfig;
pub use self::secrets::{mask_secrets, mask_url};
pub use self::sync::SyncConfig;
pub use self::transport::{JournalConfig, StreamsConfig, Transport, TransportConfig};

use self::secrets::read_secret;

/// Why a configuration could not be used. Every message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Masked: a TOML syntax error quotes the offending line, which may be the URL.
    #[error("{}", mask_secrets(&.0.to_string()))]
    Parse(Box<figment::Error>),
    /// Masked: a message may quote the offending value.
    #[error("{key}: {}", mask_secrets(message))]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub sync: SyncConfig,
    pub indicators: IndicatorsConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub maintenance: MaintenanceConfig,
    pub transport: TransportConfig,
    pub streams: StreamsConfig,
    pub journal: JournalConfig,
    pub reconcile: ReconcileConfig,
}

/// Where the file comes from: an explicit path must exist; the default `./config.toml` may be absent.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub required: bool,
}

impl Config {
    /// Loads defaults → file → environment and validates the result.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        if source.required && !source.path.exists() {
            return Err(ConfigError::invalid(
                "--config",
                format!("{} does not exist", source.path.display()),
            ));
        }
        // Toml::file (not file_exact) because the default path may legitimately be absent.
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&source.path))
            .merge(Env::prefixed("TRADING_SYNC__").split("__"))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        if let Ok(url) = std::env::var("DATABASE_URL") {
            config.database.url = url;
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            config.redis.url = url;
        }
        // A URL with its password in it kept out of the environment, which `ps e` and
        // /proc/<pid>/environ show: the file wins over the variable.
        if let Some(url) = url_from_file("DATABASE_URL_FILE")? {
            config.database.url = url;
        }
        if let Some(url) = url_from_file("REDIS_URL_FILE")? {
            config.redis.url = url;
        }
        if let Some(url) = url_from_file("DATABASE_REPLICA_URL_FILE")? {
            config.database.replica_url = Some(url);
        }
        config.validate()?;
        Ok(config)
    }

    /// Every check that can be made without a network: each section's own, then the rules
    /// that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.redis.validate()?;
        self.sync.validate()?;
        self.indicators.validate()?;
        self.http.validate()?;
        self.log.validate()?;
        self.maintenance.validate()?;
        self.transport.validate()?;
        self.streams.validate()?;
        self.journal.validate()?;
        self.reconcile.validate()?;
        self.validate_across_sections()
    }

    /// The rules that need two sections to decide.
    fn validate_across_sections(&self) -> Result<(), ConfigError> {
        let key = self.journal_key();
        // The stream transport reads the channel keys as streams: a journal there would be read
        // twice, once as events of one channel.
        if let Some((kind, _)) = crate::core::ChannelKind::names(&self.redis.channel_prefix)
            .iter()
            .find(|(_, name)| **name == key)
        {
            return Err(ConfigError::invalid(
                "journal.key",
                format!("`{key}` is the {kind} channel's key; the journal needs a key of its own"),
            ));
        }
        if self.journal.buffer_max_bytes < self.sync.max_message_bytes {
            return Err(ConfigError::invalid(
                "journal.buffer_max_bytes",
                format!(
                    "{} is smaller than sync.max_message_bytes ({}): one message could never fit",
                    self.journal.buffer_max_bytes, self.sync.max_message_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The journal's stream key: `journal.key`, or `<redis.channel_prefix>:journal`.
    pub fn journal_key(&self) -> String {
        self.journal
            .key
            .clone()
            .unwrap_or_else(|| format!("{}:journal", self.redis.channel_prefix))
    }

    pub fn exchange_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        self.sync.exchange_tz()
    }

    pub fn indicators_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        self.indicators.tz()
    }

    pub fn indicator_schedule(&self) -> Result<croner::Cron, ConfigError> {
        self.indicators.schedule()
    }

    pub fn maintenance_schedule(&self) -> Result<croner::Cron, ConfigError> {
        self.maintenance.schedule()
    }

    pub fn maintenance_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        self.maintenance.tz()
    }

    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen_addr()
    }

    /// The PostgreSQL connection settings with the password file applied.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        self.database.pg_config()
    }

    /// The effective settings as TOML with every secret replaced by `********`.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = mask_url(&shown.database.url);
        shown.database.replica_url = shown.database.replica_url.as_deref().map(mask_url);
        shown.redis.url = mask_url(&shown.redis.url);
        // The effective journal key, derived or not: check-config shows what will be used.
        shown.journal.key = Some(self.journal_key());
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

// Debug must never print a secret: these configs end up in logs through `?config`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_masked_toml())
    }
}

/// The secret file the environment variable `var` names, if it is set; an error names `var`.
fn url_from_file(var: &str) -> Result<Option<String>, ConfigError> {
    std::env::var(var)
        .ok()
        .map(|path| read_secret(Path::new(&path), var))
        .transpose()
}
