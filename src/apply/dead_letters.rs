//! `analytics.dead_letters` as an operator works it: list, show, purge, and replay — each
//! stored payload decoded again with the current limits and applied through the writer's own
//! fold and store ([`super::fold::plan`], [`super::store::apply_in`]), so the trade-id ledger
//! makes a replay exactly once, whether the daemon, another replay or reconcile got there first.
//!
//! A replay decides one row per transaction: the row is locked (`FOR UPDATE SKIP LOCKED`: two
//! replays at once never decide the same row twice; the daemon's writer only inserts rows, but
//! its retention DELETE of old rows waits for a row a replay holds), its event applied in a
//! savepoint, its outcome recorded in the row. A row stays, with `replayed_at` and
//! `replay_result` (V28, V30); a row refused again keeps the new reason.
//!
//! A trade executed before the ledger-retention horizon ([`super::retention`], read in the
//! row's transaction) is not applied: its ledger row may have been retired into the baseline,
//! so the ledger could no longer tell that it was counted. Reconcile refuses the same trades.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::fold::plan;
use super::retention::{self, HORIZON};
use super::store::{self, Statements, TradeSource};
use crate::core::progress::Progress;
use crate::core::queue::Inbound;
use crate::core::ChannelKind;
use crate::events::DecodeLimits;

/// Which rows a command addresses. Every field narrows; none set: every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// A channel's full name (`data_sync:trades`), or its suffix (`trades`) under any prefix.
    pub channel: Option<String>,
    /// The stable label (`not_json`, `oversized`, …).
    pub reason: Option<String>,
    pub trade_id: Option<String>,
}

const COLUMNS: &str = "id, received_at, channel, reason, error, event_type, trade_id, stream_id, \
    delivery_count, payload_bytes, octet_length(payload)::int8, replayable, replayed_at, \
    replay_result";

/// The filter's WHERE clause; $1..$4 are [`Filter`]'s fields. A channel without a colon matches
/// the suffix of any name, and rows written before V28 (which hold the suffix alone).
const FILTER_WHERE: &str = "\
($1::timestamptz IS NULL OR received_at >= $1)
AND ($2::text IS NULL OR channel = $2
     OR (strpos($2, ':') = 0 AND right(channel, char_length($2) + 1) = ':' || $2))
AND ($3::text IS NULL OR reason = $3)
AND ($4::text IS NULL OR trade_id = $4)";

fn list_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM analytics.dead_letters WHERE {FILTER_WHERE} ORDER BY id DESC LIMIT $5"
    )
}

fn show_sql() -> String {
    format!("SELECT {COLUMNS}, payload, payload_sha256 FROM analytics.dead_letters WHERE id = $1")
}

/// The outcomes that decide a row for good: a replay never takes it again. Not
/// `beyond_retention`: the configured part of the horizon moves back if the setting is raised.
const FINAL_RESULTS: &[&str] = &["applied", "duplicate", "stale"];

/// The rows a replay of a filter takes: those not decided for good yet (never replayed, or
/// still invalid: the configuration may have changed since). $5: [`FINAL_RESULTS`].
fn candidates_sql() -> String {
    format!(
        "SELECT id FROM analytics.dead_letters WHERE {FILTER_WHERE}
            AND (replay_result IS NULL OR NOT replay_result = ANY($5))
          ORDER BY id"
    )
}

/// The named rows, each with what a replay needs to know before locking it.
const CANDIDATE_IDS: &str = "SELECT id FROM analytics.dead_letters WHERE id = ANY($1) ORDER BY id";

/// One row, locked for its decision; a row another replay holds is skipped, not waited for.
const LOCK_ROW: &str = "\
SELECT channel, payload, replayable, replay_result, trade_id
  FROM analytics.dead_letters
 WHERE id = $1
   FOR UPDATE SKIP LOCKED";

/// A row locked by someone, or gone: told apart for the report.
const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM analytics.dead_letters WHERE id = $1)";

/// The outcome, in the row. A row refused again takes the new reason and message, and the
/// event type and trade id when they can be read now.
const RECORD_OUTCOME: &str = "\
UPDATE analytics.dead_letters
   SET replayed_at = now(), replay_result = $2,
       reason = COALESCE($3, reason), error = COALESCE($4, error),
       event_type = COALESCE($5, event_type), trade_id = COALESCE($6, trade_id)
 WHERE id = $1";

