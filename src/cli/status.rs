//! `trading-sync status`: one screen for a person. The daemon's own view (ready, queue, stream
//! lag, indicator runs since it started) from its HTTP port; what the database knows (last
//! commit, last reconcile, last indicator state written, dead letters by reason, schema) from
//! the database, so it is there with the daemon down or HTTP off. The database has 5 s to
//! answer (and its session a statement_timeout), or it is reported timed out.
//!
//! Exit status, after the LSB's `status` convention: 0 running and ready, 1 running but not
//! ready, 3 not running (nothing answers at `http.listen`), 4 unknown (`http.enabled = false`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// The daemon answers within this, or it is reported unreachable.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// Enough for /readyz and /metrics; a longer answer is not our daemon's.
const HTTP_MAX_BYTES: u64 = 4 << 20;
/// The database view (connecting included) within this, or it is reported timed out: a table
/// locked by a migration or a long maintenance run must not hang `status`.
const DB_TIMEOUT: Duration = Duration::from_secs(5);
/// The session's own limit, under DB_TIMEOUT: a statement waiting on a lock is cancelled by
/// the server rather than left running after `status` gave up on it.
const SET_STATEMENT_TIMEOUT: &str = "SET statement_timeout = 4000";

const LAST_TRADE: &str = "SELECT max(applied_at) FROM analytics.applied_trades";
const LAST_RECONCILE: &str = "\
SELECT finished_at, trigger, trades_applied, trades_unusable, positions_refreshed, rows_priced
  FROM analytics.reconcile_runs ORDER BY started_at DESC LIMIT 1";
const LAST_INDICATOR_STATE: &str = "SELECT max(updated_at) FROM analytics.indicator_state";
/// The last indicator run a daemon or `trading-sync indicators` recorded (centralized logs):
/// when it finished, whether it succeeded, how long it took and what it wrote.
const LAST_INDICATOR_RUN: &str = "\
SELECT \"timestamp\", success, duration_ms, coalesce(rows_affected, 0), coalesce(data->>'mode', '')
  FROM logging.performance_logs
 WHERE service = 'trading-sync' AND operation = 'indicator_run'
 ORDER BY \"timestamp\" DESC LIMIT 1";
const DEAD_LETTERS_24H: &str = "\
SELECT reason, count(*) FROM analytics.dead_letters
 WHERE received_at > now() - interval '24 hours'
 GROUP BY reason ORDER BY count(*) DESC, reason";
const SCHEMA_VERSION: &str = "SELECT max(version) FROM refinery_schema_history";

pub const EXIT_READY: u8 = 0;
pub const EXIT_NOT_READY: u8 = 1;
pub const EXIT_NOT_RUNNING: u8 = 3;
pub const EXIT_UNKNOWN: u8 = 4;

