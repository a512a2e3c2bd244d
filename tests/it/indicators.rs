//! The indicator job through PostgreSQL: rows equal `step::full` of the same closes (rounded as
//! NUMERIC rounds), incremental runs write only new rows, revisions are detected and rewritten,
//! concurrent runs split the work, bad data is skipped and counted.

use crate::common;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::prelude::*;
use tokio_util::sync::CancellationToken;
use trading_sync::indicators::job::{self, JobSettings, Mode, RunSummary, Selection};
use trading_sync::indicators::step::{self, Bar, IndicatorRow};

use common::TestDb;

/// Value columns as named in the table, with their scale (None: bigint).
const COLUMNS: [(&str, Option<u32>); 22] = [
    ("sma_20", Some(4)),
    ("sma_50", Some(4)),
    ("sma_200", Some(4)),
    ("ema_12", Some(4)),
    ("ema_26", Some(4)),
    ("ema_50", Some(4)),
    ("rsi", Some(2)),
    ("rsi_14", Some(2)),
    ("macd_line", Some(4)),
    ("macd_signal", Some(4)),
    ("macd_histogram", Some(4)),
    ("bb_upper", Some(4)),
    ("bb_middle", Some(4)),
    ("bb_lower", Some(4)),
    ("bb_position", Some(4)),
    ("bb_width", Some(4)),
    ("volatility_20", Some(2)),
    ("price_change_1d", Some(2)),
    ("price_change_5d", Some(2)),
    ("price_change_30d", Some(2)),
    ("avg_volume_20", None),
    ("current_volume", None),
];

type Row = (NaiveDate, Vec<Option<String>>);

/// A bar as inserted: the close as NUMERIC text (None: NULL).
#[derive(Debug, Clone)]
struct TestBar {
    date: NaiveDate,
    close: Option<String>,
    volume: i64,
}

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

/// Weekday dates from `start`.
fn weekdays(start: NaiveDate, n: usize) -> Vec<NaiveDate> {
    use chrono::Datelike;
    let mut out = Vec::with_capacity(n);
    let mut day = start;
    while out.len() < n {
        if day.weekday().number_from_monday() <= 5 {
            out.push(day);
        }
        day = day.succ_opt().unwrap();
    }
    out
}

/// A deterministic random walk in ten-thousandths, as NUMERIC(15,4) stores it.
fn walk(seed: u64, dates: &[NaiveDate], start: f64) -> Vec<TestBar> {
    let mut x = seed | 1;
    let mut c = start;
    dates
        .iter()
        .map(|&date| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            c *= (0.04 * u).exp();
            let ticks = (c * 10_000.0).round().max(1.0) as i64;
            TestBar {
                date,
                close: Some(format!("{}.{:04}", ticks / 10_000, ticks % 10_000)),
                volume: 1_000 + (x % 1_000_000) as i64,
            }
        })
        .collect()
}

/// What the job must produce: `step::full` over the valid bars.
fn expected(bars: &[TestBar]) -> Vec<Row> {
    let steps: Vec<Bar> = bars
        .iter()
        .map(|b| Bar {
            date: b.date,
            close: b
                .close
                .as_deref()
                .map_or(f64::NAN, |c| c.parse::<f64>().unwrap()),
            volume: b.volume,
        })
        .collect();
    let (_, rows) = step::full(&steps);
    rows.iter().map(rounded).collect()
}

/// An output row as PostgreSQL prints it, rounded independently of the job's encoder.
fn rounded(row: &IndicatorRow) -> Row {
    let named = row.named_values();
    let mut values: Vec<Option<f64>> = Vec::new();
    for (name, v) in named {
        values.push(v);
        if name == "rsi_14" {
            values.push(v); // rsi and rsi_14
        }
    }
    values.push(Some(row.current_volume as f64));
    let text = values
        .iter()
        .zip(COLUMNS)
        .map(|(v, (_, scale))| {
            v.map(|v| match scale {
                None => format!("{}", v.round() as i64),
                Some(s) => {
                    let dec = Decimal::from_f64_retain(v)
                        .unwrap()
                        .round_dp_with_strategy(s, RoundingStrategy::MidpointAwayFromZero);
                    let text = format!("{dec:.prec$}", prec = s as usize);
                    if dec.is_zero() {
                        text.trim_start_matches('-').to_owned()
                    } else {
                        text
                    }
                }
            })
        })
        .collect();
    (row.date, text)
}

async fn add_symbols(db: &TestDb, symbols: &[&str]) {
    for s in symbols {
        db.client
            .execute(
                "INSERT INTO data_ingestion.symbols (symbol) VALUES ($1)",
                &[s],
            )
            .await
            .unwrap();
    }
}

