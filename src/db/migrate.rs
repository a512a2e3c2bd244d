//! `trading-sync migrate`: create the database if missing, then apply `migrations/` under an
//! advisory lock so that instances starting together cannot race.
//!
//! The SQL is embedded at compile time (refinery), so the binary always carries the schema it
//! was built for. refinery refuses an applied migration whose file changed (checksum); we turn
//! that into a message that says what to do.

use tokio_postgres::error::SqlState;

use super::{Connector, DbError};
use crate::config::DatabaseConfig;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Session-level advisory lock held while migrating ("tsmigrat" in ASCII); other instances wait.
const MIGRATION_LOCK_KEY: i64 = 0x7473_6d69_6772_6174;

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
const LOCK: &str = "SELECT pg_advisory_lock($1)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
/// refinery's history table; absent on a database never migrated.
const HISTORY_EXISTS: &str = "SELECT to_regclass('refinery_schema_history')::text";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot create database `{database}`: {source}")]
    CreateDatabase {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot take the migration lock or read the schema history: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error(
        "migration {applied} was edited after it was applied to this database \
         (its checksum no longer matches); restore the original file and put the change \
         in a new migration"
    )]
    Edited { applied: String },
    #[error(
        "migration {0} is recorded as applied but is not in this build; \
         this binary is older than the database schema"
    )]
    Missing(String),
    #[error("migration failed: {0}")]
    Refinery(#[source] refinery::Error),
}

/// What a `migrate` run did, for the log line and for tests.
#[derive(Debug, Default, Clone)]
pub struct MigrationOutcome {
    pub database_created: bool,
    /// Another instance held the lock when we asked; we waited for it.
    pub waited_for_lock: bool,
    /// `V{n}__{name}` of each migration applied by this run, in order.
    pub applied: Vec<String>,
}

/// Creates the target database if it does not exist, then applies pending migrations.
pub async fn migrate(config: &DatabaseConfig) -> Result<MigrationOutcome, MigrateError> {
    migrate_to(config, None).await
}

/// As [`migrate`], stopping after migration `V{target}` when given: upgrade tests build a
/// database as an older release left it.
pub async fn migrate_to(
    config: &DatabaseConfig,
    target: Option<i32>,
) -> Result<MigrationOutcome, MigrateError> {
    let server = Connector::primary(config)?;
    let mut outcome = MigrationOutcome::default();
    let mut client = match server.connect().await {
        Ok(client) => client,
        Err(DbError::Connect { error, .. })
            if error.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
        {
            outcome.database_created = create_database(config, &server).await?;
            server.connect().await?
        }
        Err(e) => return Err(e.into()),
    };

    let got_lock: bool = client
        .query_one(TRY_LOCK, &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?
        .get(0);
    if !got_lock {
        tracing::info!("another instance is migrating; waiting for its lock");
        outcome.waited_for_lock = true;
        client
            .execute(LOCK, &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(MigrateError::Lock)?;
    }

    let runner = embedded::migrations::runner();
    let runner = match target {
        Some(version) => runner.set_target(refinery::Target::Version(version)),
        None => runner,
    };
    let result = runner
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(&mut client)
        .await;
    // The lock is released with the session anyway; unlocking early lets a waiter go on at once.
    let _ = client.execute(UNLOCK, &[&MIGRATION_LOCK_KEY]).await;

    let report = result.map_err(explain)?;
    outcome.applied = report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();
    Ok(outcome)
}

/// Names of the embedded migrations not yet applied to the database (`run` refuses to start
/// on a schema older than the binary).
pub(crate) async fn pending(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<String>, MigrateError> {
    let runner = embedded::migrations::runner();
    let never_migrated = client
        .query_one(HISTORY_EXISTS, &[])
        .await
        .map_err(MigrateError::Lock)?
        .get::<_, Option<String>>(0)
        .is_none();
    if never_migrated {
        return Ok(runner
            .get_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect());
    }
    let applied = runner
        .get_applied_migrations_async(client)
        .await
        .map_err(explain)?;
    Ok(runner
        .get_migrations()
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version() == m.version()))
        .map(|m| m.to_string())
        .collect())
}

fn explain(e: refinery::Error) -> MigrateError {
    match e.kind() {
        refinery::error::Kind::DivergentVersion(applied, _) => MigrateError::Edited {
            applied: applied.to_string(),
        },
        refinery::error::Kind::MissingVersion(m) => MigrateError::Missing(m.to_string()),
        _ => MigrateError::Refinery(e),
    }
}

/// Returns whether this call created it (false when another instance won the race).
async fn create_database(
    config: &DatabaseConfig,
    target: &Connector,
) -> Result<bool, MigrateError> {
    let database = target.config().get_dbname().unwrap_or_default().to_owned();
    let mut admin = target.clone();
    admin.config_mut().dbname(&config.maintenance_db);
    let client = admin.connect().await?;
    // Identifiers cannot be bound as parameters; quote_ident-style escaping of the configured name.
    let statement = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
    match client.batch_execute(&statement).await {
        Ok(()) => {
            tracing::info!(database = %database, "created database");
            Ok(true)
        }
        // Two instances creating it at once: the loser sees one of these; the database exists.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(false)
        }
        Err(source) => Err(MigrateError::CreateDatabase { database, source }),
    }
}
