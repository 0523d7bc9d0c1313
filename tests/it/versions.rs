//! Versioned tables: content hashes through Delta, splits, and reproduction that names the
//! first difference.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use quiver_app::catalog::{Catalog, Rows, hash_table, split};
use quiver_core::hash::TableHasher;
use quiver_offline::{EngineOptions, delta, source};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::batch;

fn random_table(rng: &mut SmallRng, n: usize) -> RecordBatch {
    let ints: Vec<Option<i32>> = (0..n)
        .map(|_| rng.random_bool(0.9).then(|| rng.random_range(-5..5)))
        .collect();
    let floats: Vec<Option<f64>> = (0..n)
        .map(|_| rng.random_bool(0.9).then(|| rng.random_range(-1.0..1.0)))
        .collect();
    let words = ["a", "b", "", "ccc"];
    let strs: Vec<Option<&str>> = (0..n)
        .map(|_| rng.random_bool(0.9).then(|| words[rng.random_range(0..4)]))
        .collect();
    let times: Vec<Option<i64>> = (0..n)
        .map(|_| {
            rng.random_bool(0.9)
                .then(|| rng.random_range(0..1_000_000_000))
        })
        .collect();
    batch(vec![
        ("k", Arc::new(Int32Array::from(ints)) as ArrayRef),
        ("x", Arc::new(Float64Array::from(floats))),
        ("s", Arc::new(StringArray::from(strs))),
        (
            "t",
            Arc::new(TimestampMillisecondArray::from(times).with_timezone("Europe/Paris")),
        ),
    ])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn read_back(
    path: &std::path::Path,
) -> (datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>) {
    let ctx = quiver_offline::session(&EngineOptions::default()).unwrap();
    source::read_table(&ctx, path).await.unwrap()
}

#[test]
fn hash_survives_delta_appends_parquet_and_batch_sizes() {
    let rt = runtime();
    for seed in 0..4u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = rng.random_range(1..300);
        let t = random_table(&mut rng, n);
        let want = hash_table(&t.schema(), std::slice::from_ref(&t)).unwrap().0;
        let dir = tempfile::tempdir().unwrap();
        // Delta, in two appends of random sizes.
        let cut = rng.random_range(0..=n);
        let table = dir.path().join("delta");
        rt.block_on(async {
            delta::write(
                &table,
                vec![t.slice(0, cut)],
                delta::Mode::Append,
                "t",
                None,
            )
            .await
            .unwrap();
            delta::write(
                &table,
                vec![t.slice(cut, n - cut)],
                delta::Mode::Append,
                "t",
                None,
            )
            .await
            .unwrap();
            let (schema, batches) = read_back(&table).await;
            assert_eq!(
                hash_table(&schema, &batches).unwrap().0,
                want,
                "seed {seed}"
            );
        });
        // A Parquet file.
        let f = dir.path().join("t.parquet");
        source::write_table(&f, &t).unwrap();
        let (schema, batches) = rt.block_on(read_back(&f));
        assert_eq!(
            hash_table(&schema, &batches).unwrap().0,
            want,
            "seed {seed}"
        );
        // One changed value changes it.
        let mut other = t.columns().to_vec();
        let mut ks: Vec<Option<i32>> = (0..n)
            .map(|i| {
                let a = t.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
                (!datafusion::arrow::array::Array::is_null(a, i)).then(|| a.value(i))
            })
            .collect();
        ks[n / 2] = Some(ks[n / 2].unwrap_or(0) + 100);
        other[0] = Arc::new(Int32Array::from(ks));
        let changed = RecordBatch::try_new(t.schema(), other).unwrap();
        assert_ne!(
            hash_table(&changed.schema(), std::slice::from_ref(&changed))
                .unwrap()
                .0,
            want
        );
    }
}

