//! PostgreSQL over TLS against a private server the test starts: `initdb` in a temp dir,
//! `ssl = on` with a CA and server certificate made here with `openssl`, and a `hostssl`-only
//! pg_hba. `migrate` and the daemon work with `sslmode=verify-full`; the wrong CA, a host name
//! the certificate does not name, and `sslmode=disable` each stop with a message saying so.
//!
//! The server certificate names `localhost` only (no IP address), so connecting to
//! `127.0.0.1` is the name mismatch.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use loadgen::generate::MessageKind;
use tokio_util::sync::CancellationToken;
use trading_sync::config::{Config, DatabaseConfig, RedisConfig};
use trading_sync::db::Connector;

use common::process::{command, free_port, sh, PrivateRedis, RedisTlsFiles};
use common::servers::PgServers;
use common::{eventually, publish_counted, redis_url, unique_name};

/// A private PostgreSQL that accepts TLS connections only; stopped and removed on drop.
struct TlsServer {
    servers: PgServers,
    port: u16,
}

impl TlsServer {
    /// None, with the reason printed, when initdb, openssl or the postgres user is missing.
    fn start() -> Option<TlsServer> {
        let servers = PgServers::new("ts_tls", &["initdb", "pg_ctl"])?;
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("skipped: no openssl to make the certificates with");
            return None;
        }
        let server = TlsServer {
            servers,
            port: free_port(),
        };
        server.make_certificates();
        // The key must be the server's own, and private to it.
        server.servers.give_to_server();
        let data = server.servers.initdb("data");
        let conf = format!(
            "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n\
             ssl_ca_file = '{0}/ca.crt'\n",
            server.servers.dir.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        // TLS or nothing: without a `host` line, a plain connection finds no entry. The role
        // certuser must also show a client certificate issued to it by the CA.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 trust clientcert=verify-full\n\
             hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        server.servers.start("data", server.port, &[]);
        Some(server)
    }

    /// A CA, a server certificate it signed for `localhost`, and a second CA that signed
    /// nothing (the wrong one).
    fn make_certificates(&self) {
        let openssl = |args: &[&str]| {
            sh(Command::new("openssl")
                .args(args)
                .current_dir(&self.servers.dir));
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-subj",
                &format!("/CN=trading-sync test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        // A key and a certificate the CA signs, X.509 v3 (an extension file): rustls refuses v1
        // certificates.
        let issue = |name: &str, subject: &str, extensions: &str| {
            std::fs::write(self.servers.dir.join(format!("{name}.ext")), extensions).unwrap();
            let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
            let (ext, crt) = (format!("{name}.ext"), format!("{name}.crt"));
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ]);
        };
        issue(
            "server",
            "/CN=localhost",
            "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        );
        // A client certificate for the role certuser, signed by the same CA.
        issue(
            "client",
            "/CN=certuser",
            "basicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n",
        );
        sh(Command::new("chmod")
            .arg("600")
            .arg(self.servers.dir.join("server.key")));
        // The other files are read by the test's own processes and by the server.
        sh(Command::new("chmod").arg("755").arg(&self.servers.dir));
    }

    fn file(&self, name: &str) -> String {
        self.servers.file(name)
    }

    /// `postgres://postgres@HOST:PORT/trading?QUERY`.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/trading?{query}", self.port)
    }

