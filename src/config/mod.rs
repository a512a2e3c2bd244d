//! Typed configuration: built-in defaults, then the TOML file, then the environment.
//!
//! Owns loading, validation and the masked rendering `check-config` prints. It must not open a
//! connection: everything here is checkable offline.
//!
//! Precedence (later wins): [`Config::default`] → the TOML file → `TRADING_SYNC__SECTION__KEY`
//! variables → `DATABASE_URL` / `REDIS_URL` (the names every PostgreSQL and Redis tool already
//! understands) → `DATABASE_URL_FILE` / `REDIS_URL_FILE` / `DATABASE_REPLICA_URL_FILE`. Secrets
//! may come from files (`database.password_file`, `database.replica_password_file`,
//! `redis.password_file`, `*_URL_FILE`); a relative secret path is
//! resolved against `$CREDENTIALS_DIRECTORY`, so systemd's `LoadCredential=` works unchanged.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Why a configuration could not be used. Every message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Masked: a TOML syntax error quotes the offending line, which may be the URL.
    #[error("{}", mask_secrets(&.0.to_string()))]
    Parse(Box<figment::Error>),
    /// Masked: a message may quote the offending value.
    #[error("{key}: {}", mask_secrets(message))]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub sync: SyncConfig,
    pub indicators: IndicatorsConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub maintenance: MaintenanceConfig,
    pub transport: TransportConfig,
    pub streams: StreamsConfig,
    pub journal: JournalConfig,
    pub reconcile: ReconcileConfig,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// libpq-style URL of the trading_system database; its password is a secret.
    pub url: String,
    /// File holding the password; overrides one in `url` so the URL itself can be public.
    pub password_file: Option<PathBuf>,
    /// A physical streaming replica of that database: the indicator job reads bars there.
    /// Its password is a secret, like `url`'s.
    pub replica_url: Option<String>,
    /// File holding the replica's password. Unset: `password_file` (a physical standby has
    /// the primary's roles).
    pub replica_password_file: Option<PathBuf>,
    /// Database `migrate` connects to when the target database does not exist yet.
    pub maintenance_db: String,
    /// Connections kept by the daemon's pool.
    pub pool_size: usize,
    /// How long a connection attempt may take before startup reports the host unreachable.
    pub connect_timeout_ms: u64,
    /// Queries slower than this are logged and counted (the seed's DatabaseMonitoring).
    pub slow_query_ms: u64,
    /// The batch writer's statement_timeout: a statement running longer is cancelled and the
    /// batch retried. Below the unit's WatchdogSec (30 s): a stuck statement does not beat the
    /// watchdog, and systemd would kill the daemon with its queue.
    pub statement_timeout_ms: u64,
    /// The batch writer's lock_timeout: a batch waiting this long on a row lock (a long
    /// transaction of someone else's) is rolled back and retried.
    pub lock_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/trading_system".into(),
            password_file: None,
            replica_url: None,
            replica_password_file: None,
            maintenance_db: "postgres".into(),
            pool_size: 8,
            connect_timeout_ms: 5_000,
            slow_query_ms: 1_000,
            statement_timeout_ms: 10_000,
            lock_timeout_ms: 5_000,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; its password is a secret.
    pub url: String,
    /// File holding the Redis password (AUTH); overrides one in `url`.
    pub password_file: Option<PathBuf>,
    /// Channel prefix: channels are `<prefix>:trades`, `<prefix>:positions`, `<prefix>:market_data`.
    pub channel_prefix: String,
    /// Cap of the reconnect backoff.
    pub reconnect_max_backoff_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            password_file: None,
            channel_prefix: "data_sync".into(),
            reconnect_max_backoff_ms: 5_000,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// A transaction applies at most this many events.
    pub batch_max_events: usize,
    /// A batch is committed at the latest this long after its first event arrived.
    pub batch_max_wait_ms: u64,
    /// Bytes of received, not yet committed messages held in memory before reading pauses.
    pub queue_max_bytes: usize,
    /// Larger messages are dead-lettered without being parsed, cut at the ingest edge.
    pub max_message_bytes: usize,
    /// A dead letter keeps its payload whole up to this size (replayable once the limit is
    /// raised); beyond it, its first 4 KiB, its size and its SHA-256 (not replayable).
    pub dead_letter_max_bytes: usize,
    /// performance_metrics.date is the trade's date in this zone.
    pub exchange_timezone: String,
    /// On SIGTERM, how long the queue may take to drain before the rest is logged and left.
    pub drain_deadline_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_max_events: 5_000,
            batch_max_wait_ms: 5,
            queue_max_bytes: 80 * 1024 * 1024,
            max_message_bytes: 64 * 1024,
            dead_letter_max_bytes: 1024 * 1024,
            exchange_timezone: "America/New_York".into(),
            drain_deadline_ms: 10_000,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndicatorsConfig {
    /// Whether the daemon runs the indicator job at all.
    pub enabled: bool,
    /// Five-field cron expression, evaluated in `timezone`.
    pub schedule: String,
    pub timezone: String,
    /// Run once at start to catch up on bars that arrived while the daemon was down.
    pub run_at_start: bool,
    /// Recompute a symbol seconds after a `market_data_updated` event for a yahoo bar.
    pub on_market_data: bool,
    /// Quiet period that folds a burst of bar events into one run.
    pub debounce_ms: u64,
    /// How long a chunk waits for `database.replica_url` to replay the primary's WAL before
    /// reading its bars from the primary instead.
    pub replica_max_wait_ms: u64,
}

