//! Criterion benchmark of the point-in-time join: W1-shaped features (sum, count, mean, min,
//! max over 1d/7d/30d/90d plus the last value) over synthetic in-memory events, and the
//! floor of the design (sorting the events by packed (key, time)) on the same data.
//!
//! `cargo bench --bench pit_join`; the cross-tool comparison on files is in benches/README.md.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::datasource::MemTable;
use quiver_core::Repo;
use quiver_offline::{Engine, EngineOptions, JoinRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400_000_000;
const EVENTS: usize = 2_000_000;
const USERS: i64 = 20_000;
const LABELS: usize = 200_000;

fn yaml() -> String {
    let mut y = String::from(
        "project: bench\nentities:\n  user: { join_keys: [user_id] }\nsources:\n  events: { timestamp: event_ts }\nfeature_views:\n  user_spend:\n    entity: user\n    source: events\n    features:\n",
    );
    for w in ["1d", "7d", "30d", "90d"] {
        for a in ["sum", "count", "mean", "min", "max"] {
            y += &format!("      - {{ name: {a}_{w}, agg: {a}, column: amount, window: {w} }}\n");
        }
    }
    y += "      - { name: last_amount, agg: last, column: amount }\n";
    y
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn data() -> (RecordBatch, RecordBatch) {
    let mut rng = SmallRng::seed_from_u64(42);
    let t0 = 19723 * DAY;
    let uid: Vec<i64> = (0..EVENTS)
        .map(|_| {
            let r: f64 = rng.random();
            (r * r * USERS as f64) as i64 + 1
        })
        .collect();
    let ets: Vec<i64> = (0..EVENTS)
        .map(|_| t0 + rng.random_range(0..730 * DAY))
        .collect();
    let amount: Vec<Option<f64>> = (0..EVENTS)
        .map(|_| (!rng.random_bool(0.01)).then(|| rng.random_range(1.0..500.0f64)))
        .collect();
    let events = batch(vec![
        ("user_id", Arc::new(Int64Array::from(uid)) as ArrayRef),
        (
            "event_ts",
            Arc::new(TimestampMicrosecondArray::from(ets).with_timezone("UTC")),
        ),
        ("amount", Arc::new(Float64Array::from(amount))),
    ]);
    let luid: Vec<i64> = (0..LABELS)
        .map(|_| rng.random_range(1..=USERS + USERS / 20))
        .collect();
    let lts: Vec<i64> = (0..LABELS)
        .map(|_| t0 + 366 * DAY + rng.random_range(0..365 * DAY))
        .collect();
    let labels = batch(vec![
        ("user_id", Arc::new(Int64Array::from(luid)) as ArrayRef),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(lts).with_timezone("UTC")),
        ),
    ]);
    (events, labels)
}

fn bench(c: &mut Criterion) {
    let (events, labels) = data();
    let repo = Repo::parse(&yaml(), std::path::Path::new("bench/quiver.yaml")).unwrap();
    let features = repo.views["user_spend"]
        .features
        .iter()
        .map(|f| format!("user_spend:{}", f.name))
        .collect::<Vec<_>>();
    let features = repo.resolve_refs(&features).unwrap();
    let slices: Vec<RecordBatch> = (0..EVENTS / 8192 + 1)
        .map(|i| events.slice(i * 8192, 8192.min(EVENTS.saturating_sub(i * 8192))))
        .filter(|b| b.num_rows() > 0)
        .collect();
    let table = Arc::new(MemTable::try_new(events.schema(), vec![slices]).unwrap());
    let engine = Engine::new(repo, EngineOptions::default())
        .unwrap()
        .with_source_table("events", table);
    let req = JoinRequest {
        features,
        spine_timestamp: Some("ts".into()),
        full_names: false,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut g = c.benchmark_group("pit_join");
    g.sample_size(10);
    g.throughput(Throughput::Elements((EVENTS + LABELS) as u64));
    g.bench_function("w1_21_features_2M_events_200k_labels", |b| {
        b.iter(|| {
            let out = rt
                .block_on(engine.join(labels.schema(), vec![labels.clone()], &req))
                .unwrap();
            assert_eq!(out.batch.num_rows(), LABELS);
            out
        })
    });
    // The floor: sort the events by packed (key, time).
    let keys = events
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .clone();
    let times = events
        .column(1)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap()
        .clone();
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("floor_sort_packed_key_time_2M", |b| {
        b.iter(|| {
            let mut packed: Vec<u128> = keys
                .values()
                .iter()
                .zip(times.values().iter())
                .map(|(&k, &t)| ((k as u128) << 64) | ((t as u64) ^ (1 << 63)) as u128)
                .collect();
            packed.sort_unstable();
            packed
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
