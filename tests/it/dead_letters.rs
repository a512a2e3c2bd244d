//! `trading-sync dead-letters`: messages refused by a too-small `sync.max_message_bytes` are
//! replayed once the limit is raised, exactly once (the ledger), each row keeping its outcome;
//! `show` never lets a payload's escape sequences reach the terminal; `purge` removes what it
//! says; replay's progress, off a terminal, is plain periodic lines.

use crate::common;

use std::time::Duration;

use common::process::command;
use common::{eventually, spawn_app, App, LoginRole};

/// Over the daemon's 256-byte limit below, under the default 64 KiB: replayable.
fn padded_trade(id: &str) -> String {
    common::python_dumps(&serde_json::json!({
        "type": "trade_executed",
        "data": {"trade_id": id, "account_id": "A", "symbol": "S", "side": "buy",
                 "quantity": 2, "price": "10.5", "strategy": format!("momentum-{}", "x".repeat(80))},
        "timestamp": "2026-12-01T15:00:00"}))
}

/// Under 256 bytes: applied at once.
fn small_trade(id: &str) -> String {
    common::python_dumps(&serde_json::json!({
        "type": "trade_executed",
        "data": {"trade_id": id, "account_id": "A", "symbol": "S", "side": "buy",
                 "quantity": 2, "price": "10.5"},
        "timestamp": "2026-12-01T15:00:00"}))
}

const PADDED: usize = 8;
/// Escape sequences a hostile publisher could send: clear screen, colours, a title change
/// (OSC), a bell, a C1 CSI.
const HOSTILE: &str =
    "{\"type\": \"\u{1b}[2J\u{1b}[31mboom\u{1b}]0;owned\u{7}\u{9b}1m\", \"data\": {}}";

async fn dead_letters(app: &App) -> i64 {
    app.scalar_i64("SELECT count(*) FROM analytics.dead_letters")
        .await
}

/// A daemon with a 256-byte message limit and 400-byte dead letters: PADDED trades refused
/// whole, one of them also applied by a small twin (a duplicate on replay), one refused and
/// cut (not replayable), one hostile non-JSON message, one non-UTF-8 message.
async fn refused_messages() -> App {
    let mut app = spawn_app(|c| {
        c.sync.max_message_bytes = 256;
        c.sync.dead_letter_max_bytes = 400;
    })
    .await;
    for i in 0..PADDED {
        let payload = padded_trade(&format!("T-{i:02}"));
        assert!(
            payload.len() > 256 && payload.len() <= 400,
            "{}",
            payload.len()
        );
        app.publish("trades", payload).await;
    }
    app.publish("trades", small_trade("T-00")).await;
    app.publish("trades", format!("{{\"pad\": \"{}\"}}", "y".repeat(600)))
        .await;
    app.publish("trades", HOSTILE).await;
    app.publish("positions", b"\xff\xfe\x1b[2J{}".as_slice())
        .await;
    eventually(
        "every message dead-lettered or applied",
        Duration::from_secs(20),
        || async {
            let ledger = app
                .scalar_i64("SELECT count(*) FROM analytics.applied_trades")
                .await;
            (dead_letters(&app).await == PADDED as i64 + 3 && ledger == 1).then_some(())
        },
    )
    .await;
    app
}

fn ok(out: (i32, String, String)) -> String {
    assert_eq!(out.0, 0, "stdout: {}\nstderr: {}", out.1, out.2);
    out.1
}

