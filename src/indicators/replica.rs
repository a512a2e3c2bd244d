//! The indicator job's bar reads from a read replica (`database.replica_url`), never staler than
//! the change rows the chunk acts on.
//!
//! Only the bars go there: they are the job's one heavy read. Locks, change rows, states and
//! every write stay in the chunk's transaction on the primary.
//!
//! Consistency. A chunk reads its change rows on the primary; each was written by the
//! transaction that wrote the bars it describes, so that transaction's commit record lies below
//! the primary's WAL *insert* position read afterwards. Once a physical standby has replayed
//! past that position, those bars are visible in its snapshots, and the read there sees at
//! least what the chunk's change rows promise (possibly newer bars too, exactly as a read on the
//! primary would; their change rows outlive the chunk). The insert position and not
//! `pg_current_wal_lsn()` (the write position): a commit made with `synchronous_commit = off` is
//! visible before its WAL is written. A standby receives only flushed WAL, and WAL after the
//! last commit (an open transaction's rows, pruning done by our own reads) may stay unflushed
//! for as long as nobody commits, so when the flush position is behind, a second connection to
//! the primary commits a logical message (`pg_logical_emit_message`), which flushes everything
//! before it.
//!
//! The chunk waits at most `indicators.replica_max_wait_ms` (polling the standby's replay
//! position) and otherwise reads from the primary, as it does when the replica is unreachable,
//! fails, was promoted meanwhile, or is a standby of another cluster; each such chunk is
//! logged and counted (`trading_sync_indicator_replica_fallbacks_total{reason}`).
//!
//! A server that is not in recovery is read without waiting, with a warning: it is then either
//! the primary itself or another primary, such as a logical replica, whose contents cannot be
//! related to this primary's WAL — that case is not supported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Transaction};

use super::store::{self, RawBar};
use super::IndicatorError;
use crate::config::Config;
use crate::core::Backoff;
use crate::db::{Connector, DbError};

/// Where and how long to wait: from `database.replica_url` and `indicators.replica_max_wait_ms`.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub pg: Connector,
    /// The primary, for the connection that commits a WAL flush.
    pub primary: Connector,
    pub max_wait: Duration,
}

impl ReplicaSettings {
    /// None when no replica is configured.
    pub fn from_config(config: &Config) -> Result<Option<ReplicaSettings>, DbError> {
        let Some(pg) = Connector::replica(&config.database)? else {
            return Ok(None);
        };
        Ok(Some(ReplicaSettings {
            pg,
            primary: Connector::primary(&config.database)?,
            max_wait: Duration::from_millis(config.indicators.replica_max_wait_ms),
        }))
    }
}

/// The primary's WAL insert and flush positions and its cluster's identity, read in the chunk's
/// transaction after its change rows.
const PRIMARY_POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn(), \
    pg_current_wal_flush_lsn(), (SELECT system_identifier FROM pg_control_system())";

/// Committing a transaction that wrote WAL flushes the WAL up to its commit record; a logical
/// message is a WAL record any role may write without touching a table. `local`: the flush is
/// what the standby needs, not a synchronous standby's confirmation.
const FLUSH_SESSION_SQL: &str = "SET synchronous_commit = local";
const FLUSH_SQL: &str =
    "SELECT pg_logical_emit_message(true, 'trading-sync', 'indicator replica wait')";

const REPLICA_IDENTITY_SQL: &str =
    "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())";

const REPLAY_POSITION_SQL: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()";

/// Polls start this soon (a replica a few milliseconds behind is common) and slow down to this.
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(50);

/// A poll may take the rest of the wait, and at least this: a replica whose host vanished
/// leaves the query unanswered for as long as TCP retransmits, not the wait's few seconds.
const MIN_POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// After a failed connection attempt no other is made for this long, doubling up to the cap:
/// an unreachable host would otherwise cost every chunk a connect timeout.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The not-in-recovery warning is given once per process, not once per run and worker.
static WARNED_NOT_IN_RECOVERY: AtomicBool = AtomicBool::new(false);

/// Why a chunk read its bars from the primary although a replica is configured.
#[derive(Debug, thiserror::Error)]
enum Fallback {
    #[error("replica unreachable: {0}")]
    Connect(#[source] crate::db::DbError),
    #[error("the replica could not be reached moments ago; next attempt in {0:?}")]
    NotYet(Duration),
    #[error("the replica had replayed WAL up to {replayed} after {waited:?}, short of the primary's {target}")]
    Lag {
        replayed: String,
        target: PgLsn,
        waited: Duration,
    },
    #[error("the replica is no longer in recovery (promoted?)")]
    Promoted,
    #[error("the replica did not answer a replay position query within {0:?}; reconnecting")]
    Unresponsive(Duration),
    #[error(
        "the replica is a standby of another cluster (system identifier {replica}, the primary's is {primary})"
    )]
    OtherCluster { replica: i64, primary: i64 },
    #[error("while {context} on the replica: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("on the replica: {0}")]
    Read(#[source] IndicatorError),
}

