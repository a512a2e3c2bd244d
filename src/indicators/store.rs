//! PostgreSQL side of the indicator job: the SQL, reading states and bars for a chunk of
//! symbols, and writing rows, latest rows and states inside the chunk's transaction.
//!
//! Everything here works on whole chunks (`= ANY`, `unnest`, one COPY) because the job's cost
//! is round trips and per-row server work, not arithmetic. The row COPY payload is encoded by
//! hand ([`RowEncoder`]) on a blocking thread: it is the only per-row client work besides
//! `step`, and going through `ToSql` trait objects for 24 columns of 12 million rows would cost
//! more than the indicators themselves.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use futures::SinkExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Transaction};

use super::step::{IndicatorRow, IndicatorState};
use super::IndicatorError;

/// The work list of a run over all symbols: every symbol of data_ingestion.symbols that has a
/// state or recorded bar changes, plus the symbols with bar changes that are missing from
/// data_ingestion.symbols (reported and skipped: the indicator tables reference it). Index
/// lookups only, none into market_data: which symbols have new or revised bars is what
/// analytics.indicator_bar_changes (V19) records. With `$1` (`--full`) also every registered
/// symbol with a yahoo bar, recorded or not, so a repair reaches bars written behind the
/// triggers' back: one probe of market_data per registered symbol, which the planner drops
/// when `$1` is false.
pub(crate) const LIST_ALL_SYMBOLS_SQL: &str = r#"
SELECT y.symbol::text, true, st.symbol IS NOT NULL
  FROM data_ingestion.symbols y
  LEFT JOIN analytics.indicator_state st ON st.symbol = y.symbol
 WHERE st.symbol IS NOT NULL
    OR EXISTS (SELECT 1 FROM analytics.indicator_bar_changes c WHERE c.symbol = y.symbol)
    OR ($1::bool AND EXISTS (SELECT 1 FROM data_ingestion.market_data m
                              WHERE m.symbol = y.symbol AND m.data_source = 'yahoo'))
UNION ALL
SELECT DISTINCT c.symbol::text, false, false
  FROM analytics.indicator_bar_changes c
 WHERE NOT EXISTS (SELECT 1 FROM data_ingestion.symbols y WHERE y.symbol = c.symbol)
"#;

/// The same three facts for a given list of symbols (`indicators --symbol`, market data events).
pub(crate) const LIST_GIVEN_SYMBOLS_SQL: &str = r#"
SELECT s.symbol,
       EXISTS (SELECT 1 FROM data_ingestion.symbols y WHERE y.symbol = s.symbol),
       EXISTS (SELECT 1 FROM analytics.indicator_state st WHERE st.symbol = s.symbol)
  FROM (SELECT DISTINCT unnest($1::text[]) AS symbol) s
 ORDER BY s.symbol
"#;

/// Per-symbol transaction-scoped advisory locks; returns the ordinals (1-based) of the keys
/// this transaction got. `pg_try_…` never waits: a symbol another instance holds is skipped,
/// not queued behind it. The two-int4 form keeps these keys apart from every bigint-keyed
/// advisory lock (the migration lock, the scheduled-run lock): PostgreSQL tags the two forms
/// differently.
pub(crate) const TRY_LOCK_SYMBOLS_SQL: &str = r#"
SELECT k.ord::int4
  FROM unnest($2::int4[]) WITH ORDINALITY AS k(key, ord)
 WHERE pg_try_advisory_xact_lock($1::int4, k.key)
"#;

/// Every state column but `prev_close`, a copy of the last of `closes` that [`IndicatorState`]
/// derives rather than holds.
static LOAD_STATES_SQL: LazyLock<String> = LazyLock::new(|| {
    let read = STATE_COLUMNS.iter().filter(|(c, ..)| *c != "prev_close");
    let columns = column_list(read.map(|&(c, _, sql)| (c, sql)), "{c}");
    format!(
        "SELECT symbol::text, {columns} FROM analytics.indicator_state \
         WHERE symbol = ANY($1::text[])"
    )
});

/// The recorded bar changes of a chunk's symbols: the earliest, and the rows read. `-infinity`
/// (everything) reads as NULL, which chrono has no value for.
pub(crate) const LOAD_CHANGES_SQL: &str = r#"
SELECT symbol::text,
       CASE WHEN min(earliest) > '-infinity' THEN min(earliest) END,
       array_agg(id)
  FROM analytics.indicator_bar_changes
 WHERE symbol = ANY($1::text[])
 GROUP BY symbol
"#;

/// Removes the change rows a chunk read, and only those: a change committed since then has
/// another id and stays for the next run. Ingestion only inserts into this table, so nothing
/// here waits for it.
pub(crate) const CONSUME_CHANGES_SQL: &str =
    "DELETE FROM analytics.indicator_bar_changes WHERE id = ANY($1::int8[])";

/// Yahoo bars at or after each symbol's `from_ts` (NULL: all of them), as three arrays in the
/// same (unspecified) order, sorted by the caller. Closes as NUMERIC, turned into f64 by the
/// caller ([`NumericF64`]) exactly as `close::float8` would.
pub(crate) const LOAD_BARS_SQL: &str = r#"
SELECT s.ord::int4, b.ts, b.closes, b.volumes
  FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS s(symbol, from_ts, ord)
 CROSS JOIN LATERAL (
       SELECT array_agg(m."timestamp") AS ts,
              array_agg(m.close) AS closes,
              array_agg(m.volume) AS volumes
         FROM data_ingestion.market_data m
        WHERE m.symbol = s.symbol AND m.data_source = 'yahoo'
          AND m."timestamp" >= coalesce(s.from_ts, '-infinity')
       ) b
"#;

/// Removes each symbol's rows dated on or after its `from_date` (NULL: all its rows) before new
/// rows for those dates are copied in. For an appending symbol there are normally none; they
/// exist only if something else wrote them, and a COPY would then fail on the unique key.
/// The rows are found symbol by symbol on the (symbol, date) key (`OFFSET 0` keeps the lateral
/// subquery from being flattened into a join) and deleted by id: as a join, the planner cannot
/// tell how few rows the dates select and hashes the whole table (200 ms for 600k rows,
/// against 7 ms this way; seconds at 12 million, for a delete that usually finds nothing).
pub(crate) const DELETE_ROWS_FROM_SQL: &str = r#"
DELETE FROM analytics.technical_indicators t
 WHERE t.id = ANY (ARRAY(
       SELECT x.id
         FROM unnest($1::text[], $2::date[]) AS d(symbol, from_date)
        CROSS JOIN LATERAL (
              SELECT x.id FROM analytics.technical_indicators x
               WHERE x.symbol = d.symbol AND x.date >= coalesce(d.from_date, '-infinity')
              OFFSET 0) x))
