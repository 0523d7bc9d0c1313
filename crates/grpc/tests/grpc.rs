//! The gRPC server through a real tonic client on 127.0.0.1 (a free port): lookups, statuses,
//! bad requests mapped to status codes, health, and a graceful shutdown.

use std::path::Path;
use std::sync::Arc;

use quiver_core::Repo;
use quiver_grpc::proto::online_service_client::OnlineServiceClient;
use quiver_grpc::proto::{
    FeatureList, FieldStatus, GetOnlineFeaturesRequest, RepeatedValue, Value,
    get_online_features_request::Kind, value::Val,
};
use quiver_offline::EngineOptions;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == ".quiver" {
            continue;
        }
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A channel to a server that is starting: a bounded number of tries.
async fn connect(url: &str) -> tonic::transport::Channel {
    for _ in 0..250 {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the server at {url} did not come up");
}

/// A copy of the sample repository in a temporary folder.
fn sample_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sample-data"),
        dir.path(),
    );
    dir
}

async fn materialize_at_t(repo: &Repo, store: &dyn quiver_core::store::OnlineStore) {
    quiver_app::online::materialize(repo, store, &[], T, EngineOptions::default(), |_, _| {})
        .await
        .unwrap();
}

/// A server on a free loopback port, stopped (gracefully, within 10 s) by [`Server::stop`].
struct Server {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), quiver_grpc::GrpcError>>,
}

impl Server {
    async fn start(repo: Repo, store: Arc<dyn quiver_core::store::OnlineStore>) -> Server {
        Server::start_with(repo, store, Default::default()).await
    }