impl Default for IndicatorsConfig {
    fn default() -> Self {
        IndicatorsConfig {
            enabled: true,
            schedule: "0 17 * * 1-5".into(),
            timezone: "America/New_York".into(),
            run_at_start: true,
            on_market_data: true,
            debounce_ms: 2_000,
            replica_max_wait_ms: 5_000,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve /metrics, /healthz and /readyz.
    pub enabled: bool,
    pub listen: String,
    /// /readyz answers 503 once the batch writer has held a batch uncommitted this long (the
    /// database refusing, a lock wait, a hang), not only when the database is unreachable.
    pub readyz_stall_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:9187".into(),
            readyz_stall_secs: 30,
        }
    }
}

/// How one channel's events arrive.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Redis pub/sub (the seed's DataSyncEventBus): nothing kept while we are away.
    #[default]
    Pubsub,
    /// A Redis stream read through a consumer group: durable, acknowledged after commit.
    Stream,
    /// Both; duplicates are harmless (the trade-id ledger, last-writer-wins snapshots).
    Both,
}

impl Transport {
    pub fn pubsub(self) -> bool {
        matches!(self, Transport::Pubsub | Transport::Both)
    }

    pub fn stream(self) -> bool {
        matches!(self, Transport::Stream | Transport::Both)
    }
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub trades: Transport,
    pub positions: Transport,
    pub market_data: Transport,
    /// XADD every pub/sub message to the journal stream on receipt and apply it from there,
    /// so that a PostgreSQL outage or a crash after receipt loses nothing.
    pub journal: bool,
}

impl TransportConfig {
    /// Whether any channel is read through pub/sub (the journal needs one).
    pub fn any_pubsub(&self) -> bool {
        [self.trades, self.positions, self.market_data]
            .iter()
            .any(|t| t.pubsub())
    }

