//! The `quiver` binary end to end: the sample repository, golden output, exit codes, and
//! the output file left alone when a join fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn quiver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("quiver runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn sample_join_matches_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("training.csv");
    let o = quiver(&[
        "join",
        "--repo",
        "sample-data",
        "--spine",
        "sample-data/spine.csv",
        "--service",
        "churn_v1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("4 rows, 10 columns"), "{stdout}");
    let got = std::fs::read_to_string(&out).unwrap();
    let want = std::fs::read_to_string(root().join("tests/golden/sample_churn_v1.csv")).unwrap();
    assert_eq!(got, want);
}

#[test]
fn parquet_output_and_feature_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.parquet");
    let o = quiver(&[
        "join",
        "--repo",
        "sample-data",
        "--spine",
        "sample-data/spine.csv",
        "--features",
        "user_purchases:amt_30d,user_profile:age",
        "--full-names",
        "--explain",
        // the plan of a scan, not a reuse of an earlier test's states
        "--no-reuse",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("PitJoinExec: view=user_purchases"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("scan pruned to event time in [2023-12-02T00:00:00Z, 2024-02-09T00:00:00Z]"),
        "{stdout}"
    );
}

#[test]
fn failed_join_leaves_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keep.csv");
    std::fs::write(&out, "precious\n").unwrap();
    let o = quiver(&[
        "join",
        "--repo",
        "sample-data",
        "--spine",
        "sample-data/spine.csv",
        "--features",
        "user_purchases:nope",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "error: feature view `user_purchases` has no feature `nope`; it has: amt_30d, amt_lifetime, clothing_7d, max_1h_ago, last_category"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

#[test]
fn validate_accepts_sample_and_rejects_mistakes() {
    let o = quiver(&["validate", "--repo", "sample-data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("retail: ok (2 feature views, 2 sources)"));

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("sample-data/quiver.yaml")).unwrap();
    for (from, to, want) in [
        (
            "window: 7d",
            "window: 7days",
            "feature_views.user_purchases.features[2].window: bad duration \"7days\"",
        ),
        (
            "column: purchase_amt, window: 30d",
            "column: purchase_amount, window: 30d",
            "feature_views.user_purchases.features[0].column: source `purchases` has no column `purchase_amount`",
        ),
        (
            "ttl: 365d",
            "tll: 365d",
            "feature_views.user_profile: unknown field `tll`",
        ),
    ] {
        let repo = dir.path().join("quiver.yaml");
        std::fs::write(&repo, text.replacen(from, to, 1)).unwrap();
        // data paths stay relative to the sample folder
        let repo_text = std::fs::read_to_string(&repo).unwrap().replace(
            "path: data/",
            &format!("path: {}/sample-data/data/", root().display()),
        );
        std::fs::write(&repo, repo_text).unwrap();
        let o = quiver(&["validate", "--repo", dir.path().to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{to}");
        let e = stderr(&o);
        assert!(e.contains(want), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "one clear message: {e}");
    }
}

#[test]
fn missing_spine_is_one_clear_error() {
    let o = quiver(&[
        "join",
        "--repo",
        "sample-data",
        "--spine",
        "nope.parquet",
        "--service",
        "churn_v1",
        "--out",
        "/tmp/x.parquet",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("spine: nope.parquet: no such file or folder"),
        "{}",
        stderr(&o)
    );
}

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

#[test]
fn materialize_then_get_serves_the_join_values() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("sample-data"), dir.path());
    // a latest-value view over the CSV source (its times are text)
    let yaml = std::fs::read_to_string(dir.path().join("quiver.yaml"))
        .unwrap()
        .replace(
            "feature_services:",
            "  last_purchase:\n    entity: user\n    source: purchases\n    ttl: 30d\n    features:\n      - { name: purchase_amt }\nfeature_services:",
        );
    std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
    let repo = dir.path().to_str().unwrap();
    let o = quiver(&[
        "materialize",
        "--repo",
        repo,
        "--end",
        "2024-02-09T00:00:00Z",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("user_purchases: 3 entity rows as of 2024-02-09T00:00:00Z"),
        "{out}"
    );
    let o = quiver(&[
        "get",
        "--repo",
        repo,
        "--features",
        "user_purchases:amt_30d,user_profile:age",
        "--entity",
        "user_id=2",
        "--entity",
        "user_id=1",
        "--entity",
        "user_id=7",
        "--at",
        "2024-02-09T00:00:00Z",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["entity", "user_purchases:amt_30d", "user_profile:age"]
    );
    // user 2's profile is from 2022: older than the view's 365d ttl
    assert_eq!(rows[1], ["user_id=2", "50", "EXPIRED"]);
    assert_eq!(rows[2], ["user_id=1", "700", "35"]);
    assert_eq!(rows[3], ["user_id=7", "NOT_FOUND", "NOT_FOUND"]);

    // Later lookups: windows lose their events at the exact microsecond the join does (the
    // 30-day window is closed at both ends), and the latest purchase ages past its ttl.
    let at = |t: &str| -> Vec<Vec<String>> {
        let o = quiver(&[
            "get",
            "--repo",
            repo,
            "--features",
            "user_purchases:amt_30d,last_purchase:purchase_amt",
            "--entity",
            "user_id=1",
            "--entity",
            "user_id=2",
            "--at",
            t,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().skip(1).map(String::from).collect())
            .collect()
    };
    assert_eq!(at("2024-02-09T00:00:00Z"), [["700", "700"], ["50", "50"]]);
    assert_eq!(
        at("2024-02-09T00:00:00.000001Z"),
        [["700", "700"], ["null", "EXPIRED"]]
    );
    assert_eq!(
        at("2024-03-01T00:00:00Z"),
        [["700", "700"], ["null", "EXPIRED"]]
    );
    assert_eq!(
        at("2024-03-01T00:00:00.000001Z"),
        [["null", "EXPIRED"], ["null", "EXPIRED"]]
    );
    let o = quiver(&[
        "get",
        "--repo",
        repo,
        "--features",
        "user_profile:age",
        "--entity",
        "uid=1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has no `user_id`, a join key of `user`"),
        "{}",
        stderr(&o)
    );
}

// ---- versioned datasets (managed tables, registry, lineage, reproduce)

/// A repository whose `purchases` source is a managed table (no `path`).
fn managed_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let profiles = root().join("sample-data/data/profiles");
    let yaml = std::fs::read_to_string(root().join("sample-data/quiver.yaml"))
        .unwrap()
        .replace("    path: data/purchases.csv\n", "")
        .replace("data/profiles/", profiles.to_str().unwrap());
    std::fs::write(dir.path().join("quiver.yaml"), yaml).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(root().join("sample-data/data/purchases.csv"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // part 1: user 1's first purchase and user 2; part 2: the rest (events the spine sees).
    let part = |rows: &[usize]| {
        let mut s = lines[0].clone() + "\n";
        for r in rows {
            s += &(lines[*r].clone() + "\n");
        }
        s
    };
    std::fs::write(dir.path().join("p1.csv"), part(&[1, 3])).unwrap();
    std::fs::write(dir.path().join("p2.csv"), part(&[2, 4, 5])).unwrap();
    std::fs::copy(
        root().join("sample-data/spine.csv"),
        dir.path().join("spine.csv"),
    )
    .unwrap();
    dir
}

fn q(dir: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--repo", dir.to_str().unwrap()]);
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(&all)
        .current_dir(dir)
        .output()
        .expect("quiver runs")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn hash_of(dir: &Path, dataset: &str) -> String {
    let out = ok(q(dir, &["datasets", "show", dataset, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["hash"].as_str().unwrap().to_string()
}

#[test]
fn versioned_datasets_lineage_and_reproduce() {
    let repo = managed_repo();
    let d = repo.path();
    let join = |extra: &[&str]| {
        let mut a = vec!["join", "--spine", "spine.csv", "--service", "churn_v1"];
        a.extend(extra);
        q(d, &a)
    };
    // A join before any ingest says what to do.
    let o = join(&["--out", "x.csv"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("quiver ingest purchases"),
        "{}",
        stderr(&o)
    );

    assert!(ok(q(d, &["ingest", "purchases", "p1.csv"])).contains("purchases@1"));
    // Mistakes are refused, naming the column or file, and leave the table as it was.
    std::fs::write(
        d.join("bad.csv"),
        "user_id,purchase_date,ingested_at,amount,category\n1,2024-01-02T00:00:00Z,2024-01-02T00:00:00Z,5,x\n",
    )
    .unwrap();
    let o = q(d, &["ingest", "purchases", "bad.csv"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("column `amount` is not in the table"),
        "{}",
        stderr(&o)
    );
    std::fs::write(d.join("corrupt.parquet"), b"PAR1 this is not parquet").unwrap();
    let o = q(d, &["ingest", "purchases", "corrupt.parquet"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("corrupt.parquet"), "{}", stderr(&o));
    let log = ok(q(d, &["datasets", "log", "purchases"]));
    assert_eq!(log.lines().count(), 2, "{log}");

    // Training set 1 on purchases@1, then more data arrives.
    let out1 = d.join("t1.csv");
    let said = ok(join(&[
        "--register",
        "train",
        "--out",
        out1.to_str().unwrap(),
        "--explain",
    ]));
    assert!(said.contains("train@1"), "{said}");
    // the plan of a recorded join: the versions read, then the engine's plan
    assert!(said.contains("sources: purchases@1"), "{said}");
    assert!(said.contains("view `user_purchases`"), "{said}");
    let between = chrono_now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(ok(q(d, &["ingest", "purchases", "p2.csv"])).contains("purchases@2"));
    let out2 = d.join("t2.csv");
    assert!(
        ok(join(&[
            "--register",
            "train",
            "--out",
            out2.to_str().unwrap()
        ]))
        .contains("train@2")
    );
    let (t1, t2) = (
        std::fs::read_to_string(&out1).unwrap(),
        std::fs::read_to_string(&out2).unwrap(),
    );
    assert_ne!(t1, t2);
    // The latest version equals what the same join gives on path-based files (the golden).
    let want = std::fs::read_to_string(root().join("tests/golden/sample_churn_v1.csv")).unwrap();
    assert_eq!(t2, want);

    // Pinned and time-travelled joins read the old source version.
    let pinned = d.join("pinned.csv");
    ok(join(&[
        "--source-version",
        "purchases@1",
        "--out",
        pinned.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read_to_string(&pinned).unwrap(), t1);
    let travelled = d.join("travelled.csv");
    ok(join(&[
        "--as-of",
        &between,
        "--out",
        travelled.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read_to_string(&travelled).unwrap(), t1);
    let o = join(&["--source-version", "purchases@9", "--out", "y.csv"]);
    assert!(
        stderr(&o).contains("source `purchases` has no version 9"),
        "{}",
        stderr(&o)
    );

    // Reproduce after the source gained a version, and after the definitions changed.
    let r = ok(q(d, &["reproduce", "train@1"]));
    assert!(r.contains("identical"), "{r}");
    let yaml = std::fs::read_to_string(d.join("quiver.yaml")).unwrap();
    std::fs::write(
        d.join("quiver.yaml"),
        yaml.replace("window: 30d, closed: both", "window: 20d, closed: both"),
    )
    .unwrap();
    let applied = ok(q(d, &["apply"]));
    assert!(
        applied.contains("user_purchases@2: new version"),
        "{applied}"
    );
    assert!(applied.contains("user_profile@1: unchanged"), "{applied}");
    let shown = ok(q(d, &["feature-views", "show", "user_purchases"]));
    assert!(shown.contains("~ feature amt_30d"), "{shown}");
    assert!(ok(q(d, &["reproduce", "train@1"])).contains("identical"));
    assert!(ok(q(d, &["reproduce", "train@2"])).contains("identical"));
    let o = q(d, &["reproduce", "train@9"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("dataset `train` has no version 9"),
        "{}",
        stderr(&o)
    );

    // Seeded splits are deterministic and recorded; their lineage reaches the sources.
    ok(q(
        d,
        &[
            "datasets", "split", "train@2", "--ratio", "0.5", "--seed", "7",
        ],
    ));
    let (a, b) = (hash_of(d, "train_train"), hash_of(d, "train_test"));
    ok(q(
        d,
        &[
            "datasets", "split", "train@2", "--ratio", "0.5", "--seed", "7",
        ],
    ));
    assert_eq!(hash_of(d, "train_train"), a);
    assert_eq!(hash_of(d, "train_test"), b);
    assert!(
        ok(q(d, &["datasets", "log", "train_train"]))
            .lines()
            .count()
            == 2
    );
    assert!(ok(q(d, &["reproduce", "train_test"])).contains("identical"));
    let lineage = ok(q(d, &["lineage", "train_train@1", "--upstream", "--json"]));
    for needle in [
        "\"train\"",
        "\"purchases\"",
        "\"user_purchases\"",
        "\"spine\"",
    ] {
        assert!(lineage.contains(needle), "{needle} in {lineage}");
    }
    let down = ok(q(d, &["lineage", "purchases@1", "--downstream"]));
    assert!(down.contains("dataset train@1"), "{down}");
    assert!(!down.contains("dataset train@2"), "{down}");

    // A filter is a recorded step too, and diff counts the rows.
    ok(q(
        d,
        &[
            "datasets",
            "filter",
            "train@2",
            "--where",
            "churned = 1",
            "--name",
            "churners",
        ],
    ));
    let diff = ok(q(d, &["datasets", "diff", "train@2", "churners"]));
    assert!(diff.contains("rows: +0 added, -2 removed"), "{diff}");
    assert!(ok(q(d, &["reproduce", "churners"])).contains("identical"));
    // A spine file whose name is no dataset name is stored under a cleaned-up one.
    std::fs::copy(d.join("spine.csv"), d.join("my labels.csv")).unwrap();
    ok(q(
        d,
        &[
            "join",
            "--spine",
            "my labels.csv",
            "--service",
            "churn_v1",
            "--register",
            "t2",
        ],
    ));
    let list = ok(q(d, &["datasets", "list"]));
    for name in [
        "purchases",
        "spine",
        "train",
        "train_train",
        "churners",
        "my_labels",
        "t2",
    ] {
        assert!(list.contains(name), "{name} in {list}");
    }
}

fn chrono_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // RFC 3339 in UTC without a date library: via the quiver-core formatter.
    quiver_core::time::format_instant(t.as_micros() as i64)
}

#[test]
fn concurrent_ingests_never_corrupt_the_table() {
    let repo = managed_repo();
    let d = repo.path().to_path_buf();
    // First one after the other (versions 1 and 2, 5 rows), then two processes at once.
    for f in ["p1.csv", "p2.csv"] {
        ok(q(&d, &["ingest", "purchases", f]));
    }
    let handles: Vec<_> = ["p1.csv", "p2.csv"]
        .iter()
        .map(|f| {
            let d = d.clone();
            let f = f.to_string();
            std::thread::spawn(move || {
                Command::new(env!("CARGO_BIN_EXE_quiver"))
                    .args(["ingest", "purchases", &f, "--repo", d.to_str().unwrap()])
                    .current_dir(&d)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let outs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let succeeded = outs.iter().filter(|o| o.status.success()).count();
    for o in &outs {
        if !o.status.success() {
            assert!(
                stderr(o).contains("conflict") || stderr(o).contains("commit"),
                "{}",
                stderr(o)
            );
        }
    }
    // Earlier sequential ingests made versions 1 and 2; every success added one, and the
    // table reads back with exactly the rows committed.
    let log = ok(q(&d, &["datasets", "log", "purchases", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&log).unwrap();
    let versions = v.as_array().unwrap();
    assert_eq!(versions.len(), 2 + succeeded);
    let rows = versions.last().unwrap()["state"]["rows"].as_u64().unwrap();
    assert_eq!(rows, 5 + rows_added(&outs));
    ok(q(
        &d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            "z.csv",
        ],
    ));
}

fn rows_added(outs: &[Output]) -> u64 {
    // p1 holds 2 rows, p2 holds 3; which succeeded is in the message.
    outs.iter()
        .enumerate()
        .filter(|(_, o)| o.status.success())
        .map(|(i, _)| if i == 0 { 2 } else { 3 })
        .sum()
}

// ---- models: train, register, select, lineage, impact, sql

/// A repository with a managed source of synthetic purchases and a labelled spine where
/// churn follows spending: enough rows to train and to halve.
fn model_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("quiver.yaml"),
        "project: m
entities:
  user: { join_keys: [user_id] }
sources:
  purchases: { timestamp: ts }
feature_views:
  spend:
    entity: user
    source: purchases
    features:
      - { name: amt_30d, agg: sum, column: amount, window: 30d }
      - { name: n_30d, agg: count, column: '*', window: 30d }
      - { name: last_amount, column: amount }
",
    )
    .unwrap();
    let mut events = String::from("user_id,ts,amount,country\n");
    let mut spine = String::from("user_id,event_timestamp,churned,country\n");
    let mut state = 12345u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for u in 0..120u32 {
        let heavy = u % 3 == 0;
        let country = if u % 2 == 0 { "US" } else { "DE" };
        for e in 0..(2 + rnd() % 4) {
            let day = 1 + (rnd() % 27);
            let amount = if heavy {
                80 + rnd() % 40
            } else {
                5 + rnd() % 30
            };
            let _ = e;
            events += &format!("{u},2024-01-{day:02}T12:00:00Z,{amount},{country}\n");
        }
        // Light spenders churn (with some noise).
        let churned = if rnd() % 10 == 0 {
            heavy as u8
        } else {
            (!heavy) as u8
        };
        spine += &format!("{u},2024-01-31T00:00:00Z,{churned},{country}\n");
    }
    std::fs::write(dir.path().join("events.csv"), events).unwrap();
    std::fs::write(dir.path().join("labels.csv"), spine).unwrap();
    dir
}

fn model_json(dir: &Path, model: &str) -> serde_json::Value {
    serde_json::from_str(&ok(q(dir, &["models", "show", model, "--json"]))).unwrap()
}

#[test]
fn models_train_register_select_and_trace() {
    let repo = model_repo();
    let d = repo.path();
    ok(q(d, &["ingest", "purchases", "events.csv"]));
    ok(q(
        d,
        &[
            "join",
            "--spine",
            "labels.csv",
            "--features",
            "spend:amt_30d,spend:n_30d,spend:last_amount",
            "--register",
            "churn_set",
        ],
    ));
    ok(q(
        d,
        &[
            "datasets",
            "split",
            "churn_set",
            "--ratio",
            "0.7",
            "--seed",
            "1",
        ],
    ));
    ok(q(
        d,
        &[
            "datasets",
            "filter",
            "churn_set_test",
            "--where",
            "country = 'US'",
            "--name",
            "eval_us",
        ],
    ));

    // Trained models carry metrics on the eval set, measured costs and their features.
    let t = |algo: &str, extra: &[&str]| {
        let mut a = vec![
            "train",
            "churn",
            "--dataset",
            "churn_set_train",
            "--label",
            "churned",
            "--algo",
            algo,
            "--eval",
            "churn_set_test",
            "--seed",
            "7",
        ];
        a.extend(extra);
        ok(q(d, &a))
    };
    assert!(t("logistic", &[]).contains("churn@1"));
    assert!(t("tree", &["--param", "max_depth=3"]).contains("churn@2"));
    assert!(t("tree", &["--param", "max_depth=3"]).contains("churn@3"));
    let (m2, m3) = (model_json(d, "churn@2"), model_json(d, "churn@3"));
    // Same data, params and seed: a byte-identical artifact.
    assert_eq!(m2["artifact"]["hash"], m3["artifact"]["hash"]);
    // ... and rebuilt from lineage: the split training set from the sources, then the model
    let r = ok(q(d, &["reproduce", "model:churn@2"]));
    assert!(
        r.contains("churn@2: training set churn_set_train@1: identical"),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "churn@2: artifact: identical (hash {})",
            m2["artifact"]["hash"].as_str().unwrap()
        )),
        "{r}"
    );
    let r = ok(q(d, &["models", "reproduce", "churn@1"]));
    assert!(r.contains("artifact: identical"), "{r}");
    let auc = m2["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "auc")
        .unwrap();
    assert_eq!(auc["eval"]["name"], "churn_set_test");
    assert!(auc["value"].as_f64().unwrap() > 0.7, "{auc}");
    for cost in ["size_bytes", "latency_mean_ms", "latency_p99_ms"] {
        assert!(m2["costs"][cost].as_f64().is_some(), "{cost}: {m2}");
    }
    assert_eq!(m2["features"].as_array().unwrap().len(), 3);
    let m1 = model_json(d, "churn@1");
    let t1 = m1["metrics"].as_array().unwrap().len();
    assert_eq!(t1, 3, "auc, accuracy, logloss: {m1}");

    // Aliases move; show and predict accept them.
    ok(q(d, &["models", "alias", "churn@1", "champion"]));
    ok(q(d, &["models", "alias", "churn@2", "champion"]));
    assert_eq!(model_json(d, "churn@champion")["version"], 2);
    let pred = d.join("pred.csv");
    assert!(
        ok(q(
            d,
            &[
                "predict",
                "churn@champion",
                "--dataset",
                "eval_us",
                "--out",
                pred.to_str().unwrap()
            ]
        ))
        .contains("predictions")
    );
    assert!(
        std::fs::read_to_string(&pred)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .ends_with(",prediction")
    );
    let diff = ok(q(d, &["models", "diff", "churn@1", "churn@2"]));
    assert!(
        diff.contains("algo *") && diff.contains("param max_depth *"),
        "{diff}"
    );

    // A model registered from outside, derived from another.
    std::fs::write(d.join("ext.bin"), b"external model bytes").unwrap();
    let reg = ok(q(
        d,
        &[
            "models",
            "register",
            "ext",
            "--artifact",
            "ext.bin",
            "--dataset",
            "churn_set_train@1",
            "--metric",
            "auc@churn_set_test@1=0.99",
            "--cost",
            "latency_p99_ms=50",
            "--param",
            "lr=0.1",
            "--parent",
            "churn@2",
        ],
    ));
    assert!(reg.contains("ext@1"), "{reg}");
    // Quiver cannot retrain it, and says so
    let o = q(d, &["reproduce", "model:ext@1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a model Quiver can run"),
        "{}",
        stderr(&o)
    );
    // Bad input: nothing registered.
    for (args, msg) in [
        (vec!["--metric", "auc@nope@1=0.5"], "unknown dataset `nope`"),
        (
            vec!["--metric", "auc@churn_set_test@9=0.5"],
            "has no version 9",
        ),
        (
            vec!["--parent", "churn@99"],
            "model `churn` has no version 99",
        ),
    ] {
        let mut a = vec![
            "models",
            "register",
            "ext",
            "--artifact",
            "ext.bin",
            "--dataset",
            "churn_set_train",
        ];
        a.extend(args);
        let o = q(d, &a);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(msg), "{msg}: {}", stderr(&o));
    }
    let o = q(
        d,
        &[
            "models",
            "register",
            "ext",
            "--artifact",
            "missing.bin",
            "--dataset",
            "churn_set_train",
        ],
    );
    assert!(stderr(&o).contains("missing.bin"), "{}", stderr(&o));
    let o = q(
        d,
        &[
            "models",
            "register",
            "ext",
            "--artifact",
            "ext.bin",
            "--dataset",
            "churn_set_train@5",
        ],
    );
    assert!(
        stderr(&o).contains("dataset `churn_set_train` has no version 5"),
        "{}",
        stderr(&o)
    );
    assert_eq!(model_json(d, "ext")["version"], 1);

    // Selection under a budget.
    let best = ok(q(
        d,
        &[
            "select",
            "best",
            "--metric",
            "auc",
            "--on",
            "churn_set_test",
            "--max",
            "latency_p99_ms=20",
        ],
    ));
    assert!(
        !best.contains("ext@1"),
        "ext violates the latency limit: {best}"
    );
    let best = ok(q(
        d,
        &[
            "select",
            "best",
            "--metric",
            "auc",
            "--on",
            "churn_set_test",
            "--where",
            "name = 'ext'",
        ],
    ));
    assert!(best.contains("ext@1"), "{best}");
    let o = q(
        d,
        &[
            "select",
            "best",
            "--metric",
            "auc",
            "--on",
            "churn_set_test",
            "--max",
            "latency_p99_ms=0",
            "--max",
            "size_bytes=1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("closest:") && stderr(&o).contains("violates"),
        "{}",
        stderr(&o)
    );
    let o = q(
        d,
        &[
            "select",
            "best",
            "--metric",
            "auc",
            "--on",
            "churn_set_test",
            "--max",
            "latency",
        ],
    );
    assert!(stderr(&o).contains("COST=VALUE"), "{}", stderr(&o));
    let o = q(d, &["select", "best", "--metric", "auc", "--on", "nope"]);
    assert!(
        stderr(&o).contains("unknown dataset `nope`"),
        "{}",
        stderr(&o)
    );
    let front = ok(q(
        d,
        &[
            "select",
            "pareto",
            "--metric",
            "auc",
            "--on",
            "churn_set_test",
            "--json",
        ],
    ));
    assert!(front.contains("\"name\""), "{front}");

    // Lineage from the source to the child model, and what goes stale.
    let up = ok(q(d, &["lineage", "ext@1", "--upstream"]));
    for needle in [
        "model churn@2",
        "dataset churn_set_train@1",
        "dataset purchases@1",
        "feature view spend@1",
    ] {
        assert!(up.contains(needle), "{needle} in {up}");
    }
    std::fs::write(
        d.join("more.csv"),
        "user_id,ts,amount,country\n1,2024-01-05T00:00:00Z,3,DE\n",
    )
    .unwrap();
    ok(q(d, &["ingest", "purchases", "more.csv"]));
    let stale = ok(q(d, &["impact", "purchases"]));
    let lines: Vec<&str> = stale.lines().collect();
    let pos = |s: &str| {
        lines
            .iter()
            .position(|l| *l == s)
            .unwrap_or_else(|| panic!("{s} in {stale}"))
    };
    assert!(pos("dataset churn_set@1") < pos("dataset churn_set_train@1"));
    assert!(pos("dataset churn_set_train@1") < pos("model churn@2"));
    assert!(pos("model churn@2") < pos("model ext@1"));
    let stale = ok(q(d, &["impact", "spend:n_30d"]));
    assert_eq!(stale.trim(), "nothing is stale");

    // SQL over everything: the lecture's two questions.
    for m in ["churn@1", "churn@2"] {
        assert!(
            ok(q(d, &["models", "evaluate", m, "--on", "eval_us"])).contains("auc on eval_us@1")
        );
    }
    let q1 = ok(q(
        d,
        &[
            "sql",
            "SELECT model, version, value FROM metrics WHERE metric = 'auc' AND eval_dataset = 'eval_us' ORDER BY value DESC, model, version LIMIT 1",
            "--json",
        ],
    ));
    let rows: serde_json::Value = serde_json::from_str(&q1).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{q1}");
    let best_us = &rows[0];
    let (a1, a2) = (model_json(d, "churn@1"), model_json(d, "churn@2"));
    let us_auc = |m: &serde_json::Value| {
        m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "auc" && x["eval"]["name"] == "eval_us")
            .map(|x| x["value"].as_f64().unwrap())
            .unwrap()
    };
    let want = if us_auc(&a1) >= us_auc(&a2) { 1 } else { 2 };
    assert_eq!(best_us["version"].as_i64(), Some(want), "{q1}");
    let o = q(d, &["models", "evaluate", "ext@1", "--on", "eval_us"]);
    assert!(
        stderr(&o).contains("not a model Quiver can run"),
        "{}",
        stderr(&o)
    );
    let q2 = ok(q(
        d,
        &[
            "sql",
            "SELECT v.name, v.version, v.algo, m.value AS auc, v.latency_p99_ms FROM model_versions v JOIN metrics m ON m.model = v.name AND m.version = v.version WHERE m.metric = 'auc' ORDER BY m.value DESC LIMIT 2",
        ],
    ));
    assert_eq!(q2.lines().count(), 3, "{q2}");
    let q3 = ok(q(
        d,
        &[
            "sql",
            "SELECT count(*) AS n FROM eval_us WHERE country <> 'US'",
            "--json",
        ],
    ));
    assert!(q3.contains("\"n\":0") || q3.contains("\"n\": 0"), "{q3}");
    let o = q(d, &["sql", "DROP TABLE metrics"]);
    assert!(!o.status.success());
}

#[test]
fn halving_stays_in_budget_and_is_seeded() {
    let repo = model_repo();
    let d = repo.path();
    ok(q(d, &["ingest", "purchases", "events.csv"]));
    ok(q(
        d,
        &[
            "join",
            "--spine",
            "labels.csv",
            "--features",
            "spend:amt_30d,spend:n_30d",
            "--register",
            "s",
        ],
    ));
    ok(q(
        d,
        &["datasets", "split", "s", "--ratio", "0.7", "--seed", "2"],
    ));
    let run = |name: &str| {
        ok(q(
            d,
            &[
                "select",
                "halving",
                name,
                "--dataset",
                "s_train",
                "--eval",
                "s_test",
                "--label",
                "churned",
                "--metric",
                "auc",
                "--algo",
                "logistic,tree",
                "--grid",
                "max_depth=1,2,4,8",
                "--grid",
                "alpha=0,1",
                "--budget",
                "400",
                "--eta",
                "2",
                "--k",
                "2",
                "--seed",
                "5",
            ],
        ))
    };
    let a = run("h1");
    let b = run("h2");
    let used: usize = a
        .lines()
        .find(|l| l.starts_with("trained"))
        .and_then(|l| l.split(" on ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(used <= 400, "{a}");
    assert!(a.starts_with("rung 0: 6 configurations"), "{a}");
    // Same seed, same result (models named differently).
    assert_eq!(a.replace("h1@", "h@"), b.replace("h2@", "h@"));
    let tops: Vec<&str> = a.lines().filter(|l| l.starts_with("h1@")).collect();
    assert_eq!(tops.len(), 2, "{a}");
}

#[test]
fn push_to_offline_appends_a_version_and_updates_online_values() {
    let repo = managed_repo();
    let d = repo.path();
    ok(q(d, &["ingest", "purchases", "p1.csv"]));
    let t = "2024-02-09T00:00:00Z";
    ok(q(d, &["materialize", "--end", t]));
    let get = || {
        ok(q(
            d,
            &[
                "get",
                "--entity",
                "user_id=1",
                "--entity",
                "user_id=3",
                "--features",
                "user_purchases:amt_30d,user_purchases:last_category",
                "--at",
                t,
                "--json",
            ],
        ))
    };
    let before = get();
    let said = ok(q(
        d,
        &[
            "push",
            "user_purchases",
            "p2.csv",
            "--to-offline",
            "--at",
            t,
        ],
    ));
    assert!(said.contains("purchases@2: 5 rows in all"), "{said}");
    assert!(said.contains("3 rows pushed"), "{said}");
    let after = get();
    assert_ne!(before, after);
    // A full materialization from the offline store now gives the same values.
    ok(q(d, &["materialize", "--end", t]));
    assert_eq!(get(), after);
    // Pushed to the online store only, a row leaves the offline store alone.
    std::fs::write(
        d.join("p3.csv"),
        "user_id,purchase_date,ingested_at,purchase_amt,category\n1,2024-02-08T00:00:00Z,2024-02-08T00:00:00Z,1,toys\n",
    )
    .unwrap();
    ok(q(d, &["push", "user_purchases", "p3.csv", "--at", t]));
    let pushed = get();
    assert!(pushed.contains("toys"), "{pushed}");
    // The online store keeps the row: materializing again from the offline store counts it.
    ok(q(d, &["materialize", "--end", t]));
    assert_eq!(get(), pushed);
    assert_eq!(
        ok(q(d, &["datasets", "log", "purchases"])).lines().count(),
        3
    );
}

/// Reuse through the CLI: a repeated join is served from stored states, a wider window
/// shows the cost gate's estimates, `--no-reuse` gives the same file, `optimize` plans from
/// the join log and keeps results identical, and a new source version invalidates.
#[test]
fn reuse_explain_and_optimize() {
    let dir = managed_repo();
    let d = dir.path();
    let yaml = std::fs::read_to_string(d.join("quiver.yaml")).unwrap().replace(
        "      - { name: amt_lifetime",
        "      - { name: amt_40d, agg: sum, column: purchase_amt, window: 40d, closed: both }\n      - { name: amt_lifetime",
    );
    std::fs::write(d.join("quiver.yaml"), yaml).unwrap();
    ok(q(d, &["ingest", "purchases", "p1.csv", "p2.csv"]));
    let join = |feats: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "join",
            "--spine",
            "spine.csv",
            "--features",
            feats,
            "--out",
            out,
            "--explain",
        ];
        args.extend(extra);
        ok(q(d, &args))
    };
    let feats = "user_purchases:amt_30d,user_purchases:clothing_7d";
    let first = join(feats, "a.csv", &[]);
    assert!(first.contains("computed from the scan"), "{first}");
    assert!(first.contains("stored"), "{first}");
    // `explain` plans the same choices as the join, and changes nothing
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let manifest = read(".quiver/offline/reuse/manifest.json");
    let log = read(".quiver/offline/reuse/joins.jsonl");
    let plan = ok(q(
        d,
        &["explain", "--spine", "spine.csv", "--features", feats],
    ));
    assert!(plan.contains("exact match"), "{plan}");
    assert!(plan.contains("no event was read"), "{plan}");
    let plan = ok(q(
        d,
        &[
            "explain",
            "--spine",
            "spine.csv",
            "--features",
            "user_purchases:amt_40d",
        ],
    ));
    assert!(plan.contains("cost gate: recompute reads"), "{plan}");
    assert!(plan.contains("the scan would read ≈"), "{plan}");
    assert_eq!(read(".quiver/offline/reuse/manifest.json"), manifest);
    assert_eq!(read(".quiver/offline/reuse/joins.jsonl"), log);
    let again = join(feats, "b.csv", &[]);
    assert!(again.contains("exact match"), "{again}");
    assert!(
        again.contains("no scan: every feature is stored"),
        "{again}"
    );
    assert!(again.contains("2 feature(s) reused"), "{again}");
    assert_eq!(read("a.csv"), read("b.csv"));

    let wide = join("user_purchases:amt_40d", "c.csv", &[]);
    assert!(wide.contains("cost gate: recompute reads"), "{wide}");
    // one row group: the band reads as much as the whole window, so the gate declines
    assert!(
        wide.contains("-> recompute (reuse would not be 5 % faster)"),
        "{wide}"
    );
    join("user_purchases:amt_40d", "d.csv", &["--no-reuse"]);
    assert_eq!(read("c.csv"), read("d.csv"));

    let dry = ok(q(d, &["optimize", "--dry-run"]));
    assert!(dry.contains("source `purchases`"), "{dry}");
    assert!(dry.contains("logged scan(s)"), "{dry}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(q(d, &["optimize", "--dry-run", "--json"]))).unwrap();
    assert!(
        json[0]["plan"]["candidates"].as_array().unwrap().len() == 10,
        "{json}"
    );
    ok(q(d, &["optimize"]));
    join(feats, "e.csv", &["--no-reuse"]);
    assert_eq!(read("a.csv"), read("e.csv"));

    // a new version of the source: nothing stored for the old one is used (or kept)
    ok(q(d, &["ingest", "purchases", "p1.csv"]));
    let manifest = read(".quiver/offline/reuse/manifest.json");
    assert!(!manifest.contains("\"source\":\"purchases\""), "{manifest}");
    let after = join(feats, "f.csv", &[]);
    assert!(after.contains("computed from the scan"), "{after}");

    // `explain` plans against a pinned version too: the states stored for the latest version
    // do not apply to it, and nothing is stored, logged or registered
    let manifest = read(".quiver/offline/reuse/manifest.json");
    let log = read(".quiver/offline/reuse/joins.jsonl");
    let datasets = ok(q(d, &["datasets", "list"]));
    let pinned = ok(q(
        d,
        &[
            "explain",
            "--spine",
            "spine.csv",
            "--features",
            feats,
            "--source-version",
            "purchases@1",
        ],
    ));
    assert!(pinned.contains("sources: purchases@1"), "{pinned}");
    assert!(!pinned.contains("exact match"), "{pinned}");
    assert!(pinned.contains("no event was read"), "{pinned}");
    let latest = ok(q(
        d,
        &["explain", "--spine", "spine.csv", "--features", feats],
    ));
    assert!(latest.contains("exact match"), "{latest}");
    assert_eq!(read(".quiver/offline/reuse/manifest.json"), manifest);
    assert_eq!(read(".quiver/offline/reuse/joins.jsonl"), log);
    assert_eq!(ok(q(d, &["datasets", "list"])), datasets);
}

#[test]
fn init_makes_a_working_repository_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("shop");
    let init = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("init")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("quiver runs")
    };
    let out = ok(init(&["shop"]));
    assert!(out.contains("quiver join --repo"), "{out}");
    let yaml = std::fs::read_to_string(d.join("quiver.yaml")).unwrap();
    assert!(
        yaml.starts_with("project: shop\n") || yaml.contains("\nproject: shop\n"),
        "{yaml}"
    );
    ok(q(&d, &["validate"]));
    // a plan first: it reads no event, and stores nothing
    let plan = ok(q(
        &d,
        &["explain", "--spine", "spine.csv", "--service", "churn_v1"],
    ));
    assert!(plan.contains("view `user_purchases`"), "{plan}");
    assert!(plan.contains("computed from the scan"), "{plan}");
    assert!(!d.join(".quiver/offline/reuse/manifest.json").exists());
    // time travel needs recorded versions: none yet, and the plan does not make a registry
    let travel = q(
        &d,
        &[
            "explain",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--as-of",
            "2024-03-01T00:00:00Z",
        ],
    );
    assert!(!travel.status.success());
    assert!(
        stderr(&travel).contains("no version is recorded yet"),
        "{}",
        stderr(&travel)
    );
    assert!(!d.join(".quiver/registry").exists());
    // the sample's join, from the new folder, gives the golden rows
    ok(q(
        &d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            "t.csv",
        ],
    ));
    let want = std::fs::read_to_string(root().join("tests/golden/sample_churn_v1.csv")).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("t.csv")).unwrap(), want);

    // a second init is refused and leaves every file as it was
    std::fs::write(d.join("quiver.yaml"), "project: mine\n").unwrap();
    let again = init(&["shop"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("quiver.yaml")).unwrap(),
        "project: mine\n"
    );
    // a folder with some of the sample's files but no quiver.yaml: refused before writing
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("spine.csv"), "mine").unwrap();
    let partial = init(&["other"]);
    assert!(
        stderr(&partial).contains("spine.csv already exists"),
        "{}",
        stderr(&partial)
    );
    assert!(!other.join("quiver.yaml").exists());
    assert!(!other.join("data").exists());

    // --empty: a skeleton that validates, named by --project
    let out = ok(init(&["--empty", "--project", "blank", "blank-dir"]));
    assert!(out.contains("quiver validate"), "{out}");
    let v = ok(q(&dir.path().join("blank-dir"), &["validate"]));
    assert!(v.contains("blank: ok (0 feature views, 0 sources)"), "{v}");
}

// ---- Issue 18: defects found by a hostile tryout. Each test is named after what broke.

/// The file that panicked the Parquet reader: `PAR1`, 100 bytes of 0xFF, `PAR1` (its footer
/// declares 4 GiB of metadata).
fn bad_parquet(path: &Path) {
    let mut b = b"PAR1".to_vec();
    b.extend(std::iter::repeat_n(0xFFu8, 100));
    b.extend(b"PAR1");
    std::fs::write(path, b).unwrap();
}

/// A copy of the sample repository in a temporary folder.
fn sample_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("sample-data"), dir.path());
    dir
}

/// Issue 18.2: a malformed Parquet file as a spine, an ingested file, a `datasets add` file
/// or a file of a source folder exited 101 (a panic); each is an error naming the file.
#[test]
fn malformed_parquet_is_an_error_naming_the_file() {
    let dir = sample_repo();
    let d = dir.path();
    let bad = d.join("bad.parquet");
    bad_parquet(&bad);
    let out = d.join("o.csv");
    let failed = |o: Output, what: &str| {
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("bad.parquet"), "{what}: {e}");
        assert!(!e.contains("panicked"), "{what}: {e}");
    };
    let spine = bad.to_str().unwrap();
    failed(
        q(
            d,
            &[
                "join",
                "--spine",
                spine,
                "--service",
                "churn_v1",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        "spine",
    );
    failed(
        q(d, &["datasets", "add", spine, "--name", "s"]),
        "datasets add",
    );
    assert!(!out.exists());
    // a file inside a source folder: validate and join both name it (and the source)
    let part = d.join("data/profiles/bad.parquet");
    bad_parquet(&part);
    for args in [
        vec!["validate"],
        vec![
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            "o.csv",
        ],
    ] {
        let o = q(d, &args);
        failed(o, "source folder");
    }
    let o = q(d, &["validate"]);
    assert!(stderr(&o).contains("source `profiles`"), "{}", stderr(&o));
    std::fs::remove_file(&part).unwrap();
    // an ingest into a managed source
    let m = managed_repo();
    failed(q(m.path(), &["ingest", "purchases", spine]), "ingest");
}

/// Issue 18.3: `--memory-limit` below what the join needs waited for ever at 0 % CPU. It
/// fails at once, naming the least limit; a small limit above it still runs (spilling).
#[test]
fn tiny_memory_limit_fails_fast_naming_the_least_limit() {
    let dir = sample_repo();
    let d = dir.path();
    for limit in ["1KB", "0", "1B", "4KB"] {
        let started = std::time::Instant::now();
        let o = q(
            d,
            &[
                "join",
                "--spine",
                "spine.csv",
                "--service",
                "churn_v1",
                "--out",
                "o.csv",
                "--memory-limit",
                limit,
                "--partitions",
                "2",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{limit}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--memory-limit"), "{limit}: {e}");
        assert!(e.contains("least"), "{limit}: {e}");
        assert!(e.contains("262.1 kB"), "{limit}: {e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{limit}: slow"
        );
    }
    assert!(!d.join("o.csv").exists());
    let o = q(
        d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            "o.csv",
            "--memory-limit",
            "8MB",
            "--partitions",
            "2",
            "--no-reuse",
        ],
    );
    ok(o);
    let want = std::fs::read_to_string(root().join("tests/golden/sample_churn_v1.csv")).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("o.csv")).unwrap(), want);
    let help = ok(quiver(&["join", "--help"]));
    assert!(help.contains("does not bound"), "{help}");
}

/// Issue 18.5: a source folder with a truncated part file, or a part whose `age` is a
/// string, passed `validate`; the join then failed naming neither file nor column.
#[test]
fn validate_reads_every_footer_and_names_the_bad_file_and_column() {
    let dir = sample_repo();
    let d = dir.path();
    let parts = d.join("data/profiles");
    let first = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(
        parts.join("zz-truncated.parquet"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let o = q(d, &["validate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("zz-truncated.parquet"),
        "{}",
        stderr(&o)
    );
    let o = q(
        d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            "o.csv",
        ],
    );
    assert!(
        stderr(&o).contains("zz-truncated.parquet"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(parts.join("zz-truncated.parquet")).unwrap();

    // a part whose `age` holds strings
    write_string_ages(&parts.join("zz-strings.parquet"));
    let o = q(d, &["validate"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("zz-strings.parquet"), "{e}");
    assert!(e.contains("column `age`"), "{e}");
}

/// A profiles part (user_id, updated_at, age, country) whose `age` is a string column.
fn write_string_ages(path: &Path) {
    use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("user_id", Arc::new(Int64Array::from(vec![9]))),
        (
            "updated_at",
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_704_067_200_000_000]).with_timezone("UTC"),
            ),
        ),
        ("age", Arc::new(StringArray::from(vec!["old"]))),
        ("country", Arc::new(StringArray::from(vec!["FR"]))),
    ];
    let batch = arrow::array::RecordBatch::try_from_iter(cols).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Issue 18.6: a `join --register` that failed (an integer sum overflow) still recorded its
/// spine as a dataset version.
#[test]
fn failed_register_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("quiver.yaml"),
        "project: p\nentities:\n  user: { join_keys: [user_id] }\nsources:\n  e: { path: e.csv, timestamp: ts }\nfeature_views:\n  v:\n    entity: user\n    source: e\n    features:\n      - { name: total, agg: sum, column: x }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("e.csv"),
        "user_id,ts,x\n1,2024-01-01T00:00:00Z,9223372036854775807\n1,2024-01-02T00:00:00Z,9223372036854775807\n",
    )
    .unwrap();
    std::fs::write(
        d.join("spine.csv"),
        "user_id,event_timestamp\n1,2024-01-03T00:00:00Z\n",
    )
    .unwrap();
    let o = q(
        d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--features",
            "v:total",
            "--register",
            "t",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("overflows"), "{}", stderr(&o));
    let list = ok(q(d, &["datasets", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"spine") && !names.contains(&"t"),
        "{names:?}"
    );
    // nor the definitions it applied
    let views = ok(q(d, &["feature-views", "list", "--json"]));
    let views: serde_json::Value = serde_json::from_str(&views).unwrap();
    assert_eq!(views, serde_json::json!([]), "{views}");
    assert!(!d.join(".quiver/offline/datasets/spine").exists());
}

/// Issue 18.8: a CSV spine with whole-second times gave an output whose time column was a
/// plain INT64 in Parquet (seconds have no Parquet unit): pyarrow and DuckDB read integers.
#[test]
fn whole_second_csv_times_stay_timestamps_in_parquet() {
    let dir = sample_repo();
    let d = dir.path();
    std::fs::write(
        d.join("s.csv"),
        "user_id,event_timestamp\n1,2024-02-09T00:00:00\n2,2024-02-09T00:00:00\n",
    )
    .unwrap();
    ok(q(
        d,
        &[
            "join",
            "--spine",
            "s.csv",
            "--service",
            "churn_v1",
            "--out",
            "o.parquet",
        ],
    ));
    let f = std::fs::File::open(d.join("o.parquet")).unwrap();
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&f)
        .unwrap();
    let schema = meta.file_metadata().schema_descr();
    let col = (0..schema.num_columns())
        .map(|i| schema.column(i))
        .find(|c| c.name() == "event_timestamp")
        .unwrap();
    assert!(
        matches!(
            col.logical_type_ref(),
            Some(parquet::basic::LogicalType::Timestamp { .. })
        ),
        "event_timestamp is {:?} / {:?}",
        col.physical_type(),
        col.logical_type_ref()
    );
}

/// Issue 18.10: `get` or `materialize` while `quiver serve` holds the online store waited
/// 10 s, then printed sled's lock error twice.
#[test]
fn a_held_online_store_is_named_once_with_the_way_out() {
    let dir = sample_repo();
    let d = dir.path();
    ok(q(d, &["materialize", "--end", "2024-02-09T00:00:00Z"]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--addr", &addr, "--repo", d.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait (bounded) until it listens
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let started = std::time::Instant::now();
    let o = q(
        d,
        &[
            "get",
            "--entity",
            "user_id=1",
            "--features",
            "user_profile:age",
        ],
    );
    let took = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    assert!(up, "the server did not come up");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.matches("another process").count(), 1, "{e}");
    assert!(e.contains("--addr"), "{e}");
    assert!(!e.contains("WouldBlock"), "{e}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
}

// ---- a cluster of processes (issue 20)

/// A child process killed (by pid) and reaped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `quiver ARGS` and return it with the first line it prints (its address), waiting at
/// most 60 s.
fn started(args: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("quiver starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("quiver {args:?} printed nothing in 60 s"));
    (child, line.trim().to_string())
}

/// `quiver scheduler` and two `quiver executor` processes on free loopback ports: the sample
/// join run there writes the bytes the local join writes, and a registered join keeps its
/// version, lineage and reproducibility (the catalog stays with the client).
#[test]
fn a_join_on_a_cluster_of_processes_is_the_local_join() {
    let (_scheduler, said) = started(&["scheduler", "--bind", "127.0.0.1:0"]);
    let url = said
        .strip_prefix("scheduler listening on ")
        .unwrap_or_else(|| panic!("{said}"))
        .to_string();
    assert!(url.starts_with("df://127.0.0.1:"), "{url}");
    let executors: Vec<(Child, String)> = (0..2)
        .map(|_| {
            started(&[
                "executor",
                "--scheduler",
                &url,
                "--bind",
                "127.0.0.1:0",
                "--concurrent-tasks",
                "2",
            ])
        })
        .collect();
    for (_, said) in &executors {
        assert!(said.contains("listening on 127.0.0.1:"), "{said}");
    }

    let dir = sample_repo();
    let d = dir.path();
    let (local, remote) = (d.join("local.csv"), d.join("cluster.csv"));
    let join = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--partitions",
            "3",
            "--no-reuse",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        ok(q(d, &a))
    };
    join(&local, &[]);
    let said = join(&remote, &["--cluster", &url, "--explain"]);
    assert!(
        said.contains(&format!("runs on Ballista cluster {url}")),
        "{said}"
    );
    assert!(said.contains("stage "), "{said}");
    assert_eq!(
        std::fs::read_to_string(&remote).unwrap(),
        std::fs::read_to_string(&local).unwrap()
    );
    // the staged spines are gone
    let staging = d.join(".quiver/offline/staging");
    assert_eq!(
        std::fs::read_dir(&staging).map_or(0, |r| r.count()),
        0,
        "{}",
        staging.display()
    );

    // the same through quiver.yaml, registered: version, lineage and reproduce as locally
    let yaml = std::fs::read_to_string(d.join("quiver.yaml")).unwrap();
    std::fs::write(
        d.join("quiver.yaml"),
        format!("{yaml}\nengine:\n  cluster: {url}\n"),
    )
    .unwrap();
    let said = ok(q(
        d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--register",
            "train",
            "--explain",
        ],
    ));
    assert!(
        said.contains("train@1") && said.contains("runs on Ballista cluster"),
        "{said}"
    );
    std::fs::write(d.join("quiver.yaml"), &yaml).unwrap();
    assert!(ok(q(d, &["reproduce", "train@1"])).contains("identical"));
    let up = ok(q(d, &["lineage", "train@1", "--upstream"]));
    assert!(up.contains("spine"), "{up}");

    // a cluster nobody listens on is named, and nothing is written
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = d.join("gone.csv");
    let o = q(
        d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            gone.to_str().unwrap(),
            "--cluster",
            &format!("df://127.0.0.1:{port}"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("df://127.0.0.1:{port}")),
        "{}",
        stderr(&o)
    );
    assert!(!gone.exists());
    let o = q(
        d,
        &[
            "join",
            "--spine",
            "spine.csv",
            "--service",
            "churn_v1",
            "--out",
            "x.csv",
            "--cluster",
            "127.0.0.1:1",
        ],
    );
    assert!(
        stderr(&o).contains("expected df://HOST:PORT"),
        "{}",
        stderr(&o)
    );
}

// ---- a shared online store (issue 21)

/// Start `quiver serve` on a free loopback port and return it with its address, read from the
/// line it prints once it listens (at most 60 s).
fn serving(dir: &Path) -> (Child, String) {
    let (child, mut addrs) = serving_with(dir, &[], 1);
    (child, addrs.remove(0))
}

/// `quiver serve` with more arguments; returns the first `n` addresses it says it listens on
/// (gRPC first, then HTTP), waiting at most 60 s.
fn serving_with(dir: &Path, extra: &[&str], n: usize) -> (Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(["serve", "--addr", "127.0.0.1:0", "--repo"])
            .arg(dir)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("quiver serve starts"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((_, addr)) = line.rsplit_once(" on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addrs = (0..n)
        .map(|_| {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("quiver serve said where it listens")
        })
        .collect();
    (child, addrs)
}

/// The sample repository with its online store on Redis at `url`.
fn redis_repo(url: &str) -> tempfile::TempDir {
    let dir = sample_repo();
    let yaml = std::fs::read_to_string(dir.path().join("quiver.yaml")).unwrap();
    std::fs::write(
        dir.path().join("quiver.yaml"),
        format!("{yaml}\nonline_store: {{ type: redis, url: \"{url}\" }}\n"),
    )
    .unwrap();
    dir
}

/// `quiver get` through a server (or the store when `addr` is None): the table's rows.
fn get_rows(d: &Path, addr: Option<&str>, users: &[i64]) -> Vec<String> {
    let mut args = vec![
        "get".to_string(),
        "--features".into(),
        "user_purchases:amt_30d,user_purchases:amt_lifetime".into(),
        "--at".into(),
        "2024-02-09T00:00:00Z".into(),
    ];
    if let Some(a) = addr {
        args.extend(["--addr".into(), a.into()]);
    }
    for u in users {
        args.extend(["--entity".into(), format!("user_id={u}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(q(d, &args)).lines().skip(1).map(String::from).collect()
}

/// Two `quiver serve` replicas on one Redis answer alike; a materialization by a third process
/// shows in both; a push through one is seen by the other; Redis restarted under them makes
/// lookups UNAVAILABLE and then work again without restarting either server.
#[test]
fn replicas_share_one_redis_store() {
    let mut redis = quiver_online::testing::RedisServer::start();
    let dir = redis_repo(&redis.url());
    let d = dir.path();
    let (_a, addr_a) = serving(d);
    let (_b, addr_b) = serving(d);
    let users = [1, 2, 3, 7];
    let before = get_rows(d, Some(&addr_a), &users);
    assert!(before.iter().all(|r| r.contains("NOT_FOUND")), "{before:?}");

    ok(q(d, &["materialize", "--end", "2024-02-09T00:00:00Z"]));
    let local = get_rows(d, None, &users);
    assert!(local[0].contains("700"), "{local:?}");
    assert_eq!(get_rows(d, Some(&addr_a), &users), local);
    assert_eq!(get_rows(d, Some(&addr_b), &users), local);

    // A push through replica A: user 3 buys for 7 an hour before T.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let push = |addr: &str| {
        use quiver_grpc::proto::online_service_client::OnlineServiceClient;
        use quiver_grpc::proto::{PushRequest, RepeatedValue, Value, value::Val};
        let col = |v: Vec<Val>| RepeatedValue {
            val: v.into_iter().map(|v| Value { val: Some(v) }).collect(),
        };
        let req = PushRequest {
            feature_view: "user_purchases".into(),
            columns: [
                ("user_id".to_string(), col(vec![Val::Int64Val(3)])),
                (
                    "purchase_date".into(),
                    col(vec![Val::StringVal("2024-02-08T23:00:00Z".into())]),
                ),
                (
                    "ingested_at".into(),
                    col(vec![Val::StringVal("2024-02-08T23:00:00Z".into())]),
                ),
                ("purchase_amt".into(), col(vec![Val::Int64Val(7)])),
                ("category".into(), col(vec![Val::StringVal("food".into())])),
            ]
            .into_iter()
            .collect(),
            to_offline: false,
            at_micros: Some(1_707_436_800_000_000),
        };
        let url = format!("http://{addr}");
        rt.block_on(async move {
            let mut c = OnlineServiceClient::connect(url).await.unwrap();
            c.push(req).await
        })
    };
    push(&addr_a).unwrap();
    let after = get_rows(d, Some(&addr_b), &users);
    assert_ne!(after, local, "the push through A shows through B");
    assert_eq!(after, get_rows(d, Some(&addr_a), &users));
    assert_eq!(after, get_rows(d, None, &users));
    // Pushes through both replicas at once: every one counts (the store's push count makes a
    // replica that computed against an older state compute again).
    std::thread::scope(|s| {
        for addr in [&addr_a, &addr_b, &addr_a, &addr_b] {
            s.spawn(|| push(addr).unwrap());
        }
    });
    let lifetime = |rows: &[String]| -> Vec<String> {
        rows.iter()
            .map(|r| r.split_whitespace().last().unwrap().to_string())
            .collect()
    };
    // user 3: no purchase in the sample, then five pushes of 7
    assert_eq!(lifetime(&get_rows(d, Some(&addr_b), &[3])), ["35"]);

    // Redis down: lookups fail as unavailable, promptly; back up: the same servers answer.
    redis.kill();
    let o = q(
        d,
        &[
            "get",
            "--addr",
            &addr_a,
            "--features",
            "user_purchases:amt_30d",
            "--entity",
            "user_id=1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).to_lowercase().contains("unavailable"),
        "{}",
        stderr(&o)
    );
    redis.restart();
    let back = (0..100).find_map(|_| {
        let o = q(
            d,
            &[
                "get",
                "--addr",
                &addr_b,
                "--features",
                "user_purchases:amt_lifetime",
                "--entity",
                "user_id=3",
                "--at",
                "2024-02-09T00:00:00Z",
            ],
        );
        if o.status.success() {
            Some(String::from_utf8_lossy(&o.stdout).to_string())
        } else {
            std::thread::sleep(std::time::Duration::from_millis(100));
            None
        }
    });
    let back = back.expect("lookups work again after Redis is back");
    assert!(
        back.contains("35"),
        "values survived the restart (AOF): {back}"
    );
}

/// A materialization killed with SIGKILL half-way leaves every entity readable with a whole
/// value (the previous one or the new one) and the previous watermark, so the next
/// incremental run starts from where the last complete one ended; running it again finishes
/// the job.
#[test]
fn a_killed_materialization_leaves_whole_values_on_redis() {
    use quiver_core::store::{FeatureRow, KeyValue, encode_entity_key};
    let redis = quiver_online::testing::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n: i64 = 200_000;
    let mut csv = String::from("user_id,ts,amt\n");
    for u in 0..n {
        csv.push_str(&format!(
            "{u},2024-01-0{}T00:00:00Z,{}\n",
            1 + u % 5,
            u % 97
        ));
    }
    std::fs::write(d.join("ev.csv"), csv).unwrap();
    std::fs::write(
        d.join("quiver.yaml"),
        format!(
            "project: kill\nentities:\n  user: {{ join_keys: [user_id] }}\nsources:\n  ev: {{ path: ev.csv, timestamp: ts }}\nfeature_views:\n  spend:\n    entity: user\n    source: ev\n    features:\n      - {{ name: total, agg: sum, column: amt }}\n      - {{ name: n7, agg: count, column: \"*\", window: 7d }}\nonline_store: {{ type: redis, url: \"{}\" }}\n",
            redis.url()
        ),
    )
    .unwrap();
    let (t0, t1) = ("2024-01-10T00:00:00Z", "2024-01-20T00:00:00Z");
    ok(q(d, &["materialize", "--end", t0]));
    let t0_us = 1_704_844_800_000_000i64;
    let t1_us = 1_705_708_800_000_000i64;

    let repo = quiver_core::Repo::load(d).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(quiver_online::open(&repo)).unwrap();
    let sample: Vec<Vec<u8>> = (0..n)
        .step_by(97)
        .map(|u| encode_entity_key(&[KeyValue::Int(u)]))
        .collect();
    let as_ofs = |keys: &[Vec<u8>]| -> Vec<i64> {
        rt.block_on(store.get_many("spend", keys))
            .unwrap()
            .into_iter()
            .map(|v| {
                FeatureRow::decode(&v.expect("every entity has a value"))
                    .unwrap()
                    .as_of
            })
            .collect()
    };
    assert!(as_ofs(&sample).iter().all(|&t| t == t0_us));

    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(["materialize", "--end", t1, "--repo"])
            .arg(d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill it once some, not all, of the sample carries the new values (bounded wait).
    let started = std::time::Instant::now();
    let mut killed_at = None;
    while started.elapsed() < std::time::Duration::from_secs(120) {
        let got = as_ofs(&sample);
        let new = got.iter().filter(|&&t| t == t1_us).count();
        if new > 0 && new < got.len() {
            child.0.kill().unwrap();
            child.0.wait().unwrap();
            killed_at = Some(new);
            break;
        }
        assert!(
            new == 0,
            "the materialization finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed_at = killed_at.expect("the materialization was caught half-way");
    assert!(killed_at > 0);
    // Every entity: a whole value of one of the two materializations.
    let all: Vec<Vec<u8>> = (0..n)
        .map(|u| encode_entity_key(&[KeyValue::Int(u)]))
        .collect();
    let got = as_ofs(&all);
    assert!(got.iter().all(|&t| t == t0_us || t == t1_us));
    assert!(
        got.contains(&t0_us) && got.contains(&t1_us),
        "killed half-way"
    );
    assert_eq!(
        rt.block_on(store.watermark("spend")).unwrap(),
        Some(t0_us),
        "the watermark moves only when a view is done"
    );
    ok(q(d, &["materialize", "--end", t1]));
    assert!(as_ofs(&all).iter().all(|&t| t == t1_us));
    assert_eq!(rt.block_on(store.watermark("spend")).unwrap(), Some(t1_us));
}

/// A Redis that asks for a password gets it from QUIVER_REDIS_PASSWORD; without it, or with a
/// wrong one, the error says what failed and never shows the password.
#[test]
fn the_redis_password_comes_from_the_environment_only() {
    let redis = quiver_online::testing::RedisServer::start_with(&["--requirepass", "s3cret-Pw"]);
    let dir = redis_repo(&redis.url());
    let d = dir.path();
    let run = |password: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quiver"));
        c.args(["materialize", "--end", "2024-02-09T00:00:00Z", "--repo"])
            .arg(d)
            .env_remove("QUIVER_REDIS_PASSWORD");
        if let Some(p) = password {
            c.env("QUIVER_REDIS_PASSWORD", p);
        }
        c.output().unwrap()
    };
    let o = run(None);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&redis.url()) && e.contains("NOAUTH"), "{e}");
    let o = run(Some("wrong-Pw"));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&redis.url()), "{e}");
    assert!(!e.contains("wrong-Pw") && !e.contains("s3cret-Pw"), "{e}");
    let out = ok(run(Some("s3cret-Pw")));
    assert!(out.contains("user_purchases: 3 entity rows"), "{out}");
}

/// The python of the virtual environment the tests of other projects' Python clients use
/// (made once by tests/python/python-env: Feast, grpcio, grpcio-reflection, pinned).
fn python() -> String {
    let env = Command::new(root().join("tests/python/python-env"))
        .output()
        .expect("tests/python/python-env runs");
    assert!(env.status.success(), "{}", stderr(&env));
    String::from_utf8_lossy(&env.stdout).trim().to_string()
}

/// grpcio's reflection client, which speaks grpc.reflection.v1alpha, lists Quiver's services
/// and describes them (before, `quiver serve` answered v1 only and such clients got
/// UNIMPLEMENTED).
#[test]
fn grpcios_reflection_client_lists_and_describes_the_services() {
    let python = python();
    let dir = sample_repo();
    let (_server, addr) = serving(dir.path());
    let o = Command::new(&python)
        .arg(root().join("tests/python/reflection_client.py"))
        .arg(&addr)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for service in [
        "quiver.v1.OnlineService",
        "quiver.v1.RegistryService",
        "quiver.v1.TrainingService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            got["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == service),
            "{service}: {got}"
        );
    }
    assert_eq!(
        got["methods"],
        serde_json::json!(["GetOnlineFeatures", "Push"])
    );
    assert!(
        got["request_fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "entities"),
        "{got}"
    );
}

/// Feast's own Python client (feast 0.66.0, in the virtual environment of [`python`]), with `online_store: {type: remote}` pointing at `quiver serve
/// --http`, reads the values `quiver get` returns — by feature list and by feature service.
#[test]
fn feasts_own_client_reads_the_http_feature_server() {
    let python = python();
    let dir = sample_repo();
    let d = dir.path();
    // Profiles that have not expired by now, so ages are values, not OUTSIDE_MAX_AGE.
    let yaml = std::fs::read_to_string(d.join("quiver.yaml"))
        .unwrap()
        .replace("ttl: 365d", "ttl: 36500d");
    std::fs::write(d.join("quiver.yaml"), yaml).unwrap();
    ok(q(d, &["materialize"]));
    let (_server, addrs) = serving_with(d, &["--http", "127.0.0.1:0"], 2);
    let out = d.join("feast.json");
    let o = Command::new(&python)
        .arg(root().join("tests/python/feast_remote.py"))
        .arg(format!("http://{}", addrs[1]))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    let users = [1, 2, 3, 7];
    let want = |features: &str| -> serde_json::Value {
        // through the gRPC server: it holds the embedded store
        let mut args = vec!["get", "--json", "--addr", &addrs[0], "--features", features];
        let ents: Vec<String> = users.iter().map(|u| format!("user_id={u}")).collect();
        for e in &ents {
            args.extend(["--entity", e.as_str()]);
        }
        serde_json::from_str(&ok(q(d, &args))).unwrap()
    };
    let features = "user_purchases:amt_30d,user_purchases:amt_lifetime,user_purchases:clothing_7d,user_purchases:last_category,user_profile:age,user_profile:home_country";
    let local = want(features);
    let listed = &got["features"];
    assert_eq!(listed["user_id"], serde_json::json!(users));
    let mut present = 0;
    for reference in features.split(',') {
        let name = reference.split(':').nth(1).unwrap();
        for (e, _) in users.iter().enumerate() {
            let v = &local[e]["features"][reference]["value"];
            assert_eq!(&listed[name][e], v, "{reference}, entity {e}");
            present += !v.is_null() as usize;
        }
    }
    assert!(present >= 12, "the comparison covers values: {present}");
    // The feature service by name: Quiver's churn_v1, full names.
    let service = &got["service"];
    let local = want("user_purchases:amt_30d,user_profile:age");
    for (reference, name) in [
        ("user_purchases:amt_30d", "user_purchases__amt_30d"),
        ("user_profile:age", "user_profile__age"),
    ] {
        for e in 0..users.len() {
            assert_eq!(
                &service[name][e], &local[e]["features"][reference]["value"],
                "{name}, entity {e}"
            );
        }
    }
}

/// The Python client package (`python/`, installed as a user installs it) and its pytest
/// suite against real `quiver serve` processes: training sets over Arrow Flight equal
/// `quiver join`'s, a scikit-learn model registered from Python shows its lineage, online
/// lookups equal `quiver get`, errors are exceptions carrying the server's message.
#[test]
fn the_python_client_passes_its_suite() {
    let python = python();
    let o = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .current_dir(root())
        .env("QUIVER_BIN", env!("CARGO_BIN_EXE_quiver"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{said}");
    assert!(said.contains(" passed"), "{said}");
    assert!(!said.contains("skipped"), "every test ran: {said}");
}

/// `quiver tokens` and a server that requires them: a token printed once and never stored,
/// `get --addr` refused without it and answered with it (flag or QUIVER_TOKEN), revocation
/// taking effect in the running server, token changes in the audit log, metrics on their own
/// address, and a graceful exit on SIGTERM.
#[test]
fn tokens_guard_a_server_end_to_end() {
    let dir = sample_repo();
    let d = dir.path();
    ok(q(d, &["materialize"]));
    let made = q(
        d,
        &["tokens", "create", "--name", "svc-a", "--role", "reader"],
    );
    let token = ok(made.clone()).trim().to_string();
    assert!(token.starts_with("qvt_"), "{token}");
    assert!(stderr(&made).contains("shown once"), "{}", stderr(&made));
    let e = q(
        d,
        &["tokens", "create", "--name", "svc-a", "--role", "reader"],
    );
    assert!(!e.status.success() && stderr(&e).contains("svc-a"));
    let e = q(
        d,
        &["tokens", "create", "--name", "svc-b", "--role", "root"],
    );
    assert!(!e.status.success() && stderr(&e).contains("reader, writer or admin"));
    let listed = ok(q(d, &["tokens", "list", "--json"]));
    assert!(
        listed.contains("svc-a") && listed.contains("reader"),
        "{listed}"
    );
    let secret = token.rsplit('_').next().unwrap();
    assert!(!listed.contains(secret));
    // the secret is in no file of the repository
    fn grep(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                hits.extend(grep(&p, needle));
            } else if std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
            {
                hits.push(p);
            }
        }
        hits
    }
    assert_eq!(grep(d, secret.as_bytes()), Vec::<PathBuf>::new());

    let (server, addrs) = serving_with(d, &["--auth", "--metrics-addr", "127.0.0.1:0"], 2);
    assert_eq!(addrs.len(), 2);
    let get = |extra: &[&str], env: Option<&str>| {
        let mut args = vec![
            "get",
            "--addr",
            addrs[0].as_str(),
            "--entity",
            "user_id=1",
            "--features",
            "user_purchases:amt_lifetime",
        ];
        args.extend_from_slice(extra);
        let mut c = Command::new(env!("CARGO_BIN_EXE_quiver"));
        c.args(&args).args(["--repo", d.to_str().unwrap()]);
        c.env_remove("QUIVER_TOKEN");
        if let Some(t) = env {
            c.env("QUIVER_TOKEN", t);
        }
        c.output().unwrap()
    };
    let refused = get(&[], None);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("token"), "{}", stderr(&refused));
    assert!(ok(get(&["--token", &token], None)).contains("800"));
    assert!(ok(get(&[], Some(&token))).contains("800"));
    ok(q(d, &["tokens", "revoke", "svc-a"]));
    let mut revoked = false;
    for _ in 0..50 {
        if !get(&["--token", &token], None).status.success() {
            revoked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        revoked,
        "the server stops accepting a revoked token within 5 s"
    );

    // metrics: requests by outcome, in Prometheus text
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addrs[1]).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: quiver\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for want in [
        r#"quiver_requests_total{code="UNAUTHENTICATED",method="OnlineService/GetOnlineFeatures",transport="grpc"}"#,
        r#"quiver_requests_total{code="OK",method="OnlineService/GetOnlineFeatures",transport="grpc"}"#,
        "quiver_request_seconds_bucket",
        r#"quiver_online_watermark_seconds{view="user_purchases"}"#,
    ] {
        assert!(metrics.contains(want), "{want} not in {metrics}");
    }

    // SIGTERM: the server finishes and exits by itself
    let mut server = server;
    let child = &mut server.0;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "quiver serve did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    // the token changes are in the audit log, by the command line, without the token
    let audit = std::fs::read_to_string(d.join(".quiver/audit.log")).unwrap();
    assert!(!audit.contains(secret));
    let methods: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            format!(
                "{} {} {} {}",
                v["transport"], v["method"], v["target"], v["outcome"]
            )
        })
        .collect();
    for want in [
        r#""cli" "materialize""#,
        r#""cli" "tokens create" "svc-a" "ok""#,
        r#""cli" "tokens create" "svc-a" "error""#,
        r#""cli" "tokens revoke" "svc-a" "ok""#,
    ] {
        assert!(
            methods.iter().any(|m| m.starts_with(want)),
            "{want} not in {methods:?}"
        );
    }
}
