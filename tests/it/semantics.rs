//! One test per rule of DESIGN §3, each window edge on both sides.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampSecondArray,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use crate::common::*;

/// The lecture's example: spend over the last 30 days, window closed at both ends.
const LECTURE: &str = r#"
project: lecture
entities:
  user: { join_keys: [user_id] }
sources:
  purchases: { timestamp: purchase_date }
feature_views:
  user_purchases:
    entity: user
    source: purchases
    features:
      - { name: amt_30d, agg: sum, column: purchase_amt, window: 30d, closed: both }
      - { name: amt_30d_right, agg: sum, column: purchase_amt, window: 30d }
"#;

fn lecture_data() -> (RecordBatch, RecordBatch) {
    let d = |day: i64| Some(19723 * DAY + day * DAY); // 2024-01-01 + day
    let purchases = batch(vec![
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 1, 2, 3])) as ArrayRef,
        ),
        ("purchase_date", ts(vec![d(0), d(30), d(9), d(60)])),
        (
            "purchase_amt",
            Arc::new(Int64Array::from(vec![100, 700, 50, 20])),
        ),
    ]);
    let spine = batch(vec![
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 1, 2, 3])) as ArrayRef,
        ),
        ("event_timestamp", ts(vec![d(0), d(30), d(39), d(31)])),
    ]);
    (purchases, spine)
}

#[tokio::test]
async fn lecture_example_golden() {
    let (purchases, spine) = lecture_data();
    let e = engine(repo(LECTURE), &[("purchases", &purchases)], 8192, 2);
    let out = join(
        &e,
        &spine,
        &["user_purchases:amt_30d", "user_purchases:amt_30d_right"],
    )
    .await
    .unwrap();
    assert_eq!(
        i64s(&out, "amt_30d"),
        [Some(100), Some(800), Some(50), None]
    );
    // closed: right drops the events exactly 30 days back
    assert_eq!(
        i64s(&out, "amt_30d_right"),
        [Some(100), Some(700), None, None]
    );
}

const RULES: &str = r#"
project: rules
entities:
  user: { join_keys: [uid] }
sources:
  ev: { timestamp: t, created_timestamp: c }
  evc: { timestamp: t, created_timestamp: c, filter_created: true }
feature_views:
  w:
    entity: user
    source: ev
    features:
      - { name: n_right, agg: count, column: "*", window: 10h }
      - { name: n_left, agg: count, column: "*", window: 10h, closed: left }
      - { name: n_both, agg: count, column: "*", window: 10h, closed: both }
      - { name: n_neither, agg: count, column: "*", window: 10h, closed: neither }
      - { name: n_off, agg: count, column: "*", window: 2h, offset: 1h, closed: both }
      - { name: n_life, agg: count, column: "*" }
      - { name: n_life_left, agg: count, column: "*", closed: left }
      - { name: cnt_v, agg: count, column: v }
      - { name: sum_v, agg: sum, column: v }
      - { name: sum_f, agg: sum, column: f }
      - { name: mean_v, agg: mean, column: v }
      - { name: min_s, agg: min, column: s }
      - { name: max_t, agg: max, column: t }
      - { name: first_v, agg: first, column: v }
      - { name: last_v, agg: last, column: v }
      - { name: sd_v, agg: stddev, column: v }
      - { name: var_v, agg: var, column: v }
      - { name: nd_s, agg: count_distinct, column: s }
      - { name: big, agg: sum, column: v, filter: "s = 'a'" }
  latest:
    entity: user
    source: ev
    ttl: 5h
    features:
      - { name: v }
      - { name: s }
  latest_nottl:
    entity: user
    source: ev
    features:
      - { name: v }
  visible:
    entity: user
    source: evc
    features:
      - { name: seen, agg: count, column: "*" }
      - { name: v }
"#;

/// Events of user 1 at hours 0, 10, 10 (tie), 15; user 2 has nothing but nulls.
fn rules_events() -> RecordBatch {
    batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from(vec![1, 1, 1, 1, 2])) as ArrayRef,
        ),
        (
            "t",
            ts(vec![
                Some(0),
                Some(10 * H),
                Some(10 * H),
                Some(15 * H),
                Some(0),
            ]),
        ),
        (
            "c",
            ts(vec![
                Some(0),
                Some(12 * H),
                Some(11 * H),
                Some(15 * H),
                Some(0),
            ]),
        ),
        (
            "v",
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                Some(3),
                None,
                None,
            ])),
        ),
        (
            "f",
            Arc::new(Float64Array::from(vec![
                Some(0.5),
                Some(0.25),
                None,
                Some(1.0),
                None,
            ])),
        ),
        (
            "s",
            Arc::new(StringArray::from(vec![
                Some("b"),
                Some("a"),
                Some("c"),
                Some("a"),
                None,
            ])),
        ),
    ])
}