    fn verify_full(&self) -> String {
        self.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", self.file("ca.crt")),
        )
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A Redis of the test's own on a TLS port only, requiring a client certificate, with the
/// PostgreSQL server's CA and its `localhost` certificate.
fn tls_redis(server: &TlsServer) -> PrivateRedis {
    let (cert, key, ca) = (
        server.servers.dir.join("server.crt"),
        server.servers.dir.join("server.key"),
        server.servers.dir.join("ca.crt"),
    );
    PrivateRedis::start_tls(
        free_port(),
        &RedisTlsFiles {
            cert: &cert,
            key: &key,
            ca: &ca,
        },
    )
}

/// The daemon's `[redis]` for `redis`, verifying it against the CA and showing the client
/// certificate.
fn tls_redis_config(server: &TlsServer, redis: &PrivateRedis) -> RedisConfig {
    RedisConfig {
        url: format!("rediss://localhost:{}/0", redis.port),
        tls_ca_file: Some(server.servers.dir.join("ca.crt")),
        tls_cert_file: Some(server.servers.dir.join("client.crt")),
        tls_key_file: Some(server.servers.dir.join("client.key")),
        channel_prefix: unique_name("ts_tls"),
        ..RedisConfig::default()
    }
}

/// `migrate` creates and migrates the database over verify-full; the daemon applies a thousand
/// trades with PostgreSQL and Redis both over TLS: the subscription, the journal's XADDs and the
/// stream reader and acker on Redis; the writer's connection, the pool and the startup check on
/// PostgreSQL, whose server confirms the sessions were encrypted.
#[tokio::test]
async fn the_daemon_applies_trades_over_tls_to_both() {
    let Some(server) = TlsServer::start() else {
        return;
    };
    let redis_server = tls_redis(&server);
    redis_server.wait_up().await;
    let url = server.verify_full();
    let (code, stdout, stderr) = command(&url, &["migrate"], &[]);
    assert_eq!(code, 0, "migrate over TLS: {stdout}{stderr}");

    let mut config = Config {
        database: DatabaseConfig {
            url: url.clone(),
            ..DatabaseConfig::default()
        },
        redis: tls_redis_config(&server, &redis_server),
        ..Config::default()
    };
    config.transport.journal = true;
    config.indicators.enabled = false;
    config.http.enabled = false;
    config.maintenance.enabled = false;
    config.log.summary_interval_secs = 0;
    let daemon = trading_sync::daemon::Daemon::build(&config)
        .await
        .unwrap_or_else(|e| panic!("the daemon did not start over TLS: {e:#}"));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));

    let (messages, _) = loadgen::generate::workload(12, 1_200, 0.0);
    let trades = messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::Trade { .. }))
        .count() as i64;
    assert!(trades >= 1_000, "the workload has {trades} trades");
    // The test publishes through the daemon's own endpoint: TLS, CA and client certificate.
    let mut redis = config
        .redis
        .endpoint()
        .unwrap()
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the test's own TLS connection to redis");
    let receivers = publish_counted(&mut redis, &config.redis.channel_prefix, &messages, 100)
        .await
        .expect("publish");
    assert!(
        receivers.iter().all(|&n| n == 1),
        "a message had no subscriber"
    );

    let client = Connector::primary(&config.database)
        .unwrap()
        .connect()
        .await
        .expect("a connection over verify-full");
    eventually(
        "every trade in the ledger",
        Duration::from_secs(30),
        || async {
            let n: i64 = client
                .query_one("SELECT count(*) FROM analytics.applied_trades", &[])
                .await
                .unwrap()
                .get(0);
            (n == trades).then_some(())
        },
    )
    .await;
    // Every message went through the journal stream on the TLS Redis and was acknowledged.
    let journal = format!("{}:journal", config.redis.channel_prefix);
    let journaled: i64 = redis::cmd("XLEN")
        .arg(&journal)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(journaled > 0, "nothing was journaled in {journal}");
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted);
    shutdown.cancel();
    handle.await.unwrap().expect("the daemon stopped cleanly");
}

/// A TLS Redis that is not trusted, one that wants a client certificate, and a plain Redis
/// reached with rediss://: `run` stops at startup with the reason; `check-config` accepts the
/// good settings.
#[tokio::test]
async fn redis_tls_failures_say_why() {
    let Some(server) = TlsServer::start() else {
        return;
    };
    let redis_server = tls_redis(&server);
    redis_server.wait_up().await;
    let database = server.verify_full();
    let (code, stdout, stderr) = command(&database, &["migrate"], &[]);
    assert_eq!(code, 0, "migrate over TLS: {stdout}{stderr}");
    let good = tls_redis_config(&server, &redis_server);
    let file = |p: &Option<PathBuf>| p.as_ref().unwrap().display().to_string();
    let (ca, cert, key) = (
        file(&good.tls_ca_file),
        file(&good.tls_cert_file),
        file(&good.tls_key_file),
    );
    let other_ca = server.file("other-ca.crt");
    let plain = redis_url().replacen("redis://", "rediss://", 1);
    let with_password = good.url.replacen("rediss://", "rediss://:s3cret-pw@", 1);
    let env = |url: &str, ca: &str, client: bool| {
        let mut env = vec![
            ("REDIS_URL", url.to_owned()),
            ("TRADING_SYNC__REDIS__TLS_CA_FILE", ca.to_owned()),
            ("TRADING_SYNC__HTTP__ENABLED", "false".to_owned()),
            ("TRADING_SYNC__INDICATORS__ENABLED", "false".to_owned()),
        ];
        if client {
            env.push(("TRADING_SYNC__REDIS__TLS_CERT_FILE", cert.clone()));
            env.push(("TRADING_SYNC__REDIS__TLS_KEY_FILE", key.clone()));
        }
        env
    };
    let (code, stdout, stderr) = command(
        &database,
        &["check-config"],
        &borrow(&env(&good.url, &ca, true)),
    );
    assert_eq!(
        code, 0,
        "check-config with the good files: {stdout}{stderr}"
    );
    for (what, env, want) in [
        // The password in the URL is never printed.
        (
            "wrong CA",
            env(&with_password, &other_ca, true),
            "unknown CA",
        ),
        (
            "no client certificate",
            env(&good.url, &ca, false),
            "the server may require a client certificate (redis.tls_cert_file)",
        ),
        (
            "a plain server",
            env(&plain, &ca, false),
            "not its TLS port",
        ),
    ] {
        let (code, stdout, stderr) = command(&database, &["run"], &borrow(&env));
        assert_ne!(code, 0, "{what}: run started: {stdout}{stderr}");
        assert!(
            stderr.contains(want)
                && stderr.contains("cannot connect to Redis at rediss://")
                && !stderr.contains("s3cret-pw"),
            "{what}: run said: {stderr}"
        );
    }
}

