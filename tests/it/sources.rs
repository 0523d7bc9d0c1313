//! Sources read from files: a glob of Parquet files, a folder, a CSV file; ties across files
//! break in source order (file name, then row).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::parquet::arrow::ArrowWriter;
use quiver_core::Repo;
use quiver_offline::runner::PlanRunner;
use quiver_offline::{Engine, EngineOptions, JoinRequest};

use crate::common::*;

fn write_parquet(path: &std::path::Path, b: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
}

fn events(v: Vec<i64>) -> RecordBatch {
    let n = v.len();
    batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1; n])) as ArrayRef),
        ("t", ts(vec![Some(H); n])),
        ("v", Arc::new(Int64Array::from(v))),
    ])
}

/// Where a test's source files are: a local folder (paths relative to the repository) or a
/// bucket of the test S3 server (its folder, and `s3://bucket/` before every path).
pub struct Place {
    /// The folder the test writes its files into.
    pub data: std::path::PathBuf,
    /// What a path in `quiver.yaml` starts with.
    pub prefix: String,
    /// Lines added to `quiver.yaml`.
    pub storage: String,
    _dir: Option<tempfile::TempDir>,
}

impl Place {
    pub fn local() -> Place {
        let d = tempfile::tempdir().unwrap();
        Place {
            data: d.path().to_path_buf(),
            prefix: format!("{}/", d.path().display()),
            storage: String::new(),
            _dir: Some(d),
        }
    }

    pub fn s3() -> Place {
        let (bucket, data) = crate::s3::SERVER.bucket();
        Place {
            data,
            prefix: format!("s3://{bucket}/"),
            storage: crate::s3::SERVER.storage_yaml(),
            _dir: None,
        }
    }

    /// The bucket's name (empty for a local folder).
    pub fn bucket(&self) -> &str {
        self.prefix
            .strip_prefix("s3://")
            .map_or("", |b| b.trim_end_matches('/'))
    }

    pub fn both() -> [Place; 2] {
        [Place::local(), Place::s3()]
    }
}