/// The daemon as seen through its HTTP port.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DaemonView {
    /// `http.enabled = false`: readiness cannot be asked.
    HttpDisabled,
    /// Nothing answered at the address.
    Unreachable { url: String, error: String },
    /// /readyz answered.
    Up {
        url: String,
        ready: bool,
        /// /readyz's body: what is and is not ready, the queue, the streams.
        readiness: serde_json::Value,
        /// From /metrics: stream lag, indicator runs and reconcile since the daemon started.
        metrics: DaemonMetrics,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonMetrics {
    pub stream_pending: Option<f64>,
    pub stream_oldest_pending_seconds: Option<f64>,
    pub stream_length: Option<f64>,
    /// trading_sync_indicator_runs_total by outcome.
    pub indicator_runs: Vec<(String, f64)>,
    pub reconcile_failures: Option<f64>,
    pub dead_lettered: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastReconcile {
    pub finished_at: DateTime<Utc>,
    pub trigger: String,
    pub trades_applied: i64,
    pub trades_unusable: i64,
    pub positions_refreshed: i64,
    pub rows_priced: i64,
}

/// The newest `indicator_run` row of `logging.performance_logs`.
#[derive(Debug, Clone, Serialize)]
pub struct LastIndicatorRun {
    pub finished_at: DateTime<Utc>,
    pub success: bool,
    pub duration_ms: f64,
    pub rows_written: i64,
    pub mode: String,
}

/// What the database says; each part is an error of its own if it could not be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseView {
    pub error: Option<String>,
    /// No answer within DB_TIMEOUT (or a statement cancelled by statement_timeout); `error`
    /// says more.
    pub timed_out: bool,
    pub last_trade_applied_at: Option<DateTime<Utc>>,
    pub last_reconcile: Option<LastReconcile>,
    pub last_indicator_state_at: Option<DateTime<Utc>>,
    /// None when no run was recorded (centralized logs off, or none yet).
    pub last_indicator_run: Option<LastIndicatorRun>,
    pub dead_letters_24h: Vec<(String, i64)>,
    pub schema_version: Option<i32>,
    /// Migrations this binary has that the database lacks.
    pub pending_migrations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub daemon: DaemonView,
    pub database: DatabaseView,
    pub exit_code: u8,
    /// Why the exit code is not 0.
    pub reason: Option<String>,
}

pub async fn status(config: &Config, json: bool) -> anyhow::Result<u8> {
    let (daemon, database) = tokio::join!(daemon_view(config), database_view(config));
    let daemon = daemon?;
    let (exit_code, reason) = verdict(&daemon);
    let status = Status {
        daemon,
        database,
        exit_code,
        reason,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, Utc::now()));
    }
    Ok(status.exit_code)
}

fn verdict(daemon: &DaemonView) -> (u8, Option<String>) {
    match daemon {
        DaemonView::Up { ready: true, .. } => (EXIT_READY, None),
        DaemonView::Up {
            ready: false,
            readiness,
            ..
        } => {
            let failing: Vec<&str> = ["database", "writer_database", "redis_subscribed"]
                .into_iter()
                .filter(|k| readiness.get(*k).and_then(|v| v.as_bool()) == Some(false))
                .collect();
            let why = match (failing.is_empty(), readiness.get("writer_blocked")) {
                (_, Some(serde_json::Value::Bool(true))) => {
                    "the writer is blocked by an error an operator must fix".to_owned()
                }
                (true, _) => "the writer has held a batch too long".to_owned(),
                (false, _) => format!("not ready: {} false", failing.join(", ")),
            };
            (
                EXIT_NOT_READY,
                Some(format!("the daemon runs but is not ready ({why})")),
            )
        }
        DaemonView::Unreachable { url, error } => (
            EXIT_NOT_RUNNING,
            Some(format!(
                "the daemon is not running: nothing answers at {url} ({error})"
            )),
        ),
        DaemonView::HttpDisabled => (
            EXIT_UNKNOWN,
            Some(
                "http.enabled = false: the daemon's readiness cannot be asked; reporting from the \
                 database alone"
                    .to_owned(),
            ),
        ),
    }
}

/// Where to reach the daemon, in the order to try: `http.listen`, a wildcard address meaning
/// the loopback, where a daemon listening on every address answers too — 0.0.0.0: 127.0.0.1;
/// `::`: ::1, then 127.0.0.1 (a `::` socket also takes IPv4 unless IPV6_V6ONLY, and a host may
/// have IPv6 disabled on its loopback).
pub fn probe_addresses(listen: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("http.listen `{listen}` is not an address:port"))?;
    if !addr.ip().is_unspecified() {
        return Ok(vec![addr]);
    }
    let port = addr.port();
    let v4 = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    Ok(match addr {
        SocketAddr::V4(_) => vec![v4],
        SocketAddr::V6(_) => vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), v4],
    })
}

