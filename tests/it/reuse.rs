//! Reuse (ADR 0006): every way of producing a feature from stored states — exact match,
//! widening, narrowing — returns the column a cold computation returns, over random data,
//! windows, closures, offsets, filters and spines; and the catalog's keys keep states of
//! another spine or source version from being used.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{SortOptions, lexsort_to_indices, take_record_batch};
use quiver_core::Repo;
use quiver_offline::source::write_table;
use quiver_offline::{Engine, EngineOptions, JoinOutput, JoinRequest};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::*;

const AGGS: [(&str, &str); 13] = [
    ("count", "\"*\""),
    ("count", "x"),
    ("sum", "i"),
    ("sum", "x"),
    ("mean", "x"),
    ("mean", "i"),
    ("var", "x"),
    ("stddev", "i"),
    ("min", "x"),
    ("max", "s"),
    ("first", "s"),
    ("last", "x"),
    ("count_distinct", "i"),
];

fn window_text(w: Option<i64>) -> String {
    match w {
        Some(h) => format!(", window: {h}h"),
        None => String::new(),
    }
}

/// A repo over a folder of Parquet files with one view holding, per aggregate, the same
/// feature at each of `windows` (same offset, closure and filter).
fn write_repo(dir: &Path, windows: &[Option<i64>], offset_us: i64, closed: &str, filter: bool) {
    let mut feats = String::new();
    for (a, (agg, col)) in AGGS.iter().enumerate() {
        for (k, w) in windows.iter().enumerate() {
            let filter = if filter && a % 2 == 0 {
                ", filter: \"i > -300\""
            } else {
                ""
            };
            feats.push_str(&format!(
                "      - {{ name: f{a}_{k}, agg: {agg}, column: {col}{}, offset: {offset_us}us, closed: {closed}{filter} }}\n",
                window_text(*w)
            ));
        }
    }
    feats.push_str("      - { name: lat, column: s }\n");
    let yaml = format!(
        "project: t\nentities:\n  user:\n    join_keys: [uid]\nsources:\n  ev:\n    path: data\n    timestamp: ts\nfeature_views:\n  v:\n    entity: user\n    source: ev\n    ttl: 30h\n    features:\n{feats}"
    );
    std::fs::write(dir.join("quiver.yaml"), yaml).unwrap();
}

/// Events spread over `span` hours in time order across a few files, with nulls, ties,
/// two-decimal floats (not exact in binary) and rare NaN and infinities.
fn write_events(dir: &Path, rng: &mut SmallRng, n: usize, span: i64) {
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let keys = 6;
    let mut uid = Vec::new();
    let mut ts = Vec::new();
    let mut i = Vec::new();
    let mut x = Vec::new();
    let mut s = Vec::new();
    for _ in 0..n {
        uid.push(Some(rng.random_range(0..keys)));
        // times on a coarse grid so that window edges land exactly on events
        ts.push(Some(rng.random_range(0..span * 4) * (H / 4)));
        i.push((!rng.random_bool(0.1)).then(|| rng.random_range(-1000..1000i64)));
        x.push(if rng.random_bool(0.1) {
            None
        } else if rng.random_bool(0.01) {
            Some([f64::INFINITY, f64::NAN, f64::NEG_INFINITY][rng.random_range(0..3)])
        } else {
            Some(rng.random_range(-400_000..400_000) as f64 / 100.0)
        });
        s.push((!rng.random_bool(0.1)).then(|| format!("s{}", rng.random_range(0..50))));
    }
    let b = batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("ts", ts_col(ts)),
        ("i", Arc::new(Int64Array::from(i))),
        ("x", Arc::new(Float64Array::from(x))),
        ("s", Arc::new(StringArray::from(s))),
    ]);
    let order = lexsort_to_indices(
        &[datafusion::arrow::compute::SortColumn {
            values: b.column(1).clone(),
            options: Some(SortOptions::default()),
        }],
        None,
    )
    .unwrap();
    let b = take_record_batch(&b, &order).unwrap();
    let parts = 3;
    let per = n.div_ceil(parts);
    for p in 0..parts {
        let len = per.min(n - (p * per).min(n));
        write_table(
            &data.join(format!("part{p}.parquet")),
            &b.slice(p * per, len),
        )
        .unwrap();
    }
}

