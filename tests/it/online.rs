//! Online = offline: materialize random data as of T, look every entity up at T and at later
//! times, and compare with `quiver join` for spine rows (entity, lookup time) over the events
//! known at T — every aggregate kind, windows, offsets, closures, ttl.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use quiver_app::online::{Status, get, materialize};
use quiver_core::Repo;
use quiver_core::store::{KeyValue, Scalar};
use quiver_offline::{Engine, EngineOptions, JoinRequest};
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
      - { name: ml, agg: sum, column: x, offset: 3h, closed: left }
      - { name: nn, agg: count, column: x, window: 2h, offset: 30m, closed: neither }
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

/// On sled, a single Redis and a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_lookups_equal_the_offline_join() {
    for backend in quiver_online::testing::Backend::all() {
        online_equals_offline(&backend).await;
    }
}

async fn online_equals_offline(backend: &quiver_online::testing::Backend) {
    let (mut present, mut expired, mut moved) = (0, 0, 0);
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
        let end = rng.random_range(20..110) * H;
        // the offline side of later lookups: the events known at `end`
        let known = tempfile::tempdir().unwrap();
        let t = ev
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        let keep: datafusion::arrow::array::BooleanArray = t
            .iter()
            .map(|v| Some(v.is_some_and(|v| v <= end)))
            .collect();
        let ev_known = datafusion::arrow::compute::filter_record_batch(&ev, &keep).unwrap();
        for (d, b) in [(dir.path(), &ev), (known.path(), &ev_known)] {
            let f = std::fs::File::create(d.join("ev.parquet")).unwrap();
            let mut w = ArrowWriter::try_new(f, b.schema(), None).unwrap();
            w.write(b).unwrap();
            w.close().unwrap();
            std::fs::write(d.join("quiver.yaml"), YAML).unwrap();
        }
        let mut repo = Repo::load(dir.path()).unwrap();
        repo.online_store = backend.fresh();
        let store = quiver_online::open(&repo).await.unwrap();
        let store = store.as_ref();
        materialize(&repo, store, &[], end, EngineOptions::default(), |_, _| {})
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
        // at `end`, then as events leave windows (and enter offset ones), on and around
        // every edge: a window's value moves at exact microseconds
        let mut lookups = vec![
            end,
            end + 1,
            end + 30 * 60_000_000 - 1,
            end + 30 * 60_000_000,
        ];
        for _ in 0..12 {
            let at = end + rng.random_range(0..100 * H);
            lookups.extend([at, at - at % H, at - at % H - 1, at - at % H + 1]);
        }
        lookups.push(end + 1000 * H);
        lookups.retain(|&at| at >= end);
        let engine =
            Engine::new(Repo::load(known.path()).unwrap(), EngineOptions::default()).unwrap();
        let at_end = get(&repo, store, &refs, &entities, end).await.unwrap();
        for at in lookups {
            let online = get(&repo, store, &refs, &entities, at).await.unwrap();
            let spine = batch(vec![
                ("uid", Arc::new(Int64Array::from(uids.clone())) as ArrayRef),
                ("event_timestamp", ts(vec![Some(at); uids.len()])),
            ]);
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
                        "{}: seed {seed}, uid {u}, {r} materialized at {end}, looked up at {at}: online {:?} ({:?}), offline {:?}",
                        backend.name(),
                        on.value,
                        on.status,
                        col[e]
                    );
                    present += (on.status == Status::Present) as usize;
                    expired += (on.status == Status::Expired) as usize;
                    moved += (at > end && on.value != at_end[e][j].value) as usize;
                    if *u >= 30 {
                        assert_eq!(on.status, Status::NotFound, "uid {u} has no events");
                    }
                }
            }
        }
    }
    assert!(
        present > 100 && expired > 0 && moved > 100,
        "the cases cover values, expiry and windows moving after the materialization: \
         {present} present, {expired} expired, {moved} moved"
    );
}