"#;

/// A value column's SQL type (V10), which is also what its values are rounded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    Numeric(NumericType),
    BigInt,
}

use ColumnType::{BigInt, Numeric};

/// technical_indicators' value columns after (symbol, date), in table order (V10): the one list
/// the COPY statements, the staging table, the upserts and [`RowEncoder`] derive theirs from.
/// `rsi` and `rsi_14` both carry [`IndicatorRow::rsi_14`]; without `rsi`, the list is
/// [`IndicatorRow::named_values`] in its order, then `current_volume`. The statements are
/// built from it once, on first use ([`LazyLock`]), not for every chunk.
const VALUE_COLUMNS: [(&str, ColumnType); 22] = [
    ("sma_20", Numeric(N15_4)),
    ("sma_50", Numeric(N15_4)),
    ("sma_200", Numeric(N15_4)),
    ("ema_12", Numeric(N15_4)),
    ("ema_26", Numeric(N15_4)),
    ("ema_50", Numeric(N15_4)),
    ("rsi", Numeric(N5_2)),
    ("rsi_14", Numeric(N5_2)),
    ("macd_line", Numeric(N15_4)),
    ("macd_signal", Numeric(N15_4)),
    ("macd_histogram", Numeric(N15_4)),
    ("bb_upper", Numeric(N15_4)),
    ("bb_middle", Numeric(N15_4)),
    ("bb_lower", Numeric(N15_4)),
    ("bb_position", Numeric(N5_4)),
    ("bb_width", Numeric(N10_4)),
    ("volatility_20", Numeric(N12_2)),
    ("price_change_1d", Numeric(N12_2)),
    ("price_change_5d", Numeric(N12_2)),
    ("price_change_30d", Numeric(N12_2)),
    ("avg_volume_20", BigInt),
    ("current_volume", BigInt),
];

/// `columns` comma-separated, each written as `template` with `{c}` standing for its name and
/// `{type}` for its SQL type.
fn column_list<'a, T: fmt::Display>(
    columns: impl IntoIterator<Item = (&'a str, T)>,
    template: &str,
) -> String {
    columns
        .into_iter()
        .map(|(column, ty)| {
            template
                .replace("{c}", column)
                .replace("{type}", &ty.to_string())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn value_columns(template: &str) -> String {
    column_list(VALUE_COLUMNS, template)
}

/// The COPY of a [`RowEncoder`] payload into `table`.
fn copy_rows_sql(table: &str) -> String {
    let columns = value_columns("{c}");
    format!("COPY {table} (symbol, date, {columns}) FROM STDIN (FORMAT binary)")
}

pub(crate) static COPY_ROWS_SQL: LazyLock<String> =
    LazyLock::new(|| copy_rows_sql("analytics.technical_indicators"));

/// analytics.indicator_state's columns (V13) after `symbol`, in table order, with the type
/// [`save_states`] sends each value as and the staging table's declaration: the one list the
/// state statements derive theirs from. [`save_states`] writes the values in this order.
const STATE_COLUMNS: [(&str, Type, &str); 16] = [
    ("spec_version", Type::INT4, "int4 NOT NULL"),
    ("first_date", Type::DATE, "date NOT NULL"),
    ("last_date", Type::DATE, "date NOT NULL"),
    ("bars_consumed", Type::INT8, "int8 NOT NULL"),
    ("closes", Type::FLOAT8_ARRAY, "float8[] NOT NULL"),
    ("close_dates", Type::DATE_ARRAY, "date[] NOT NULL"),
    ("volumes", Type::INT8_ARRAY, "int8[] NOT NULL"),
    ("ema12", Type::FLOAT8, "float8"),
    ("ema26", Type::FLOAT8, "float8"),
    ("ema50", Type::FLOAT8, "float8"),
    ("macd_fast", Type::FLOAT8, "float8"),
    ("macd_signal", Type::FLOAT8, "float8"),
    ("macd_seed_sum", Type::FLOAT8, "float8"),
    ("avg_gain", Type::FLOAT8, "float8"),
    ("avg_loss", Type::FLOAT8, "float8"),
    ("prev_close", Type::FLOAT8, "float8"),
];

fn state_columns(template: &str) -> String {
    column_list(STATE_COLUMNS.iter().map(|&(c, _, sql)| (c, sql)), template)
}

/// Per-connection staging tables for the two writes that are upserts. ON COMMIT DELETE ROWS
/// empties them at each commit (PostgreSQL skips that for transactions that did not touch
/// them). They live on the job's own connections, never on a pooled one.
pub(crate) static CREATE_STAGING_SQL: LazyLock<String> = LazyLock::new(|| {
    let rows = value_columns("{c} {type}");
    let states = state_columns("{c} {type}");
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS indicator_rows_stage \
             (symbol varchar(20) NOT NULL, date date NOT NULL, {rows}) \
             ON COMMIT DELETE ROWS; \
         CREATE TEMP TABLE IF NOT EXISTS indicator_state_stage \
             (symbol varchar(20) NOT NULL, {states}) \
             ON COMMIT DELETE ROWS;"
    )
});

pub(crate) static COPY_STAGED_ROWS_SQL: LazyLock<String> =
    LazyLock::new(|| copy_rows_sql("pg_temp.indicator_rows_stage"));

/// A recomputed symbol's rows, from its first changed date on (NULL: all), whose date is no
/// longer a bar date (a bar was deleted, or its close became invalid). Found by key and
/// deleted by id, as [`DELETE_ROWS_FROM_SQL`].
pub(crate) const DELETE_UNSTAGED_ROWS_SQL: &str = r#"
DELETE FROM analytics.technical_indicators t
 WHERE t.id = ANY (ARRAY(
       SELECT x.id
         FROM unnest($1::text[], $2::date[]) AS d(symbol, from_date)
        CROSS JOIN LATERAL (
              SELECT x.id, x.symbol, x.date FROM analytics.technical_indicators x
               WHERE x.symbol = d.symbol AND x.date >= coalesce(d.from_date, '-infinity')
              OFFSET 0) x
        WHERE NOT EXISTS (SELECT 1 FROM pg_temp.indicator_rows_stage s
                           WHERE s.symbol = x.symbol AND s.date = x.date)))
"#;

/// Upsert of a recomputed symbol's rows that touches only rows whose rounded values changed,
/// so a revision of last week's bar rewrites last week onwards and leaves the years before it
/// (and their updated_at) alone. Its row count is the number of rows inserted or changed.
static UPSERT_STAGED_ROWS_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = value_columns("{c}");
    let set = value_columns("{c} = EXCLUDED.{c}");
    let old = value_columns("t.{c}");
    let new = value_columns("EXCLUDED.{c}");
    format!(
        "INSERT INTO analytics.technical_indicators AS t (symbol, date, {columns}) \
         SELECT symbol, date, {columns} FROM pg_temp.indicator_rows_stage \
         ON CONFLICT (symbol, date) DO UPDATE SET {set} \
         WHERE ({old}) IS DISTINCT FROM ({new})"
    )
});