async fn books(app: &App) -> (i64, i64, String) {
    let row = app
        .db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM analytics.applied_trades),
                    (SELECT COALESCE(sum(trade_count), 0)::int8 FROM analytics.portfolio_summary),
                    (SELECT COALESCE(sum(net_quantity), 0)::text FROM analytics.portfolio_summary)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn raised_limit_replays_each_refused_trade_exactly_once() {
    let app = refused_messages().await;
    let url = app.db.url.clone();
    let prefix = app.config.redis.channel_prefix.clone();

    // V28: the reason label and the channel as received.
    let rows = app
        .db
        .client
        .query(
            "SELECT channel, reason, replayable FROM analytics.dead_letters ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let trades = format!("{prefix}:trades");
    let reasons: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|(c, r, replayable)| *c == trades && r == "oversized" && *replayable)
            .count(),
        PADDED
    );
    assert!(reasons.contains(&(trades.clone(), "oversized".into(), false)));
    assert!(reasons.contains(&(trades.clone(), "not_json".into(), true)));
    assert!(reasons.contains(&(format!("{prefix}:positions"), "not_utf8".into(), true)));

    // The daemon keeps running while the replay goes on: it is safe alongside.
    let before = books(&app).await;
    assert_eq!(before, (1, 1, "2.0000".into()));

    // A dry run changes nothing and says what would happen.
    let dry = ok(command(
        &url,
        &["dead-letters", "replay", "--all", "--dry-run"],
        &[],
    ));
    assert!(dry.contains("dry run, nothing changed"), "{dry}");
    assert_eq!(books(&app).await, before);

    // The limit raised to its default (64 KiB): the configuration replay decodes with.
    let out = ok(command(
        &url,
        &["dead-letters", "replay", "--all", "--json"],
        &[],
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    let count = |what: &str| results.iter().filter(|r| **r == what).count();
    assert_eq!(count("applied"), PADDED - 1, "{out}");
    assert_eq!(
        count("duplicate"),
        1,
        "T-00 was applied by its small twin: {out}"
    );
    assert_eq!(count("not_replayable"), 1, "{out}");
    assert_eq!(count("still_invalid"), 2, "{out}");
    let after = books(&app).await;
    assert_eq!(after.0, PADDED as i64, "each trade once in the ledger");
    assert_eq!(after.1, PADDED as i64, "each trade counted once");
    assert_eq!(after.2, format!("{}.0000", 2 * PADDED));

    // Replaying again changes nothing: applied and duplicate rows are decided for good.
    let decided_at: Vec<String> = common::first_column(
        &app.db.client,
        "SELECT replayed_at::text FROM analytics.dead_letters
              WHERE replay_result IN ('applied', 'duplicate') ORDER BY id",
    )
    .await;
    let again = ok(command(&url, &["dead-letters", "replay", "--all"], &[]));
    assert!(
        again.contains("applied: 0, duplicate: 0, still invalid: 2"),
        "{again}"
    );
    let applied_id: i64 = app
        .db
        .client
        .query_one(
            "SELECT min(id) FROM analytics.dead_letters WHERE replay_result = 'applied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let named = ok(command(
        &url,
        &["dead-letters", "replay", &applied_id.to_string()],
        &[],
    ));
    assert!(named.contains("already replayed (applied)"), "{named}");
    assert_eq!(books(&app).await, after);
    let decided_again: Vec<String> = common::first_column(
        &app.db.client,
        "SELECT replayed_at::text FROM analytics.dead_letters
              WHERE replay_result IN ('applied', 'duplicate') ORDER BY id",
    )
    .await;
    assert_eq!(decided_again, decided_at);

    // `list --json` parses and shows each row's outcome; a still-invalid row keeps its reason.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&ok(command(&url, &["dead-letters", "list", "--json"], &[]))).unwrap();
    assert_eq!(listed.len(), PADDED + 3);
    let outcome = |row: &serde_json::Value| {
        (
            row["reason"].as_str().unwrap().to_owned(),
            row["replay_result"].as_str().map(str::to_owned),
        )
    };
    let outcomes: Vec<_> = listed.iter().map(outcome).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|(_, r)| r.as_deref() == Some("applied"))
            .count(),
        PADDED - 1
    );
    assert!(outcomes.contains(&("not_json".into(), Some("still_invalid".into()))));
    assert!(outcomes.contains(&("not_utf8".into(), Some("still_invalid".into()))));
    assert!(
        outcomes.contains(&("oversized".into(), None)),
        "the cut one"
    );
    assert!(listed
        .iter()
        .all(|r| r["replayed_at"].is_null() == r["replay_result"].is_null()));

    // The filters: by reason, by channel suffix, by trade id.
    let by_reason: Vec<serde_json::Value> = serde_json::from_str(&ok(command(
        &url,
        &["dead-letters", "list", "--reason", "not_utf8", "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(by_reason.len(), 1);
    let by_channel: Vec<serde_json::Value> = serde_json::from_str(&ok(command(
        &url,
        &["dead-letters", "list", "--channel", "positions", "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(by_channel.len(), 1);
    assert_eq!(by_channel[0]["channel"], format!("{prefix}:positions"));
    let by_trade = ok(command(
        &url,
        &["dead-letters", "list", "--trade-id", "T-03"],
        &[],
    ));
    assert_eq!(by_trade.lines().count(), 1, "{by_trade}");
    assert!(by_trade.contains("applied at"), "{by_trade}");

    // Bad input names the flag.
    let (code, _, err) = command(&url, &["dead-letters", "list", "--limit", "0"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--limit"), "{err}");
    let (code, _, err) = command(&url, &["dead-letters", "replay"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--all"), "{err}");

    app.stop().await.unwrap();
}

#[tokio::test]
async fn show_escapes_control_bytes_and_purge_removes_what_it_says() {
    let app = refused_messages().await;
    let url = app.db.url.clone();
    let id_of = |reason: &'static str| {
        let client = &app.db.client;
        async move {
            client
                .query_one(
                    "SELECT id FROM analytics.dead_letters WHERE reason = $1 LIMIT 1",
                    &[&reason],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let hostile = id_of("not_json").await;
    let shown = ok(command(
        &url,
        &["dead-letters", "show", &hostile.to_string()],
        &[],
    ));
    assert!(
        !shown.contains('\u{1b}'),
        "a raw ESC reached the output: {shown:?}"
    );
    assert!(
        !shown.contains('\u{9b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(shown.contains("\\u{1b}[2J"), "{shown}");
    assert!(shown.contains("reason:         not_json"), "{shown}");
    let as_json: serde_json::Value = serde_json::from_str(&ok(command(
        &url,
        &["dead-letters", "show", &hostile.to_string(), "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(as_json["payload_text"], HOSTILE);

    let binary = id_of("not_utf8").await;
    let shown = ok(command(
        &url,
        &["dead-letters", "show", &binary.to_string()],
        &[],
    ));
    assert!(shown.contains("not UTF-8; hex"), "{shown}");
    assert!(shown.contains("ff fe 1b 5b 32 4a"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown:?}");

    let cut = app
        .db
        .client
        .query_one(
            "SELECT id FROM analytics.dead_letters WHERE NOT replayable",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    let shown = ok(command(
        &url,
        &["dead-letters", "show", &cut.to_string()],
        &[],
    ));
    assert!(
        shown.contains("only the first 400 stored (not replayable); sha256 "),
        "{shown}"
    );

    let (code, _, err) = command(&url, &["dead-letters", "show", "999999"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no dead letter has id 999999"), "{err}");

    // Purge by id: that row and no other.
    let total = dead_letters(&app).await;
    let out = ok(command(
        &url,
        &["dead-letters", "purge", &hostile.to_string(), "999999"],
        &[],
    ));
    assert!(out.contains("deleted 1 dead letter(s)"), "{out}");
    assert!(out.contains("no dead letter has id 999999"), "{out}");
    assert_eq!(dead_letters(&app).await, total - 1);
    let gone = app
        .db
        .client
        .query_opt(
            "SELECT 1 FROM analytics.dead_letters WHERE id = $1",
            &[&hostile],
        )
        .await
        .unwrap();
    assert!(gone.is_none());

    // Purge by age: everything received before a time after the last one.
    let out = ok(command(
        &url,
        &["dead-letters", "purge", "--before", "2999-01-01"],
        &[],
    ));
    assert!(
        out.contains(&format!("deleted {} dead letter(s)", total - 1)),
        "{out}"
    );
    assert_eq!(dead_letters(&app).await, 0);
    let (code, _, err) = command(
        &url,
        &["dead-letters", "purge", "1", "--before", "2999-01-01"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--before"), "{err}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn replay_progress_off_a_terminal_is_plain_periodic_lines() {
    let app = refused_messages().await;
    // As the daemon's own role, not the owner: V28's grants cover every command.
    let role = LoginRole::create("trading_sync").await;
    let url = role.url(&app.db.url);
    // stdout and stderr are pipes here: no bar, a line per step with --progress-every 0.
    let (code, out, err) = command(
        &url,
        &["dead-letters", "replay", "--all", "--progress-every", "0"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("dead-letters replay: "))
        .collect();
    let total = PADDED + 3;
    assert!(
        lines[0].contains(&format!("0/{total} dead letters")),
        "{err}"
    );
    for done in 1..=total {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!(" {done}/{total} dead letters ("))),
            "no line for {done}: {err}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("ETA")), "{err}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains(&format!("{total} dead letters done in")),
        "{err}"
    );
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "no carriage return or escape sequence off a terminal: {err:?}"
    );
    // The default: a line at the start and at the end only, for a run this short.
    let (code, out, err) = command(&url, &["dead-letters", "replay", "--all"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let lines = err
        .lines()
        .filter(|l| l.contains("dead-letters replay: "))
        .count();
    assert_eq!(lines, 2, "{err}");
    let listed = ok(command(&url, &["dead-letters", "list"], &[]));
    assert_eq!(listed.lines().count(), total, "{listed}");
    let first = app
        .scalar_i64("SELECT min(id) FROM analytics.dead_letters")
        .await
        .to_string();
    ok(command(&url, &["dead-letters", "show", &first], &[]));
    let purged = ok(command(&url, &["dead-letters", "purge", &first], &[]));
    assert!(purged.contains("deleted 1"), "{purged}");
    let (code, out, err) = command(
        &url,
        &["status"],
        &[("TRADING_SYNC__HTTP__ENABLED", "false")],
    );
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains(&common::current_schema_line()), "{out}");
    let (stopped, db) = app.stop_keeping_db().await;
    stopped.unwrap();
    role.drop(&db).await;
}

/// A dead-lettered trade applied long ago by another path, its ledger row since retired
/// (folded into the baseline, the watermark raised past it): replay refuses it as
/// beyond_retention — the ledger can no longer say it was counted — and counts nothing again.
#[tokio::test]
async fn a_trade_past_the_retention_watermark_is_not_replayed() {
    let db = common::TestDb::new().await;
    let payload = padded_trade("R-1");
    db.client
        .execute(
            "INSERT INTO analytics.dead_letters
                 (channel, payload, error, event_type, trade_id, payload_bytes, replayable, reason)
             VALUES ('data_sync:trades', $1, 'message is over the limit', 'trade_executed',
                     'R-1', $2, true, 'oversized')",
            &[&payload.as_bytes(), &(payload.len() as i64)],
        )
        .await
        .unwrap();
    // What retention leaves of the trade (executed 2026-12-01): its contribution in the
    // baseline, no ledger row, the watermark past it.
    db.client
        .batch_execute(
            "INSERT INTO analytics.ledger_baseline_portfolio
                 (account_id, symbol, trade_count, net_quantity, total_value, realized_pnl,
                  commission)
             VALUES ('A', 'S', 1, 2, 21, 0, 0);
             UPDATE analytics.ledger_retention SET retired_through = '2026-12-01T12:00:00Z'",
        )
        .await
        .unwrap();
    let ledger_and_books = || async {
        let row = db
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM analytics.applied_trades),
                        (SELECT count(*) FROM analytics.portfolio_summary)",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    let dry = ok(command(
        &db.url,
        &["dead-letters", "replay", "--all", "--dry-run"],
        &[],
    ));
    assert!(dry.contains("beyond retention"), "{dry}");
    let out = ok(command(
        &db.url,
        &["dead-letters", "replay", "--all", "--json"],
        &[],
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["rows"][0]["result"], "beyond_retention", "{out}");
    assert_eq!(ledger_and_books().await, (0, 0), "not counted again");
    let recorded: Vec<String> = common::first_column(
        &db.client,
        "SELECT replay_result FROM analytics.dead_letters",
    )
    .await;
    assert_eq!(recorded, ["beyond_retention"]);
    // Not decided for good (the configured horizon may move back), but refused again.
    let again = ok(command(&db.url, &["dead-letters", "replay", "--all"], &[]));
    assert!(again.contains("beyond retention: 1"), "{again}");
    assert_eq!(ledger_and_books().await, (0, 0));
}

/// A position snapshot older than the one the books hold changes nothing: `stale`, not
/// `applied`; a newer one is applied.
#[tokio::test]
async fn a_snapshot_older_than_the_books_is_stale() {
    let db = common::TestDb::new().await;
    let snapshot = |quantity: i64, as_of: &str| {
        serde_json::json!({
            "type": "position_updated",
            "data": {"account_id": "A", "symbol": "S", "quantity": quantity, "as_of": as_of},
            "timestamp": as_of})
        .to_string()
    };
    db.client
        .execute(
            "INSERT INTO analytics.portfolio_summary (account_id, symbol, quantity, position_as_of)
             VALUES ('A', 'S', 7, '2026-06-01T12:00:00Z')",
            &[],
        )
        .await
        .unwrap();
    for payload in [
        snapshot(3, "2026-05-01T12:00:00Z"),
        snapshot(9, "2026-07-01T12:00:00Z"),
    ] {
        db.client
            .execute(
                "INSERT INTO analytics.dead_letters
                     (channel, payload, error, payload_bytes, replayable, reason)
                 VALUES ('data_sync:positions', $1, 'x', $2, true, 'database')",
                &[&payload.as_bytes(), &(payload.len() as i64)],
            )
            .await
            .unwrap();
    }
    let out = ok(command(&db.url, &["dead-letters", "replay", "--all"], &[]));
    assert!(out.contains("applied: 1, duplicate: 0, stale: 1"), "{out}");
    let recorded: Vec<String> = common::first_column(
        &db.client,
        "SELECT replay_result FROM analytics.dead_letters ORDER BY id",
    )
    .await;
    assert_eq!(recorded, ["stale", "applied"]);
    let again = ok(command(&db.url, &["dead-letters", "replay", "--all"], &[]));
    assert!(
        again.contains("applied: 0, duplicate: 0, still invalid: 0"),
        "{again}"
    );
}