fn ts_col(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn spine(rng: &mut SmallRng, rows: usize, span: i64) -> RecordBatch {
    let uid: Vec<Option<i64>> = (0..rows)
        .map(|_| (!rng.random_bool(0.05)).then(|| rng.random_range(0..8)))
        .collect();
    let t: Vec<Option<i64>> = (0..rows)
        .map(|_| (!rng.random_bool(0.05)).then(|| rng.random_range(0..span * 4) * (H / 4)))
        .collect();
    batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("event_timestamp", ts_col(t)),
    ])
}

/// Some rows of `sp` (shuffled) and some new ones.
fn mixed_spine(sp: &RecordBatch, rng: &mut SmallRng, span: i64) -> RecordBatch {
    let n = sp.num_rows();
    let mut take: Vec<u32> = (0..n as u32).filter(|_| rng.random_bool(0.5)).collect();
    for i in (1..take.len()).rev() {
        take.swap(i, rng.random_range(0..=i));
    }
    let old = datafusion::arrow::compute::take_record_batch(
        sp,
        &datafusion::arrow::array::UInt32Array::from(take),
    )
    .unwrap();
    let new = spine(rng, 60, span);
    datafusion::arrow::compute::concat_batches(&sp.schema(), &[new, old]).unwrap()
}

/// Move a repository written by [`write_repo`] onto the test S3 server: its events under
/// `s3://BUCKET/data` and its offline store — so the reuse catalog, states and scan log — at
/// `s3://BUCKET/offline`. Returns the folder that backs the bucket (events are written there
/// and read back as objects).
fn onto_s3(dir: &Path) -> std::path::PathBuf {
    let (bucket, local) = crate::s3::SERVER.bucket();
    let yaml = std::fs::read_to_string(dir.join("quiver.yaml")).unwrap();
    assert!(yaml.contains("    path: data\n"));
    let yaml = yaml.replace(
        "    path: data\n",
        &format!("    path: s3://{bucket}/data/\n"),
    );
    std::fs::write(
        dir.join("quiver.yaml"),
        format!(
            "{yaml}offline_store: s3://{bucket}/offline\n{}",
            crate::s3::SERVER.storage_yaml()
        ),
    )
    .unwrap();
    local
}

fn engine(dir: &Path, reuse: bool, partitions: usize) -> Engine {
    let opts = EngineOptions {
        target_partitions: partitions,
        batch_size: 64,
        reuse_budget: reuse.then_some(1 << 30),
        reuse_always: true,
        ..Default::default()
    };
    Engine::new(Repo::load(dir).unwrap(), opts).unwrap()
}

async fn run(e: &Engine, spine: &RecordBatch, k: usize) -> JoinOutput {
    run_windows(e, spine, &[k]).await
}

/// Every aggregate over each of the windows `ks`, in one join.
async fn run_windows(e: &Engine, spine: &RecordBatch, ks: &[usize]) -> JoinOutput {
    let names: Vec<String> = ks
        .iter()
        .flat_map(|k| (0..AGGS.len()).map(move |a| format!("v:f{a}_{k}")))
        .collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let req = JoinRequest {
        features: e.repo().resolve_refs(&refs).unwrap(),
        ..Default::default()
    };
    e.join(spine.schema(), vec![spine.clone()], &req)
        .await
        .unwrap()
}