/// technical_indicators_latest from the newest row of each symbol just written, read back from
/// the table rather than sent again: it is then the newest row by construction, also after a
/// revision deleted rows. Unchanged rows are not rewritten.
static REFRESH_LATEST_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = value_columns("{c}");
    let set = value_columns("{c} = EXCLUDED.{c}");
    let tcols = value_columns("t.{c}");
    let old = value_columns("l.{c}");
    let new = value_columns("EXCLUDED.{c}");
    format!(
        "INSERT INTO analytics.technical_indicators_latest AS l (symbol, calculated_date, {columns}) \
         SELECT t.symbol, t.date, {tcols} \
           FROM unnest($1::text[]) AS s(symbol) \
          CROSS JOIN LATERAL (SELECT * FROM analytics.technical_indicators x \
                               WHERE x.symbol = s.symbol ORDER BY x.date DESC LIMIT 1) t \
         ON CONFLICT (symbol) DO UPDATE SET calculated_date = EXCLUDED.calculated_date, {set} \
         WHERE (l.calculated_date, {old}) IS DISTINCT FROM (EXCLUDED.calculated_date, {new})"
    )
});

/// Latest rows of symbols that no longer have any row (every bar revised away).
pub(crate) const DELETE_ORPHAN_LATEST_SQL: &str = r#"
DELETE FROM analytics.technical_indicators_latest l
 WHERE l.symbol = ANY($1::text[])
   AND NOT EXISTS (SELECT 1 FROM analytics.technical_indicators t WHERE t.symbol = l.symbol)
"#;

static COPY_STATES_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = state_columns("{c}");
    format!("COPY pg_temp.indicator_state_stage (symbol, {columns}) FROM STDIN (FORMAT binary)")
});

static UPSERT_STATES_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = state_columns("{c}");
    let set = state_columns("{c} = EXCLUDED.{c}");
    format!(
        "INSERT INTO analytics.indicator_state AS st (symbol, {columns}) \
         SELECT symbol, {columns} FROM pg_temp.indicator_state_stage \
         ON CONFLICT (symbol) DO UPDATE SET {set}"
    )
});

pub(crate) const DELETE_STATES_SQL: &str =
    "DELETE FROM analytics.indicator_state WHERE symbol = ANY($1::text[])";

/// Session settings of the job's own connections. JIT compilation is for long analytical
/// queries: for these index lookups over ~30 partitions the planner's cost crosses the JIT
/// thresholds and LLVM then spends seconds (3.5 s measured for one 200-symbol chunk) compiling
/// expressions that run for milliseconds.
pub(crate) const SESSION_SETTINGS_SQL: &str = "SET jit = off";

/// Rows lost in a crash are recomputed from the state committed with them, so this job's
/// commits need not wait for the WAL flush; a transaction's state and rows still commit or
/// vanish together.
pub(crate) const TX_SETTINGS_SQL: &str = "SET LOCAL synchronous_commit = off";

/// Namespace of the per-symbol advisory locks ("TSIN").
pub(crate) const SYMBOL_LOCK_CLASS: i32 = 0x5453_494e;

/// 32-bit key of a symbol's advisory lock: FNV-1a of its bytes, identical in every instance
/// and release. Two symbols sharing a key only serialise against each other.
pub(crate) fn symbol_lock_key(symbol: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in symbol.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// A symbol from the work list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedSymbol {
    pub symbol: String,
    /// Present in data_ingestion.symbols; the indicator tables' FK needs it.
    pub known: bool,
    pub has_state: bool,
}

pub(crate) async fn list_symbols(
    client: &tokio_postgres::Client,
    given: Option<&[String]>,
    full: bool,
) -> Result<Vec<ListedSymbol>, IndicatorError> {
    let rows = match given {
        None => client.query(LIST_ALL_SYMBOLS_SQL, &[&full]).await,
        Some(list) => client.query(LIST_GIVEN_SYMBOLS_SQL, &[&list]).await,
    }
    .map_err(IndicatorError::query("listing symbols"))?;
    Ok(rows
        .iter()
        .map(|r| ListedSymbol {
            symbol: r.get(0),
            known: r.get(1),
            has_state: r.get(2),
        })
        .collect())
}

/// Tries to lock every symbol; returns, in order, whether this transaction holds it.
pub(crate) async fn try_lock_symbols(
    tx: &Transaction<'_>,
    symbols: &[String],
) -> Result<Vec<bool>, IndicatorError> {
    let keys: Vec<i32> = symbols.iter().map(|s| symbol_lock_key(s)).collect();
    let rows = tx
        .query(TRY_LOCK_SYMBOLS_SQL, &[&SYMBOL_LOCK_CLASS, &keys])
        .await
        .map_err(IndicatorError::query("taking symbol locks"))?;
    let mut got = vec![false; symbols.len()];
    for r in rows {
        let ord: i32 = r.get(0);
        if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| got.get_mut(i)) {
            *slot = true;
        }
    }
    Ok(got)
}

pub(crate) async fn load_states(
    tx: &Transaction<'_>,
    symbols: &[String],
) -> Result<HashMap<String, IndicatorState>, IndicatorError> {
    let rows = tx
        .query(LOAD_STATES_SQL.as_str(), &[&symbols])
        .await
        .map_err(IndicatorError::query("loading indicator states"))?;
    let mut out = HashMap::with_capacity(rows.len());
    // By name: the statement's column order is STATE_COLUMNS', not written out here.
    for r in rows {
        let closes: Vec<f64> = r.get("closes");
        let close_dates: Vec<NaiveDate> = r.get("close_dates");
        let volumes: Vec<i64> = r.get("volumes");
        let first_date: NaiveDate = r.get("first_date");
        let last_date: NaiveDate = r.get("last_date");
        let state = IndicatorState {
            spec_version: r.get("spec_version"),
            first_date: Some(first_date),
            last_date: Some(last_date),
            bars_consumed: r.get("bars_consumed"),
            closes: VecDeque::from(closes),
            close_dates: VecDeque::from(close_dates),
            volumes: VecDeque::from(volumes),
            // Not persisted: `step` rebuilds it from `closes` to the same bits.
            log_returns: VecDeque::new(),
            ema12: r.get("ema12"),
            ema26: r.get("ema26"),
            ema50: r.get("ema50"),
            macd_fast: r.get("macd_fast"),
            macd_signal: r.get("macd_signal"),
            macd_seed_sum: r.get::<_, Option<f64>>("macd_seed_sum").unwrap_or(0.0),
            avg_gain: r.get("avg_gain"),
            avg_loss: r.get("avg_loss"),
        };
        out.insert(r.get("symbol"), state);
    }
    Ok(out)
}

