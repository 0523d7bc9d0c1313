//! What the serving guard costs a request: the gRPC guard (token check, deadline check,
//! in-flight permit, request metrics, span) around a service that answers at once, against
//! the same service called bare; and the parts the HTTP middleware shares with it (a token's
//! verification, a request counted).
//!
//! The difference is the guard's whole per-request CPU time. Issue 23 bounds it at 10 % of
//! the online load benchmark's one-entity p99 and 16-client throughput; `benches/README.md`
//! sets one against the other.
//!
//! `cargo bench --bench guard`

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use quiver_app::auth::{Role, Tokens, create};
use quiver_app::metrics::Metrics;
use quiver_grpc::guard::{Guard, GuardLayer};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

const METHOD: &str = "/quiver.v1.OnlineService/GetOnlineFeatures";

/// A service that answers every request with an empty OK, as a handler that did no work.
fn answer() -> impl Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: http::Request<Body>| async {
        let mut resp = http::Response::new(Body::default());
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok::<_, std::convert::Infallible>(resp)
    })
}

fn request(token: Option<&str>) -> http::Request<Body> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(METHOD)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "1000m");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Body::default()).expect("request")
}

fn guard(tokens: Option<Arc<Tokens>>) -> GuardLayer {
    GuardLayer(Arc::new(Guard {
        tokens,
        permits: Arc::new(tokio::sync::Semaphore::new(512)),
        max_in_flight: 512,
        metrics: Arc::new(Metrics::new()),
        max_message_bytes: quiver_grpc::server::MAX_REQUEST_BYTES,
    }))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let registry_dir = dir.path().join("registry");
    let registry = quiver_registry::Registry::open(&registry_dir).expect("registry");
    // A handful of tokens, as a deployment has: the lookup is by id, not a scan.
    for i in 0..8 {
        create(&registry, &format!("svc-{i}"), Role::Writer).expect("token");
    }
    let (token, _) = create(&registry, "dash", Role::Reader).expect("token");
    let tokens = Tokens::load(registry_dir, registry.tokens().expect("tokens"));
    drop(registry);

    let mut g = c.benchmark_group("guard");
    g.measurement_time(Duration::from_secs(5));
    let bare = answer();
    g.bench_function("bare service", |b| {
        b.iter(|| {
            rt.block_on(bare.clone().oneshot(request(Some(&token))))
                .expect("answered")
        })
    });
    let open = guard(None).layer(answer());
    g.bench_function("guard, no auth", |b| {
        b.iter(|| {
            let resp = rt
                .block_on(open.clone().oneshot(request(None)))
                .expect("answered");
            assert!(resp.headers().get("grpc-status").is_none());
            resp
        })
    });
    let authed = guard(Some(Arc::clone(&tokens))).layer(answer());
    g.bench_function("guard, token checked", |b| {
        b.iter(|| {
            let resp = rt
                .block_on(authed.clone().oneshot(request(Some(&token))))
                .expect("answered");
            // A refusal would be a trailers-only response with grpc-status in its headers.
            assert!(resp.headers().get("grpc-status").is_none());
            resp
        })
    });
    // The parts the HTTP middleware shares with the gRPC guard.
    let header = format!("Bearer {token}");
    g.bench_function("verify a token", |b| {
        b.iter(|| tokens.verify(Some(&header)).expect("valid"))
    });
    let metrics = Metrics::new();
    g.bench_function("count a request", |b| {
        b.iter(|| metrics.request("http", "get-online-features", "200", 0.0003))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
