//! Reuse benchmark (issue 6, ADR 0006; written up in benches/README.md).
//!
//! Two years of events in a managed (Delta) source, a spine covering one month. Measures, in
//! one session and against cold runs of the same requests:
//! 1. the logged workload on a table clustered by user (not by time), the layout `quiver
//!    optimize` picks for it, and the bytes the same workload reads after the rewrite;
//! 2. on the rewritten table: 30d cold, then 40d (widening), 40d again (exact), 10d
//!    (narrowing, which the cost gate declines here), each with bytes scanned and time;
//! 3. widening on the user-clustered table, where the gate declines reuse.
//!
//! Every reused result is checked equal to the cold result before its time is reported.
//!
//! `cargo bench --bench reuse` (QUIVER_REUSE_EVENTS, QUIVER_REUSE_SPINE, QUIVER_REUSE_RUNS
//! change the sizes; defaults 20M events, 20k users, 100k spine rows, 3 runs).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_core::Repo;
use quiver_offline::delta::{self, Mode};
use quiver_offline::{Engine, EngineOptions, JoinOutput, JoinRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

// The allocator and malloc settings the `quiver` binary runs with, so that the times are the
// CLI's (glibc's defaults hand freed arrays back to the kernel and fault them in again).
#[path = "../crates/cli/src/alloc.rs"]
mod alloc;
#[global_allocator]
static GLOBAL: alloc::HugePageAlloc = alloc::HugePageAlloc;

const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_704_067_200_000_000; // 2024-01-01
const AGGS: [(&str, &str, &str); 5] = [
    ("s", "sum", "amount"),
    ("c", "count", "\"*\""),
    ("m", "mean", "amount"),
    ("x", "max", "amount"),
    ("v", "stddev", "amount"),
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn yaml() -> String {
    let mut feats = String::new();
    for w in [10, 30, 40] {
        for (p, agg, col) in AGGS {
            feats.push_str(&format!(
                "      - {{ name: {p}{w}, agg: {agg}, column: {col}, window: {w}d }}\n"
            ));
        }
    }
    format!(
        "project: reuse_bench\nentities:\n  user:\n    join_keys: [user_id]\nsources:\n  events:\n    timestamp: event_ts\nfeature_views:\n  spend:\n    entity: user\n    source: events\n    features:\n{feats}"
    )
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// Events over two years, stored clustered by user (then time): a layout where any time
/// range meets every row group.
fn events(n: usize, users: i64, rng: &mut SmallRng) -> RecordBatch {
    let uid: Vec<i64> = (0..n).map(|_| rng.random_range(1..=users)).collect();
    let t: Vec<i64> = (0..n)
        .map(|_| T0 + rng.random_range(0..730 * DAY))
        .collect();
    let amount: Vec<Option<f64>> = (0..n)
        .map(|_| (!rng.random_bool(0.01)).then(|| (rng.random_range(100..100_000) as f64) / 100.0))
        .collect();
    let cats = ["clothing", "food", "electronics", "books"];
    let category: Vec<&str> = (0..n).map(|_| cats[rng.random_range(0..4)]).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "event_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
        Field::new("category", DataType::Utf8, false),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(uid)),
            ts(t),
            Arc::new(Float64Array::from(amount)),
            Arc::new(StringArray::from(category)),
        ],
    )
    .unwrap();
    let idx = lexsort_to_indices(
        &[
            SortColumn {
                values: b.column(0).clone(),
                options: None,
            },
            SortColumn {
                values: b.column(1).clone(),
                options: None,
            },
        ],
        None,
    )
    .unwrap();
    take_record_batch(&b, &idx).unwrap()
}

/// A spine of one month (June 2025, or the month after with `later`).
fn spine(rows: usize, users: i64, rng: &mut SmallRng, later: bool) -> RecordBatch {
    let start = T0 + (517 + if later { 30 } else { 0 }) * DAY;
    let uid: Vec<i64> = (0..rows).map(|_| rng.random_range(1..=users)).collect();
    let t: Vec<i64> = (0..rows)
        .map(|_| start + rng.random_range(0..30 * DAY))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(uid)), ts(t)]).unwrap()
}

struct Bench {
    dir: std::path::PathBuf,
    spine: RecordBatch,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    fn engine(&self, reuse: bool) -> Engine {
        let opts = EngineOptions {
            reuse_budget: reuse.then_some(8 << 30),
            after_sweep: Some(alloc::trim),
            ..Default::default()
        };
        Engine::new(Repo::load(&self.dir).unwrap(), opts).unwrap()
    }