/// Bar changes recorded for a symbol since the job last consumed them (V19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarChange {
    /// Earliest bar time inserted, deleted or changed; None: everything.
    pub earliest: Option<DateTime<Utc>>,
    /// The change rows read: what this run may consume.
    pub ids: Vec<i64>,
}

pub async fn load_changes(
    tx: &Transaction<'_>,
    symbols: &[String],
) -> Result<HashMap<String, BarChange>, IndicatorError> {
    let rows = tx
        .query(LOAD_CHANGES_SQL, &[&symbols])
        .await
        .map_err(IndicatorError::query("loading bar changes"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let change = BarChange {
                earliest: r.get(1),
                ids: r.get(2),
            };
            (r.get(0), change)
        })
        .collect())
}

/// Deletes the change rows this run read and has now applied.
pub async fn consume_changes(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), IndicatorError> {
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(CONSUME_CHANGES_SQL, &[&ids])
        .await
        .map_err(IndicatorError::query("consuming bar changes"))?;
    Ok(())
}

/// One yahoo row of market_data as read: the close may be NULL (or NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RawBar {
    pub ts: DateTime<Utc>,
    pub close: Option<f64>,
    pub volume: Option<i64>,
}

/// Bars of each `(symbol, from)`, sorted by time; `from` None reads the whole history.
/// Aligned with `requests`. On the chunk's transaction, or on a read replica (`replica.rs`).
pub(crate) async fn load_bars(
    client: &impl GenericClient,
    requests: &[(String, Option<DateTime<Utc>>)],
) -> Result<Vec<Vec<RawBar>>, IndicatorError> {
    let (symbols, from) = unzip(requests);
    let rows = client
        .query(LOAD_BARS_SQL, &[&symbols, &from])
        .await
        .map_err(IndicatorError::query("loading bars"))?;
    let mut out = vec![Vec::new(); requests.len()];
    for r in rows {
        let ord: i32 = r.get(0);
        let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| out.get_mut(i)) else {
            continue;
        };
        let ts: Option<Vec<DateTime<Utc>>> = r.get(1);
        let closes: Option<Vec<Option<NumericF64>>> = r
            .try_get(2)
            .map_err(IndicatorError::query("reading bar closes"))?;
        let volumes: Option<Vec<Option<i64>>> = r.get(3);
        let mut bars: Vec<RawBar> = ts
            .unwrap_or_default()
            .into_iter()
            .zip(closes.unwrap_or_default())
            .zip(volumes.unwrap_or_default())
            .map(|((ts, close), volume)| RawBar {
                ts,
                close: close.map(|c| c.0),
                volume,
            })
            .collect();
        if !bars.is_sorted_by_key(|b| b.ts) {
            bars.sort_by_key(|b| b.ts);
        }
        *slot = bars;
    }
    Ok(out)
}

/// A NUMERIC read in binary, as the f64 PostgreSQL's `numeric::float8` makes of it. PostgreSQL
/// 15 converts by printing the numeric and parsing the text with `strtod`, which gives the
/// double nearest the decimal value (ties to even); so does this, without the text when the
/// digits fit 53 bits and the power of ten is exact (then one IEEE division or multiplication
/// rounds once, correctly), through Rust's equally exact parser otherwise. On the server the
/// print and parse cost ~0.1 µs of the ~0.5 µs a bar read costs it; a backfill reads 12.6 M.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NumericF64(pub f64);

impl<'a> tokio_postgres::types::FromSql<'a> for NumericF64 {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        numeric_to_f64(raw).map(NumericF64)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// Exact powers of ten as f64 (10^22 is the last one a double holds exactly).
const EXACT_POW10_F64: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// PostgreSQL's binary NUMERIC (ndigits, weight, sign, dscale, then base-10000 digits) as the
/// nearest f64; NaN and ±Infinity as themselves.
fn numeric_to_f64(raw: &[u8]) -> Result<f64, Box<dyn std::error::Error + Sync + Send>> {
    let field = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated NUMERIC".into())
    };
    let ndigits = usize::from(field(0)?);
    let weight = i32::from(field(2)? as i16);
    let sign = field(4)?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(f64::NAN),
        0xD000 => return Ok(f64::INFINITY),
        0xF000 => return Ok(f64::NEG_INFINITY),
        _ => return Err(format!("NUMERIC sign {sign:#x}").into()),
    }
    if raw.len() != 8 + 2 * ndigits {
        return Err("NUMERIC of the wrong length".into());
    }
    let digits = (0..ndigits).map(|i| field(8 + 2 * i));
    // The value is int · 10^exp10, int being the digits run together.
    let exp10 = 4 * (weight - ndigits as i32 + 1);
    let magnitude = if ndigits <= 4 {
        // < 10^16: exact in a u64, and below 2^53 in the common case.
        let mut int = 0u64;
        for d in digits {
            int = int * 10_000 + u64::from(d?);
        }
        let e = exp10.unsigned_abs() as usize;
        if int < 1 << 53 && e < EXACT_POW10_F64.len() {
            if exp10 < 0 {
                int as f64 / EXACT_POW10_F64[e]
            } else {
                int as f64 * EXACT_POW10_F64[e]
            }
        } else {
            format!("{int}e{exp10}").parse::<f64>()?
        }
    } else {
        let mut text = String::with_capacity(4 * ndigits + 8);
        for d in digits {
            text.push_str(&format!("{:04}", d?));
        }
        text.push_str(&format!("e{exp10}"));
        text.parse::<f64>()?
    };
    Ok(if sign == 0x4000 {
        -magnitude
    } else {
        magnitude
    })
}

/// Per-symbol pairs as the two arrays an `unnest($1, $2)` takes.
fn unzip<T: Copy>(pairs: &[(String, T)]) -> (Vec<&str>, Vec<T>) {
    pairs
        .iter()
        .map(|(symbol, v)| (symbol.as_str(), *v))
        .unzip()
}

/// The bar's date: its instant's calendar date in `tz`.
pub(crate) fn bar_date(tz: Tz, ts: DateTime<Utc>) -> NaiveDate {
    ts.with_timezone(&tz).date_naive()
}

/// The first instant whose date in `tz` is `date`: `ts >= start_of_day(d)` exactly when
/// `bar_date(ts) >= d`, which is how a read "from date d" is expressed on the timestamp index.
/// Midnight normally; after a gap at midnight (zones whose DST starts at 00:00), the gap's end.
pub fn start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    for quarter in 0..96 {
        let local = midnight + chrono::Duration::minutes(15 * quarter);
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    // Unreachable for real zones (gaps last hours, not a day); UTC midnight is a safe bound.
    Utc.from_utc_datetime(&midnight)
}

