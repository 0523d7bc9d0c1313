//! Differential tests: the point-in-time operator against a plain-SQL formulation of the same
//! join (range join + GROUP BY, run by DataFusion), on random data with skewed keys, ties on
//! time and created time, nulls in values, keys and spine times, at many batch sizes and
//! partition counts. The SQL below spells the window rules out by hand; it does not use
//! quiver_core's window code, so the two implementations check each other.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::*;
use quiver_offline::runner::PlanRunner;
use quiver_offline::{EngineOptions, JoinRequest};

const AGGS: [&str; 10] = [
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "first",
    "last",
    "stddev",
    "var",
    "count_distinct",
];

struct Case {
    yaml: String,
    /// (view, name, agg or None for latest, column, window, offset, closed, filter)
    features: Vec<Feat>,
    ttl: Option<i64>,
    filter_created: bool,
    /// The source declares its created timestamp (else ties on time fall to source order).
    created: bool,
    events: RecordBatch,
    spine: RecordBatch,
}

impl Case {
    /// The requested features as `view:feature`.
    fn refs(&self) -> Vec<String> {
        self.features
            .iter()
            .map(|f| format!("{}:{}", f.view, f.name))
            .collect()
    }
}

#[derive(Clone)]
struct Feat {
    view: &'static str,
    name: String,
    agg: Option<&'static str>,
    column: &'static str,
    window: Option<i64>,
    offset: i64,
    closed: &'static str,
    filter: Option<&'static str>,
}

fn opt<T>(rng: &mut SmallRng, p_null: f64, v: T) -> Option<T> {
    if rng.random_bool(p_null) {
        None
    } else {
        Some(v)
    }
}

fn skewed_key(rng: &mut SmallRng, nkeys: i64) -> i64 {
    let r: f64 = rng.random();
    (r * r * nkeys as f64) as i64
}

fn gen_case(seed: u64) -> Case {
    gen_shaped(seed, false)
}