fn borrow<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Each refusal stops the command with the reason in words.
#[tokio::test]
async fn tls_failures_say_why() {
    let Some(server) = TlsServer::start() else {
        return;
    };
    let wrong_ca = server.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.file("other-ca.crt")
        ),
    );
    let mismatch = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", server.file("ca.crt")),
    );
    let plain = server.url("localhost", "sslmode=disable");
    for (what, url, command_name, want) in [
        ("wrong CA", wrong_ca, "run", "unknown CA"),
        (
            "wrong CA",
            server.url(
                "localhost",
                &format!(
                    "sslmode=verify-ca&sslrootcert={}",
                    server.file("other-ca.crt")
                ),
            ),
            "migrate",
            "unknown CA",
        ),
        (
            "name mismatch",
            mismatch.clone(),
            "migrate",
            "does not match the host name",
        ),
        (
            "sslmode=disable",
            plain,
            "run",
            "accepts TLS connections only",
        ),
    ] {
        let (code, stdout, stderr) = command(&url, &[command_name], &[]);
        assert_ne!(
            code, 0,
            "{what}: {command_name} succeeded: {stdout}{stderr}"
        );
        // The server is named, as host:port.
        let named = stderr.contains(&format!(":{} ", server.port))
            || stderr.contains(&format!(":{}:", server.port));
        assert!(
            stderr.contains(want) && named,
            "{what}: {command_name} said: {stderr}"
        );
    }
    // verify-ca does not check the name: the same mismatch connects.
    let verify_ca = mismatch.replace("verify-full", "verify-ca");
    let (code, stdout, stderr) = command(&verify_ca, &["migrate"], &[]);
    assert_eq!(code, 0, "verify-ca ignores the host name: {stdout}{stderr}");
    // require without a root certificate: encrypted, not verified (libpq's meaning).
    let require = server.url("127.0.0.1", "sslmode=require");
    let (code, stdout, stderr) = command(&require, &["migrate"], &[]);
    assert_eq!(code, 0, "require does not verify: {stdout}{stderr}");
}

/// A server that asks certuser for a client certificate: refused without one, accepted with
/// `sslcert`/`sslkey` in the URL or with `database.tls_cert_file`/`tls_key_file`.
#[tokio::test]
async fn client_certificates_from_the_url_or_the_keys() {
    let Some(server) = TlsServer::start() else {
        return;
    };
    let (code, stdout, stderr) = command(&server.verify_full(), &["migrate"], &[]);
    assert_eq!(code, 0, "migrate over TLS: {stdout}{stderr}");
    let admin = Connector::primary(&DatabaseConfig {
        url: server.verify_full(),
        ..DatabaseConfig::default()
    })
    .unwrap()
    .connect()
    .await
    .unwrap();
    admin
        .batch_execute("CREATE ROLE certuser LOGIN SUPERUSER")
        .await
        .unwrap();
    let as_certuser = server.verify_full().replace("postgres@", "certuser@");

    let without = DatabaseConfig {
        url: as_certuser.clone(),
        ..DatabaseConfig::default()
    };
    let Err(refused) = Connector::primary(&without).unwrap().connect().await else {
        panic!("certuser connected without a certificate");
    };
    assert!(refused.to_string().contains("certificate"), "{refused}");

    let in_url = DatabaseConfig {
        url: format!(
            "{as_certuser}&sslcert={}&sslkey={}",
            server.file("client.crt"),
            server.file("client.key")
        ),
        ..DatabaseConfig::default()
    };
    let in_keys = DatabaseConfig {
        url: as_certuser,
        tls_cert_file: Some(server.file("client.crt").into()),
        tls_key_file: Some(server.file("client.key").into()),
        ..DatabaseConfig::default()
    };
    for config in [in_url, in_keys] {
        let client = Connector::primary(&config)
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("certuser with its certificate: {e}"));
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, "certuser");
    }
}

/// `sslmode=require` against a server that answers "no TLS" to the SSLRequest (a stand-in
/// that speaks just that much of the protocol): refused, and said so; `prefer` would go on in
/// plain text, so it is not tried here.
#[tokio::test]
async fn require_against_a_server_without_tls_says_so() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await.unwrap();
        socket.write_all(b"N").await.unwrap();
    });
    let config = DatabaseConfig {
        url: format!("postgres://postgres@127.0.0.1:{port}/trading?sslmode=require"),
        ..DatabaseConfig::default()
    };
    let Err(refused) = Connector::primary(&config).unwrap().connect().await else {
        panic!("connected without TLS under sslmode=require");
    };
    let text = refused.to_string();
    assert!(
        text.contains("does not offer TLS") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
}