    pub fn for_channel(&self, channel: crate::core::ChannelKind) -> Transport {
        match channel {
            crate::core::ChannelKind::Trades => self.trades,
            crate::core::ChannelKind::Positions => self.positions,
            crate::core::ChannelKind::MarketData => self.market_data,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Consumer group shared by every instance.
    pub group: String,
    /// This instance's consumer name; distinct per instance, stable across restarts (so a
    /// restarted instance re-reads its own pending entries). Default: the host name.
    pub consumer: Option<String>,
    /// Entry field holding the event JSON.
    pub field: String,
    /// Where a newly created group starts: "0" = the whole stream, "$" = only new entries.
    pub start_id: String,
    /// XREADGROUP BLOCK time.
    pub block_ms: u64,
    /// Entries per read.
    pub read_count: usize,
    /// Entries read but not yet committed, at most. Redis keeps the rest; reading far ahead
    /// would only make a crash re-deliver (and count against max_deliveries) more entries.
    pub read_ahead: usize,
    /// Entries pending this long with another (dead) consumer are taken over (XAUTOCLAIM).
    pub claim_idle_ms: u64,
    /// An entry delivered more than this many times is dead-lettered and acknowledged.
    pub max_deliveries: u32,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            group: "trading-sync".into(),
            consumer: None,
            field: "event".into(),
            start_id: "0".into(),
            block_ms: 2_000,
            read_count: 1_000,
            read_ahead: 10_000,
            claim_idle_ms: 30_000,
            max_deliveries: 16,
        }
    }
}

impl StreamsConfig {
    pub fn consumer_name(&self) -> String {
        self.consumer.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "trading-sync".into())
        })
    }
}

/// The pub/sub journal (`transport.journal = true`): one stream holding every pub/sub message
/// from receipt until its transaction committed, read through `streams.group`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Stream key. Default `<redis.channel_prefix>:journal`, which keeps a hash tag of the
    /// prefix, so that in Redis Cluster the journal lives on the channels' shard.
    pub key: Option<String>,
    /// XADDs sent per pipelined round trip.
    pub append_batch: usize,
    /// Bytes of received messages not yet in the journal held in memory; past it a message
    /// is refused, counted and logged (as sync.queue_max_bytes does). It absorbs bursts faster
    /// than Redis takes XADDs, the role the queue has without the journal: same default.
    pub buffer_max_bytes: usize,
    /// Applied entries are trimmed (XTRIM MINID) at most this often.
    pub trim_interval_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            key: None,
            append_batch: 1_000,
            buffer_max_bytes: 80 * 1024 * 1024,
            trim_interval_ms: 1_000,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Run the seed's DatabaseMaintenance tasks inside the daemon (once across instances).
    pub enabled: bool,
    /// Five-field cron expression in `timezone`.
    pub schedule: String,
    pub timezone: String,
    /// Create market_data yearly partitions up to this many years ahead (0 = off).
    pub partitions_ahead_years: u32,
    /// logging.system_logs / performance_logs older than this move to the archive tables (0 = keep).
    pub log_retention_days: u32,
    /// Archive (as the seed does) rather than delete old logs.
    pub archive_logs: bool,
    /// analytics.dead_letters older than this are deleted (0 = keep).
    pub dead_letter_retention_days: u32,
    /// analytics.applied_trades rows older than this are deleted (0 = keep). A trade replayed
    /// after its ledger row is gone would be counted again: keep this longer than any replay.
    pub ledger_retention_days: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            schedule: "30 3 * * *".into(),
            timezone: "America/New_York".into(),
            partitions_ahead_years: 1,
            log_retention_days: 30,
            archive_logs: true,
            dead_letter_retention_days: 90,
            ledger_retention_days: 400,
        }
    }
}

/// `reconcile`: heal the aggregates from execution.trades, execution.positions and market_data
/// (what events did not deliver), in the daemon and as a command.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run it inside the daemon: at start once the backlog drained, after every Redis
    /// resubscription, and every `interval_secs` (once across instances).
    pub enabled: bool,
    /// Seconds between scheduled runs.
    pub interval_secs: u64,
    /// Trade rows written less than this long ago (database clock) are left for a later run, so
    /// that an event still in flight is applied from the event, not raced.
    pub grace_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            enabled: true,
            interval_secs: 300,
            grace_ms: 5_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd, text otherwise.
    #[default]
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// tracing filter used when RUST_LOG is unset.
    pub filter: Option<String>,
    /// Seconds between the info-level summary lines (rates, queue, lag); 0 = off.
    pub summary_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            filter: None,
            summary_interval_secs: 60,
        }
    }
}

/// Where the file comes from: an explicit path must exist; the default `./config.toml` may be absent.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub required: bool,
}

