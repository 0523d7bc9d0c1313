//! A memory pool smaller than the data: the join still finishes, by sweeping partitions from
//! disk in buckets, and gives exactly the unbounded result.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use quiver_offline::{Engine, EngineOptions, JoinOutput, JoinRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::*;

const YAML: &str = r#"
project: mem
entities:
  user: { join_keys: [uid] }
sources:
  ev: { timestamp: t }
feature_views:
  v:
    entity: user
    source: ev
    features:
      - { name: s7, agg: sum, column: x, window: 7d }
      - { name: n30, agg: count, column: "*", window: 30d }
      - { name: mx, agg: max, column: x, window: 3d, closed: both }
      - { name: last_x, agg: last, column: x }
"#;

/// Join `refs` of `YAML` over `ev` in batches of `batch_size` on 2 partitions, in a pool of
/// `limit` bytes (unbounded when `None`).
async fn join_in_pool(
    ev: &RecordBatch,
    spine: &RecordBatch,
    refs: &[&str],
    batch_size: usize,
    limit: Option<usize>,
) -> JoinOutput {
    let opts = EngineOptions {
        target_partitions: 2,
        batch_size,
        memory_limit: limit,
        ..Default::default()
    };
    let e = Engine::new(repo(YAML), opts)
        .unwrap()
        .with_source_table("ev", mem_table(ev, batch_size));
    let req = JoinRequest {
        features: e.repo().resolve_refs(refs).unwrap(),
        ..Default::default()
    };
    e.join(spine.schema(), vec![spine.clone()], &req)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_memory_pool_spills_and_agrees() {
    let mut rng = SmallRng::seed_from_u64(7);
    let n = 120_000;
    let uid: Vec<i64> = (0..n).map(|_| rng.random_range(0..800)).collect();
    let t: Vec<Option<i64>> = (0..n)
        .map(|_| Some(rng.random_range(0..200) * DAY / 3))
        .collect();
    let x: Vec<Option<f64>> = (0..n)
        .map(|_| Some(rng.random_range(0..1000) as f64))
        .collect();
    let ev = batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("t", ts(t)),
        ("x", Arc::new(Float64Array::from(x))),
    ]);
    let m = 5_000;
    let suid: Vec<i64> = (0..m).map(|_| rng.random_range(0..850)).collect();
    let st: Vec<Option<i64>> = (0..m)
        .map(|_| Some(rng.random_range(0..70) * DAY))
        .collect();
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(suid)) as ArrayRef),
        ("event_timestamp", ts(st)),
    ]);
    let run = |limit: Option<usize>| {
        join_in_pool(
            &ev,
            &spine,
            &["v:s7", "v:n30", "v:mx", "v:last_x"],
            4096,
            limit,
        )
    };
    let free = run(None).await;
    assert_eq!(free.spilled_partitions, 0);
    // the events alone take ~3 MB in memory, ~9 MB with the sweep's working set
    let bounded = run(Some(2 << 20)).await;
    assert!(
        bounded.spilled_partitions > 0,
        "a 2 MB pool must force spilling"
    );
    assert_eq!(bounded.batch, free.batch);
    // Pools of every size between "nothing fits" and "everything fits" finish and agree: a
    // pool the operator fills would make DataFusion 55's RepartitionExec spill, and that
    // can hang (apache/datafusion#24883), so each run has a deadline.
    for limit in [1 << 20, 3 << 20, 4 << 20, 6 << 20, 8 << 20, 12 << 20] {
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), run(Some(limit)))
            .await
            .unwrap_or_else(|_| panic!("the join with a {limit}-byte pool did not finish"));
        assert_eq!(out.batch, free.batch, "pool of {limit} bytes");
    }
}

