//! `[redis]`: where Redis is, its password, the channels' prefix and the reconnect backoff.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::secrets::read_secret;
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; its password is a secret.
    pub url: String,
    /// File holding the Redis password (AUTH); overrides one in `url`.
    pub password_file: Option<PathBuf>,
    /// Channel prefix: channels are `<prefix>:trades`, `<prefix>:positions`, `<prefix>:market_data`.
    pub channel_prefix: String,
    /// Cap of the reconnect backoff.
    pub reconnect_max_backoff_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            password_file: None,
            channel_prefix: "data_sync".into(),
            reconnect_max_backoff_ms: 5_000,
        }
    }
}

impl RedisConfig {
    /// The URL, the password file, the channel prefix and the backoff cap.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.password_file {
            read_secret(p, "redis.password_file")?;
        }
        let url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("redis.url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "redis" | "rediss" | "unix" | "redis+unix") {
            return Err(ConfigError::invalid(
                "redis.url",
                format!("scheme `{}` is not redis:// or rediss://", url.scheme()),
            ));
        }
        if self.channel_prefix.is_empty() || self.channel_prefix.contains(['*', '?', '[', ']', ' '])
        {
            return Err(ConfigError::invalid(
                "redis.channel_prefix",
                "must be non-empty and contain no glob characters or spaces",
            ));
        }
        range(
            "redis.reconnect_max_backoff_ms",
            self.reconnect_max_backoff_ms,
            10,
            600_000,
        )
    }

    /// The Redis URL with the password file applied.
    pub fn effective_url(&self) -> Result<String, ConfigError> {
        let Some(p) = &self.password_file else {
            return Ok(self.url.clone());
        };
        let password = read_secret(p, "redis.password_file")?;
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?;
        url.set_password(Some(&password))
            .map_err(|()| ConfigError::invalid("redis.url", "cannot carry a password"))?;
        Ok(url.to_string())
    }
}