/// Inserts bars stamped at midnight New York time, as Yahoo stamps daily bars.
async fn insert_bars(db: &TestDb, symbol: &str, source: &str, bars: &[TestBar]) {
    let dates: Vec<NaiveDate> = bars.iter().map(|b| b.date).collect();
    let closes: Vec<Option<String>> = bars.iter().map(|b| b.close.clone()).collect();
    let volumes: Vec<i64> = bars.iter().map(|b| b.volume).collect();
    db.client
        .execute(
            "INSERT INTO data_ingestion.market_data
                 (symbol, \"timestamp\", open, high, low, close, volume, data_source)
             SELECT $1, b.d::timestamp AT TIME ZONE 'America/New_York',
                    b.c::numeric, b.c::numeric, b.c::numeric, b.c::numeric, b.v, $5
               FROM unnest($2::date[], $3::text[], $4::bigint[]) AS b(d, c, v)",
            &[&symbol, &dates, &closes, &volumes, &source],
        )
        .await
        .unwrap();
}

async fn set_close(db: &TestDb, symbol: &str, date: NaiveDate, close: &str) {
    let n = db
        .client
        .execute(
            "UPDATE data_ingestion.market_data
                SET close = $3::text::numeric, open = $3::text::numeric,
                    high = $3::text::numeric, low = $3::text::numeric
              WHERE symbol = $1 AND data_source = 'yahoo'
                AND (\"timestamp\" AT TIME ZONE 'America/New_York')::date = $2",
            &[&symbol, &date, &close],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
}

fn settings() -> JobSettings {
    JobSettings {
        // Small chunks so that a handful of symbols still spreads over chunks and connections.
        incremental_chunk: 3,
        full_chunk: 2,
        ..JobSettings::default()
    }
}

async fn run(db: &TestDb, selection: Selection, mode: Mode) -> RunSummary {
    let pg = trading_sync::db::Connector::primary(&db.config()).unwrap();
    let summary = job::run_once(
        &pg,
        &settings(),
        &selection,
        mode,
        &CancellationToken::new(),
    )
    .await
    .expect("indicator run");
    assert_eq!(summary.failures, 0, "{summary:?}");
    summary
}

async fn rows(db: &TestDb, symbol: &str) -> Vec<Row> {
    let cols: Vec<String> = COLUMNS.iter().map(|(c, _)| format!("{c}::text")).collect();
    let sql = format!(
        "SELECT date, {} FROM analytics.technical_indicators WHERE symbol = $1 ORDER BY date",
        cols.join(", ")
    );
    db.client
        .query(&sql, &[&symbol])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                (1..=COLUMNS.len()).map(|i| r.get(i)).collect::<Vec<_>>(),
            )
        })
        .collect()
}

async fn latest(db: &TestDb, symbol: &str) -> Option<Row> {
    let cols: Vec<String> = COLUMNS.iter().map(|(c, _)| format!("{c}::text")).collect();
    let sql = format!(
        "SELECT calculated_date, {} FROM analytics.technical_indicators_latest WHERE symbol = $1",
        cols.join(", ")
    );
    db.client
        .query_opt(&sql, &[&symbol])
        .await
        .unwrap()
        .map(|r| {
            (
                r.get(0),
                (1..=COLUMNS.len()).map(|i| r.get(i)).collect::<Vec<_>>(),
            )
        })
}

