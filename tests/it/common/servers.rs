//! Private PostgreSQL servers for the tests that must configure, stop, replicate or promote a
//! server (TLS, a streaming standby, failover): the shared test cluster holds every other test's
//! database, so these get throwaway clusters of their own — `initdb` in a temp dir (a few MB),
//! on free ports, stopped and removed on drop.
//!
//! `initdb` and `pg_ctl` refuse to run as root: as root, every server tool runs as the postgres
//! user, which owns the directory (PITFALLS.md, "Private servers for tests").

use std::path::PathBuf;
use std::process::Command;

use super::process::{is_root, sh};
use super::unique_name;

/// A temp directory of private clusters, one data directory per name, with their sockets and
/// logs beside them. Every server still running in it is stopped (`-m immediate`) and the
/// directory removed when this value is dropped.
pub struct PgServers {
    pub dir: PathBuf,
    bin: PathBuf,
}

impl PgServers {
    /// None, with the reason printed, when this machine lacks one of `tools` (initdb, pg_ctl,
    /// pg_basebackup …) or, when the tests run as root, a `postgres` user to run them as.
    pub fn new(prefix: &str, tools: &[&str]) -> Option<PgServers> {
        let Some(bin) = pg_bindir(tools) else {
            eprintln!(
                "skipped: no {} (set PG_BINDIR or put pg_config on PATH)",
                tools.join("/")
            );
            return None;
        };
        let has_postgres_user = Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| o.status.success());
        if is_root() && !has_postgres_user {
            eprintln!("skipped: running as root, and no `postgres` user to run the servers as");
            return None;
        }
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let servers = PgServers { dir, bin };
        servers.give_to_server();
        Some(servers)
    }

    /// Hands the directory and everything in it to the user the servers run as (after the test
    /// wrote files there as root: certificates, keys).
    pub fn give_to_server(&self) {
        if is_root() {
            sh(Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(&self.dir));
        }
    }

    /// `tool` of the server binaries, run as the postgres user when the tests run as root.
    pub fn tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The data directory of cluster `name`.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A new cluster `name`: trust authentication (local sockets and 127.0.0.1, replication
    /// included), superuser `postgres`.
    pub fn initdb(&self, name: &str) -> PathBuf {
        let data = self.data(name);
        sh(self
            .tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        data
    }

    /// Copies the running cluster on `from_port` into a new cluster `name`, set up as its
    /// streaming standby (`-R`).
    pub fn base_backup(&self, from_port: u16, name: &str) -> PathBuf {
        let data = self.data(name);
        sh(self
            .tool("pg_basebackup")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream"])
            .args(["-c", "fast", "--no-sync", "-p"])
            .arg(from_port.to_string())
            .arg("-D")
            .arg(&data));
        data
    }

    /// Starts cluster `name` on 127.0.0.1:`port` and waits until it accepts connections.
    /// `settings` are extra `name=value` server settings for this start only.
    pub fn start(&self, name: &str, port: u16, settings: &[&str]) {
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=30 \
             -c shared_buffers=16MB",
            self.dir.display()
        );
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        sh(self
            .tool("pg_ctl")
            .args(["-w", "-o", &options, "-l"])
            .arg(self.dir.join(format!("{name}.log")))
            .arg("-D")
            .arg(self.data(name))
            .arg("start"));
    }

    /// Stops cluster `name` the way a crash would: no checkpoint, no goodbye to clients.
    pub fn stop_immediate(&self, name: &str) {
        sh(self
            .tool("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.data(name))
            .arg("stop"));
    }

    /// Promotes standby `name` and waits until it accepts writes.
    pub fn promote(&self, name: &str) {
        sh(self
            .tool("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.data(name))
            .arg("promote"));
    }

    /// The server log of cluster `name`, for a failing test's message.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for PgServers {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let data = entry.path();
            if data.join("postmaster.pid").exists() {
                let _ = self
                    .tool("pg_ctl")
                    .args(["-m", "immediate", "-D"])
                    .arg(&data)
                    .arg("stop")
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first directory holding every one of `tools`: `$PG_BINDIR`, `pg_config --bindir`, or
/// Debian's `/usr/lib/postgresql/*/bin`, newest first.
fn pg_bindir(tools: &[&str]) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PG_BINDIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.extend(debian.into_iter().rev());
    candidates
        .into_iter()
        .find(|dir| tools.iter().all(|t| dir.join(t).exists()))
}