async fn latest(
    dir: &std::path::Path,
    path: &str,
    partitions: usize,
    storage: &str,
    runner: Option<Arc<dyn PlanRunner>>,
) -> (Vec<Option<i64>>, Vec<Option<i64>>) {
    let yaml = format!(
        "project: files\nentities:\n  u: {{ join_keys: [uid] }}\nsources:\n  ev: {{ path: \"{path}\", timestamp: t }}\nfeature_views:\n  v:\n    entity: u\n    source: ev\n    features:\n      - {{ name: v }}\n      - {{ name: first_v, agg: first, column: v }}\n      - {{ name: n, agg: count, column: \"*\" }}\n{storage}"
    );
    std::fs::write(dir.join("quiver.yaml"), yaml).unwrap();
    let repo = Repo::load(dir).unwrap();
    let features = repo.resolve_refs(&["v:v", "v:first_v", "v:n"]).unwrap();
    let opts = EngineOptions {
        target_partitions: partitions,
        batch_size: 2,
        memory_limit: None,
        runner,
        ..Default::default()
    };
    let e = Engine::new(repo, opts).unwrap();
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(2 * H)])),
    ]);
    let out = e
        .join(
            spine.schema(),
            vec![spine],
            &JoinRequest {
                features,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .batch;
    (
        i64s(&out, "v")
            .into_iter()
            .chain(i64s(&out, "first_v"))
            .collect(),
        i64s(&out, "n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_folder_and_csv_sources_keep_source_order() {
    keep_source_order(None).await;
}

/// Ties across files break in source order, the plans run by `runner` (a cluster) when
/// given.
pub(crate) async fn keep_source_order(runner: Option<Arc<dyn PlanRunner>>) {
    // the same files, read from a local folder and from the test S3 server
    for place in Place::both() {
        let dir = tempfile::tempdir().unwrap();
        let (data, p, storage) = (&place.data, &place.prefix, &place.storage);
        std::fs::create_dir(data.join("parts")).unwrap();
        // every event ties on (key, time): the last row of the last file is the latest
        write_parquet(&data.join("parts/b.parquet"), &events(vec![3, 4]));
        write_parquet(&data.join("parts/a.parquet"), &events(vec![1, 2]));
        write_parquet(&data.join("parts/c.parquet"), &events(vec![5, 6, 7]));
        for partitions in 1..=3 {
            let glob = format!("{p}parts/*.parquet");
            let (v, n) = latest(dir.path(), &glob, partitions, storage, runner.clone()).await;
            assert_eq!(v, [Some(7), Some(1)], "{glob}, {partitions} partitions");
            assert_eq!(n, [Some(7)]);
            let folder = format!("{p}parts/");
            let (v, _) = latest(dir.path(), &folder, partitions, storage, runner.clone()).await;
            assert_eq!(v, [Some(7), Some(1)], "{folder}, {partitions} partitions");
        }
        std::fs::write(data.join("ev.csv"), "uid,t,v\n1,1970-01-01T01:00:00Z,10\n1,1970-01-01T01:00:00Z,11\n1,1970-01-01T03:00:00Z,12\n").unwrap();
        let (v, n) = latest(
            dir.path(),
            &format!("{p}ev.csv"),
            2,
            storage,
            runner.clone(),
        )
        .await;
        assert_eq!(v, [Some(11), Some(10)], "{p}ev.csv");
        assert_eq!(n, [Some(2)]);
    }
}

#[tokio::test]
async fn missing_source_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "project: x\nentities:\n  u: { join_keys: [uid] }\nsources:\n  ev: { path: nothere.parquet, timestamp: t }\nfeature_views:\n  v: { entity: u, source: ev, features: [ { name: v } ] }\n";
    std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
    let e = Engine::new(Repo::load(dir.path()).unwrap(), EngineOptions::default()).unwrap();
    let err = e.check().await.unwrap_err().to_string();
    assert!(
        err.contains("source `ev`: ") && err.contains("nothere.parquet: no such file or folder"),
        "{err}"
    );
}

/// Regression: the parallel Parquet writer dropped the Arrow schema (a spine column's time
/// zone came back as UTC) and strings were read back as views.
#[tokio::test]
async fn parquet_round_trip_keeps_spine_column_types() {
    use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
    let dir = tempfile::tempdir().unwrap();
    let spine = batch(vec![
        (
            "uid",
            Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(H), None]).with_timezone("Europe/Berlin"),
            ),
        ),
    ]);
    let path = dir.path().join("spine.parquet");
    quiver_offline::source::write_table(&path, &spine).unwrap();
    let ctx = quiver_offline::session(&EngineOptions::default()).unwrap();
    let (schema, batches) = quiver_offline::source::read_table(&ctx, &path)
        .await
        .unwrap();
    assert_eq!(schema, spine.schema());
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0], spine);
}

/// The spine's time range prunes a Parquet source's row groups (the scan reads only those
/// that can hold an event of some window), and the values are those of a full read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_spine_reads_only_the_late_row_groups() {
    for place in Place::both() {
        late_spine_reads_late_row_groups(place, None).await;
    }
}

