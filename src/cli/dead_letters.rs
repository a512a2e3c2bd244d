//! `trading-sync dead-letters list|show|replay|purge`: the arguments, and what a person (or,
//! with `--json`, a script) reads. Every text that came from a message — payload, trade id,
//! error — is shown with its control characters escaped: a dead letter is by definition input
//! nobody vetted, and a raw ESC would let it drive the operator's terminal.

use std::fmt::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};

use super::parse_since;
use super::progress::CliProgress;
use crate::apply::dead_letters::{self, Filter, Letter, Outcome, ReplayReport, Row, Selection};
use crate::config::Config;
use crate::events::DecodeLimits;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many rows.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload (UTF-8 text with control characters escaped, or a
    /// hex dump).
    Show {
        #[arg(value_name = "ID")]
        id: i64,
        /// One JSON object on stdout (payload as `payload_text` or `payload_hex`).
        #[arg(long)]
        json: bool,
    },
    /// Decode stored payloads again with the current configuration and apply them exactly once
    /// (the trade-id ledger); each row records its outcome. Safe while the daemon runs.
    #[command(group(ArgGroup::new("rows").required(true).multiple(true)
        .args(["ids", "all", "since", "channel", "reason", "trade_id"])))]
    Replay {
        /// These dead letters.
        #[arg(value_name = "ID", conflicts_with_all = ["all", "since", "channel", "reason", "trade_id"])]
        ids: Vec<i64>,
        /// Every dead letter not yet applied (never replayed, or still invalid).
        #[arg(long, conflicts_with_all = ["since", "channel", "reason", "trade_id"])]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Decide each row in a transaction rolled back: say what would happen, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters by id, or every one received before a time.
    #[command(group(ArgGroup::new("rows").required(true).args(["ids", "before"])))]
    Purge {
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
        /// Received before (RFC 3339, or YYYY-MM-DD as midnight UTC).
        #[arg(long, value_name = "TIMESTAMP", value_parser = parse_since)]
        before: Option<DateTime<Utc>>,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Received at or after (RFC 3339, or YYYY-MM-DD as midnight UTC).
    #[arg(long, value_name = "TIMESTAMP", value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Channel as received (data_sync:trades), or its suffix (trades) under any prefix.
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// Reason label: not_json, not_utf8, missing_field, bad_type, bad_value, out_of_range,
    /// unknown_type, wrong_channel, not_object, oversized, database, stream_entry, unclassified.
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// The trade's id, when it could be read.
    #[arg(long, value_name = "ID")]
    pub trade_id: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> Filter {
        Filter {
            since: self.since,
            channel: self.channel,
            reason: self.reason,
            trade_id: self.trade_id,
        }
    }
}

pub async fn run(
    config: &Config,
    command: DeadLettersCommand,
    progress_every: Duration,
) -> anyhow::Result<()> {
    let mut client = crate::db::Connector::primary(&config.database)?
        .connect()
        .await
        .context("while connecting to PostgreSQL (database.url)")?;
    match command {
        DeadLettersCommand::List {
            filter,
            limit,
            json,
        } => {
            let rows = dead_letters::list(&client, &filter.filter(), limit)
                .await
                .context("while listing dead letters")?;
            if json {
                println!("{}", json_text(&rows)?);
            } else {
                print!("{}", render_list(&rows, limit));
            }
        }
        DeadLettersCommand::Show { id, json } => {
            let letter = dead_letters::show(&client, id)
                .await
                .context("while reading the dead letter")?
                .with_context(|| format!("no dead letter has id {id}"))?;
            if json {
                println!("{}", json_text(&show_json(&letter))?);
            } else {
                print!("{}", render_show(&letter));
            }
        }
        DeadLettersCommand::Replay {
            ids,
            all: _,
            filter,
            dry_run,
            json,
        } => {
            let selection = if ids.is_empty() {
                Selection::Matching(filter.filter())
            } else {
                Selection::Ids(ids)
            };
            let limits = DecodeLimits {
                max_message_bytes: config.sync.max_message_bytes,
                exchange_tz: config.exchange_tz()?,
            };
            let progress = CliProgress::new("dead-letters replay", progress_every);
            let report = dead_letters::replay(
                &mut client,
                &selection,
                &limits,
                config.maintenance.ledger_retention_days,
                dry_run,
                &progress,
            )
            .await
            .context("while replaying dead letters")?;
            if json {
                println!("{}", json_text(&report)?);
            } else {
                print!("{}", render_replay(&report));
            }
        }
        DeadLettersCommand::Purge { ids, before } => {
            let purged = match before {
                Some(before) => dead_letters::purge_before(&client, before).await,
                None => dead_letters::purge_ids(&client, &ids).await,
            }
            .context("while purging dead letters")?;
            let mut out = format!("deleted {} dead letter(s)\n", purged.deleted);
            if !purged.not_found.is_empty() {
                let ids: Vec<String> = purged.not_found.iter().map(i64::to_string).collect();
                let _ = writeln!(out, "no dead letter has id {}", ids.join(", "));
            }
            print!("{out}");
        }
    }
    Ok(())
}

/// Characters a terminal acts on or that reorder what a reader sees, beyond the C0 controls:
/// DEL and the C1 controls (CSI, OSC …), and the bidirectional marks, embeddings, overrides and
/// isolates.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}')
}