async fn rules(spine_t: Vec<Option<i64>>, uids: Vec<Option<i64>>, feats: &[&str]) -> RecordBatch {
    let ev = rules_events();
    let e = engine(repo(RULES), &[("ev", &ev), ("evc", &ev)], 3, 2);
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(uids)) as ArrayRef),
        ("event_timestamp", ts(spine_t)),
    ]);
    join(&e, &spine, feats).await.unwrap()
}

#[tokio::test]
async fn each_closure_at_each_edge() {
    // t = 10h: the window's start is 0h (event at 0h) and end is 10h (two events at 10h).
    let out = rules(
        vec![Some(10 * H), Some(10 * H + 1), Some(10 * H - 1)],
        vec![Some(1); 3],
        &["w:n_right", "w:n_left", "w:n_both", "w:n_neither"],
    )
    .await;
    assert_eq!(i64s(&out, "n_right"), [Some(2), Some(2), Some(1)]);
    assert_eq!(i64s(&out, "n_left"), [Some(1), Some(2), Some(1)]);
    assert_eq!(i64s(&out, "n_both"), [Some(3), Some(2), Some(1)]);
    assert_eq!(i64s(&out, "n_neither"), [Some(0), Some(2), Some(1)]);
}

#[tokio::test]
async fn offset_shifts_the_window() {
    // window [t-3h, t-1h]: at t=11h it holds 10h (x2); at t=13h+1us it holds nothing
    let out = rules(
        vec![Some(11 * H), Some(13 * H + 1), Some(16 * H)],
        vec![Some(1); 3],
        &["w:n_off"],
    )
    .await;
    assert_eq!(i64s(&out, "n_off"), [Some(2), Some(0), Some(1)]);
}

#[tokio::test]
async fn lifetime_windows() {
    let out = rules(
        vec![Some(15 * H), Some(-1)],
        vec![Some(1); 2],
        &["w:n_life", "w:n_life_left"],
    )
    .await;
    assert_eq!(i64s(&out, "n_life"), [Some(4), Some(0)]);
    assert_eq!(i64s(&out, "n_life_left"), [Some(3), Some(0)]);
}

