//! `quiver sql`: DataFusion SQL over the registry and over datasets and sources by name.
//!
//! Registry tables (built from the records at query time): `feature_views`, `features`,
//! `datasets`, `dataset_versions`, `models`, `model_versions`, `metrics`, `costs`, `params`,
//! `aliases`, `lineage_edges`. Every dataset's latest version is a table under its name, and
//! every source of quiver.yaml too (a registry table name wins a clash).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use quiver_registry::{Artifact, Operation, Storage};

use crate::catalog::Catalog;
use crate::{Error, Result};

/// Columns of one table, declared with their kinds, built row by row.
struct Cols {
    names: Vec<&'static str>,
    cols: Vec<Col>,
}

/// The kind of a column: text, integer, float, boolean, UTC timestamp (µs).
#[derive(Clone, Copy)]
enum K {
    S,
    I,
    F,
    B,
    T,
}

enum Col {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<i64>>),
}

/// A value for [`Cols::row`].
enum V {
    S(Option<String>),
    I(Option<i64>),
    F(Option<f64>),
    B(Option<bool>),
    T(Option<i64>),
}

fn s(x: impl Into<String>) -> V {
    V::S(Some(x.into()))
}

impl Cols {
    fn new(columns: &[(&'static str, K)]) -> Cols {
        Cols {
            names: columns.iter().map(|(n, _)| *n).collect(),
            cols: columns
                .iter()
                .map(|(_, k)| match k {
                    K::S => Col::Str(vec![]),
                    K::I => Col::Int(vec![]),
                    K::F => Col::Float(vec![]),
                    K::B => Col::Bool(vec![]),
                    K::T => Col::Time(vec![]),
                })
                .collect(),
        }
    }

    fn row(&mut self, values: Vec<V>) {
        for (c, v) in self.cols.iter_mut().zip(values) {
            match (c, v) {
                (Col::Str(c), V::S(v)) => c.push(v),
                (Col::Int(c), V::I(v)) => c.push(v),
                (Col::Float(c), V::F(v)) => c.push(v),
                (Col::Bool(c), V::B(v)) => c.push(v),
                (Col::Time(c), V::T(v)) => c.push(v),
                _ => unreachable!("a value of the column's declared kind"),
            }
        }
    }

    fn table(self) -> Result<Arc<MemTable>> {
        let arrays: Vec<ArrayRef> = self
            .cols
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Col::Str(v) => Arc::new(StringArray::from(v)),
                    Col::Int(v) => Arc::new(Int64Array::from(v)),
                    Col::Float(v) => Arc::new(Float64Array::from(v)),
                    Col::Bool(v) => Arc::new(BooleanArray::from(v)),
                    Col::Time(v) => {
                        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
                    }
                }
            })
            .collect();
        let fields: Vec<Field> = self
            .names
            .iter()
            .zip(&arrays)
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let batch =
            RecordBatch::try_new(schema.clone(), arrays).map_err(quiver_offline::Error::from)?;
        Ok(Arc::new(
            MemTable::try_new(schema, vec![vec![batch]]).map_err(quiver_offline::Error::from)?,
        ))
    }
}

fn artifact_parts(a: &Artifact) -> (&'static str, String, i64) {
    match a {
        Artifact::Dataset(r) => ("dataset", r.name.clone(), r.version as i64),
        Artifact::View(r) => ("feature_view", r.name.clone(), r.version as i64),
        Artifact::Model(r) => ("model", r.name.clone(), r.version as i64),
    }
}

const REGISTRY_TABLES: &[&str] = &[
    "feature_views",
    "features",
    "datasets",
    "dataset_versions",
    "models",
    "model_versions",
    "metrics",
    "costs",
    "params",
    "aliases",
    "lineage_edges",
];