/// `--json` output: pretty JSON with every character [`escape_text`] escapes written as a
/// `\uXXXX` escape. serde_json escapes only U+0000–U+001F; a raw C1 CSI or a bidi override in a
/// string would reach the terminal of whoever reads the output. Still valid JSON, the same
/// values once parsed.
fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let json = serde_json::to_string_pretty(value)?;
    Ok(escape_json_controls(&json))
}

/// In serialized JSON, the characters of [`unsafe_on_terminal`] as `\uXXXX` escapes. They can
/// only occur inside strings (JSON's structure is ASCII), where the escape means the same
/// character; all are in the Basic Multilingual Plane, so one escape each.
fn escape_json_controls(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if unsafe_on_terminal(c) && !matches!(c, '\n' | '\t' | '\r') {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Text from a message, safe on a terminal: C0 and C1 control characters (ESC, CSI, BEL, CR,
/// backspace …), DEL, and the bidirectional overrides that reorder what a reader sees become
/// `\u{…}` escapes; newline and tab stay when `keep_lines` (a payload's own layout).
pub fn escape_text(text: &str, keep_lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let unsafe_char = unsafe_on_terminal(c);
        if keep_lines && (c == '\n' || c == '\t') {
            out.push(c);
        } else if unsafe_char {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else if c == '\\' {
            // So that an escape in the output always means one was made here.
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes that are not UTF-8: offset, 16 bytes in hex, and the printable ASCII among them.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", i * 16);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

fn opt(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| escape_text(v, false))
}

fn outcome_text(row: &Row) -> String {
    match (&row.replay_result, row.replayed_at) {
        (Some(result), Some(at)) => format!("{result} at {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
        _ => "not replayed".to_owned(),
    }
}

/// One line per row: id, time, channel, reason, trade, outcome, then the error (shortened).
pub fn render_list(rows: &[Row], limit: i64) -> String {
    if rows.is_empty() {
        return "no dead letter matches\n".to_owned();
    }
    let mut out = String::new();
    for row in rows {
        let error: String = escape_text(&row.error, false).chars().take(100).collect();
        let _ = writeln!(
            out,
            "{:>8}  {}  {}  {}  trade {}  {}  {}{}",
            row.id,
            row.received_at.format("%Y-%m-%d %H:%M:%S"),
            escape_text(&row.channel, false),
            escape_text(&row.reason, false),
            opt(row.trade_id.as_deref()),
            outcome_text(row),
            if row.replayable { "" } else { "[cut] " },
            error
        );
    }
    if rows.len() as i64 == limit {
        let _ = writeln!(out, "({limit} shown; more may match: raise --limit)");
    }
    out
}

pub fn render_show(letter: &Letter) -> String {
    let row = &letter.row;
    let mut out = String::new();
    let _ = writeln!(out, "id:             {}", row.id);
    let _ = writeln!(out, "received at:    {}", row.received_at.to_rfc3339());
    let _ = writeln!(out, "channel:        {}", escape_text(&row.channel, false));
    let _ = writeln!(out, "reason:         {}", escape_text(&row.reason, false));
    let _ = writeln!(out, "error:          {}", escape_text(&row.error, false));
    let _ = writeln!(out, "event type:     {}", opt(row.event_type.as_deref()));
    let _ = writeln!(out, "trade id:       {}", opt(row.trade_id.as_deref()));
    if let Some(id) = &row.stream_id {
        let deliveries = row.delivery_count.map_or("?".to_owned(), |d| d.to_string());
        let _ = writeln!(
            out,
            "stream entry:   {} (delivered {deliveries} times)",
            escape_text(id, false)
        );
    }
    let _ = writeln!(out, "replay:         {}", outcome_text(row));
    if row.replayable {
        let _ = writeln!(
            out,
            "size:           {} bytes, stored whole",
            row.payload_bytes
        );
    } else {
        let sha: String = letter
            .payload_sha256
            .iter()
            .flatten()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(
            out,
            "size:           {} bytes; only the first {} stored (not replayable); sha256 {sha}",
            row.payload_bytes, row.stored_bytes
        );
    }
    match std::str::from_utf8(&letter.payload) {
        Ok(text) => {
            out.push_str("payload (UTF-8, control characters escaped as \\u{..}):\n");
            out.push_str(&escape_text(text, true));
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        Err(_) => {
            out.push_str("payload (not UTF-8; hex):\n");
            out.push_str(&hex_dump(&letter.payload));
        }
    }
    out
}

/// `show --json`: the row's fields and the payload as text (JSON escapes its control
/// characters) when it is UTF-8, else as hex.
fn show_json(letter: &Letter) -> serde_json::Value {
    let mut value = serde_json::to_value(&letter.row).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        match std::str::from_utf8(&letter.payload) {
            Ok(text) => {
                object.insert("payload_text".into(), text.into());
            }
            Err(_) => {
                let hex: String = letter.payload.iter().map(|b| format!("{b:02x}")).collect();
                object.insert("payload_hex".into(), hex.into());
            }
        }
        let sha = letter
            .payload_sha256
            .as_ref()
            .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>());
        object.insert("payload_sha256".into(), sha.into());
    }
    value
}

/// A line per row decided or skipped, then the counts.
pub fn render_replay(report: &ReplayReport) -> String {
    let mut out = String::new();
    let would = if report.dry_run { "would be " } else { "" };
    for row in &report.rows {
        let trade = row
            .trade_id
            .as_deref()
            .map(|t| format!(" (trade {})", escape_text(t, false)))
            .unwrap_or_default();
        let what = match &row.outcome {
            Outcome::Applied => format!("{would}applied"),
            Outcome::Duplicate => {
                format!(
                    "duplicate: the ledger has the trade already; {would}recorded, nothing applied"
                )
            }
            Outcome::Stale => format!(
                "stale: the books hold a newer snapshot or price; {would}recorded, nothing changed"
            ),
            Outcome::BeyondRetention => "beyond retention: executed before the ledger's retention \
                 horizon (its ledger row may be retired); not applied, it could count twice"
                .to_owned(),
            Outcome::StillInvalid { reason, error } => format!(
                "still invalid ({}): {}",
                escape_text(reason, false),
                escape_text(error, false)
            ),
            Outcome::NotReplayable => {
                "not replayable: only the message's first bytes are stored; skipped".to_owned()
            }
            Outcome::AlreadyReplayed { replay_result } => {
                format!("already replayed ({replay_result}); skipped")
            }
            Outcome::Busy => "another replay holds it; skipped".to_owned(),
            Outcome::NotFound => "no such dead letter".to_owned(),
            Outcome::UnknownChannel { channel } => format!(
                "channel {} is none of the data_sync channels; skipped",
                escape_text(channel, false)
            ),
        };
        let _ = writeln!(out, "dead letter {}{trade}: {what}", row.id);
    }
    let counts: Vec<String> = report
        .counts()
        .into_iter()
        .filter(|(name, n)| *n > 0 || matches!(*name, "applied" | "duplicate" | "still_invalid"))
        .map(|(name, n)| format!("{}: {n}", name.replace('_', " ")))
        .collect();
    let _ = writeln!(
        out,
        "{}{}",
        if report.dry_run {
            "dry run, nothing changed; "
        } else {
            ""
        },
        counts.join(", ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_controls_never_pass_raw() {
        let shown = escape_text("a\u{1b}[31mred\u{7}\r\u{9b}2J\u{202e}x\\y\nz\t", true);
        assert!(!shown
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert_eq!(
            shown,
            "a\\u{1b}[31mred\\u{7}\\u{d}\\u{9b}2J\\u{202e}x\\\\y\nz\t"
        );
        assert_eq!(escape_text("line\nbreak", false), "line\\u{a}break");
    }

    #[test]
    fn json_output_escapes_c1_controls_and_bidi_characters() {
        let text = "a\u{1b}[2J\u{7f}\u{85}\u{9b}1m\u{61c}\u{200e}\u{200f}\u{202a}\u{202e}\u{2066}\u{2069}é\\\"z";
        let json = json_text(&serde_json::json!({ "error": text, "n": [1, 2] })).unwrap();
        assert!(
            !json.chars().any(|c| unsafe_on_terminal(c) && c != '\n'),
            "{json:?}"
        );
        assert!(json.contains(
            "\\u001b[2J\\u007f\\u0085\\u009b1m\\u061c\\u200e\\u200f\\u202a\\u202e\\u2066\\u2069é"
        ), "{json}");
        // Still JSON, and the same value once parsed.
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["error"], text);
        assert_eq!(parsed["n"], serde_json::json!([1, 2]));
        assert_eq!(escape_text("\u{61c}", false), "\\u{61c}");
    }

    #[test]
    fn hex_dump_shows_offsets_and_printable_ascii() {
        let dump = hex_dump(b"\xff\x1b[2Jabc");
        assert_eq!(
            dump,
            "00000000  ff 1b 5b 32 4a 61 62 63                           |..[2Jabc|\n"
        );
        assert_eq!(hex_dump(&[0u8; 17]).lines().count(), 2);
    }
}