    async fn start_with(
        repo: Repo,
        store: Arc<dyn quiver_core::store::OnlineStore>,
        options: quiver_grpc::server::ServeOptions,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(quiver_grpc::server::serve_with(
            repo,
            store,
            listener,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        Server { url, stop, handle }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn ints(v: &[i64]) -> RepeatedValue {
    RepeatedValue {
        val: v
            .iter()
            .map(|i| Value {
                val: Some(Val::Int64Val(*i)),
            })
            .collect(),
    }
}

const T: i64 = 1_707_436_800_000_000; // 2024-02-09T00:00:00Z

fn request(features: &[&str], entities: Vec<(&str, RepeatedValue)>) -> GetOnlineFeaturesRequest {
    GetOnlineFeaturesRequest {
        kind: Some(Kind::Features(FeatureList {
            val: features.iter().map(|s| s.to_string()).collect(),
        })),
        entities: entities
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        full_feature_names: false,
        at_micros: Some(T),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_lookups_health_and_errors() {
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;

    let server = Server::start(repo, store).await;
    let url = server.url.clone();
    let mut client = OnlineServiceClient::new(connect(&url).await);

    let resp = client
        .get_online_features(request(
            &["user_purchases:amt_30d", "user_profile:age"],
            vec![("user_id", ints(&[1, 2, 7]))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.metadata.unwrap().feature_names.unwrap().val,
        ["amt_30d", "age"]
    );
    let amt = &resp.results[0];
    assert_eq!(
        amt.values.iter().map(|v| v.val.clone()).collect::<Vec<_>>(),
        [Some(Val::Int64Val(700)), Some(Val::Int64Val(50)), None]
    );
    assert_eq!(
        amt.statuses,
        [
            FieldStatus::Present as i32,
            FieldStatus::Present as i32,
            FieldStatus::NotFound as i32
        ]
    );
    let age = &resp.results[1];
    assert_eq!(age.values[0].val, Some(Val::Int64Val(35)));
    // user 2's profile is from 2022, older than the 365d ttl
    assert_eq!(
        age.statuses,
        [
            FieldStatus::Present as i32,
            FieldStatus::Expired as i32,
            FieldStatus::NotFound as i32
        ]
    );
    assert_eq!(age.event_timestamps_micros[0], 1_705_276_800_000_000); // 2024-01-15

    let e = client
        .get_online_features(request(
            &["user_profile:shoe_size"],
            vec![("user_id", ints(&[1]))],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("no feature `shoe_size`"),
        "{}",
        e.message()
    );

    let e = client
        .get_online_features(request(
            &["user_profile:age"],
            vec![("user_id", ints(&[1, 2])), ("country", ints(&[1]))],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .contains("entities: column `user_id` has 2 values, `country` has 1"),
        "{}",
        e.message()
    );

    let bad_key = RepeatedValue {
        val: vec![Value {
            val: Some(Val::DoubleVal(1.5)),
        }],
    };
    let e = client
        .get_online_features(request(&["user_profile:age"], vec![("user_id", bad_key)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("entities.user_id[0]"),
        "{}",
        e.message()
    );

    let e = client
        .get_online_features(request(&["user_profile:age"], vec![("uid", ints(&[1]))]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("has no `user_id`"), "{}", e.message());

    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "quiver.v1.OnlineService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_service_registers_selects_and_traces() {
    use quiver_grpc::proto::registry_service_client::RegistryServiceClient;
    use quiver_grpc::proto::{
        GetModelRequest, LineageRequest, ListModelsRequest, MetricValue, RegisterModelRequest,
        SelectBestRequest,
    };
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    // A registered training set to register models against.
    {
        let cat =
            quiver_app::catalog::Catalog::open(repo.clone(), EngineOptions::default()).unwrap();
        let spine = cat
            .add(&dir.path().join("spine.csv"), "labels")
            .await
            .unwrap();
        let t = cat.read(&spine).await.unwrap();
        let refs = repo.service("churn_v1").unwrap();
        let (out, mut record) = cat
            .join(&t, &refs, None, false, &Default::default())
            .await
            .unwrap();
        record.spine = spine.reference();
        cat.write_dataset(
            "train",
            quiver_registry::DatasetKind::Training,
            &quiver_app::catalog::Rows {
                schema: out.schema(),
                batches: vec![out],
            },
            quiver_registry::Operation::Join(record),
        )
        .await
        .unwrap();
    }
    let store = quiver_online::open(&repo).await.unwrap();
    let server = Server::start(repo, store).await;
    let url = server.url.clone();
    let channel = connect(&url).await;
    let mut client = RegistryServiceClient::new(channel.clone());
    let register = |auc: f64, latency: f64, bytes: &[u8]| RegisterModelRequest {
        name: "py_model".into(),
        artifact: bytes.to_vec(),
        artifact_name: "model.pkl".into(),
        dataset: "train@1".into(),
        params: [("lr".to_string(), "0.1".to_string())]
            .into_iter()
            .collect(),
        metrics: vec![MetricValue {
            name: "auc".into(),
            eval_dataset: "train@1".into(),
            value: auc,
        }],
        costs: [("latency_p99_ms".to_string(), latency)]
            .into_iter()
            .collect(),
        seed: Some(3),
        ..Default::default()
    };
    let a = client
        .register_model(register(0.8, 1.0, b"first"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.name.as_str(), a.version), ("py_model", 1));
    assert_eq!(a.features.len(), 7, "{:?}", a.features);
    let b = client
        .register_model(register(0.9, 5.0, b"second"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.version, 2);
    assert_ne!(a.artifact_hash, b.artifact_hash);

    let got = client
        .get_model(GetModelRequest {
            model: "py_model@1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.params["lr"], "0.1");
    let all = client
        .list_models(ListModelsRequest {
            name: "py_model".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.models.len(), 2);

    let pick = |max: f64| SelectBestRequest {
        metric: "auc".into(),
        on: "train".into(),
        max: [("latency_p99_ms".to_string(), max)].into_iter().collect(),
        ..Default::default()
    };
    let s = client.select_best(pick(2.0)).await.unwrap().into_inner();
    assert!(s.found);
    assert_eq!(s.model.unwrap().version, 1);
    let s = client.select_best(pick(10.0)).await.unwrap().into_inner();
    assert_eq!(s.model.unwrap().version, 2);
    let s = client.select_best(pick(0.5)).await.unwrap().into_inner();
    assert!(!s.found);
    assert_eq!(s.closest, "py_model@1");
    assert_eq!(s.violations, vec!["latency_p99_ms = 1 > 0.5"]);

    let l = client
        .lineage(LineageRequest {
            artifact: "model:py_model@2".into(),
            upstream: true,
            downstream: false,
        })
        .await
        .unwrap()
        .into_inner();
    let froms: Vec<&str> = l.edges.iter().map(|e| e.from.as_str()).collect();
    assert!(froms.contains(&"dataset train@1"), "{froms:?}");
    assert!(froms.contains(&"dataset labels@1"), "{froms:?}");

    // Bad requests: unknown references are NOT_FOUND, malformed ones INVALID_ARGUMENT, and
    // nothing is registered.
    let mut bad = register(0.5, 1.0, b"x");
    bad.dataset = "nope@1".into();
    let e = client.register_model(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("unknown dataset `nope`"),
        "{}",
        e.message()
    );
    let mut bad = register(0.5, 1.0, b"x");
    bad.metrics[0].eval_dataset = "train@4".into();
    let e = client.register_model(bad).await.unwrap_err();
    assert!(e.message().contains("has no version 4"), "{}", e.message());
    let mut bad = register(0.5, 1.0, b"x");
    bad.name = String::new();
    let e = client.register_model(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("name"), "{}", e.message());
    let e = client
        .get_model(GetModelRequest {
            model: "py_model@champion".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let all = client
        .list_models(ListModelsRequest {
            name: "py_model".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.models.len(), 2);

    // Server reflection lists the services, in both protocol versions (v1alpha is what
    // grpcio's Python client, older grpcurl, Postman and evans speak), and describes them.
    macro_rules! reflect {
        ($v:ident) => {{
            use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
            let mut refl = ServerReflectionClient::new(channel.clone());
            let reqs = vec![
                tonic_reflection::pb::$v::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                },
                tonic_reflection::pb::$v::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol(
                        "quiver.v1.OnlineService".into(),
                    )),
                },
            ];
            let mut stream = refl
                .server_reflection_info(futures::stream::iter(reqs))
                .await
                .unwrap()
                .into_inner();
            let msg = stream.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
                panic!("{msg:?}");
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            let msg = stream.message().await.unwrap().unwrap();
            let Some(MessageResponse::FileDescriptorResponse(files)) = msg.message_response else {
                panic!("{msg:?}");
            };
            (names, files.file_descriptor_proto.len())
        }};
    }
    for (version, (names, files)) in [("v1", reflect!(v1)), ("v1alpha", reflect!(v1alpha))] {
        for service in [
            "quiver.v1.RegistryService",
            "quiver.v1.OnlineService",
            "quiver.v1.TrainingService",
        ] {
            assert!(names.contains(&service.to_string()), "{version}: {names:?}");
        }
        assert!(files > 0, "{version}: the service's file is described");
    }

    server.stop().await;
}

fn strs(v: &[&str]) -> RepeatedValue {
    RepeatedValue {
        val: v
            .iter()
            .map(|s| Value {
                val: Some(Val::StringVal(s.to_string())),
            })
            .collect(),
    }
}

/// Values of `features` for entities 1..=3 at T through the offline join on `source_rows`.
async fn offline_values(
    repo: &Repo,
    extra: Option<datafusion::arrow::array::RecordBatch>,
    features: &[&str],
) -> Vec<Vec<quiver_core::store::Scalar>> {
    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    let mut engine = quiver_offline::Engine::new(repo.clone(), EngineOptions::default()).unwrap();
    if let Some(extra) = extra {
        let ctx = quiver_offline::session(&EngineOptions::default()).unwrap();
        let src = &repo.sources["purchases"];
        let table = quiver_offline::source::source_table(&ctx, &repo.offline_store, src)
            .await
            .unwrap();
        let mem =
            datafusion::datasource::MemTable::try_new(extra.schema(), vec![vec![extra]]).unwrap();
        let union = ctx
            .read_table(table)
            .unwrap()
            .union(ctx.read_table(Arc::new(mem)).unwrap())
            .unwrap();
        engine = engine.with_source_table("purchases", union.into_view());
    }
    let spine = datafusion::arrow::array::RecordBatch::try_from_iter(vec![
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as datafusion::arrow::array::ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![T; 3]).with_timezone("UTC")),
        ),
    ])
    .unwrap();
    let req = quiver_offline::JoinRequest {
        features: repo.resolve_refs(features).unwrap(),
        spine_timestamp: None,
        full_names: false,
    };
    let out = engine
        .join(spine.schema(), vec![spine], &req)
        .await
        .unwrap()
        .batch;
    (0..3)
        .map(|r| {
            (2..out.num_columns())
                .map(|c| {
                    quiver_core::store::Scalar::column(out.column(c).as_ref(), "f").unwrap()[r]
                        .clone()
                })
                .collect()
        })
        .collect()
}

/// On sled, a single Redis and a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_updates_online_values_like_the_offline_join() {
    for backend in quiver_online::testing::Backend::all() {
        push_like_the_offline_join(&backend).await;
    }
}

async fn push_like_the_offline_join(backend: &quiver_online::testing::Backend) {
    use quiver_grpc::proto::PushRequest;
    let dir = sample_copy();
    let mut repo = Repo::load(dir.path()).unwrap();
    repo.online_store = backend.fresh();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let server = Server::start(repo.clone(), store.clone()).await;
    let url = server.url.clone();
    let mut client = OnlineServiceClient::new(connect(&url).await);
    let features = [
        "user_purchases:amt_30d",
        "user_purchases:amt_lifetime",
        "user_purchases:clothing_7d",
        "user_purchases:last_category",
    ];
    let day = 86_400_000_000i64;
    // Two purchases: user 2 a day before T, user 3 (no events before) an hour before.
    let push = |to_offline: bool| PushRequest {
        feature_view: "user_purchases".into(),
        columns: [
            ("user_id".to_string(), ints(&[2, 3])),
            (
                "purchase_date".to_string(),
                RepeatedValue {
                    val: vec![
                        Value {
                            val: Some(Val::UnixTimestampMicrosVal(T - day)),
                        },
                        Value {
                            val: Some(Val::StringVal("2024-02-08T23:00:00Z".into())),
                        },
                    ],
                },
            ),
            (
                "ingested_at".to_string(),
                strs(&["2024-02-08T00:00:00Z", "2024-02-08T23:00:00Z"]),
            ),
            ("purchase_amt".to_string(), ints(&[30, 7])),
            ("category".to_string(), strs(&["clothing", "food"])),
        ]
        .into_iter()
        .collect(),
        to_offline,
        at_micros: Some(T),
    };
    let r = client.push(push(false)).await.unwrap().into_inner();
    assert_eq!((r.rows, r.entities), (2, 2));
    let got = client
        .get_online_features(request(&features, vec![("user_id", ints(&[1, 2, 3]))]))
        .await
        .unwrap()
        .into_inner();
    // Offline: the same join over the source plus the pushed rows.
    let ctx = quiver_offline::session(&EngineOptions::default()).unwrap();
    let src =
        quiver_offline::source::source_table(&ctx, &repo.offline_store, &repo.sources["purchases"])
            .await
            .unwrap();
    let req = push(false);
    let pushed = {
        use datafusion::arrow::array::{Int64Array, StringArray};
        let s = src.schema();
        let cols: Vec<datafusion::arrow::array::ArrayRef> = s
            .fields()
            .iter()
            .map(|f| -> datafusion::arrow::array::ArrayRef {
                let v = &req.columns[f.name()].val;
                let a: datafusion::arrow::array::ArrayRef = match &v[0].val {
                    Some(Val::Int64Val(_)) => Arc::new(Int64Array::from(
                        v.iter()
                            .map(|x| match x.val {
                                Some(Val::Int64Val(i)) => i,
                                _ => 0,
                            })
                            .collect::<Vec<_>>(),
                    )),
                    _ => Arc::new(StringArray::from(
                        v.iter()
                            .map(|x| match &x.val {
                                Some(Val::StringVal(s)) => s.clone(),
                                Some(Val::UnixTimestampMicrosVal(t)) => {
                                    quiver_core::time::format_instant(*t)
                                }
                                _ => String::new(),
                            })
                            .collect::<Vec<_>>(),
                    )),
                };
                datafusion::arrow::compute::cast(&a, f.data_type()).unwrap()
            })
            .collect();
        datafusion::arrow::array::RecordBatch::try_new(s, cols).unwrap()
    };
    let want = offline_values(&repo, Some(pushed.clone()), &features).await;
    for (f, vector) in got.results.iter().enumerate() {
        for (e, (value, row)) in vector.values.iter().zip(&want).enumerate() {
            let v = quiver_grpc::convert::scalar_of(value);
            assert_eq!(v, row[f], "feature {} entity {}", features[f], e + 1);
        }
    }
    // The pushed purchase shows: user 2 had 50 in the window, now 80.
    assert_eq!(got.results[0].values[1].val, Some(Val::Int64Val(80)));
    assert_eq!(
        got.results[3].values[2].val,
        Some(Val::StringVal("food".into()))
    );

    // The same rows again: the online store kept the first push, so both count (before, a
    // push recomputed over the source and its own rows only), and a materialization
    // afterwards keeps them too.
    let r = client.push(push(false)).await.unwrap().into_inner();
    assert_eq!((r.rows, r.entities), (2, 2));
    let twice =
        datafusion::arrow::compute::concat_batches(&pushed.schema(), [&pushed, &pushed]).unwrap();
    let want = offline_values(&repo, Some(twice), &features).await;
    let check = |got: &quiver_grpc::proto::GetOnlineFeaturesResponse| {
        for (f, vector) in got.results.iter().enumerate() {
            for (e, (value, row)) in vector.values.iter().zip(&want).enumerate() {
                let v = quiver_grpc::convert::scalar_of(value);
                assert_eq!(v, row[f], "feature {} entity {}", features[f], e + 1);
            }
        }
        // user 2: 50 before the pushes, 30 from each
        assert_eq!(got.results[0].values[1].val, Some(Val::Int64Val(110)));
    };
    let lookup = || request(&features, vec![("user_id", ints(&[1, 2, 3]))]);
    for materialized in [false, true] {
        if materialized {
            materialize_at_t(&repo, store.as_ref()).await;
        }
        check(
            &client
                .get_online_features(lookup())
                .await
                .unwrap()
                .into_inner(),
        );
    }

    // Pushes at once are taken one at a time: each counts the ones before it.
    let mut one = push(false);
    for c in one.columns.values_mut() {
        c.val.truncate(1);
    }
    one.columns.insert("purchase_amt".into(), ints(&[1]));
    let pushes: Vec<_> = (0..8)
        .map(|_| {
            let (mut c, r) = (client.clone(), one.clone());
            tokio::spawn(async move { c.push(r).await.unwrap() })
        })
        .collect();
    for p in pushes {
        p.await.unwrap();
    }
    let got = client
        .get_online_features(lookup())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.results[0].values[1].val, Some(Val::Int64Val(118)));

    // Bad pushes name what is wrong.
    let mut bad = push(false);
    bad.columns.remove("category");
    let e = client.push(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "columns.category: missing");
    let mut bad = push(false);
    bad.columns.insert("purchase_amt".into(), strs(&["a", "b"]));
    let e = client.push(bad).await.unwrap_err();
    assert_eq!(e.message(), "columns.purchase_amt[0]: expected an integer");
    let mut bad = push(false);
    bad.feature_view = "nope".into();
    let e = client.push(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // The sample's purchases are files by path: they cannot take pushed rows.
    let e = client.push(push(true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("reads files at"), "{}", e.message());

    server.stop().await;
}

/// On sled, a single Redis and a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_materialization_rewrites_only_what_changed() {
    for backend in quiver_online::testing::Backend::all() {
        incremental_rewrites_only_what_changed(&backend).await;
    }
}

async fn incremental_rewrites_only_what_changed(backend: &quiver_online::testing::Backend) {
    use quiver_app::online::{Range, materialize_range};
    let dir = sample_copy();
    // User 1 bought long ago only, user 2 within a window of t1, user 3 after t1.
    std::fs::write(
        dir.path().join("data/purchases.csv"),
        "user_id,purchase_date,ingested_at,purchase_amt,category
1,2023-06-01T00:00:00Z,2023-06-01T00:00:00Z,10,food
2,2024-01-20T00:00:00Z,2024-01-20T00:00:00Z,20,clothing
3,2024-02-05T00:00:00Z,2024-02-05T00:00:00Z,30,food
",
    )
    .unwrap();
    let repo = Repo::load(dir.path()).unwrap();
    let day = 86_400_000_000i64;
    let t1 = T - 8 * day; // 2024-02-01
    let mut inc_repo = repo.clone();
    inc_repo.online_store = backend.fresh();
    let mut full_repo = repo.clone();
    full_repo.online_store = backend.fresh();
    let inc = quiver_online::open(&inc_repo).await.unwrap();
    let full = quiver_online::open(&full_repo).await.unwrap();
    let (inc, full) = (inc.as_ref(), full.as_ref());
    let opts = EngineOptions::default;
    let all = materialize_range(&repo, inc, &[], Range::All, t1, opts(), |_, _| {})
        .await
        .unwrap();
    // Incremental to T: user_purchases reaches back 30 days (its longest window) from the
    // watermark t1, so entities with events since t1 − 30d are written again; the rest keep
    // values that cannot have changed.
    let again = materialize_range(&repo, inc, &[], Range::Incremental, T, opts(), |_, _| {})
        .await
        .unwrap();
    let rows = |m: &[quiver_app::online::Materialized], v: &str| {
        m.iter().find(|x| x.view == v).unwrap().rows
    };
    assert_eq!(rows(&all, "user_purchases"), 2, "{all:?}"); // users 1 and 2
    assert_eq!(rows(&again, "user_purchases"), 2, "{again:?}"); // users 2 and 3, not 1
    materialize_range(&repo, full, &[], Range::All, T, opts(), |_, _| {})
        .await
        .unwrap();
    let refs = repo.service("churn_v1").unwrap();
    let ents: Vec<_> = (1..=4)
        .map(|i| vec![("user_id".to_string(), quiver_core::store::KeyValue::Int(i))])
        .collect();
    let a = quiver_app::online::get(&repo, inc, &refs, &ents, T)
        .await
        .unwrap();
    let b = quiver_app::online::get(&repo, full, &refs, &ents, T)
        .await
        .unwrap();
    let strip = |v: Vec<Vec<quiver_app::online::Value>>| {
        v.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|x| (x.value, x.status, x.event_time))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(a), strip(b));
    assert_eq!(
        inc.watermark("user_purchases").await.unwrap(),
        Some(T),
        "{}",
        backend.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_jobs_build_register_and_report_failures() {
    use quiver_grpc::proto::training_service_client::TrainingServiceClient;
    use quiver_grpc::proto::{
        GetJobRequest, Job, JobState, ListJobsRequest, TrainingSetRequest,
        registry_service_client::RegistryServiceClient, training_set_request::Kind as TKind,
    };
    let dir = sample_copy();
    let d = dir.path().to_path_buf();
    let repo = Repo::load(&d).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    let server = Server::start(repo, store).await;
    let channel = connect(&server.url).await;
    let mut client = TrainingServiceClient::new(channel.clone());
    let path = |f: &str| d.join(f).display().to_string();
    let service = |out: &str, register: &str| TrainingSetRequest {
        spine: path("spine.csv"),
        kind: Some(TKind::FeatureService("churn_v1".into())),
        out: out.into(),
        register: register.into(),
        ..Default::default()
    };
    // a bounded wait for a job's end
    async fn finish(
        client: &mut TrainingServiceClient<tonic::transport::Channel>,
        id: &str,
    ) -> Job {
        for _ in 0..40 {
            let j = client
                .get_job(GetJobRequest {
                    id: id.into(),
                    wait_millis: 500,
                })
                .await
                .unwrap()
                .into_inner();
            if j.state != JobState::Running as i32 {
                return j;
            }
        }
        panic!("job {id} did not end in 20 s");
    }

    // the sample's training set, as `quiver join` writes it
    let started = client
        .start_training_set(service(&path("t.csv"), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.id, "job-1");
    let done = finish(&mut client, &started.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
    assert_eq!((done.rows, done.columns), (4, 10));
    assert!(
        done.plan
            .iter()
            .any(|l| l.contains("view `user_purchases`")),
        "{done:?}"
    );
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/sample_churn_v1.csv"),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(d.join("t.csv")).unwrap(), golden);

    // registered with its lineage: the registry service sees the new dataset version
    let reg = client
        .start_training_set(service("", "train"))
        .await
        .unwrap()
        .into_inner();
    let reg = finish(&mut client, &reg.id).await;
    assert_eq!(reg.state, JobState::Succeeded as i32, "{reg:?}");
    assert!(reg.registered.starts_with("train@1"), "{reg:?}");
    let lineage = RegistryServiceClient::new(channel.clone())
        .lineage(quiver_grpc::proto::LineageRequest {
            artifact: "train@1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{lineage:?}").contains("spine"), "{lineage:?}");

    // refused before a job exists: each names what is wrong
    let refused = |r: TrainingSetRequest| {
        let mut c = client.clone();
        async move { c.start_training_set(r).await.unwrap_err() }
    };
    let e = refused(TrainingSetRequest {
        kind: Some(TKind::Features(FeatureList {
            val: vec!["user_purchases:nope".into()],
        })),
        ..service(&path("u.csv"), "")
    })
    .await;
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("nope"), "{e:?}");
    let e = refused(TrainingSetRequest {
        spine: path("missing.parquet"),
        ..service(&path("u.csv"), "")
    })
    .await;
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("missing.parquet"), "{e:?}");
    let e = refused(service("", "")).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = refused(TrainingSetRequest {
        kind: None,
        ..service(&path("u.csv"), "")
    })
    .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(!d.join("u.csv").exists());

    // a job that fails while running says why, and leaves no output
    std::fs::write(d.join("bad.csv"), "user_id,event_timestamp\n1,not a time\n").unwrap();
    let bad = client
        .start_training_set(TrainingSetRequest {
            spine: path("bad.csv"),
            ..service(&path("v.csv"), "")
        })
        .await
        .unwrap()
        .into_inner();
    let bad = finish(&mut client, &bad.id).await;
    assert_eq!(bad.state, JobState::Failed as i32, "{bad:?}");
    assert!(bad.error.contains("event_timestamp"), "{bad:?}");
    assert!(!d.join("v.csv").exists());

    let e = client
        .get_job(GetJobRequest {
            id: "job-99".into(),
            wait_millis: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let all = client
        .list_jobs(ListJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = all.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-3", "job-2", "job-1"]);
    server.stop().await;
}

// ---- Issue 18: defects found by a hostile tryout, through a real gRPC client.

/// Issue 18.1 (critical): `StartTrainingSet` wrote its output anywhere the server could
/// (replacing existing files, creating files under /etc, `../../x.parquet` relative to the
/// server's folder) and read spines from anywhere. Requests now read and write only inside
/// the repository and the --data-root folders, never over an existing file unless they say
/// so, and are refused before any file is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_are_refused_before_any_file_is_opened() {
    use quiver_grpc::proto::training_service_client::TrainingServiceClient;
    use quiver_grpc::proto::{
        GetJobRequest, JobState, TrainingSetRequest, training_set_request::Kind as TKind,
    };
    let dir = sample_copy();
    let d = dir.path().to_path_buf();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret.csv");
    std::fs::write(&secret, "user_id,hunter2-the-secret\n1,2\n").unwrap();
    let victim = elsewhere.path().join("victim.parquet");
    std::fs::write(&victim, "precious").unwrap();
    let roots = tempfile::tempdir().unwrap();
    let repo = Repo::load(&d).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    let server = Server::start_with(
        repo,
        store,
        quiver_grpc::server::ServeOptions {
            data_roots: vec![roots.path().to_path_buf()],
            ..Default::default()
        },
    )
    .await;
    let mut client = TrainingServiceClient::new(connect(&server.url).await);
    let req = |spine: &str, out: &str| TrainingSetRequest {
        spine: spine.into(),
        kind: Some(TKind::FeatureService("churn_v1".into())),
        out: out.into(),
        ..Default::default()
    };
    let spine = d.join("spine.csv").display().to_string();
    let refused = |r: TrainingSetRequest| {
        let mut c = client.clone();
        async move { c.start_training_set(r).await.unwrap_err() }
    };
    // writes outside: an existing file elsewhere, /etc, a path climbing out of the repository
    for out in [
        victim.display().to_string(),
        "/etc/quiver-hostile-test.parquet".to_string(),
        "../../quiver-hostile-test.parquet".to_string(),
        // beside the repository's folder, named after it: no other run made it
        format!(
            "{}/../{}-x.parquet",
            d.display(),
            d.file_name().unwrap().to_string_lossy()
        ),
    ] {
        let e = refused(req(&spine, &out)).await;
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{out}: {e:?}");
        assert!(e.message().contains("--data-root"), "{out}: {e:?}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!Path::new("/etc/quiver-hostile-test.parquet").exists());
    assert!(!d.join("../../quiver-hostile-test.parquet").exists());
    assert!(
        !d.join(format!(
            "../{}-x.parquet",
            d.file_name().unwrap().to_string_lossy()
        ))
        .exists()
    );
    // reads outside: the spine's first line is never echoed
    for s in [
        secret.display().to_string(),
        "../../../../etc/passwd".to_string(),
    ] {
        let e = refused(req(&s, "t.csv")).await;
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{s}: {e:?}");
        assert!(!e.message().contains("hunter2"), "{e:?}");
    }
    // an existing file in the repository is replaced only when the request says so
    std::fs::write(d.join("keep.csv"), "mine").unwrap();
    let e = refused(req(&spine, "keep.csv")).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("overwrite"), "{e:?}");
    assert_eq!(std::fs::read(d.join("keep.csv")).unwrap(), b"mine");
    async fn finish(
        client: &mut TrainingServiceClient<tonic::transport::Channel>,
        id: &str,
    ) -> quiver_grpc::proto::Job {
        for _ in 0..40 {
            let j = client
                .get_job(GetJobRequest {
                    id: id.into(),
                    wait_millis: 500,
                })
                .await
                .unwrap()
                .into_inner();
            if j.state != JobState::Running as i32 {
                return j;
            }
        }
        panic!("job {id} did not end in 20 s");
    }
    let job = client
        .start_training_set(TrainingSetRequest {
            overwrite: true,
            ..req("spine.csv", "keep.csv")
        })
        .await
        .unwrap()
        .into_inner();
    let job = finish(&mut client, &job.id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{job:?}");
    assert_ne!(std::fs::read(d.join("keep.csv")).unwrap(), b"mine");
    // relative paths start at the repository; a --data-root is allowed
    let into_root = roots.path().join("t.parquet").display().to_string();
    let job = client
        .start_training_set(req("spine.csv", &into_root))
        .await
        .unwrap()
        .into_inner();
    let job = finish(&mut client, &job.id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{job:?}");
    assert!(roots.path().join("t.parquet").exists());
    server.stop().await;
}

/// Issue 18.2: a malformed Parquet spine left the job RUNNING for ever with an empty error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_parquet_spine_fails_the_job_naming_the_file() {
    use quiver_grpc::proto::training_service_client::TrainingServiceClient;
    use quiver_grpc::proto::{
        GetJobRequest, JobState, TrainingSetRequest, training_set_request::Kind as TKind,
    };
    let dir = sample_copy();
    let d = dir.path().to_path_buf();
    let mut bad = b"PAR1".to_vec();
    bad.extend(std::iter::repeat_n(0xFFu8, 100));
    bad.extend(b"PAR1");
    std::fs::write(d.join("bad.parquet"), bad).unwrap();
    let repo = Repo::load(&d).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    let server = Server::start(repo, store).await;
    let mut client = TrainingServiceClient::new(connect(&server.url).await);
    let job = client
        .start_training_set(TrainingSetRequest {
            spine: "bad.parquet".into(),
            kind: Some(TKind::FeatureService("churn_v1".into())),
            out: "o.csv".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    for _ in 0..40 {
        let j = client
            .get_job(GetJobRequest {
                id: job.id.clone(),
                wait_millis: 500,
            })
            .await
            .unwrap()
            .into_inner();
        if j.state != JobState::Running as i32 {
            last = Some(j);
            break;
        }
    }
    let j = last.expect("the job never ended");
    assert_eq!(j.state, JobState::Failed as i32, "{j:?}");
    assert!(j.error.contains("bad.parquet"), "{j:?}");
    assert!(!d.join("o.csv").exists());
    server.stop().await;
}

/// Raw bytes as a gRPC message, to send what no generated client would.
#[derive(Debug, Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Issue 18.9: random bytes were INTERNAL; an overflowing push was INTERNAL "see the server
/// log"; a duplicate feature or an empty list were NOT_FOUND; an echoed 1 MB feature name or
/// a 100k-character job id made the client see RESOURCE_EXHAUSTED; a push with a null join
/// key was accepted as `rows=1 entities=0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_name_the_client_error() {
    use quiver_grpc::proto::training_service_client::TrainingServiceClient;
    use quiver_grpc::proto::{GetJobRequest, PushRequest};
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let server = Server::start(repo, store).await;
    let channel = connect(&server.url).await;
    let mut client = OnlineServiceClient::new(channel.clone());

    // random bytes to every method of the online service
    for method in ["GetOnlineFeatures", "Push"] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = format!("/quiver.v1.OnlineService/{method}");
        let e = grpc
            .unary(
                tonic::Request::new(vec![0xff, 0x13, 0x37, 0x00, 0x8a, 0xff, 0xff]),
                http::uri::PathAndQuery::try_from(path).unwrap(),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{method}: {e:?}");
    }

    // a duplicate feature and an empty list are malformed requests, not unknown names
    for features in [vec!["user_profile:age", "user_profile:age"], vec![]] {
        let e = client
            .get_online_features(request(&features, vec![("user_id", ints(&[1]))]))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{features:?}: {e:?}"
        );
    }
    let e = client
        .get_online_features(request(&["user_profile"], vec![("user_id", ints(&[1]))]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("view:feature"), "{e:?}");

    // a 1 MB name is echoed cut short, so the status still reaches the client
    let long = format!("user_profile:{}", "x".repeat(1 << 20));
    let e = client
        .get_online_features(request(&[long.as_str()], vec![("user_id", ints(&[1]))]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{:?}", e.code());
    assert!(e.message().len() < 4096, "{}", e.message().len());
    assert!(
        e.message().contains("has no feature"),
        "{}",
        &e.message()[..100]
    );
    let e = TrainingServiceClient::new(channel.clone())
        .get_job(GetJobRequest {
            id: "j".repeat(100_000),
            wait_millis: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{:?}", e.code());
    assert!(e.message().len() < 4096);

    // a push whose rows make an integer sum leave Int64 says so
    let push = |user: Value, amt: i64| PushRequest {
        feature_view: "user_purchases".into(),
        columns: [
            ("user_id", RepeatedValue { val: vec![user] }),
            ("purchase_date", strs(&["2024-02-08T00:00:00Z"])),
            ("ingested_at", strs(&["2024-02-08T00:00:00Z"])),
            ("purchase_amt", ints(&[amt])),
            ("category", strs(&["clothing"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        to_offline: false,
        at_micros: Some(T),
    };
    let e = client
        .push(push(
            Value {
                val: Some(Val::Int64Val(1)),
            },
            i64::MAX,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("overflows"), "{e:?}");
    // a row without its join key is refused, naming the row
    let e = client.push(push(Value { val: None }, 5)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("row 0"), "{e:?}");
    assert!(e.message().contains("user_id"), "{e:?}");
    server.stop().await;
}

// ---- Arrow Flight on the same port (issue 22).

/// A Flight client on `channel`.
fn flight(channel: tonic::transport::Channel) -> arrow_flight::FlightClient {
    arrow_flight::FlightClient::new(channel)
}

/// Upload `batches` as the spine of `command`.
async fn put_spine(
    client: &mut arrow_flight::FlightClient,
    command: &str,
    batches: Vec<datafusion::arrow::array::RecordBatch>,
) -> Result<serde_json::Value, arrow_flight::error::FlightError> {
    use futures::StreamExt;
    let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_cmd(
            command.to_string(),
        )))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let mut results = client.do_put(data).await?;
    let mut last = serde_json::Value::Null;
    while let Some(r) = results.next().await {
        last = serde_json::from_slice(&r?.app_metadata).unwrap();
    }
    Ok(last)
}

/// The batches of a ticket's stream and the `app_metadata` of its last message.
async fn fetch(
    client: &mut arrow_flight::FlightClient,
    ticket: arrow_flight::Ticket,
) -> Result<
    (
        Vec<datafusion::arrow::array::RecordBatch>,
        Option<serde_json::Value>,
    ),
    arrow_flight::error::FlightError,
> {
    use arrow_flight::decode::DecodedPayload;
    use futures::StreamExt;
    let mut decoded = client.do_get(ticket).await?.into_inner();
    let (mut batches, mut summary) = (Vec::new(), None);
    while let Some(d) = decoded.next().await {
        let d = d?;
        if !d.inner.app_metadata.is_empty() {
            summary = Some(serde_json::from_slice(&d.inner.app_metadata).unwrap());
        }
        if let DecodedPayload::RecordBatch(b) = d.payload {
            batches.push(b);
        }
    }
    Ok((batches, summary))
}

/// The spine file's rows as a client would send them, in two batches.
async fn spine_batches(file: &Path) -> Vec<datafusion::arrow::array::RecordBatch> {
    let ctx = datafusion::prelude::SessionContext::new();
    let (schema, batches) = quiver_offline::source::read_table(&ctx, file)
        .await
        .unwrap();
    let all = datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap();
    let half = all.num_rows() / 2;
    vec![all.slice(0, half), all.slice(half, all.num_rows() - half)]
}

fn csv_of(batches: &[datafusion::arrow::array::RecordBatch], dir: &Path, name: &str) -> String {
    let all = datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
    let out = dir.join(name);
    quiver_offline::source::write_table(&out, &all).unwrap();
    std::fs::read_to_string(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_streams_training_sets_and_datasets() {
    let dir = sample_copy();
    let d = dir.path().to_path_buf();
    let repo = Repo::load(&d).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    let server = Server::start(repo, store).await;
    let mut client = flight(connect(&server.url).await);
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/sample_churn_v1.csv"),
    )
    .unwrap();
    let spine = spine_batches(&d.join("spine.csv")).await;

    // Feast's flow: DoPut the spine on the command, GetFlightInfo, DoGet its ticket
    let command =
        r#"{"api":"get_historical_features","feature_service":"churn_v1","command_id":"a"}"#;
    let put = put_spine(&mut client, command, spine.clone())
        .await
        .unwrap();
    assert_eq!(put["rows"], 4, "{put}");
    let info = client
        .get_flight_info(arrow_flight::FlightDescriptor::new_cmd(command))
        .await
        .unwrap();
    assert_eq!(info.total_records, 4);
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let (batches, summary) = fetch(&mut client, ticket.clone()).await.unwrap();
    assert_eq!(csv_of(&batches, &d, "flight.csv"), golden);
    let summary = summary.expect("a summary ends the stream");
    assert_eq!(
        (summary["rows"].clone(), summary["columns"].clone()),
        (4.into(), 10.into())
    );
    assert!(summary["registered"].is_null(), "{summary}");
    // an upload is fetched once
    let e = fetch(&mut client, ticket).await.unwrap_err();
    assert!(e.to_string().contains("DoPut"), "{e}");

    // registered: the training set and its uploaded spine become dataset versions
    let command =
        r#"{"api":"get_historical_features","feature_service":"churn_v1","register":"train"}"#;
    put_spine(&mut client, command, spine.clone())
        .await
        .unwrap();
    let (batches, summary) = fetch(&mut client, arrow_flight::Ticket::new(command))
        .await
        .unwrap();
    assert_eq!(csv_of(&batches, &d, "registered.csv"), golden);
    let summary = summary.unwrap();
    assert!(
        summary["registered"]
            .as_str()
            .unwrap()
            .starts_with("train@1"),
        "{summary}"
    );
    let dataset = r#"{"api":"get_dataset","name":"train@1"}"#;
    let info = client
        .get_flight_info(arrow_flight::FlightDescriptor::new_cmd(dataset))
        .await
        .unwrap();
    let (batches, _) = fetch(&mut client, info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(csv_of(&batches, &d, "dataset.csv"), golden);
    let listed: Vec<serde_json::Value> = {
        use futures::TryStreamExt;
        client
            .list_flights(Vec::<u8>::new())
            .await
            .unwrap()
            .map_ok(|i| serde_json::from_slice(&i.app_metadata).unwrap())
            .try_collect()
            .await
            .unwrap()
    };
    let names: Vec<String> = listed
        .iter()
        .map(|v| {
            format!(
                "{}@{} {} {}",
                v["name"], v["version"], v["kind"], v["operation"]
            )
        })
        .collect();
    assert!(
        names.contains(&r#""train"@1 "training" "join""#.to_string())
            && names.contains(&r#""train_spine"@1 "spine" "upload""#.to_string()),
        "{names:?}"
    );
    let code = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other}"),
    };
    // a recorded spine by name, with no upload, a pinned source version and time travel to
    // now (the versions the registration read)
    let by_name = format!(
        r#"{{"api":"get_historical_features","feature_service":"churn_v1","spine":"train_spine@1","source_versions":["purchases@1"],"as_of":{}}}"#,
        quiver_core::time::now_micros()
    );
    let (batches, _) = fetch(&mut client, arrow_flight::Ticket::new(by_name))
        .await
        .unwrap();
    assert_eq!(csv_of(&batches, &d, "by_name.csv"), golden);
    let (c, m) = code(
        fetch(
            &mut client,
            arrow_flight::Ticket::new(
                r#"{"api":"get_historical_features","feature_service":"churn_v1","spine":"train_spine@1","as_of":"2000-01-01T00:00:00Z"}"#,
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(c, tonic::Code::NotFound, "{m}");
    assert!(m.contains("2000-01-01"), "{m}");

    // errors are statuses naming what is wrong, never a dropped stream
    let (c, m) = code(
        put_spine(
            &mut client,
            r#"{"api":"get_historical_features","features":["user_purchases:nope"]}"#,
            spine.clone(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(c, tonic::Code::NotFound, "{m}");
    assert!(m.contains("nope"), "{m}");
    let (c, m) = code(
        client
            .get_flight_info(arrow_flight::FlightDescriptor::new_cmd(
                r#"{"api":"get_historical_features","feature_service":"churn_v1","spine_tmestamp":"t"}"#,
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, tonic::Code::InvalidArgument, "{m}");
    assert!(m.contains("spine_tmestamp"), "{m}");
    let bad_ts = r#"{"api":"get_historical_features","feature_service":"churn_v1","spine_timestamp":"when"}"#;
    put_spine(&mut client, bad_ts, spine.clone()).await.unwrap();
    let (c, m) = code(
        fetch(&mut client, arrow_flight::Ticket::new(bad_ts))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, tonic::Code::InvalidArgument, "{m}");
    assert!(m.contains("when"), "{m}");
    let (c, m) = code(
        fetch(
            &mut client,
            arrow_flight::Ticket::new(r#"{"api":"get_dataset","name":"nope@3"}"#),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(c, tonic::Code::NotFound, "{m}");
    assert!(m.contains("nope"), "{m}");
    // a spine named by path is confined to the repository and the data roots, as for jobs
    for spine in ["../../../../etc/passwd", "/etc/passwd"] {
        let cmd = format!(
            r#"{{"api":"get_historical_features","feature_service":"churn_v1","spine":"{spine}"}}"#
        );
        let (c, m) = code(
            fetch(&mut client, arrow_flight::Ticket::new(cmd))
                .await
                .unwrap_err(),
        );
        assert_eq!(c, tonic::Code::PermissionDenied, "{spine}: {m}");
        assert!(m.contains("--data-root") && !m.contains("root:"), "{m}");
    }
    // the server still answers
    let (batches, _) = fetch(&mut client, arrow_flight::Ticket::new(dataset))
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    server.stop().await;
}

// ---- Serving safely (issue 23): tokens and roles, audit, TLS, limits, fuzzing, load.

/// A token of each role in `repo`'s registry, and the server's view of them.
fn tokens(
    repo: &Repo,
) -> (
    std::sync::Arc<quiver_app::auth::Tokens>,
    [(String, &'static str); 3],
) {
    use quiver_app::auth::{Role, Tokens, create};
    let reg = quiver_registry::Registry::open(&repo.registry).unwrap();
    let made = [
        (
            create(&reg, "svc-reader", Role::Reader).unwrap().0,
            "svc-reader",
        ),
        (
            create(&reg, "svc-writer", Role::Writer).unwrap().0,
            "svc-writer",
        ),
        (
            create(&reg, "svc-admin", Role::Admin).unwrap().0,
            "svc-admin",
        ),
    ];
    let t = Tokens::load(repo.registry.clone(), reg.tokens().unwrap());
    (t, made)
}

/// `req` carrying `token` as a bearer token (none when empty).
fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
}

fn a_push(user: i64, amt: i64) -> quiver_grpc::proto::PushRequest {
    quiver_grpc::proto::PushRequest {
        feature_view: "user_purchases".into(),
        columns: [
            ("user_id", ints(&[user])),
            ("purchase_date", strs(&["2024-02-08T00:00:00Z"])),
            ("ingested_at", strs(&["2024-02-08T00:00:00Z"])),
            ("purchase_amt", ints(&[amt])),
            ("category", strs(&["clothing"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        to_offline: false,
        at_micros: Some(T),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_every_method_and_writes_are_audited() {
    use quiver_grpc::proto::registry_service_client::RegistryServiceClient;
    use quiver_grpc::proto::training_service_client::TrainingServiceClient;
    use quiver_grpc::proto::{ListModelsRequest, RegisterModelRequest, TrainingSetRequest};
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let (tokens, [(reader, _), (writer, _), (admin, _)]) = tokens(&repo);
    let log = dir.path().join("audit.log");
    let options = quiver_grpc::server::ServeOptions {
        tokens: Some(tokens),
        auditor: quiver_app::audit::Auditor::to(std::sync::Arc::new(
            quiver_app::audit::Audit::open(&log).unwrap(),
        )),
        ..Default::default()
    };
    let server = Server::start_with(repo.clone(), store.clone(), options).await;
    let channel = connect(&server.url).await;
    let mut online = OnlineServiceClient::new(channel.clone());
    let mut registry = RegistryServiceClient::new(channel.clone());
    let mut training = TrainingServiceClient::new(channel.clone());
    let lookup = || request(&["user_profile:age"], vec![("user_id", ints(&[1]))]);

    // health is open to anyone
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    // no token, a forged one, a malformed header: UNAUTHENTICATED, for every kind of method
    // the reader's token with its last character changed (to another one, whatever it was)
    let last = if reader.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &reader[..reader.len() - 1]);
    for token in ["", forged.as_str(), "nonsense"] {
        let e = online
            .get_online_features(bearer(token, lookup()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token}: {e:?}");
        let e = online.push(bearer(token, a_push(1, 5))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        let e = registry
            .list_models(bearer(token, ListModelsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    // a reader looks up, and is refused writes naming the role needed
    online
        .get_online_features(bearer(&reader, lookup()))
        .await
        .unwrap();
    let e = online
        .push(bearer(&reader, a_push(1, 5)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("writer"), "{e:?}");
    let register = || RegisterModelRequest {
        name: "m".into(),
        artifact: b"weights".to_vec(),
        dataset: "train@1".into(),
        ..Default::default()
    };
    for token in [&reader, &writer] {
        let e = registry
            .register_model(bearer(token, register()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("admin"), "{e:?}");
    }
    let e = training
        .start_training_set(bearer(
            &reader,
            TrainingSetRequest {
                spine: "spine.csv".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Flight: a reader lists datasets but may not upload or build a training set
    let mut fl = arrow_flight::FlightClient::new(channel.clone());
    fl.add_header("authorization", &format!("Bearer {reader}"))
        .unwrap();
    {
        use futures::TryStreamExt;
        let listed: Vec<arrow_flight::FlightInfo> = fl
            .list_flights(Vec::<u8>::new())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(listed.is_empty(), "no dataset is recorded yet");
    }
    let spine = spine_batches(&dir.path().join("spine.csv")).await;
    let cmd = r#"{"api":"get_historical_features","feature_service":"churn_v1"}"#;
    let e = put_spine(&mut fl, cmd, spine.clone()).await.unwrap_err();
    assert!(
        e.to_string().contains("PermissionDenied") || e.to_string().contains("writer"),
        "{e}"
    );
    let e = fetch(
        &mut fl,
        arrow_flight::Ticket::new(
            r#"{"api":"get_historical_features","feature_service":"churn_v1","spine":"spine.csv"}"#,
        ),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("writer"), "{e}");
    // nothing the refused calls asked for was written
    assert_eq!(store.pushed("purchases").await.unwrap().pushes, 0);
    assert!(
        quiver_registry::Registry::open(&repo.registry)
            .unwrap()
            .all_model_versions()
            .unwrap()
            .is_empty()
    );
    // a writer pushes; an admin may do what a writer may
    online.push(bearer(&writer, a_push(1, 5))).await.unwrap();
    online.push(bearer(&admin, a_push(2, 7))).await.unwrap();
    let e = online
        .push(bearer(&writer, a_push(1, i64::MAX)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let mut wfl = arrow_flight::FlightClient::new(channel.clone());
    wfl.add_header("authorization", &format!("Bearer {writer}"))
        .unwrap();
    put_spine(&mut wfl, cmd, spine).await.unwrap();
    let (batches, _) = fetch(&mut wfl, arrow_flight::Ticket::new(cmd))
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);

    // a revoked token stops working without a restart (reloaded within a second or two)
    quiver_registry::Registry::open(&repo.registry)
        .unwrap()
        .revoke_token("svc-writer", quiver_core::time::now_micros())
        .unwrap();
    let mut refused = None;
    for _ in 0..50 {
        match online.get_online_features(bearer(&writer, lookup())).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        refused.expect("revoked within 5 s").code(),
        tonic::Code::Unauthenticated
    );
    server.stop().await;

    // the audit log: one line per write, with the token's name (never the token) and outcome
    let text = std::fs::read_to_string(&log).unwrap();
    for t in [&reader, &writer, &admin] {
        assert!(
            !text.contains(t.as_str()),
            "a token leaked into the audit log"
        );
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["token"].as_str().unwrap().to_string(),
                l["method"].as_str().unwrap().to_string(),
                l["target"].as_str().unwrap().to_string(),
                l["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_string(), b.to_string(), c.to_string(), d.to_string())
    };
    assert_eq!(
        summary,
        [
            s("svc-writer", "OnlineService/Push", "user_purchases", "ok"),
            s("svc-admin", "OnlineService/Push", "user_purchases", "ok"),
            s(
                "svc-writer",
                "OnlineService/Push",
                "user_purchases",
                "error"
            ),
            s("svc-writer", "get_historical_features", "-", "ok"),
        ]
    );
    assert!(
        lines
            .iter()
            .all(|l| l["time"].as_str().unwrap().starts_with("20"))
    );
}

/// A CA, and a certificate it signs for `names` (PEM: cert, key).
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_with_a_throwaway_ca() {
    use quiver_grpc::client::{ClientOptions, remote_get};
    let dir = sample_copy();
    let d = dir.path();
    let repo = Repo::load(d).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let ca = Ca::new("quiver test CA");
    let other = Ca::new("another CA");
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ca.sign(&["svc-a"]);
    let (stranger_cert, stranger_key) = other.sign(&["svc-b"]);
    for (name, text) in [
        ("ca.pem", &ca.pem),
        ("other.pem", &other.pem),
        ("server.pem", &cert),
        ("server.key", &key),
        ("client.pem", &client_cert),
        ("client.key", &client_key),
        ("stranger.pem", &stranger_cert),
        ("stranger.key", &stranger_key),
    ] {
        std::fs::write(d.join(name), text).unwrap();
    }
    let refs = repo
        .resolve_refs(&["user_profile:age".to_string()])
        .unwrap();
    let ents = vec![vec![(
        "user_id".to_string(),
        quiver_core::store::KeyValue::Int(1),
    )]];
    let get = |addr: String, o: ClientOptions| {
        let (refs, ents) = (refs.clone(), ents.clone());
        async move { remote_get(&addr, &o, &refs, &ents, T).await }
    };
    let opts = |ca: &str, id: Option<(&str, &str)>| ClientOptions {
        token: None,
        tls_ca: Some(d.join(ca)),
        tls_identity: id.map(|(c, k)| (d.join(c), d.join(k))),
    };

    // server TLS: a client trusting the CA looks up; one trusting another CA cannot connect
    let tls = quiver_grpc::server::TlsFiles {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: None,
    };
    let server = Server::start_with(
        repo.clone(),
        store.clone(),
        quiver_grpc::server::ServeOptions {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )
    .await;
    let addr = server.url.replace("http://", "");
    // the server is up once a trusting client gets through (a bounded number of tries)
    let mut values = None;
    for _ in 0..100 {
        if let Ok(v) = get(addr.clone(), opts("ca.pem", None)).await {
            values = Some(v);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let values = values.expect("a TLS lookup");
    assert_eq!(values[0][0].value, quiver_core::store::Scalar::Int(35));
    assert!(get(addr.clone(), opts("other.pem", None)).await.is_err());
    // a plaintext client gets nothing either
    assert!(get(addr.clone(), ClientOptions::default()).await.is_err());
    server.stop().await;

    // mutual TLS: no client certificate, or one from another CA, is refused
    let server = Server::start_with(
        repo,
        store,
        quiver_grpc::server::ServeOptions {
            tls: Some(quiver_grpc::server::TlsFiles {
                client_ca: Some(d.join("ca.pem")),
                ..tls
            }),
            ..Default::default()
        },
    )
    .await;
    let addr = server.url.replace("http://", "");
    let mut ok = false;
    for _ in 0..100 {
        if get(
            addr.clone(),
            opts("ca.pem", Some(("client.pem", "client.key"))),
        )
        .await
        .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "a client with a certificate from the CA looks up");
    assert!(get(addr.clone(), opts("ca.pem", None)).await.is_err());
    assert!(
        get(
            addr.clone(),
            opts("ca.pem", Some(("stranger.pem", "stranger.key")))
        )
        .await
        .is_err()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_resource_exhausted_and_expired_deadlines() {
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let server = Server::start_with(
        repo,
        store,
        quiver_grpc::server::ServeOptions {
            max_entities: 3,
            max_message_bytes: 4096,
            ..Default::default()
        },
    )
    .await;
    let mut client = OnlineServiceClient::new(connect(&server.url).await);
    client
        .get_online_features(request(
            &["user_profile:age"],
            vec![("user_id", ints(&[1, 2, 3]))],
        ))
        .await
        .unwrap();
    let e = client
        .get_online_features(request(
            &["user_profile:age"],
            vec![("user_id", ints(&[1, 2, 3, 4]))],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-entities"), "{e:?}");
    // a message over the size bound: refused before it is decoded, as gRPC's own servers say
    let long = "x".repeat(5000);
    let e = client
        .get_online_features(request(
            &["user_profile:age"],
            vec![(long.as_str(), ints(&[1]))],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-message-bytes"), "{e:?}");
    // a deadline that passed before the request arrived: not computed
    let mut late = tonic::Request::new(request(
        &["user_profile:age"],
        vec![("user_id", ints(&[1]))],
    ));
    late.metadata_mut()
        .insert("grpc-timeout", "0n".parse().unwrap());
    let e = client.get_online_features(late).await.unwrap_err();
    // The server says DEADLINE_EXCEEDED; tonic's client, which times the same deadline, may
    // give up first (CANCELLED, "Timeout expired"). That the server does not compute it is
    // the guard's unit test.
    assert!(
        e.code() == tonic::Code::DeadlineExceeded
            || (e.code() == tonic::Code::Cancelled && e.message().contains("Timeout")),
        "{e:?}"
    );
    server.stop().await;
}

/// Random and truncated protobuf bytes, huge repeated fields and absurd values to every
/// method: statuses, never a panic or a dropped server; health and a valid lookup still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_the_grpc_surface_leaves_the_server_answering() {
    use prost::Message;
    use rand::{Rng, SeedableRng};
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let server = Server::start(repo, store).await;
    let channel = connect(&server.url).await;
    let valid = request(&["user_profile:age"], vec![("user_id", ints(&[1]))]).encode_to_vec();
    let huge = request(
        &["user_profile:age"],
        vec![("user_id", ints(&(0..200_000).collect::<Vec<_>>()))],
    )
    .encode_to_vec();
    let absurd = quiver_grpc::proto::TrainingSetRequest {
        spine: "\u{0}../../".repeat(1000),
        register: "x".repeat(100_000),
        as_of_micros: Some(i64::MIN),
        ..Default::default()
    }
    .encode_to_vec();
    let methods = [
        "/quiver.v1.OnlineService/GetOnlineFeatures",
        "/quiver.v1.OnlineService/Push",
        "/quiver.v1.RegistryService/RegisterModel",
        "/quiver.v1.RegistryService/ListModels",
        "/quiver.v1.RegistryService/GetModel",
        "/quiver.v1.RegistryService/SelectBest",
        "/quiver.v1.RegistryService/Lineage",
        "/quiver.v1.TrainingService/StartTrainingSet",
        "/quiver.v1.TrainingService/GetJob",
        "/quiver.v1.TrainingService/ListJobs",
        "/arrow.flight.protocol.FlightService/GetFlightInfo",
        "/arrow.flight.protocol.FlightService/PollFlightInfo",
        "/arrow.flight.protocol.FlightService/GetSchema",
        "/arrow.flight.protocol.FlightService/DoAction",
    ];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(23);
    let started = std::time::Instant::now();
    let mut sent = 0;
    'outer: for round in 0..40 {
        for m in methods {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                break 'outer;
            }
            let body: Vec<u8> = match round % 5 {
                0 => (0..rng.random_range(0..256))
                    .map(|_| rng.random())
                    .collect(),
                1 => valid[..rng.random_range(0..valid.len())].to_vec(),
                2 => huge.clone(),
                3 => absurd.clone(),
                _ => {
                    let mut v = valid.clone();
                    for _ in 0..4 {
                        let i = rng.random_range(0..v.len());
                        v[i] = rng.random();
                    }
                    v
                }
            };
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let answered = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                grpc.unary(
                    tonic::Request::new(body),
                    http::uri::PathAndQuery::from_static(m),
                    Raw,
                ),
            )
            .await
            .expect("an answer within 10 s");
            if let Err(e) = answered {
                assert_ne!(e.code(), tonic::Code::Unknown, "{m}: {e:?}");
                assert_ne!(
                    e.code(),
                    tonic::Code::Unavailable,
                    "{m}: the server went away: {e:?}"
                );
            }
            sent += 1;
        }
    }
    assert!(sent >= methods.len() * 5, "{sent}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let got = OnlineServiceClient::new(channel)
        .get_online_features(request(
            &["user_profile:age"],
            vec![("user_id", ints(&[1]))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.results[0].values[0].val, Some(Val::Int64Val(35)));
    server.stop().await;
}

/// 16 clients look up for 30 s while pushes and materializations run: no error but the
/// expected, the p99 reported, one audit line per push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_under_load_with_pushes_and_materializations() {
    let dir = sample_copy();
    let repo = Repo::load(dir.path()).unwrap();
    let store = quiver_online::open(&repo).await.unwrap();
    materialize_at_t(&repo, store.as_ref()).await;
    let (tokens, [(reader, _), (writer, _), _]) = tokens(&repo);
    let log = dir.path().join("audit.log");
    let options = quiver_grpc::server::ServeOptions {
        tokens: Some(tokens),
        auditor: quiver_app::audit::Auditor::to(std::sync::Arc::new(
            quiver_app::audit::Audit::open(&log).unwrap(),
        )),
        ..Default::default()
    };
    let server = Server::start_with(repo.clone(), store.clone(), options).await;
    let channel = connect(&server.url).await;
    let run_for = std::time::Duration::from_secs(30);
    let started = std::time::Instant::now();
    let mut clients = Vec::new();
    for c in 0..16i64 {
        let mut client = OnlineServiceClient::new(channel.clone());
        let reader = reader.clone();
        clients.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            while started.elapsed() < run_for && latencies.len() < 1_000_000 {
                let t = std::time::Instant::now();
                let req = request(
                    &["user_purchases:amt_30d", "user_profile:age"],
                    vec![("user_id", ints(&[1 + c % 3]))],
                );
                match client.get_online_features(bearer(&reader, req)).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(e) => errors.push(e),
                }
            }
            (latencies, errors)
        }));
    }
    let pushes = {
        let mut client = OnlineServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < run_for && n < 10_000 {
                client
                    .push(bearer(&writer, a_push(100 + n, 5)))
                    .await
                    .unwrap();
                n += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            n
        })
    };
    let mut materializations = 0;
    while started.elapsed() < run_for && materializations < 1000 {
        materialize_at_t(&repo, store.as_ref()).await;
        materializations += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let pushed = pushes.await.unwrap();
    let mut all = Vec::new();
    for c in clients {
        let (l, e) = c.await.unwrap();
        assert!(
            e.is_empty(),
            "lookup errors under load: {:?}",
            &e[..e.len().min(3)]
        );
        all.extend(l);
    }
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    eprintln!(
        "load: {} lookups by 16 clients in {:.1} s ({:.0}/s), p50 {:?}, p99 {:?}; {} pushes, {} materializations",
        all.len(),
        started.elapsed().as_secs_f64(),
        all.len() as f64 / started.elapsed().as_secs_f64(),
        q(0.5),
        q(0.99),
        pushed,
        materializations
    );
    assert!(all.len() > 1000 && pushed > 10 && materializations > 2);
    server.stop().await;
    let audit = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, pushed, "one audit line per push");
    assert!(
        lines
            .iter()
            .all(|l| l["outcome"] == "ok" && l["token"] == "svc-writer")
    );
}