/// Precision and scale of a NUMERIC column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NumericType {
    pub precision: u32,
    pub scale: u32,
}

const fn numeric(precision: u32, scale: u32) -> NumericType {
    NumericType { precision, scale }
}

const N15_4: NumericType = numeric(15, 4);
const N5_2: NumericType = numeric(5, 2);
const N5_4: NumericType = numeric(5, 4);
const N10_4: NumericType = numeric(10, 4);
const N12_2: NumericType = numeric(12, 2);

/// The type as the staging table declares it.
impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Numeric(n) => write!(f, "numeric({},{})", n.precision, n.scale),
            BigInt => f.write_str("bigint"),
        }
    }
}

impl ColumnType {
    /// `v` rounded to the column, or None when it does not fit (or is not finite).
    fn fit(self, v: f64) -> Option<Fitted> {
        match self {
            Numeric(ty) => fit_numeric(v, ty).map(|(negative, n)| Fitted::Numeric {
                negative,
                n,
                scale: ty.scale,
            }),
            BigInt => fit_bigint(v).map(Fitted::BigInt),
        }
    }
}

/// A value rounded to its column, ready to encode.
#[derive(Debug, Clone, Copy)]
enum Fitted {
    Numeric { negative: bool, n: u64, scale: u32 },
    BigInt(i64),
}

fn put_fitted(buf: &mut Vec<u8>, value: Fitted) {
    match value {
        Fitted::Numeric { negative, n, scale } => put_numeric(buf, negative, n, scale),
        Fitted::BigInt(n) => put_i64(buf, n),
    }
}

/// `|v|·10^scale` rounded half away from zero (as PostgreSQL rounds a NUMERIC to its scale),
/// computed exactly from the binary value, with the sign. None for NaN/±inf and for
/// magnitudes beyond 2^113, which fit no column anyway.
pub(crate) fn scaled_round(v: f64, scale: u32) -> Option<(bool, u128)> {
    if !v.is_finite() || scale > 4 {
        return None;
    }
    let bits = v.to_bits();
    let negative = bits >> 63 == 1;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    // < 2^53 · 10^4 < 2^67
    let num = u128::from(mantissa) * 10u128.pow(scale);
    let n = if e >= 0 {
        if e > 60 {
            return None;
        }
        num << e
    } else {
        let k = (-e) as u32;
        if k >= 100 {
            0 // num < 2^67 < half of 2^k
        } else {
            let q = num >> k;
            let r = num & ((1u128 << k) - 1);
            if r >= 1u128 << (k - 1) {
                q + 1
            } else {
                q
            }
        }
    };
    Some((negative && n != 0, n))
}

/// Powers of ten that fit a u64.
const POW10: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// A value rounded to `ty`, or None when it does not fit (or is not finite). The digits of
/// every column fit a u64 (precision ≤ 15, checked at compile time below), so the encoding
/// needs no 128-bit division, a slow library call.
pub(crate) fn fit_numeric(v: f64, ty: NumericType) -> Option<(bool, u64)> {
    let (neg, n) = scaled_round(v, ty.scale)?;
    let n = u64::try_from(n).ok()?;
    (n < POW10[ty.precision as usize]).then_some((neg, n))
}

const _: () = {
    let mut i = 0;
    while i < VALUE_COLUMNS.len() {
        if let Numeric(ty) = VALUE_COLUMNS[i].1 {
            assert!(ty.precision <= 18 && ty.scale <= 4 && ty.scale <= ty.precision);
        }
        i += 1;
    }
};

/// `round(v)` for a BIGINT column (avg_volume_20), half away from zero like NUMERIC → BIGINT.
pub(crate) fn fit_bigint(v: f64) -> Option<i64> {
    // ±2^63 are exact in f64; every f64 in between converts to i64 without loss.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let r = v.round();
    (-TWO_63..TWO_63).contains(&r).then_some(r as i64)
}

/// PostgreSQL's binary NUMERIC of `±n / 10^scale` (scale ≤ 4, n < 10^18): base-10000 digits,
/// leading and trailing zero digits stripped, display scale = the column's scale. Built on the
/// stack and appended at once: this runs for 20 values of every row.
fn put_numeric(buf: &mut Vec<u8>, negative: bool, n: u64, scale: u32) {
    // Constant divisors for the columns' scales, which the compiler turns into multiplications.
    let (int, frac) = match scale {
        4 => (n / 10_000, (n % 10_000) as u16),
        2 => (n / 100, (n % 100) as u16 * 100),
        _ => {
            let pow = POW10[scale as usize];
            (n / pow, (n % pow) as u16 * 10u16.pow(4 - scale))
        }
    };
    // Integer part < 10^18: at most 5 base-10000 digits, then the fraction's one.
    let mut digits = [0u16; 6];
    let mut len = 0usize;
    let mut x = int;
    while x > 0 {
        digits[len] = (x % 10_000) as u16;
        x /= 10_000;
        len += 1;
    }
    digits[..len].reverse();
    let weight: i16 = if len > 0 { len as i16 - 1 } else { -1 };
    digits[len] = frac;
    len += 1;
    // Leading zeros can only be the absent integer part; trailing ones are stripped.
    while len > 0 && digits[len - 1] == 0 {
        len -= 1;
    }
    let (weight, sign) = if len == 0 {
        (0i16, 0u16)
    } else if negative {
        (weight, 0x4000u16)
    } else {
        (weight, 0u16)
    };
    let mut out = [0u8; 12 + 2 * 6];
    out[0..4].copy_from_slice(&(8 + 2 * len as i32).to_be_bytes());
    out[4..6].copy_from_slice(&(len as i16).to_be_bytes());
    out[6..8].copy_from_slice(&weight.to_be_bytes());
    out[8..10].copy_from_slice(&sign.to_be_bytes());
    out[10..12].copy_from_slice(&(scale as i16).to_be_bytes());
    for (i, d) in digits.iter().enumerate() {
        out[12 + 2 * i..14 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    // The whole array, then cut: a copy of constant length is a few stores, one of variable
    // length a memmove call.
    let end = buf.len() + 12 + 2 * len;
    buf.extend_from_slice(&out);
    buf.truncate(end);
}

fn put_null(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(-1i32).to_be_bytes());
}

fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&v.to_be_bytes());
}

