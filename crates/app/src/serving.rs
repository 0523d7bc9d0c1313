//! Online serving as a server runs it: lookups, and pushes one at a time. The rules of
//! [`crate::online`] hold for every caller; what this adds is what a long-lived process needs
//! (the store kept open, pushes serialized), so every transport and the CLI share it.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use quiver_core::store::{KeyValue, OnlineStore, Scalar};
use quiver_core::{FeatureRef, Repo};
use quiver_offline::EngineOptions;

use crate::audit::Auditor;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::online::{self, Value};
use crate::{Error, Result};

/// How long a metrics scrape waits for the online store's reads, all of them together:
/// Prometheus gives up on a scrape after 10 s by default.
pub const OBSERVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Which features a request asks for.
#[derive(Debug, Clone)]
pub enum Features {
    /// A feature service of quiver.yaml.
    Service(String),
    /// Feature references, `view:feature`.
    List(Vec<String>),
}

impl Features {
    /// The references, each checked against the repository.
    pub fn resolve(&self, repo: &Repo) -> Result<Vec<FeatureRef>> {
        Ok(match self {
            Features::Service(name) => repo.service(name)?,
            Features::List(refs) => repo.resolve_refs(refs)?,
        })
    }
}

/// The names a lookup's response gives its features: `view__feature` when full names are
/// asked for, else `quiver join`'s output names (the feature's name, `view__feature` where
/// two requested features share one).
pub fn feature_names(refs: &[FeatureRef], full: bool) -> Vec<String> {
    let pairs: Vec<(&str, &str)> = refs
        .iter()
        .map(|r| (r.view.as_str(), r.feature.as_str()))
        .collect();
    if full {
        pairs.iter().map(|(v, f)| format!("{v}__{f}")).collect()
    } else {
        quiver_core::semantics::output_names(&pairs, false, &[])
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Rows pushed.
    pub rows: usize,
    /// Entities of the pushed view whose values were written.
    pub entities: usize,
    /// The source's new version, when the rows were appended to its managed table too.
    pub appended: Option<quiver_registry::DatasetVersion>,
}

/// A repository's online store, served.
pub struct Serving {
    repo: Arc<Repo>,
    store: Arc<dyn OnlineStore>,
    /// Serializes this process's pushes: each reads the source's earlier online-only pushes,
    /// computes and writes; two at once would each write values without the other's rows.
    /// (Pushes from other processes sharing the store are caught by the store's push count.)
    writer: tokio::sync::Mutex<()>,
    /// The most entities one lookup may ask for.
    max_entities: usize,
    metrics: Arc<Metrics>,
    auditor: Auditor,
}

/// The most entities one lookup asks for unless the server says otherwise.
pub const MAX_ENTITIES: usize = 1000;

impl Serving {
    /// Serve `repo` from `store`.
    pub fn new(repo: Repo, store: Arc<dyn OnlineStore>) -> Self {
        quiver_offline::objects::configure(&repo.storage);
        Serving {
            repo: Arc::new(repo),
            store,
            writer: tokio::sync::Mutex::new(()),
            max_entities: MAX_ENTITIES,
            metrics: Arc::new(Metrics::new()),
            auditor: Auditor::default(),
        }
    }

    /// This serving with a bound on entities per lookup, its metrics and its audit log.
    pub fn with(mut self, max_entities: usize, metrics: Arc<Metrics>, auditor: Auditor) -> Self {
        self.max_entities = max_entities.max(1);
        self.metrics = metrics;
        self.auditor = auditor;
        self
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The server's audit log.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// What the store holds into the metrics: each view's online watermark and entities, and
    /// the store's size (read from the store when scraped). The reads run at once under one
    /// bound, so a store that does not answer costs a scrape [`OBSERVE_WITHIN`], not a
    /// timeout per read; then `online_store_up` is 0 and the gauges read from the store are
    /// dropped rather than left showing old values as current.
    pub async fn observe_store(&self) {
        let store = self.store.as_ref();
        let views: Vec<&String> = self.repo.views.keys().collect();
        let reads = async {
            let per_view = futures::future::try_join_all(views.iter().map(|v| async move {
                let (w, n) = futures::try_join!(store.watermark(v), store.entities(v))?;
                Ok::<_, quiver_core::Error>((*v, w, n))
            }));
            futures::try_join!(per_view, store.size_bytes())
        };
        let m = &self.metrics;
        match tokio::time::timeout(OBSERVE_WITHIN, reads).await {
            Ok(Ok((per_view, bytes))) => {
                m.store_up.set(1);
                let int = |n: u64| n.try_into().unwrap_or(i64::MAX);
                for (view, w, n) in per_view {
                    let labels = [view.as_str()];
                    match w {
                        Some(w) => m
                            .watermark
                            .with_label_values(&labels)
                            .set(w.div_euclid(1_000_000)),
                        None => drop(m.watermark.remove_label_values(&labels)),
                    }
                    match n {
                        Some(n) => m.stored_entities.with_label_values(&labels).set(int(n)),
                        None => drop(m.stored_entities.remove_label_values(&labels)),
                    }
                }
                m.store_bytes.set(bytes.map_or(0, int));
            }
            _ => {
                m.store_up.set(0);
                m.watermark.reset();
                m.stored_entities.reset();
                m.store_bytes.set(0);
            }
        }
    }

    /// The repository served.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Values of `refs` for `entities` at `at` (default now): per entity, one value per
    /// reference in order.
    pub async fn lookup(
        &self,
        refs: &[FeatureRef],
        entities: &[Vec<(String, KeyValue)>],
        at: Option<i64>,
    ) -> Result<Vec<Vec<Value>>> {
        if entities.len() > self.max_entities {
            return Err(Error::Exhausted(format!(
                "entities: {} in one lookup, the server's limit is {} (quiver serve \
                 --max-entities); split the request",
                entities.len(),
                self.max_entities
            )));
        }
        self.metrics.entities.observe(entities.len() as f64);
        let at = at.unwrap_or_else(quiver_core::time::now_micros);
        online::get(&self.repo, self.store.as_ref(), refs, entities, at)
            .await
            .map_err(|e| match e {
                Error::Core(quiver_core::Error::Request(m)) => {
                    Error::Invalid(format!("entities: {m}"))
                }
                Error::Core(c)
                    if !c.is_request()
                        && !c.is_not_found()
                        && !matches!(c, quiver_core::Error::Unavailable(_)) =>
                {
                    Error::Internal(c.to_string())
                }
                other => other,
            })
    }

    /// Materialize `views` (all when empty) as of `end` into the served store, for the
    /// entities `range` selects (a transport's materialize call; the CLI's `materialize` runs
    /// the same [`online::materialize_range`]).
    pub async fn materialize(
        &self,
        views: &[String],
        range: online::Range,
        end: i64,
    ) -> Result<Vec<online::Materialized>> {
        let metrics = &self.metrics;
        // Lowered however this ends, also when the request that runs it is dropped.
        let _running = crate::metrics::Raised::new(&metrics.materializing);
        // Progress as it happens: rows are counted per written chunk, so a scrape during a
        // long run sees how far each view has got. The callback gives a view's rows so far;
        // the counter takes what is new since its last call for that view.
        let mut last: std::collections::HashMap<String, usize> = Default::default();
        online::materialize_range(
            &self.repo,
            self.store.as_ref(),
            views,
            range,
            end,
            EngineOptions::default(),
            |view, written| {
                let before = last.insert(view.to_string(), written).unwrap_or(0);
                let labels = [view];
                metrics
                    .materialized_rows
                    .with_label_values(&labels)
                    .inc_by(written.saturating_sub(before) as u64);
                metrics
                    .materialize_progress
                    .with_label_values(&labels)
                    .set(written.try_into().unwrap_or(i64::MAX));
            },
        )
        .await
    }

    /// Append `rows` of `view`'s source to its managed table only (a push to the offline
    /// store alone), recorded as coming from `origin`.
    pub async fn append(
        &self,
        view: &str,
        rows: RecordBatch,
        origin: &str,
    ) -> Result<quiver_registry::DatasetVersion> {
        let def = self.repo.views.get(view).ok_or_else(|| {
            Error::NotFound(format!("feature_view: unknown feature view `{view}`"))
        })?;
        self.append_rows(&def.source, &rows, origin).await
    }

    async fn append_rows(
        &self,
        source: &str,
        rows: &RecordBatch,
        origin: &str,
    ) -> Result<quiver_registry::DatasetVersion> {
        let cat = Catalog::open(self.repo.as_ref().clone(), EngineOptions::default())?;
        cat.append(
            source,
            vec![(origin.to_string(), rows.schema(), vec![rows.clone()])],
            quiver_registry::Operation::Ingest {
                files: vec![origin.to_string()],
            },
        )
        .await
    }

    /// The schema a push to `view` must give: its source's columns.
    pub async fn push_schema(&self, view: &str) -> Result<SchemaRef> {
        let def = self.repo.views.get(view).ok_or_else(|| {
            Error::NotFound(format!("feature_view: unknown feature view `{view}`"))
        })?;
        let ctx = quiver_offline::session(&EngineOptions::default())?;
        let source = &self.repo.sources[&def.source];
        let table =
            quiver_offline::source::source_table(&ctx, &self.repo.offline_store, source).await?;
        Ok(table.schema())
    }

    /// Push `rows` of `view`'s source, computed as of `at` (default now); with `to_offline`
    /// they are first appended to the source's managed table, recorded as coming from
    /// `origin` (a file name, or the transport's).
    pub async fn push(
        &self,
        view: &str,
        rows: RecordBatch,
        to_offline: bool,
        at: Option<i64>,
        origin: &str,
    ) -> Result<Pushed> {
        let repo = self.repo.as_ref();
        let def = repo.views.get(view).ok_or_else(|| {
            Error::NotFound(format!("feature_view: unknown feature view `{view}`"))
        })?;
        let opts = EngineOptions::default();
        let _one_push = self.writer.lock().await;
        let appended = match to_offline {
            false => None,
            true => Some(self.append_rows(&def.source, &rows, origin).await?),
        };
        let n = rows.num_rows();
        let pushed = online::push(
            repo,
            self.store.as_ref(),
            view,
            rows,
            to_offline,
            at.unwrap_or_else(quiver_core::time::now_micros),
            opts,
        )
        .await?;
        self.metrics
            .pushed_rows
            .with_label_values(&[view])
            .inc_by(n as u64);
        Ok(Pushed {
            rows: n,
            entities: pushed.entities,
            appended,
        })
    }
}

/// The pushed columns as a batch of the source's schema: every source column must be given,
/// with one value per row of the type the column holds.
pub fn push_batch(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    columns: &std::collections::HashMap<String, Vec<Scalar>>,
) -> Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::DataType;
    for name in columns.keys() {
        if schema.field_with_name(name).is_err() {
            return Err(Error::Invalid(format!(
                "columns.{name}: not a column of the source"
            )));
        }
    }
    let mut rows: Option<usize> = None;
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for f in schema.fields() {
        let name = f.name();
        let values = columns
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("columns.{name}: missing")))?;
        match rows {
            None => rows = Some(values.len()),
            Some(n) if n != values.len() => {
                return Err(Error::Invalid(format!(
                    "columns.{name}: {} values, other columns have {n}",
                    values.len()
                )));
            }
            _ => {}
        }
        let bad =
            |i: usize, want: &str| Error::Invalid(format!("columns.{name}[{i}]: expected {want}"));
        let dt = f.data_type();
        let array: ArrayRef = if dt.is_integer() {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Scalar::Null => Ok(None),
                    Scalar::Int(x) => Ok(Some(*x)),
                    _ => Err(bad(i, "an integer")),
                })
                .collect::<Result<Vec<_>>>()?;
            std::sync::Arc::new(Int64Array::from(v))
        } else if dt.is_floating() {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Scalar::Null => Ok(None),
                    Scalar::Float(x) => Ok(Some(*x)),
                    Scalar::Int(x) => Ok(Some(*x as f64)),
                    _ => Err(bad(i, "a number")),
                })
                .collect::<Result<Vec<_>>>()?;
            std::sync::Arc::new(Float64Array::from(v))
        } else if matches!(dt, DataType::Boolean) {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Scalar::Null => Ok(None),
                    Scalar::Bool(x) => Ok(Some(*x)),
                    _ => Err(bad(i, "a bool")),
                })
                .collect::<Result<Vec<_>>>()?;
            std::sync::Arc::new(BooleanArray::from(v))
        } else if matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Scalar::Null => Ok(None),
                    Scalar::Str(x) => Ok(Some(x.clone())),
                    _ => Err(bad(i, "a string")),
                })
                .collect::<Result<Vec<_>>>()?;
            std::sync::Arc::new(StringArray::from(v))
        } else if quiver_core::time::is_typed_time(dt) {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Scalar::Null => Ok(None),
                    Scalar::Time(x) => Ok(Some(*x)),
                    Scalar::Str(s) => quiver_core::time::parse_instant(s)
                        .map(Some)
                        .ok_or_else(|| bad(i, "an RFC 3339 time")),
                    _ => Err(bad(i, "a timestamp")),
                })
                .collect::<Result<Vec<_>>>()?;
            let tz = match dt {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            std::sync::Arc::new(TimestampMicrosecondArray::from(v).with_timezone_opt(tz))
        } else {
            return Err(Error::Invalid(format!(
                "columns.{name}: pushing a column of type {dt} is not supported"
            )));
        };
        let array = if array.data_type() == dt {
            array
        } else {
            datafusion::arrow::compute::cast_with_options(
                &array,
                dt,
                &datafusion::arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
            .map_err(|e| Error::Invalid(format!("columns.{name}: {e}")))?
        };
        arrays.push(array);
    }
    datafusion::arrow::array::RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| Error::Invalid(format!("columns: {e}")))
}