/// A late spine reads only the late row groups, the plans run by `runner` (a cluster) when
/// given.
pub(crate) async fn late_spine_reads_late_row_groups(
    place: Place,
    runner: Option<Arc<dyn PlanRunner>>,
) {
    use datafusion::parquet::file::properties::WriterProperties;
    let dir = tempfile::tempdir().unwrap();
    // two keys, one event an hour each for 100 days, in time order: 48 row groups of 100 rows
    let hours = 100 * 24;
    let uid: Vec<i64> = (0..hours).flat_map(|_| [1, 2]).collect();
    let t: Vec<Option<i64>> = (0..hours)
        .flat_map(|h| [Some(h * H), Some(h * H)])
        .collect();
    let v: Vec<i64> = (0..2 * hours).collect();
    let events = batch(vec![
        ("uid", Arc::new(Int64Array::from(uid)) as ArrayRef),
        ("t", ts(t)),
        ("v", Arc::new(Int64Array::from(v.clone()))),
    ]);
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let f = std::fs::File::create(place.data.join("ev.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(f, events.schema(), Some(props)).unwrap();
    w.write(&events).unwrap();
    w.close().unwrap();
    let file_len = std::fs::metadata(place.data.join("ev.parquet"))
        .unwrap()
        .len();
    let yaml = format!(
        "project: p\nentities:\n  u: {{ join_keys: [uid] }}\nsources:\n  ev: {{ path: \"{}ev.parquet\", timestamp: t }}\nfeature_views:\n  v:\n    entity: u\n    source: ev\n    features:\n      - {{ name: s, agg: sum, column: v, window: 1d }}\n      - {{ name: n, agg: count, column: \"*\", window: 1d }}\n{}",
        place.prefix, place.storage
    );
    std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
    let on_cluster = runner.is_some();
    let opts = EngineOptions {
        runner,
        ..Default::default()
    };
    let e = Engine::new(Repo::load(dir.path()).unwrap(), opts).unwrap();
    let local = Engine::new(Repo::load(dir.path()).unwrap(), EngineOptions::default()).unwrap();
    let run_on = |e: &'static Engine, times: Vec<i64>| {
        let spine = batch(vec![
            (
                "uid",
                Arc::new(Int64Array::from(vec![1; times.len()])) as ArrayRef,
            ),
            ("event_timestamp", ts(times.into_iter().map(Some).collect())),
        ]);
        let req = JoinRequest {
            features: e.repo().resolve_refs(&["v:s", "v:n"]).unwrap(),
            ..Default::default()
        };
        async move { e.join(spine.schema(), vec![spine], &req).await.unwrap() }
    };
    let (e, local): (&'static Engine, &'static Engine) =
        (Box::leak(Box::new(e)), Box::leak(Box::new(local)));
    let run = |times: Vec<i64>| run_on(e, times);
    // key 1's event of hour h has value 2h; a 1d window (t − 1d, t] at an exact hour holds 24
    let expect = |t: i64| -> i64 { ((t / H - 23)..=(t / H)).map(|h| 2 * h).sum() };
    let late = [98 * DAY + 5 * H, 99 * DAY];
    let served = || crate::s3::SERVER.served(place.bucket());
    // The first join reads the footers (for the schema and the scan estimate); count what
    // the server sent for the scan alone, in a second run.
    run(late.to_vec()).await;
    let before = served();
    let mut out = run(late.to_vec()).await;
    let mut requested = served() - before;
    if on_cluster {
        // each executor reads a file's footer once; the job may have gone to a cold one
        for _ in 0..3 {
            let before = served();
            out = run(late.to_vec()).await;
            requested = requested.min(served() - before);
        }
    }
    if !place.storage.is_empty() {
        assert!(
            requested * 4 < file_len && requested > 0,
            "a late spine over S3 requested {requested} of a {file_len}-byte file"
        );
    }
    assert_eq!(i64s(&out.batch, "s"), late.map(|t| Some(expect(t))));
    assert_eq!(i64s(&out.batch, "n"), [Some(24), Some(24)]);
    let before = served();
    let wide = run(vec![2 * DAY, 99 * DAY]).await;
    let wide_requested = served() - before;
    if !place.storage.is_empty() {
        // and a spine across the whole file requested most of it
        assert!(
            requested * 5 < wide_requested,
            "late {requested}, wide {wide_requested} of {file_len} bytes"
        );
    }
    assert_eq!(i64s(&wide.batch, "s")[1], Some(expect(99 * DAY)));
    if !on_cluster {
        // the late spine needs about 2 of the 100 days
        assert!(
            out.bytes_scanned * 10 < wide.bytes_scanned,
            "late {} wide {}",
            out.bytes_scanned,
            wide.bytes_scanned
        );
        return;
    }
    // On a cluster the same row groups are read as locally: the two spines' reads differ by
    // what they differ by locally. (Each job's executors also read the page index again,
    // a fixed amount: their sessions do not keep DataFusion's metadata cache between jobs.)
    run_on(local, late.to_vec()).await;
    let (l_late, l_wide) = (
        run_on(local, late.to_vec()).await.bytes_scanned,
        run_on(local, vec![2 * DAY, 99 * DAY]).await.bytes_scanned,
    );
    assert_eq!(
        wide.bytes_scanned - out.bytes_scanned,
        l_wide - l_late,
        "cluster: late {} wide {}; local: late {l_late} wide {l_wide}",
        out.bytes_scanned,
        wide.bytes_scanned
    );
    assert!(
        out.bytes_scanned < l_late + 16 * 1024,
        "{} vs {l_late}",
        out.bytes_scanned
    );
}
