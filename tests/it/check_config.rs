//! `check-config` through the real binary: precedence, masking, and one clear error per bad key.

use std::io::Write;
use std::process::{Command, Output};

fn check_config(file: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trading-sync"));
    let dir = tempdir();
    if let Some(body) = file {
        let path = dir.join("config.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        cmd.arg("--config").arg(path);
    }
    // The developer's own environment must not leak into what is being checked.
    for (k, _) in std::env::vars() {
        if k.starts_with("TRADING_SYNC") || k.ends_with("_URL") || k.ends_with("_URL_FILE") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(&dir)
        .arg("check-config")
        .envs(env.iter().copied());
    let output = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

fn tempdir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ts-check-config-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_rejected(o: &Output, key: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted; stdout: {}", stdout(o));
    assert!(
        stderr.to_lowercase().contains(&key.to_lowercase()),
        "message does not name `{key}`: {stderr}"
    );
}

#[test]
fn defaults_apply_without_a_file() {
    let o = check_config(None, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    assert!(out.contains("batch_max_events = 5000"), "{out}");
    assert!(out.contains("schedule = \"0 17 * * 1-5\""), "{out}");
}

#[test]
fn file_then_environment_then_database_url() {
    let file = "[database]\nurl = \"postgres://file@127.0.0.1/from_file\"\npool_size = 3\n[sync]\nbatch_max_events = 100\n";
    let o = check_config(Some(file), &[]);
    assert!(stdout(&o).contains("pool_size = 3"), "{}", stdout(&o));
    assert!(stdout(&o).contains("from_file"));

    let o = check_config(
        Some(file),
        &[
            ("TRADING_SYNC__DATABASE__POOL_SIZE", "5"),
            ("DATABASE_URL", "postgres://env@127.0.0.1/from_env"),
        ],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("pool_size = 5"), "{out}");
    assert!(
        out.contains("from_env") && !out.contains("from_file"),
        "{out}"
    );
    assert!(out.contains("batch_max_events = 100"), "{out}");
}

/// A password in the query string, in a multi-host URL, or quoted by a TOML syntax error on the
/// url line never reaches the output (which the unit's ExecStartPre sends to the journal).
#[test]
fn passwords_anywhere_in_a_url_are_masked() {
    for url in [
        "postgres://app@db/trading_system?password=s3cret-q&sslmode=disable",
        "postgres://app:s3cret-q@h1:5432,h2:5432/trading_system?target_session_attrs=read-write",
    ] {
        let o = check_config(None, &[("DATABASE_URL", url)]);
        let all = stdout(&o) + &String::from_utf8_lossy(&o.stderr);
        assert!(!all.contains("s3cret-q"), "{all}");
        assert!(all.contains("********"), "{all}");
    }
    let o = check_config(
        Some("[database]\nurl = \"postgres://app:s3cret-q@db/trading_system\n"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!stderr.contains("s3cret-q"), "{stderr}");
}

#[test]
fn secrets_are_masked() {
    let o = check_config(
        None,
        &[
            (
                "DATABASE_URL",
                "postgres://app:hunter2@127.0.0.1/trading_system",
            ),
            ("REDIS_URL", "redis://:swordfish@127.0.0.1:6379/0"),
            (
                "TRADING_SYNC__DATABASE__REPLICA_URL",
                "postgres://ro:tiger@10.0.0.2/trading_system",
            ),
        ],
    );
    let out = stdout(&o);
    assert!(o.status.success());
    assert!(
        !out.contains("hunter2") && !out.contains("swordfish") && !out.contains("tiger"),
        "{out}"
    );
    assert!(out.contains("app:********@"), "{out}");
    assert!(
        out.contains("replica_url = \"postgres://ro:********@10.0.0.2/trading_system\""),
        "{out}"
    );
}

#[test]
fn secrets_come_from_files_and_credentials_directory() {
    let dir = tempdir();
    std::fs::write(
        dir.join("db_url"),
        "postgres://u:fromfile@127.0.0.1/trading_system\n",
    )
    .unwrap();
    std::fs::write(dir.join("db_password"), "s3cret\n").unwrap();
    let o = check_config(
        Some("[database]\npassword_file = \"db_password\"\n"),
        &[
            ("DATABASE_URL_FILE", dir.join("db_url").to_str().unwrap()),
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !out.contains("fromfile") && !out.contains("s3cret"),
        "{out}"
    );

    let o = check_config(
        Some("[database]\npassword_file = \"/nonexistent/pw\"\n"),
        &[],
    );
    assert_rejected(&o, "database.password_file");
}

#[test]
fn replica_url_comes_from_a_file_and_is_masked() {
    let dir = tempdir();
    std::fs::write(
        dir.join("replica_url"),
        "postgres://ro:fromfile@10.0.0.2:5433/trading_system\n",
    )
    .unwrap();
    std::fs::write(dir.join("replica_password"), "s3cret\n").unwrap();
    let o = check_config(
        Some("[database]\nreplica_password_file = \"replica_password\"\n"),
        &[
            (
                "DATABASE_REPLICA_URL_FILE",
                dir.join("replica_url").to_str().unwrap(),
            ),
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("replica_url = \"postgres://ro:********@10.0.0.2:5433/trading_system\""),
        "{out}"
    );
    assert!(
        !out.contains("fromfile") && !out.contains("s3cret"),
        "{out}"
    );

    let o = check_config(
        None,
        &[("DATABASE_REPLICA_URL_FILE", "/nonexistent/replica_url")],
    );
    assert_rejected(&o, "DATABASE_REPLICA_URL_FILE");
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    assert_rejected(
        &check_config(Some("[sync]\nbatch_max_event = 3\n"), &[]),
        "batch_max_event",
    );
    assert_rejected(
        &check_config(Some("[nosuchsection]\na = 1\n"), &[]),
        "nosuchsection",
    );
    assert_rejected(
        &check_config(None, &[("TRADING_SYNC__REDIS__PASWORD", "x")]),
        "redis.pasword",
    );
}

#[test]
fn bad_values_are_rejected_with_their_key() {
    let cases: &[(&str, &str)] = &[
        ("[database]\nurl = \"mysql://x/y\"\n", "database.url"),
        (
            "[database]\nurl = \"postgres://127.0.0.1\"\n",
            "database.url",
        ),
        ("[redis]\nurl = \"http://127.0.0.1\"\n", "redis.url"),
        ("[redis]\nurl = \"not a url\"\n", "redis.url"),
        ("[database]\npool_size = 0\n", "database.pool_size"),
        (
            "[database]\nreplica_url = \"mysql://x/y\"\n",
            "database.replica_url",
        ),
        (
            "[database]\nreplica_url = \"postgres://127.0.0.1\"\n",
            "database.replica_url",
        ),
        ("[database]\nreplica_url = \"\"\n", "database.replica_url"),
        (
            "[database]\nreplica_password_file = \"/nonexistent/pw\"\n",
            "database.replica_password_file",
        ),
        (
            "[indicators]\nreplica_max_wait_ms = 600001\n",
            "indicators.replica_max_wait_ms",
        ),
        ("[sync]\nbatch_max_events = 0\n", "sync.batch_max_events"),
        ("[sync]\nqueue_max_bytes = 1000\n", "sync.queue_max_bytes"),
        (
            "[sync]\nexchange_timezone = \"Mars/Olympus\"\n",
            "sync.exchange_timezone",
        ),
        (
            "[indicators]\nschedule = \"61 * * * *\"\n",
            "indicators.schedule",
        ),
        ("[http]\nlisten = \"localhost\"\n", "http.listen"),
        ("[sync]\nbatch_max_events = \"many\"\n", "batch_max_events"),
        ("[log]\nformat = \"xml\"\n", "format"),
        ("[log]\ndatabase_level = \"debug\"\n", "log.database_level"),
        ("[log]\ndatabase = \"yes\"\n", "database"),
        ("[journal]\nappend_batch = 0\n", "journal.append_batch"),
        ("[journal]\ntrim_interval_ms = 0\n", "journal.trim_interval_ms"),
        ("[journal]\nbuffer_max_bytes = 100\n", "journal.buffer_max_bytes"),
        ("[journal]\nkey = \"\"\n", "journal.key"),
        (
            "[journal]\nkey = \"data_sync:trades\"\n",
            "journal.key",
        ),
        (
            "[transport]\njournal = true\ntrades = \"stream\"\npositions = \"stream\"\nmarket_data = \"stream\"\n",
            "transport.journal",
        ),
        // Never fires: the scheduler would fail and restart forever.
        (
            "[indicators]\nschedule = \"0 17 31 2 *\"\n",
            "indicators.schedule",
        ),
        (
            "[maintenance]\nschedule = \"30 3 30 2 *\"\n",
            "maintenance.schedule",
        ),
        // Six fields: croner would read the first as seconds.
        (
            "[indicators]\nschedule = \"0 0 17 * * 1-5\"\n",
            "indicators.schedule",
        ),
        (
            "[maintenance]\npartitions_ahead_years = 1000000\n",
            "maintenance.partitions_ahead_years",
        ),
        (
            "[sync]\nqueue_max_bytes = 9223372036854775807\n",
            "sync.queue_max_bytes",
        ),
        ("[reconcile]\ninterval_secs = 0\n", "reconcile.interval_secs"),
        ("[reconcile]\ngrace_ms = 3600001\n", "reconcile.grace_ms"),
        (
            "[database]\nstatement_timeout_ms = 0\n",
            "database.statement_timeout_ms",
        ),
        ("[http]\nreadyz_stall_secs = 0\n", "http.readyz_stall_secs"),
    ];
    for (file, key) in cases {
        assert_rejected(&check_config(Some(file), &[]), key);
    }
    // u64::MAX, which no TOML integer holds, through the environment.
    assert_rejected(
        &check_config(
            None,
            &[(
                "TRADING_SYNC__SYNC__QUEUE_MAX_BYTES",
                "18446744073709551615",
            )],
        ),
        "sync.queue_max_bytes",
    );
}

#[test]
fn the_journal_settings_are_shown_with_the_derived_key() {
    let o = check_config(
        Some("[redis]\nchannel_prefix = \"{ds}\"\n[transport]\njournal = true\n"),
        &[("TRADING_SYNC__JOURNAL__TRIM_INTERVAL_MS", "250")],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("journal = true"), "{out}");
    // Derived from the prefix, hash tag included (Redis Cluster: the channels' shard).
    assert!(out.contains("key = \"{ds}:journal\""), "{out}");
    assert!(out.contains("trim_interval_ms = 250"), "{out}");
    assert!(out.contains("append_batch = 1000"), "{out}");

    let o = check_config(Some("[journal]\nkey = \"audit:journal\"\n"), &[]);
    assert!(
        stdout(&o).contains("key = \"audit:journal\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_shipped_config_toml_states_the_defaults() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let with_file = check_config(Some(&shipped), &[]);
    let without = check_config(None, &[]);
    assert!(
        with_file.status.success(),
        "{}",
        String::from_utf8_lossy(&with_file.stderr)
    );
    assert_eq!(stdout(&with_file), stdout(&without));
}

#[test]
fn an_explicit_config_path_must_exist() {
    let o = Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .args(["--config", "/nonexistent/trading-sync.toml", "check-config"])
        .output()
        .unwrap();
    assert_rejected(&o, "/nonexistent/trading-sync.toml");
}

/// Under --log-format json the fatal line is JSON too, so a log shipper parses every line.
#[test]
fn the_fatal_line_is_json_under_log_format_json() {
    let o = Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .args(["--log-format", "json", "check-config"])
        .env_remove("TRADING_SYNC_CONFIG")
        .env("TRADING_SYNC__DATABASE__POOL_SIZE", "0")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line: serde_json::Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stderr}"));
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("database.pool_size"),
        "{line}"
    );
}

/// What a TLS connection would refuse, check-config refuses first, naming the key: an unknown
/// sslmode, verify-full without a CA, an unreadable CA (a relative path looked up in
/// `$CREDENTIALS_DIRECTORY`), a client key without its certificate.
#[test]
fn postgres_tls_settings_are_checked() {
    let o = check_config(
        None,
        &[("DATABASE_URL", "postgres://a@db/t?sslmode=sometimes")],
    );
    assert_rejected(&o, "database.url");
    let o = check_config(
        None,
        &[("DATABASE_URL", "postgres://a@db/t?sslmode=verify-full")],
    );
    assert_rejected(&o, "database.url");
    let o = check_config(
        Some("[database]\ntls_ca_file = \"pg-ca.pem\"\n"),
        &[("CREDENTIALS_DIRECTORY", "/nonexistent-creds")],
    );
    assert_rejected(&o, "database.tls_ca_file");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("/nonexistent-creds/pg-ca.pem"), "{stderr}");
    let o = check_config(
        Some("[database]\ntls_key_file = \"/etc/pg-client.key\"\n"),
        &[],
    );
    assert_rejected(&o, "database.tls_key_file");
    let o = check_config(
        None,
        &[(
            "DATABASE_URL",
            "postgres://a@db/t?sslmode=verify-full&sslrootcert=system",
        )],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
