//! libpq's TLS parameters for PostgreSQL: taken out of a URL before tokio-postgres parses it
//! (its parser refuses `verify-ca`, `verify-full` and the `ssl*` file options), merged with the
//! `database.tls_*_file` keys, and their files read and parsed, so that `check-config` refuses
//! what a connection would. Building the TLS client from these settings is `db::tls`'s job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::secrets::resolve;
use super::ConfigError;

/// libpq's `sslmode`. The default, as in libpq, is `prefer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// What the server's certificate is checked against.
#[derive(Debug, Clone)]
pub enum Roots {
    /// No root given: `prefer` and `require` encrypt without checking the certificate.
    None,
    /// `sslrootcert=system`: the operating system's trust store.
    System,
    /// The CAs of `sslrootcert` or `database.tls_ca_file`.
    Store(Arc<RootCertStore>),
}

/// How the server's certificate is verified once TLS is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// libpq's `require` (and `prefer`) without a root certificate: encrypted, not verified.
    Nothing,
    /// The chain up to a trusted root; the host name is not checked (`verify-ca`, and libpq's
    /// `require` or `prefer` once a root certificate is given).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndName,
}

/// A client certificate chain and its private key (`sslcert` / `sslkey`).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

/// One connection target's TLS settings, files read and parsed.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub roots: Roots,
    pub client: Option<ClientIdentity>,
}

impl TlsSettings {
    /// libpq's rule: `verify-*` verify, and so does any mode that encrypts once a root
    /// certificate is given (libpq loads it and verifies the chain whatever the mode).
    pub fn verify(&self) -> Verify {
        match (self.mode, &self.roots) {
            (SslMode::VerifyFull, _) => Verify::ChainAndName,
            (SslMode::VerifyCa, _) => Verify::Chain,
            (_, Roots::None) => Verify::Nothing,
            (_, _) => Verify::Chain,
        }
    }