/// `late`: the spine covers only the last part of the events' span, and a lifetime window
/// is only ever a first / last, so most events are older than every finite window and
/// only their lifetime picks need them (the engine keeps just those, see `pack`).
fn gen_shaped(seed: u64, late: bool) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let nkeys = rng.random_range(1..12i64);
    let n_ev = rng.random_range(0..250usize);
    let n_sp = rng.random_range(0..60usize);
    let span = rng.random_range(5..120i64);
    // Spread keys apart in some cases: a narrow key range is looked up in a table, a wide
    // one in a hash map.
    let scale = [1i64, 1, 100_003, -100_003][rng.random_range(0..4usize)];
    let mut k = Vec::new();
    let mut t = Vec::new();
    let mut c = Vec::new();
    let mut x = Vec::new();
    let mut iv = Vec::new();
    let mut s = Vec::new();
    for _ in 0..n_ev {
        let key = skewed_key(&mut rng, nkeys) * scale;
        k.push(opt(&mut rng, 0.03, key));
        let mut et = rng.random_range(0..span) * H;
        if late {
            // a microsecond either side of the hours that window edges fall on
            et += rng.random_range(-1..=1i64);
        }
        t.push(opt(&mut rng, 0.03, et));
        let ct = et + rng.random_range(0..3i64) * H;
        c.push(opt(&mut rng, 0.05, ct));
        let xv = (rng.random_range(-1000..1000i64) as f64) / 8.0;
        x.push(opt(&mut rng, 0.1, xv));
        let ivv = rng.random_range(-50..50i64);
        iv.push(opt(&mut rng, 0.1, ivv));
        let sv = ["a", "b", "c", "d"][rng.random_range(0..4usize)];
        s.push(opt(&mut rng, 0.1, sv));
    }
    let events = batch(vec![
        ("k", Arc::new(Int64Array::from(k)) as ArrayRef),
        ("t", ts(t)),
        ("c", ts(c)),
        ("x", Arc::new(Float64Array::from(x))),
        ("i", Arc::new(Int64Array::from(iv))),
        ("s", Arc::new(StringArray::from(s))),
    ]);
    let mut sk = Vec::new();
    let mut st = Vec::new();
    for _ in 0..n_sp {
        let key = (skewed_key(&mut rng, nkeys + 2) * scale) as i32;
        sk.push(opt(&mut rng, 0.04, key));
        let lo = if late { span * 2 / 3 } else { -5 };
        let stv = rng.random_range(lo..span + 10) * H;
        st.push(opt(&mut rng, 0.04, stv));
    }
    let label: Vec<i64> = (0..n_sp as i64).collect();
    // The spine's key is Int32 and the source's Int64: integer keys match by value.
    let spine = batch(vec![
        ("k", Arc::new(Int32Array::from(sk)) as ArrayRef),
        ("event_timestamp", ts(st)),
        ("label", Arc::new(Int64Array::from(label))),
    ]);
    let ttl = [None, Some(3 * H), Some(20 * H)][rng.random_range(0..3usize)];
    let filter_created = rng.random_bool(0.3);
    // from the seed, not the generator, so the other draws of every case stay as they were
    let created = filter_created || !seed.is_multiple_of(3);
    let mut features = Vec::new();
    for j in 0..rng.random_range(1..9usize) {
        let agg = if late {
            // count_distinct keeps its values as Arrow arrays (no reduction); first and
            // last are the lifetime features the reduction serves
            [AGGS[rng.random_range(0..AGGS.len() - 1)], "first", "last"][rng.random_range(0..3)]
        } else {
            AGGS[rng.random_range(0..AGGS.len())]
        };
        let cols: &[&'static str] = match agg {
            "count" => &["*", "x", "i", "s"],
            "sum" | "mean" | "stddev" | "var" => &["x", "i"],
            _ => &["x", "i", "s"],
        };
        let mut column = cols[rng.random_range(0..cols.len())];
        if late && column == "s" {
            // string values stay Arrow arrays, which turns the reduction off for the view
            column = "x";
        }
        let mut window =
            [None, Some(H), Some(5 * H), Some(10 * H), Some(37 * H)][rng.random_range(0..5usize)];
        if late && matches!(agg, "first" | "last") && rng.random_bool(0.5) {
            window = None;
        } else if late && window.is_none() {
            window = Some(2 * H);
        }
        let offset = [0, 0, H, 3 * H][rng.random_range(0..4usize)];
        let closed = ["right", "left", "both", "neither"][rng.random_range(0..4usize)];
        let filter = [None, None, Some("i > 0"), Some("s = 'a'"), Some("x < 10")]
            [rng.random_range(0..5usize)];
        features.push(Feat {
            view: "agg",
            name: format!("f{j}"),
            agg: Some(agg),
            column,
            window,
            offset,
            closed,
            filter,
        });
    }
    for (j, col) in ["x", "i", "s"].iter().enumerate() {
        if rng.random_bool(0.5) {
            features.push(Feat {
                view: "lv",
                name: format!("l{j}"),
                agg: None,
                column: col,
                window: None,
                offset: 0,
                closed: "right",
                filter: None,
            });
        }
    }
    let mut yaml = format!(
        "project: diff\nentities:\n  e: {{ join_keys: [k] }}\nsources:\n  ev: {{ timestamp: t{}, filter_created: {filter_created} }}\nfeature_views:\n  agg:\n    entity: e\n    source: ev\n    features:\n",
        if created {
            ", created_timestamp: c"
        } else {
            ""
        }
    );
    let dur = |us: i64| format!("{}h", us / H);
    for f in features.iter().filter(|f| f.view == "agg") {
        yaml += &format!(
            "      - {{ name: {}, agg: {}, column: \"{}\"",
            f.name,
            f.agg.unwrap(),
            f.column
        );
        if let Some(w) = f.window {
            yaml += &format!(", window: {}", dur(w));
        }
        yaml += &format!(", offset: {}, closed: {}", dur(f.offset), f.closed);
        if let Some(fl) = f.filter {
            yaml += &format!(", filter: \"{fl}\"");
        }
        yaml += " }\n";
    }
    yaml += "  lv:\n    entity: e\n    source: ev\n";
    if let Some(ttl) = ttl {
        yaml += &format!("    ttl: {}\n", dur(ttl));
    }
    yaml += "    features:\n      - { name: lx, column: x }\n";
    for f in features.iter().filter(|f| f.view == "lv") {
        yaml += &format!("      - {{ name: {}, column: {} }}\n", f.name, f.column);
    }
    Case {
        yaml,
        features,
        ttl,
        filter_created,
        created,
        events,
        spine,
    }
}