impl Config {
    /// Loads defaults → file → environment and validates the result.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        if source.required && !source.path.exists() {
            return Err(ConfigError::invalid(
                "--config",
                format!("{} does not exist", source.path.display()),
            ));
        }
        // Toml::file (not file_exact) because the default path may legitimately be absent.
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&source.path))
            .merge(Env::prefixed("TRADING_SYNC__").split("__"))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        for (var, target) in [("DATABASE_URL", 0), ("REDIS_URL", 1)] {
            if let Ok(v) = std::env::var(var) {
                *config.url_mut(target) = v;
            }
        }
        for (var, target) in [("DATABASE_URL_FILE", 0), ("REDIS_URL_FILE", 1)] {
            if let Ok(path) = std::env::var(var) {
                *config.url_mut(target) = read_secret(Path::new(&path), var)?;
            }
        }
        if let Ok(path) = std::env::var("DATABASE_REPLICA_URL_FILE") {
            config.database.replica_url =
                Some(read_secret(Path::new(&path), "DATABASE_REPLICA_URL_FILE")?);
        }
        config.validate()?;
        Ok(config)
    }

    fn url_mut(&mut self, which: u8) -> &mut String {
        if which == 0 {
            &mut self.database.url
        } else {
            &mut self.redis.url
        }
    }

    /// Every check that can be made without a network: URLs, ranges, time zones, cron.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_pg_url("database.url", &self.database.url)?;
        if let Some(url) = &self.database.replica_url {
            validate_pg_url("database.replica_url", url)?;
        }
        if let Some(p) = &self.database.password_file {
            read_secret(p, "database.password_file")?;
        }
        if let Some(p) = &self.database.replica_password_file {
            read_secret(p, "database.replica_password_file")?;
        }
        if let Some(p) = &self.redis.password_file {
            read_secret(p, "redis.password_file")?;
        }
        let redis_url = url::Url::parse(&self.redis.url)
            .map_err(|e| ConfigError::invalid("redis.url", format!("not a URL: {e}")))?;
        if !matches!(
            redis_url.scheme(),
            "redis" | "rediss" | "unix" | "redis+unix"
        ) {
            return Err(ConfigError::invalid(
                "redis.url",
                format!(
                    "scheme `{}` is not redis:// or rediss://",
                    redis_url.scheme()
                ),
            ));
        }
        if self.redis.channel_prefix.is_empty()
            || self
                .redis
                .channel_prefix
                .contains(['*', '?', '[', ']', ' '])
        {
            return Err(ConfigError::invalid(
                "redis.channel_prefix",
                "must be non-empty and contain no glob characters or spaces",
            ));
        }
        range("database.pool_size", self.database.pool_size, 1, 512)?;
        range(
            "database.connect_timeout_ms",
            self.database.connect_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "database.slow_query_ms",
            self.database.slow_query_ms,
            1,
            3_600_000,
        )?;
        range(
            "database.statement_timeout_ms",
            self.database.statement_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "database.lock_timeout_ms",
            self.database.lock_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "redis.reconnect_max_backoff_ms",
            self.redis.reconnect_max_backoff_ms,
            10,
            600_000,
        )?;
        range(
            "sync.batch_max_events",
            self.sync.batch_max_events,
            1,
            100_000,
        )?;
        range(
            "sync.batch_max_wait_ms",
            self.sync.batch_max_wait_ms,
            1,
            60_000,
        )?;
        range(
            "sync.max_message_bytes",
            self.sync.max_message_bytes,
            256,
            16 << 20,
        )?;
        range(
            "sync.drain_deadline_ms",
            self.sync.drain_deadline_ms,
            0,
            3_600_000,
        )?;
        if let Some(limit) = memory_limit() {
            for (key, bytes) in [
                ("sync.queue_max_bytes", self.sync.queue_max_bytes),
                ("journal.buffer_max_bytes", self.journal.buffer_max_bytes),
            ] {
                if bytes as u64 > limit {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "{bytes} bytes is more than this machine's (or cgroup's MemoryMax) \
                             {limit}: no bound at all"
                        ),
                    ));
                }
            }
        }
        // Reconcile and verify compute a horizon from it: past ~2.4 M days PostgreSQL's
        // timestamps overflow and every run would fail.
        range(
            "maintenance.ledger_retention_days",
            self.maintenance.ledger_retention_days,
            0,
            36_500,
        )?;
        range(
            "maintenance.partitions_ahead_years",
            self.maintenance.partitions_ahead_years,
            0,
            50,
        )?;
        range(
            "sync.dead_letter_max_bytes",
            self.sync.dead_letter_max_bytes,
            self.sync.max_message_bytes,
            64 << 20,
        )?;
        if self.sync.queue_max_bytes < self.sync.max_message_bytes {
            return Err(ConfigError::invalid(
                "sync.queue_max_bytes",
                format!(
                    "{} is smaller than sync.max_message_bytes ({}): one message could never fit",
                    self.sync.queue_max_bytes, self.sync.max_message_bytes
                ),
            ));
        }
        self.exchange_tz()?;
        self.indicators_tz()?;
        self.indicator_schedule()?;
        range(
            "indicators.debounce_ms",
            self.indicators.debounce_ms,
            0,
            3_600_000,
        )?;
        range(
            "indicators.replica_max_wait_ms",
            self.indicators.replica_max_wait_ms,
            0,
            600_000,
        )?;
        self.http_listen()?;
        range(
            "http.readyz_stall_secs",
            self.http.readyz_stall_secs,
            1,
            86_400,
        )?;
        self.maintenance_schedule()?;
        if self.streams.group.is_empty() || self.streams.field.is_empty() {
            return Err(ConfigError::invalid(
                "streams.group",
                "streams.group and streams.field must be non-empty",
            ));
        }
        if self.streams.consumer.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "streams.consumer",
                "must be non-empty",
            ));
        }
        if !(self.streams.start_id == "$"
            || self
                .streams
                .start_id
                .split('-')
                .all(|p| p.parse::<u64>().is_ok()))
        {
            return Err(ConfigError::invalid(
                "streams.start_id",
                format!(
                    "`{}` is neither \"$\" nor a stream id",
                    self.streams.start_id
                ),
            ));
        }
        range("streams.block_ms", self.streams.block_ms, 1, 60_000)?;
        range("streams.read_count", self.streams.read_count, 1, 100_000)?;
        range("streams.read_ahead", self.streams.read_ahead, 1, 10_000_000)?;
        range(
            "streams.claim_idle_ms",
            self.streams.claim_idle_ms,
            100,
            86_400_000,
        )?;
        range(
            "streams.max_deliveries",
            self.streams.max_deliveries,
            1,
            1_000,
        )?;
        self.validate_journal()?;
        range(
            "reconcile.interval_secs",
            self.reconcile.interval_secs,
            1,
            86_400,
        )?;
        range("reconcile.grace_ms", self.reconcile.grace_ms, 0, 3_600_000)?;
        parse_tz("maintenance.timezone", &self.maintenance.timezone)?;
        range(
            "log.summary_interval_secs",
            self.log.summary_interval_secs,
            0,
            86_400,
        )?;
        if let Some(filter) = &self.log.filter {
            tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| ConfigError::invalid("log.filter", e.to_string()))?;
        }
        Ok(())
    }

    fn validate_journal(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.journal.key {
            if key.is_empty() || key.contains([' ', '\n', '\r']) {
                return Err(ConfigError::invalid(
                    "journal.key",
                    "must be non-empty and contain no spaces or line breaks",
                ));
            }
        }
        let key = self.journal_key();
        // The stream transport reads the channel keys as streams: a journal there would be read
        // twice, once as events of one channel.
        if let Some((kind, _)) = crate::core::ChannelKind::names(&self.redis.channel_prefix)
            .iter()
            .find(|(_, name)| **name == key)
        {
            return Err(ConfigError::invalid(
                "journal.key",
                format!("`{key}` is the {kind} channel's key; the journal needs a key of its own"),
            ));
        }
        if self.transport.journal && !self.transport.any_pubsub() {
            return Err(ConfigError::invalid(
                "transport.journal",
                "is true but no channel uses pub/sub (transport.trades, .positions, \
                 .market_data are all \"stream\"): there is nothing to journal",
            ));
        }
        range(
            "journal.append_batch",
            self.journal.append_batch,
            1,
            100_000,
        )?;
        range(
            "journal.trim_interval_ms",
            self.journal.trim_interval_ms,
            10,
            3_600_000,
        )?;
        if self.journal.buffer_max_bytes < self.sync.max_message_bytes {
            return Err(ConfigError::invalid(
                "journal.buffer_max_bytes",
                format!(
                    "{} is smaller than sync.max_message_bytes ({}): one message could never fit",
                    self.journal.buffer_max_bytes, self.sync.max_message_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The journal's stream key: `journal.key`, or `<redis.channel_prefix>:journal`.
    pub fn journal_key(&self) -> String {
        self.journal
            .key
            .clone()
            .unwrap_or_else(|| format!("{}:journal", self.redis.channel_prefix))
    }

    pub fn exchange_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        parse_tz("sync.exchange_timezone", &self.sync.exchange_timezone)
    }

    pub fn indicators_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        parse_tz("indicators.timezone", &self.indicators.timezone)
    }

    pub fn indicator_schedule(&self) -> Result<croner::Cron, ConfigError> {
        parse_schedule(
            "indicators.schedule",
            &self.indicators.schedule,
            self.indicators_tz()?,
        )
    }

    pub fn maintenance_schedule(&self) -> Result<croner::Cron, ConfigError> {
        parse_schedule(
            "maintenance.schedule",
            &self.maintenance.schedule,
            self.maintenance_tz()?,
        )
    }

    pub fn maintenance_tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        parse_tz("maintenance.timezone", &self.maintenance.timezone)
    }

    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|e| {
            ConfigError::invalid(
                "http.listen",
                format!("`{}` is not host:port: {e}", self.http.listen),
            )
        })
    }

    /// The PostgreSQL connection settings with the password file applied.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        self.database.pg_config()
    }

    /// The effective settings as TOML with every secret replaced by `********`.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = mask_url(&shown.database.url);
        shown.database.replica_url = shown.database.replica_url.as_deref().map(mask_url);
        shown.redis.url = mask_url(&shown.redis.url);
        // The effective journal key, derived or not: check-config shows what will be used.
        shown.journal.key = Some(self.journal_key());
        toml_string(&shown)
    }
}