/// (table, symbol, date, xmin) of every written row: equal snapshots mean nothing was written.
async fn snapshot(db: &TestDb) -> Vec<(String, String, Option<NaiveDate>, String)> {
    db.client
        .query(
            "SELECT 'rows', symbol::text, date, xmin::text FROM analytics.technical_indicators
             UNION ALL
             SELECT 'latest', symbol::text, calculated_date, xmin::text
               FROM analytics.technical_indicators_latest
             UNION ALL
             SELECT 'state', symbol::text, last_date, xmin::text FROM analytics.indicator_state
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn assert_rows_eq(got: &[Row], want: &[Row], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{what}: row of {}", w.0);
    }
}

#[tokio::test]
async fn rows_match_step_full_and_incremental_runs_write_only_new_rows() {
    let db = TestDb::new().await;
    add_symbols(&db, &["AAA", "BBB", "CCC"]).await;
    let dates = weekdays(d(2023, 1, 2), 266);
    let a = walk(1, &dates, 150.0);
    let b = walk(2, &dates[..45], 12.5);
    let c = walk(3, &dates[..10], 3.0);
    insert_bars(&db, "AAA", "yahoo", &a[..260]).await;
    insert_bars(&db, "BBB", "yahoo", &b[..40]).await;
    insert_bars(&db, "CCC", "yahoo", &c).await;

    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(
        (s.symbols_selected, s.symbols_computed, s.rows_written),
        (3, 3, 310)
    );
    let want_a = expected(&a[..260]);
    assert_rows_eq(&rows(&db, "AAA").await, &want_a, "AAA");
    assert_rows_eq(&rows(&db, "BBB").await, &expected(&b[..40]), "BBB");
    let got_c = rows(&db, "CCC").await;
    assert_rows_eq(&got_c, &expected(&c), "CCC");
    // Ten bars: no moving average, RSI or MACD yet: NULL, never 0.
    for (date, values) in &got_c {
        for ((name, _), v) in COLUMNS.iter().zip(values) {
            let has_value = matches!(
                *name,
                "price_change_1d" | "price_change_5d" | "current_volume"
            ) && !(*name == "price_change_1d" && *date == c[0].date)
                && !(*name == "price_change_5d" && *date < c[5].date);
            assert_eq!(v.is_some(), has_value, "CCC {date} {name}: {v:?}");
        }
    }
    // One cell checked without `step`: sma_20 of the last bar is the exact decimal mean of the
    // last 20 closes (within the half unit of NUMERIC rounding).
    let got_a = rows(&db, "AAA").await;
    let exact: Decimal = a[240..260]
        .iter()
        .map(|t| Decimal::from_str(t.close.as_deref().unwrap()).unwrap())
        .sum::<Decimal>()
        / Decimal::from(20);
    let sma_20 = Decimal::from_str(got_a[259].1[0].as_deref().unwrap()).unwrap();
    assert!(
        (sma_20 - exact).abs() <= Decimal::new(50_001, 9),
        "{sma_20} vs {exact}"
    );
    assert_eq!(got_a[259].1[6], got_a[259].1[7], "rsi = rsi_14");
    assert!(got_a[259].1[6].is_some());
    assert_eq!(latest(&db, "AAA").await.as_ref(), want_a.last());

    // The persisted state is the full fold's state, bit for bit.
    let steps: Vec<Bar> = a[..260]
        .iter()
        .map(|t| Bar {
            date: t.date,
            close: t.close.as_deref().unwrap().parse().unwrap(),
            volume: t.volume,
        })
        .collect();
    let (full_state, _) = step::full(&steps);
    let st = db
        .client
        .query_one(
            "SELECT closes, close_dates, ema50, macd_signal, avg_gain, bars_consumed
               FROM analytics.indicator_state WHERE symbol = 'AAA'",
            &[],
        )
        .await
        .unwrap();
    let closes: Vec<f64> = st.get(0);
    assert_eq!(
        closes.iter().map(|c| c.to_bits()).collect::<Vec<_>>(),
        full_state
            .closes
            .iter()
            .map(|c| c.to_bits())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        st.get::<_, Vec<NaiveDate>>(1),
        Vec::from(full_state.close_dates.clone())
    );
    assert_eq!(
        st.get::<_, Option<f64>>(2).map(f64::to_bits),
        full_state.ema50.map(f64::to_bits)
    );
    assert_eq!(
        st.get::<_, Option<f64>>(3).map(f64::to_bits),
        full_state.macd_signal.map(f64::to_bits)
    );
    assert_eq!(
        st.get::<_, Option<f64>>(4).map(f64::to_bits),
        full_state.avg_gain.map(f64::to_bits)
    );
    assert_eq!(st.get::<_, i64>(5), 260);

    // Append bars: only the new rows are written, and they equal a full recomputation.
    let before = snapshot(&db).await;
    insert_bars(&db, "AAA", "yahoo", &a[260..]).await;
    insert_bars(&db, "BBB", "yahoo", &b[40..41]).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(
        (
            s.symbols_computed,
            s.symbols_up_to_date,
            s.rows_written,
            s.recomputed_after_revision
        ),
        (2, 1, 7, 0)
    );
    let after = snapshot(&db).await;
    let old_rows: Vec<_> = before.iter().filter(|r| r.0 == "rows").collect();
    for r in &old_rows {
        assert!(after.contains(r), "an old row was rewritten: {r:?}");
    }
    assert_eq!(
        after.iter().filter(|r| r.0 == "rows").count(),
        old_rows.len() + 7
    );
    let want_a = expected(&a);
    assert_rows_eq(&rows(&db, "AAA").await, &want_a, "AAA after append");
    assert_rows_eq(
        &rows(&db, "BBB").await,
        &expected(&b[..41]),
        "BBB after append",
    );
    assert_eq!(latest(&db, "AAA").await.as_ref(), want_a.last());
    assert_eq!(latest(&db, "AAA").await.unwrap().0, a[265].date);

    // Nothing new: nothing written at all.
    let before = snapshot(&db).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(
        (s.symbols_computed, s.symbols_up_to_date, s.rows_written),
        (0, 3, 0)
    );
    assert_eq!(snapshot(&db).await, before);

    // A forced full run gives the same rows.
    let s = run(&db, Selection::Symbols(vec!["AAA".into()]), Mode::Full).await;
    assert_eq!((s.symbols_computed, s.rows_written), (1, 266));
    assert_rows_eq(&rows(&db, "AAA").await, &want_a, "AAA after --full");
}

#[tokio::test]
async fn revised_history_is_detected_and_rewritten_from_the_change() {
    let db = TestDb::new().await;
    add_symbols(&db, &["REV", "OTHER"]).await;
    let dates = weekdays(d(2022, 3, 1), 300);
    let mut bars = walk(11, &dates[1..], 40.0);
    insert_bars(&db, "REV", "yahoo", &bars).await;
    insert_bars(&db, "OTHER", "yahoo", &walk(12, &dates, 9.0)).await;
    run(&db, Selection::All, Mode::Incremental).await;

    // Revise a past bar inside the stored tail.
    let k = 250;
    let before: BTreeMap<NaiveDate, String> = xmins(&db, "REV").await;
    bars[k].close = Some("77.7777".into());
    set_close(&db, "REV", bars[k].date, "77.7777").await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(
        (
            s.recomputed_after_revision,
            s.symbols_computed,
            s.symbols_up_to_date
        ),
        (1, 1, 1)
    );
    let want = expected(&bars);
    assert_rows_eq(&rows(&db, "REV").await, &want, "REV after revision");
    let after = xmins(&db, "REV").await;
    for (i, b) in bars.iter().enumerate() {
        let same = before[&b.date] == after[&b.date];
        // Rows before the revised bar are untouched; from it on, every row changed value.
        assert_eq!(same, i < k, "row of {} (i = {i})", b.date);
    }
    assert_eq!(latest(&db, "REV").await.as_ref(), want.last());

    // A new bar before the first one: count and first date change → recompute.
    let earlier = walk(13, &dates[..1], 39.0);
    insert_bars(&db, "REV", "yahoo", &earlier).await;
    bars.insert(0, earlier[0].clone());
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(s.recomputed_after_revision, 1);
    assert_rows_eq(
        &rows(&db, "REV").await,
        &expected(&bars),
        "REV after earlier bar",
    );

    // A bar deleted before the stored tail: the count changes → recompute, its row removed.
    let gone = bars.remove(20);
    db.client
        .execute(
            "DELETE FROM data_ingestion.market_data WHERE symbol = 'REV'
                AND (\"timestamp\" AT TIME ZONE 'America/New_York')::date = $1",
            &[&gone.date],
        )
        .await
        .unwrap();
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(s.recomputed_after_revision, 1);
    assert_rows_eq(
        &rows(&db, "REV").await,
        &expected(&bars),
        "REV after deletion",
    );

    // And after all that, an ordinary append continues from the recomputed state.
    let next = walk(14, &weekdays(dates[299].succ_opt().unwrap(), 2), 45.0);
    insert_bars(&db, "REV", "yahoo", &next).await;
    bars.extend(next);
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.recomputed_after_revision, s.rows_written), (0, 2));
    assert_rows_eq(
        &rows(&db, "REV").await,
        &expected(&bars),
        "REV after append",
    );
}