async fn daemon_view(config: &Config) -> anyhow::Result<DaemonView> {
    if !config.http.enabled {
        return Ok(DaemonView::HttpDisabled);
    }
    let mut errors = Vec::new();
    let mut answered = None;
    for addr in probe_addresses(&config.http.listen)? {
        match http_get(addr, "/readyz").await {
            Ok(answer) => {
                answered = Some((addr, answer));
                break;
            }
            Err(error) => errors.push((addr, error)),
        }
    }
    let Some((addr, (code, body))) = answered else {
        let url = errors
            .iter()
            .map(|(addr, _)| format!("http://{addr}/readyz"))
            .collect::<Vec<_>>()
            .join(" or ");
        let error = errors
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(DaemonView::Unreachable { url, error });
    };
    let url = format!("http://{addr}/readyz");
    let readiness = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let metrics = match http_get(addr, "/metrics").await {
        Ok((200, text)) => parse_metrics(&text),
        _ => DaemonMetrics::default(),
    };
    Ok(DaemonView::Up {
        url,
        ready: code == 200,
        readiness,
        metrics,
    })
}

/// A bare HTTP/1.0 GET (the daemon's own three endpoints; no client crate for that): the
/// status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.take(HTTP_MAX_BYTES).read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", HTTP_TIMEOUT.as_secs()),
            ))
        })
}

/// Sum of every series of `name` (any labels) in Prometheus text; None when absent.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for (series, value) in samples(text) {
        if series == name
            || series
                .strip_prefix(name)
                .is_some_and(|l| l.starts_with('{'))
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Each series of `name` with the value of its `label`.
fn metric_by_label(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let key = format!("{label}=\"");
    samples(text)
        .filter_map(|(series, value)| {
            let labels = series.strip_prefix(name)?.strip_prefix('{')?;
            let at = labels.find(&key)? + key.len();
            let end = labels[at..].find('"')?;
            Some((labels[at..at + end].to_owned(), value))
        })
        .collect()
}

fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.trim(), value.trim().parse().ok()?))
        })
}

fn parse_metrics(text: &str) -> DaemonMetrics {
    DaemonMetrics {
        stream_pending: metric_sum(text, "trading_sync_stream_pending"),
        stream_oldest_pending_seconds: metric_sum(
            text,
            "trading_sync_stream_oldest_pending_seconds",
        ),
        stream_length: metric_sum(text, "trading_sync_stream_length"),
        indicator_runs: metric_by_label(text, "trading_sync_indicator_runs_total", "outcome"),
        reconcile_failures: metric_sum(text, "trading_sync_reconcile_failures_total"),
        dead_lettered: metric_sum(text, "trading_sync_events_dead_lettered_total"),
    }
}

async fn database_view(config: &Config) -> DatabaseView {
    match tokio::time::timeout(DB_TIMEOUT, read_database(config)).await {
        Ok(Ok(view)) => view,
        Err(_) => DatabaseView {
            error: Some(format!("no answer within {} s", DB_TIMEOUT.as_secs())),
            timed_out: true,
            ..DatabaseView::default()
        },
        Ok(Err(e)) => DatabaseView {
            timed_out: e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
                == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            error: Some(crate::config::mask_secrets(&format!("{e:#}"))),
            ..DatabaseView::default()
        },
    }
}

async fn read_database(config: &Config) -> anyhow::Result<DatabaseView> {
    let mut client = crate::db::Connector::primary(&config.database)?
        .connect()
        .await
        .context("cannot connect (database.url)")?;
    client.batch_execute(SET_STATEMENT_TIMEOUT).await?;
    let last_trade = client.query_one(LAST_TRADE, &[]).await?.get(0);
    let last_reconcile = client
        .query_opt(LAST_RECONCILE, &[])
        .await?
        .map(|r| LastReconcile {
            finished_at: r.get(0),
            trigger: r.get(1),
            trades_applied: r.get(2),
            trades_unusable: r.get(3),
            positions_refreshed: r.get(4),
            rows_priced: r.get(5),
        });
    let last_indicator = client.query_one(LAST_INDICATOR_STATE, &[]).await?.get(0);
    let last_indicator_run =
        client
            .query_opt(LAST_INDICATOR_RUN, &[])
            .await?
            .map(|r| LastIndicatorRun {
                finished_at: r.get(0),
                success: r.get(1),
                duration_ms: r.get(2),
                rows_written: r.get(3),
                mode: r.get(4),
            });
    let dead_letters = client
        .query(DEAD_LETTERS_24H, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let schema_version = client.query_one(SCHEMA_VERSION, &[]).await?.get(0);
    let pending_migrations = crate::db::migrate::pending(&mut client).await?;
    Ok(DatabaseView {
        error: None,
        timed_out: false,
        last_trade_applied_at: last_trade,
        last_reconcile,
        last_indicator_state_at: last_indicator,
        last_indicator_run,
        dead_letters_24h: dead_letters,
        schema_version,
        pending_migrations,
    })
}

fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    let span = match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    };
    format!("{} ({span} ago)", at.format("%Y-%m-%d %H:%M:%S UTC"))
}

