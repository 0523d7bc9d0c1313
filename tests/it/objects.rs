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

/// `quiver join` as the CLI runs it, with the source, the spine, the output and the
/// registered dataset all in a bucket: the output is the bytes of the same join run on
/// local files, and the registered version reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_from_s3_to_s3_is_the_local_join() {
    use quiver_app::training::{Request, build};
    let (bucket, folder) = SERVER.bucket();
    let local = tempfile::tempdir().unwrap();
    let n = 2_000i64;
    let events = batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 37))) as ArrayRef,
        ),
        ("t", ts((0..n).map(|i| Some(i * H / 3)).collect())),
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i * 7 % 11) as f64),
            )),
        ),
    ]);
    let spine = "uid,event_timestamp\n1,1970-01-05T00:00:00Z\n2,1970-01-10T00:00:00Z\n36,1970-01-20T12:00:00Z\n";
    for d in [&folder, &local.path().to_path_buf()] {
        source::write_table(&d.join("ev.parquet"), &events).unwrap();
        std::fs::write(d.join("spine.csv"), spine).unwrap();
    }
    std::fs::create_dir(local.path().join("out")).unwrap();
    let mut outs = Vec::new();
    for (prefix, storage) in [
        (
            format!("s3://{bucket}/"),
            format!(
                "offline_store: s3://{bucket}/offline\n{}",
                SERVER.storage_yaml()
            ),
        ),
        (format!("{}/", local.path().display()), String::new()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "project: o\nentities:\n  u: {{ join_keys: [uid] }}\nsources:\n  ev: {{ path: \"{prefix}ev.parquet\", timestamp: t }}\nfeature_views:\n  v:\n    entity: u\n    source: ev\n    features:\n      - {{ name: x }}\n      - {{ name: s, agg: sum, column: x, window: 2d }}\n{storage}"
        );
        std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
        let repo = Repo::load(dir.path()).unwrap();
        let req = Request {
            spine: format!("{prefix}spine.csv"),
            features: repo.resolve_refs(&["v:x", "v:s"]).unwrap(),
            out: Some(format!("{prefix}out/train.parquet").into()),
            register: Some("train".into()),
            ..Default::default()
        };
        let built = build(repo.clone(), EngineOptions::default(), &req, |_| {})
            .await
            .unwrap();
        assert_eq!(built.rows, 3);
        assert!(built.registered.as_deref().unwrap().starts_with("train@1"));
        let cat = quiver_app::catalog::Catalog::open(repo, EngineOptions::default()).unwrap();
        let stored = cat.dataset_path("train");
        assert_eq!(
            stored.to_string_lossy().starts_with("s3://"),
            !storage.is_empty()
        );
        assert!(quiver_offline::delta::is_delta_table(&stored));
        outs.push(
            std::fs::read(if storage.is_empty() {
                local.path().join("out/train.parquet")
            } else {
                folder.join("out/train.parquet")
            })
            .unwrap_or_else(|e| panic!("{prefix}: {e}")),
        );
    }
    assert_eq!(outs[0], outs[1]);
}

/// The reuse catalog's writer lock in a bucket is a conditional put: of two creates of one
/// object the second is refused, and after a delete the object can be created again.
#[test]
fn create_unless_exists_is_a_conditional_put() {
    let (bucket, local) = SERVER.bucket();
    quiver_offline::objects::configure(&quiver_core::config::Storage {
        s3_endpoint: Some(format!("http://{}", SERVER.addr)),
        s3_region: Some("us-east-1".into()),
        s3_path_style: Some(true),
        s3_allow_http: Some(true),
    });
    let url = url::Url::parse(&format!("s3://{bucket}/reuse/lock")).unwrap();
    use quiver_offline::objects::{create, delete, get_opt};
    assert!(create(&url, "1".into()).unwrap());
    assert!(
        !create(&url, "2".into()).unwrap(),
        "a second create is refused"
    );
    assert_eq!(get_opt(&url).unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(std::fs::read(local.join("reuse/lock")).unwrap(), b"1");
    delete(&url).unwrap();
    assert_eq!(get_opt(&url).unwrap(), None);
    assert!(create(&url, "3".into()).unwrap());
}