#[test]
fn splits_are_seeded_and_independent_of_batching() {
    let mut rng = SmallRng::seed_from_u64(9);
    let t = random_table(&mut rng, 1000);
    let whole = Rows {
        schema: t.schema(),
        batches: vec![t.clone()],
    };
    let pieces = Rows {
        schema: t.schema(),
        batches: (0..10).map(|i| t.slice(i * 100, 100)).collect(),
    };
    let (a1, b1) = split(&whole, 0.8, 7).unwrap();
    let (a2, b2) = split(&pieces, 0.8, 7).unwrap();
    let h = |x: &Rows| hash_table(&x.schema, &x.batches).unwrap().0;
    assert_eq!(h(&a1), h(&a2));
    assert_eq!(h(&b1), h(&b2));
    assert_eq!(a1.rows() + b1.rows(), 1000);
    assert!((750..850).contains(&a1.rows()), "{}", a1.rows());
    let (a3, _) = split(&whole, 0.8, 8).unwrap();
    assert_ne!(h(&a1), h(&a3));
    // Train and test are disjoint and together the whole.
    let mut all = TableHasher::new(&t.schema()).unwrap();
    for b in a1.batches.iter().chain(&b1.batches) {
        all.update(b).unwrap();
    }
    assert_eq!(all.finish(), h(&whole));
}

const YAML: &str = "
project: t
entities:
  user: { join_keys: [user_id] }
sources:
  events: { timestamp: ts }
feature_views:
  v:
    entity: user
    source: events
    features:
      - { name: total, agg: sum, column: amount, window: 10d }
      - { name: last_amount, column: amount }
";

#[test]
fn reproduce_names_the_first_difference_after_tampering() {
    reproduce_after_tampering(String::new());
}

/// The same, with the offline store (managed tables, datasets) on the test S3 server.
#[test]
fn reproduce_names_the_first_difference_after_tampering_on_s3() {
    let (bucket, _) = crate::s3::SERVER.bucket();
    reproduce_after_tampering(format!(
        "offline_store: s3://{bucket}/offline\n{}",
        crate::s3::SERVER.storage_yaml()
    ));
}

fn reproduce_after_tampering(storage: String) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quiver.yaml"), format!("{YAML}{storage}")).unwrap();
    let repo = quiver_core::Repo::load(dir.path()).unwrap();
    let day = 86_400_000i64;
    let events = batch(vec![
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 1, 2])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(
                TimestampMillisecondArray::from(vec![day, 2 * day, 3 * day]).with_timezone("UTC"),
            ),
        ),
        ("amount", Arc::new(Int64Array::from(vec![5, 7, 11]))),
    ]);
    let spine = batch(vec![
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 2, 1])) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(
                TimestampMillisecondArray::from(vec![5 * day, 5 * day, day]).with_timezone("UTC"),
            ),
        ),
        ("label", Arc::new(Int64Array::from(vec![0, 1, 0]))),
    ]);
    let ev_file = dir.path().join("events.parquet");
    let spine_file = dir.path().join("spine.parquet");
    source::write_table(&ev_file, &events).unwrap();
    source::write_table(&spine_file, &spine).unwrap();
    rt.block_on(async {
        let cat = Catalog::open(repo.clone(), EngineOptions::default()).unwrap();
        cat.ingest("events", std::slice::from_ref(&ev_file))
            .await
            .unwrap();
        let sv = cat.add(&spine_file, "labels").await.unwrap();
        let spine_t = cat.read(&sv).await.unwrap();
        let refs = repo.resolve_refs(&["v:total", "v:last_amount"]).unwrap();
        let (out, mut record) = cat
            .join(&spine_t, &refs, None, false, &Default::default())
            .await
            .unwrap();
        assert_eq!(
            out.column(3).as_any().downcast_ref::<Int64Array>().unwrap(),
            &Int64Array::from(vec![Some(12), Some(11), Some(5)])
        );
        record.spine = sv.reference();
        let t = Rows {
            schema: out.schema(),
            batches: vec![out],
        };
        let train = cat
            .write_dataset(
                "train",
                quiver_registry::DatasetKind::Training,
                &t,
                quiver_registry::Operation::Join(record),
            )
            .await
            .unwrap();
        let r = cat.reproduce("train", None).await.unwrap();
        assert!(r.difference.is_none(), "{:?}", r.difference);
        assert_eq!(r.rebuilt, train.hash);
        // Damage the stored spine: user 2's label time moves before its event.
        let snap = delta::snapshot(&cat.dataset_path("labels"), None)
            .await
            .unwrap();
        let stored = read_back(&cat.dataset_path("labels")).await;
        let stored = concat_batches(&stored.0, &stored.1).unwrap();
        let mut cols = stored.columns().to_vec();
        cols[1] = datafusion::arrow::compute::cast(
            &TimestampMillisecondArray::from(vec![5 * day, day, day]).with_timezone("UTC"),
            stored.schema().field(1).data_type(),
        )
        .unwrap();
        let damaged = RecordBatch::try_new(stored.schema(), cols).unwrap();
        source::write_table(&snap.files[0], &damaged).unwrap();
        let r = cat.reproduce("train", Some(1)).await.unwrap();
        let d = r.difference.expect("a difference");
        assert!(d.starts_with("row 1, column `event_timestamp`"), "{d}");
        assert_ne!(r.rebuilt, train.hash);
    });
}