    /// The mode tokio-postgres is given: it knows only disable, prefer and require; `verify-*`
    /// are `require` plus the verifier `db::tls` builds.
    pub fn transport_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS parameters a URL carried, taken out of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct UrlTls {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

/// Splits `url` into the URL tokio-postgres can parse and the TLS parameters it would refuse.
/// Every other part is kept as written. The query is looked for after the userinfo (a password
/// may hold a `?`), so multi-host URLs (`postgres://u@h1:5432,h2:5433/db?…`) work too.
pub(super) fn split_url(url: &str) -> (String, UrlTls) {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let host_start = url[authority..]
        .find('@')
        .map_or(authority, |at| authority + at + 1);
    let Some(question) = url[host_start..].find('?').map(|q| host_start + q) else {
        return (url.to_owned(), UrlTls::default());
    };
    let mut tls = UrlTls::default();
    let mut kept = Vec::new();
    for pair in url[question + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "sslmode" => &mut tls.sslmode,
            "sslrootcert" => &mut tls.sslrootcert,
            "sslcert" => &mut tls.sslcert,
            "sslkey" => &mut tls.sslkey,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        *slot = Some(decode(value));
    }
    let mut out = url[..question].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    (out, tls)
}

/// Percent-decoding as tokio-postgres does it (a `+` stays a `+`: file names may hold one).
fn decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// The `*.tls_*_file` keys; for PostgreSQL, applied where the URL does not say otherwise.
pub(super) struct TlsFiles<'a> {
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

/// Where one file setting came from: a URL parameter (errors name the URL's key and the
/// parameter) or a config key.
struct Source {
    key: String,
    path: PathBuf,
}

/// The settings for one URL (named `url_key`): its own parameters override the config keys.
pub(super) fn settings(
    url_key: &str,
    tls: &UrlTls,
    files: &TlsFiles<'_>,
) -> Result<TlsSettings, ConfigError> {
    let mode = match &tls.sslmode {
        None => SslMode::default(),
        Some(value) => SslMode::parse(value).ok_or_else(|| {
            ConfigError::invalid(
                url_key,
                format!(
                    "sslmode={value} is not one of disable, prefer, require, verify-ca, verify-full"
                ),
            )
        })?,
    };
    let pick = |param: &str, url: &Option<String>, key: &str, file: Option<&Path>| match url {
        Some(value) => Some(Source {
            key: format!("{url_key} ({param})"),
            path: value.into(),
        }),
        None => file.map(|path| Source {
            key: key.to_owned(),
            path: path.to_owned(),
        }),
    };
    let ca = pick(
        "sslrootcert",
        &tls.sslrootcert,
        "database.tls_ca_file",
        files.ca,
    );
    let cert = pick(
        "sslcert",
        &tls.sslcert,
        "database.tls_cert_file",
        files.cert,
    );
    let key = pick("sslkey", &tls.sslkey, "database.tls_key_file", files.key);

    let roots = match ca {
        None => Roots::None,
        Some(source) if source.path == Path::new("system") => Roots::System,
        Some(source) => Roots::Store(Arc::new(root_store(&source)?)),
    };
    if matches!(roots, Roots::None) && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Err(ConfigError::invalid(
            url_key,
            "sslmode=verify-ca and verify-full need a root certificate: sslrootcert (a file, or \
             system for the OS roots) or database.tls_ca_file",
        ));
    }
    let client = match (cert, key) {
        (None, None) => None,
        (Some(cert), None) => {
            return Err(ConfigError::invalid(
                &cert.key,
                "a client certificate is set (sslcert or database.tls_cert_file) but no key: \
                 set sslkey or database.tls_key_file",
            ))
        }
        (None, Some(key)) => {
            return Err(ConfigError::invalid(
                &key.key,
                "a client key is set but no certificate: set sslcert or \
                 database.tls_cert_file",
            ))
        }
        (Some(cert), Some(key_file)) => Some(client_identity(&cert, &key_file)?),
    };
    Ok(TlsSettings {
        mode,
        roots,
        client,
    })
}

/// A certificate chain and its key, checked as rustls checks them when the client is built: an
/// X.509 v3 certificate whose public key is the key's (run would refuse anything else).
fn client_identity(cert: &Source, key_file: &Source) -> Result<ClientIdentity, ConfigError> {
    let key = Arc::new(private_key(key_file)?);
    let chain = certificates(cert)?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| {
            ConfigError::invalid(
                &cert.key,
                format!(
                    "{} cannot be used with {}: {e}",
                    resolve(&cert.path).display(),
                    resolve(&key_file.path).display()
                ),
            )
        },
    )?;
    Ok(ClientIdentity { chain, key })
}

