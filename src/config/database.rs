//! `[database]`: where PostgreSQL is, its secrets, and the writer's time limits; the connection
//! settings every stage builds its connections from.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::secrets::read_secret;
use super::tls::{self, TlsFiles, TlsSettings};
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
    /// PEM file of the CA(s) the server's certificate must chain to, or `system` for the OS
    /// roots; the URL's `sslrootcert` overrides it (README, "PostgreSQL over TLS").
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for servers that ask for one; the URL's `sslcert`
    /// overrides it.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of that certificate's private key, unencrypted; the URL's `sslkey` overrides it.
    pub tls_key_file: Option<PathBuf>,
}

/// Where one connection goes and how: tokio-postgres's settings, and the TLS settings its
/// parser cannot hold.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
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
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl DatabaseConfig {
    /// URLs, secret and TLS files (read and parsed, as the connections will), pool size and
    /// time limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_pg_url("database.url", &self.url)?;
        self.tls_settings("database.url", &self.url)?;
        if let Some(url) = &self.replica_url {
            validate_pg_url("database.replica_url", url)?;
            self.tls_settings("database.replica_url", url)?;
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

    /// The primary's connection settings with the password file and TLS files applied.
    pub fn pg_target(&self) -> Result<PgTarget, ConfigError> {
        self.connection_config(
            "database.url",
            &self.url,
            self.password_file
                .as_deref()
                .map(|p| (p, "database.password_file")),
        )
    }

    /// The replica's connection settings, if `replica_url` is set; its own TLS parameters
    /// override the `tls_*_file` keys.
    pub fn replica_pg_target(&self) -> Result<Option<PgTarget>, ConfigError> {
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
    ) -> Result<PgTarget, ConfigError> {
        let (plain, _) = tls::split_url(url);
        let mut pg = tokio_postgres::Config::from_str(&plain)
            .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
        if let Some((path, key)) = password_file {
            pg.password(read_secret(path, key)?);
        }
        pg.connect_timeout(std::time::Duration::from_millis(self.connect_timeout_ms));
        if pg.get_application_name().is_none() {
            pg.application_name("trading-sync");
        }
        let tls = self.tls_settings(key, url)?;
        pg.ssl_mode(tls.transport_mode());
        Ok(PgTarget { pg, tls })
    }

    /// `url`'s TLS parameters over the `tls_*_file` keys, files read and parsed.
    fn tls_settings(&self, key: &str, url: &str) -> Result<TlsSettings, ConfigError> {
        let (_, params) = tls::split_url(url);
        let files = TlsFiles {
            ca: self.tls_ca_file.as_deref(),
            cert: self.tls_cert_file.as_deref(),
            key: self.tls_key_file.as_deref(),
        };
        tls::settings(key, &params, &files)
    }
}

/// A libpq-style URL with a database name; its TLS parameters are checked apart
/// ([`DatabaseConfig::tls_settings`]). An error names `key`.
fn validate_pg_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let (plain, _) = tls::split_url(url);
    let pg = tokio_postgres::Config::from_str(&plain)
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

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_range, assert_refused, jail};

    #[test]
    fn url_must_be_a_postgres_url_naming_a_database() {
        let message = assert_refused("database.url", |c| c.database.url = "mysql://x/y".into());
        assert!(message.starts_with("not a PostgreSQL URL"), "{message}");
        let message = assert_refused("database.url", |c| {
            c.database.url = "postgres://h/db?sslmode=sometimes".into()
        });
        assert!(message.contains("sslmode=sometimes"), "{message}");
        // libpq's key=value form (the empty string is one) is a connection string, not a URL.
        for url in ["host=127.0.0.1 dbname=trading_system", ""] {
            let message = assert_refused("database.url", |c| c.database.url = url.into());
            assert!(
                message.contains("must start with postgres://"),
                "{url}: {message}"
            );
        }
        let message = assert_refused("database.url", |c| {
            c.database.url = "postgres://127.0.0.1".into()
        });
        assert!(message.contains("names no database"), "{message}");
        assert_accepted(|c| c.database.url = "postgresql://u@h1:5432,h2:5433/t".into());
    }

    /// Every libpq sslmode is accepted; verify-* need a root certificate, as in libpq.
    #[test]
    fn url_sslmodes_are_libpqs() {
        for mode in ["disable", "prefer", "require"] {
            assert_accepted(|c| c.database.url = format!("postgres://app@db/t?sslmode={mode}"));
        }
        for mode in ["verify-ca", "verify-full"] {
            assert_accepted(|c| {
                c.database.url = format!("postgres://app@db/t?sslmode={mode}&sslrootcert=system")
            });
            let message = assert_refused("database.url", |c| {
                c.database.url = format!("postgres://a@h1,h2:5433/t?sslmode={mode}")
            });
            assert!(message.contains("need a root certificate"), "{message}");
        }
    }

    /// The files exist and parse, a key comes with its certificate, encrypted keys are
    /// refused; each error names the key; URL parameters override the keys.
    #[test]
    fn tls_files_are_checked_and_named() {
        jail(|jail| {
            let message = assert_refused("database.tls_ca_file", |c| {
                c.database.url = "postgres://a@h/t?sslmode=verify-full".into();
                c.database.tls_ca_file = Some("/nonexistent/ca.pem".into());
            });
            assert!(message.contains("/nonexistent/ca.pem"), "{message}");
            let message = assert_refused("database.url (sslrootcert)", |c| {
                c.database.url = "postgres://a@h/t?sslrootcert=/nonexistent/ca.pem".into();
            });
            assert!(message.contains("cannot read"), "{message}");
            jail.create_file("garbage.pem", "not pem\n")?;
            let message = assert_refused("database.tls_ca_file", |c| {
                c.database.tls_ca_file = Some("garbage.pem".into());
            });
            assert!(message.contains("no PEM certificate"), "{message}");
            jail.create_file(
                "enc.key",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            )?;
            let message = assert_refused("database.tls_key_file", |c| {
                c.database.tls_cert_file = Some("garbage.pem".into());
                c.database.tls_key_file = Some("enc.key".into());
            });
            assert!(message.contains("enc.key is encrypted"), "{message}");
            let message = assert_refused("database.tls_key_file", |c| {
                c.database.tls_key_file = Some("enc.key".into());
            });
            assert!(message.contains("no certificate"), "{message}");
            let message = assert_refused("database.tls_cert_file", |c| {
                c.database.tls_cert_file = Some("garbage.pem".into());
            });
            assert!(message.contains("no key"), "{message}");
            // The replica's own parameters override the keys for the replica only.
            let message = assert_refused("database.replica_url (sslrootcert)", |c| {
                c.database.replica_url =
                    Some("postgres://ro@standby/t?sslrootcert=/nonexistent/r.pem".into());
            });
            assert!(message.contains("/nonexistent/r.pem"), "{message}");
            assert_accepted(|c| {
                c.database.tls_ca_file = Some("garbage.pem".into());
                c.database.url = "postgres://a@h/t?sslrootcert=system&sslmode=verify-full".into();
                c.database.replica_url =
                    Some("postgres://ro@standby/t?sslrootcert=system&sslmode=verify-ca".into());
            });
            Ok(())
        });
    }

    #[test]
    fn replica_url_is_held_to_the_same_rules() {
        for url in [
            "mysql://x/y",
            "postgres://127.0.0.1",
            "",
            "postgres://ro@standby/t?sslmode=verify-full",
        ] {
            assert_refused("database.replica_url", |c| {
                c.database.replica_url = Some(url.into())
            });
        }
        assert_accepted(|c| c.database.replica_url = Some("postgres://ro@10.0.0.2/t".into()));
    }

    #[test]
    fn password_files_must_be_readable_and_not_empty() {
        jail(|jail| {
            let message = assert_refused("database.password_file", |c| {
                c.database.password_file = Some("/nonexistent/pw".into())
            });
            assert!(message.contains("/nonexistent/pw"), "{message}");
            assert_refused("database.replica_password_file", |c| {
                c.database.replica_password_file = Some("/nonexistent/pw".into())
            });
            jail.create_file("empty", "\n")?;
            let message = assert_refused("database.password_file", |c| {
                c.database.password_file = Some("empty".into())
            });
            assert!(message.ends_with("is empty"), "{message}");
            jail.create_file("pw", "s3cret\n")?;
            assert_accepted(|c| {
                c.database.password_file = Some("pw".into());
                c.database.replica_password_file = Some("pw".into());
            });
            Ok(())
        });
    }

    /// The password file replaces the URL's password; the replica's falls back to the
    /// primary's (a physical standby has the primary's roles) unless it has its own.
    #[test]
    fn password_files_are_applied_to_the_connections() {
        jail(|jail| {
            jail.create_file("primary", "pw-primary\r\n")?;
            jail.create_file("replica", "pw-replica\n")?;
            let mut db = super::DatabaseConfig {
                url: "postgres://app:in-url@db/trading_system".into(),
                replica_url: Some("postgres://ro@standby/trading_system".into()),
                password_file: Some("primary".into()),
                connect_timeout_ms: 1_234,
                ..Default::default()
            };
            let pg = db.pg_target().unwrap().pg;
            assert_eq!(pg.get_password(), Some(&b"pw-primary"[..]));
            assert_eq!(pg.get_user(), Some("app"));
            assert_eq!(pg.get_application_name(), Some("trading-sync"));
            assert_eq!(
                pg.get_connect_timeout(),
                Some(&std::time::Duration::from_millis(1_234))
            );
            let replica = db.replica_pg_target().unwrap().unwrap().pg;
            assert_eq!(replica.get_password(), Some(&b"pw-primary"[..]));
            db.replica_password_file = Some("replica".into());
            let replica = db.replica_pg_target().unwrap().unwrap().pg;
            assert_eq!(replica.get_password(), Some(&b"pw-replica"[..]));
            assert_eq!(replica.get_user(), Some("ro"));
            db.replica_url = None;
            assert!(db.replica_pg_target().unwrap().is_none());
            Ok(())
        });
    }

    #[test]
    fn an_application_name_in_the_url_is_kept() {
        let db = super::DatabaseConfig {
            url: "postgres://app@db/t?application_name=mine".into(),
            ..Default::default()
        };
        assert_eq!(
            db.pg_target().unwrap().pg.get_application_name(),
            Some("mine")
        );
    }

    #[test]
    fn pool_size_bounds() {
        assert_range("database.pool_size", 1, 512, |c, v| {
            c.database.pool_size = v as usize
        });
    }

    #[test]
    fn connect_timeout_ms_bounds() {
        assert_range("database.connect_timeout_ms", 100, 600_000, |c, v| {
            c.database.connect_timeout_ms = v
        });
    }

    #[test]
    fn slow_query_ms_bounds() {
        assert_range("database.slow_query_ms", 1, 3_600_000, |c, v| {
            c.database.slow_query_ms = v
        });
    }

    #[test]
    fn statement_timeout_ms_bounds() {
        assert_range("database.statement_timeout_ms", 100, 600_000, |c, v| {
            c.database.statement_timeout_ms = v
        });
    }

    #[test]
    fn lock_timeout_ms_bounds() {
        assert_range("database.lock_timeout_ms", 100, 600_000, |c, v| {
            c.database.lock_timeout_ms = v
        });
    }
}
