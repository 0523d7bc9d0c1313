//! Online serving load test: materialize N entities × 20 latest-value features, serve them on
//! 127.0.0.1 over gRPC (`quiver_grpc::server::serve`) and over HTTP (`quiver_http`, Feast's
//! feature server routes), and drive each with a bounded load generator (tonic; hyper).
//! Reports materialize rows/s and peak memory and, per transport, for 1 and 100 entities per
//! request at 1 and 16 concurrent clients, p50/p99 latency and requests/s — for each online
//! store: sled, and Redis (a `redis-server` started on a free loopback port, append-only file
//! with `appendfsync everysec`, Redis's recommended setting).
//!
//! `cargo bench --bench online_load [-- ENTITIES [sled|redis] [auth] [materialize]]` (default
//! 1 000 000, both stores, each in its own process so peak memory is its own; `auth`: tokens
//! required; `materialize`: stop after the materialization and its CPU and write times).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use parquet::arrow::ArrowWriter;
use quiver_core::Repo;
use quiver_grpc::proto::online_service_client::OnlineServiceClient;
use quiver_grpc::proto::{
    FeatureList, GetOnlineFeaturesRequest, RepeatedValue, Value, get_online_features_request::Kind,
    value::Val,
};
use quiver_offline::EngineOptions;

const FEATURES: usize = 20;
const T: i64 = 1_735_689_600_000_000; // 2025-01-01

fn write_source(dir: &std::path::Path, n: usize) {
    let mut fields = vec![
        Field::new(
            "user_id",
            datafusion::arrow::datatypes::DataType::Int64,
            false,
        ),
        Field::new(
            "ts",
            datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            false,
        ),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..n as i64)),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                (0..n as i64).map(|i| T - 1_000_000 * (i % 86_400)),
            )
            .with_timezone("UTC"),
        ),
    ];
    for f in 0..FEATURES {
        fields.push(Field::new(
            format!("f{f}"),
            datafusion::arrow::datatypes::DataType::Float64,
            true,
        ));
        cols.push(Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| (i * (f + 1)) as f64 * 0.5),
        )));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let file = std::fs::File::create(dir.join("users.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let mut yaml = String::from(
        "project: load\nentities:\n  user: { join_keys: [user_id] }\nsources:\n  users: { path: users.parquet, timestamp: ts }\nfeature_views:\n  profile:\n    entity: user\n    source: users\n    ttl: 30d\n    features:\n",
    );
    for f in 0..FEATURES {
        yaml += &format!("      - {{ name: f{f} }}\n");
    }
    std::fs::write(dir.join("quiver.yaml"), yaml).unwrap();
}

fn request(ids: &[i64]) -> GetOnlineFeaturesRequest {
    let features = (0..FEATURES).map(|f| format!("profile:f{f}")).collect();
    let col = RepeatedValue {
        val: ids
            .iter()
            .map(|i| Value {
                val: Some(Val::Int64Val(*i)),
            })
            .collect(),
    };
    GetOnlineFeaturesRequest {
        kind: Some(Kind::Features(FeatureList { val: features })),
        entities: [("user_id".to_string(), col)].into_iter().collect(),
        full_feature_names: false,
        at_micros: Some(T),
    }
}

/// The process's peak resident set, from getrusage.
fn peak_rss_mib() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

/// CPU seconds (user and system) this process has used.
fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as in peak_rss_mib.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// CPU seconds (user and system) process `pid` has used, from /proc.
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command's closing parenthesis; utime and stime are 14th and 15th
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<f64>() / ticks
}

/// Redis's own peak memory, as `INFO memory` reports it.
fn redis_memory(port: u16) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "memory"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_peak_human:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Grpc,
    Http,
}

/// One load client: a tonic channel, or a pooled keep-alive hyper client; with the bearer
/// token it sends, if any.
enum Client {
    Grpc(
        OnlineServiceClient<tonic::transport::Channel>,
        Option<String>,
    ),
    Http(
        String,
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<bytes::Bytes>,
        >,
        Option<String>,
    ),
}

impl Client {
    async fn connect(t: Transport, url: String, token: Option<String>) -> Client {
        match t {
            Transport::Grpc => {
                Client::Grpc(OnlineServiceClient::connect(url).await.unwrap(), token)
            }
            Transport::Http => Client::Http(
                url,
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
                token,
            ),
        }
    }

