//! Redis servers for tests (feature `test-support`): `redis-server` processes on free
//! loopback ports, in temporary folders, stopped by pid when dropped — never a Redis that may
//! already run on 6379. A cluster is three masters joined by `redis-cli --cluster create`.
//!
//! [`Backend`] runs one test body against every online store: sled, a single Redis and a
//! three-master Redis Cluster, each test on fresh keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quiver_core::config::OnlineStoreConfig;
use quiver_core::store::OnlineStore;

use crate::redis::Layout;

/// A `redis-server` process of a test, killed (by pid) when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
}

/// Ports `p` with `p` and `p + 10000` (a cluster node's bus) free on 127.0.0.1.
fn free_port() -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of loopback ports");
}

/// `redis-server`, or a clear failure saying how to get it.
fn redis_server() -> &'static str {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "redis-server is not installed: run .ci/install-redis (Debian's redis-server package)"
    );
    "redis-server"
}

impl RedisServer {
    /// A server with the append-only file on (`appendfsync always`): what was acknowledged
    /// survives a restart.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with more `redis-server` options (later ones override the defaults).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(redis_server());
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ])
        .args(&self.args)
        .current_dir(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING; see {}",
                self.port,
                self.dir.path().join("redis.log").display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's folder (its append-only file, its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (SIGKILL) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again on the same port and folder: it reloads its append-only file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server answers PING on the port (a bounded wait); one that wants a password
/// answers NOAUTH, which counts.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
}

/// A Redis Cluster of three masters (no replicas) on loopback.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three `--cluster-enabled yes` servers and join them; returns once every node
    /// reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port().to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    /// How many keys each node holds (to check keys spread over the masters).
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let out = Command::new("redis-cli")
                    .args(["-p", &n.port().to_string(), "dbsize"])
                    .output()
                    .expect("redis-cli dbsize");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// A fresh key prefix per store a test opens, so tests sharing a server never meet.
fn fresh_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One online store backend for a test body.
pub enum Backend {
    /// sled in a temporary folder.
    Sled(tempfile::TempDir),
    /// A single Redis server.
    Redis(RedisServer),
    /// A three-master Redis Cluster.
    Cluster(RedisCluster),
}

impl Backend {
    /// sled, a single Redis and a Redis Cluster, in that order.
    pub fn all() -> Vec<Backend> {
        vec![
            Backend::Sled(tempfile::tempdir().unwrap()),
            Backend::Redis(RedisServer::start()),
            Backend::Cluster(RedisCluster::start()),
        ]
    }

    /// `sled`, `redis` or `redis-cluster`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            Backend::Redis(_) => "redis",
            Backend::Cluster(_) => "redis-cluster",
        }
    }

    /// The configuration of a new, empty store on this backend (a new sled folder, or a
    /// fresh key prefix on the servers).
    pub fn fresh(&self) -> OnlineStoreConfig {
        match self {
            Backend::Sled(d) => OnlineStoreConfig::Sled {
                path: unique_dir(d.path()),
            },
            Backend::Redis(s) => OnlineStoreConfig::Redis {
                url: s.url(),
                key_prefix: fresh_prefix(),
            },
            Backend::Cluster(c) => OnlineStoreConfig::RedisCluster {
                nodes: c.urls(),
                key_prefix: fresh_prefix(),
            },
        }
    }

    /// Open a store of `config` with the views grouped as `layout` says.
    pub async fn open(config: &OnlineStoreConfig, layout: Layout) -> Arc<dyn OnlineStore> {
        match config {
            OnlineStoreConfig::Sled { path } => Arc::new(crate::SledStore::open(path).unwrap()),
            _ => Arc::new(crate::RedisStore::open(config, layout).await.unwrap()),
        }
    }
}

fn unique_dir(base: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    base.join(format!("store{}", N.fetch_add(1, Ordering::Relaxed)))
}