impl DatabaseConfig {
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        self.connection_config(
            "database.url",
            &self.url,
            self.password_file
                .as_deref()
                .map(|p| (p, "database.password_file")),
        )
    }

    /// The replica's connection settings, if `replica_url` is set.
    pub fn replica_pg_config(&self) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        let Some(url) = &self.replica_url else {
            return Ok(None);
        };
        let password = match (&self.replica_password_file, &self.password_file) {
            (Some(p), _) => Some((p.as_path(), "database.replica_password_file")),
            (None, Some(p)) => Some((p.as_path(), "database.password_file")),
            (None, None) => None,
        };
        self.connection_config("database.replica_url", url, password)
            .map(Some)
    }

    fn connection_config(
        &self,
        key: &str,
        url: &str,
        password_file: Option<(&Path, &str)>,
    ) -> Result<tokio_postgres::Config, ConfigError> {
        let mut pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
        if let Some((path, key)) = password_file {
            pg.password(read_secret(path, key)?);
        }
        pg.connect_timeout(std::time::Duration::from_millis(self.connect_timeout_ms));
        if pg.get_application_name().is_none() {
            pg.application_name("trading-sync");
        }
        Ok(pg)
    }
}

impl RedisConfig {
    /// The Redis URL with the password file applied.
    pub fn effective_url(&self) -> Result<String, ConfigError> {
        let Some(p) = &self.password_file else {
            return Ok(self.url.clone());
        };
        let password = read_secret(p, "redis.password_file")?;
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?;
        url.set_password(Some(&password))
            .map_err(|()| ConfigError::invalid("redis.url", "cannot carry a password"))?;
        Ok(url.to_string())
    }
}