impl Fallback {
    /// The metric label.
    fn reason(&self) -> &'static str {
        match self {
            Fallback::Connect(_) | Fallback::NotYet(_) => "connect",
            Fallback::Lag { .. } => "lag",
            Fallback::Promoted => "promoted",
            Fallback::OtherCluster { .. } => "other_cluster",
            Fallback::Unresponsive(_) | Fallback::Query { .. } | Fallback::Read(_) => "error",
        }
    }

    fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Fallback {
        move |source| Fallback::Query { context, source }
    }
}

struct Replica {
    client: Client,
    /// In recovery when connected. Otherwise it is read without waiting.
    standby: bool,
    system: i64,
}

/// One worker's source of bars: its replica connection, opened on first use and again after it
/// failed, or the chunk's own transaction when no replica is configured or usable.
pub(crate) struct BarSource(Option<Reader>);

/// Where a chunk's bars were read. Returned rather than counted here so that the job, which
/// owns the run's counts, is the one module that knows them: this module stays below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOn {
    /// No replica is configured, or the chunk needed no bars.
    Primary,
    Replica,
    /// A replica is configured but could not serve this chunk (logged and counted by reason).
    Fallback,
}

struct Reader {
    settings: ReplicaSettings,
    replica: Option<Replica>,
    /// Commits the flushing message on the primary; opened when first needed.
    flusher: Option<Client>,
    /// The primary refused the message (a revoked grant): not asked again in this run.
    flush_refused: bool,
    retry_at: Option<Instant>,
    /// How long after a failed connection attempt the next one is made.
    retry: Backoff,
    /// The previous wait ran out. Later chunks then look once rather than wait again: a
    /// replica that far behind would otherwise cost every chunk of the run the whole wait.
    lagging: bool,
}

impl BarSource {
    pub(crate) fn new(settings: Option<ReplicaSettings>) -> BarSource {
        BarSource(settings.map(|settings| Reader {
            settings,
            replica: None,
            flusher: None,
            flush_refused: false,
            retry_at: None,
            retry: Backoff::new(FIRST_RETRY, MAX_RETRY),
            lagging: false,
        }))
    }

    /// `store::load_bars` for a chunk whose change rows `tx` has read, and where they were read.
    pub(crate) async fn load_bars(
        &mut self,
        tx: &Transaction<'_>,
        requests: &[(String, Option<DateTime<Utc>>)],
    ) -> Result<(Vec<Vec<RawBar>>, ReadOn), IndicatorError> {
        let Some(reader) = self.0.as_mut().filter(|_| !requests.is_empty()) else {
            return Ok((store::load_bars(tx, requests).await?, ReadOn::Primary));
        };
        match reader.read_chunk(tx, requests).await? {
            Ok(bars) => {
                metrics::counter!("trading_sync_indicator_replica_reads_total").increment(1);
                Ok((bars, ReadOn::Replica))
            }
            Err(fallback) => {
                let reason = fallback.reason();
                metrics::counter!("trading_sync_indicator_replica_fallbacks_total", "reason" => reason)
                    .increment(1);
                if matches!(fallback, Fallback::NotYet(_)) {
                    // The failed attempt itself was logged at warn.
                    tracing::debug!(reason, error = %fallback, "reading a chunk's bars from the primary");
                } else {
                    tracing::warn!(
                        reason, error = %fallback, symbols = requests.len(),
                        "reading a chunk's bars from the primary instead of the replica"
                    );
                }
                Ok((store::load_bars(tx, requests).await?, ReadOn::Fallback))
            }
        }
    }
}

impl Reader {
    /// Outer error: the primary failed (the chunk fails as without a replica). Inner: the
    /// replica could not be used for this chunk.
    async fn read_chunk(
        &mut self,
        tx: &Transaction<'_>,
        requests: &[(String, Option<DateTime<Utc>>)],
    ) -> Result<Result<Vec<Vec<RawBar>>, Fallback>, IndicatorError> {
        let replica = match self.replica.take() {
            Some(r) if !r.client.is_closed() => r,
            _ => match self.connect().await {
                Ok(r) => r,
                Err(f) => return Ok(Err(f)),
            },
        };
        let result = self.read(&replica, tx, requests).await;
        let hung = matches!(result, Ok(Err(Fallback::Unresponsive(_))));
        if !hung && !replica.client.is_closed() {
            self.replica = Some(replica);
        }
        result
    }

