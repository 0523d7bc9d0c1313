//! Object storage: outputs written to `s3://` are the bytes written locally, and failures
//! name the URL and what failed. (Sources, managed tables and reproduce run on `s3://` in
//! `sources` and `versions`, through the same tests as local paths.)

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array};
use quiver_core::Repo;
use quiver_offline::{Engine, EngineOptions, source};

use crate::common::*;
use crate::s3::SERVER;

fn repo_on_s3(source_path: &str) -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "project: o\nentities:\n  u: {{ join_keys: [uid] }}\nsources:\n  ev: {{ path: \"{source_path}\", timestamp: t }}\nfeature_views:\n  v: {{ entity: u, source: ev, features: [ {{ name: x }} ] }}\n{}",
        SERVER.storage_yaml()
    );
    std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
    let repo = Repo::load(dir.path()).unwrap();
    (dir, repo)
}

#[test]
fn an_output_written_to_s3_is_the_local_bytes() {
    let (bucket, folder) = SERVER.bucket();
    let (_dir, repo) = repo_on_s3(&format!("s3://{bucket}/none.parquet"));
    quiver_offline::objects::configure(&repo.storage);
    let n = 50_000;
    let b = batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
        ),
        ("t", ts((0..n).map(|i| Some(i * H)).collect())),
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 / 7.0),
            )),
        ),
    ]);
    let local = tempfile::tempdir().unwrap();
    for name in ["train.parquet", "train.csv"] {
        source::write_table(&local.path().join(name), &b).unwrap();
        let url = format!("s3://{bucket}/out/{name}");
        source::write_table(std::path::Path::new(&url), &b).unwrap();
        assert_eq!(
            std::fs::read(folder.join("out").join(name)).unwrap(),
            std::fs::read(local.path().join(name)).unwrap(),
            "{url}"
        );
        // a second write that must not replace is refused, naming the URL
        let err = source::write_new_table(std::path::Path::new(&url), &b)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&url) && err.contains("already exists"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_and_buckets_are_named() {
    let (bucket, _) = SERVER.bucket();
    for (path, says) in [
        (format!("s3://{bucket}/nothere.parquet"), "no such object"),
        (format!("s3://{bucket}/folder/"), "no such object"),
        (
            "s3://no-such-bucket-q/ev.parquet".to_string(),
            "bucket does not exist",
        ),
    ] {
        let (_dir, repo) = repo_on_s3(&path);
        let e = Engine::new(repo, EngineOptions::default()).unwrap();
        let err = e.check().await.unwrap_err().to_string();
        assert!(
            err.contains("source `ev`")
                && err.contains(path.trim_end_matches('/'))
                && err.contains(says),
            "{path}: {err}"
        );
        assert!(!err.contains(crate::s3::SECRET_KEY), "{err}");
    }
}
