//! Online = offline: materialize random data as of T, look every entity up at T, and compare
//! with `quiver join` for spine rows (entity, T) — every aggregate kind, windows, ttl.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use quiver_core::Repo;
use quiver_core::store::{KeyValue, Scalar};
use quiver_offline::{Engine, EngineOptions, JoinRequest};
use quiver_server::online::{Status, get, materialize};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::*;

const YAML: &str = r#"
project: online
entities:
  user: { join_keys: [uid] }
sources:
  ev: { path: ev.parquet, timestamp: t }
feature_views:
  agg:
    entity: user
    source: ev
    features:
      - { name: n, agg: count, column: "*", window: 5h }
      - { name: s, agg: sum, column: x, window: 10h, closed: both }
      - { name: si, agg: sum, column: i }
      - { name: m, agg: mean, column: x, window: 24h, offset: 1h }
      - { name: lo, agg: min, column: s, window: 30h }
      - { name: hi, agg: max, column: x }
      - { name: f, agg: first, column: s, window: 48h }
      - { name: l, agg: last, column: x }
      - { name: sd, agg: stddev, column: x }
      - { name: v, agg: var, column: i, window: 72h }
      - { name: nd, agg: count_distinct, column: s, filter: "i > 0" }
  latest:
    entity: user
    source: ev
    ttl: 6h
    features:
      - { name: x }
      - { name: s }
"#;

fn close(a: &Scalar, b: &Scalar) -> bool {
    match (a, b) {
        (Scalar::Float(x), Scalar::Float(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_lookups_equal_the_offline_join() {
    let (mut present, mut expired) = (0, 0);
    for seed in 0..4u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let n = 400;
        let ev = batch(vec![
            (
                "uid",
                Arc::new(Int64Array::from(
                    (0..n)
                        .map(|_| rng.random_range(0..30))
                        .collect::<Vec<i64>>(),
                )) as ArrayRef,
            ),
            (
                "t",
                ts((0..n).map(|_| Some(rng.random_range(0..100) * H)).collect()),
            ),
            (
                "x",
                Arc::new(Float64Array::from(
                    (0..n)
                        .map(|_| (!rng.random_bool(0.1)).then(|| rng.random_range(-100.0..100.0)))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "i",
                Arc::new(Int64Array::from(
                    (0..n)
                        .map(|_| rng.random_range(-5..20))
                        .collect::<Vec<i64>>(),
                )),
            ),
            (
                "s",
                Arc::new(StringArray::from(
                    (0..n)
                        .map(|_| ["a", "b", "c"][rng.random_range(0..3)])
                        .collect::<Vec<_>>(),
                )),
            ),
        ]);
        let f = std::fs::File::create(dir.path().join("ev.parquet")).unwrap();
        let mut w = ArrowWriter::try_new(f, ev.schema(), None).unwrap();
        w.write(&ev).unwrap();
        w.close().unwrap();
        std::fs::write(dir.path().join("quiver.yaml"), YAML).unwrap();
        let repo = Repo::load(dir.path()).unwrap();
        let end = rng.random_range(20..110) * H;
        let store = quiver_online::SledStore::open(&repo.online_store).unwrap();
        materialize(&repo, &store, &[], end, EngineOptions::default(), |_, _| {})
            .await
            .unwrap();

        let refs: Vec<_> = repo
            .views
            .values()
            .flat_map(|v| {
                v.features
                    .iter()
                    .map(move |f| format!("{}:{}", v.name, f.name))
            })
            .collect();
        let refs = repo.resolve_refs(&refs).unwrap();
        let uids: Vec<i64> = (0..35).collect();
        let entities: Vec<_> = uids
            .iter()
            .map(|u| vec![("uid".to_string(), KeyValue::Int(*u))])
            .collect();
        let online = get(&repo, &store, &refs, &entities, end).unwrap();

        let spine = batch(vec![
            ("uid", Arc::new(Int64Array::from(uids.clone())) as ArrayRef),
            ("event_timestamp", ts(vec![Some(end); uids.len()])),
        ]);
        let engine = Engine::new(repo.clone(), EngineOptions::default()).unwrap();
        let req = JoinRequest {
            features: refs.clone(),
            spine_timestamp: None,
            full_names: true,
        };
        let offline = engine
            .join(spine.schema(), vec![spine], &req)
            .await
            .unwrap()
            .batch;
        for (j, r) in refs.iter().enumerate() {
            let col = Scalar::column(offline.column(2 + j).as_ref(), &r.feature).unwrap();
            for (e, u) in uids.iter().enumerate() {
                let on = &online[e][j];
                assert!(
                    close(&on.value, &col[e]),
                    "seed {seed}, uid {u}, {r} at {end}: online {:?} ({:?}), offline {:?}",
                    on.value,
                    on.status,
                    col[e]
                );
                present += (on.status == Status::Present) as usize;
                expired += (on.status == Status::Expired) as usize;
                if *u >= 30 {
                    assert_eq!(on.status, Status::NotFound, "uid {u} has no events");
                }
            }
        }
    }
    assert!(
        present > 100 && expired > 0,
        "the cases cover values and expiry: {present} present, {expired} expired"
    );
}