fn number(value: &serde_json::Value, key: &str) -> String {
    value
        .get(key)
        .map_or_else(|| "?".to_owned(), serde_json::Value::to_string)
}

pub fn render(status: &Status, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    match &status.daemon {
        DaemonView::HttpDisabled => {
            out.push_str("daemon        unknown: http.enabled = false (no /readyz to ask); what follows is the database's\n");
        }
        DaemonView::Unreachable { url, error } => {
            let _ = writeln!(
                out,
                "daemon        NOT RUNNING: nothing answers at {url} ({error})"
            );
        }
        DaemonView::Up {
            url,
            ready,
            readiness: r,
            metrics,
        } => {
            let state = if *ready {
                "up and ready"
            } else {
                "up, NOT READY"
            };
            let _ = writeln!(out, "daemon        {state} ({url})");
            let _ = writeln!(
                out,
                "checks        database {}, writer reaches the database {}, writer blocked {}, redis subscribed {}",
                number(r, "database"),
                number(r, "writer_database"),
                number(r, "writer_blocked"),
                number(r, "redis_subscribed")
            );
            let _ = writeln!(
                out,
                "queue         {} messages, {} bytes; writer busy {} ms",
                number(r, "queue_depth"),
                number(r, "queue_bytes"),
                number(r, "writer_busy_ms")
            );
            // Every series is registered at zero at start, so /metrics cannot tell whether the
            // daemon reads streams; its /readyz says.
            let reads_streams = r.get("uses_streams").and_then(|v| v.as_bool()) != Some(false);
            match metrics.stream_pending.filter(|_| reads_streams) {
                Some(pending) => {
                    let _ = writeln!(
                        out,
                        "streams       {pending} pending, oldest pending {:.1} s, length {}",
                        metrics.stream_oldest_pending_seconds.unwrap_or(0.0),
                        metrics.stream_length.unwrap_or(0.0)
                    );
                }
                None => out.push_str("streams       not used (pub/sub only)\n"),
            }
            let runs: Vec<String> = metrics
                .indicator_runs
                .iter()
                .map(|(outcome, n)| format!("{outcome} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "since start   indicator runs: {}; reconcile failures {}; dead-lettered {}",
                if runs.is_empty() {
                    "none".to_owned()
                } else {
                    runs.join(", ")
                },
                metrics.reconcile_failures.unwrap_or(0.0),
                metrics.dead_lettered.unwrap_or(0.0)
            );
        }
    }
    let db = &status.database;
    if let (true, Some(error)) = (db.timed_out, &db.error) {
        let _ = writeln!(out, "database      timed out: {error}");
    } else if let Some(error) = &db.error {
        let _ = writeln!(out, "database      UNREACHABLE: {error}");
    } else {
        let when =
            |at: Option<DateTime<Utc>>| at.map_or_else(|| "never".to_owned(), |t| ago(t, now));
        let _ = writeln!(
            out,
            "last commit   {} (last trade applied)",
            when(db.last_trade_applied_at)
        );
        match &db.last_indicator_run {
            Some(run) => {
                let _ = writeln!(
                    out,
                    "indicators    last run {} ({}, {}): {:.1} s, {} rows written; last state written {}",
                    ago(run.finished_at, now),
                    if run.mode.is_empty() { "?" } else { run.mode.as_str() },
                    if run.success { "ok" } else { "FAILED" },
                    run.duration_ms / 1000.0,
                    run.rows_written,
                    when(db.last_indicator_state_at)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "indicators    no run recorded; last state written {}",
                    when(db.last_indicator_state_at)
                );
            }
        }
        match &db.last_reconcile {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "reconcile     last run {} ({}): {} trades applied, {} unusable, {} positions refreshed, {} rows priced",
                    ago(r.finished_at, now),
                    r.trigger,
                    r.trades_applied,
                    r.trades_unusable,
                    r.positions_refreshed,
                    r.rows_priced
                );
            }
            None => out.push_str("reconcile     never ran\n"),
        }
        if db.dead_letters_24h.is_empty() {
            out.push_str("dead letters  none in the last 24 h\n");
        } else {
            let by: Vec<String> = db
                .dead_letters_24h
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            let _ = writeln!(out, "dead letters  last 24 h: {}", by.join(", "));
        }
        let version = db
            .schema_version
            .map_or_else(|| "not migrated".to_owned(), |v| format!("V{v}"));
        if db.pending_migrations.is_empty() {
            let _ = writeln!(out, "schema        {version} (current)");
        } else {
            let _ = writeln!(
                out,
                "schema        {version}; this binary has {} migration(s) to apply: {} (run `trading-sync migrate`)",
                db.pending_migrations.len(),
                db.pending_migrations.join(", ")
            );
        }
    }
    if let Some(reason) = &status.reason {
        let _ = writeln!(out, "status        {reason}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_the_loopback() {
        let addrs = |listen: &str| -> Vec<String> {
            probe_addresses(listen)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(addrs("0.0.0.0:9187"), ["127.0.0.1:9187"]);
        assert_eq!(addrs("[::]:9187"), ["[::1]:9187", "127.0.0.1:9187"]);
        assert_eq!(addrs("10.1.2.3:80"), ["10.1.2.3:80"]);
        assert_eq!(addrs("[::1]:80"), ["[::1]:80"]);
        assert!(probe_addresses("localhost").is_err());
    }

    #[test]
    fn metrics_are_summed_over_labels_and_read_by_label() {
        let text = "# TYPE x counter\n\
            trading_sync_stream_pending{key=\"a\"} 2\n\
            trading_sync_stream_pending{key=\"b\"} 3\n\
            trading_sync_stream_pending_other 100\n\
            trading_sync_indicator_runs_total{outcome=\"ok\"} 4\n\
            trading_sync_indicator_runs_total{outcome=\"partial\"} 1\n";
        assert_eq!(metric_sum(text, "trading_sync_stream_pending"), Some(5.0));
        assert_eq!(metric_sum(text, "trading_sync_stream_length"), None);
        assert_eq!(
            metric_by_label(text, "trading_sync_indicator_runs_total", "outcome"),
            [("ok".to_owned(), 4.0), ("partial".to_owned(), 1.0)]
        );
    }

    #[test]
    fn exit_codes_follow_the_lsb_status_convention() {
        let up = |ready| DaemonView::Up {
            url: String::new(),
            ready,
            readiness: serde_json::json!({"database": true, "redis_subscribed": ready}),
            metrics: DaemonMetrics::default(),
        };
        assert_eq!(verdict(&up(true)).0, EXIT_READY);
        let (code, why) = verdict(&up(false));
        assert_eq!(code, EXIT_NOT_READY);
        assert!(why.unwrap().contains("redis_subscribed"));
        let down = DaemonView::Unreachable {
            url: "u".into(),
            error: "refused".into(),
        };
        assert_eq!(verdict(&down).0, EXIT_NOT_RUNNING);
        assert_eq!(verdict(&DaemonView::HttpDisabled).0, EXIT_UNKNOWN);
    }
}
