//! `migrate` against the real PostgreSQL: creation, idempotence, the advisory lock, and refusal
//! of an edited migration.

use crate::common;

use common::{connect, database_config, database_url, unique_name, DropDatabase};
use trading_sync::db::migrate::{migrate, MigrateError};

fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sql")
        })
        .count()
}

async fn schema_fingerprint(url: &str) -> Vec<(String, String, String)> {
    let client = connect(url).await;
    client
        .query(
            "SELECT table_schema::text, table_name::text, column_name::text \
             FROM information_schema.columns \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn migrate_creates_the_database_and_a_second_run_changes_nothing() {
    let name = unique_name("ts_test");
    let _cleanup = DropDatabase(name.clone());
    let config = database_config(&name);

    let first = migrate(&config).await.expect("first migrate");
    assert!(first.database_created);
    assert_eq!(first.applied.len(), migration_count());
    let before = schema_fingerprint(&database_url(&name)).await;
    assert!(before.len() > 100, "schema has {} columns", before.len());

    let second = migrate(&config).await.expect("second migrate");
    assert!(!second.database_created);
    assert!(second.applied.is_empty(), "re-applied {:?}", second.applied);
    assert_eq!(schema_fingerprint(&database_url(&name)).await, before);
}

#[tokio::test]
async fn concurrent_migrations_apply_once_and_the_other_waits() {
    let name = unique_name("ts_test");
    let _cleanup = DropDatabase(name.clone());
    let admin = connect(&common::admin_url()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();

    // Hold the migration lock so that both runs are certainly contending for it.
    let holder = connect(&database_url(&name)).await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x7473_6d69_6772_6174_i64])
        .await
        .unwrap();
    let config = database_config(&name);
    let (a, b) = tokio::join!(migrate(&config), async {
        let run = migrate(&config);
        tokio::pin!(run);
        // Let both runs reach the lock before releasing it.
        common::eventually(
            "both migrations to wait",
            std::time::Duration::from_secs(10),
            || async {
                let waiting: i64 = holder
                    .query_one(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (waiting >= 1).then_some(())
            },
        )
        .await;
        holder
            .execute(
                "SELECT pg_advisory_unlock($1)",
                &[&0x7473_6d69_6772_6174_i64],
            )
            .await
            .unwrap();
        run.await
    });
    let (a, b) = (a.expect("first run"), b.expect("second run"));
    assert!(a.waited_for_lock || b.waited_for_lock);
    let mut applied = [a.applied.len(), b.applied.len()];
    applied.sort();
    assert_eq!(applied, [0, migration_count()]);
}

#[tokio::test]
async fn a_migration_edited_after_it_was_applied_is_refused() {
    let db = common::TestDb::new().await;
    db.client
        .execute(
            "UPDATE refinery_schema_history SET checksum = '12345' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let err = migrate(&db.config()).await.expect_err("must refuse");
    assert!(matches!(err, MigrateError::Edited { .. }), "{err:?}");
    assert!(
        err.to_string().contains("edited after it was applied"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env_remove("TRADING_SYNC_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was edited after it was applied"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_migrates_and_reports_an_unreachable_server() {
    let name = unique_name("ts_test");
    let _cleanup = DropDatabase(name.clone());
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .args(["--log-format", "json", "migrate"])
        .env("DATABASE_URL", database_url(&name))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let log = String::from_utf8_lossy(&ok.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("schema migrated"))
        .unwrap_or_else(|| panic!("no migration log line in {log}"));
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(json["applied"], migration_count());

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_trading-sync"))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
}