const PURGE_IDS: &str = "DELETE FROM analytics.dead_letters WHERE id = ANY($1) RETURNING id";
const PURGE_BEFORE: &str = "DELETE FROM analytics.dead_letters WHERE received_at < $1";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead letters: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A row as `list` and `show` give it (payload aside).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub channel: String,
    pub reason: String,
    pub error: String,
    pub event_type: Option<String>,
    pub trade_id: Option<String>,
    pub stream_id: Option<String>,
    pub delivery_count: Option<i32>,
    /// The message's size as received.
    pub payload_bytes: i64,
    /// What is stored of it (less when the message was cut).
    pub stored_bytes: i64,
    pub replayable: bool,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replay_result: Option<String>,
}

impl Row {
    fn from_sql(row: &tokio_postgres::Row) -> Row {
        Row {
            id: row.get(0),
            received_at: row.get(1),
            channel: row.get(2),
            reason: row.get(3),
            error: row.get(4),
            event_type: row.get(5),
            trade_id: row.get(6),
            stream_id: row.get(7),
            delivery_count: row.get(8),
            payload_bytes: row.get(9),
            stored_bytes: row.get(10),
            replayable: row.get(11),
            replayed_at: row.get(12),
            replay_result: row.get(13),
        }
    }
}

/// One row with its payload, for `show`.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub row: Row,
    pub payload: Vec<u8>,
    /// SHA-256 of the whole message, when `payload` holds only its first bytes.
    pub payload_sha256: Option<Vec<u8>>,
}

/// Newest first, at most `limit`.
pub async fn list(
    client: &Client,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Row>, DeadLetterError> {
    let rows = client
        .query(
            &list_sql(),
            &[
                &filter.since,
                &filter.channel,
                &filter.reason,
                &filter.trade_id,
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(Row::from_sql).collect())
}

pub async fn show(client: &Client, id: i64) -> Result<Option<Letter>, DeadLetterError> {
    Ok(client
        .query_opt(&show_sql(), &[&id])
        .await?
        .map(|row| Letter {
            row: Row::from_sql(&row),
            payload: row.get(14),
            payload_sha256: row.get(15),
        }))
}

/// What `purge` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub deleted: u64,
    /// Ids asked for that no row has (already purged, or never existed).
    pub not_found: Vec<i64>,
}

pub async fn purge_ids(client: &Client, ids: &[i64]) -> Result<Purged, DeadLetterError> {
    let deleted: Vec<i64> = client
        .query(PURGE_IDS, &[&ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut not_found: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !deleted.contains(id))
        .collect();
    not_found.sort_unstable();
    not_found.dedup();
    Ok(Purged {
        deleted: deleted.len() as u64,
        not_found,
    })
}

pub async fn purge_before(
    client: &Client,
    before: DateTime<Utc>,
) -> Result<Purged, DeadLetterError> {
    Ok(Purged {
        deleted: client.execute(PURGE_BEFORE, &[&before]).await?,
        not_found: Vec::new(),
    })
}

/// Which rows a replay takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These rows, whatever their state (an applied one is reported, not replayed again).
    Ids(Vec<i64>),
    /// Every row the filter matches that is not decided for good (applied, duplicate or stale).
    Matching(Filter),
}

/// What the replay of one row did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Its effect is in the books now.
    Applied,
    /// The ledger had the trade already (applied by another path since).
    Duplicate,
    /// A position snapshot or a bar that changed nothing: the books hold a newer one already
    /// (or no row has the bar's symbol). Not `duplicate`, which says the ledger had the trade.
    Stale,
    /// Not applied: a trade executed before the ledger-retention horizon, whose ledger row may
    /// have been retired (folded into the baseline): applying it could count it twice.
    BeyondRetention,
    /// Refused again; the row keeps this reason.
    StillInvalid { reason: String, error: String },
    /// Not replayed: the row holds only the message's first bytes.
    NotReplayable,
    /// Not replayed: an earlier replay decided it (`applied`, `duplicate` or `stale`).
    AlreadyReplayed { replay_result: String },
    /// Not replayed: another replay holds the row right now.
    Busy,
    /// No such row (purged, or never existed).
    NotFound,
    /// Not replayed: the channel names none of the data_sync channels.
    UnknownChannel { channel: String },
}