/// Column equality that treats NaN as equal to NaN (bit for bit).
fn assert_same(got: &RecordBatch, want: &RecordBatch, what: &str) {
    assert_eq!(got.schema(), want.schema(), "{what}: schema");
    for (c, f) in want.schema().fields().iter().enumerate() {
        let (g, w) = (got.column(c), want.column(c));
        if let (Some(g), Some(w)) = (
            g.as_any().downcast_ref::<Float64Array>(),
            w.as_any().downcast_ref::<Float64Array>(),
        ) {
            for r in 0..w.len() {
                let gv = g.is_valid(r).then(|| g.value(r).to_bits());
                let wv = w.is_valid(r).then(|| w.value(r).to_bits());
                assert_eq!(
                    gv,
                    wv,
                    "{what}: column {} row {r}: {:?} vs {:?}",
                    f.name(),
                    gv.map(f64::from_bits),
                    wv.map(f64::from_bits)
                );
            }
        } else {
            assert_eq!(g.as_ref(), w.as_ref(), "{what}: column {}", f.name());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reuse_path_returns_the_cold_column() {
    let reusable = AGGS.len() - 1; // count_distinct keeps no set: always cold
    for seed in 0..16u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let span = 24 * 12;
        let lens: [Option<i64>; 7] = [
            Some(1),
            Some(5),
            Some(24),
            Some(50),
            Some(100),
            Some(200),
            None,
        ];
        let a = lens[rng.random_range(0..lens.len())];
        let mut b = lens[rng.random_range(0..lens.len())];
        while b == a {
            b = lens[rng.random_range(0..lens.len())];
        }
        let closed = ["right", "left", "both", "neither"][rng.random_range(0..4)];
        let offset = [0, H, 3 * H + 17, DAY][rng.random_range(0..4)];
        let filter = rng.random_bool(0.5);
        write_repo(dir.path(), &[a, b], offset, closed, filter);
        write_events(dir.path(), &mut rng, 3000, span);
        let sp = spine(&mut rng, 400, span);
        let parts = 1 + (seed as usize % 3);
        let what = format!(
            "seed {seed}: stored {a:?}h, wanted {b:?}h, {closed}, offset {offset}us, filter {filter}"
        );

        let warm = engine(dir.path(), true, parts);
        let cold = engine(dir.path(), false, parts);
        let first = run(&warm, &sp, 0).await;
        assert_eq!(first.reused, 0, "{what}");
        assert_same(&first.batch, &run(&cold, &sp, 0).await.batch, &what);

        // widening or narrowing from the stored window (narrowing only where invertible)
        let second = run(&warm, &sp, 1).await;
        let want = run(&cold, &sp, 1).await;
        assert_same(&second.batch, &want.batch, &format!("{what} (partial)"));
        let widen = match (a, b) {
            (_, None) => true,
            (None, _) => false,
            (Some(x), Some(y)) => x < y,
        };
        let partial = if widen {
            reusable
        } else if b.is_some() {
            AGGS.iter()
                .filter(|(g, _)| ["count", "sum", "mean", "var", "stddev"].contains(g))
                .count()
        } else {
            0
        };
        assert_eq!(
            second.reused, partial,
            "{what}: features from stored states"
        );

        // exact: no scan at all when every reusable feature is stored
        let third = run(&warm, &sp, 1).await;
        assert_same(&third.batch, &want.batch, &format!("{what} (exact)"));
        assert_eq!(third.reused, reusable, "{what}");

        // another spine sharing some of these rows, in another order, takes them from the
        // stored states and computes only its own
        let other = mixed_spine(&sp, &mut rng, span);
        let o = run(&warm, &other, 1).await;
        assert_eq!(o.reused, reusable, "{what}: rows of another spine");
        assert_same(
            &o.batch,
            &run(&cold, &other, 1).await.batch,
            &format!("{what} (other spine)"),
        );

        // Both windows in one join keep their states apart (a sum and a mean of one window
        // share theirs): computed cold, then one stored and the other partial from it.
        for stored_first in [false, true] {
            let fresh = spine(&mut rng, 300, span);
            if stored_first {
                run(&warm, &fresh, 0).await;
            }
            let both = run_windows(&warm, &fresh, &[0, 1]).await;
            assert_same(
                &both.batch,
                &run_windows(&cold, &fresh, &[0, 1]).await.batch,
                &format!("{what} (both windows, first stored: {stored_first})"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_match_reads_no_source_and_new_versions_invalidate() {
    exact_match(false).await;
}

/// The same with events and the offline store on S3: the states are stored in the bucket
/// (none on the local disk) and serve the next join, which reads no source object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_match_on_s3_keeps_states_in_the_bucket() {
    exact_match(true).await;
}

async fn exact_match(s3: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    write_repo(dir.path(), &[Some(24), Some(48)], 0, "right", false);
    let data = match s3 {
        true => onto_s3(dir.path()),
        false => dir.path().to_path_buf(),
    };
    write_events(&data, &mut rng, 2000, 24 * 10);
    let sp = spine(&mut rng, 100, 24 * 10);
    let e = engine(dir.path(), true, 2);
    // count_distinct is the one feature still computed, so take the others only
    let mut refs: Vec<String> = (0..AGGS.len() - 1).map(|a| format!("v:f{a}_0")).collect();
    refs.push("v:lat".into());
    let refs: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
    let req = JoinRequest {
        features: e.repo().resolve_refs(&refs).unwrap(),
        ..Default::default()
    };
    let cold = e.join(sp.schema(), vec![sp.clone()], &req).await.unwrap();
    assert!(cold.bytes_scanned > 0);
    let again = e.join(sp.schema(), vec![sp.clone()], &req).await.unwrap();
    assert_eq!(again.bytes_scanned, 0, "{:?}", again.explain);
    assert!(again.stored_bytes_read > 0);
    assert_eq!(again.reused, refs.len());
    assert_same(&again.batch, &cold.batch, "exact");
    assert!(
        again.explain.iter().any(|l| l.contains("no scan")),
        "{:?}",
        again.explain
    );
    if s3 {
        let reuse = data.join("offline/reuse");
        assert!(reuse.join("manifest.json").exists(), "{}", reuse.display());
        assert!(std::fs::read_dir(reuse.join("entries")).unwrap().count() > 0);
        assert!(
            !dir.path().join(".quiver").exists(),
            "nothing kept on the local disk"
        );
        // the scan log is in the bucket too, one object per scan
        let scans = e.reuse_catalog().unwrap().scans().unwrap();
        assert!(!scans.is_empty());
        assert!(std::fs::read_dir(reuse.join("joins")).unwrap().count() >= scans.len());
        // another machine (a new engine over the same repository) reuses them
        let other = engine(dir.path(), true, 2);
        let there = other
            .join(sp.schema(), vec![sp.clone()], &req)
            .await
            .unwrap();
        assert_eq!(there.bytes_scanned, 0, "{:?}", there.explain);
        assert_same(&there.batch, &cold.batch, "exact, from another engine");
    }

    // New rows in the source: a new version, so nothing stored before may serve.
    write_events(&data, &mut rng, 2000, 24 * 10);
    let after = e.join(sp.schema(), vec![sp.clone()], &req).await.unwrap();
    assert_eq!(after.reused, 0);
    let fresh = engine(dir.path(), false, 2)
        .join(sp.schema(), vec![sp.clone()], &req)
        .await
        .unwrap();
    assert_same(&after.batch, &fresh.batch, "after a new version");
}

/// `quiver optimize`: the logged workload reads less after the rewrite, every join returns
/// the same rows (ties on time included, which the rewrite's stable sort keeps in order), and
/// a budget smaller than the table keeps it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_rewrite_keeps_results_and_reads_less() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "project: t\nentities:\n  user:\n    join_keys: [uid]\nsources:\n  ev:\n    timestamp: ts\nfeature_views:\n  v:\n    entity: user\n    source: ev\n    ttl: 2d\n    features:\n      - { name: s1, agg: sum, column: i, window: 1d }\n      - { name: l5, agg: last, column: i, window: 5d, closed: both }\n      - { name: latest_i, column: i }\n";
    std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
    let mut rng = SmallRng::seed_from_u64(11);
    let n = 300_000;
    let days = 400;
    // clustered by key, times on an hourly grid so (key, time) ties are common
    let mut rows: Vec<(i64, i64, i64)> = (0..n)
        .map(|_| {
            (
                rng.random_range(0..50),
                rng.random_range(0..days * 24) * H,
                rng.random_range(-100..100),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    let b = batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        ("ts", ts_col(rows.iter().map(|r| Some(r.1)).collect())),
        (
            "i",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ),
    ]);
    let table = dir.path().join(".quiver/offline/sources/ev");
    let parts = vec![b.slice(0, n / 2), b.slice(n / 2, n - n / 2)];
    quiver_offline::delta::write(
        &table,
        parts,
        quiver_offline::delta::Mode::Append,
        "ev",
        None,
    )
    .await
    .unwrap();
    let spine = batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from_iter_values((0..200).map(|i| i % 60))) as ArrayRef,
        ),
        (
            "event_timestamp",
            ts_col((0..200).map(|i| Some(300 * DAY + i * H)).collect()),
        ),
    ]);
    let refs = ["v:s1", "v:l5", "v:latest_i"];
    let run = |dir: &Path| {
        let e = engine(dir, true, 2);
        let sp = spine.clone();
        async move {
            let req = JoinRequest {
                features: e.repo().resolve_refs(&refs).unwrap(),
                ..Default::default()
            };
            e.join(sp.schema(), vec![sp.clone()], &req).await.unwrap()
        }
    };
    let before = run(dir.path()).await;
    let repo = Repo::load(dir.path()).unwrap();

    let tight = quiver_offline::layout::optimize(&repo, Some(1000), false)
        .await
        .unwrap();
    assert_eq!(tight.len(), 1);
    assert!(!tight[0].chosen && tight[0].written.is_none(), "{tight:?}");
    assert!(tight[0].plan.saving() > 0, "{:?}", tight[0].plan);

    let dry = quiver_offline::layout::optimize(&repo, None, true)
        .await
        .unwrap();
    assert!(dry[0].chosen && dry[0].written.is_none());
    let done = quiver_offline::layout::optimize(&repo, None, false)
        .await
        .unwrap();
    assert_eq!(done[0].written, Some(1), "{done:?}");
    let after = run(dir.path()).await;
    assert_eq!(
        after.batch, before.batch,
        "the rewrite changed a join result"
    );
    assert_eq!(after.reused, 0, "a new version reuses nothing");
    assert!(
        after.bytes_scanned * 2 < before.bytes_scanned,
        "after {} before {}",
        after.bytes_scanned,
        before.bytes_scanned
    );
}

/// A spine whose states would take more than half the budget computes plain values and
/// stores nothing (nor pays for states).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_over_the_budget_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(3);
    write_repo(dir.path(), &[Some(24)], 0, "right", false);
    write_events(dir.path(), &mut rng, 500, 24 * 5);
    let sp = spine(&mut rng, 200, 24 * 5);
    let opts = EngineOptions {
        reuse_budget: Some(10_000),
        ..Default::default()
    };
    let e = Engine::new(Repo::load(dir.path()).unwrap(), opts).unwrap();
    let out = run(&e, &sp, 0).await;
    assert!(
        out.explain.iter().any(|l| l.contains("states not kept")),
        "{:?}",
        out.explain
    );
    assert_same(
        &out.batch,
        &run(&engine(dir.path(), false, 2), &sp, 0).await.batch,
        "plain",
    );
    assert_eq!(e.wait_pending(), None);
    let cat = e.reuse_catalog().unwrap();
    assert!(cat.entries().unwrap().is_empty());
}

/// Rows `from..to` of a spine.
fn rows_of(sp: &RecordBatch, from: usize, to: usize) -> RecordBatch {
    sp.slice(from, to - from)
}

/// Day after day, the spine changes as training sets do: rows appended (a refresh), the oldest
/// rows dropped and new ones appended (a rolling window), new rows scattered through it, or
/// only its first rows kept. Each day's join computes only the rows no earlier spine holds,
/// returns the cold column, and stores the new rows alone when the spine lines up with the
/// stored ones in a few runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_refresh_returns_the_cold_column() {
    incremental_refresh(0..10, false).await;
}