/// PostgreSQL's binary DATE: days since 2000-01-01.
fn put_date(buf: &mut Vec<u8>, d: NaiveDate) {
    const PG_EPOCH_DAYS_CE: i32 = 730_120; // 2000-01-01 as days from 0001-01-01
    buf.extend_from_slice(&4i32.to_be_bytes());
    buf.extend_from_slice(&(d.num_days_from_ce() - PG_EPOCH_DAYS_CE).to_be_bytes());
}

/// A value written NULL because it does not fit its column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Overflow {
    pub column: &'static str,
    pub date: NaiveDate,
    pub value: f64,
}

/// Builds a binary COPY payload of technical_indicators rows (the column list of
/// [`COPY_ROWS_SQL`] and [`COPY_STAGED_ROWS_SQL`]). Values are rounded to their column here and
/// only here; one that does not fit is written NULL and reported.
#[derive(Debug)]
pub(crate) struct RowEncoder {
    /// Filled pieces of about [`PIECE_BYTES`], sent as separate COPY messages so no single
    /// buffer (or frame) grows with the chunk.
    pieces: Vec<Vec<u8>>,
    buf: Vec<u8>,
    rows: u64,
    pool: PiecePool,
}

const PIECE_BYTES: usize = 1 << 20;
/// A piece's capacity: a row never makes it grow (a row is under 1 KiB).
const PIECE_CAPACITY: usize = PIECE_BYTES + 1024;

/// Fields of a row: symbol, date and the value columns.
const FIELDS: i16 = 2 + VALUE_COLUMNS.len() as i16;

/// For each of [`IndicatorRow::values`]: its column's type, and how many columns carry it
/// (`rsi_14` also fills `rsi`, the column before it; `current_volume`, an integer, comes
/// last). Derived from [`VALUE_COLUMNS`] once, so [`RowEncoder::push`] compares no names.
static VALUE_SLOTS: LazyLock<[(ColumnType, u8); 20]> = LazyLock::new(|| {
    let mut columns = VALUE_COLUMNS.iter().filter(|(c, _)| *c != "rsi");
    IndicatorRow::VALUE_NAMES.map(|name| {
        let &(column, ty) = columns.next().expect("a column for every value");
        assert_eq!(
            column, name,
            "VALUE_COLUMNS and IndicatorRow::VALUE_NAMES disagree"
        );
        (ty, if name == "rsi_14" { 2 } else { 1 })
    })
});

/// Payload buffers given back once their COPY message has been handed to the connection, for
/// the next chunk's encoder. A fresh 1 MiB buffer costs 256 page faults (and the kernel's
/// zeroing) when first written, and the allocator returns freed ones to the system: a backfill
/// encodes ~4.5 GB, so without reuse a quarter of the encoding time went to faulting pages in.
/// Shared by a run's workers and dropped with the run; holds at most [`POOLED_PIECES`].
#[derive(Debug, Clone, Default)]
pub(crate) struct PiecePool(Arc<Mutex<Vec<Vec<u8>>>>);

/// Two 64-symbol backfill chunks' worth (~57 pieces each): what two workers have in flight.
const POOLED_PIECES: usize = 128;

impl PiecePool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_else(|| Vec::with_capacity(PIECE_CAPACITY))
    }

    fn give(&self, mut piece: Vec<u8>) {
        if piece.capacity() != PIECE_CAPACITY {
            return;
        }
        piece.clear();
        if let Ok(mut free) = self.0.lock() {
            if free.len() < POOLED_PIECES {
                free.push(piece);
            }
        }
    }
}

/// One COPY message's bytes; back to its pool when the connection has taken them.
struct Piece {
    data: Vec<u8>,
    sent: usize,
    pool: PiecePool,
}

impl bytes::Buf for Piece {
    fn remaining(&self) -> usize {
        self.data.len() - self.sent
    }

    fn chunk(&self) -> &[u8] {
        &self.data[self.sent..]
    }

