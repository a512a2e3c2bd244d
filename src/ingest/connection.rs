//! Connecting to Redis: the errors said plainly, and a connection made on first use and dropped
//! after any failure, so that the next use reconnects (the journal appender, the stream acker
//! and the journal trim each hold one).

use std::io::ErrorKind;

use redis::aio::MultiplexedConnection;
use redis::RedisError;

use crate::config::RedisEndpoint;
use crate::core::tls::{reason, rustls_error, TlsKeys};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("redis.url: {0}")]
    Url(String),
    #[error("cannot connect to Redis at {server}: {reason}")]
    Connect {
        /// The URL without its password.
        server: String,
        /// The cause in an operator's words (see [`describe`]); it includes the client's own
        /// text where that says more, so `error` is not a chained source (it would print
        /// twice).
        reason: String,
        error: RedisError,
    },
    /// Connected, but XGROUP CREATE failed (not a connection problem: no TLS hint).
    #[error("cannot create the consumer groups: {0}")]
    Groups(RedisError),
    #[error("cannot subscribe to {channel}: {error}")]
    Subscribe { channel: String, error: RedisError },
}

impl IngestError {
    pub(crate) fn connect(endpoint: &RedisEndpoint, error: RedisError) -> IngestError {
        IngestError::Connect {
            server: endpoint.masked(),
            reason: describe(endpoint, &error),
            error,
        }
    }
}

/// The settings a Redis TLS failure's reason names.
const REDIS_KEYS: TlsKeys = TlsKeys {
    ca: "redis.tls_ca_file (or the system's roots when it is unset)",
    client_cert: "redis.tls_cert_file",
};

/// Why connecting failed. A TLS server that requires a client certificate and gets none may
/// cut the connection during or just after the handshake: the client sees only an EOF or a
/// reset, so that is said for what it likely is. A refused connection is not a hang-up.
pub(crate) fn describe(endpoint: &RedisEndpoint, error: &RedisError) -> String {
    if let Some(tls) = rustls_error(error) {
        return reason(tls, &REDIS_KEYS);
    }
    if !endpoint.uses_tls() {
        return error.to_string();
    }
    // redis-rs reports every timeout alike (TCP connect, handshake, HELLO): a plain Redis
    // reads the ClientHello as the start of an inline command and never answers, and so does
    // a host that drops packets.
    if error.is_timeout() {
        return format!(
            "{error}: no answer within the connect timeout; the host is unreachable, or this is \
             not its TLS port (a plain Redis never answers a TLS handshake)"
        );
    }
    let hung_up = matches!(
        io_kind(error),
        Some(ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
    );
    if hung_up && !endpoint.has_client_certificate() {
        return format!(
            "{error}; the server hung up during the TLS handshake: the server may require a \
             client certificate (redis.tls_cert_file)"
        );
    }
    error.to_string()
}

fn io_kind(error: &RedisError) -> Option<ErrorKind> {
    crate::core::tls::sources(error)
        .find_map(|e| e.downcast_ref::<std::io::Error>().map(|io| io.kind()))
}

/// See the module doc. A failed command may have left the connection in any state (a timed-out
/// pipeline's replies may still arrive), so nothing is reused after an error.
#[derive(Default)]
pub struct Reconnecting {
    /// None until first use and after a failure.
    conn: Option<MultiplexedConnection>,
}

impl Reconnecting {
    /// Runs `op` on the connection, connecting first with `connect` if there is none; any
    /// error (connecting or from `op`) drops the connection.
    pub async fn run<T, E>(
        &mut self,
        connect: impl AsyncFnOnce() -> Result<MultiplexedConnection, E>,
        op: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            none => none.insert(connect().await?),
        };
        let result = op(conn).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Drops the connection: a reply the caller could not trust.
    pub fn reset(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisConfig;

    fn endpoint(url: &str) -> RedisEndpoint {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
        .endpoint()
        .unwrap()
    }

    fn io(kind: ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::new(kind, "from the socket"))
    }

    /// The client-certificate hint only for a TLS hang-up without a certificate; a refused
    /// connection, a plain URL and a timeout each say something else.
    #[test]
    fn connection_failures_read_as_their_likely_cause() {
        let tls = endpoint("rediss://cache:6380/0");
        let hint = "the server may require a client certificate (redis.tls_cert_file)";
        for kind in [ErrorKind::UnexpectedEof, ErrorKind::ConnectionReset] {
            assert!(describe(&tls, &io(kind)).contains(hint), "{kind:?}");
        }
        let refused = describe(&tls, &io(ErrorKind::ConnectionRefused));
        assert!(!refused.contains("certificate"), "{refused}");
        let plain = describe(
            &endpoint("redis://cache:6379/0"),
            &io(ErrorKind::UnexpectedEof),
        );
        assert!(!plain.contains("certificate"), "{plain}");
        let timeout = describe(&tls, &io(ErrorKind::TimedOut));
        assert!(timeout.contains("not its TLS port"), "{timeout}");
        let unknown_ca = RedisError::from(std::io::Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let text = describe(&tls, &unknown_ca);
        assert!(
            text.contains("unknown CA") && text.contains("redis.tls_ca_file"),
            "{text}"
        );
    }
}