#[tokio::test]
async fn aggregates_ignore_nulls_and_keep_types() {
    let all = [
        "w:cnt_v",
        "w:sum_v",
        "w:sum_f",
        "w:mean_v",
        "w:min_s",
        "w:max_t",
        "w:first_v",
        "w:last_v",
        "w:sd_v",
        "w:var_v",
        "w:nd_s",
    ];
    let out = rules(
        vec![Some(20 * H), Some(20 * H), Some(0)],
        vec![Some(1), Some(2), Some(1)],
        &all,
    )
    .await;
    assert_eq!(i64s(&out, "cnt_v"), [Some(3), Some(0), Some(1)]);
    assert_eq!(i64s(&out, "sum_v"), [Some(6), None, Some(1)]);
    assert_eq!(data_type(&out, "sum_v"), DataType::Int64);
    assert_eq!(f64s(&out, "sum_f"), [Some(1.75), None, Some(0.5)]);
    assert_eq!(f64s(&out, "mean_v"), [Some(2.0), None, Some(1.0)]);
    assert_eq!(
        strs(&out, "min_s"),
        [Some("a".into()), None, Some("b".into())]
    );
    assert_eq!(
        data_type(&out, "max_t"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let max_t = out
        .column_by_name("max_t")
        .unwrap()
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    // user 2's only event has null values but a time: max(t) sees it
    assert_eq!(
        max_t.iter().collect::<Vec<_>>(),
        [Some(15 * H), Some(0), Some(0)]
    );
    assert_eq!(i64s(&out, "first_v"), [Some(1), None, Some(1)]);
    // latest non-null: the two 10h events tie; created 12h beats 11h, so v=2 is later than v=3
    assert_eq!(i64s(&out, "last_v"), [Some(2), None, Some(1)]);
    assert_eq!(f64s(&out, "var_v"), [Some(1.0), None, None]);
    assert_eq!(f64s(&out, "sd_v"), [Some(1.0), None, None]);
    assert_eq!(i64s(&out, "nd_s"), [Some(3), Some(0), Some(1)]);
}

#[tokio::test]
async fn filter_selects_events() {
    let out = rules(vec![Some(20 * H)], vec![Some(1)], &["w:big"]).await;
    // s = 'a' at 10h (v=2) and 15h (v=null)
    assert_eq!(i64s(&out, "big"), [Some(2)]);
}

#[tokio::test]
async fn latest_value_ttl_inclusive_and_nulls_kept() {
    // at 15h the latest event (v null) is returned as null, not the older v=2
    // at 20h: 15h is exactly 5h old -> inside; at 20h+1us it has expired
    let out = rules(
        vec![
            Some(15 * H),
            Some(20 * H),
            Some(20 * H + 1),
            Some(12 * H),
            Some(-1),
        ],
        vec![Some(1); 5],
        &["latest:v", "latest:s", "latest_nottl:v"],
    )
    .await;
    assert_eq!(i64s(&out, "latest__v"), [None, None, None, Some(2), None]);
    assert_eq!(
        strs(&out, "s"),
        [
            Some("a".into()),
            Some("a".into()),
            None,
            Some("a".into()),
            None
        ]
    );
    assert_eq!(
        i64s(&out, "latest_nottl__v"),
        [None, None, None, Some(2), None]
    );
}

#[tokio::test]
async fn ties_break_on_created_then_source_order() {
    let ev = batch(vec![
        (
            "uid",
            Arc::new(Int64Array::from(vec![1, 1, 1, 2, 2])) as ArrayRef,
        ),
        ("t", ts(vec![Some(H), Some(H), Some(H), Some(H), Some(H)])),
        ("c", ts(vec![Some(5), Some(9), Some(9), Some(1), Some(1)])),
        ("v", Arc::new(Int64Array::from(vec![10, 20, 30, 40, 50]))),
        ("f", Arc::new(Float64Array::from(vec![0.0; 5]))),
        ("s", Arc::new(StringArray::from(vec!["x"; 5]))),
    ]);
    let e = engine(repo(RULES), &[("ev", &ev), ("evc", &ev)], 1, 3);
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(2 * H), Some(2 * H)])),
    ]);
    let out = join(&e, &spine, &["latest_nottl:v", "w:first_v", "w:last_v"])
        .await
        .unwrap();
    // user 1: created 9 twice -> the later row (30) is latest; first is created 5 (10)
    assert_eq!(i64s(&out, "v"), [Some(30), Some(50)]);
    assert_eq!(i64s(&out, "first_v"), [Some(10), Some(40)]);
    assert_eq!(i64s(&out, "last_v"), [Some(30), Some(50)]);
}

#[tokio::test]
async fn filter_created_hides_backfilled_events() {
    // at 11h the 10h events were created at 12h and 11h: only the one created at 11h is seen
    let out = rules(
        vec![Some(11 * H), Some(12 * H)],
        vec![Some(1); 2],
        &["visible:seen", "visible:v"],
    )
    .await;
    assert_eq!(i64s(&out, "seen"), [Some(2), Some(3)]);
    assert_eq!(i64s(&out, "v"), [Some(3), Some(2)]);
}

#[tokio::test]
async fn output_contract_order_duplicates_nulls() {
    let out = rules(
        vec![Some(20 * H), None, Some(20 * H), Some(1), Some(20 * H)],
        vec![Some(1), Some(1), None, Some(1), Some(1)],
        &["w:n_life", "w:sum_v"],
    )
    .await;
    let cols: Vec<String> = out
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(cols, ["uid", "event_timestamp", "n_life", "sum_v"]);
    assert_eq!(
        i64s(&out, "uid"),
        [Some(1), Some(1), None, Some(1), Some(1)]
    );
    assert_eq!(
        i64s(&out, "n_life"),
        [Some(4), Some(0), Some(0), Some(1), Some(4)]
    );
    assert_eq!(i64s(&out, "sum_v"), [Some(6), None, None, Some(1), Some(6)]);
}

