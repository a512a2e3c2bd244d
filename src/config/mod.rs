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
#[cfg(test)]
mod testing;
mod tls;
mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use self::database::{DatabaseConfig, PgTarget};
pub use self::jobs::{IndicatorsConfig, MaintenanceConfig, ReconcileConfig};
pub use self::observability::{HttpConfig, LogConfig, LogFormat};
pub use self::redis::{RedisConfig, RedisEndpoint};
pub use self::secrets::{mask_secrets, mask_url};
pub use self::sync::SyncConfig;
pub use self::tls::{ClientIdentity, Roots, SslMode, TlsSettings, Verify};
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

    /// The PostgreSQL connection settings with the password file and TLS files applied.
    pub fn pg_target(&self) -> Result<PgTarget, ConfigError> {
        self.database.pg_target()
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::testing::{assert_accepted, assert_refused, jail};
    use super::*;

    /// `./config.toml`, which may be absent: what `run` uses without `--config`.
    fn load_default() -> Result<Config, ConfigError> {
        Config::load(&ConfigSource {
            path: "config.toml".into(),
            required: false,
        })
    }

    fn invalid_key(result: Result<Config, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            Err(other) => panic!("refused, but not with a key: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    fn parse_error(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(e @ ConfigError::Parse(_)) => e.to_string(),
            Err(other) => panic!("not a parse error: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn the_defaults_are_valid_and_apply_without_file_or_environment() {
        assert_accepted(|_| {});
        jail(|_| {
            assert!(load_default().unwrap() == Config::default());
            Ok(())
        });
    }

    #[test]
    fn the_shipped_config_toml_states_the_defaults() {
        jail(|_| {
            let shipped = Config::load(&ConfigSource {
                path: Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"),
                required: true,
            })
            .unwrap();
            assert_eq!(shipped.to_masked_toml(), Config::default().to_masked_toml());
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_path_must_exist() {
        jail(|_| {
            let (key, message) = invalid_key(Config::load(&ConfigSource {
                path: "/nonexistent/trading-sync.toml".into(),
                required: true,
            }));
            assert_eq!(key, "--config");
            assert!(
                message.contains("/nonexistent/trading-sync.toml"),
                "{message}"
            );
            Ok(())
        });
    }

    const FILE: &str = r#"
        [database]
        url = "postgres://file@127.0.0.1/from_file"
        pool_size = 3
        [redis]
        url = "redis://file-host:6379/1"
        [sync]
        batch_max_events = 100
        exchange_timezone = "Europe/London"
        [transport]
        trades = "stream"
        [streams]
        consumer = "from-file"
    "#;

    #[test]
    fn the_file_overrides_the_defaults_key_by_key() {
        jail(|jail| {
            jail.create_file("config.toml", FILE)?;
            let config = load_default().unwrap();
            assert_eq!(config.database.url, "postgres://file@127.0.0.1/from_file");
            assert_eq!(config.database.pool_size, 3);
            assert_eq!(config.sync.batch_max_events, 100);
            assert_eq!(config.exchange_tz().unwrap(), chrono_tz::Europe::London);
            assert_eq!(config.transport.trades, Transport::Stream);
            assert_eq!(config.streams.consumer.as_deref(), Some("from-file"));
            // What the file does not name keeps its default, in the same sections too.
            let defaults = Config::default();
            assert_eq!(config.database.statement_timeout_ms, 10_000);
            assert_eq!(config.sync.batch_max_wait_ms, 5);
            assert_eq!(config.transport.positions, Transport::Pubsub);
            assert!(config.indicators == defaults.indicators);
            Ok(())
        });
    }

    #[test]
    fn the_environment_overrides_the_file() {
        jail(|jail| {
            jail.create_file("config.toml", FILE)?;
            jail.set_env("TRADING_SYNC__DATABASE__POOL_SIZE", "5");
            jail.set_env("TRADING_SYNC__SYNC__EXCHANGE_TIMEZONE", "Asia/Tokyo");
            jail.set_env("TRADING_SYNC__TRANSPORT__TRADES", "both");
            jail.set_env("TRADING_SYNC__STREAMS__CONSUMER", "from-env");
            jail.set_env("TRADING_SYNC__LOG__FILTER", "debug");
            jail.set_env("TRADING_SYNC__JOURNAL__TRIM_INTERVAL_MS", "250");
            let config = load_default().unwrap();
            assert_eq!(config.database.pool_size, 5);
            assert_eq!(config.exchange_tz().unwrap(), chrono_tz::Asia::Tokyo);
            assert_eq!(config.transport.trades, Transport::Both);
            assert_eq!(config.streams.consumer.as_deref(), Some("from-env"));
            assert_eq!(config.log.filter.as_deref(), Some("debug"));
            assert_eq!(config.journal.trim_interval_ms, 250);
            // The file still holds for what the environment does not name.
            assert_eq!(config.database.url, "postgres://file@127.0.0.1/from_file");
            assert_eq!(config.sync.batch_max_events, 100);
            Ok(())
        });
    }

    /// The names every PostgreSQL and Redis tool understands win over the prefixed ones.
    #[test]
    fn database_url_and_redis_url_win_over_the_prefixed_variables() {
        jail(|jail| {
            jail.create_file("config.toml", FILE)?;
            jail.set_env(
                "TRADING_SYNC__DATABASE__URL",
                "postgres://p@127.0.0.1/prefixed",
            );
            jail.set_env("TRADING_SYNC__REDIS__URL", "redis://prefixed:6379/0");
            let config = load_default().unwrap();
            assert_eq!(config.database.url, "postgres://p@127.0.0.1/prefixed");
            assert_eq!(config.redis.url, "redis://prefixed:6379/0");
            jail.set_env("DATABASE_URL", "postgres://e@127.0.0.1/from_env");
            jail.set_env("REDIS_URL", "redis://from-env:6379/0");
            let config = load_default().unwrap();
            assert_eq!(config.database.url, "postgres://e@127.0.0.1/from_env");
            assert_eq!(config.redis.url, "redis://from-env:6379/0");
            Ok(())
        });
    }

    /// A `*_URL_FILE` wins over every other source of its URL; its trailing line break is not
    /// part of the URL.
    #[test]
    fn url_files_win_over_url_variables() {
        jail(|jail| {
            jail.create_file("config.toml", FILE)?;
            let dir = jail.directory().to_owned();
            jail.create_file("db_url", "postgres://u:fromfile@127.0.0.1/file_db\n")?;
            jail.create_file("redis_url", "redis://:fromfile@file-redis:6379/3\r\n")?;
            jail.create_file("replica_url", "postgres://ro:fromfile@10.0.0.2/t\n")?;
            jail.set_env("DATABASE_URL", "postgres://e@127.0.0.1/from_env");
            jail.set_env("REDIS_URL", "redis://from-env:6379/0");
            jail.set_env("TRADING_SYNC__DATABASE__REPLICA_URL", "postgres://ro@env/t");
            jail.set_env("DATABASE_URL_FILE", dir.join("db_url").display());
            jail.set_env("REDIS_URL_FILE", dir.join("redis_url").display());
            jail.set_env(
                "DATABASE_REPLICA_URL_FILE",
                dir.join("replica_url").display(),
            );
            let config = load_default().unwrap();
            assert_eq!(
                config.database.url,
                "postgres://u:fromfile@127.0.0.1/file_db"
            );
            assert_eq!(config.redis.url, "redis://:fromfile@file-redis:6379/3");
            assert_eq!(
                config.database.replica_url.as_deref(),
                Some("postgres://ro:fromfile@10.0.0.2/t")
            );
            Ok(())
        });
    }

    /// systemd's `LoadCredential=`: a relative secret path is looked up in
    /// `$CREDENTIALS_DIRECTORY`, an absolute one is not; without it, in the working directory.
    #[test]
    fn relative_secret_paths_resolve_in_the_credentials_directory() {
        jail(|jail| {
            jail.create_dir("creds")?;
            jail.create_file("creds/db_url", "postgres://u@127.0.0.1/from_creds\n")?;
            jail.create_file("creds/pw", "pw-in-creds\n")?;
            jail.create_file("db_url", "postgres://u@127.0.0.1/from_cwd\n")?;
            jail.create_file("pw", "pw-in-cwd\n")?;
            jail.create_file(
                "config.toml",
                "[database]\npassword_file = \"pw\"\n[redis]\npassword_file = \"pw\"\n",
            )?;
            jail.set_env("DATABASE_URL_FILE", "db_url");
            let config = load_default().unwrap();
            assert_eq!(config.database.url, "postgres://u@127.0.0.1/from_cwd");
            assert_eq!(
                config.pg_target().unwrap().pg.get_password(),
                Some(&b"pw-in-cwd"[..])
            );

            let creds = jail.directory().join("creds");
            jail.set_env("CREDENTIALS_DIRECTORY", creds.display());
            let config = load_default().unwrap();
            assert_eq!(config.database.url, "postgres://u@127.0.0.1/from_creds");
            assert_eq!(
                config.pg_target().unwrap().pg.get_password(),
                Some(&b"pw-in-creds"[..])
            );
            assert!(
                config
                    .redis
                    .effective_url()
                    .unwrap()
                    .contains(":pw-in-creds@"),
                "the redis password file too"
            );

            let absolute = jail.directory().join("db_url");
            jail.set_env("DATABASE_URL_FILE", absolute.display());
            let config = load_default().unwrap();
            assert_eq!(config.database.url, "postgres://u@127.0.0.1/from_cwd");
            Ok(())
        });
    }

    #[test]
    fn a_missing_url_file_names_its_variable() {
        for var in [
            "DATABASE_URL_FILE",
            "REDIS_URL_FILE",
            "DATABASE_REPLICA_URL_FILE",
        ] {
            jail(|jail| {
                jail.set_env(var, "/nonexistent/url");
                let (key, message) = invalid_key(load_default());
                assert_eq!(key, var);
                assert!(message.contains("/nonexistent/url"), "{message}");
                Ok(())
            });
        }
    }

    #[test]
    fn an_empty_url_file_is_refused() {
        jail(|jail| {
            jail.create_file("db_url", "\n")?;
            jail.set_env("DATABASE_URL_FILE", "db_url");
            let (key, message) = invalid_key(load_default());
            assert_eq!(key, "DATABASE_URL_FILE");
            assert!(message.ends_with("is empty"), "{message}");
            Ok(())
        });
    }

    /// What `load` returns has passed `validate`: `check-config` and `run` load the same way.
    #[test]
    fn load_validates() {
        jail(|jail| {
            jail.set_env("TRADING_SYNC__DATABASE__POOL_SIZE", "0");
            assert_eq!(invalid_key(load_default()).0, "database.pool_size");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        for (file, name) in [
            ("[sync]\nbatch_max_event = 3\n", "batch_max_event"),
            ("[nosuchsection]\na = 1\n", "nosuchsection"),
        ] {
            jail(|jail| {
                jail.create_file("config.toml", file)?;
                let message = parse_error(load_default());
                assert!(message.contains(name), "{message}");
                Ok(())
            });
        }
        jail(|jail| {
            jail.set_env("TRADING_SYNC__REDIS__PASWORD", "x");
            let message = parse_error(load_default());
            assert!(message.contains("pasword"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_with_their_name() {
        for (file, name) in [
            ("[sync]\nbatch_max_events = \"many\"\n", "batch_max_events"),
            ("[log]\nformat = \"xml\"\n", "format"),
            ("[transport]\ntrades = \"carrier-pigeon\"\n", "trades"),
            ("[database]\npool_size = -1\n", "pool_size"),
        ] {
            jail(|jail| {
                jail.create_file("config.toml", file)?;
                let message = parse_error(load_default());
                assert!(message.contains(name), "{file}: {message}");
                Ok(())
            });
        }
    }

    /// A TOML syntax error quotes the offending line: the URL's password must not show.
    #[test]
    fn a_syntax_error_does_not_show_the_password() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[database]\nurl = \"postgres://app:s3cret-q@db/trading_system\n",
            )?;
            let message = parse_error(load_default());
            assert!(!message.contains("s3cret-q"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn an_invalid_value_is_masked_in_the_message() {
        let error = ConfigError::invalid("database.url", "cannot use postgres://u:pw@h/db");
        assert_eq!(
            error.to_string(),
            "database.url: cannot use postgres://u:********@h/db"
        );
    }

    /// What `check-config` prints: every secret masked, the derived journal key shown, and
    /// still a configuration file (so it can be saved and edited).
    #[test]
    fn the_masked_rendering_hides_every_url_password() {
        let mut config = Config::default();
        config.database.url = "postgres://app:hunter2@127.0.0.1/trading_system".into();
        config.database.replica_url = Some("postgres://ro:tiger@10.0.0.2/trading_system".into());
        config.redis.url = "redis://:swordfish@127.0.0.1:6379/0".into();
        config.redis.channel_prefix = "{ds}".into();
        let shown = config.to_masked_toml();
        for secret in ["hunter2", "tiger", "swordfish"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("url = \"postgres://app:********@127.0.0.1/trading_system\""),
            "{shown}"
        );
        assert!(
            shown.contains("replica_url = \"postgres://ro:********@10.0.0.2/trading_system\""),
            "{shown}"
        );
        assert!(
            shown.contains("url = \"redis://:********@127.0.0.1:6379/0\""),
            "{shown}"
        );
        assert!(shown.contains("key = \"{ds}:journal\""), "{shown}");
        assert_eq!(format!("{config:?}"), shown);
        let reread: Config = toml::from_str(&shown).unwrap();
        assert_eq!(reread.journal.key.as_deref(), Some("{ds}:journal"));
        assert_eq!(reread.sync.batch_max_events, config.sync.batch_max_events);
    }

    /// Rules across sections: the journal's key is not a channel's, whatever the prefix.
    #[test]
    fn the_journal_key_is_not_a_channel_key() {
        for channel in ["trades", "positions", "market_data"] {
            let message = assert_refused("journal.key", |c| {
                c.journal.key = Some(format!("data_sync:{channel}"))
            });
            assert!(
                message.contains(&format!("the {channel} channel's key")),
                "{message}"
            );
        }
        assert_refused("journal.key", |c| {
            c.redis.channel_prefix = "{ds}".into();
            c.journal.key = Some("{ds}:trades".into());
        });
        assert_accepted(|c| {
            c.redis.channel_prefix = "{ds}".into();
            c.journal.key = Some("data_sync:trades".into());
        });
        assert_eq!(Config::default().journal_key(), "data_sync:journal");
    }

    #[test]
    fn the_journal_buffer_holds_one_message() {
        let message = assert_refused("journal.buffer_max_bytes", |c| {
            c.sync.max_message_bytes = 100_000;
            c.journal.buffer_max_bytes = 99_999;
        });
        assert!(
            message.contains("sync.max_message_bytes (100000)"),
            "{message}"
        );
        assert_accepted(|c| {
            c.sync.max_message_bytes = 100_000;
            c.journal.buffer_max_bytes = 100_000;
        });
    }

    /// Figment reads an unquoted `0` from the environment as a number, which a string
    /// setting refuses (naming it); quoted, it is the string. Pinned so that a change is seen.
    #[test]
    fn a_string_setting_that_looks_like_a_number_is_quoted_in_the_environment() {
        jail(|jail| {
            jail.set_env("TRADING_SYNC__STREAMS__START_ID", "0");
            // The key as the variable spells it: STREAMS.START_ID.
            let message = parse_error(load_default()).to_lowercase();
            assert!(message.contains("streams.start_id"), "{message}");
            jail.set_env("TRADING_SYNC__STREAMS__START_ID", "\"0\"");
            assert_eq!(load_default().unwrap().streams.start_id, "0");
            jail.set_env("TRADING_SYNC__STREAMS__START_ID", "1712345678901-0");
            assert_eq!(load_default().unwrap().streams.start_id, "1712345678901-0");
            Ok(())
        });
    }
}
