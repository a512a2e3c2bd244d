//! `[redis]`: where Redis is, its password and TLS files, the channels' prefix and the reconnect
//! backoff; and [`RedisEndpoint`], through which every Redis connection of the daemon is opened.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::secrets::read_secret;
use super::tls::{redis_certificates, TlsFiles};
use super::ConfigError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URL, or `unix://` / `redis+unix://` for a socket; its
    /// password is a secret.
    pub url: String,
    /// File holding the Redis password (AUTH); overrides one in `url`.
    pub password_file: Option<PathBuf>,
    /// With `rediss://`: the CA that signed the server's certificate (PEM). Unset, the operating
    /// system's roots are used. Relative paths resolve in `$CREDENTIALS_DIRECTORY`.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: a client certificate (PEM), for a server run with
    /// `--tls-auth-clients yes`; needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, not encrypted).
    pub tls_key_file: Option<PathBuf>,
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
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
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
            "redis" | "rediss" | "unix" | "redis+unix" => {}
            other => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!(
                        "scheme `{other}` is not redis://, rediss://, unix:// or redis+unix://"
                    ),
                ))
            }
        }
        // redis-rs's `#insecure` turns certificate checks off, and this build leaves that feature
        // out: every connection would fail. A self-signed server needs its CA, not no check.
        if url.fragment() == Some("insecure") {
            return Err(ConfigError::invalid(
                "redis.url",
                "#insecure (no certificate verification) is not supported: give the server's CA \
                 in redis.tls_ca_file",
            ));
        }
        // The files, read and checked, and the client's own reading of the URL, which every
        // connection attempt repeats: a database that is not a number, a missing or wildcard
        // host, an unknown protocol would otherwise fail each of them, the daemon retrying
        // forever.
        self.endpoint()?.client().map_err(|e| {
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

    /// The URL with the password file applied and, for `rediss://`, the TLS files read.
    pub fn endpoint(&self) -> Result<RedisEndpoint, ConfigError> {
        let url = self.effective_url()?;
        let files = TlsFiles {
            ca: self.tls_ca_file.as_deref(),
            cert: self.tls_cert_file.as_deref(),
            key: self.tls_key_file.as_deref(),
        };
        let is_tls = url::Url::parse(&url).is_ok_and(|u| u.scheme() == "rediss");
        let tls = if is_tls {
            Some(redis_certificates(&files)?)
        } else {
            // A TLS file that would be ignored is a mistake in the URL or in the file's key.
            let set = [
                ("redis.tls_ca_file", files.ca),
                ("redis.tls_cert_file", files.cert),
                ("redis.tls_key_file", files.key),
            ];
            if let Some((key, _)) = set.iter().find(|(_, path)| path.is_some()) {
                return Err(ConfigError::invalid(
                    key,
                    "is set but redis.url is not rediss://: TLS files apply only to TLS",
                ));
            }
            None
        };
        Ok(RedisEndpoint { url, tls })
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

/// Where and how to reach Redis: the URL with its password, and for `rediss://` the
/// certificates. Pub/sub, the stream reader and acker, and the journal all connect through it.
#[derive(Clone)]
pub struct RedisEndpoint {
    /// Holds the password: never logged (see `mask_url`).
    url: String,
    /// `Some` exactly for `rediss://`.
    tls: Option<::redis::TlsCertificates>,
}

impl RedisEndpoint {
    /// A client for this endpoint; it connects only when asked to.
    pub fn client(&self) -> ::redis::RedisResult<::redis::Client> {
        match &self.tls {
            None => ::redis::Client::open(self.url.as_str()),
            Some(certificates) => {
                install_crypto_provider();
                ::redis::Client::build_with_tls(self.url.as_str(), certificates.clone())
            }
        }
    }

    /// The same endpoint with `protocol=resp3` in the URL: pushes, and so the subscription's
    /// automatic resubscription, exist only there.
    pub fn resp3(&self) -> Result<RedisEndpoint, ConfigError> {
        let mut parsed = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?;
        let others: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "protocol")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed
            .query_pairs_mut()
            .clear()
            .extend_pairs(others)
            .append_pair("protocol", "resp3");
        Ok(RedisEndpoint {
            url: parsed.to_string(),
            tls: self.tls.clone(),
        })
    }

    /// Whether connections are encrypted (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a client certificate is presented (`redis.tls_cert_file`).
    pub fn has_client_certificate(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_tls.is_some())
    }

    /// The URL without its password, for messages.
    pub fn masked(&self) -> String {
        super::mask_url(&self.url)
    }
}

/// redis-rs builds its rustls client from the process-wide default provider. ring is the only
/// one compiled in (PostgreSQL's TLS names it explicitly); installing it here makes that choice
/// explicit, so a second provider pulled in by a future dependency cannot turn into rustls's
/// run-time panic ("no process-level CryptoProvider available").
fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err means one is installed already, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
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

    /// rediss:// is TLS with the system's roots unless a CA is given; `#insecure` (no
    /// verification) is refused rather than failing every connection.
    ///
    /// In a jail: another test sets SSL_CERT_FILE, which the system's roots are read from.
    #[test]
    fn url_may_be_tls_but_not_unverified() {
        jail(|_| {
            assert_accepted(|c| c.redis.url = "rediss://:pw@cache:6380/0".into());
            let message = assert_refused("redis.url", |c| {
                c.redis.url = "rediss://cache:6380/0#insecure".into()
            });
            assert!(message.contains("redis.tls_ca_file"), "{message}");
            Ok(())
        });
    }

    /// redis-rs reads the system's roots on every TLS connection and fails on any error doing
    /// so; check-config reads them first.
    #[test]
    fn system_roots_must_be_readable_for_tls() {
        jail(|jail| {
            jail.set_env("SSL_CERT_FILE", "/nonexistent/roots.pem");
            let message = assert_refused("redis.url", |c| {
                c.redis.url = "rediss://cache:6380/0".into()
            });
            assert!(message.contains("/nonexistent/roots.pem"), "{message}");
            assert_accepted(|c| c.redis.url = "redis://cache:6379/0".into());
            Ok(())
        });
    }

    /// The TLS files are read and checked as run reads them; each error names its key.
    #[test]
    fn tls_files_are_checked_and_named() {
        jail(|jail| {
            let tls = |c: &mut crate::config::Config| c.redis.url = "rediss://cache:6380/0".into();
            let message = assert_refused("redis.tls_ca_file", |c| {
                tls(c);
                c.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
            });
            assert!(message.contains("/nonexistent/ca.pem"), "{message}");
            jail.create_file("garbage.pem", "not pem\n")?;
            let message = assert_refused("redis.tls_ca_file", |c| {
                tls(c);
                c.redis.tls_ca_file = Some("garbage.pem".into());
            });
            assert!(message.contains("no PEM certificate"), "{message}");
            let message = assert_refused("redis.tls_cert_file", |c| {
                tls(c);
                c.redis.tls_cert_file = Some("garbage.pem".into());
            });
            assert!(message.contains("no key"), "{message}");
            jail.create_file(
                "enc.key",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            )?;
            let message = assert_refused("redis.tls_key_file", |c| {
                tls(c);
                c.redis.tls_key_file = Some("enc.key".into());
            });
            assert!(message.contains("no certificate"), "{message}");
            let message = assert_refused("redis.tls_key_file", |c| {
                tls(c);
                c.redis.tls_cert_file = Some("garbage.pem".into());
                c.redis.tls_key_file = Some("enc.key".into());
            });
            assert!(message.contains("enc.key is encrypted"), "{message}");
            Ok(())
        });
    }

    /// A TLS file with a plain URL would be silently ignored: refused, naming the file's key.
    #[test]
    fn tls_files_need_a_tls_url() {
        for url in ["redis://cache:6379/0", "unix:///run/redis.sock"] {
            let message = assert_refused("redis.tls_cert_file", |c| {
                c.redis.url = url.into();
                c.redis.tls_cert_file = Some("/etc/ssl/client.pem".into());
            });
            assert!(message.contains("rediss://"), "{message}");
        }
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
