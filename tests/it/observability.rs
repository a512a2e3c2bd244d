//! The Grafana dashboard (`observability/grafana/trading-sync.json`) and the alerting rules
//! (`observability/prometheus/alerts.yml`) against the daemon: every series they query exists
//! in a running daemon's `/metrics` — no dead panel, no alert that can never fire — and
//! promtool accepts the rules, their unit tests and the dashboard's expressions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common;
use common::process::{metric, Daemon};
use common::{eventually, publish_counted, redis_url, unique_name, TestDb};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard_path() -> PathBuf {
    repo().join("observability/grafana/trading-sync.json")
}

fn rules_path() -> PathBuf {
    repo().join("observability/prometheus/alerts.yml")
}

/// Every PromQL expression of the dashboard's panels (`targets[].expr`, rows included), with
/// where it was found.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((format!("dashboard panel {title:?}"), expr.to_owned()));
                }
                for (key, child) in map {
                    // Template variables are label_values() queries, not PromQL: read apart.
                    if key != "templating" {
                        walk(child, title, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(dashboard_path()).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard parses");
    let mut out = Vec::new();
    walk(&dashboard["panels"], "", &mut out);
    out
}

/// The metric each dashboard variable lists its values from (`label_values(metric…, label)`).
fn dashboard_variable_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(dashboard_path()).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["query"]["query"].as_str())
        .map(|q| {
            let inner = q
                .strip_prefix("label_values(")
                .unwrap_or_else(|| panic!("a variable query that is not label_values(): {q}"));
            inner
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Every `expr:` of the rules file, inline or a block scalar (`|`, `>`), with its alert's name.
/// A deliberately small reader: the file is ours, and a form it does not know fails loudly.
fn rule_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut alert = String::new();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        }
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        let expr = if rest.starts_with('|') || rest.starts_with('>') {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            assert!(
                !rest.starts_with(['"', '\'']),
                "{alert}: quoted inline expr; write it plain or as a block scalar"
            );
            rest.to_owned()
        };
        out.push((format!("alert {alert}"), expr));
    }
    let alerts = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(out.len(), alerts, "one expr per alert");
    out
}

/// A metric selector in an expression: the name and its label matchers (label, op, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The metric selectors of a PromQL expression: a small tokenizer that skips strings, ranges,
/// numbers and durations, function and aggregation names (an identifier followed by `(`), the
/// label lists of `by`/`without`/`on`/`ignoring`/`group_*`, and keywords. What is left is a
/// metric name.
fn selectors(expr: &str) -> Vec<Selector> {
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<Selector> = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let close = |open: char, close: char, from: usize| {
        let mut depth = 0;
        let mut j = from;
        let mut quote: Option<char> = None;
        while j < chars.len() {
            let c = chars[j];
            match quote {
                Some(_) if c == '\\' => j += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j;
                    }
                }
                None => {}
            }
            j += 1;
        }
        panic!("unbalanced {open}{close} in {expr}");
    };
    // Whether the last token was a metric name: braces then are its matchers.
    let mut after_name = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let name_before = std::mem::take(&mut after_name);
        if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '[' {
            i = close('[', ']', i) + 1;
        } else if c == '{' {
            let end = close('{', '}', i);
            let body: String = chars[i + 1..end].iter().collect();
            let selector = out
                .last_mut()
                .filter(|_| name_before)
                .unwrap_or_else(|| panic!("a selector without a metric name in {expr}"));
            selector.matchers = matchers(&body);
            i = end + 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (5m, 1e3, 0x1f).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = close('(', ')', next) + 1;
                }
            } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                || chars.get(next) == Some(&'(')
                || ["by", "without"].iter().any(|m| {
                    // An aggregation with its modifier first: `sum by (job) (…)`.
                    let rest: String = chars[next..].iter().take(m.len() + 1).collect();
                    rest.strip_prefix(m).is_some_and(|after| {
                        after
                            .chars()
                            .all(|c| !(c.is_ascii_alphanumeric() || c == '_'))
                    })
                })
            {
                // A keyword, or a function or aggregation.
            } else {
                out.push(Selector {
                    name: word,
                    matchers: Vec::new(),
                });
                after_name = true;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// `label op "value"` pairs of a selector's braces.
fn matchers(body: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or_else(|| panic!("unreadable matchers: {body}"));
        let label = rest[..name_end].to_owned();
        rest = rest[name_end..].trim_start();
        let op_len = if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") {
            2
        } else {
            1
        };
        let op = rest[..op_len].to_owned();
        rest = rest[op_len..].trim_start();
        let quote = rest.chars().next().unwrap();
        let end = rest[1..]
            .find(quote)
            .unwrap_or_else(|| panic!("unquoted value in {body}"))
            + 1;
        let value = rest[1..end].to_owned();
        out.push((label, op, value));
        rest = rest[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

/// The series of a `/metrics` text: each name with the label pairs seen on it.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap();
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let end = line.rfind('}').unwrap();
            for (label, _, value) in matchers(&line[name_end + 1..end]) {
                labels.insert((label, value));
            }
        }
    }
    out
}

#[test]
fn the_query_reader_finds_metrics_and_matchers() {
    let found = selectors(
        r#"sum by (job, instance) (increase(trading_sync_x_total{outcome=~"error|partial", job="a,b}"}[1h] offset 5m)) / on (instance) group_left () up{job="trading-sync"} > 1e3 and time() - trading_sync_y > 0.5"#,
    );
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["trading_sync_x_total", "up", "trading_sync_y"]);
    assert_eq!(
        found[0].matchers,
        [
            ("outcome".into(), "=~".into(), "error|partial".into()),
            ("job".into(), "=".into(), "a,b}".into())
        ]
    );
    assert!(found[2].matchers.is_empty());
}