async fn pending_changes(db: &TestDb) -> i64 {
    db.client
        .query_one("SELECT count(*) FROM analytics.indicator_bar_changes", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_revision_older_than_the_stored_tail_is_detected() {
    let db = TestDb::new().await;
    add_symbols(&db, &["OLD"]).await;
    let dates = weekdays(d(2019, 1, 1), 400);
    let mut bars = walk(21, &dates, 60.0);
    insert_bars(&db, "OLD", "yahoo", &bars).await;
    run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(
        pending_changes(&db).await,
        0,
        "the run consumed its changes"
    );

    // Bar 30 is 370 bars back, far before the 200 closes the state keeps: EMAs, RSI and MACD
    // of every later row depend on it.
    let k = 30;
    let before = xmins(&db, "OLD").await;
    bars[k].close = Some("61.2345".into());
    set_close(&db, "OLD", bars[k].date, "61.2345").await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.recomputed_after_revision, s.symbols_computed), (1, 1));
    assert_rows_eq(
        &rows(&db, "OLD").await,
        &expected(&bars),
        "OLD after revision",
    );
    let after = xmins(&db, "OLD").await;
    // Rows before the changed bar are not even sent; the row of the bar itself is rewritten.
    for (i, b) in bars.iter().enumerate().take(k + 1) {
        assert_eq!(
            before[&b.date] == after[&b.date],
            i < k,
            "row of {}",
            b.date
        );
    }
    assert_eq!(pending_changes(&db).await, 0);
}