/// The same join in plain SQL: range join + GROUP BY.
async fn reference(case: &Case) -> RecordBatch {
    let ctx = SessionContext::new();
    let ev = &case.events;
    let n = ev.num_rows();
    let micros = |a: &ArrayRef| cast(a, &DataType::Int64).unwrap();
    let evt = batch(vec![
        ("k", ev.column(0).clone()),
        ("et", micros(ev.column(1))),
        ("ct", micros(ev.column(2))),
        ("x", ev.column(3).clone()),
        ("i", ev.column(4).clone()),
        ("s", ev.column(5).clone()),
        ("seq", Arc::new(UInt64Array::from_iter_values(0..n as u64))),
    ]);
    let sp = &case.spine;
    let spt = batch(vec![
        (
            "rid",
            Arc::new(UInt64Array::from_iter_values(0..sp.num_rows() as u64)) as ArrayRef,
        ),
        ("k", sp.column(0).clone()),
        ("st", micros(sp.column(1))),
    ]);
    ctx.register_batch("ev", evt).unwrap();
    ctx.register_batch("sp", spt).unwrap();
    let visible = if case.filter_created {
        "(ev.ct IS NULL OR ev.ct <= sp.st)"
    } else {
        "TRUE"
    };
    let order = if case.created {
        "ORDER BY ev.et, ev.ct ASC NULLS FIRST, ev.seq"
    } else {
        "ORDER BY ev.et, ev.seq"
    };
    let mut sel = vec!["sp.rid".to_string()];
    for f in &case.features {
        let Some(agg) = f.agg else {
            let lower = case
                .ttl
                .map(|ttl| format!("ev.et >= sp.st - {ttl}"))
                .unwrap_or("TRUE".into());
            sel.push(format!(
                "last_value(ev.{} {order}) FILTER (WHERE ev.et <= sp.st AND {lower} AND {visible}) AS {}",
                f.column, f.name
            ));
            continue;
        };
        let e = format!("(sp.st - {})", f.offset);
        let s = f.window.map(|w| format!("({e} - {w})"));
        let (lo_op, hi_op) = match f.closed {
            "right" => (">", "<="),
            "left" => (">=", "<"),
            "both" => (">=", "<="),
            _ => (">", "<"),
        };
        let mut cond = format!("ev.et {hi_op} {e} AND {visible}");
        if let Some(s) = s {
            cond += &format!(" AND ev.et {lo_op} {s}");
        }
        if let Some(fl) = f.filter {
            cond += &format!(" AND (ev.{fl})");
        }
        let col = format!("ev.{}", f.column);
        let nn = format!("{cond} AND {col} IS NOT NULL");
        let expr = match agg {
            "count" if f.column == "*" => format!("count(ev.seq) FILTER (WHERE {cond})"),
            "count" => format!("count({col}) FILTER (WHERE {cond})"),
            "sum" => format!("sum({col}) FILTER (WHERE {cond})"),
            "mean" => format!("avg({col}) FILTER (WHERE {cond})"),
            "min" => format!("min({col}) FILTER (WHERE {cond})"),
            "max" => format!("max({col}) FILTER (WHERE {cond})"),
            "first" => format!("first_value({col} {order}) FILTER (WHERE {nn})"),
            "last" => format!("last_value({col} {order}) FILTER (WHERE {nn})"),
            "stddev" => format!("stddev_samp({col}) FILTER (WHERE {cond})"),
            "var" => format!("var_samp({col}) FILTER (WHERE {cond})"),
            "count_distinct" => format!("count(DISTINCT CASE WHEN {cond} THEN {col} END)"),
            other => panic!("{other}"),
        };
        sel.push(format!("{expr} AS {}", f.name));
    }
    let sql = format!(
        "SELECT {} FROM sp LEFT JOIN ev ON sp.k = ev.k GROUP BY sp.rid ORDER BY sp.rid",
        sel.join(", ")
    );
    let df = ctx.sql(&sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.unwrap();
    datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn same(a: &ScalarValue, b: &ScalarValue) -> bool {
    match (a, b) {
        (ScalarValue::Float64(Some(x)), ScalarValue::Float64(Some(y))) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0) || (x.is_nan() && y.is_nan())
        }
        (a, b) if a.is_null() && b.is_null() => true,
        _ => a == b,
    }
}