/// The `redis.tls_*_file` keys for a `rediss://` URL, checked as the PostgreSQL files are (PEM,
/// a usable CA, an unencrypted key that matches its certificate), and handed on as the PEM
/// bytes redis-rs takes. Without a CA file the operating system's roots are used.
pub(super) fn redis_certificates(
    files: &TlsFiles<'_>,
) -> Result<::redis::TlsCertificates, ConfigError> {
    // redis-rs loads the system's roots on every TLS connection, even with a CA file given,
    // and fails the connection on any error doing so (an SSL_CERT_FILE naming a missing file).
    if let Some(error) = rustls_native_certs::load_native_certs().errors.first() {
        return Err(ConfigError::invalid(
            "redis.url",
            format!(
                "rediss:// needs the system's root certificates readable (the redis client loads \
                 them on every connection, even with redis.tls_ca_file): {error}"
            ),
        ));
    }
    let source = |key: &str, path: &Path| Source {
        key: key.to_owned(),
        path: path.to_owned(),
    };
    let root_cert = match files.ca {
        None => None,
        Some(path) => {
            let ca = source("redis.tls_ca_file", path);
            root_store(&ca)?;
            Some(read(&ca)?.1)
        }
    };
    let client_tls = match (files.cert, files.key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "redis.tls_cert_file",
                "a client certificate is set but no key: set redis.tls_key_file",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "redis.tls_key_file",
                "a client key is set but no certificate: set redis.tls_cert_file",
            ))
        }
        (Some(cert), Some(key)) => {
            let (cert, key) = (
                source("redis.tls_cert_file", cert),
                source("redis.tls_key_file", key),
            );
            client_identity(&cert, &key)?;
            Some(::redis::ClientTlsConfig {
                client_cert: read(&cert)?.1,
                client_key: read(&key)?.1,
            })
        }
    };
    Ok(::redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn read(source: &Source) -> Result<(PathBuf, Vec<u8>), ConfigError> {
    let path = resolve(&source.path);
    let bytes = std::fs::read(&path).map_err(|e| {
        ConfigError::invalid(&source.key, format!("cannot read {}: {e}", path.display()))
    })?;
    Ok((path, bytes))
}

fn certificates(source: &Source) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let (path, bytes) = read(source)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::invalid(
                &source.key,
                format!("{} is not valid PEM: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            &source.key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn root_store(source: &Source) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(source)? {
        store.add(cert).map_err(|e| {
            ConfigError::invalid(
                &source.key,
                format!(
                    "{}: not a usable CA certificate: {e}",
                    resolve(&source.path).display()
                ),
            )
        })?;
    }
    Ok(store)
}

fn private_key(source: &Source) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let (path, bytes) = read(source)?;
    // An encrypted key would need a passphrase at every start; libpq's sslpassword is not
    // supported, and rustls cannot decrypt one.
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(ConfigError::invalid(
            &source.key,
            format!(
                "{} is encrypted; decrypt it (openssl pkey -in KEY -out KEY.plain) and protect \
                 the file instead",
                path.display()
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        ConfigError::invalid(
            &source.key,
            format!("{} holds no PEM private key: {e}", path.display()),
        )
    })?;
    rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        ConfigError::invalid(
            &source.key,
            format!("{}: unsupported private key: {e}", path.display()),
        )
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_and_the_rest_kept() {
        let (url, tls) = split_url(
            "postgres://u:p?w@h1:5432,h2:5433/db?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&sslcert=/c+1.pem&sslkey=k=2.pem&connect_timeout=3",
        );
        assert_eq!(
            url,
            "postgres://u:p?w@h1:5432,h2:5433/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(
            tls,
            UrlTls {
                sslmode: Some("verify-full".into()),
                sslrootcert: Some("/etc/ca.pem".into()),
                sslcert: Some("/c+1.pem".into()),
                sslkey: Some("k=2.pem".into()),
            }
        );
        let (url, tls) = split_url("postgres://h/db?sslmode=require");
        assert_eq!(url, "postgres://h/db");
        assert_eq!(tls.sslmode.as_deref(), Some("require"));
        let (url, tls) = split_url("postgres://h/db");
        assert_eq!((url.as_str(), tls), ("postgres://h/db", UrlTls::default()));
    }

    fn mode(sslmode: &str, ca: Option<&str>) -> Result<TlsSettings, ConfigError> {
        let tls = UrlTls {
            sslmode: Some(sslmode.into()),
            sslrootcert: ca.map(str::to_owned),
            ..Default::default()
        };
        let files = TlsFiles {
            ca: None,
            cert: None,
            key: None,
        };
        settings("database.url", &tls, &files)
    }

    /// libpq's table: require verifies nothing unless a root certificate is given.
    #[test]
    fn sslmodes_follow_libpq() {
        assert_eq!(mode("require", None).unwrap().verify(), Verify::Nothing);
        assert_eq!(mode("prefer", None).unwrap().verify(), Verify::Nothing);
        assert_eq!(
            mode("require", Some("system")).unwrap().verify(),
            Verify::Chain
        );
        assert_eq!(
            mode("verify-ca", Some("system")).unwrap().verify(),
            Verify::Chain
        );
        assert_eq!(
            mode("verify-full", Some("system")).unwrap().verify(),
            Verify::ChainAndName
        );
        for m in ["verify-ca", "verify-full"] {
            let Err(ConfigError::Invalid { key, message }) = mode(m, None) else {
                panic!("{m} without a root accepted");
            };
            assert_eq!(key, "database.url");
            assert!(message.contains("need a root certificate"), "{message}");
        }
        let Err(ConfigError::Invalid { message, .. }) = mode("sometimes", None) else {
            panic!("unknown sslmode accepted");
        };
        assert!(message.contains("sslmode=sometimes"), "{message}");
    }
}