/// The same refreshes with the states in a bucket (fewer seeds: each store is several puts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_refresh_on_s3_returns_the_cold_column() {
    incremental_refresh(0..4, true).await;
}

async fn incremental_refresh(seeds: std::ops::Range<u64>, s3: bool) {
    let reusable = AGGS.len() - 1;
    for seed in seeds {
        let mut rng = SmallRng::seed_from_u64(100 + seed);
        let dir = tempfile::tempdir().unwrap();
        let span = 24 * 12;
        let w = [Some(5), Some(50), None][seed as usize % 3];
        let closed = ["right", "left", "both", "neither"][rng.random_range(0..4)];
        write_repo(dir.path(), &[w], 0, closed, rng.random_bool(0.5));
        let data = match s3 {
            true => onto_s3(dir.path()),
            false => dir.path().to_path_buf(),
        };
        write_events(&data, &mut rng, 3000, span);
        let warm = engine(dir.path(), true, 1 + seed as usize % 3);
        let cold = engine(dir.path(), false, 2);
        let mut sp = spine(&mut rng, 300, span);
        run(&warm, &sp, 0).await;
        for day in 0..5 {
            let n = sp.num_rows();
            let change = (seed as usize + day) % 4;
            let (next, stored_whole) = match change {
                // appended
                0 => (concat(&[sp.clone(), spine(&mut rng, 40, span)]), false),
                // rolled: the first rows go, new ones come
                1 => {
                    let drop = rng.random_range(1..40);
                    let kept = rows_of(&sp, drop, n);
                    (concat(&[kept, spine(&mut rng, 40, span)]), false)
                }
                // new rows scattered through the spine: more runs than parts allow
                2 => {
                    let mut pieces = Vec::new();
                    for i in (0..n).step_by(3) {
                        pieces.push(rows_of(&sp, i, (i + 3).min(n)));
                        pieces.push(spine(&mut rng, 1, span));
                    }
                    (concat(&pieces), true)
                }
                // the first rows only
                _ => (rows_of(&sp, 0, n / 2), false),
            };
            let what = format!("seed {seed} day {day} change {change}");
            let got = run(&warm, &next, 0).await;
            assert_same(&got.batch, &run(&cold, &next, 0).await.batch, &what);
            assert_eq!(got.reused, reusable, "{what}: features from stored states");
            assert_eq!(warm.wait_pending(), None, "{what}");
            // the day's entries: pieces of stored files and of the new rows, or whole
            let cat = warm.reuse_catalog().unwrap();
            let newest = cat
                .entries()
                .unwrap()
                .into_iter()
                .max_by_key(|e| e.used_micros)
                .unwrap();
            assert_eq!(newest.rows as usize, next.num_rows(), "{what}");
            if change < 3 {
                assert_eq!(newest.parts.len() == 1, stored_whole, "{what}: {newest:?}");
            }
            // what was stored reads back as the same column again
            let again = run(&warm, &next, 0).await;
            assert_same(&again.batch, &got.batch, &format!("{what} (exact)"));
            sp = next;
        }
    }
}

