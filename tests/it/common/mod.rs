//! Test harness: every test gets its own database cloned from a migrated template, so tests run
//! in parallel against the real PostgreSQL and leave nothing behind.
//!
//! The template `ts_tpl_<hash of migrations/>` is built once (under an advisory lock, so parallel
//! test binaries agree) and reused until the migrations change. Databases of test processes that
//! died are dropped when a new template is built, and so are templates of other hashes beyond
//! the three newest: on a development cluster those belong to other work trees running their
//! tests (and a template dropped anyway is rebuilt by the next test that needs it).
#![allow(dead_code)]

pub mod process;
pub mod servers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use tokio_postgres::NoTls;
use trading_sync::config::DatabaseConfig;

/// Any admin URL of the cluster under test; its database part is replaced per test.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The URL of `database` on the test cluster.
pub fn database_url(database: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(database);
    url.to_string()
}

/// A name no other test of any process uses: `<prefix>_<pid>_<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn database_config(database: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: database_url(database),
        ..DatabaseConfig::default()
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A fresh, migrated database of its own, dropped (WITH FORCE) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let template = template();
        let name = unique_name("ts_test");
        let admin = connect(&admin_url()).await;
        // CREATE DATABASE cannot run inside a multi-statement batch (PITFALLS.md).
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        if let Err(e) = admin.batch_execute(&create).await {
            // Another work tree's test run with other migrations dropped it: build it again.
            if e.code() != Some(&tokio_postgres::error::SqlState::UNDEFINED_DATABASE) {
                panic!("cannot clone {template}: {e:?}");
            }
            build_template_blocking();
            admin
                .batch_execute(&create)
                .await
                .unwrap_or_else(|e| panic!("cannot clone {template}: {e:?}"));
        }
        let url = database_url(&name);
        let client = connect(&url).await;
        TestDb { name, url, client }
    }

    pub fn config(&self) -> DatabaseConfig {
        database_config(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database_blocking(self.name.clone());
    }
}

/// Drops a database from a thread of its own: Drop cannot await, and the test's runtime may be
/// shutting down.
pub fn drop_database_blocking(name: String) {
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let admin = connect(&admin_url()).await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        });
    });
    let _ = handle.join();
}

/// The template's name, building it on first use in this process.
fn template() -> String {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(build_template_blocking).clone()
}

/// Builds the template if it is missing, from a thread of its own (callers may be inside a
/// runtime).
fn build_template_blocking() -> String {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(build_template())
    })
    .join()
    .expect("building the template database panicked")
}

const TEMPLATE_LOCK_KEY: i64 = 0x7473_7465_7374_7470;

async fn build_template() -> String {
    let template = format!("ts_tpl_{:016x}", migrations_hash());
    let admin = connect(&admin_url()).await;
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK_KEY])
        .await
        .expect("template lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .expect("pg_database")
        .is_some();
    if !exists {
        clean_stale(&admin, &template).await;
        // Built under another name and renamed when complete, so a crash mid-way leaves no
        // half-migrated template that later runs would trust.
        let building = format!("{template}_building");
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
            ))
            .await
            .expect("drop half-built template");
        trading_sync::db::migrate::migrate(&database_config(&building))
            .await
            .unwrap_or_else(|e| panic!("migrating the template failed: {e}"));
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
            ))
            .await
            .expect("rename template");
        admin
            .batch_execute(&format!("ALTER DATABASE \"{template}\" IS_TEMPLATE true"))
            .await
            .expect("mark template");
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK_KEY])
        .await
        .expect("template unlock");
    template
}

/// Templates of other migration sets kept besides the current one: two checkouts (branches,
/// worktrees) testing at the same time each need their own, and dropping the other's would
/// fail its clones mid-run.
const OTHER_TEMPLATES_KEPT: usize = 3;