// Debug must never print a secret: these configs end up in logs through `?config`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_masked_toml())
    }
}

fn range<T: PartialOrd + fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

/// A libpq-style URL with a database name; an error names `key`.
fn validate_pg_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let pg = tokio_postgres::Config::from_str(url)
        .map_err(|e| ConfigError::invalid(key, format!("not a PostgreSQL URL: {e}")))?;
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(ConfigError::invalid(
            key,
            "must start with postgres:// or postgresql://",
        ));
    }
    if pg.get_dbname().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(
            key,
            "names no database (add /trading_system)",
        ));
    }
    Ok(())
}

/// A five-field cron expression that fires: croner also takes a sixth (seconds) field, which
/// would make `0 17 * * 1-5` mean something else if a field were added by mistake; and a date
/// that never comes (`0 17 31 2 *`) would make the scheduler fail at every start, restarting.
fn parse_schedule(
    key: &str,
    expression: &str,
    tz: chrono_tz::Tz,
) -> Result<croner::Cron, ConfigError> {
    let fields = expression.split_whitespace().count();
    // "@daily" and the like are croner's nicknames for five-field expressions.
    if fields != 5 && !(fields == 1 && expression.starts_with('@')) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "`{expression}` has {fields} fields; five are expected (minute hour day month \
                 weekday)"
            ),
        ));
    }
    let cron = croner::Cron::from_str(expression).map_err(|e| {
        ConfigError::invalid(key, format!("`{expression}` is not a cron expression: {e}"))
    })?;
    let now = chrono::Utc::now().with_timezone(&tz);
    match cron.find_next_occurrence(&now, false) {
        // Within a leap cycle: `29 2` fires at least every eight years.
        Ok(next) if next - now <= chrono::Duration::days(8 * 366) => Ok(cron),
        _ => Err(ConfigError::invalid(
            key,
            format!("`{expression}` never fires (no date matches it)"),
        )),
    }
}