fn compare(case: &Case, got: &RecordBatch, want: &RecordBatch, what: &str) {
    assert_eq!(
        got.num_rows(),
        case.spine.num_rows(),
        "{what}: one row per spine row"
    );
    for c in 0..case.spine.num_columns() {
        assert_eq!(
            got.column(c).as_ref(),
            case.spine.column(c).as_ref(),
            "{what}: spine column {c} unchanged"
        );
    }
    for (j, f) in case.features.iter().enumerate() {
        let g = got.column(case.spine.num_columns() + j);
        let w = want.column(j + 1);
        for r in 0..got.num_rows() {
            let gv = ScalarValue::try_from_array(g, r).unwrap();
            let wv = ScalarValue::try_from_array(w, r).unwrap();
            let wv = if gv.data_type() != wv.data_type() && !wv.is_null() {
                wv.cast_to(&gv.data_type()).unwrap()
            } else {
                wv
            };
            assert!(
                same(&gv, &wv),
                "{what}: feature {} ({:?} of {} window {:?} offset {} closed {} filter {:?}) spine row {r}: got {gv:?}, want {wv:?}\n{}",
                f.name,
                f.agg,
                f.column,
                f.window,
                f.offset,
                f.closed,
                f.filter,
                case.yaml
            );
        }
    }
}

/// The events as a table of `parts` partitions, each a contiguous run of rows: source order
/// is still row order, but the partitions' batches reach the operator interleaved, so ties
/// must be broken by source order, not by arrival.
fn split_table(b: &RecordBatch, batch_size: usize, parts: usize) -> Arc<MemTable> {
    let n = b.num_rows();
    let per = n.div_ceil(parts).max(1);
    let partitions = (0..parts)
        .map(|p| {
            let (lo, hi) = ((p * per).min(n), ((p + 1) * per).min(n));
            let mut slices: Vec<RecordBatch> = (lo..hi)
                .step_by(batch_size)
                .map(|i| b.slice(i, batch_size.min(hi - i)))
                .collect();
            if slices.is_empty() {
                slices.push(b.slice(0, 0));
            }
            slices
        })
        .collect();
    Arc::new(MemTable::try_new(b.schema(), partitions).unwrap())
}

async fn run(case: &Case, batch_size: usize, partitions: usize) -> RecordBatch {
    run_on(case, batch_size, partitions, None).await
}

/// [`run`], with each view's plan run by `runner` (a cluster) when given.
async fn run_on(
    case: &Case,
    batch_size: usize,
    partitions: usize,
    runner: Option<Arc<dyn PlanRunner>>,
) -> RecordBatch {
    let e = engine_on(repo(&case.yaml), &[], batch_size, partitions, runner).with_source_table(
        "ev",
        split_table(&case.events, batch_size, 1 + batch_size % 3),
    );
    let refs = case.refs();
    let refs: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
    join(&e, &case.spine, &refs)
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", case.yaml))
}

