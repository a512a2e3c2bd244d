//! The house's one-way rule, checked: a module imports only modules below it on the data's
//! path (ARCHITECTURE.md in the README's notes). A new import that points up fails here, with the
//! file that made it, instead of being found by the next reader.

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module's rank: a module may name only modules of a lower rank.
/// `main → cli → daemon → {ingest, apply, reconcile, indicators, maintenance} → {events, db,
/// config} → core`. reconcile sits above apply: it heals through apply's own fold and store,
/// so a trade counts once whichever path brought it. db reads its settings from config;
/// telemetry reads config's log format and captures centralized logs without a database;
/// logship, their sink, writes them through db.
const RANKS: &[(&str, u8)] = &[
    ("core", 0),
    ("config", 1),
    ("events", 1),
    ("db", 2),
    ("telemetry", 2),
    ("ingest", 3),
    ("apply", 3),
    ("maintenance", 3),
    ("indicators", 3),
    ("logship", 3),
    ("reconcile", 4),
    ("daemon", 5),
    ("cli", 6),
];

fn rank(module: &str) -> u8 {
    RANKS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, rank)| *rank)
        .unwrap_or_else(|| panic!("src/{module} has no rank in tests/architecture.rs"))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names through `crate::<module>`.
fn named_modules(text: &str) -> BTreeSet<String> {
    text.match_indices("crate::")
        .map(|(at, _)| {
            text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn every_import_points_down_the_data_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_modules(&text) {
            if named != module && rank(&named) >= rank(&module) {
                upward.push(format!("{} names crate::{named}", relative.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up or sideways:\n{}",
        upward.join("\n")
    );
}

/// Inside the indicator path (src/indicators/mod.rs): `schedule → job → replica → store → step`.
const INDICATOR_RANKS: &[(&str, u8)] = &[
    ("step", 0),
    ("store", 1),
    ("replica", 2),
    ("job", 3),
    ("schedule", 4),
];

#[test]
fn the_indicator_stages_import_one_way() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/indicators");
    let rank_of = |name: &str| {
        INDICATOR_RANKS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
    };
    let mut upward = Vec::new();
    for (module, rank) in INDICATOR_RANKS {
        let text = std::fs::read_to_string(dir.join(format!("{module}.rs"))).unwrap();
        for prefix in ["super::", "crate::indicators::"] {
            for (at, _) in text.match_indices(prefix) {
                let named: String = text[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if rank_of(&named).is_some_and(|r| r >= *rank && named != *module) {
                    upward.push(format!("indicators/{module}.rs names {named}"));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "indicator imports pointing up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let names =
        named_modules("use crate::daemon::DaemonState;\nlet x = crate::core::Backoff::new;");
    assert_eq!(
        names,
        BTreeSet::from(["core".to_owned(), "daemon".to_owned()])
    );
    assert!(rank("daemon") > rank("ingest"));
}