fn concat(parts: &[RecordBatch]) -> RecordBatch {
    datafusion::arrow::compute::concat_batches(&parts[0].schema(), parts).unwrap()
}

/// A spine whose times all fall at `phase` past midnight, on days `first..last`, with keys
/// drawn from `keys` (nulls among them).
fn day_spine(
    rng: &mut SmallRng,
    rows: usize,
    (first, last): (i64, i64),
    phase: i64,
) -> RecordBatch {
    let uid: Vec<Option<i64>> = (0..rows)
        .map(|_| (!rng.random_bool(0.05)).then(|| rng.random_range(0..8)))
        .collect();
    let t: Vec<Option<i64>> = (0..rows)
        .map(|_| Some(rng.random_range(first..last) * DAY + phase))
        .collect();
    batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("event_timestamp", ts_col(t)),
    ])
}

/// Day tiles (ADR 0006): a spine whose times share a time of day computes whole-day windows
/// as one-day states over a grid of (key, day) rows, merged; later joins — a wider window,
/// other days, another spine of the same days — take the stored tiles and compute only the
/// days no join tiled. Every such column equals the cold one, bit for bit, over random
/// events, windows, closures, offsets and filters; windows that do not split into days
/// (an hour's offset, both or neither edge included) are computed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_tiles_return_the_cold_column() {
    day_tiles(0..12, None).await;
}

