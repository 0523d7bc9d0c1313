//! The join on a Ballista cluster: one scheduler and two executors in this process, on
//! 127.0.0.1, with every shuffle forced through Arrow Flight. The engine's own tests run on
//! it — the differential cases against the same SQL reference, ties across files, the late
//! spine's pruning over S3 — plus the co-partitioning of the join's two inputs.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Int64Array};
use quiver_cluster::{Cluster, ExecutorOptions};
use quiver_core::config::Storage;
use quiver_offline::runner::PlanRunner;
use quiver_offline::{Engine, EngineOptions, JoinRequest};

use crate::common::*;

/// `df://ADDR` of the test cluster, started on first use for the rest of the process.
pub static CLUSTER: LazyLock<String> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let scheduler = quiver_cluster::scheduler(listener).await.unwrap();
            let mut executors = Vec::new();
            for _ in 0..2 {
                let mut opts = ExecutorOptions::new(scheduler.addr.to_string());
                opts.concurrent_tasks = 2;
                executors.push(quiver_cluster::executor(opts).await.unwrap());
            }
            tx.send(format!("df://{}", scheduler.addr)).unwrap();
            // the servers live as long as the test binary
            std::future::pending::<()>().await;
            drop((scheduler, executors));
        });
    });
    rx.recv().unwrap()
});

/// A runner on the test cluster, staging spines under `staging`, shuffles read over Flight.
pub fn on_cluster(staging: &Path, storage: Storage) -> Arc<dyn PlanRunner> {
    Arc::new(
        Cluster::new(&CLUSTER, staging.to_path_buf(), storage)
            .unwrap()
            .with_setting("ballista.shuffle.force_remote_read", "true"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_differential_cases_agree_on_a_cluster() {
    let staging = tempfile::tempdir().unwrap();
    let runner = on_cluster(staging.path(), Storage::default());
    crate::differential::agree_over_on(0..20, false, Some(runner.clone())).await;
    crate::differential::agree_over_on(500..510, true, Some(runner)).await;
    // every staged spine was removed with its job
    assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_across_files_keep_source_order_on_a_cluster() {
    let staging = tempfile::tempdir().unwrap();
    crate::sources::keep_source_order(Some(on_cluster(staging.path(), Storage::default()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_spine_reads_only_late_row_groups_on_a_cluster() {
    for place in crate::sources::Place::both() {
        let staging = tempfile::tempdir().unwrap();
        let storage = quiver_core::Repo::parse(
            &format!("project: p\n{}", place.storage),
            Path::new("x/quiver.yaml"),
        )
        .unwrap()
        .storage;
        let runner = on_cluster(staging.path(), storage);
        crate::sources::late_spine_reads_late_row_groups(place, Some(runner)).await;
    }
}

/// Day tiles on a cluster: the grid's pass is a spine like any other, staged for the
/// executors; the tiled columns equal the local cold ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_tiles_return_the_cold_column_on_a_cluster() {
    let staging = tempfile::tempdir().unwrap();
    crate::reuse::day_tiles(0..3, Some(on_cluster(staging.path(), Storage::default()))).await;
}

/// PitJoinExec needs the spine rows and the events of a key in the same partition. Ballista
/// cuts the plan at both hash repartitions and each side crosses a shuffle on its own; were
/// the two sides' partitions not the same hash ranges after it, a spine row would meet none
/// (or another key's) events. Every key here has its own event count, and every spine row
/// must see exactly its key's events, in a job of several partitions on two executors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_inputs_stay_co_partitioned_through_the_shuffle() {
    let keys = 3000i64;
    let uid: Vec<i64> = (0..keys)
        .flat_map(|k| (0..=k % 7).map(move |_| k))
        .collect();
    let n = uid.len();
    let events = batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("t", ts(vec![Some(H); n])),
        ("v", Arc::new(Int64Array::from_iter_values(0..n as i64))),
    ]);
    let spine = batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from_iter_values((0..keys).rev())) as ArrayRef,
        ),
        ("event_timestamp", ts(vec![Some(2 * H); keys as usize])),
    ]);
    let yaml = "project: c\nentities:\n  u: { join_keys: [uid] }\nsources:\n  ev: { path: none.parquet, timestamp: t }\nfeature_views:\n  v:\n    entity: u\n    source: ev\n    features:\n      - { name: n, agg: count, column: \"*\" }\n";
    let staging = tempfile::tempdir().unwrap();
    for partitions in [3, 8] {
        let opts = EngineOptions {
            target_partitions: partitions,
            batch_size: 256,
            runner: Some(on_cluster(staging.path(), Storage::default())),
            ..Default::default()
        };
        let e = Engine::new(repo(yaml), opts)
            .unwrap()
            .with_source_table("ev", mem_table(&events, 256));
        let req = JoinRequest {
            features: e.repo().resolve_refs(&["v:n"]).unwrap(),
            ..Default::default()
        };
        let out = e
            .join(spine.schema(), vec![spine.clone()], &req)
            .await
            .unwrap();
        let want: Vec<Option<i64>> = (0..keys).rev().map(|k| Some(k % 7 + 1)).collect();
        assert_eq!(i64s(&out.batch, "n"), want, "{partitions} partitions");
        // it ran as a job of stages: each input's scan, then the join after the shuffle
        let stages: Vec<&String> = out
            .explain
            .iter()
            .filter(|l| l.trim_start().starts_with("stage "))
            .collect();
        assert!(
            stages.len() >= 3
                && stages
                    .iter()
                    .any(|l| l.contains(&format!("({partitions} partitions"))
                        && l.contains("PitJoinExec")),
            "{}",
            out.explain.join("\n")
        );
    }
}
