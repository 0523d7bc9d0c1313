//! Bad input: each error names what was wrong and where.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

use crate::common::*;

const REPO: &str = r#"
project: bad
entities:
  user: { join_keys: [uid] }
sources:
  ev: { timestamp: t }
feature_views:
  v:
    entity: user
    source: ev
    features:
      - { name: total, agg: sum, column: amount, window: 1d }
"#;

fn events() -> datafusion::arrow::array::RecordBatch {
    batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("t", ts(vec![Some(0)])),
        ("amount", Arc::new(Int64Array::from(vec![5]))),
        ("label", Arc::new(StringArray::from(vec!["a"]))),
    ])
}

fn spine() -> datafusion::arrow::array::RecordBatch {
    batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(H)])),
    ])
}

async fn error_with(yaml: &str, spine: &datafusion::arrow::array::RecordBatch) -> String {
    let e = engine(repo(yaml), &[("ev", &events())], 8192, 1);
    join(&e, spine, &["v:total"]).await.unwrap_err().to_string()
}

#[tokio::test]
async fn unknown_source_column() {
    let e = error_with(&REPO.replace("column: amount", "column: amt"), &spine()).await;
    assert!(e.starts_with("test/quiver.yaml: feature_views.v.features[0].column: source `ev` has no column `amt`; it has: uid, t, amount, label"), "{e}");
}

#[tokio::test]
async fn agg_that_does_not_fit_the_type() {
    let e = error_with(&REPO.replace("column: amount", "column: label"), &spine()).await;
    assert!(
        e.contains("feature_views.v.features[0].agg: column `label` is Utf8: `sum` needs a number"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_filter() {
    let e = error_with(
        &REPO.replace("window: 1d", "window: 1d, filter: \"nope > 1\""),
        &spine(),
    )
    .await;
    assert!(
        e.contains("feature_views.v.features[0].filter: cannot use \"nope > 1\""),
        "{e}"
    );
    let e = error_with(
        &REPO.replace("window: 1d", "window: 1d, filter: \"amount + 1\""),
        &spine(),
    )
    .await;
    assert!(
        e.contains(
            "features[0].filter: \"amount + 1\" is Int64, a filter must be a boolean expression"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn bad_time_column() {
    let e = error_with(&REPO.replace("timestamp: t", "timestamp: amount"), &spine()).await;
    assert!(
        e.contains("sources.ev.timestamp: column `amount` is Int64; it must be a timestamp"),
        "{e}"
    );
    let e = error_with(&REPO.replace("timestamp: t", "timestamp: when"), &spine()).await;
    assert!(
        e.contains("sources.ev.timestamp: source has no column `when`"),
        "{e}"
    );
}

#[tokio::test]
async fn key_missing_or_mismatched() {
    let s = batch(vec![
        ("user", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(H)])),
    ]);
    let e = error_with(REPO, &s).await;
    assert!(
        e.contains(
            "spine: has no column `uid` (join key of entity `user`, needed by feature view `v`)"
        ),
        "{e}"
    );
    let s = batch(vec![
        ("uid", Arc::new(StringArray::from(vec!["1"])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(H)])),
    ]);
    let e = error_with(REPO, &s).await;
    assert!(
        e.contains("key `uid` does not match source `ev`: spine has Utf8 and source has Int64"),
        "{e}"
    );
}

#[tokio::test]
async fn spine_time_strings_name_the_row() {
    let s = batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
        (
            "event_timestamp",
            Arc::new(StringArray::from(vec!["2024-01-01T00:00:00Z", "soon"])),
        ),
    ]);
    let e = error_with(REPO, &s).await;
    assert!(
        e.contains("column `event_timestamp`, row 1: cannot read \"soon\" as a time"),
        "{e}"
    );
}

#[tokio::test]
async fn spine_without_time_column() {
    let s = batch(vec![(
        "uid",
        Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )]);
    let e = error_with(REPO, &s).await;
    assert!(
        e.contains("spine: has no `event_timestamp` and no timestamp column"),
        "{e}"
    );
}

#[tokio::test]
async fn source_times_that_are_not_times() {
    let ev = batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("t", Arc::new(StringArray::from(vec!["noon-ish"]))),
        ("amount", Arc::new(Int64Array::from(vec![5]))),
    ]);
    let e = engine(repo(REPO), &[("ev", &ev)], 8192, 1);
    let err = join(&e, &spine(), &["v:total"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("source `ev`: column `t`: cannot read \"noon-ish\" as a time"),
        "{err}"
    );
}