#[tokio::test]
async fn integer_sum_overflow_is_an_error() {
    let ev = batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
        ("t", ts(vec![Some(0), Some(1)])),
        ("c", ts(vec![Some(0), Some(1)])),
        ("v", Arc::new(Int64Array::from(vec![i64::MAX, 1]))),
        ("f", Arc::new(Float64Array::from(vec![0.0; 2]))),
        ("s", Arc::new(StringArray::from(vec!["x"; 2]))),
    ]);
    let e = engine(repo(RULES), &[("ev", &ev), ("evc", &ev)], 8192, 1);
    let spine = batch(vec![
        ("uid", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(0), Some(H)])),
    ]);
    let err = join(&e, &spine, &["w:sum_v"])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "feature `w:sum_v`: integer sum overflows Int64 at spine row 1"
    );
}

const MULTI: &str = r#"
project: multi
entities:
  pair: { join_keys: [a, b] }
sources:
  ev: { timestamp: t }
feature_views:
  v1:
    entity: pair
    source: ev
    features: [ { name: n, agg: count, column: "*", window: 1d } ]
  v2:
    entity: pair
    source: ev
    features: [ { name: n, agg: sum, column: x, window: 2d } ]
"#;

#[tokio::test]
async fn composite_keys_zones_dates_and_name_collisions() {
    // Events in seconds with a +05:00 zone: the stored values are UTC epoch seconds.
    let ev = batch(vec![
        (
            "a",
            Arc::new(Int64Array::from(vec![1, 1, 1, 2])) as ArrayRef,
        ),
        ("b", Arc::new(StringArray::from(vec!["x", "y", "x", "x"]))),
        (
            "t",
            Arc::new(
                TimestampSecondArray::from(vec![0, 3600, 86_400, 86_400]).with_timezone("+05:00"),
            ),
        ),
        ("x", Arc::new(Float64Array::from(vec![1.0, 2.0, 4.0, 8.0]))),
    ]);
    let e = engine(repo(MULTI), &[("ev", &ev)], 2, 2);
    // The spine's time is a date: midnight UTC of day 1 = 86 400 s.
    let spine = batch(vec![
        ("a", Arc::new(Int64Array::from(vec![1, 1, 2])) as ArrayRef),
        ("b", Arc::new(StringArray::from(vec!["x", "y", "y"]))),
        ("day", Arc::new(Date32Array::from(vec![1, 1, 1]))),
    ]);
    let out = join(&e, &spine, &["v1:n", "v2:n"]).await.unwrap();
    let cols: Vec<String> = out
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(cols, ["a", "b", "day", "v1__n", "v2__n"]);
    assert_eq!(i64s(&out, "v1__n"), [Some(1), Some(1), Some(0)]);
    assert_eq!(f64s(&out, "v2__n"), [Some(5.0), Some(2.0), None]);
}

/// Variance of a window is that of its own values: a NaN or infinity earlier in the same
/// entity's history (outside the window) does not touch it.
#[tokio::test]
async fn variance_ignores_non_finite_values_outside_the_window() {
    let yaml = r#"
project: t
entities:
  user: { join_keys: [uid] }
sources:
  ev: { timestamp: ts }
feature_views:
  v:
    entity: user
    source: ev
    features:
      - { name: var_1h, agg: var, column: x, window: 1h }
      - { name: sd_1h, agg: stddev, column: x, window: 1h }
      - { name: n, agg: count, column: x }
"#;
    for first in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let ev = batch(vec![
            ("uid", Arc::new(Int64Array::from(vec![1, 1, 1])) as ArrayRef),
            ("ts", ts(vec![Some(0), Some(10 * H), Some(10 * H + 1)])),
            (
                "x",
                Arc::new(Float64Array::from(vec![first, 1.0, 3.0])) as ArrayRef,
            ),
        ]);
        let spine = batch(vec![
            ("uid", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("event_timestamp", ts(vec![Some(10 * H + 2)])),
        ]);
        let e = engine(repo(yaml), &[("ev", &ev)], 2, 1);
        // the lifetime count makes the scan read the first event too
        let out = join(&e, &spine, &["v:var_1h", "v:sd_1h", "v:n"])
            .await
            .unwrap();
        assert_eq!(f64s(&out, "var_1h"), vec![Some(2.0)], "first value {first}");
        assert_eq!(
            f64s(&out, "sd_1h"),
            vec![Some(2f64.sqrt())],
            "first value {first}"
        );
    }
}