/// A session with the registry tables, and (when `data`) every dataset and source by name.
pub async fn context(cat: &Catalog, data: bool) -> Result<SessionContext> {
    let ctx = quiver_offline::session(&Default::default())?;
    let reg = &cat.registry;
    let register = |name: &str, t: Arc<MemTable>| -> Result<()> {
        ctx.register_table(name, t)
            .map_err(quiver_offline::Error::from)?;
        Ok(())
    };

    let mut fv = Cols::new(&[
        ("view", K::S),
        ("version", K::I),
        ("hash", K::S),
        ("created", K::T),
        ("entity", K::S),
        ("source", K::S),
        ("ttl_seconds", K::F),
        ("features", K::I),
    ]);
    let mut feats = Cols::new(&[
        ("view", K::S),
        ("version", K::I),
        ("feature", K::S),
        ("kind", K::S),
        ("column", K::S),
        ("agg", K::S),
        ("window_seconds", K::F),
        ("filter", K::S),
    ]);
    for name in reg.view_names()? {
        for v in reg.view_versions(&name)? {
            let d = &v.definition.view;
            fv.row(vec![
                s(&v.view),
                V::I(Some(v.version as i64)),
                s(v.hash.to_string()),
                V::T(Some(v.created_micros)),
                s(&d.entity),
                s(&d.source),
                V::F(d.ttl.map(|t| t.micros() as f64 / 1e6)),
                V::I(Some(d.features.len() as i64)),
            ]);
            for f in &d.features {
                let (kind, agg, window) = match f.kind {
                    quiver_core::FeatureKind::Latest => ("latest", None, None),
                    quiver_core::FeatureKind::Aggregate { agg, window } => (
                        "aggregate",
                        Some(agg.name().to_string()),
                        window.length.map(|l| l.micros() as f64 / 1e6),
                    ),
                };
                feats.row(vec![
                    s(&v.view),
                    V::I(Some(v.version as i64)),
                    s(&f.name),
                    s(kind),
                    s(&f.column),
                    V::S(agg),
                    V::F(window),
                    V::S(f.filter.clone()),
                ]);
            }
        }
    }
    register("feature_views", fv.table()?)?;
    register("features", feats.table()?)?;

    let mut ds = Cols::new(&[
        ("name", K::S),
        ("kind", K::S),
        ("latest_version", K::I),
        ("rows", K::I),
        ("hash", K::S),
    ]);
    let mut dv = Cols::new(&[
        ("name", K::S),
        ("version", K::I),
        ("kind", K::S),
        ("hash", K::S),
        ("rows", K::I),
        ("created", K::T),
        ("operation", K::S),
        ("parent", K::S),
        ("storage", K::S),
        ("delta_version", K::I),
    ]);
    let all = reg.all_dataset_versions()?;
    for v in &all {
        let parent = match &v.op {
            Operation::Split { parent, .. } | Operation::Filter { parent, .. } => {
                Some(parent.to_string())
            }
            Operation::Join(j) => Some(j.spine.to_string()),
            _ => None,
        };
        let (storage, delta) = match &v.storage {
            Storage::Delta { table, version } => (table.clone(), Some(*version)),
            Storage::File { path } => (path.clone(), None),
        };
        dv.row(vec![
            s(&v.name),
            V::I(Some(v.version as i64)),
            s(v.kind.name()),
            s(v.hash.to_string()),
            V::I(Some(v.state.rows as i64)),
            V::T(Some(v.created_micros)),
            s(v.op.name()),
            V::S(parent),
            s(storage),
            V::I(delta),
        ]);
        if all
            .iter()
            .filter(|x| x.name == v.name)
            .all(|x| x.version <= v.version)
        {
            ds.row(vec![
                s(&v.name),
                s(v.kind.name()),
                V::I(Some(v.version as i64)),
                V::I(Some(v.state.rows as i64)),
                s(v.hash.to_string()),
            ]);
        }
    }
    register("datasets", ds.table()?)?;
    register("dataset_versions", dv.table()?)?;

    let mut models = Cols::new(&[("name", K::S), ("latest_version", K::I), ("versions", K::I)]);
    let mut mv = Cols::new(&[
        ("name", K::S),
        ("version", K::I),
        ("dataset", K::S),
        ("dataset_version", K::I),
        ("algo", K::S),
        ("label", K::S),
        ("seed", K::I),
        ("parent", K::S),
        ("artifact_hash", K::S),
        ("artifact_bytes", K::I),
        ("size_bytes", K::F),
        ("latency_mean_ms", K::F),
        ("latency_p99_ms", K::F),
        ("code_commit", K::S),
        ("code_dirty", K::B),
        ("os", K::S),
        ("quiver_version", K::S),
        ("created", K::T),
        ("tags", K::S),
    ]);
    let mut metrics = Cols::new(&[
        ("model", K::S),
        ("version", K::I),
        ("metric", K::S),
        ("eval_dataset", K::S),
        ("eval_version", K::I),
        ("value", K::F),
    ]);
    let mut costs = Cols::new(&[
        ("model", K::S),
        ("version", K::I),
        ("cost", K::S),
        ("value", K::F),
    ]);
    let mut params = Cols::new(&[
        ("model", K::S),
        ("version", K::I),
        ("param", K::S),
        ("value", K::S),
    ]);
    let mut aliases = Cols::new(&[("model", K::S), ("alias", K::S), ("version", K::I)]);
    let all_models = reg.all_model_versions()?;
    for name in reg.model_names()? {
        let versions: Vec<_> = all_models.iter().filter(|m| m.name == name).collect();
        models.row(vec![
            s(&name),
            V::I(versions.iter().map(|m| m.version as i64).max()),
            V::I(Some(versions.len() as i64)),
        ]);
        for (a, v) in reg.aliases(&name)? {
            aliases.row(vec![s(&name), s(a), V::I(Some(v as i64))]);
        }
    }
    for m in &all_models {
        mv.row(vec![
            s(&m.name),
            V::I(Some(m.version as i64)),
            s(&m.dataset.name),
            V::I(Some(m.dataset.version as i64)),
            V::S(m.algo.clone()),
            V::S(m.label.clone()),
            V::I(m.seed.map(|x| x as i64)),
            V::S(m.parent.as_ref().map(|p| p.to_string())),
            s(m.artifact.hash.to_string()),
            V::I(Some(m.artifact.bytes as i64)),
            V::F(m.costs.get("size_bytes").copied()),
            V::F(m.costs.get("latency_mean_ms").copied()),
            V::F(m.costs.get("latency_p99_ms").copied()),
            V::S(m.code.as_ref().map(|c| c.commit.clone())),
            V::B(m.code.as_ref().map(|c| c.dirty)),
            s(&m.env.os),
            s(&m.env.quiver_version),
            V::T(Some(m.created_micros)),
            s(serde_json::to_string(&m.tags).unwrap_or_default()),
        ]);
        for x in &m.metrics {
            metrics.row(vec![
                s(&m.name),
                V::I(Some(m.version as i64)),
                s(&x.name),
                s(&x.eval.name),
                V::I(Some(x.eval.version as i64)),
                V::F(Some(x.value)),
            ]);
        }
        for (c, v) in &m.costs {
            costs.row(vec![
                s(&m.name),
                V::I(Some(m.version as i64)),
                s(c),
                V::F(Some(*v)),
            ]);
        }
        for (p, v) in &m.params {
            params.row(vec![s(&m.name), V::I(Some(m.version as i64)), s(p), s(v)]);
        }
    }
    register("models", models.table()?)?;
    register("model_versions", mv.table()?)?;
    register("metrics", metrics.table()?)?;
    register("costs", costs.table()?)?;
    register("params", params.table()?)?;
    register("aliases", aliases.table()?)?;

    let mut edges = Cols::new(&[
        ("from_kind", K::S),
        ("from_name", K::S),
        ("from_version", K::I),
        ("to_kind", K::S),
        ("to_name", K::S),
        ("to_version", K::I),
        ("operation", K::S),
    ]);
    for e in reg.edges()? {
        let (fk, fname, fver) = artifact_parts(&e.from);
        let (tk, tname, tver) = artifact_parts(&e.to);
        edges.row(vec![
            s(fk),
            s(fname),
            V::I(Some(fver)),
            s(tk),
            s(tname),
            V::I(Some(tver)),
            s(e.op),
        ]);
    }
    register("lineage_edges", edges.table()?)?;

    if data {
        for name in reg.dataset_names()? {
            if REGISTRY_TABLES.contains(&name.as_str()) {
                continue;
            }
            let v = reg.dataset_version(&name, None)?;
            if let Ok(t) = cat.read(&v).await {
                let mem = MemTable::try_new(t.schema, vec![t.batches])
                    .map_err(quiver_offline::Error::from)?;
                ctx.register_table(name.as_str(), Arc::new(mem))
                    .map_err(quiver_offline::Error::from)?;
            }
        }
        for (name, src) in &cat.repo.sources {
            if REGISTRY_TABLES.contains(&name.as_str())
                || ctx.table_exist(name.as_str()).unwrap_or(true)
            {
                continue;
            }
            if let Ok(t) =
                quiver_offline::source::source_table(&ctx, &cat.repo.offline_store, src).await
            {
                ctx.register_table(name.as_str(), t)
                    .map_err(quiver_offline::Error::from)?;
            }
        }
    }
    Ok(ctx)
}