#[tokio::test]
async fn yahoo_resending_identical_bars_is_not_a_change() {
    let db = TestDb::new().await;
    add_symbols(&db, &["SAME"]).await;
    let dates = weekdays(d(2021, 6, 1), 120);
    let bars = walk(31, &dates, 20.0);
    insert_bars(&db, "SAME", "yahoo", &bars).await;
    run(&db, Selection::All, Mode::Incremental).await;

    // The daily download upserts the last days again, values unchanged; an UPDATE that sets a
    // column to itself and one that only touches a column the indicators do not read are no
    // changes either.
    db.client
        .execute(
            "INSERT INTO data_ingestion.market_data
                 (symbol, \"timestamp\", open, high, low, close, volume, data_source)
             SELECT symbol, \"timestamp\", open, high, low, close, volume, data_source
               FROM data_ingestion.market_data
              WHERE symbol = 'SAME' AND \"timestamp\" >= $1::date::timestamptz
             ON CONFLICT (symbol, \"timestamp\", data_source) DO UPDATE
                SET open = EXCLUDED.open, close = EXCLUDED.close, volume = EXCLUDED.volume",
            &[&dates[110]],
        )
        .await
        .unwrap();
    db.client
        .execute(
            "UPDATE data_ingestion.market_data SET close = close, open = open * 1
              WHERE symbol = 'SAME'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(pending_changes(&db).await, 0);
    let before = snapshot(&db).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.symbols_up_to_date, s.symbols_computed), (1, 0));
    assert_eq!(snapshot(&db).await, before);

    // A changed volume is a change: avg_volume_20 and current_volume read it.
    let n = db
        .client
        .execute(
            "UPDATE data_ingestion.market_data SET volume = volume + 1
              WHERE symbol = 'SAME' AND (\"timestamp\" AT TIME ZONE 'America/New_York')::date = $1",
            &[&dates[100]],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let mut bars = bars;
    bars[100].volume += 1;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(s.recomputed_after_revision, 1);
    assert_rows_eq(
        &rows(&db, "SAME").await,
        &expected(&bars),
        "SAME after volume",
    );
}

#[tokio::test]
async fn a_bar_written_while_a_run_reads_is_left_for_the_next_run() {
    let db = TestDb::new().await;
    add_symbols(&db, &["RACE"]).await;
    let dates = weekdays(d(2022, 1, 3), 60);
    let bars = walk(41, &dates, 30.0);
    insert_bars(&db, "RACE", "yahoo", &bars[..50]).await;

    // What a chunk does, with a second writer between its read of the change and its consume.
    let mut reader = common::connect(&db.url).await;
    let tx = reader.transaction().await.unwrap();
    let symbols = vec!["RACE".to_owned()];
    let seen = trading_sync::indicators::store::load_changes(&tx, &symbols)
        .await
        .unwrap();
    let seen_ids = seen["RACE"].ids.clone();
    insert_bars(&db, "RACE", "yahoo", &bars[50..]).await;
    trading_sync::indicators::store::consume_changes(&tx, &seen_ids)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pending_changes(&db).await, 1, "the newer change survives");

    // The run sees all 60 bars (no state yet: computed from scratch).
    run(&db, Selection::All, Mode::Incremental).await;
    assert_rows_eq(&rows(&db, "RACE").await, &expected(&bars), "RACE");
    assert_eq!(pending_changes(&db).await, 0);

    // An ingestion transaction still open on the symbol's change row: the run neither waits
    // for it nor loses it.
    let more = walk(42, &weekdays(dates[59].succ_opt().unwrap(), 3), 31.0);
    insert_bars(&db, "RACE", "yahoo", &more).await;
    let mut writer = common::connect(&db.url).await;
    let open = writer.transaction().await.unwrap();
    open.execute(
        "UPDATE data_ingestion.market_data SET volume = volume + 1
          WHERE symbol = 'RACE' AND (\"timestamp\" AT TIME ZONE 'America/New_York')::date = $1",
        &[&dates[59]],
    )
    .await
    .unwrap();
    let s = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        run(&db, Selection::All, Mode::Incremental),
    )
    .await
    .expect("the run waited for an open ingestion transaction");
    assert_eq!(s.rows_written, 3);
    open.commit().await.unwrap();
    assert_eq!(
        pending_changes(&db).await,
        1,
        "the open transaction's change is kept"
    );
    let mut bars = bars;
    bars[59].volume += 1;
    bars.extend(more);
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(s.recomputed_after_revision, 1);
    assert_rows_eq(
        &rows(&db, "RACE").await,
        &expected(&bars),
        "RACE after volume",
    );
    assert_eq!(pending_changes(&db).await, 0);
}

#[tokio::test]
async fn truncating_market_data_removes_the_indicators() {
    let db = TestDb::new().await;
    add_symbols(&db, &["TR1", "TR2"]).await;
    let dates = weekdays(d(2022, 1, 3), 40);
    insert_bars(&db, "TR1", "yahoo", &walk(51, &dates, 30.0)).await;
    insert_bars(&db, "TR2", "yahoo", &walk(52, &dates, 10.0)).await;
    run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(rows(&db, "TR1").await.len(), 40);

    db.client
        .batch_execute("TRUNCATE data_ingestion.market_data")
        .await
        .unwrap();
    assert_eq!(pending_changes(&db).await, 2);
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.symbols_computed, s.recomputed_after_revision), (2, 2));
    assert_eq!(snapshot(&db).await, vec![]);
}