    async fn read(
        &mut self,
        replica: &Replica,
        tx: &Transaction<'_>,
        requests: &[(String, Option<DateTime<Utc>>)],
    ) -> Result<Result<Vec<Vec<RawBar>>, Fallback>, IndicatorError> {
        if replica.standby {
            let row = tx
                .query_one(PRIMARY_POSITION_SQL, &[])
                .await
                .map_err(IndicatorError::query("reading the primary's WAL position"))?;
            let (target, flushed, primary): (PgLsn, PgLsn, i64) =
                (row.get(0), row.get(1), row.get(2));
            if primary != replica.system {
                return Ok(Err(Fallback::OtherCluster {
                    replica: replica.system,
                    primary,
                }));
            }
            if flushed < target && !self.flush_refused {
                self.flush().await;
            }
            if let Err(f) = self.wait(replica, target).await {
                return Ok(Err(f));
            }
        }
        Ok(store::load_bars(&replica.client, requests)
            .await
            .map_err(Fallback::Read))
    }

    async fn connect(&mut self) -> Result<Replica, Fallback> {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(Fallback::NotYet(at - now));
            }
        }
        match open(&self.settings.pg).await {
            Ok(r) => {
                self.retry_at = None;
                self.retry.reset();
                Ok(r)
            }
            Err(f) => {
                self.retry_at = Some(Instant::now() + self.retry.fail());
                Err(f)
            }
        }
    }

    /// Makes the primary flush its WAL. Only speeds the wait up: on failure the standby still
    /// gets there as soon as anyone commits, or the wait runs out.
    async fn flush(&mut self) {
        if self.flusher.as_ref().is_none_or(Client::is_closed) {
            self.flusher = match self.settings.primary.connect().await {
                Ok(c) => match c.batch_execute(FLUSH_SESSION_SQL).await {
                    Ok(()) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot configure the WAL flush connection");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the WAL flush connection");
                    None
                }
            };
        }
        if let Some(c) = &self.flusher {
            if let Err(e) = c.batch_execute(FLUSH_SQL).await {
                // A server-side error will recur (pg_logical_emit_message revoked, say); a
                // broken connection is reopened next time.
                self.flush_refused = e.as_db_error().is_some();
                tracing::warn!(
                    error = %e, refused = self.flush_refused,
                    "cannot make the primary flush its WAL; waits may run out when nothing else \
                     commits"
                );
                self.flusher = None;
            }
        }
    }

    /// Polls the standby until it has replayed `target`, or the deadline passes.
    async fn wait(&mut self, replica: &Replica, target: PgLsn) -> Result<(), Fallback> {
        let started = Instant::now();
        let max_wait = if self.lagging {
            Duration::ZERO
        } else {
            self.settings.max_wait
        };
        let deadline = started + max_wait;
        let mut pause = Backoff::new(FIRST_POLL, MAX_POLL);
        loop {
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_POLL_TIMEOUT);
            let row =
                tokio::time::timeout(limit, replica.client.query_one(REPLAY_POSITION_SQL, &[]))
                    .await
                    .map_err(|_| Fallback::Unresponsive(limit))?
                    .map_err(Fallback::query("reading the replay position"))?;
            let (in_recovery, replayed): (bool, Option<PgLsn>) = (row.get(0), row.get(1));
            if !in_recovery {
                return Err(Fallback::Promoted);
            }
            if replayed.is_some_and(|r| r >= target) {
                self.lagging = false;
                metrics::histogram!("trading_sync_indicator_replica_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                self.lagging = true;
                return Err(Fallback::Lag {
                    replayed: replayed.map_or_else(|| "nothing".to_owned(), |r| r.to_string()),
                    target,
                    waited: now - started,
                });
            }
            tokio::time::sleep(pause.fail().min(deadline - now)).await;
        }
    }
}

/// A replica connection, configured like the job's own, and what kind of server it reached.
async fn open(pg: &Connector) -> Result<Replica, Fallback> {
    let client = pg.connect().await.map_err(Fallback::Connect)?;
    client
        .batch_execute(store::SESSION_SETTINGS_SQL)
        .await
        .map_err(Fallback::query("configuring the session"))?;
    let row = client
        .query_one(REPLICA_IDENTITY_SQL, &[])
        .await
        .map_err(Fallback::query("asking whether it is in recovery"))?;
    let (standby, system): (bool, i64) = (row.get(0), row.get(1));
    if !standby && !WARNED_NOT_IN_RECOVERY.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "database.replica_url is not in recovery: bars are read there without waiting for \
             replay, which is right only if it is the primary itself (a logical replica or \
             another primary is not supported)"
        );
    }
    Ok(Replica {
        client,
        standby,
        system,
    })
}
