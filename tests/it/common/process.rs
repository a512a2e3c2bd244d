//! Child-process helpers: the real binary as a daemon, a private Redis server, a bare HTTP GET.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, unique_name, TestDb};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon as a child process with its own database, prefix and port; stderr (JSON logs)
/// goes to a file so the test can read it after exit.
pub struct Daemon {
    pub child: Child,
    pub log: std::path::PathBuf,
    /// The HTTP port the daemon bound (`127.0.0.1:0`), read from its log line on first use.
    port: std::sync::OnceLock<u16>,
    pub prefix: String,
}

impl Daemon {
    pub fn start(db: &TestDb, redis_url: &str, extra_env: &[(&str, String)]) -> Daemon {
        Self::start_with_prefix(db, redis_url, &unique_name("ts_test"), extra_env)
    }

    /// As `start`, with a given channel prefix (instances sharing streams).
    pub fn start_with_prefix(
        db: &TestDb,
        redis_url: &str,
        prefix: &str,
        extra_env: &[(&str, String)],
    ) -> Daemon {
        Self::start_on_url(&db.url, redis_url, prefix, extra_env)
    }

    /// As `start_with_prefix`, against any `DATABASE_URL` (a private server, several hosts).
    pub fn start_on_url(
        database_url: &str,
        redis_url: &str,
        prefix: &str,
        extra_env: &[(&str, String)],
    ) -> Daemon {
        let prefix = prefix.to_owned();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name(&prefix)));
        // Through `sh … exec` so that WATCHDOG_PID can name the daemon's own pid, as systemd
        // sets it (the watchdog is ignored otherwise).
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"export WATCHDOG_PID=$$; exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_trading-sync"),
            "--log-format",
            "json",
            "run",
        ])
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("TRADING_SYNC__REDIS__CHANNEL_PREFIX", &prefix)
        .env("TRADING_SYNC__REDIS__RECONNECT_MAX_BACKOFF_MS", "200")
        // Port 0: the daemon binds once and logs the port it got, so no two tests race for one.
        .env("TRADING_SYNC__HTTP__LISTEN", "127.0.0.1:0")
        .env("TRADING_SYNC__INDICATORS__ENABLED", "false")
        .env("TRADING_SYNC__MAINTENANCE__ENABLED", "false")
        .env("RUST_LOG", "info")
        .env_remove("TRADING_SYNC_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
            port: Default::default(),
            prefix,
        }
    }

    /// SIGKILL: the crash case, no drain, no acknowledgements.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; panics past `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port().await, path).await
    }

    /// The HTTP port, from the daemon's "serving /metrics" line (waits for it, up to 30 s).
    pub async fn port(&self) -> u16 {
        if let Some(port) = self.port.get() {
            return *port;
        }
        let port = eventually(
            "the daemon to bind its HTTP port",
            Duration::from_secs(30),
            || async {
                self.logs().iter().find_map(|line| {
                    let fields = line.get("fields").unwrap_or(line);
                    fields
                        .get("message")?
                        .as_str()?
                        .starts_with("serving /metrics")
                        .then_some(())?;
                    let listen: std::net::SocketAddr =
                        fields.get("listen")?.as_str()?.parse().ok()?;
                    Some(listen.port())
                })
            },
        )
        .await;
        *self.port.get_or_init(|| port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A bare HTTP/1.0 GET: enough for our three endpoints, no client crate needed.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A Redis server of this test's own, so stopping it disturbs no other test.
pub struct PrivateRedis {
    pub child: Child,
    pub port: u16,
    /// Listening only on a TLS port: up once it accepts TCP (a plain PING would be refused).
    tls: bool,
}

/// A TLS Redis's files: its certificate and key, and the CA its clients' certificates must be
/// signed by.
pub struct RedisTlsFiles<'a> {
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
    pub ca: &'a std::path::Path,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        Self::start_with(port, &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> PrivateRedis {
        let port_text = port.to_string();
        let args = [&["--port", port_text.as_str()], extra].concat();
        Self::spawn(port, &args, false)
    }

    /// Listening on `port` with TLS only (`--port 0`), every client required to show a
    /// certificate signed by `files.ca` (`--tls-auth-clients yes`).
    pub fn start_tls(port: u16, files: &RedisTlsFiles<'_>) -> PrivateRedis {
        let path = |p: &std::path::Path| p.display().to_string();
        let (port_text, cert, key, ca) = (
            port.to_string(),
            path(files.cert),
            path(files.key),
            path(files.ca),
        );
        let args = [
            "--port",
            "0",
            "--tls-port",
            port_text.as_str(),
            "--tls-cert-file",
            cert.as_str(),
            "--tls-key-file",
            key.as_str(),
            "--tls-ca-cert-file",
            ca.as_str(),
            "--tls-auth-clients",
            "yes",
        ];
        Self::spawn(port, &args, true)
    }

    fn spawn(port: u16, args: &[&str], tls: bool) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        PrivateRedis { child, port, tls }
    }

    pub async fn wait_up(&self) {
        let url = format!("redis://127.0.0.1:{}/0", self.port);
        let tls = self.tls;
        eventually("private redis to answer", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                if tls {
                    let address = url.trim_start_matches("redis://").trim_end_matches("/0");
                    return tokio::net::TcpStream::connect(address.to_owned())
                        .await
                        .ok()
                        .map(|_| String::new());
                }
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a one-shot command of the binary (`verify`, `reconcile`, …) against `database_url`,
/// with the developer's own TRADING_SYNC* and *_URL settings removed and `env` added: its exit
/// code, stdout and stderr.
pub fn command(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trading-sync"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TRADING_SYNC") || k.ends_with("_URL") || k.ends_with("_URL_FILE") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the tests run as root: a private PostgreSQL must then run as the postgres user.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a setup command (initdb, openssl, pg_ctl …), panicking with its output if it fails.
pub fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