/// Issue 18.7: an ingest killed mid-write left orphan part files (`part-….parquet#1`) in the
/// table's folder, and one killed after its commit but before its registry write had the
/// next version's "made by" name the part file instead of the user's file. Both cases are
/// made here as the killed process would have left them.
#[test]
fn a_killed_ingest_leaves_no_orphans_and_its_files_named() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quiver.yaml"), YAML).unwrap();
    let repo = quiver_core::Repo::load(dir.path()).unwrap();
    let day = 86_400_000i64;
    let events = |k: i64| {
        batch(vec![
            ("user_id", Arc::new(Int64Array::from(vec![k])) as ArrayRef),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![day]).with_timezone("UTC")),
            ),
            ("amount", Arc::new(Int64Array::from(vec![k]))),
        ])
    };
    rt.block_on(async {
        let cat = Catalog::open(repo.clone(), EngineOptions::default()).unwrap();
        let f1 = dir.path().join("first.parquet");
        source::write_table(&f1, &events(1)).unwrap();
        cat.ingest("events", &[f1]).await.unwrap();
        let table = dir.path().join(".quiver/offline/sources/events");
        // Killed while writing: an unfinished upload and a finished file no commit names.
        std::fs::write(table.join("part-00000-dead-c000.snappy.parquet#1"), b"half").unwrap();
        std::fs::write(table.join("part-00001-dead-c000.snappy.parquet"), b"whole").unwrap();
        // Killed after its commit: the version exists, the registry has not heard of it.
        let note = serde_json::json!({"ingest": {"files": ["/data/second.parquet"]}});
        delta::write(
            &table,
            vec![events(2)],
            delta::Mode::Append,
            "t",
            Some(note),
        )
        .await
        .unwrap();
        assert!(!table.join("part-00000-dead-c000.snappy.parquet#1").exists());
        assert!(!table.join("part-00001-dead-c000.snappy.parquet").exists());
        // the next command records the version with the file the user ingested
        let f3 = dir.path().join("third.parquet");
        source::write_table(&f3, &events(3)).unwrap();
        cat.ingest("events", &[f3]).await.unwrap();
        let versions = cat.registry.dataset_versions("events").unwrap();
        assert_eq!(versions.len(), 3);
        assert_eq!(
            versions[1].op,
            quiver_registry::Operation::Ingest {
                files: vec!["/data/second.parquet".into()]
            }
        );
        // every committed file is still there and read
        let (_, batches) = read_back(&table).await;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
    });
}
