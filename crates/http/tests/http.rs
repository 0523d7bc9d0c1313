//! The Feast-compatible HTTP feature server with a real HTTP client (hyper) on 127.0.0.1:
//! the response shape Feast's clients read, values equal to the app's lookups, pushes,
//! materializations, and errors that name what was wrong.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quiver_app::serving::Serving;
use quiver_core::Repo;
use quiver_offline::EngineOptions;
use serde_json::{Value as Json, json};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

struct Server {
    url: String,
    serving: Arc<Serving>,
    /// Entity rows each view's materialization at start wrote.
    materialized: std::collections::HashMap<String, usize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// The sample repository, materialized now, served on a free loopback port.
async fn start() -> Server {
    start_with(quiver_http::server::HttpOptions::default(), None).await
}

/// [`start`] with options, and an audit log.
async fn start_with(options: quiver_http::server::HttpOptions, audit: Option<&Path>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sample-data"),
        dir.path(),
    );
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    let materialized = quiver_app::online::materialize(
        &repo,
        store.as_ref(),
        &[],
        quiver_core::time::now_micros(),
        EngineOptions::default(),
        |_, _| {},
    )
    .await
    .unwrap()
    .into_iter()
    .map(|m| (m.view, m.rows))
    .collect();
    let auditor = match audit {
        Some(p) => {
            quiver_app::audit::Auditor::to(Arc::new(quiver_app::audit::Audit::open(p).unwrap()))
        }
        None => Default::default(),
    };
    let serving = Arc::new(Serving::new(repo, store).with(
        quiver_app::serving::MAX_ENTITIES,
        Arc::new(quiver_app::metrics::Metrics::new()),
        auditor,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(quiver_http::server::serve_with(
        serving.clone(),
        listener,
        options,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        url,
        serving,
        materialized,
        stop: Some(stop),
        _dir: dir,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// POST `body` to `path` (with or without a JSON content type); the status and the body.
async fn post(url: &str, path: &str, body: &str, content_type: bool) -> (u16, String) {
    let headers: &[(&str, &str)] = match content_type {
        true => &[("content-type", "application/json")],
        false => &[],
    };
    send("POST", url, path, body, headers).await
}

/// A request with `headers`; the status and the body.
async fn send(
    method: &str,
    url: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(60), client.request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

/// The message of an error body (Feast's: a JSON string holding module, class, message).
fn message(body: &str) -> String {
    let inner: String = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let detail: Json = serde_json::from_str(&inner).unwrap();
    assert_eq!(detail["module"], "feast.errors");
    detail["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_online_features_has_feasts_shape_and_the_lookups_values() {
    let s = start().await;
    let features = [
        "user_purchases:amt_30d",
        "user_purchases:amt_lifetime",
        "user_purchases:last_category",
        "user_profile:age",
    ];
    let body = json!({"features": features, "entities": {"user_id": [1, 2, 7]}}).to_string();
    // Older Feast clients send no content type: the body is JSON all the same.
    for content_type in [true, false] {
        let (status, text) = post(&s.url, "/get-online-features", &body, content_type).await;
        assert_eq!(status, 200, "{text}");
        let got: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            got["metadata"]["feature_names"],
            json!(["user_id", "amt_30d", "amt_lifetime", "last_category", "age"])
        );
        assert_eq!(got["status"], json!(true));
        let results = got["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        // the join key column first, echoed
        assert_eq!(results[0]["values"], json!([1, 2, 7]));
        assert_eq!(
            results[0]["statuses"],
            json!(["PRESENT", "PRESENT", "PRESENT"])
        );
        // the same values `quiver get` computes
        let refs = s.serving.repo().resolve_refs(&features).unwrap();
        let ents: Vec<_> = [1, 2, 7]
            .iter()
            .map(|u| vec![("user_id".to_string(), quiver_core::store::KeyValue::Int(*u))])
            .collect();
        let want = s.serving.lookup(&refs, &ents, None).await.unwrap();
        for j in 0..features.len() {
            let r = &results[1 + j];
            for e in 0..3 {
                let w = &want[e][j];
                let v = &r["values"][e];
                let expected = match &w.value {
                    quiver_core::store::Scalar::Null => Json::Null,
                    quiver_core::store::Scalar::Int(i) => json!(i),
                    quiver_core::store::Scalar::Float(f) => json!(f),
                    quiver_core::store::Scalar::Str(x) => json!(x),
                    other => panic!("{other:?}"),
                };
                assert_eq!(v, &expected, "{} entity {e}", features[j]);
                let st = r["statuses"][e].as_str().unwrap();
                let want_status = match w.status {
                    quiver_app::online::Status::Present
                        if w.value == quiver_core::store::Scalar::Null =>
                    {
                        "NULL_VALUE"
                    }
                    quiver_app::online::Status::Present => "PRESENT",
                    quiver_app::online::Status::NotFound => "NOT_FOUND",
                    quiver_app::online::Status::Expired => "OUTSIDE_MAX_AGE",
                };
                assert_eq!(st, want_status, "{} entity {e}", features[j]);
                assert!(r["event_timestamps"][e].as_str().unwrap().ends_with('Z'));
            }
        }
        // user 7 has no events; user 1 bought (lifetime sum is an integer, a JSON number)
        assert_eq!(results[2]["statuses"][2], "NOT_FOUND");
        assert!(results[2]["values"][0].is_i64(), "{}", results[2]);
        // the sample's profiles are from 2022-2024: older than the 365-day ttl by now
        assert_eq!(results[4]["statuses"][0], "OUTSIDE_MAX_AGE");
    }

    // A feature service, full names.
    let body = json!({"feature_service": "churn_v1", "entities": {"user_id": [1]},
                      "full_feature_names": true, "unknown_field": 1})
    .to_string();
    let (status, text) = post(&s.url, "/get-online-features", &body, true).await;
    assert_eq!(status, 200, "{text}");
    let got: Json = serde_json::from_str(&text).unwrap();
    let names = got["metadata"]["feature_names"].as_array().unwrap();
    assert_eq!(names[0], "user_id");
    assert!(
        names[1..]
            .iter()
            .all(|n| n.as_str().unwrap().contains("__")),
        "{names:?}"
    );

    // Errors name what is wrong, with Feast's error body.
    for (body, code, says) in [
        (
            json!({"features": ["nope:x"], "entities": {"user_id": [1]}}),
            404,
            "unknown feature view `nope`",
        ),
        (
            json!({"features": ["user_profile:nope"], "entities": {"user_id": [1]}}),
            404,
            "has no feature `nope`",
        ),
        (
            json!({"entities": {"user_id": [1]}}),
            422,
            "features: give `features` or `feature_service`",
        ),
        (
            json!({"features": ["user_profile:age"], "entities": {"user_id": [1.5]}}),
            422,
            "entities.user_id[0]: a join key value must be an integer or a string",
        ),
        (
            json!({"features": ["user_profile:age"], "entities": {"uid": [1]}}),
            400,
            "has no `user_id`",
        ),
        (
            json!({"features": ["user_profile:age"]}),
            422,
            "missing field `entities`",
        ),
        (
            json!({"features": "user_profile:age", "entities": {"user_id": [1]}}),
            422,
            "features: invalid type",
        ),
    ] {
        let (status, text) = post(&s.url, "/get-online-features", &body.to_string(), true).await;
        assert_eq!(status, code, "{body}: {text}");
        let m = message(&text);
        assert!(m.contains(says), "{body}: {m}");
    }
    let (status, text) = post(&s.url, "/get-online-features", "{not json", true).await;
    assert_eq!(status, 422, "{text}");
    assert!(message(&text).contains("body:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_write_and_materialize_change_what_lookups_return() {
    let s = start().await;
    let lookup = |u: i64| {
        let url = s.url.clone();
        async move {
            let body =
                json!({"features": ["user_purchases:amt_30d"], "entities": {"user_id": [u]}});
            let (status, text) = post(&url, "/get-online-features", &body.to_string(), true).await;
            assert_eq!(status, 200, "{text}");
            let got: Json = serde_json::from_str(&text).unwrap();
            got["results"][1]["values"][0].clone()
        }
    };
    assert_eq!(lookup(3).await, Json::Null);
    let an_hour_ago =
        quiver_core::time::format_instant(quiver_core::time::now_micros() - 3_600_000_000);
    let df = json!({
        "user_id": [3], "purchase_date": [an_hour_ago], "ingested_at": [an_hour_ago],
        "purchase_amt": [42], "category": ["food"],
    });
    // Feast's push body, by source name.
    let body = json!({"push_source_name": "purchases", "df": df, "to": "online"}).to_string();
    let (status, text) = post(&s.url, "/push", &body, true).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(lookup(3).await, json!(42));
    // Feast's write-to-online-store body (what its remote store's writes send).
    let body = json!({"feature_view_name": "user_purchases", "df": df}).to_string();
    let (status, text) = post(&s.url, "/write-to-online-store", &body, true).await;
    assert_eq!((status, text.as_str()), (200, "null"));
    assert_eq!(lookup(3).await, json!(84));
    // A column of the wrong type or a missing one is named; nothing is written.
    let mut bad = df.clone();
    bad["purchase_amt"] = json!(["x"]);
    let body = json!({"push_source_name": "purchases", "df": bad}).to_string();
    let (status, text) = post(&s.url, "/push", &body, true).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        message(&text).contains("columns.purchase_amt[0]: expected an integer"),
        "{text}"
    );
    let mut bad = df.clone();
    bad.as_object_mut().unwrap().remove("category");
    let body = json!({"push_source_name": "purchases", "df": bad}).to_string();
    let (status, text) = post(&s.url, "/push", &body, true).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        message(&text).contains("columns.category: missing"),
        "{text}"
    );
    let body = json!({"push_source_name": "nope", "df": df}).to_string();
    let (status, text) = post(&s.url, "/push", &body, true).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(lookup(3).await, json!(84));

    // Materializations: full and incremental, Feast's bodies; the pushes stay counted.
    let now = quiver_core::time::format_instant(quiver_core::time::now_micros());
    let body =
        json!({"start_ts": "2020-01-01T00:00:00+00:00", "end_ts": now, "feature_views": null});
    let (status, text) = post(&s.url, "/materialize", &body.to_string(), true).await;
    assert_eq!((status, text.as_str()), (200, "null"));
    assert_eq!(lookup(3).await, json!(84));
    let body = json!({"end_ts": now, "feature_views": ["user_purchases"]});
    let (status, text) = post(&s.url, "/materialize-incremental", &body.to_string(), true).await;
    assert_eq!((status, text.as_str()), (200, "null"));
    let body = json!({"end_ts": "yesterday"});
    let (status, text) = post(&s.url, "/materialize-incremental", &body.to_string(), true).await;
    assert_eq!(status, 422, "{text}");
    assert!(message(&text).contains("end_ts: cannot read `yesterday` as a time"));

    // Health, over a plain GET.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .get(format!("{}/health", s.url).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

// ---- Serving safely (issue 23): tokens and roles, the audit log, metrics, TLS, paths.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_audit_and_metrics_over_http() {
    use quiver_app::auth::{Role, Tokens, create};
    let dir = tempfile::tempdir().unwrap();
    let registry_dir = dir.path().join("registry");
    let reg = quiver_registry::Registry::open(&registry_dir).unwrap();
    let (reader, _) = create(&reg, "dash", Role::Reader).unwrap();
    let (writer, _) = create(&reg, "ingest-job", Role::Writer).unwrap();
    let tokens = Tokens::load(registry_dir.clone(), reg.tokens().unwrap());
    drop(reg);
    let log = dir.path().join("audit.log");
    let server = start_with(
        quiver_http::server::HttpOptions {
            tokens: Some(tokens),
            max_body_bytes: 4096,
            ..Default::default()
        },
        Some(&log),
    )
    .await;
    let lookup = r#"{"features": ["user_profile:age"], "entities": {"user_id": [1]}}"#;
    let push = r#"{"push_source_name": "purchases", "df": {"user_id": [9], "purchase_date": ["2024-02-08T00:00:00Z"], "ingested_at": ["2024-02-08T00:00:00Z"], "purchase_amt": [5], "category": ["toys"]}, "to": "online"}"#;
    let auth = |t: &str| format!("Bearer {t}");
    // health is open; everything else wants a token
    assert_eq!(send("GET", &server.url, "/health", "", &[]).await.0, 200);
    let (code, body) = send("POST", &server.url, "/get-online-features", lookup, &[]).await;
    assert_eq!(code, 401, "{body}");
    assert!(message(&body).contains("token"), "{body}");
    let (code, _) = send(
        "POST",
        &server.url,
        "/get-online-features",
        lookup,
        &[("authorization", "Bearer qvt_00_11")],
    )
    .await;
    assert_eq!(code, 401);
    // a reader reads and may not push
    let r = auth(&reader);
    let (code, body) = send(
        "POST",
        &server.url,
        "/get-online-features",
        lookup,
        &[("authorization", &r)],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = send("POST", &server.url, "/push", push, &[("authorization", &r)]).await;
    assert_eq!(code, 403, "{body}");
    assert!(message(&body).contains("writer"), "{body}");
    let (code, _) = send(
        "POST",
        &server.url,
        "/materialize",
        "{}",
        &[("authorization", &r)],
    )
    .await;
    assert_eq!(code, 403);
    // a writer pushes; the log has it, with the token's name only
    let w = auth(&writer);
    let (code, body) = send("POST", &server.url, "/push", push, &[("authorization", &w)]).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = send(
        "POST",
        &server.url,
        "/push",
        r#"{"push_source_name": "nope", "df": {}}"#,
        &[("authorization", &w)],
    )
    .await;
    assert_eq!(code, 404);
    // an unknown route, or a path climbing out, is refused like any other: no file is served
    for path in [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
    ] {
        let (code, body) = send("GET", &server.url, path, "", &[("authorization", &r)]).await;
        assert!(code == 404 || code == 400, "{path}: {code}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&writer) && !text.contains(&reader));
    let lines: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["token"].as_str().unwrap().into(),
                l["method"].as_str().unwrap().into(),
                l["target"].as_str().unwrap().into(),
                l["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_string(), b.to_string(), c.to_string(), d.to_string())
    };
    assert_eq!(
        got,
        [
            s("ingest-job", "/push", "purchases", "ok"),
            s("ingest-job", "/push", "nope", "error"),
        ]
    );

    // a body over --max-message-bytes is refused before it is parsed
    let big = format!(
        r#"{{"features": ["user_profile:age"], "pad": "{}"}}"#,
        "x".repeat(5000)
    );
    let (code, body) = send(
        "POST",
        &server.url,
        "/get-online-features",
        &big,
        &[("authorization", &r)],
    )
    .await;
    assert_eq!(code, 413);
    assert!(message(&body).contains("--max-message-bytes"), "{body}");
    // a materialization through the server: its progress is in the metrics
    let (code, body) = send(
        "POST",
        &server.url,
        "/materialize",
        r#"{"feature_views": ["user_profile"]}"#,
        &[("authorization", &w)],
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // metrics: requests by route and status, lookups' entities, pushed rows, the store's
    // size, a materialization's progress
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let murl = format!("http://{}", metrics.local_addr().unwrap());
    tokio::spawn(quiver_http::server::serve_metrics(
        server.serving.clone(),
        metrics,
        std::future::pending(),
    ));
    let (code, text) = send("GET", &murl, "/metrics", "", &[]).await;
    assert_eq!(code, 200);
    for want in [
        r#"quiver_requests_total{code="401",method="/get-online-features",transport="http"} 2"#,
        r#"quiver_requests_total{code="200",method="/push",transport="http"} 1"#,
        r#"quiver_requests_total{code="403",method="/push",transport="http"} 1"#,
        r#"quiver_pushed_rows_total{view="user_purchases"} 1"#,
        "quiver_lookup_entities_count 1",
        r#"quiver_online_watermark_seconds{view="user_profile"}"#,
        "quiver_materializations_running 0",
        "quiver_online_store_up 1",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
    };
    // the same rows as the materialization at start (same data, a later end)
    let users = server.materialized["user_profile"];
    assert!(users > 0);
    assert_eq!(
        value(r#"quiver_materialize_progress_rows{view="user_profile"}"#),
        users as f64
    );
    assert_eq!(
        value(r#"quiver_materialized_rows_total{view="user_profile"}"#),
        users as f64
    );
    assert!(value("quiver_online_store_bytes") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_throwaway_ca() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let make_ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    };
    let (ca, issuer) = make_ca("quiver test CA");
    let (other, _) = make_ca("another CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(d.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("server.key"), key.serialize_pem()).unwrap();
    let server = start_with(
        quiver_http::server::HttpOptions {
            tls: Some((d.join("server.pem"), d.join("server.key"), None)),
            ..Default::default()
        },
        None,
    )
    .await;
    let addr = server.url.replace("http://", "");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let get_health = |trusted: rcgen::Certificate| {
        let addr = addr.clone();
        let provider = provider.clone();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(trusted.der().clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(
                    hyper::Request::get("/health")
                        .header("host", "localhost")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .map_err(std::io::Error::other)?;
            Ok::<u16, std::io::Error>(resp.status().as_u16())
        }
    };
    assert_eq!(get_health(ca).await.unwrap(), 200);
    assert!(
        get_health(other).await.is_err(),
        "a client trusting another CA"
    );
    // plain HTTP to the TLS port gets no answer
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        client.request(
            hyper::Request::get(format!("{}/health", server.url))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await;
    assert!(!matches!(plain, Ok(Ok(r)) if r.status().is_success()));
}