/// The daemon runs as a login in the least-privilege `trading_sync` role (V17), not as the
/// schema owner the other tests use: every statement of a run, consuming changes included,
/// must be within its grants.
#[tokio::test]
async fn the_job_runs_within_the_trading_sync_role() {
    let db = TestDb::new().await;
    add_symbols(&db, &["PRIV"]).await;
    let dates = weekdays(d(2023, 2, 1), 80);
    let bars = walk(61, &dates, 25.0);
    insert_bars(&db, "PRIV", "yahoo", &bars[..70]).await;
    let login = common::LoginRole::create("trading_sync").await;
    let run_as = |login: String| {
        let mut pg = trading_sync::db::Connector::primary(&db.config()).unwrap();
        pg.config_mut().user(&login);
        async move {
            job::run_once(
                &pg,
                &settings(),
                &Selection::All,
                Mode::Incremental,
                &CancellationToken::new(),
            )
            .await
        }
    };
    let first = run_as(login.name.clone()).await;
    insert_bars(&db, "PRIV", "yahoo", &bars[70..]).await;
    let second = run_as(login.name.clone()).await;
    set_close(&db, "PRIV", bars[10].date, "24.5").await;
    let third = run_as(login.name.clone()).await;
    // The role is cluster-wide: gone with its sessions (and their temporary tables).
    login.drop(&db).await;
    let (first, second, third) = (first.unwrap(), second.unwrap(), third.unwrap());
    assert_eq!((first.failures, first.rows_written), (0, 70), "{first:?}");
    assert_eq!(
        (second.failures, second.rows_written),
        (0, 10),
        "{second:?}"
    );
    assert_eq!(
        (third.failures, third.recomputed_after_revision),
        (0, 1),
        "{third:?}"
    );
    let mut bars = bars;
    bars[10].close = Some("24.5".into());
    assert_rows_eq(&rows(&db, "PRIV").await, &expected(&bars), "PRIV");
    assert_eq!(pending_changes(&db).await, 0);
}

/// Two ingestion transactions writing the same symbols in opposite orders: recording their
/// changes must not make them wait for each other (append-only), let alone deadlock.
#[tokio::test]
async fn concurrent_ingestion_in_opposite_symbol_orders_does_not_block() {
    let db = TestDb::new().await;
    add_symbols(&db, &["ORD1", "ORD2"]).await;
    let dates = weekdays(d(2023, 5, 1), 4);
    let mut first = common::connect(&db.url).await;
    let mut second = common::connect(&db.url).await;
    let t1 = first.transaction().await.unwrap();
    let t2 = second.transaction().await.unwrap();
    let insert = "INSERT INTO data_ingestion.market_data
                      (symbol, \"timestamp\", open, high, low, close, volume, data_source)
                  VALUES ($1, $2::date::timestamp AT TIME ZONE 'America/New_York', 10, 10, 10, 10, 100, 'yahoo')";
    let quick = std::time::Duration::from_secs(10);
    for (tx, symbol, date) in [
        (&t1, "ORD1", dates[0]),
        (&t2, "ORD2", dates[1]),
        (&t1, "ORD2", dates[2]),
        (&t2, "ORD1", dates[3]),
    ] {
        tokio::time::timeout(quick, tx.execute(insert, &[&symbol, &date]))
            .await
            .expect("an ingestion statement waited for another transaction")
            .unwrap();
    }
    t1.commit().await.unwrap();
    t2.commit().await.unwrap();
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.symbols_computed, s.rows_written), (2, 4));
}

/// A symbol whose bars were there before it was registered, or registered again after its
/// deletion took its indicators away, is computed by the next incremental run; bars written
/// behind the triggers' back are reached by `--full`.
#[tokio::test]
async fn registered_symbols_and_untracked_bars_are_reached() {
    let db = TestDb::new().await;
    let dates = weekdays(d(2023, 8, 1), 30);
    let bars = walk(71, &dates, 12.0);
    insert_bars(&db, "LATE", "yahoo", &bars).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.skipped_unknown, s.symbols_computed), (1, 0));
    add_symbols(&db, &["LATE"]).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.symbols_computed, s.rows_written), (1, 30));

    // Deleted (the foreign keys cascade), registered again: computed again.
    db.client
        .batch_execute("DELETE FROM data_ingestion.symbols WHERE symbol = 'LATE'")
        .await
        .unwrap();
    assert!(rows(&db, "LATE").await.is_empty());
    add_symbols(&db, &["LATE"]).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.symbols_computed, s.rows_written), (1, 30));
    assert_rows_eq(&rows(&db, "LATE").await, &expected(&bars), "LATE");

    // Bars written with the triggers switched off: invisible to incremental runs, not to
    // --full.
    add_symbols(&db, &["QUIET"]).await;
    run(&db, Selection::All, Mode::Incremental).await;
    let quiet = walk(72, &dates, 8.0);
    db.client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    insert_bars(&db, "QUIET", "yahoo", &quiet).await;
    db.client
        .batch_execute("RESET session_replication_role")
        .await
        .unwrap();
    assert_eq!(pending_changes(&db).await, 0);
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!(s.rows_written, 0);
    let s = run(&db, Selection::All, Mode::Full).await;
    assert_eq!(s.failures, 0);
    assert_rows_eq(
        &rows(&db, "QUIET").await,
        &expected(&quiet),
        "QUIET after --full",
    );
}

