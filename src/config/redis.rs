//! `[redis]`: where Redis is, its password, the channels' prefix and the reconnect backoff.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::secrets::read_secret;
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` URL, or `unix://` / `redis+unix://` for a socket; its password is a secret.
    /// No `rediss://`: this build has no TLS to Redis.
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
    /// The URL as the redis client will read it (password file applied), the channel prefix
    /// and the backoff cap.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("redis.url", format!("not a URL: {e}")))?;
        match url.scheme() {
            "redis" | "unix" | "redis+unix" => {}
            // The redis crate is built without a TLS feature: every connection would fail.
            "rediss" => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    "rediss:// (TLS) is not supported by this build; use redis://",
                ))
            }
            other => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!("scheme `{other}` is not redis://, unix:// or redis+unix://"),
                ))
            }
        }
        // Reads the password file and refuses a URL that cannot carry its password.
        let effective = self.effective_url()?;
        // The client's own reading, which every connection attempt repeats: a database that is
        // not a number, a missing or wildcard host, an unknown protocol would otherwise fail
        // each of them, the daemon retrying forever.
        ::redis::IntoConnectionInfo::into_connection_info(effective.as_str()).map_err(|e| {
            ConfigError::invalid("redis.url", format!("the redis client refuses it: {e}"))
        })?;
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
        url.set_password(Some(&password)).map_err(|()| {
            ConfigError::invalid(
                "redis.url",
                "cannot carry a password: redis.password_file needs a redis:// URL",
            )
        })?;
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
        assert_accepted(|c| c.redis.url = "unix:///run/redis/redis.sock".into());
        assert_accepted(|c| c.redis.url = "redis+unix:///run/redis.sock?db=1&pass=pw".into());
    }

    /// The redis crate is built without TLS: a rediss:// URL would fail every connection.
    #[test]
    fn url_is_not_tls() {
        let message = assert_refused("redis.url", |c| {
            c.redis.url = "rediss://cache:6380/0".into()
        });
        assert!(message.contains("TLS"), "{message}");
    }

    /// What the redis client refuses when it opens the URL, check-config refuses first.
    #[test]
    fn url_is_one_the_redis_client_takes() {
        for (url, says) in [
            ("redis://cache:6379/zero", "Invalid database number"),
            ("redis://0.0.0.0:6379/0", "wildcard"),
            ("redis:///0", "Missing hostname"),
            ("redis://cache:6379/0?protocol=resp9", "Invalid protocol"),
            ("unix:///run/redis.sock?db=zero", "Invalid database number"),
        ] {
            let message = assert_refused("redis.url", |c| c.redis.url = url.into());
            assert!(message.contains(says), "{url}: {message}");
        }
    }

    /// A socket URL has no userinfo to put the file's password in.
    #[test]
    fn password_file_needs_a_url_with_userinfo() {
        jail(|jail| {
            jail.create_file("redis-pw", "pw\n")?;
            let message = assert_refused("redis.url", |c| {
                c.redis.url = "unix:///run/redis.sock".into();
                c.redis.password_file = Some("redis-pw".into());
            });
            assert!(message.starts_with("cannot carry a password"), "{message}");
            Ok(())
        });
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