/// [`day_tiles_return_the_cold_column`], the tiled joins' plans (the grid's pass included) run
/// by `runner` (a cluster) when given.
pub async fn day_tiles(
    seeds: std::ops::Range<u64>,
    runner: Option<Arc<dyn quiver_offline::runner::PlanRunner>>,
) {
    let reusable = AGGS.len() - 1;
    for seed in seeds {
        let mut rng = SmallRng::seed_from_u64(200 + seed);
        let dir = tempfile::tempdir().unwrap();
        let span = 24 * 14;
        let days = [2, 3, 4, 7];
        let a = days[rng.random_range(0..days.len())];
        let mut b = days[rng.random_range(0..days.len())];
        while b == a {
            b = days[rng.random_range(0..days.len())];
        }
        let closed = ["right", "left", "right", "left", "both", "neither"][rng.random_range(0..6)];
        let offset = [0, DAY, 2 * DAY, H][rng.random_range(0..4)];
        let filter = rng.random_bool(0.5);
        let tiled = matches!(closed, "right" | "left") && offset % DAY == 0;
        write_repo(
            dir.path(),
            &[Some(24 * a), Some(24 * b)],
            offset,
            closed,
            filter,
        );
        write_events(dir.path(), &mut rng, 3000, span);
        let phase = [0, 7 * H, 23 * H + 15 * 60_000_000][rng.random_range(0..3)];
        let what = format!(
            "seed {seed}: {a}d then {b}d, {closed}, offset {offset}us, filter {filter}, phase {phase}us"
        );
        let warm = Engine::new(
            Repo::load(dir.path()).unwrap(),
            EngineOptions {
                target_partitions: 1 + seed as usize % 3,
                batch_size: 64,
                reuse_budget: Some(1 << 30),
                reuse_always: true,
                runner: runner.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        let cold = engine(dir.path(), false, 2);
        let merged = |o: &JoinOutput| {
            o.explain
                .iter()
                .filter(|l| l.contains("day tiles each"))
                .count()
        };

        // computed from tiles (none stored yet), which are kept
        let sp = day_spine(&mut rng, 300, (3, 10), phase);
        let first = run(&warm, &sp, 0).await;
        assert_same(&first.batch, &run(&cold, &sp, 0).await.batch, &what);
        assert_eq!(first.reused, 0, "{what}");
        assert_eq!(merged(&first), if tiled { reusable } else { 0 }, "{what}");

        // another window over the same rows: the stored tiles, and the days they lack
        let second = run(&warm, &sp, 1).await;
        assert_same(
            &second.batch,
            &run(&cold, &sp, 1).await.batch,
            &format!("{what} (other window)"),
        );
        if tiled {
            assert_eq!(merged(&second), reusable, "{what}: {:#?}", second.explain);
            assert_eq!(
                second.reused, reusable,
                "{what}: features from stored tiles"
            );
        }

        // another spine over overlapping days, and a spine off its time of day
        let other = day_spine(&mut rng, 200, (6, 13), phase);
        let o = run(&warm, &other, 1).await;
        assert_same(
            &o.batch,
            &run(&cold, &other, 1).await.batch,
            &format!("{what} (other days)"),
        );
        if tiled {
            assert_eq!(o.reused, reusable, "{what}: other days");
        }
        let mut off = day_spine(&mut rng, 100, (3, 10), phase);
        let t = off
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let mut moved: Vec<Option<i64>> = t.iter().collect();
        moved[0] = moved[0].map(|v| v + H);
        off = batch(vec![
            ("uid", off.column(0).clone()),
            ("event_timestamp", ts_col(moved)),
        ]);
        let o = run(&warm, &off, 1).await;
        assert_eq!(merged(&o), 0, "{what}: a row off the time of day");
        assert_same(
            &o.batch,
            &run(&cold, &off, 1).await.batch,
            &format!("{what} (off the time of day)"),
        );

        // exact repeats read the stored states, not the tiles
        let again = run(&warm, &sp, 1).await;
        assert_same(&again.batch, &second.batch, &format!("{what} (exact)"));
        assert_eq!(again.reused, reusable, "{what}");
        assert_eq!(merged(&again), 0, "{what}: exact matches merge no tile");

        // both windows in one join share one grid (a sum and a mean share their tiles)
        let fresh = day_spine(&mut rng, 150, (2, 12), phase);
        let both = run_windows(&warm, &fresh, &[0, 1]).await;
        assert_same(
            &both.batch,
            &run_windows(&cold, &fresh, &[0, 1]).await.batch,
            &format!("{what} (both windows)"),
        );
        if tiled {
            assert_eq!(merged(&both), 2 * reusable, "{what}: both windows");
        }
    }
}
