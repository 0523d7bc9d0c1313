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