    fn join(&self, e: &Engine, window: u32) -> (JoinOutput, f64) {
        self.join_spine(e, window, &self.spine)
    }

    fn join_spine(&self, e: &Engine, window: u32, spine: &RecordBatch) -> (JoinOutput, f64) {
        let refs: Vec<String> = AGGS
            .iter()
            .map(|(p, _, _)| format!("spend:{p}{window}"))
            .collect();
        let refs: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
        let req = JoinRequest {
            features: e.repo().resolve_refs(&refs).unwrap(),
            ..Default::default()
        };
        let started = Instant::now();
        let out = self
            .rt
            .block_on(e.join(spine.schema(), vec![spine.clone()], &req))
            .unwrap();
        (out, started.elapsed().as_secs_f64())
    }

    fn reuse_dir(&self) -> std::path::PathBuf {
        self.dir.join(".quiver/offline/reuse")
    }

    fn clear_states(&self) {
        let c = quiver_offline::reuse::ReuseCatalog::new(&self.dir.join(".quiver/offline"), 0);
        c.invalidate("events").unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn gate_line(out: &JoinOutput) -> String {
    out.explain
        .iter()
        .find(|l| l.contains("cost gate"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "no gate (nothing partial to weigh)".into())
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it with no args: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    alloc::tune();
    let n = env("QUIVER_REUSE_EVENTS", 20_000_000);
    let rows = env("QUIVER_REUSE_SPINE", 100_000);
    let runs = env("QUIVER_REUSE_RUNS", 3);
    let users = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("quiver.yaml"), yaml()).unwrap();
    let mut rng = SmallRng::seed_from_u64(6);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ev = events(n, users, &mut rng);
    let table = dir.join(".quiver/offline/sources/events");
    let step = 1 << 20;
    let parts: Vec<RecordBatch> = (0..n.div_ceil(step))
        .map(|i| ev.slice(i * step, step.min(n - i * step)))
        .collect();
    drop(ev);
    rt.block_on(delta::write(&table, parts, Mode::Append, "events", None))
        .unwrap();
    let b = Bench {
        dir,
        spine: spine(rows, users, &mut rng, false),
        rt,
    };
    println!(
        "reuse benchmark: {n} events over 2 years (24 months), {users} users, spine {rows} rows in one month, {runs} run(s), median times"
    );

    // 1. The workload on the user-clustered table, then layout selection.
    let cold = b.engine(false);
    let workload = [30u32, 40, 10];
    let mut before = 0u64;
    let mut cold_before = Vec::new();
    {
        let logger = b.engine(true);
        for w in workload {
            let (o, s) = b.join(&logger, w);
            before += o.bytes_scanned;
            cold_before.push((w, o, s));
        }
    }
    b.clear_states();
    // 3. (measured before the rewrite) widening where the gate declines: nothing clusters by time.
    {
        let warm = b.engine(true);
        let (_, _) = b.join(&warm, 30);
        assert_eq!(warm.wait_pending(), None);
        let (o, s) = b.join(&warm, 40);
        let (c, cs) = b.join(&cold, 40);
        assert_eq!(o.batch, c.batch);
        println!("\nuser-clustered table, 40d after 30d: {}", gate_line(&o));
        println!(
            "  reused {} feature(s); {} scanned in {s:.2} s vs cold {} in {cs:.2} s",
            o.reused,
            mb(o.bytes_scanned),
            mb(c.bytes_scanned)
        );
    }
    let repo = Repo::load(&b.dir).unwrap();
    let plan =
        b.rt.block_on(quiver_offline::layout::optimize(&repo, None, false))
            .unwrap();
    let mut after = 0u64;
    println!("\nlayout selection on the logged workload (30d, 40d, 10d joins):");
    for o in &plan {
        println!(
            "  chose {} (expected {} -> {}, {:.1}x), rewrite {}",
            o.plan.best,
            mb(o.plan.current_bytes),
            mb(o.plan.best_bytes),
            o.plan.current_bytes as f64 / o.plan.best_bytes.max(1) as f64,
            mb(o.plan.rewrite_bytes)
        );
    }
    for (w, o, _) in &cold_before {
        let (o2, _) = b.join(&cold, *w);
        assert_eq!(o.batch, o2.batch, "{w}d: the rewrite changed the result");
        after += o2.bytes_scanned;
    }
    println!(
        "  measured: the workload read {} before, {} after: {:.1}x less",
        mb(before),
        mb(after),
        before as f64 / after.max(1) as f64
    );

    // 2. On the rewritten table: cold 30d, then 40d widening, 40d exact, 10d narrowing.
    b.clear_states();
    let warm = b.engine(true);
    let (o30, s30) = b.join(&warm, 30);
    // the states are written behind the join: let them land before copying the catalog
    assert_eq!(warm.wait_pending(), None);
    let saved = b.dir.join("reuse-after-30d");
    copy_dir(&b.reuse_dir(), &saved);
    let time = |w: u32, reuse_from: Option<&Path>| {
        let mut t = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let e = match reuse_from {
                Some(p) => {
                    copy_dir(p, &b.reuse_dir());
                    b.engine(true)
                }
                None => b.engine(false),
            };
            let (o, s) = b.join(&e, w);
            t.push(s);
            last = Some(o);
        }
        (last.unwrap(), median(t))
    };
    let (c40, tc40) = time(40, None);
    let (w40, tw40) = time(40, Some(&saved));
    assert_eq!(w40.batch, c40.batch, "widening differs from cold");
    let after_40 = b.dir.join("reuse-after-40d");
    copy_dir(&b.reuse_dir(), &after_40);
    let (e40, te40) = time(40, Some(&after_40));
    assert_eq!(e40.batch, c40.batch, "exact differs from cold");
    let (c10, tc10) = time(10, None);
    let (n10, tn10) = time(10, Some(&after_40));
    assert_eq!(n10.batch, c10.batch, "narrowing differs from cold");
    let forced = {
        copy_dir(&after_40, &b.reuse_dir());
        let e = Engine::new(
            repo.clone(),
            EngineOptions {
                reuse_budget: Some(8 << 30),
                reuse_always: true,
                after_sweep: Some(alloc::trim),
                ..Default::default()
            },
        )
        .unwrap();
        b.join(&e, 10)
    };
    assert_eq!(
        forced.0.batch, c10.batch,
        "forced narrowing differs from cold"
    );

    println!(
        "\nrewritten table ({}):",
        plan.first()
            .map(|o| o.plan.best.to_string())
            .unwrap_or_default()
    );
    println!("  step            | bytes scanned | stored read | time      | vs cold");
    let row = |name: &str, o: &JoinOutput, t: f64, cold: Option<(&JoinOutput, f64)>| {
        let vs = cold
            .map(|(c, ct)| {
                format!(
                    "{:.0}% time, {:.0}% bytes",
                    100.0 * t / ct,
                    100.0 * o.bytes_scanned as f64 / c.bytes_scanned.max(1) as f64
                )
            })
            .unwrap_or_default();
        println!(
            "  {name:<15} | {:>13} | {:>11} | {:>7.3} s | {vs}",
            mb(o.bytes_scanned),
            mb(o.stored_bytes_read),
            t
        );
    };
    row("30d cold", &o30, s30, None);
    row("40d cold", &c40, tc40, None);
    row("40d widening", &w40, tw40, Some((&c40, tc40)));
    row("40d exact", &e40, te40, Some((&c40, tc40)));
    row("10d cold", &c10, tc10, None);
    row("10d narrowing", &n10, tn10, Some((&c10, tc10)));
    row("10d forced", &forced.0, forced.1, Some((&c10, tc10)));
    println!("  40d widening gate: {}", gate_line(&w40));
    println!("  10d narrowing gate: {}", gate_line(&n10));

    // 4. Another spine: June's rows again plus as many in July (cross-spine rows).
    let july = spine(rows, users, &mut rng, true);
    let both =
        datafusion::arrow::compute::concat_batches(&b.spine.schema(), &[b.spine.clone(), july])
            .unwrap();
    let mut tc = Vec::new();
    let mut tw = Vec::new();
    let (mut cold_out, mut warm_out) = (None, None);
    for _ in 0..runs {
        let (c, s) = b.join_spine(&cold, 40, &both);
        tc.push(s);
        cold_out = Some(c);
        copy_dir(&after_40, &b.reuse_dir());
        let (w, s) = b.join_spine(&b.engine(true), 40, &both);
        tw.push(s);
        warm_out = Some(w);
    }
    let (c, w) = (cold_out.unwrap(), warm_out.unwrap());
    assert_eq!(w.batch, c.batch, "cross-spine reuse differs from cold");
    let (tc, tw) = (median(tc), median(tw));
    println!(
        "\nJune+July spine ({} rows), 40d, June's rows stored from the first spine:",
        both.num_rows()
    );
    row("cold", &c, tc, None);
    row("cross-spine", &w, tw, Some((&c, tc)));
    println!("  gate: {}", gate_line(&w));
}
