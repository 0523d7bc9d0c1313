//! The gRPC server through a real tonic client on 127.0.0.1 (a free port): lookups, statuses,
//! bad requests mapped to status codes, health, and a graceful shutdown.

use std::path::Path;
use std::sync::Arc;

use quiver_core::Repo;
use quiver_offline::EngineOptions;
use quiver_server::proto::online_service_client::OnlineServiceClient;
use quiver_server::proto::{
    FeatureList, FieldStatus, GetOnlineFeaturesRequest, RepeatedValue, Value,
    get_online_features_request::Kind, value::Val,
};

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
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sample-data"),
        dir.path(),
    );
    let repo = Repo::load(dir.path()).unwrap();
    let store = Arc::new(quiver_online::SledStore::open(&repo.online_store).unwrap());
    quiver_server::online::materialize(
        &repo,
        store.as_ref(),
        &[],
        T,
        EngineOptions::default(),
        |_, _| {},
    )
    .await
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(quiver_server::grpc::serve(repo, store, listener, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}");
    let mut client = loop {
        match OnlineServiceClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };

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

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
