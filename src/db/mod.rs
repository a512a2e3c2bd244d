//! PostgreSQL edges shared by every stage: how to connect (TLS included), the connection pool,
//! the schema migrations, the analytics tables' statistics, and what an error's SQLSTATE says to
//! do next ([`ErrorClass`]).

pub mod migrate;
mod sqlstate;
pub(crate) mod statistics;
pub mod tls;

pub use sqlstate::ErrorClass;

use std::future::Future;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DatabaseConfig, PgTarget};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// `error`'s text, causes included, is in the message ([`tls::describe`]); it is not a
    /// chained source, which would print it twice.
    #[error("cannot connect to PostgreSQL at {server}: {}", tls::describe(.error))]
    Connect {
        server: String,
        error: tokio_postgres::Error,
    },
}

/// One PostgreSQL server and the way to it, TLS included, built once from the configuration:
/// every connection the daemon makes goes through one, so no caller chooses TLS itself.
#[derive(Clone)]
pub struct Connector {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the config: it holds the password.
        f.debug_struct("Connector")
            .field("server", &self.server())
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(target: PgTarget) -> Result<Connector, DbError> {
        Ok(Connector {
            tls: tls::connector(&target.tls)?,
            pg: target.pg,
        })
    }

    /// The primary, `database.url`.
    pub fn primary(config: &DatabaseConfig) -> Result<Connector, DbError> {
        Connector::new(config.pg_target()?)
    }

    /// The replica, `database.replica_url`, if one is set.
    pub fn replica(config: &DatabaseConfig) -> Result<Option<Connector>, DbError> {
        config.replica_pg_target()?.map(Connector::new).transpose()
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// For another database or role on the same server (`migrate`'s maintenance database).
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.pg
    }

    /// `host:port[,host:port…]`, for messages.
    pub fn server(&self) -> String {
        let ports = self.pg.get_ports();
        self.pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One connection outside the pool, with its driver task tied to the returned client's
    /// lifetime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let (client, connection) = self.connect_raw().await.map_err(|error| DbError::Connect {
            server: self.server(),
            error,
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// A client and the connection future that drives it, for a caller that runs the driver
    /// itself (the writer).
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
        ),
        tokio_postgres::Error,
    > {
        self.pg.connect(self.tls.clone()).await
    }
}

/// A database error as an operator needs it: the server's own message and SQLSTATE, not
/// tokio-postgres's bare "db error"; other errors (I/O, protocol) with their causes, which
/// tokio-postgres's own text leaves out — "error connecting to server" alone does not say
/// whether the connection was refused or a standby was passed over as read-only
/// (`target_session_attrs=read-write`: "database does not allow writes").
pub(crate) fn error_text(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A pool of `database.pool_size` connections to `connector`'s server.
pub(crate) fn pool(config: &DatabaseConfig, connector: &Connector) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        connector.pg.clone(),
        connector.tls.clone(),
        ManagerConfig {
            // A connection killed by pg_terminate_backend must not be handed out again.
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}
