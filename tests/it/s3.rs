//! An S3-compatible server in the test process (s3s + s3s-fs serving a temporary folder) on
//! 127.0.0.1, for the tests that run on `s3://` what they run on local paths.
//!
//! One server serves the whole test binary: object storage settings are per process. A
//! bucket is a folder under its root, so a test writes its input files into the folder and
//! reads them back as objects, and compares objects Quiver wrote with the local files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

/// The test credentials; the server refuses any other key.
pub const ACCESS_KEY: &str = "quiver-test-key";
pub const SECRET_KEY: &str = "quiver-test-secret-0123456789";

pub struct Server {
    pub addr: SocketAddr,
    root: PathBuf,
    /// Body bytes of the GETs the server answered, by bucket.
    served: Mutex<HashMap<String, u64>>,
    buckets: AtomicUsize,
}

pub static SERVER: LazyLock<&'static Server> = LazyLock::new(start);

fn start() -> &'static Server {
    // SAFETY: set once, before any store is built; nothing else in the tests reads AWS_*.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    }
    serve(tempfile::tempdir().unwrap().keep())
}

/// Serve the buckets (folders) under `root` on a free loopback port, on a thread of its own,
/// for the rest of the process.
pub fn serve(root: PathBuf) -> &'static Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = root;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server: &'static Server = Box::leak(Box::new(Server {
                addr: listener.local_addr().unwrap(),
                root: dir.clone(),
                served: Mutex::default(),
                buckets: AtomicUsize::new(0),
            }));
            tx.send(server).unwrap();
            let service = {
                let mut b =
                    s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(&dir).unwrap());
                b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                b.build()
            };
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let svc = service.clone();
                let counted = hyper::service::service_fn(move |req| {
                    let get = req.method() == http::Method::GET;
                    let bucket = req.uri().path().trim_start_matches('/');
                    let bucket = bucket.split('/').next().unwrap_or_default().to_string();
                    let svc = svc.clone();
                    async move {
                        let resp = hyper::service::Service::call(&svc, req).await;
                        if let (true, Ok(r)) = (get, &resp) {
                            let n = r
                                .headers()
                                .get(http::header::CONTENT_LENGTH)
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                                .unwrap_or(0);
                            *server.served.lock().unwrap().entry(bucket).or_default() += n;
                        }
                        resp
                    }
                });
                let conn = http
                    .serve_connection(TokioIo::new(socket), counted)
                    .into_owned();
                tokio::spawn(conn);
            }
        });
    });
    rx.recv().unwrap()
}

impl Server {
    /// A new empty bucket: its name and its folder.
    pub fn bucket(&self) -> (String, PathBuf) {
        let name = format!(
            "bucket-{}-{}",
            std::process::id(),
            self.buckets.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        (name, dir)
    }

    /// The `storage:` section of a `quiver.yaml` that reaches this server.
    pub fn storage_yaml(&self) -> String {
        format!(
            "storage:\n  s3: {{ endpoint: \"http://{}\", region: us-east-1, path_style: true, allow_http: true }}\n",
            self.addr
        )
    }

    /// Body bytes of GET responses so far, `bucket=bytes` per bucket (for the benchmark
    /// server, `examples/s3_server.rs`).
    #[allow(dead_code)]
    pub fn served_report(&self) -> String {
        let m = self.served.lock().unwrap();
        let mut v: Vec<String> = m.iter().map(|(b, n)| format!("{b}={n}")).collect();
        v.sort();
        v.join(" ")
    }

    /// Body bytes of GET responses from `bucket` so far.
    pub fn served(&self, bucket: &str) -> u64 {
        self.served
            .lock()
            .unwrap()
            .get(bucket)
            .copied()
            .unwrap_or(0)
    }
}
