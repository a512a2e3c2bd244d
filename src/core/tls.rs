//! TLS failures in words an operator can act on, for PostgreSQL and Redis alike. rustls's error
//! sits deep in a client's error: tokio-rustls wraps it in an `io::Error`, which redis-rs wraps
//! again in an `Arc`; neither wrapper hands it on through `source()`.

use std::error::Error;
use std::sync::Arc;

use rustls::CertificateError;

/// The settings an operator changes to fix a failure, named in its reason.
pub struct TlsKeys {
    /// Where the trusted CA is set, e.g. `sslrootcert / database.tls_ca_file`.
    pub ca: &'static str,
    /// Where the client certificate is set.
    pub client_cert: &'static str,
}

/// `error` and every error under it, looking inside `io::Error` and `Arc` wrappers.
pub fn sources<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e: &&'a (dyn Error + 'static)| {
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            return Some(inner as &(dyn Error + 'static));
        }
        if let Some(inner) = e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            return Some(inner.as_ref() as &(dyn Error + 'static));
        }
        e.source()
    })
}

/// rustls's own error, if `error` was caused by one.
pub fn rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    sources(error).find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// What went wrong in the handshake, naming the setting to look at.
pub fn reason(error: &rustls::Error, keys: &TlsKeys) -> String {
    use CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => format!(
                "the server's certificate is not trusted (unknown CA): it is not signed by a CA \
                 of {}",
                keys.ca
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate does not match the host name (name mismatch)".into()
            }
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clock)".into()
            }
            C::Revoked => "the server's certificate is revoked".into(),
            C::BadSignature | C::BadEncoding => "the server's certificate is malformed".into(),
            other => format!("the server's certificate is refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}): the server may require a client \
             certificate ({}), or refuse the one given",
            keys.client_cert
        ),
        rustls::Error::InvalidMessage(_) => {
            format!("the server did not answer in TLS (is this its TLS port?): {error}")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: TlsKeys = TlsKeys {
        ca: "the-ca-key",
        client_cert: "the-cert-key",
    };

    #[test]
    fn certificate_errors_read_as_their_reason() {
        let cases = [
            (CertificateError::UnknownIssuer, "unknown CA"),
            (CertificateError::NotValidForName, "name mismatch"),
            (CertificateError::Expired, "expired"),
        ];
        for (error, want) in cases {
            let text = reason(&rustls::Error::InvalidCertificate(error), &KEYS);
            assert!(text.contains(want), "{text}");
        }
        let text = reason(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            &KEYS,
        );
        assert!(text.contains("the-ca-key"), "{text}");
        let text = reason(
            &rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            &KEYS,
        );
        assert!(text.contains("the-cert-key"), "{text}");
    }

    /// The wrappers the PostgreSQL and Redis clients put around rustls's error.
    #[test]
    fn rustls_error_is_found_inside_io_and_arc() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::Expired);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(rustls_error(&io), Some(&tls));
        let arc: Arc<dyn Error + Send + Sync> = Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls.clone(),
        ));
        assert_eq!(rustls_error(&arc), Some(&tls));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(rustls_error(&plain), None);
    }
}