async fn xmins(db: &TestDb, symbol: &str) -> BTreeMap<NaiveDate, String> {
    db.client
        .query(
            "SELECT date, xmin::text FROM analytics.technical_indicators WHERE symbol = $1",
            &[&symbol],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn concurrent_runs_compute_each_symbol_once() {
    let db = TestDb::new().await;
    let names: Vec<String> = (0..24).map(|i| format!("C{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    add_symbols(&db, &refs).await;
    let dates = weekdays(d(2020, 1, 1), 300);
    let mut all = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let bars = walk(100 + i as u64, &dates, 20.0 + i as f64);
        insert_bars(&db, name, "yahoo", &bars).await;
        all.insert(name.clone(), bars);
    }
    for round in 0..2 {
        if round == 1 {
            // Second round: one new bar each, incremental on both sides.
            let next = weekdays(dates[299].succ_opt().unwrap(), 1);
            for (i, name) in names.iter().enumerate() {
                let bar = walk(500 + i as u64, &next, 30.0);
                insert_bars(&db, name, "yahoo", &bar).await;
                all.get_mut(name).unwrap().extend(bar);
            }
        }
        let (x, y) = tokio::join!(
            run(&db, Selection::All, Mode::Incremental),
            run(&db, Selection::All, Mode::Incremental)
        );
        println!(
            "round {round}: computed {}+{}, locked {}+{}, up to date {}+{}",
            x.symbols_computed,
            y.symbols_computed,
            x.skipped_locked,
            y.skipped_locked,
            x.symbols_up_to_date,
            y.symbols_up_to_date
        );
        assert_eq!(
            x.symbols_computed + y.symbols_computed,
            24,
            "round {round}: {x:?} {y:?}"
        );
        for s in [&x, &y] {
            assert_eq!(
                s.symbols_computed + s.symbols_up_to_date + s.skipped_locked,
                24,
                "{s:?}"
            );
        }
        for (name, bars) in &all {
            assert_rows_eq(&rows(&db, name).await, &expected(bars), name);
        }
    }
}

#[tokio::test]
async fn other_sources_unknown_symbols_and_bad_closes_are_handled() {
    let db = TestDb::new().await;
    add_symbols(&db, &["MIX", "POLY", "BAD"]).await;
    // Recent dates: a run over all symbols looks for unknown ones among the last 30 days' bars.
    let today = chrono::Utc::now().date_naive();
    let mut dates: Vec<NaiveDate> = weekdays(today - chrono::Days::new(150), 200)
        .into_iter()
        .filter(|&day| day <= today)
        .collect();
    dates.drain(..dates.len() - 80);
    assert_eq!(dates.len(), 80);
    let yahoo = walk(21, &dates, 60.0);
    insert_bars(&db, "MIX", "yahoo", &yahoo).await;
    // Same dates from another provider with other prices, and a provider-only symbol.
    insert_bars(&db, "MIX", "polygon", &walk(22, &dates, 500.0)).await;
    insert_bars(&db, "POLY", "polygon", &walk(23, &dates, 5.0)).await;
    // Bars of a symbol missing from data_ingestion.symbols.
    insert_bars(&db, "NOSUCH", "yahoo", &walk(24, &dates, 5.0)).await;
    // NULL and NaN closes (the table's CHECK keeps out zero and negative ones).
    let mut bad = walk(25, &dates, 8.0);
    bad[3].close = None;
    bad[40].close = Some("NaN".into());
    insert_bars(&db, "BAD", "yahoo", &bad).await;

    let s = run(&db, Selection::All, Mode::Incremental).await;
    // POLY, newly registered, is looked at once and has no yahoo bar: up to date, no rows.
    assert_eq!(s.symbols_selected, 4, "{s:?}");
    assert_eq!(
        (s.symbols_computed, s.skipped_unknown, s.symbols_up_to_date),
        (2, 1, 1)
    );
    assert_eq!(s.bars_skipped_invalid, 2);
    assert_eq!(s.rows_written, 80 + 78);
    assert_rows_eq(&rows(&db, "MIX").await, &expected(&yahoo), "MIX");
    assert_rows_eq(&rows(&db, "BAD").await, &expected(&bad), "BAD");
    assert!(rows(&db, "NOSUCH").await.is_empty());
    assert!(rows(&db, "POLY").await.is_empty());

    // An explicit list with an unknown symbol: skipped and counted, the rest computed.
    let more = walk(26, &weekdays(dates[79] + chrono::Days::new(1), 1), 61.0);
    insert_bars(&db, "MIX", "yahoo", &more).await;
    let s = run(
        &db,
        Selection::Symbols(vec!["NOSUCH".into(), "MIX".into(), "MIX".into()]),
        Mode::Incremental,
    )
    .await;
    assert_eq!(
        (
            s.symbols_selected,
            s.skipped_unknown,
            s.symbols_computed,
            s.rows_written
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_value_too_large_for_its_column_is_written_null() {
    let db = TestDb::new().await;
    add_symbols(&db, &["HUGE"]).await;
    let dates = weekdays(d(2024, 1, 2), 40);
    let mut bars = walk(31, &dates, 1.0);
    for b in &mut bars[..35] {
        b.close = Some("0.0001".into());
    }
    // +99,999,999,999,900 %: beyond price_change_*'s NUMERIC(12,2).
    bars[35].close = Some("99999999999.9999".into());
    insert_bars(&db, "HUGE", "yahoo", &bars).await;
    let s = run(&db, Selection::All, Mode::Incremental).await;
    assert_eq!((s.symbols_computed, s.rows_written), (1, 40));
    assert!(s.values_nulled >= 3, "{s:?}");
    let got = rows(&db, "HUGE").await;
    let want = expected(&bars);
    let idx = |name: &str| COLUMNS.iter().position(|(c, _)| *c == name).unwrap();
    let jump = &got[35].1;
    assert_eq!(jump[idx("price_change_1d")], None);
    assert_eq!(jump[idx("price_change_5d")], None);
    assert_eq!(jump[idx("price_change_30d")], None);
    // The other columns of that row are written, and equal the expected values.
    assert_eq!(jump[idx("sma_20")], want[35].1[idx("sma_20")]);
    assert!(jump[idx("sma_20")].is_some());
    assert_eq!(
        jump[idx("current_volume")],
        want[35].1[idx("current_volume")]
    );
    // Rows before the jump are exact.
    assert_rows_eq(&got[..35], &want[..35], "HUGE before the jump");
}

/// The daemon path: a `market_data_updated` event for a yahoo bar makes the running daemon
/// compute that symbol within seconds (debounced), with no scheduled run involved.
#[tokio::test]
async fn a_yahoo_bar_event_triggers_the_symbols_indicators_in_the_daemon() {
    let mut app = common::spawn_app(|c| {
        c.indicators.enabled = true;
        c.indicators.run_at_start = false;
        c.indicators.debounce_ms = 50;
    })
    .await;
    add_symbols(&app.db, &["TRIG"]).await;
    let dates = weekdays(d(2025, 1, 2), 40);
    insert_bars(&app.db, "TRIG", "yahoo", &walk(5, &dates, 50.0)).await;
    assert!(latest(&app.db, "TRIG").await.is_none());
    let last = dates[dates.len() - 1];
    let event = common::python_dumps(&serde_json::json!({
        "type": "market_data_updated", "service": "data_ingestion",
        "data": {"symbol": "TRIG", "timestamp": format!("{last}T00:00:00-05:00"), "open": 50.0,
                 "high": 51.0, "low": 49.0, "close": 50.5, "volume": 1000, "data_source": "yahoo"},
        "timestamp": "2025-02-27T21:00:00"}));
    app.publish("market_data", event).await;
    let row = common::eventually(
        "indicators for TRIG",
        std::time::Duration::from_secs(30),
        || async { latest(&app.db, "TRIG").await },
    )
    .await;
    assert_eq!(row.0, last);
    app.stop().await.unwrap();
}

#[test]
fn the_indicators_command_reports_an_unreachable_database() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .args(["indicators", "--symbol", "AAPL"])
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/trading_system",
        )
        .env_remove("TRADING_SYNC_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("while computing indicators"), "{stderr}");
}

/// The scheduler runs a failed run again only when a new connection may get through: a server
/// refusing connections (down, restarting, failing over) is worth it; a database that does not
/// exist would fail the same way every time.
#[tokio::test]
async fn a_run_without_a_server_is_a_connection_loss_and_one_without_its_database_is_not() {
    async fn run(
        config: trading_sync::config::DatabaseConfig,
    ) -> trading_sync::indicators::IndicatorError {
        let pg = trading_sync::db::Connector::primary(&config).unwrap();
        job::run_once(
            &pg,
            &JobSettings::default(),
            &Selection::All,
            Mode::Incremental,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err()
    }
    let missing = run(common::database_config(&common::unique_name("ts_missing"))).await;
    assert!(missing.to_string().contains("3D000"), "{missing}");
    assert!(!missing.is_connection_loss(), "{missing}");
    let mut refused = common::database_config("postgres");
    refused.url = "postgres://postgres@127.0.0.1:1/postgres".into();
    let refused = run(refused).await;
    assert!(refused.is_connection_loss(), "{refused}");
}