/// Run one SQL statement (read-only) and return its rows.
pub async fn query(cat: &Catalog, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let ctx = context(cat, true).await?;
    let opts = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, opts)
        .await
        .map_err(|e| Error::Invalid(format!("sql: {}", quiver_offline::Error::from(e))))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| Error::Invalid(format!("sql: {}", quiver_offline::Error::from(e))))?;
    Ok((schema, batches))
}

/// The model versions a SQL filter over `model_versions` keeps (`name`, `version`).
pub async fn filter_models(cat: &Catalog, filter: &str) -> Result<Vec<(String, u64)>> {
    let ctx = context(cat, false).await?;
    let df = ctx
        .table("model_versions")
        .await
        .map_err(quiver_offline::Error::from)?;
    let expr = df.parse_sql_expr(filter).map_err(|e| {
        Error::Invalid(format!(
            "--where {filter:?}: {}",
            quiver_offline::Error::from(e)
        ))
    })?;
    let df = df
        .filter(expr)
        .and_then(|d| d.select_columns(&["name", "version"]))
        .map_err(|e| {
            Error::Invalid(format!(
                "--where {filter:?}: {}",
                quiver_offline::Error::from(e)
            ))
        })?;
    let batches = df.collect().await.map_err(|e| {
        Error::Invalid(format!(
            "--where {filter:?}: {}",
            quiver_offline::Error::from(e)
        ))
    })?;
    let mut out = Vec::new();
    for b in batches {
        let names = b.column(0).as_any().downcast_ref::<StringArray>();
        let versions = b.column(1).as_any().downcast_ref::<Int64Array>();
        if let (Some(n), Some(v)) = (names, versions) {
            for i in 0..b.num_rows() {
                out.push((n.value(i).to_string(), v.value(i) as u64));
            }
        }
    }
    Ok(out)
}