/// Batches spilled to disk are cut to the events the pack keeps by time, and lose none a
/// window admits: a spine in the middle of a long history, with short windows only and events
/// on every window edge, agrees with the unbounded join when it spills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_batches_cut_by_time_lose_no_event_a_window_admits() {
    let mut rng = SmallRng::seed_from_u64(11);
    let m = 3_000;
    let suid: Vec<i64> = (0..m).map(|_| rng.random_range(0..320)).collect();
    let st: Vec<i64> = (0..m)
        .map(|_| 150 * DAY + rng.random_range(0..10 * 24) * DAY / 24)
        .collect();
    // random events over 200 days, then (read last, so spilled) events on and around the
    // edges of every spine row's 7-day window: its end, its start, a microsecond either side
    let n = 60_000;
    let mut uid: Vec<i64> = (0..n).map(|_| rng.random_range(0..300)).collect();
    let mut t: Vec<i64> = (0..n)
        .map(|_| rng.random_range(0..200 * 24) * DAY / 24)
        .collect();
    for (&u, &s) in suid.iter().zip(&st) {
        for at in [s, s + 1, s - 7 * DAY, s - 7 * DAY + 1] {
            uid.push(u);
            t.push(at);
        }
    }
    let x: Vec<Option<f64>> = (0..uid.len())
        .map(|_| Some(rng.random_range(1..1000) as f64))
        .collect();
    let ev = batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("t", ts(t.into_iter().map(Some).collect())),
        ("x", Arc::new(Float64Array::from(x))),
    ]);
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(suid)) as ArrayRef),
        ("event_timestamp", ts(st.into_iter().map(Some).collect())),
    ]);
    let run = |limit: Option<usize>| join_in_pool(&ev, &spine, &["v:s7", "v:mx"], 2048, limit);
    let free = run(None).await;
    let bounded = tokio::time::timeout(std::time::Duration::from_secs(60), run(Some(1 << 20)))
        .await
        .expect("the bounded join did not finish");
    assert!(
        bounded.spilled_partitions > 0,
        "a 1 MB pool must force spilling"
    );
    assert_eq!(bounded.batch, free.batch);
}

/// A spine larger than the pool: it goes to disk by bucket with every event, each bucket is
/// packed and swept on its own, and the result is the unbounded one — rows without a key or
/// a time, duplicates and keys without events included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spine_larger_than_the_pool_is_swept_from_disk() {
    let mut rng = SmallRng::seed_from_u64(23);
    let n = 40_000;
    let uid: Vec<i64> = (0..n).map(|_| rng.random_range(0..600)).collect();
    let t: Vec<Option<i64>> = (0..n)
        .map(|_| Some(rng.random_range(0..120 * 24) * DAY / 24))
        .collect();
    let x: Vec<Option<f64>> = (0..n)
        .map(|_| {
            rng.random_bool(0.9)
                .then(|| rng.random_range(0..1000) as f64)
        })
        .collect();
    let ev = batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("t", ts(t)),
        ("x", Arc::new(Float64Array::from(x))),
    ]);
    let m = 150_000;
    let mut suid: Vec<Option<i64>> = (0..m)
        .map(|_| rng.random_bool(0.99).then(|| rng.random_range(0..650)))
        .collect();
    let mut st: Vec<Option<i64>> = (0..m)
        .map(|_| {
            rng.random_bool(0.99)
                .then(|| rng.random_range(0..130 * 24) * DAY / 24)
        })
        .collect();
    for i in 0..1000 {
        suid.push(suid[i]);
        st.push(st[i]);
    }
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(suid)) as ArrayRef),
        ("event_timestamp", ts(st)),
    ]);
    let refs = ["v:s7", "v:n30", "v:mx", "v:last_x"];
    let free = join_in_pool(&ev, &spine, &refs, 4096, None).await;
    assert_eq!(free.spilled_partitions, 0);
    // the spine alone is ~3.6 MB in memory; at 256 KB a spilled bucket's spine, events and
    // sweep pass a partition's share of the pool (128 KB) and it is split again on disk
    // (without the split, that pool runs out)
    for limit in [1 << 18, 1 << 20, 2 << 20] {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            join_in_pool(&ev, &spine, &refs, 4096, Some(limit)),
        )
        .await
        .unwrap_or_else(|_| panic!("the join with a {limit}-byte pool did not finish"));
        assert!(out.spilled_partitions > 0, "pool of {limit} bytes");
        assert_eq!(out.batch, free.batch, "pool of {limit} bytes");
    }
}