/// Each seed's case against the SQL reference, at a batch size and partition count that
/// vary with the seed.
async fn agree_over(seeds: std::ops::Range<u64>, late: bool) {
    agree_over_on(seeds, late, None).await
}

/// [`agree_over`], with the plans run by `runner` (a cluster) when given: the same cases
/// against the same reference.
pub(crate) async fn agree_over_on(
    seeds: std::ops::Range<u64>,
    late: bool,
    runner: Option<Arc<dyn PlanRunner>>,
) {
    for seed in seeds {
        let case = gen_shaped(seed, late);
        let want = reference(&case).await;
        let sizes = [1usize, 2, 7, 49, 50, 51, 100];
        let bs = sizes[seed as usize % sizes.len()];
        let parts = 1 + seed as usize % 4;
        let got = run_on(&case, bs, parts, runner.clone()).await;
        compare(
            &case,
            &got,
            &want,
            &format!("seed {seed} (late: {late}), batch {bs}, partitions {parts}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_matches_sql_reference_over_random_cases() {
    agree_over(0..60, false).await;
}

/// Spines that start late: events older than every finite window are reduced to the ones a
/// key's lifetime first / last / latest values need, which must change no result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spines_agree_with_the_sql_reference() {
    agree_over(500..560, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_size_and_partition_count_agrees() {
    for seed in [1001u64, 1002] {
        let case = gen_case(seed);
        let want = reference(&case).await;
        for bs in [1usize, 2, 7, 49, 50, 51, 100] {
            for parts in 1..=4 {
                let got = run(&case, bs, parts).await;
                compare(
                    &case,
                    &got,
                    &want,
                    &format!("seed {seed}, batch {bs}, partitions {parts}"),
                );
            }
        }
    }
}

/// The CLI's path: the features stay in the sweep's pieces and the writers gather them a
/// slice at a time. Files written that way must hold exactly the gathered result, across
/// slice and row-group boundaries (the spine is repeated to span several of each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_training_sets_equal_the_gathered_result() {
    use quiver_offline::source::{read_table, write_table};
    let dir = tempfile::tempdir().unwrap();
    // two cases swept in blocks (pieces in spine order) and one through `filter_created`
    // (pieces read by position)
    let mut seeds: Vec<u64> = (0..)
        .filter(|&s| !gen_case(s).filter_created)
        .take(2)
        .collect();
    seeds.extend((0..).find(|&s| gen_case(s).filter_created));
    for seed in seeds {
        let mut case = gen_case(seed);
        let copies = 300_000 / case.spine.num_rows().max(1) + 1;
        case.spine = datafusion::arrow::compute::concat_batches(
            &case.spine.schema(),
            &vec![case.spine.clone(); copies],
        )
        .unwrap();
        let e = engine(repo(&case.yaml), &[("ev", &case.events)], 64, 3);
        let refs = case.refs();
        let refs: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
        let req = JoinRequest {
            features: e.repo().resolve_refs(&refs).unwrap(),
            ..Default::default()
        };
        let want = e
            .join(case.spine.schema(), vec![case.spine.clone()], &req)
            .await
            .unwrap()
            .batch;
        let table = e
            .join_table(case.spine.schema(), vec![case.spine.clone()], &req)
            .await
            .unwrap()
            .batch;
        assert_eq!(table.num_rows(), want.num_rows());
        let path = dir.path().join(format!("out{seed}.parquet"));
        write_table(&path, &table).unwrap();
        let ctx = quiver_offline::session(&EngineOptions::default()).unwrap();
        let (schema, batches) = read_table(&ctx, &path).await.unwrap();
        let got = datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert_eq!(got, want, "seed {seed}: Parquet written from the pieces");
        // CSV: the same bytes as the gathered batch written whole
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        write_table(&a, &table).unwrap();
        write_table(&b, &want).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "seed {seed}: CSV written from the pieces"
        );
    }
}