    fn advance(&mut self, n: usize) {
        assert!(
            n <= self.remaining(),
            "advanced past the end of a COPY piece"
        );
        self.sent += n;
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

impl Default for RowEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RowEncoder {
    /// An encoder whose buffers are freed after sending.
    pub(crate) fn new() -> Self {
        Self::with_pool(PiecePool::default())
    }

    /// An encoder that takes its buffers from `pool` and returns them there after sending.
    pub(crate) fn with_pool(pool: PiecePool) -> Self {
        let mut buf = pool.take();
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        RowEncoder {
            pieces: Vec::new(),
            buf,
            rows: 0,
            pool,
        }
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one row; pushes every value written NULL for not fitting onto `overflows`.
    pub(crate) fn push(&mut self, symbol: &str, row: &IndicatorRow, overflows: &mut Vec<Overflow>) {
        if self.buf.len() >= PIECE_BYTES {
            let full = std::mem::replace(&mut self.buf, self.pool.take());
            self.pieces.push(full);
        }
        let slots = &*VALUE_SLOTS;
        let buf = &mut self.buf;
        buf.extend_from_slice(&FIELDS.to_be_bytes());
        buf.extend_from_slice(&(symbol.len() as i32).to_be_bytes());
        buf.extend_from_slice(symbol.as_bytes());
        put_date(buf, row.date);
        for (k, (value, &(ty, times))) in row.values().into_iter().zip(slots).enumerate() {
            let Some(v) = value else {
                for _ in 0..times {
                    put_null(buf);
                }
                continue;
            };
            match ty.fit(v) {
                Some(f) => {
                    for _ in 0..times {
                        put_fitted(buf, f);
                    }
                }
                None => {
                    for _ in 0..times {
                        put_null(buf);
                        overflows.push(Overflow {
                            column: IndicatorRow::VALUE_NAMES[k],
                            date: row.date,
                            value: v,
                        });
                    }
                }
            }
        }
        // Not among the f64 values: never NULL, an integer already.
        put_i64(buf, row.current_volume);
        self.rows += 1;
    }

    /// The finished payload (with the trailer).
    pub(crate) fn finish(mut self) -> CopyPayload {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.pieces.push(std::mem::take(&mut self.buf));
        CopyPayload {
            pieces: std::mem::take(&mut self.pieces),
            pool: self.pool.clone(),
        }
    }
}

impl Drop for RowEncoder {
    /// An encoder never finished (its chunk failed first) still gives its buffers back.
    fn drop(&mut self) {
        for piece in self.pieces.drain(..).chain([std::mem::take(&mut self.buf)]) {
            self.pool.give(piece);
        }
    }
}

/// A binary COPY stream in pieces.
#[derive(Debug, Default)]
pub(crate) struct CopyPayload {
    pieces: Vec<Vec<u8>>,
    pool: PiecePool,
}

impl CopyPayload {
    /// What sending does to the buffers, for a test that times the encoding.
    #[cfg(test)]
    pub(crate) fn drop_as_sent(self) {
        for piece in self.pieces {
            self.pool.give(piece);
        }
    }
}

/// Sends a payload built by [`RowEncoder`] with `copy_sql`; returns the rows copied.
pub(crate) async fn copy_rows(
    tx: &Transaction<'_>,
    copy_sql: &str,
    payload: CopyPayload,
) -> Result<u64, IndicatorError> {
    let sink = tx
        .copy_in::<_, Piece>(copy_sql)
        .await
        .map_err(IndicatorError::query("starting the row COPY"))?;
    futures::pin_mut!(sink);
    let pool = payload.pool;
    for data in payload.pieces {
        let piece = Piece {
            data,
            sent: 0,
            pool: pool.clone(),
        };
        sink.feed(piece)
            .await
            .map_err(IndicatorError::query("copying indicator rows"))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(IndicatorError::query("copying indicator rows"))
}

/// Deletes each symbol's rows dated on or after its date (None: all of them).
pub(crate) async fn delete_rows_from(
    tx: &Transaction<'_>,
    targets: &[(String, Option<NaiveDate>)],
) -> Result<u64, IndicatorError> {
    if targets.is_empty() {
        return Ok(0);
    }
    let (symbols, dates) = unzip(targets);
    tx.execute(DELETE_ROWS_FROM_SQL, &[&symbols, &dates])
        .await
        .map_err(IndicatorError::query("deleting rows to rewrite"))
}

/// Writes recomputed symbols' rows through the staging table: the payload holds each symbol's
/// rows from its date on (None: all); rows of those dates that are gone are deleted, changed
/// rows updated, new ones inserted. Returns rows inserted or changed.
pub(crate) async fn upsert_rows(
    tx: &Transaction<'_>,
    targets: &[(String, Option<NaiveDate>)],
    payload: CopyPayload,
) -> Result<u64, IndicatorError> {
    copy_rows(tx, &COPY_STAGED_ROWS_SQL, payload).await?;
    let (symbols, dates) = unzip(targets);
    tx.execute(DELETE_UNSTAGED_ROWS_SQL, &[&symbols, &dates])
        .await
        .map_err(IndicatorError::query("deleting rows of vanished bars"))?;
    tx.execute(UPSERT_STAGED_ROWS_SQL.as_str(), &[])
        .await
        .map_err(IndicatorError::query("upserting recomputed rows"))
}

pub(crate) async fn refresh_latest(
    tx: &Transaction<'_>,
    symbols: &[String],
) -> Result<(), IndicatorError> {
    if symbols.is_empty() {
        return Ok(());
    }
    let err = IndicatorError::query("updating technical_indicators_latest");
    tx.execute(REFRESH_LATEST_SQL.as_str(), &[&symbols])
        .await
        .map_err(err)?;
    tx.execute(DELETE_ORPHAN_LATEST_SQL, &[&symbols])
        .await
        .map_err(err)?;
    Ok(())
}

/// A state to persist.
#[derive(Debug, Clone)]
pub(crate) struct StateToSave {
    pub symbol: String,
    pub state: IndicatorState,
}

pub(crate) async fn save_states(
    tx: &Transaction<'_>,
    states: &[StateToSave],
) -> Result<(), IndicatorError> {
    if states.is_empty() {
        return Ok(());
    }
    let err = IndicatorError::query("saving indicator states");
    let sink = tx.copy_in(COPY_STATES_SQL.as_str()).await.map_err(err)?;
    let types: Vec<Type> = std::iter::once(Type::VARCHAR)
        .chain(STATE_COLUMNS.iter().map(|(_, ty, _)| ty.clone()))
        .collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for s in states {
        let st = &s.state;
        let closes: Vec<f64> = st.closes.iter().copied().collect();
        let dates: Vec<NaiveDate> = st.close_dates.iter().copied().collect();
        let volumes: Vec<i64> = st.volumes.iter().copied().collect();
        let prev_close = st.prev_close();
        writer
            .as_mut()
            .write(&[
                &s.symbol,
                &st.spec_version,
                &st.first_date,
                &st.last_date,
                &st.bars_consumed,
                &closes,
                &dates,
                &volumes,
                &st.ema12,
                &st.ema26,
                &st.ema50,
                &st.macd_fast,
                &st.macd_signal,
                &st.macd_seed_sum,
                &st.avg_gain,
                &st.avg_loss,
                &prev_close,
            ])
            .await
            .map_err(err)?;
    }
    writer.finish().await.map_err(err)?;
    tx.execute(UPSERT_STATES_SQL.as_str(), &[])
        .await
        .map_err(err)?;
    Ok(())
}

pub(crate) async fn delete_states(
    tx: &Transaction<'_>,
    symbols: &[String],
) -> Result<(), IndicatorError> {
    if symbols.is_empty() {
        return Ok(());
    }
    tx.execute(DELETE_STATES_SQL, &[&symbols])
        .await
        .map_err(IndicatorError::query("deleting indicator states"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_numeric(b: &[u8]) -> Option<String> {
        let len = i32::from_be_bytes(b[0..4].try_into().unwrap());
        if len < 0 {
            return None;
        }
        let b = &b[4..];
        let nd = i16::from_be_bytes([b[0], b[1]]) as usize;
        let weight = i16::from_be_bytes([b[2], b[3]]) as i32;
        let sign = u16::from_be_bytes([b[4], b[5]]);
        let dscale = i16::from_be_bytes([b[6], b[7]]) as usize;
        assert_eq!(len as usize, 8 + 2 * nd);
        let digits: Vec<u16> = (0..nd)
            .map(|i| u16::from_be_bytes([b[8 + 2 * i], b[9 + 2 * i]]))
            .collect();
        assert!(digits.iter().all(|&d| d < 10_000));
        if nd > 0 {
            assert_ne!(digits[nd - 1], 0, "trailing zero digit");
        }
        // Value as a decimal string with dscale digits.
        let mut int = String::new();
        for w in (0..=weight.max(0)).rev() {
            let idx = weight - w;
            let d = if idx >= 0 && (idx as usize) < nd {
                digits[idx as usize]
            } else {
                0
            };
            int.push_str(&format!("{d:04}"));
        }
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let mut frac = String::new();
        for k in 1..=dscale.div_ceil(4) as i32 {
            let idx = weight + k;
            let d = if idx >= 0 && (idx as usize) < nd {
                digits[idx as usize]
            } else {
                0
            };
            frac.push_str(&format!("{d:04}"));
        }
        frac.truncate(dscale);
        let s = if sign == 0x4000 { "-" } else { "" };
        Some(format!("{s}{int}.{frac}"))
    }

    fn encode(v: f64, ty: NumericType) -> Option<String> {
        let mut buf = Vec::new();
        match fit_numeric(v, ty) {
            Some((neg, n)) => put_numeric(&mut buf, neg, n, ty.scale),
            None => put_null(&mut buf),
        }
        decode_numeric(&buf)
    }

    fn reference(v: f64, scale: u32) -> String {
        use rust_decimal::prelude::*;
        let d = Decimal::from_f64_retain(v)
            .unwrap()
            .round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
        let mut s = format!("{d:.prec$}", prec = scale as usize);
        if s.starts_with("-") && s[1..].chars().all(|c| c == '0' || c == '.') {
            s.remove(0);
        }
        s
    }

    #[test]
    fn numeric_encoding_rounds_half_away_from_zero() {
        for (v, ty, want) in [
            (0.0, N15_4, Some("0.0000")),
            (-0.0, N15_4, Some("0.0000")),
            (1.0, N15_4, Some("1.0000")),
            (0.125, N5_2, Some("0.13")),
            (-0.125, N5_2, Some("-0.13")),
            (0.375, N5_2, Some("0.38")),
            (2.5e-5, N15_4, Some("0.0000")), // just below 0.000025 in binary
            (0.00005, N15_4, Some("0.0001")),
            (-0.00004, N15_4, Some("0.0000")),
            (12345.6789, N15_4, Some("12345.6789")),
            (99_999_999_999.999_94, N15_4, Some("99999999999.9999")),
            (99_999_999_999.999_95, N15_4, None),
            (999.99, N5_2, Some("999.99")),
            (999.995, N5_2, None),
            (1000.0, N5_2, None),
            (9.99994, N5_4, Some("9.9999")),
            (10.0, N5_4, None),
            (1e300, N15_4, None),
            (f64::NAN, N15_4, None),
            (f64::INFINITY, N12_2, None),
            (100000000.0, N15_4, Some("100000000.0000")),
            (10000.0001, N15_4, Some("10000.0001")),
            (5e-324, N15_4, Some("0.0000")),
        ] {
            assert_eq!(encode(v, ty).as_deref(), want, "{v:e} as {ty:?}");
        }
    }

    #[test]
    fn numeric_encoding_matches_decimal_rounding() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mag = 10f64.powi(i % 14 - 4);
            let v = ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * mag;
            for ty in [N15_4, N12_2] {
                assert_eq!(encode(v, ty), Some(reference(v, ty.scale)), "{v:e}");
            }
        }
    }

    #[test]
    fn bigint_rounding() {
        assert_eq!(fit_bigint(2.5), Some(3));
        assert_eq!(fit_bigint(-2.5), Some(-3));
        assert_eq!(fit_bigint(9.3e18), None);
        assert_eq!(fit_bigint(f64::NAN), None);
        assert_eq!(fit_bigint(9.2e18), Some(9_200_000_000_000_000_000));
    }

    #[test]
    fn start_of_day_is_the_first_instant_of_the_local_date() {
        let ny = chrono_tz::America::New_York;
        let d = NaiveDate::from_ymd_opt(2027, 3, 14).unwrap();
        let t = start_of_day(ny, d);
        assert_eq!(t.to_rfc3339(), "2027-03-14T05:00:00+00:00");
        assert_eq!(bar_date(ny, t), d);
        assert!(bar_date(ny, t - chrono::Duration::microseconds(1)) < d);
        // A zone whose DST began at midnight: 2018-11-04 00:00 did not exist in São Paulo.
        let sp = chrono_tz::America::Sao_Paulo;
        let d = NaiveDate::from_ymd_opt(2018, 11, 4).unwrap();
        let t = start_of_day(sp, d);
        assert_eq!(bar_date(sp, t), d);
        assert!(bar_date(sp, t - chrono::Duration::microseconds(1)) < d);
    }

    #[test]
    fn value_columns_are_the_named_values_with_rsi_and_current_volume() {
        let bar = crate::indicators::step::Bar {
            date: NaiveDate::from_ymd_opt(2024, 1, 2).unwrap(),
            close: 1.0,
            volume: 1,
        };
        let (_, rows) = crate::indicators::step::full(&[bar]);
        let mut want: Vec<&str> = rows[0].named_values().iter().map(|(c, _)| *c).collect();
        want.insert(want.iter().position(|c| *c == "rsi_14").unwrap(), "rsi");
        want.push("current_volume");
        let columns: Vec<&str> = VALUE_COLUMNS.iter().map(|(c, _)| *c).collect();
        assert_eq!(columns, want);
    }

    /// PostgreSQL's own numeric_send of a decimal string, for the tests.
    fn numeric_bytes(text: &str) -> Vec<u8> {
        let (neg, text) = match text.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, text),
        };
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let int = int.trim_start_matches('0');
        // Base-10000 groups aligned on the decimal point.
        let pad_int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let pad_frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let mut digits: Vec<u16> = pad_int
            .as_bytes()
            .chunks(4)
            .chain(pad_frac.as_bytes().chunks(4))
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (pad_int.len() / 4) as i16 - 1;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        let mut b = Vec::new();
        b.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        let sign: u16 = if neg && !digits.is_empty() { 0x4000 } else { 0 };
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&(frac.len() as i16).to_be_bytes());
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_reads_as_strtod_of_its_text() {
        for text in [
            "0",
            "0.0000",
            "1",
            "12.3400",
            "0.1000",
            "0.0001",
            "123.4567",
            "-2.5000",
            "99999999999.9999",
            "1234567890123.45",
            "0.30000000000000004441",
            "9007199254740993",
            "123456789012345678901234567890.123456789",
            "0.000000000000000000000000000001",
        ] {
            let want: f64 = text.parse().unwrap();
            let got = numeric_to_f64(&numeric_bytes(text)).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}");
        }
        // Random closes of NUMERIC(15,4), the column's type.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = x % 1_000_000_000_000_000;
            let text = format!("{}.{:04}", n / 10_000, n % 10_000);
            let want: f64 = text.parse().unwrap();
            let got = numeric_to_f64(&numeric_bytes(&text)).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}");
        }
        let special = |sign: u16| {
            let mut b = vec![0, 0, 0, 0];
            b.extend_from_slice(&sign.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            numeric_to_f64(&b).unwrap()
        };
        assert!(special(0xC000).is_nan());
        assert_eq!(special(0xD000), f64::INFINITY);
        assert_eq!(special(0xF000), f64::NEG_INFINITY);
        assert!(numeric_to_f64(&[0, 1, 0, 0]).is_err());
    }

    #[test]
    fn lock_keys_are_stable() {
        assert_eq!(symbol_lock_key(""), 0x811c_9dc5u32 as i32);
        assert_ne!(symbol_lock_key("AAPL"), symbol_lock_key("MSFT"));
        assert_eq!(symbol_lock_key("AAPL"), symbol_lock_key("AAPL"));
    }
}
