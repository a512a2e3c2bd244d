//! Schema tests: the migrations in `migrations/` against a real PostgreSQL.
//!
//! Each test gets its own database cloned from the migrated template (`common::TestDb`), so tests
//! may insert, delete and create partitions freely. The connection is expected to be a superuser
//! (the privilege test uses `SET ROLE trading_sync`).

use crate::common;

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use common::TestDb;

/// Every table the migrations must create, schema-qualified.
const TABLES: &[&str] = &[
    "data_ingestion.symbols",
    "data_ingestion.delisted_symbols",
    "data_ingestion.symbol_data_status",
    "data_ingestion.market_data",
    "data_ingestion.market_data_default",
    "data_ingestion.key_statistics",
    "data_ingestion.institutional_holders",
    "data_ingestion.data_quality_logs",
    "execution.orders",
    "execution.trades",
    "execution.positions",
    "strategy_engine.strategies",
    "strategy_engine.strategy_signals",
    "strategy_engine.strategy_performance",
    "risk_management.risk_limits",
    "risk_management.risk_events",
    "analytics.portfolio_summary",
    "analytics.performance_metrics",
    "analytics.technical_indicators",
    "analytics.technical_indicators_latest",
    "analytics.applied_trades",
    "analytics.dead_letters",
    "analytics.indicator_state",
    "notification.notification_configs",
    "notification.notification_logs",
    "logging.system_logs",
    "logging.performance_logs",
    "logging.archived_system_logs",
    "logging.archived_performance_logs",
    "shared.audit_log",
    "shared.system_config",
];

/// The schema-qualified name of the partition a market_data row is stored in. Built from the
/// catalog rather than `tableoid::regclass::text`, whose output drops the schema when it is on the
/// search_path.
const PARTITION_OF_ROW: &str = "(SELECT n.nspname || '.' || c.relname \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid = tableoid)";

const DEFAULT_PARTITION: &str = "data_ingestion.market_data_default";

fn utc(year: i32, month: u32, day: u32, hour: u32, min: u32, sec: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, hour, min, sec)
        .unwrap()
}

