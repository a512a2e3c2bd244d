//! PostgreSQL edges shared by every stage: the connection pool and the schema migrations.

pub mod migrate;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
}

/// A database error as an operator needs it: the server's own message and SQLSTATE, not
/// tokio-postgres's bare "db error"; other errors (I/O, protocol) as they are.
pub(crate) fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// A pool of `database.pool_size` connections. TLS is not offered: the daemon runs next to its
/// database (README, "Decisions").
pub(crate) fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    let pg = config.pg_config()?;
    let manager = Manager::from_config(
        pg,
        NoTls,
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

/// One connection outside the pool, with its driver task tied to the returned client's lifetime.
pub(crate) async fn connect(
    pg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = pg.connect(NoTls).await.map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}