/// The daemon under a little traffic: every metric name the dashboard and the rules query is in
/// its /metrics, with every label value they select on. `up` is Prometheus's own (one per
/// target), so it only has to name the scrape job; `job` and `instance` are target labels.
#[tokio::test]
async fn every_series_the_dashboard_and_the_alerts_query_exists() {
    let mut queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} dashboard queries", queries.len());
    queries.extend(rule_queries());

    let db = TestDb::new().await;
    let url = redis_url();
    // The indicator scheduler on, so that its next-run gauge is set by the scheduler itself.
    let daemon = Daemon::start(
        &db,
        &url,
        &[("TRADING_SYNC__INDICATORS__ENABLED", "true".into())],
    );
    let port = daemon.port().await;
    eventually(
        "the daemon to be ready",
        Duration::from_secs(30),
        || async {
            let (code, _) = common::process::http_get(port, "/readyz").await?;
            (code == 200).then_some(())
        },
    )
    .await;

    // Trades (some duplicated), position snapshots and bars, and one message that is not JSON.
    let (messages, _) = loadgen::workload(14, 400, 0.1);
    let mut publisher = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let receivers = publish_counted(&mut publisher, &daemon.prefix, &messages, 20)
        .await
        .unwrap();
    assert!(receivers.iter().all(|&n| n == 1), "{receivers:?}");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:trades", daemon.prefix))
        .arg("not json")
        .query_async(&mut publisher)
        .await
        .unwrap();
    let published = messages.len() as f64 + 1.0;
    let text = eventually(
        "every message received and committed (applied, duplicate or dead-lettered)",
        Duration::from_secs(30),
        || async {
            let (_, text) = daemon.get("/metrics").await?;
            let sum = |name: &str| -> f64 {
                text.lines()
                    .filter(|l| {
                        l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            let committed = sum("trading_sync_events_applied_total")
                + sum("trading_sync_events_duplicate_total")
                + sum("trading_sync_events_dead_lettered_total");
            let done = sum("trading_sync_events_received_total") == published
                && committed == published
                && metric(&text, "trading_sync_ready ") == 1.0
                && metric(&text, "trading_sync_indicator_next_run_timestamp_seconds ") > 0.0;
            done.then_some(text)
        },
    )
    .await;
    for channel in ["trades", "positions", "market_data"] {
        let applied = metric(
            &text,
            &format!("trading_sync_events_applied_total{{channel=\"{channel}\"}}"),
        );
        assert!(applied > 0.0, "no {channel} applied: {text}");
    }
    assert_eq!(
        metric(
            &text,
            "trading_sync_events_dead_lettered_total{channel=\"trades\",reason=\"not_json\"}"
        ),
        1.0,
        "{text}"
    );
    let series = exposition(&text);

    let mut missing = Vec::new();
    let mut checked = BTreeSet::new();
    for (source, expr) in &queries {
        for selector in selectors(expr) {
            if selector.name == "up" {
                if !selector.matchers.iter().any(|(label, _, _)| label == "job") {
                    missing.push(format!("{source}: `up` without a job matcher in {expr}"));
                }
                continue;
            }
            if !selector.name.starts_with("trading_sync_") {
                missing.push(format!(
                    "{source}: {} is not the daemon's in {expr}",
                    selector.name
                ));
                continue;
            }
            checked.insert(selector.name.clone());
            let Some(labels) = series.get(&selector.name) else {
                missing.push(format!("{source}: {} is not in /metrics", selector.name));
                continue;
            };
            for (label, op, value) in &selector.matchers {
                if label == "job" || label == "instance" || value.contains('$') {
                    continue;
                }
                let wanted: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    // Alternatives of plain words: each must be a value the daemon records.
                    "=~" if value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-|".contains(c)) =>
                    {
                        value.split('|').collect()
                    }
                    _ => continue,
                };
                for v in wanted {
                    if !labels.contains(&(label.clone(), v.to_owned())) {
                        missing.push(format!(
                            "{source}: {}{{{label}=\"{v}\"}} is not in /metrics",
                            selector.name
                        ));
                    }
                }
            }
        }
    }
    for name in dashboard_variable_metrics() {
        if !series.contains_key(&name) {
            missing.push(format!("dashboard variable: {name} is not in /metrics"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // The reader did read: the dashboard and the rules between them query these many series.
    assert!(checked.len() >= 25, "{checked:?}");
    eprintln!(
        "{} queries, {} metric names, all in /metrics",
        queries.len(),
        checked.len()
    );
}

/// `promtool check rules` on the rules, `promtool test rules` on their unit tests, and the
/// dashboard's expressions (Grafana's variables replaced) checked as recording rules — the
/// syntax of every panel. Skipped with the reason when promtool is not installed.
#[test]
fn promtool_accepts_the_rules_their_tests_and_the_dashboard_queries() {
    if let Err(e) = Command::new("promtool").arg("--version").output() {
        eprintln!(
            "skipped: no promtool ({e}); Debian's prometheus package ships it (.ci/run fetches it)"
        );
        return;
    }
    let promtool = |args: &[&str], dir: &Path| {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let rules_dir = repo().join("observability/prometheus");
    promtool(&["check", "rules", "alerts.yml"], &rules_dir);
    promtool(&["test", "rules", "alerts.test.yml"], &rules_dir);

    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (_, expr)) in dashboard_queries().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(unique_name("ts_dashboard_rules"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