fn day(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A market_data bar; `Bar::new` gives a valid one, the builder methods spoil it.
#[derive(Clone, Copy)]
struct Bar<'a> {
    symbol: &'a str,
    ts: DateTime<Utc>,
    ohlc: [&'a str; 4],
    volume: i64,
    source: &'a str,
}

impl<'a> Bar<'a> {
    fn new(symbol: &'a str, ts: DateTime<Utc>) -> Self {
        Bar {
            symbol,
            ts,
            ohlc: ["10", "11", "9", "10.5"],
            volume: 1_000,
            source: "yahoo",
        }
    }

    fn ohlc(self, open: &'a str, high: &'a str, low: &'a str, close: &'a str) -> Self {
        Bar {
            ohlc: [open, high, low, close],
            ..self
        }
    }

    fn volume(self, volume: i64) -> Self {
        Bar { volume, ..self }
    }

    fn source(self, source: &'a str) -> Self {
        Bar { source, ..self }
    }

    /// Inserts the bar; returns the partition it landed in.
    async fn insert(&self, client: &Client) -> Result<String, tokio_postgres::Error> {
        let [open, high, low, close] = self.ohlc.map(dec);
        let sql = format!(
            "INSERT INTO data_ingestion.market_data \
                 (symbol, \"timestamp\", open, high, low, close, volume, data_source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING {PARTITION_OF_ROW}"
        );
        let row = client
            .query_one(
                &sql,
                &[
                    &self.symbol,
                    &self.ts,
                    &open,
                    &high,
                    &low,
                    &close,
                    &self.volume,
                    &self.source,
                ],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// (id, timestamp, partition) of every bar of `symbol`, oldest first.
async fn bars_of(client: &Client, symbol: &str) -> Vec<(i64, DateTime<Utc>, String)> {
    let sql = format!(
        "SELECT id, \"timestamp\", {PARTITION_OF_ROW} FROM data_ingestion.market_data \
         WHERE symbol = $1 ORDER BY \"timestamp\""
    );
    client
        .query(&sql, &[&symbol])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Asserts that `result` failed with `state`, and with `constraint` when one is given.
fn assert_db_error<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    state: &SqlState,
    constraint: Option<&str>,
) {
    let err = result.expect_err("statement should have failed");
    assert_eq!(err.code(), Some(state), "unexpected error: {err:?}");
    if let Some(name) = constraint {
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.constraint(), Some(name), "unexpected constraint: {db:?}");
    }
}

#[tokio::test]
async fn every_table_and_enum_exists() {
    let db = TestDb::new().await;
    let rows = db
        .client
        .query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables \
             WHERE table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap();
    let present: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&str> = TABLES
        .iter()
        .copied()
        .filter(|t| !present.contains(*t))
        .collect();
    assert!(missing.is_empty(), "missing tables: {missing:?}");

    let kind: i8 = db
        .client
        .query_one("SELECT relkind FROM pg_catalog.pg_class WHERE oid = 'data_ingestion.market_data'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind as u8, b'p', "market_data must be partitioned");

    let enums: Vec<String> = common::first_column(
        &db.client,
        "SELECT t.typname::text FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = 'execution' AND t.typtype = 'e' ORDER BY 1",
    )
    .await;
    assert_eq!(
        enums,
        ["order_side", "order_status", "order_type", "time_in_force"]
    );
}

#[tokio::test]
async fn every_updated_at_column_has_the_trigger() {
    let db = TestDb::new().await;
    let rows = db
        .client
        .query(
            "SELECT c.table_schema || '.' || c.table_name \
             FROM information_schema.columns c \
             JOIN information_schema.tables t USING (table_schema, table_name) \
             WHERE c.column_name = 'updated_at' AND t.table_type = 'BASE TABLE' \
               AND NOT EXISTS ( \
                   SELECT 1 FROM pg_catalog.pg_trigger tg \
                   WHERE tg.tgrelid = format('%I.%I', c.table_schema, c.table_name)::regclass \
                     AND tg.tgfoid = 'shared.set_updated_at()'::regprocedure \
                     AND NOT tg.tgisinternal)",
            &[],
        )
        .await
        .unwrap();
    let without: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        without.is_empty(),
        "tables with updated_at but no trigger: {without:?}"
    );
}

#[tokio::test]
async fn bad_bars_are_rejected_by_checks() {
    let db = TestDb::new().await;
    let c = &db.client;
    let t = utc(2024, 3, 1, 0, 0, 0);

    // high below open: violates valid_ohlc only.
    let high_below_open = Bar::new("AAPL", t).ohlc("10", "9", "8", "9");
    assert_db_error(
        high_below_open.insert(c).await,
        &SqlState::CHECK_VIOLATION,
        Some("valid_ohlc"),
    );

    // low above close: valid_ohlc.
    let low_above_close = Bar::new("AAPL", t).ohlc("10", "12", "10.5", "10.2");
    assert_db_error(
        low_above_close.insert(c).await,
        &SqlState::CHECK_VIOLATION,
        Some("valid_ohlc"),
    );

    // All zero: consistent OHLC, but not positive.
    let zero = Bar::new("AAPL", t).ohlc("0", "0", "0", "0");
    assert_db_error(
        zero.insert(c).await,
        &SqlState::CHECK_VIOLATION,
        Some("positive_prices"),
    );

    let negative_volume = Bar::new("AAPL", t).volume(-1);
    assert_db_error(
        negative_volume.insert(c).await,
        &SqlState::CHECK_VIOLATION,
        Some("non_negative_volume"),
    );

    assert_eq!(
        count(c, "SELECT count(*) FROM data_ingestion.market_data").await,
        0
    );
    assert_eq!(
        Bar::new("AAPL", t).insert(c).await.unwrap(),
        "data_ingestion.market_data_y2024"
    );
}

#[tokio::test]
async fn bars_are_routed_to_yearly_or_default_partition() {
    let db = TestDb::new().await;
    let c = &db.client;

    let old = Bar::new("AAPL", utc(1950, 6, 1, 0, 0, 0))
        .insert(c)
        .await
        .unwrap();
    assert_eq!(old, DEFAULT_PARTITION);

    let recent = Bar::new("AAPL", utc(2024, 3, 1, 14, 30, 0))
        .insert(c)
        .await
        .unwrap();
    assert_eq!(recent, "data_ingestion.market_data_y2024");

    // Partitions are UTC calendar years: the last second of 2024 UTC is in 2024's partition.
    let edge = Bar::new("AAPL", utc(2024, 12, 31, 23, 59, 59))
        .insert(c)
        .await
        .unwrap();
    assert_eq!(edge, "data_ingestion.market_data_y2024");
    let next = Bar::new("AAPL", utc(2025, 1, 1, 0, 0, 0))
        .insert(c)
        .await
        .unwrap();
    assert_eq!(next, "data_ingestion.market_data_y2025");
}

#[tokio::test]
async fn ensure_partition_moves_rows_out_of_default() {
    let db = TestDb::new().await;
    let c = &db.client;

    for ts in [
        utc(1950, 6, 1, 0, 0, 0),
        utc(1950, 12, 31, 23, 59, 59),
        utc(1951, 1, 1, 0, 0, 0),
    ] {
        assert_eq!(
            Bar::new("IBM", ts).insert(c).await.unwrap(),
            DEFAULT_PARTITION
        );
    }
    let before = bars_of(c, "IBM").await;

    let created: bool = c
        .query_one(
            "SELECT data_ingestion.ensure_market_data_partition(1950)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(created);

    let after = bars_of(c, "IBM").await;
    let partitions: Vec<&str> = after.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(
        partitions,
        [
            "data_ingestion.market_data_y1950",
            "data_ingestion.market_data_y1950",
            DEFAULT_PARTITION
        ]
    );
    // Same rows, same ids: moved, not re-numbered, none lost.
    let key = |v: &[(i64, DateTime<Utc>, String)]| {
        v.iter().map(|(id, ts, _)| (*id, *ts)).collect::<Vec<_>>()
    };
    assert_eq!(key(&after), key(&before));

    // Idempotent: the partition exists now.
    let again: bool = c
        .query_one(
            "SELECT data_ingestion.ensure_market_data_partition(1950)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!again);

    // The range form creates only what is missing (1951, 1952) and moves the 1951 bar.
    let n: i32 = c
        .query_one(
            "SELECT data_ingestion.ensure_market_data_partitions(1950, 1952)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let last = bars_of(c, "IBM").await;
    assert_eq!(last[2].2, "data_ingestion.market_data_y1951");
    assert_eq!(
        count(c, "SELECT count(*) FROM data_ingestion.market_data_default").await,
        0
    );

    // New bars of a created year go straight to its partition.
    let routed = Bar::new("IBM", utc(1952, 2, 1, 0, 0, 0))
        .insert(c)
        .await
        .unwrap();
    assert_eq!(routed, "data_ingestion.market_data_y1952");

    // Out-of-range arguments are refused, not acted on.
    let bad = c
        .query_one(
            "SELECT data_ingestion.ensure_market_data_partitions(1952, 1950)",
            &[],
        )
        .await;
    assert_db_error(bad, &SqlState::INVALID_PARAMETER_VALUE, None);
}

#[tokio::test]
async fn duplicate_bar_refused_per_data_source() {
    let db = TestDb::new().await;
    let c = &db.client;
    let bar = Bar::new("MSFT", utc(2024, 5, 1, 0, 0, 0));

    bar.insert(c).await.unwrap();
    assert_db_error(bar.insert(c).await, &SqlState::UNIQUE_VIOLATION, None);

    // Same symbol and instant from another provider is a different bar.
    let other = bar.source("polygon").insert(c).await.unwrap();
    assert_eq!(other, "data_ingestion.market_data_y2024");

    let sources: Vec<String> = common::first_column(
        c,
        "SELECT data_source FROM data_ingestion.market_data WHERE symbol = 'MSFT' ORDER BY 1",
    )
    .await;
    assert_eq!(sources, ["polygon", "yahoo"]);
}

#[tokio::test]
async fn updated_at_trigger_moves_updated_at() {
    let db = TestDb::new().await;
    let c = &db.client;
    let past = utc(2000, 1, 1, 0, 0, 0);

    // INSERT does not fire the (BEFORE UPDATE) trigger, so the row starts with a past updated_at.
    c.execute(
        "INSERT INTO data_ingestion.symbols (symbol, name, created_at, updated_at) VALUES ('AAPL', 'Apple', $1, $1)",
        &[&past],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO analytics.portfolio_summary (account_id, symbol, created_at, updated_at) VALUES ('ACC1', 'AAPL', $1, $1)",
        &[&past],
    )
    .await
    .unwrap();

    let t0: DateTime<Utc> = c.query_one("SELECT now()", &[]).await.unwrap().get(0);
    c.execute(
        "UPDATE data_ingestion.symbols SET name = 'Apple Inc.' WHERE symbol = 'AAPL'",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE analytics.portfolio_summary SET trade_count = trade_count + 1 WHERE account_id = 'ACC1'",
        &[],
    )
    .await
    .unwrap();

    for table in ["data_ingestion.symbols", "analytics.portfolio_summary"] {
        let row = c
            .query_one(&format!("SELECT created_at, updated_at FROM {table}"), &[])
            .await
            .unwrap();
        let created: DateTime<Utc> = row.get(0);
        let updated: DateTime<Utc> = row.get(1);
        assert_eq!(created, past, "{table}: created_at must not change");
        assert!(
            updated >= t0,
            "{table}: updated_at {updated} not moved (statement began after {t0})"
        );
    }
}

/// V32: the date BRIN keeps one page per range but no longer files a summarization request per
/// filled page (a backfill overflowed autovacuum's 256-request queue and logged every refusal
/// with its COPY statement); VACUUM summarizes instead.
#[tokio::test]
async fn indicator_date_brin_is_not_autosummarized() {
    let db = TestDb::new().await;
    let options: Vec<String> = db
        .client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = 'analytics.idx_technical_indicators_date'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        options.contains(&"autosummarize=off".to_owned()),
        "{options:?}"
    );
    assert!(
        options.contains(&"pages_per_range=1".to_owned()),
        "{options:?}"
    );
}

/// V31: the aggregates' triggers skip a row whose statement set updated_at to now() (what
/// trading-sync's upserts and marks do), and still set now() for every other UPDATE — one that
/// leaves updated_at alone or sets another value — so every writer gets what it got before.
#[tokio::test]
async fn aggregate_updated_at_is_now_after_any_update() {
    let db = TestDb::new().await;
    let c = &db.client;
    let past = utc(2000, 1, 1, 0, 0, 0);
    c.execute(
        "INSERT INTO analytics.portfolio_summary (account_id, symbol, updated_at) VALUES ('ACC1', 'AAPL', $1)",
        &[&past],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO analytics.performance_metrics (strategy, date, updated_at) VALUES ('s1', '2024-01-02', $1)",
        &[&past],
    )
    .await
    .unwrap();

    let updates = [
        "UPDATE analytics.portfolio_summary SET trade_count = trade_count + 1",
        "UPDATE analytics.portfolio_summary SET trade_count = trade_count + 1, updated_at = now()",
        "UPDATE analytics.portfolio_summary SET trade_count = trade_count + 1, updated_at = '2001-01-01Z'",
        "UPDATE analytics.performance_metrics SET total_trades = total_trades + 1",
        "UPDATE analytics.performance_metrics SET total_trades = total_trades + 1, updated_at = now()",
        "UPDATE analytics.performance_metrics SET total_trades = total_trades + 1, updated_at = '2001-01-01Z'",
    ];
    for sql in updates {
        let table = sql.split_whitespace().nth(1).unwrap();
        let select = format!("SELECT updated_at FROM {table}");
        let before: DateTime<Utc> = c.query_one(&select, &[]).await.unwrap().get(0);
        // Outside a transaction block each statement is its own transaction: now() is its start.
        let t0: DateTime<Utc> = c.query_one("SELECT now()", &[]).await.unwrap().get(0);
        c.execute(sql, &[]).await.unwrap();
        let updated: DateTime<Utc> = c.query_one(&select, &[]).await.unwrap().get(0);
        assert!(
            updated >= t0 && updated != before,
            "{sql}: updated_at {updated} (was {before}), not the statement's now()"
        );
    }
}

#[tokio::test]
async fn deleting_a_symbol_cascades() {
    let db = TestDb::new().await;
    let c = &db.client;
    c.batch_execute(
        "INSERT INTO data_ingestion.symbols (symbol, name) VALUES ('GONE', 'Gone Corp'), ('KEEP', 'Kept Inc');
         INSERT INTO data_ingestion.key_statistics (symbol, date, market_cap)
             VALUES ('GONE', '2024-01-02', 1000000), ('KEEP', '2024-01-02', 2000000);
         INSERT INTO data_ingestion.institutional_holders (symbol, date_reported, holder_name, shares)
             VALUES ('GONE', '2024-01-02', 'Vanguard', 100), ('KEEP', '2024-01-02', 'Vanguard', 200);
         INSERT INTO data_ingestion.symbol_data_status (symbol, date, status)
             VALUES ('GONE', '2024-01-02', 'success'), ('KEEP', '2024-01-02', 'success');
         INSERT INTO data_ingestion.delisted_symbols (symbol, delist_date) VALUES ('GONE', '2024-01-03');
         INSERT INTO analytics.technical_indicators_latest (symbol, calculated_date, rsi)
             VALUES ('GONE', '2024-01-02', 55.5), ('KEEP', '2024-01-02', 44.4);
         INSERT INTO analytics.technical_indicators (symbol, date, rsi)
             VALUES ('GONE', '2024-01-02', 55.5), ('KEEP', '2024-01-02', 44.4);
         INSERT INTO analytics.indicator_state
             (symbol, spec_version, first_date, last_date, bars_consumed, closes, close_dates, volumes)
             VALUES ('GONE', 1, '2024-01-02', '2024-01-02', 1, '{10.5}', '{2024-01-02}', '{1000}');",
    )
    .await
    .unwrap();

    let deleted = c
        .execute(
            "DELETE FROM data_ingestion.symbols WHERE symbol = 'GONE'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);

    for table in [
        "data_ingestion.key_statistics",
        "data_ingestion.institutional_holders",
        "data_ingestion.symbol_data_status",
        "data_ingestion.delisted_symbols",
        "analytics.technical_indicators_latest",
        "analytics.technical_indicators",
        "analytics.indicator_state",
    ] {
        let gone = count(
            c,
            &format!("SELECT count(*) FROM {table} WHERE symbol = 'GONE'"),
        )
        .await;
        assert_eq!(gone, 0, "{table} still has rows of the deleted symbol");
    }
    // The other symbol's rows are untouched.
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM data_ingestion.key_statistics WHERE symbol = 'KEEP'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM analytics.technical_indicators_latest WHERE symbol = 'KEEP'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn performance_metrics_win_rate_is_derived_from_counts() {
    let db = TestDb::new().await;
    let c = &db.client;
    let d = day(2024, 1, 2);

    c.execute(
        "INSERT INTO analytics.performance_metrics (strategy, date, total_trades, winning_trades) \
         VALUES ('momentum', $1, 3, 2), ('idle', $1, 0, 0)",
        &[&d],
    )
    .await
    .unwrap();

    let win_rate = |strategy: &'static str| async move {
        c.query_one(
            "SELECT win_rate FROM analytics.performance_metrics WHERE strategy = $1 AND date = $2",
            &[&strategy, &d],
        )
        .await
        .unwrap()
        .get::<_, Option<Decimal>>(0)
    };
    assert_eq!(win_rate("momentum").await, Some(dec("0.666667")));
    assert_eq!(
        win_rate("idle").await,
        None,
        "no trades: no win rate, not 0"
    );

    // Recomputed from the counts on every update (what an upsert of deltas does).
    c.execute(
        "UPDATE analytics.performance_metrics SET total_trades = total_trades + 1, winning_trades = winning_trades + 1 \
         WHERE strategy = 'momentum'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(win_rate("momentum").await, Some(dec("0.75")));

    // win_rate cannot be written, and counts must be consistent.
    let write = c
        .execute(
            "INSERT INTO analytics.performance_metrics (strategy, date, total_trades, winning_trades, win_rate) \
             VALUES ('x', $1, 1, 1, 1)",
            &[&d],
        )
        .await;
    assert_db_error(write, &SqlState::GENERATED_ALWAYS, None);
    let inconsistent = c
        .execute(
            "INSERT INTO analytics.performance_metrics (strategy, date, total_trades, winning_trades) VALUES ('x', $1, 1, 2)",
            &[&d],
        )
        .await;
    assert_db_error(
        inconsistent,
        &SqlState::CHECK_VIOLATION,
        Some("performance_metrics_trade_counts_check"),
    );
}

#[tokio::test]
async fn indicator_columns_hold_values_the_seed_overflowed() {
    let db = TestDb::new().await;
    let c = &db.client;
    add_symbol(c, "MOON").await;

    // NUMERIC(5,2) in the seed: 999.99 at most. A +12,345 % 30-bar change must fit now.
    let big = dec("12345.67");
    c.execute(
        "INSERT INTO analytics.technical_indicators_latest (symbol, calculated_date, price_change_30d, volatility_20) \
         VALUES ('MOON', $1, $2, $2)",
        &[&day(2024, 1, 2), &big],
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT price_change_30d, volatility_20 FROM analytics.technical_indicators_latest WHERE symbol = 'MOON'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Decimal>(0), big);
    assert_eq!(row.get::<_, Decimal>(1), big);
}

#[tokio::test]
async fn indicator_state_round_trips_f64_bits() {
    let db = TestDb::new().await;
    let c = &db.client;
    add_symbol(c, "BITS").await;

    let closes: Vec<f64> = vec![
        0.1 + 0.2,
        1.0 / 3.0,
        f64::MIN_POSITIVE,
        123_456.789_012_345_67,
    ];
    let dates: Vec<NaiveDate> = (2..6).map(|d| day(2024, 1, d)).collect();
    let volumes: Vec<i64> = vec![1, 2, 3, i64::MAX];
    let ema12 = 101.123_456_789_012_34_f64;
    c.execute(
        "INSERT INTO analytics.indicator_state \
             (symbol, spec_version, first_date, last_date, bars_consumed, closes, close_dates, volumes, ema12) \
         VALUES ('BITS', 1, $1, $2, 4, $3, $4, $5, $6)",
        &[&dates[0], &dates[3], &closes, &dates, &volumes, &ema12],
    )
    .await
    .unwrap();

    let row = c
        .query_one(
            "SELECT closes, close_dates, volumes, ema12, ema26 FROM analytics.indicator_state WHERE symbol = 'BITS'",
            &[],
        )
        .await
        .unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&row.get::<_, Vec<f64>>(0)), bits(&closes));
    assert_eq!(row.get::<_, Vec<NaiveDate>>(1), dates);
    assert_eq!(row.get::<_, Vec<i64>>(2), volumes);
    assert_eq!(row.get::<_, f64>(3).to_bits(), ema12.to_bits());
    assert_eq!(row.get::<_, Option<f64>>(4), None);

    // closes and close_dates must stay the same length.
    let mismatched = c
        .execute(
            "UPDATE analytics.indicator_state SET close_dates = close_dates[1:3] WHERE symbol = 'BITS'",
            &[],
        )
        .await;
    assert_db_error(
        mismatched,
        &SqlState::CHECK_VIOLATION,
        Some("indicator_state_closes_dates_same_length"),
    );
}

#[tokio::test]
async fn ledger_and_dead_letters() {
    let db = TestDb::new().await;
    let c = &db.client;
    let executed_at = utc(2024, 1, 2, 15, 4, 5);

    // The daemon's exactly-once test: a trade_id already applied inserts nothing.
    let apply = "INSERT INTO analytics.applied_trades (trade_id, account_id, symbol, strategy, executed_at) \
                 VALUES ($1, 'ACC1', 'AAPL', 'momentum', $2) ON CONFLICT (trade_id) DO NOTHING RETURNING trade_id";
    assert_eq!(
        c.query(apply, &[&"T-1", &executed_at]).await.unwrap().len(),
        1
    );
    assert_eq!(
        c.query(apply, &[&"T-1", &executed_at]).await.unwrap().len(),
        0
    );

    // Raw payloads are bytes: invalid UTF-8 is stored and returned unchanged.
    let payload: Vec<u8> = vec![0xff, 0xfe, b'{', 0x00, b'}'];
    let row = c
        .query_one(
            "INSERT INTO analytics.dead_letters (channel, payload, error, payload_bytes) \
             VALUES ('data_sync:trades', $1, 'not UTF-8', 5) \
             RETURNING payload, received_at <= now()",
            &[&payload],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), payload);
    assert!(row.get::<_, bool>(1));

    // V22: a cut payload says so, with the whole message's size and hash; a payload shorter than
    // its size without them is refused.
    let cut = "INSERT INTO analytics.dead_letters \
               (channel, payload, error, payload_bytes, payload_sha256, replayable) \
               VALUES ('data_sync:trades', '\\x7b', 'oversized', 5000000, $1, $2)";
    c.execute(cut, &[&vec![7u8; 32], &false]).await.unwrap();
    assert_db_error(
        c.execute(cut, &[&None::<Vec<u8>>, &true]).await,
        &SqlState::CHECK_VIOLATION,
        Some("dead_letters_payload_cut_check"),
    );
}

#[tokio::test]
async fn trading_sync_role_has_least_privilege() {
    let db = TestDb::new().await;
    let c = &db.client;

    let can_login: bool = c
        .query_one(
            "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = 'trading_sync'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!can_login, "trading_sync must be NOLOGIN");

    Bar::new("OLD", utc(1960, 5, 5, 0, 0, 0))
        .insert(c)
        .await
        .unwrap();

    c.batch_execute("SET ROLE trading_sync").await.unwrap();

    // Partition maintenance works through the SECURITY DEFINER function, without owning the table.
    let created: bool = c
        .query_one(
            "SELECT data_ingestion.ensure_market_data_partition(1960)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(created);
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM data_ingestion.market_data WHERE symbol = 'OLD'"
        )
        .await,
        1
    );

    // What the daemon writes, it can write.
    c.execute(
        "INSERT INTO analytics.portfolio_summary (account_id, symbol) VALUES ('ACC1', 'AAPL')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO logging.system_logs (service, level, message) VALUES ('trading-sync', 'INFO', 'hello')",
        &[],
    )
    .await
    .unwrap();

    // The execution tables reconcile heals from: read, never written (V21).
    for table in [
        "execution.trades",
        "execution.orders",
        "execution.positions",
    ] {
        count(c, &format!("SELECT count(*) FROM {table}")).await;
    }

    // Everything else is refused.
    let denied = [
        "INSERT INTO execution.trades (trade_id, account_id, symbol, quantity, price, executed_at) \
         VALUES ('T', 'A', 'S', 1, 1, now())",
        "UPDATE execution.orders SET status = 'cancelled'",
        "DELETE FROM execution.positions",
        "INSERT INTO data_ingestion.market_data (symbol, \"timestamp\") VALUES ('X', now())",
        "UPDATE logging.system_logs SET message = 'rewritten'",
        "SELECT count(*) FROM shared.system_config",
    ];
    for sql in denied {
        assert_db_error(
            c.execute(sql, &[]).await,
            &SqlState::INSUFFICIENT_PRIVILEGE,
            None,
        );
    }

    c.batch_execute("RESET ROLE").await.unwrap();
}

/// A row in data_ingestion.symbols, which the indicator tables reference.
async fn add_symbol(c: &tokio_postgres::Client, symbol: &str) {
    c.execute(
        "INSERT INTO data_ingestion.symbols (symbol) VALUES ($1)",
        &[&symbol],
    )
    .await
    .unwrap();
}
