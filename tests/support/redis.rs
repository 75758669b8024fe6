//! A throwaway `redis-server` (Debian's package; `scripts/test` installs it) on a free
//! loopback port, for the cluster tests: started, killed and restarted on the same port by the
//! test itself. It persists to an append-only file fsynced on every write, as a production
//! Redis that routers rely on should, so a restart keeps leases, fences and checkpoints.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::pipe::TempDir;
use super::within;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// Serves TLS only (`rediss://`), with the test CA's `localhost` certificate.
    tls: bool,
}

/// The test CA and the certificate it signed for `localhost` and 127.0.0.1.
pub const TLS_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tls-ca.pem");
const TLS_CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tls-localhost.pem");
const TLS_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tls-localhost.key");

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_with(false).await
    }

    /// A server that speaks only TLS (no plain port), with the test CA's certificate.
    #[allow(dead_code)]
    pub async fn start_tls() -> Redis {
        Redis::start_with(true).await
    }

    async fn start_with(tls: bool) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
            tls,
        };
        redis.spawn().await;
        redis
    }

    /// Starts the server and waits until it says it accepts connections.
    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls {
            vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                TLS_CERT,
                "--tls-key-file",
                TLS_KEY,
                "--tls-ca-cert-file",
                TLS_CA,
                "--tls-auth-clients",
                "no",
            ]
        } else {
            vec!["--port", &port]
        };
        let mut child = Command::new("redis-server")
            .args(ports)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); run scripts/test, which installs it")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        within("redis-server to accept connections", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        })
        .await;
        // Keep reading its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        match self.tls {
            true => format!("rediss://localhost:{}", self.port),
            false => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// SIGKILL: no goodbye to its clients.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }

    /// Started again on the same port, with what its append-only file kept.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// A connection for the test's own reads.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        // A loaded machine (the whole suite at once) can take a while to answer.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let client = match self.tls {
            true => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(TLS_CA).unwrap()),
                },
            ),
            false => redis::Client::open(self.url()),
        };
        client
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }
}