/// The memory a queue can have at most: the machine's, or the cgroup's (systemd's MemoryMax)
/// when smaller. None when neither can be read (not Linux).
fn memory_limit() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
    let cgroup = cgroup_memory_limit();
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// The memory limit of this process's cgroup or of any cgroup above it (systemd puts a unit's
/// MemoryMax on the unit's own cgroup): v2's `memory.max`, v1's `memory.limit_in_bytes`; "max"
/// and v1's near-i64::MAX value mean none.
fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (root, file, path) = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            Some(("/sys/fs/cgroup".to_owned(), "memory.max", path.to_owned()))
        } else if controllers.split(',').any(|c| c == "memory") {
            Some((
                "/sys/fs/cgroup/memory".to_owned(),
                "memory.limit_in_bytes",
                path.to_owned(),
            ))
        } else {
            None
        }
    })?;
    let mut dir = std::path::PathBuf::from(format!("{root}{path}"));
    let mut limit: Option<u64> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            if let Ok(value) = text.trim().parse::<u64>() {
                if value < (1 << 62) {
                    limit = Some(limit.map_or(value, |l| l.min(value)));
                }
            }
        }
        if dir.as_os_str().len() <= root.len() || !dir.pop() {
            return limit;
        }
    }
}

fn parse_tz(key: &str, name: &str) -> Result<chrono_tz::Tz, ConfigError> {
    name.parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{name}` is not an IANA time zone")))
}

/// Reads a secret file; a relative path is looked up in systemd's credentials directory.
fn read_secret(path: &Path, key: &str) -> Result<String, ConfigError> {
    let resolved = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    };
    let text = std::fs::read_to_string(&resolved).map_err(|e| {
        ConfigError::invalid(key, format!("cannot read {}: {e}", resolved.display()))
    })?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} is empty", resolved.display()),
        ));
    }
    Ok(secret)
}

/// Replaces the password of a URL, if it has one, by `********`: its userinfo password and any
/// `password` / `sslpassword` query parameter. Works on text the URL parser refuses too (libpq's
/// multi-host `postgres://u:p@h1:5432,h2:5432/db`).
pub fn mask_url(raw: &str) -> String {
    mask_secrets(raw)
}

const MASK: &str = "********";

/// Hides every secret a piece of text may carry — a configuration value, an error message that
/// quotes a TOML line, a URL: the password in `scheme://user:password@host` and the value of any
/// `password=` or `sslpassword=` parameter (URL query or libpq key=value).
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Userinfo passwords: after each "://", up to the first '@' before any white space or
    // quote — tokio-postgres takes a password up to the '@' even when it holds '/', '?' or '#'
    // (base64 passwords do). When the '@' is in fact in the path or query, more is masked than
    // needed, never less.
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find([' ', '\t', '\n', '"', '\''])
            .unwrap_or(tail.len());
        let word = &tail[..end];
        match word.find('@') {
            Some(at) if word[..at].contains(':') => {
                let user_end = word.find(':').expect("checked above");
                out.push_str(&word[..=user_end]);
                out.push_str(MASK);
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_password_parameters(&out)
}

/// `password=…` and `sslpassword=…` (any letter case) → `password=********`.
fn mask_password_parameters(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("password=") {
        let start = from + found + "password=".len();
        // A quoted value (libpq's key='value') runs to its closing quote.
        let end = match text[start..].chars().next() {
            Some(quote @ ('\'' | '"')) => text[start + 1..]
                .find(quote)
                .map_or(text.len(), |e| start + 1 + e + 1),
            _ => text[start..]
                .find(['&', ' ', '\t', '\n', '"', '\'', '#'])
                .map_or(text.len(), |e| start + e),
        };
        out.push_str(&text[copied..start]);
        if end > start {
            out.push_str(MASK);
        }
        copied = end;
        from = end.max(start);
    }
    out.push_str(&text[copied..]);
    out
}

fn toml_string(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_place_a_password_can_stand_is_masked() {
        for (raw, shown) in [
            (
                "postgres://app:s3cret@db:5432/trading_system",
                "postgres://app:********@db:5432/trading_system",
            ),
            (
                "postgres://app@db/trading_system?password=s3cret&sslmode=require",
                "postgres://app@db/trading_system?password=********&sslmode=require",
            ),
            (
                "postgres://app@db/t?sslpassword=k3y&PASSWORD=s3cret",
                "postgres://app@db/t?sslpassword=********&PASSWORD=********",
            ),
            (
                "postgres://app:s3cret@h1:5432,h2:5432/t?target_session_attrs=read-write",
                "postgres://app:********@h1:5432,h2:5432/t?target_session_attrs=read-write",
            ),
            (
                "rediss://:s3cret@cache:6380/0",
                "rediss://:********@cache:6380/0",
            ),
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            (
                "host=db user=app password=s3cret dbname=t",
                "host=db user=app password=******** dbname=t",
            ),
            (
                "url = \"postgres://app:s3cret@db/t\nmore",
                "url = \"postgres://app:********@db/t\nmore",
            ),
            (
                "postgres://app:pa/ss?w#rd@db/t",
                "postgres://app:********@db/t",
            ),
            (
                "host=db password='s3 cret' dbname=t",
                "host=db password=******** dbname=t",
            ),
        ] {
            assert_eq!(mask_secrets(raw), shown, "{raw}");
        }
    }

    proptest! {
        /// Whatever surrounds it, a password in a URL's userinfo or a password parameter never
        /// survives masking.
        #[test]
        fn no_password_survives(
            before in "[ -~]{0,20}",
            user in "[a-z]{0,8}",
            secret in "[A-Za-z0-9!$%()*+,;~]{4,20}",
            after in "[ -~]{0,20}",
            as_parameter in any::<bool>(),
        ) {
            let text = if as_parameter {
                format!("{before} postgres://{user}@db/t?password={secret}&x=1 {after}")
            } else {
                format!("{before} postgres://{user}:{secret}@db/t {after}")
            };
            let masked = mask_secrets(&text);
            prop_assert!(!masked.contains(&format!("{secret}@")), "{}", masked);
            prop_assert!(!masked.contains(&format!("={secret}")), "{}", masked);
        }
    }
}