impl Outcome {
    /// The label stored in `replay_result`, for outcomes recorded in the row.
    fn recorded(&self) -> Option<&'static str> {
        match self {
            Outcome::Applied => Some("applied"),
            Outcome::Duplicate => Some("duplicate"),
            Outcome::Stale => Some("stale"),
            Outcome::BeyondRetention => Some("beyond_retention"),
            Outcome::StillInvalid { .. } => Some("still_invalid"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    pub id: i64,
    pub trade_id: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub rows: Vec<Replayed>,
}

impl ReplayReport {
    /// How many rows ended with each outcome, by label, in a fixed order.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let label = |o: &Outcome| match o {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::BeyondRetention => "beyond_retention",
            Outcome::StillInvalid { .. } => "still_invalid",
            Outcome::NotReplayable => "not_replayable",
            Outcome::AlreadyReplayed { .. } => "already_replayed",
            Outcome::Busy => "busy",
            Outcome::NotFound => "not_found",
            Outcome::UnknownChannel { .. } => "unknown_channel",
        };
        [
            "applied",
            "duplicate",
            "stale",
            "beyond_retention",
            "still_invalid",
            "not_replayable",
            "already_replayed",
            "busy",
            "not_found",
            "unknown_channel",
        ]
        .into_iter()
        .map(|name| {
            let n = self
                .rows
                .iter()
                .filter(|r| label(&r.outcome) == name)
                .count();
            (name, n)
        })
        .collect()
    }
}

/// The channel kind a stored channel name is for: the part after its last colon (the prefix
/// may hold colons; the suffixes do not), or the whole name for rows written before V28.
pub fn channel_kind(channel: &str) -> Option<ChannelKind> {
    let suffix = channel.rsplit(':').next().unwrap_or(channel);
    ChannelKind::from_suffix(suffix)
}

