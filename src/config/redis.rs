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

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_range, assert_refused, jail};

    #[test]
    fn url_must_be_a_redis_url() {
        let message = assert_refused("redis.url", |c| c.redis.url = "not a url".into());
        assert!(message.starts_with("not a URL"), "{message}");
        let message = assert_refused("redis.url", |c| c.redis.url = "http://127.0.0.1".into());
        assert!(message.contains("`http`"), "{message}");
        assert_accepted(|c| c.redis.url = "redis://:pw@cache:6380/2".into());
    }

    #[test]
    fn password_file_must_be_readable() {
        jail(|_| {
            let message = assert_refused("redis.password_file", |c| {
                c.redis.password_file = Some("/nonexistent/redis-pw".into())
            });
            assert!(message.contains("/nonexistent/redis-pw"), "{message}");
            Ok(())
        });
    }

    /// The file's password replaces the URL's, whatever its characters.
    #[test]
    fn password_file_is_applied_to_the_url() {
        jail(|jail| {
            jail.create_file("redis-pw", "p@ss/w rd\n")?;
            let mut redis = super::RedisConfig {
                url: "redis://:old@cache:6380/2".into(),
                ..Default::default()
            };
            assert_eq!(redis.effective_url().unwrap(), redis.url);
            redis.password_file = Some("redis-pw".into());
            let url = url::Url::parse(&redis.effective_url().unwrap()).unwrap();
            assert_eq!(url.password(), Some("p%40ss%2Fw%20rd"));
            assert_eq!(
                (url.host_str(), url.port(), url.path()),
                (Some("cache"), Some(6380), "/2")
            );
            Ok(())
        });
    }

    #[test]
    fn channel_prefix_is_a_literal_name() {
        for prefix in ["", "data*", "d?ta", "[ds]", "data sync"] {
            assert_refused("redis.channel_prefix", |c| {
                c.redis.channel_prefix = prefix.into()
            });
        }
        assert_accepted(|c| c.redis.channel_prefix = "{ds}:prod".into());
    }

    #[test]
    fn reconnect_max_backoff_ms_bounds() {
        assert_range("redis.reconnect_max_backoff_ms", 10, 600_000, |c, v| {
            c.redis.reconnect_max_backoff_ms = v
        });
    }
}