/// Drops templates of older migration sets and databases left by test processes that died.
async fn clean_stale(admin: &tokio_postgres::Client, keep: &str) {
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'ts\\_tpl\\_%' OR datname LIKE 'ts\\_test\\_%' \
             ORDER BY oid DESC",
            &[],
        )
        .await
        .expect("list databases");
    let mut templates_seen = 0;
    for row in rows {
        let name: String = row.get(0);
        let stale = if name.starts_with("ts_tpl_") {
            // Newest first: the most recently built templates survive.
            templates_seen += usize::from(name != keep);
            name != keep && templates_seen > OTHER_TEMPLATES_KEPT
        } else {
            name.split('_')
                .nth(2)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        };
        if stale {
            let _ = admin
                .batch_execute(&format!("ALTER DATABASE \"{name}\" IS_TEMPLATE false"))
                .await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// FNV-1a over the migration files' names and contents: stable across runs and toolchains.
fn migrations_hash() -> u64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let body = std::fs::read(&path).expect("migration file");
        for byte in name.as_bytes().iter().chain(body.iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what` — tests never
/// sleep for a fixed time to synchronise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Drops the named database when it goes out of scope, for tests that create one themselves.
pub struct DropDatabase(pub String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        drop_database_blocking(self.0.clone());
    }
}

/// A running daemon on its own database and its own Redis channel prefix.
pub struct App {
    pub db: TestDb,
    pub config: trading_sync::config::Config,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub state: std::sync::Arc<trading_sync::daemon::DaemonState>,
    pub handle: tokio::task::JoinHandle<anyhow::Result<trading_sync::daemon::StopReport>>,
    /// The HTTP port when the test enabled it (`http.listen` on port 0 picks a free one).
    pub http_port: Option<u16>,
    pub redis: redis::aio::MultiplexedConnection,
}

impl App {
    pub fn channel(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.config.redis.channel_prefix)
    }

    pub async fn publish(&mut self, suffix: &str, payload: impl AsRef<[u8]>) {
        let channel = self.channel(suffix);
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload.as_ref())
            .query_async(&mut self.redis)
            .await
            .expect("PUBLISH");
    }

    /// Stops the daemon and returns how `run_until_stopped` ended.
    pub async fn stop(self) -> anyhow::Result<trading_sync::daemon::StopReport> {
        self.stop_keeping_db().await.0
    }

    /// Stops the daemon; the database stays for the test to inspect or clean up.
    pub async fn stop_keeping_db(
        self,
    ) -> (anyhow::Result<trading_sync::daemon::StopReport>, TestDb) {
        self.shutdown.cancel();
        (self.handle.await.expect("daemon task panicked"), self.db)
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        self.db.client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

/// Starts `run` in-process with `tweak` applied to a test configuration; returns once every
/// subscription is confirmed.
pub async fn spawn_app(tweak: impl FnOnce(&mut trading_sync::config::Config)) -> App {
    spawn_app_on(TestDb::new().await, tweak).await
}

/// As [`spawn_app`], on a database the test prepared.
pub async fn spawn_app_on(
    db: TestDb,
    tweak: impl FnOnce(&mut trading_sync::config::Config),
) -> App {
    // RUST_LOG=trading_sync=debug shows the daemon's logs in a failing test's output.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let mut config = trading_sync::config::Config::default();
    config.database = db.config();
    config.redis.url = redis_url();
    config.redis.channel_prefix = unique_name("ts_test");
    config.redis.reconnect_max_backoff_ms = 200;
    config.indicators.enabled = false;
    config.http.enabled = false;
    config.http.listen = "127.0.0.1:0".into();
    config.maintenance.enabled = false;
    config.log.summary_interval_secs = 0;
    tweak(&mut config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Subscribed and consumer groups created once `build` returns: what is published from
    // here on is read.
    let daemon = trading_sync::daemon::Daemon::build(&config)
        .await
        .unwrap_or_else(|e| panic!("the daemon did not start: {e:#}"));
    let (state, http_port) = (daemon.state(), daemon.http_port());
    let handle = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    let redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    App {
        db,
        config,
        shutdown,
        state,
        handle,
        http_port,
        redis,
    }
}

/// JSON exactly as Python's `json.dumps` writes it (", " and ": " separators, non-ASCII escaped),
/// which is what the seed's publishers send. A function rather than a re-export: test binaries
/// that never call it would flag an unused import.
pub fn python_dumps(value: &serde_json::Value) -> String {
    loadgen::python_dumps(value)
}

/// Publishes `messages` under `prefix` in pipelines and returns each PUBLISH's receiver count:
/// 0 means no subscriber got the message, which is how a test tells what pub/sub delivered.
pub async fn publish_counted(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    messages: &[loadgen::Message],
    pipeline: usize,
) -> redis::RedisResult<Vec<i64>> {
    let mut receivers = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(pipeline.max(1)) {
        let mut pipe = redis::pipe();
        for m in chunk {
            pipe.cmd("PUBLISH")
                .arg(format!("{prefix}:{}", m.channel.suffix()))
                .arg(&m.payload);
        }
        let counts: Vec<i64> = pipe.query_async(conn).await?;
        receivers.extend(counts);
    }
    Ok(receivers)
}

/// Subscribers of each of the prefix's three channels (PUBSUB NUMSUB).
pub async fn subscribers(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<i64> {
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg("NUMSUB");
    for kind in trading_sync::events::ChannelKind::ALL {
        cmd.arg(format!("{prefix}:{}", kind.suffix()));
    }
    let reply: Vec<redis::Value> = cmd.query_async(conn).await.expect("PUBSUB NUMSUB");
    reply
        .chunks(2)
        .map(|pair| match pair.get(1) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        })
        .collect()
}

/// XLEN, 0 for a missing key.
/// Entries of `key` delivered to the daemon's group (`trading-sync`) and not yet acknowledged
/// (XPENDING's summary count).
pub async fn stream_pending(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg("trading-sync")
        .query_async(conn)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

pub async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// Entries ever added to a stream (XINFO STREAM `entries-added`, Redis 7): unlike XLEN it does
/// not go down when the stream is trimmed. 0 for a missing key.
pub async fn entries_added(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await;
    let Ok(value) = reply else { return 0 };
    let pairs: Vec<(redis::Value, redis::Value)> = match value {
        redis::Value::Map(pairs) => pairs,
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
            .collect(),
        _ => return 0,
    };
    pairs
        .into_iter()
        .find_map(|(k, v)| match (k, v) {
            (redis::Value::BulkString(k), redis::Value::Int(n)) if k == b"entries-added" => {
                Some(n as u64)
            }
            (redis::Value::SimpleString(k), redis::Value::Int(n)) if k == "entries-added" => {
                Some(n as u64)
            }
            _ => None,
        })
        .expect("XINFO STREAM has entries-added (Redis 7 or later)")
}

/// Deletes keys of the shared Redis a test created.
pub async fn delete_keys(keys: &[&str]) {
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A login role in the group role `group` (`trading_sync`), for tests that must run as the role
/// itself, never as the owner. Roles are cluster-wide: [`LoginRole::drop`] removes it.
pub struct LoginRole {
    pub name: String,
}

impl LoginRole {
    pub async fn create(group: &str) -> LoginRole {
        let name = unique_name("ts_role");
        connect(&admin_url())
            .await
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN IN ROLE {group}"))
            .await
            .unwrap();
        LoginRole { name }
    }

    /// `url` with this role as its user.
    pub fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_username(&self.name).unwrap();
        url.to_string()
    }

    /// Waits for the role's sessions to close, then drops what it owns in `db` and the role.
    pub async fn drop(self, db: &TestDb) {
        let admin = connect(&admin_url()).await;
        eventually(
            "the role's sessions closed",
            std::time::Duration::from_secs(10),
            || async {
                let open: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                        &[&self.name],
                    )
                    .await
                    .ok()?
                    .get(0);
                (open == 0).then_some(())
            },
        )
        .await;
        db.client
            .batch_execute(&format!("DROP OWNED BY \"{}\"", self.name))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("DROP ROLE \"{}\"", self.name))
            .await
            .unwrap();
    }
}

/// `status`'s schema line for a database migrated to this checkout's newest migration, read
/// from `migrations/` so that a new migration does not break the tests that check it.
pub fn current_schema_line() -> String {
    let newest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_prefix('V')?
                .split("__")
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap();
    format!("schema        V{newest} (current)")
}

/// The first column of every row `sql` returns.
pub async fn first_column<T>(client: &tokio_postgres::Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}