/// Replays the selected rows, one transaction each, reporting progress per row. With
/// `dry_run`, each transaction is rolled back: the report says what would happen (each row
/// decided alone: two rows of one trade may both say "would be applied", though one would be a
/// duplicate of the other). `ledger_retention_days` is `maintenance.ledger_retention_days`.
pub async fn replay(
    client: &mut Client,
    selection: &Selection,
    limits: &DecodeLimits,
    ledger_retention_days: u32,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<ReplayReport, DeadLetterError> {
    let stmts = Statements::prepare(client).await?;
    let horizon = client.prepare(HORIZON).await?;
    let replay = Replay {
        stmts: &stmts,
        lock: &client.prepare(LOCK_ROW).await?,
        record: &client.prepare(RECORD_OUTCOME).await?,
        exists: &client.prepare(EXISTS).await?,
        horizon: &horizon,
        days: retention::horizon_days(ledger_retention_days),
        limits,
        dry_run,
    };
    let mut report = ReplayReport {
        dry_run,
        rows: Vec::new(),
    };
    let ids: Vec<i64> = match selection {
        Selection::Ids(ids) => {
            let found: Vec<i64> = client
                .query(CANDIDATE_IDS, &[ids])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut missing: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| !found.contains(id))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            report.rows.extend(missing.into_iter().map(|id| Replayed {
                id,
                trade_id: None,
                outcome: Outcome::NotFound,
            }));
            found
        }
        Selection::Matching(f) => client
            .query(
                &candidates_sql(),
                &[&f.since, &f.channel, &f.reason, &f.trade_id, &FINAL_RESULTS],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    progress.start("dead letters", Some(ids.len() as u64));
    for id in ids {
        let decided = replay_one(client, &replay, id).await;
        match decided {
            Ok(row) => report.rows.push(row),
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        }
        progress.advance(1);
    }
    progress.finish();
    Ok(report)
}

/// What every row's replay uses: the prepared statements and the settings.
struct Replay<'a> {
    stmts: &'a Statements,
    lock: &'a tokio_postgres::Statement,
    record: &'a tokio_postgres::Statement,
    exists: &'a tokio_postgres::Statement,
    horizon: &'a tokio_postgres::Statement,
    days: i32,
    limits: &'a DecodeLimits,
    dry_run: bool,
}

async fn replay_one(
    client: &mut Client,
    replay: &Replay<'_>,
    id: i64,
) -> Result<Replayed, DeadLetterError> {
    let Replay {
        stmts,
        lock,
        record,
        exists,
        limits,
        dry_run,
        ..
    } = *replay;
    let mut tx = client.transaction().await?;
    let Some(row) = tx.query_opt(lock, &[&id]).await? else {
        let present: bool = tx.query_one(exists, &[&id]).await?.get(0);
        let outcome = if present {
            Outcome::Busy
        } else {
            Outcome::NotFound
        };
        return Ok(Replayed {
            id,
            trade_id: None,
            outcome,
        });
    };
    let (channel, payload): (String, Vec<u8>) = (row.get(0), row.get(1));
    let (replayable, decided): (bool, Option<String>) = (row.get(2), row.get(3));
    let mut trade_id: Option<String> = row.get(4);
    let skipped = |outcome| Replayed {
        id,
        trade_id: trade_id.clone(),
        outcome,
    };
    if let Some(result) = decided.filter(|r| FINAL_RESULTS.contains(&r.as_str())) {
        return Ok(skipped(Outcome::AlreadyReplayed {
            replay_result: result,
        }));
    }
    if !replayable {
        return Ok(skipped(Outcome::NotReplayable));
    }
    let Some(kind) = channel_kind(&channel) else {
        return Ok(skipped(Outcome::UnknownChannel { channel }));
    };
    // The writer's own planning of a one-message batch: decode with today's limits, fold.
    let planned = plan(&[Inbound::new(kind, payload)], limits);
    let mut event_type = None;
    let outcome = if let Some(letter) = planned.dead_letters.first() {
        event_type = letter.event_type.clone();
        trade_id = letter.trade_id.clone().or(trade_id);
        Outcome::StillInvalid {
            reason: letter.kind.to_owned(),
            error: letter.error.clone(),
        }
    } else {
        if let Some(trade) = planned.trades.first() {
            trade_id = Some(trade.trade_id.clone());
        }
        // Read in this transaction, FOR SHARE: retention cannot retire the trade's ledger row
        // between this check and the apply below.
        let horizon: Option<DateTime<Utc>> = match planned.trades.first() {
            Some(_) => tx.query_one(replay.horizon, &[&replay.days]).await?.get(1),
            None => None,
        };
        if planned
            .trades
            .iter()
            .any(|t| retention::beyond(t.executed_at, horizon))
        {
            Outcome::BeyondRetention
        } else {
            apply_planned(&mut tx, stmts, &planned).await?
        }
    };
    let (reason, error) = match &outcome {
        Outcome::StillInvalid { reason, error } => (Some(reason.as_str()), Some(error.as_str())),
        _ => (None, None),
    };
    tx.execute(
        record,
        &[
            &id,
            &outcome.recorded(),
            &reason,
            &error.map(|e| e.replace('\0', "\u{FFFD}")),
            &event_type,
            &trade_id,
        ],
    )
    .await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(Replayed {
        id,
        trade_id,
        outcome,
    })
}

/// Applies a one-message plan in a savepoint and says what it did; a plan the database refuses
/// as data is still invalid (the savepoint rolls back).
async fn apply_planned(
    tx: &mut tokio_postgres::Transaction<'_>,
    stmts: &Statements,
    planned: &super::fold::BatchPlan,
) -> Result<Outcome, DeadLetterError> {
    let savepoint = tx.savepoint("replay_apply").await?;
    match store::apply_in(&savepoint, stmts, planned, TradeSource::Event).await {
        Ok(applied) => {
            savepoint.commit().await?;
            Ok(if applied.ledger_duplicates > 0 {
                Outcome::Duplicate
            } else if planned.trades.is_empty()
                && applied.positions_changed + applied.marks_changed == 0
            {
                Outcome::Stale
            } else {
                Outcome::Applied
            })
        }
        // The database refuses it as data (a constraint of the ledger or the aggregates): what
        // the writer dead-letters as `database`. The savepoint rolls back on drop.
        Err(e) if is_data_error(&e) => Ok(Outcome::StillInvalid {
            reason: "database".to_owned(),
            error: format!("refused by the database: {}", crate::db::error_text(&e)),
        }),
        Err(e) => Err(e.into()),
    }
}

/// SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation).
fn is_data_error(error: &tokio_postgres::Error) -> bool {
    matches!(
        crate::db::ErrorClass::of(error),
        crate::db::ErrorClass::Data
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_kind_reads_the_suffix_after_any_prefix() {
        assert_eq!(channel_kind("data_sync:trades"), Some(ChannelKind::Trades));
        assert_eq!(channel_kind("a:b:positions"), Some(ChannelKind::Positions));
        assert_eq!(channel_kind("market_data"), Some(ChannelKind::MarketData));
        assert_eq!(channel_kind("data_sync:journal"), None);
        assert_eq!(channel_kind(""), None);
    }

    #[test]
    fn only_decisions_are_recorded_in_the_row() {
        assert_eq!(Outcome::Applied.recorded(), Some("applied"));
        assert_eq!(Outcome::Duplicate.recorded(), Some("duplicate"));
        assert_eq!(Outcome::Stale.recorded(), Some("stale"));
        assert_eq!(
            Outcome::BeyondRetention.recorded(),
            Some("beyond_retention")
        );
        for outcome in [Outcome::Applied, Outcome::Duplicate, Outcome::Stale] {
            assert!(FINAL_RESULTS.contains(&outcome.recorded().unwrap()));
        }
        let invalid = Outcome::StillInvalid {
            reason: "not_json".into(),
            error: "x".into(),
        };
        assert_eq!(invalid.recorded(), Some("still_invalid"));
        assert_eq!(Outcome::NotReplayable.recorded(), None);
        assert_eq!(Outcome::Busy.recorded(), None);
    }
}
