//! The rustls client every PostgreSQL connection is made with, built from config's
//! [`TlsSettings`], and TLS failures in words an operator can act on.
//!
//! One crypto provider, ring, is compiled in and handed to rustls explicitly, so nothing
//! depends on a process-wide default (rustls panics when two providers are compiled in and none
//! is installed).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Roots, TlsSettings, Verify};
use crate::core::tls::{reason, sources, TlsKeys};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load the operating system's root certificates (sslrootcert=system): {0}")]
    SystemRoots(String),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot set up certificate verification: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The connector tokio-postgres is given; with `sslmode=disable` it is never used.
pub(crate) fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match settings.verify() {
        Verify::Nothing => Arc::new(Unverified(provider)),
        verify => {
            let roots = Arc::new(root_store(&settings.roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider).build()?;
            match verify {
                Verify::Chain => Arc::new(ChainOnly(webpki)),
                _ => webpki,
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &settings.client {
        Some(client) => {
            builder.with_client_auth_cert(client.chain.clone(), client.key.clone_key())?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn root_store(roots: &Roots) -> Result<RootCertStore, TlsError> {
    match roots {
        Roots::Store(store) => Ok(store.as_ref().clone()),
        // The OS store, not a compiled-in list: a CA the operator added to it (a company's own)
        // is trusted, and updates come with the OS.
        Roots::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
                return Err(TlsError::SystemRoots(if errors.is_empty() {
                    "none found".into()
                } else {
                    errors.join("; ")
                }));
            }
            Ok(store)
        }
        // Verify::Chain and ChainAndName come with roots: config refuses verify-* without.
        Roots::None => Ok(RootCertStore::empty()),
    }
}

/// libpq's `require` without a root certificate: the handshake's signatures are checked (the
/// session is encrypted to whoever holds the certificate's key) but not who that is.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain as webpki checks it, the host name not. webpki checks the name
/// last, so a name error means everything before it passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The settings a PostgreSQL TLS failure's reason names.
const POSTGRES_KEYS: TlsKeys = TlsKeys {
    ca: "sslrootcert / database.tls_ca_file",
    client_cert: "sslcert / database.tls_cert_file",
};

/// Why a connection failed, with a TLS failure said plainly.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    let text = super::error_text(error);
    for e in sources(error) {
        if let Some(rustls) = e.downcast_ref::<rustls::Error>() {
            let reason = reason(rustls, &POSTGRES_KEYS);
            return match rustls {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => format!("{reason}; sslmode=verify-full checks it"),
                _ => reason,
            };
        }
        // tokio-postgres's cause when the server answers the SSLRequest with "no".
        if e.to_string() == "server does not support TLS" {
            return "the server does not offer TLS, and sslmode requires it".into();
        }
    }
    // A server whose pg_hba.conf has only `hostssl` lines for us says "no encryption".
    if error.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        && text.contains("no encryption")
    {
        return format!(
            "{text}; the server accepts TLS connections only: set sslmode=require or stricter"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sslmode builds a client with the one compiled-in provider, nothing installed
    /// process-wide.
    #[test]
    fn connectors_build_without_a_default_provider() {
        for mode in [
            crate::config::SslMode::Disable,
            crate::config::SslMode::Require,
        ] {
            let settings = TlsSettings {
                mode,
                roots: Roots::None,
                client: None,
            };
            connector(&settings).unwrap();
        }
    }
}
