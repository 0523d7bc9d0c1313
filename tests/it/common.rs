//! Helpers shared by the integration tests.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use quiver_core::Repo;
use quiver_offline::{Engine, EngineOptions, JoinRequest};

/// One hour in microseconds: the time unit of the tests' data.
pub const H: i64 = 3_600_000_000;
pub const DAY: i64 = 24 * H;

pub fn repo(yaml: &str) -> Repo {
    Repo::parse(yaml, Path::new("test/quiver.yaml")).expect("test repo parses")
}

pub fn ts(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

pub fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
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

/// A table in batches of `batch_size` rows, in one partition.
pub fn mem_table(b: &RecordBatch, batch_size: usize) -> Arc<MemTable> {
    let n = b.num_rows();
    let slices = if n == 0 {
        vec![b.clone()]
    } else {
        (0..n.div_ceil(batch_size))
            .map(|i| b.slice(i * batch_size, batch_size.min(n - i * batch_size)))
            .collect()
    };
    Arc::new(MemTable::try_new(b.schema(), vec![slices]).unwrap())
}

pub fn engine(
    repo: Repo,
    sources: &[(&str, &RecordBatch)],
    batch_size: usize,
    partitions: usize,
) -> Engine {
    engine_on(repo, sources, batch_size, partitions, None)
}

/// [`engine`], whose plans `runner` runs (a cluster) when given.
pub fn engine_on(
    repo: Repo,
    sources: &[(&str, &RecordBatch)],
    batch_size: usize,
    partitions: usize,
    runner: Option<Arc<dyn quiver_offline::runner::PlanRunner>>,
) -> Engine {
    let opts = EngineOptions {
        target_partitions: partitions,
        batch_size,
        memory_limit: None,
        runner,
        ..Default::default()
    };
    let mut e = Engine::new(repo, opts).unwrap();
    for (name, b) in sources {
        e = e.with_source_table(name, mem_table(b, batch_size));
    }
    e
}

pub async fn join(
    e: &Engine,
    spine: &RecordBatch,
    features: &[&str],
) -> quiver_offline::Result<RecordBatch> {
    let features = e.repo().resolve_refs(features)?;
    let req = JoinRequest {
        features,
        spine_timestamp: None,
        full_names: false,
    };
    Ok(e.join(spine.schema(), vec![spine.clone()], &req)
        .await?
        .batch)
}

pub fn i64s(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = c
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap_or_else(|| panic!("{name} is {}", c.data_type()));
    c.iter().collect()
}

pub fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = c
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap_or_else(|| panic!("{name} is {}", c.data_type()));
    c.iter().collect()
}

pub fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = c
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap_or_else(|| panic!("{name} is {}", c.data_type()));
    c.iter().map(|s| s.map(str::to_string)).collect()
}

pub fn data_type(b: &RecordBatch, name: &str) -> DataType {
    b.column_by_name(name).unwrap().data_type().clone()
}