    /// One lookup of 20 features for `ids`, checked for its shape.
    async fn lookup(&mut self, ids: &[i64]) {
        match self {
            Client::Grpc(c, token) => {
                let mut req = tonic::Request::new(request(ids));
                if let Some(t) = token {
                    req.metadata_mut()
                        .insert("authorization", t.parse().unwrap());
                }
                let resp = c.get_online_features(req).await.unwrap().into_inner();
                assert_eq!(resp.results.len(), FEATURES);
            }
            Client::Http(url, c, token) => {
                use http_body_util::BodyExt;
                let features: Vec<String> =
                    (0..FEATURES).map(|f| format!("profile:f{f}")).collect();
                let body = serde_json::json!({"features": features, "entities": {"user_id": ids}});
                let mut req = hyper::Request::post(url.as_str());
                if let Some(t) = token {
                    req = req.header("authorization", t.as_str());
                }
                let req = req
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        body.to_string(),
                    )))
                    .unwrap();
                let resp = c.request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(v["results"].as_array().unwrap().len(), FEATURES + 1);
            }
        }
    }
}

/// How long Redis ran the materialization's writes (scripts or `HSET`s of many rows), from
/// its SLOWLOG: how many, median and longest (a lookup waits behind one), and their sum.
fn write_times(port: u16) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "slowlog", "get", "100000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // redis-cli prints one field per line
    let lines: Vec<&str> = text.lines().collect();
    let mut us: Vec<u64> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let command = l.trim().to_ascii_lowercase();
        // the writes: scripts, or HSETs of rows (and the one of the watermark)
        if ["evalsha", "eval", "hset"].contains(&command.as_str()) {
            // id, time, microseconds, then the command: the duration is the line before it
            if let Some(d) = lines
                .get(i.saturating_sub(1))
                .and_then(|d| d.trim().parse().ok())
            {
                us.push(d);
            }
        }
    }
    us.sort();
    match us.len() {
        0 => "writes: none logged".into(),
        n => format!(
            "writes: {n}, median {:.1} ms, longest {:.1} ms, {:.2} s in all (Redis SLOWLOG)",
            us[n / 2] as f64 / 1e3,
            us[n - 1] as f64 / 1e3,
            us.iter().sum::<u64>() as f64 / 1e6
        ),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // `auth`: servers require a token and clients send one (the guard's full path).
    let auth = args.iter().any(|a| a == "auth");
    let Some(backend) = args.iter().find(|a| *a == "sled" || *a == "redis") else {
        // Each store in a process of its own: peak memory is then the store's.
        for backend in ["sled", "redis"] {
            let mut child = vec![n.to_string(), backend.to_string(), "--bench".into()];
            for flag in ["auth", "materialize"] {
                if args.iter().any(|a| a == flag) {
                    child.push(flag.into());
                }
            }
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(child)
                .status()
                .unwrap();
            assert!(status.success(), "{backend} run failed");
        }
        return;
    };
    println!(
        "\n## online store: {backend}, {n} entities{}\n",
        if auth { ", tokens required" } else { "" }
    );
    let dir = tempfile::tempdir().unwrap();
    write_source(dir.path(), n);
    let mut repo = Repo::load(dir.path()).unwrap();
    let redis = (backend == "redis").then(|| {
        quiver_online::testing::RedisServer::start_with(&[
            "--appendfsync",
            "everysec",
            // every command's time, to report how long a write script holds the server
            "--slowlog-log-slower-than",
            "0",
            "--slowlog-max-len",
            "100000",
        ])
    });
    if let Some(r) = &redis {
        repo.online_store = quiver_core::config::OnlineStoreConfig::Redis {
            url: r.url(),
            key_prefix: "load".into(),
        };
    }

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = server_rt.block_on(quiver_online::open(&repo)).unwrap();
    let redis_cpu = || redis.as_ref().and_then(|r| r.pid()).map(cpu_seconds_of);
    let (cpu0, redis_cpu0) = (cpu_seconds(), redis_cpu());
    let started = Instant::now();
    let done = server_rt
        .block_on(quiver_app::online::materialize(
            &repo,
            store.as_ref(),
            &[],
            T,
            EngineOptions::default(),
            |_, _| {},
        ))
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "materialize: {} entity rows x {FEATURES} features in {secs:.2} s = {:.0} rows/s",
        done[0].rows,
        done[0].rows as f64 / secs
    );
    println!(
        "peak memory: quiver process {:.0} MiB{}",
        peak_rss_mib(),
        redis.as_ref().map_or(String::new(), |r| format!(
            ", redis-server {}",
            redis_memory(r.port())
        ))
    );
    // Where the time went: the CPU of this process (computing, encoding, sending) and of
    // Redis (reading, parsing, applying, the append-only file), on the same 2 cores.
    println!(
        "CPU during materialize: quiver {:.2} s{}",
        cpu_seconds() - cpu0,
        match (redis_cpu(), redis_cpu0) {
            (Some(b), Some(a)) => format!(", redis-server {:.2} s", b - a),
            _ => String::new(),
        }
    );
    if let Some(r) = &redis {
        println!("{}", write_times(r.port()));
    }
    if args.iter().any(|a| a == "materialize") {
        return;
    }

    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let http_listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (tokens, token) = match auth {
        false => (None, None),
        true => {
            let reg = quiver_registry::Registry::open(&repo.registry).unwrap();
            let (token, _) =
                quiver_app::auth::create(&reg, "load", quiver_app::auth::Role::Reader).unwrap();
            let t = quiver_app::auth::Tokens::load(repo.registry.clone(), reg.tokens().unwrap());
            (Some(t), Some(format!("Bearer {token}")))
        }
    };
    let serving = Arc::new(quiver_app::serving::Serving::new(
        repo.clone(),
        store.clone(),
    ));
    let options = quiver_grpc::server::ServeOptions {
        tokens: tokens.clone(),
        ..Default::default()
    };
    let server = server_rt.spawn(quiver_grpc::server::serve_with(
        repo,
        store,
        listener,
        options,
        async {
            let _ = stopped.await;
        },
    ));
    let http_options = quiver_http::server::HttpOptions {
        tokens,
        ..Default::default()
    };
    let http_server = server_rt.spawn(quiver_http::server::serve_with(
        serving,
        http_listener,
        http_options,
        async {
            let _ = http_stopped.await;
        },
    ));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| transport | entities/request | clients | requests | p50 ms | p99 ms | requests/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for transport in [Transport::Grpc, Transport::Http] {
        for per_request in [1usize, 100] {
            for clients in [1usize, 16] {
                // Bounded: a fixed number of requests per client, and a time cap.
                let per_client = if per_request == 1 {
                    4000 / clients.max(1) * 2
                } else {
                    800 / clients.max(1) * 2
                };
                let url = match transport {
                    Transport::Grpc => format!("http://{addr}"),
                    Transport::Http => format!("http://{http_addr}/get-online-features"),
                };
                let token = token.clone();
                let (lat, wall) = client_rt.block_on(async move {
                    let mut tasks = Vec::new();
                    let t0 = Instant::now();
                    for c in 0..clients {
                        let url = url.clone();
                        let token = token.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut client = Client::connect(transport, url, token).await;
                            let mut lat = Vec::with_capacity(per_client);
                            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ c as u64;
                            let deadline = Instant::now() + Duration::from_secs(60);
                            for _ in 0..per_client {
                                let ids: Vec<i64> = (0..per_request)
                                    .map(|_| {
                                        x ^= x << 13;
                                        x ^= x >> 7;
                                        x ^= x << 17;
                                        (x % n as u64) as i64
                                    })
                                    .collect();
                                let t = Instant::now();
                                client.lookup(&ids).await;
                                lat.push(t.elapsed());
                                if Instant::now() > deadline {
                                    break;
                                }
                            }
                            lat
                        }));
                    }
                    let mut all = Vec::new();
                    for t in tasks {
                        all.extend(t.await.unwrap());
                    }
                    (all, t0.elapsed())
                });
                let mut lat = lat;
                lat.sort();
                println!(
                    "| {transport:?} | {per_request} | {clients} | {} | {:.3} | {:.3} | {:.0} |",
                    lat.len(),
                    percentile(&lat, 0.5),
                    percentile(&lat, 0.99),
                    lat.len() as f64 / wall.as_secs_f64()
                );
            }
        }
    }
    let _ = http_stop.send(());
    server_rt.block_on(http_server).unwrap().unwrap();
    let _ = stop.send(());
    server_rt.block_on(server).unwrap().unwrap();
}
