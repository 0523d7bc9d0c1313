//! The offline engine: resolve a request against the repository, check every column before
//! reading data, plan one [`PitJoinNode`] per feature view, run them, and put the features
//! back beside the spine in spine order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{cast, concat_batches, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlanBuilder, cast as cast_expr, lit};
use datafusion::physical_plan::{collect_partitioned, displayable};
use datafusion::prelude::{SessionConfig, SessionContext, coalesce};
use quiver_core::semantics::{key_join_type, output_names};
use quiver_core::time::{MICROS_PER_DAY, format_instant, is_time_type, is_typed_time, to_micros};
use quiver_core::{Feature, FeatureKind, FeatureRef, FeatureView, Repo, Source};

use crate::plan::{self, PitJoinNode, PitQueryPlanner, ViewSpec};
use crate::sweep::{FeatureSpec, Kind};
use crate::{Error, Result, source};

/// How a session runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Partitions the join is split into (by entity key hash); defaults to the core count.
    pub target_partitions: usize,
    pub batch_size: usize,
    /// A memory pool limit in bytes; `None` = unbounded.
    pub memory_limit: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            batch_size: 8192,
            memory_limit: None,
        }
    }
}

/// A DataFusion session that plans the point-in-time join.
pub fn session(opts: &EngineOptions) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(opts.target_partitions.max(1))
        .with_batch_size(opts.batch_size.max(1))
        // Round-robin repartitioning would interleave a source's rows and lose the source
        // order that breaks ties; hash repartitioning keeps each input's order.
        .with_round_robin_repartition(false);
    config.options_mut().execution.parquet.pushdown_filters = false;
    // Read strings as the files declare them (Utf8), not as views, so spine columns come out
    // of a join with the types they went in with.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    // Source order (the last tie-break) is read off each scan partition's file group;
    // work stealing would let a partition read a sibling's files and scramble it.
    config
        .options_mut()
        .execution
        .enable_file_stream_work_stealing = false;
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = opts.memory_limit {
        runtime = runtime.with_memory_limit(limit, 1.0);
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.build_arc()?)
        .with_default_features()
        .with_query_planner(Arc::new(PitQueryPlanner))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// A training-set request.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub features: Vec<FeatureRef>,
    /// The spine's time column; default `event_timestamp`, else its only timestamp column.
    pub spine_timestamp: Option<String>,
    /// Name every feature column `view__feature`.
    pub full_names: bool,
}

/// The training set and what was done to build it.
#[derive(Debug)]
pub struct JoinOutput {
    pub batch: RecordBatch,
    /// Human-readable plan: per view, the pruning applied and the physical plan.
    pub explain: Vec<String>,
    /// Partitions that did not fit the memory pool and were swept from disk in buckets.
    pub spilled_partitions: usize,
}

pub struct Engine {
    repo: Repo,
    ctx: SessionContext,
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

/// A view's part of a request, checked against the source schema.
struct ViewParts<'a> {
    view: &'a FeatureView,
    source: &'a Source,
    table: Arc<dyn TableProvider>,
    value_cols: Vec<String>,
    filters: Vec<Expr>,
    features: Vec<FeatureSpec>,
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

impl Engine {
    pub fn new(repo: Repo, opts: EngineOptions) -> Result<Engine> {
        Ok(Engine {
            repo,
            ctx: session(&opts)?,
            tables: HashMap::new(),
        })
    }

    /// Read a source from this table instead of its files (tests, embedding).
    pub fn with_source_table(mut self, source: &str, table: Arc<dyn TableProvider>) -> Self {
        self.tables.insert(source.to_string(), table);
        self
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    async fn table(&self, s: &Source) -> Result<Arc<dyn TableProvider>> {
        match self.tables.get(&s.name) {
            Some(t) => Ok(t.clone()),
            None => source::source_table(&self.ctx, &self.repo.offline_store, s).await,
        }
    }

    /// Check every feature view against its source's schema (reads file footers, no rows).
    pub async fn check(&self) -> Result<()> {
        self.check_views(|_| true).await
    }

    /// Check the feature views that read one source (e.g. against rows about to be ingested,
    /// given with [`Engine::with_source_table`]).
    pub async fn check_source(&self, source: &str) -> Result<()> {
        self.check_views(|v| v.source == source).await
    }

    async fn check_views(&self, keep: impl Fn(&FeatureView) -> bool) -> Result<()> {
        for view in self.repo.views.values().filter(|v| keep(v)) {
            let feats: Vec<(usize, &Feature)> = view.features.iter().enumerate().collect();
            let names: Vec<String> = view.features.iter().map(|f| f.name.clone()).collect();
            self.view_parts(view, &feats, &names).await?;
        }
        Ok(())
    }

    async fn view_parts<'a>(
        &'a self,
        view: &'a FeatureView,
        feats: &[(usize, &'a Feature)],
        out_names: &[String],
    ) -> Result<ViewParts<'a>> {
        let src = &self.repo.sources[&view.source];
        let table = self.table(src).await?;
        let schema = table.schema();
        let have = || column_names(&schema);
        let vp = format!("feature_views.{}", view.name);
        for k in &view.join_keys {
            if schema.field_with_name(k).is_err() {
                return Err(self
                    .repo
                    .field_error(
                        format!("{vp}.entity"),
                        format!(
                            "source `{}` has no column `{k}` (join key of entity `{}`); it has: {}",
                            src.name,
                            view.entity,
                            have()
                        ),
                    )
                    .into());
            }
        }
        let time_checks = [
            ("timestamp", Some(&src.timestamp)),
            ("created_timestamp", src.created_timestamp.as_ref()),
        ];
        for (field, col) in time_checks {
            let Some(col) = col else { continue };
            let path = format!("sources.{}.{field}", src.name);
            let f = schema.field_with_name(col).map_err(|_| {
                self.repo.field_error(
                    &path,
                    format!("source has no column `{col}`; it has: {}", have()),
                )
            })?;
            if !is_time_type(f.data_type()) {
                return Err(self.repo.field_error(
                    &path,
                    format!("column `{col}` is {}; it must be a timestamp, a date, or RFC 3339 strings", f.data_type()),
                ).into());
            }
        }
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let mut value_cols: Vec<String> = Vec::new();
        let mut filter_sql: Vec<&str> = Vec::new();
        let mut filters: Vec<Expr> = Vec::new();
        let mut features = Vec::new();
        for ((i, f), name) in feats.iter().zip(out_names) {
            let fp = format!("{vp}.features[{i}]");
            let label = format!("{}:{}", view.name, f.name);
            let col_type = if f.column == "*" {
                None
            } else {
                let field = schema.field_with_name(&f.column).map_err(|_| {
                    self.repo.field_error(
                        format!("{fp}.column"),
                        format!(
                            "source `{}` has no column `{}`; it has: {}",
                            src.name,
                            f.column,
                            have()
                        ),
                    )
                })?;
                Some(field.data_type().clone())
            };
            let (kind, output_type) = match f.kind {
                FeatureKind::Latest => (Kind::Latest, col_type.clone().unwrap_or(DataType::Null)),
                FeatureKind::Aggregate { agg, window } => {
                    let t = match &col_type {
                        None => DataType::Int64,
                        Some(t) => agg.output_type(t).map_err(|m| {
                            self.repo.field_error(
                                format!("{fp}.agg"),
                                format!("column `{}` is {t}: {m}", f.column),
                            )
                        })?,
                    };
                    (Kind::Agg(agg, window), t)
                }
            };
            let column = (f.column != "*").then(|| {
                value_cols
                    .iter()
                    .position(|c| *c == f.column)
                    .unwrap_or_else(|| {
                        value_cols.push(f.column.clone());
                        value_cols.len() - 1
                    })
            });
            let filter = match &f.filter {
                None => None,
                Some(sql) => Some(match filter_sql.iter().position(|s| s == sql) {
                    Some(p) => p,
                    None => {
                        let bad = |m: String| self.repo.field_error(format!("{fp}.filter"), m);
                        let e = self
                            .ctx
                            .parse_sql_expr(sql, &df_schema)
                            .map_err(|e| bad(format!("cannot use {sql:?}: {}", Error::from(e))))?;
                        let t = e
                            .get_type(&df_schema)
                            .map_err(|e| bad(format!("cannot use {sql:?}: {}", Error::from(e))))?;
                        if t != DataType::Boolean {
                            return Err(bad(format!(
                                "{sql:?} is {t}, a filter must be a boolean expression"
                            ))
                            .into());
                        }
                        filter_sql.push(sql);
                        filters.push(e);
                        filters.len() - 1
                    }
                }),
            };
            features.push(FeatureSpec {
                name: name.clone(),
                label,
                kind,
                column,
                filter,
                output_type,
            });
        }
        Ok(ViewParts {
            view,
            source: src,
            table,
            value_cols,
            filters,
            features,
        })
    }

    /// The distinct entity keys of a view's source with an event at or before `end`
    /// (microseconds), as the source's key columns: the entities `materialize` writes.
    pub async fn entities(&self, view: &str, end: i64) -> Result<RecordBatch> {
        self.entities_between(view, None, end).await
    }

    /// The distinct entity keys of a view's source with an event in [`start`, `end`]
    /// (every entity with an event at or before `end` when `start` is `None`, or when the
    /// time column is text and cannot be filtered in the scan).
    pub async fn entities_between(
        &self,
        view: &str,
        start: Option<i64>,
        end: i64,
    ) -> Result<RecordBatch> {
        let v = self.repo.views.get(view).ok_or_else(|| {
            Error::Core(quiver_core::Error::Request(format!(
                "unknown feature view `{view}`"
            )))
        })?;
        let src = &self.repo.sources[&v.source];
        let table = self.table(src).await?;
        let time_type = table
            .schema()
            .field_with_name(&src.timestamp)?
            .data_type()
            .clone();
        let mut df = self.ctx.read_table(table)?;
        if is_typed_time(&time_type) {
            df = df.filter(column(&src.timestamp).lt_eq(time_literal(&time_type, end)))?;
            if let Some(start) = start {
                df = df.filter(column(&src.timestamp).gt_eq(time_literal(&time_type, start)))?;
            }
        }
        let keys: Vec<Expr> = v.join_keys.iter().map(|k| column(k)).collect();
        let df = df.select(keys)?.distinct()?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(concat_batches(&schema, &batches)?)
    }

    /// Read a spine file (Parquet or CSV) and join.
    pub async fn join_file(&self, spine: &Path, req: &JoinRequest) -> Result<JoinOutput> {
        let (schema, batches) = source::read_table(&self.ctx, spine).await?;
        self.join(schema, batches, req).await
    }

    /// Build the training set for a spine: one row per spine row, in spine order, spine
    /// columns untouched, then the requested features in request order (DESIGN §3).
    pub async fn join(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        req: &JoinRequest,
    ) -> Result<JoinOutput> {
        if req.features.is_empty() {
            return Err(Error::Core(quiver_core::Error::Request(
                "no features requested".into(),
            )));
        }
        crate::profile::stage(format_args!(
            "join: {} spine rows read",
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        ));
        let spine = concat_batches(&schema, &batches)?;
        drop(batches);
        let n = spine.num_rows();
        let ts_name = spine_time_column(&schema, req.spine_timestamp.as_deref())?;
        let ts_idx = schema
            .index_of(&ts_name)
            .map_err(|_| Error::Spine(format!("no column `{ts_name}`")))?;
        let t = to_micros(spine.column(ts_idx).as_ref(), &ts_name, 0)
            .map_err(|e| Error::Spine(e.to_string()))?;

        let spine_cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let pairs: Vec<(&str, &str)> = req
            .features
            .iter()
            .map(|r| (r.view.as_str(), r.feature.as_str()))
            .collect();
        let names = output_names(&pairs, req.full_names, &spine_cols);
        let mut by_view: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, r) in req.features.iter().enumerate() {
            self.repo.feature(r).ok_or_else(|| {
                Error::Core(quiver_core::Error::Request(format!(
                    "unknown feature `{r}`"
                )))
            })?;
            match by_view.iter_mut().find(|(v, _)| *v == r.view) {
                Some((_, idx)) => idx.push(i),
                None => by_view.push((r.view.as_str(), vec![i])),
            }
        }
        // Check every view before reading any event.
        let mut parts = Vec::new();
        for (view, idx) in &by_view {
            let v = &self.repo.views[*view];
            let feats: Vec<(usize, &Feature)> = idx
                .iter()
                .map(|&i| {
                    let p = v
                        .features
                        .iter()
                        .position(|f| f.name == req.features[i].feature)
                        .unwrap_or(0);
                    (p, &v.features[p])
                })
                .collect();
            let out: Vec<String> = idx.iter().map(|&i| names[i].clone()).collect();
            parts.push((self.view_parts(v, &feats, &out).await?, idx.clone()));
        }
        let (tmin, tmax) = t
            .iter()
            .flatten()
            .fold((i64::MAX, i64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let mut columns: Vec<Option<ArrayRef>> = vec![None; req.features.len()];
        let mut explain = Vec::new();
        let mut spilled_partitions = 0;
        for (p, idx) in parts {
            let (cols, lines, spills) = self.join_view(&p, &spine, &t, (tmin, tmax)).await?;
            explain.extend(lines);
            spilled_partitions += spills;
            for (c, i) in cols.into_iter().zip(idx) {
                columns[i] = Some(c);
            }
        }
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut arrays = spine.columns().to_vec();
        for (i, c) in columns.into_iter().enumerate() {
            let c = c.ok_or_else(|| Error::Internal("feature not computed".into()))?;
            fields.push(Field::new(&names[i], c.data_type().clone(), true));
            arrays.push(c);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        debug_assert_eq!(batch.num_rows(), n);
        Ok(JoinOutput {
            batch,
            explain,
            spilled_partitions,
        })
    }

    async fn join_view(
        &self,
        p: &ViewParts<'_>,
        spine: &RecordBatch,
        t: &Int64Array,
        (tmin, tmax): (i64, i64),
    ) -> Result<(Vec<ArrayRef>, Vec<String>, usize)> {
        let n = spine.num_rows();
        let sschema = spine.schema();
        let tschema = p.table.schema();
        let view = p.view;
        // spine input: __rid, keys cast to the join type, __t
        let mut fields = vec![Field::new(plan::RID, DataType::UInt64, false)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(0..n as u64))];
        let mut key_types = Vec::new();
        for (i, k) in view.join_keys.iter().enumerate() {
            let si = sschema.index_of(k).map_err(|_| {
                Error::Spine(format!(
                    "has no column `{k}` (join key of entity `{}`, needed by feature view `{}`)",
                    view.entity, view.name
                ))
            })?;
            let st = sschema.field(si).data_type();
            let et = tschema.field_with_name(k)?.data_type();
            let jt = key_join_type(st, et).map_err(|m| {
                Error::Spine(format!(
                    "key `{k}` does not match source `{}`: {m}",
                    p.source.name
                ))
            })?;
            arrays.push(
                cast(spine.column(si), &jt).map_err(|e| Error::Spine(format!("key `{k}`: {e}")))?,
            );
            fields.push(Field::new(plan::key_col(i), jt.clone(), true));
            key_types.push(jt);
        }
        fields.push(Field::new(plan::TIME, DataType::Int64, true));
        arrays.push(Arc::new(t.clone()));
        let sbatch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        let bs = self.ctx.state().config().batch_size();
        let slices: Vec<RecordBatch> = (0..n.div_ceil(bs).max(1))
            .map(|i| sbatch.slice(i * bs, bs.min(n - (i * bs).min(n))))
            .collect();
        let mem = MemTable::try_new(sbatch.schema(), vec![slices])?;
        let spine_plan =
            LogicalPlanBuilder::scan("spine", provider_as_source(Arc::new(mem)), None)?.build()?;

        // events: prune to the spine's time range, then project what the sweep reads
        let src = p.source;
        let reach = p
            .features
            .iter()
            .map(|f| match f.kind {
                Kind::Agg(_, w) => w.reach(),
                Kind::Latest => view.ttl.map(|d| d.micros()),
            })
            .try_fold(0i64, |acc, r| r.map(|r| acc.max(r)));
        let mut explain = vec![format!(
            "view `{}` (source `{}`): {} feature(s)",
            view.name,
            src.name,
            p.features.len()
        )];
        let mut builder =
            LogicalPlanBuilder::scan(src.name.as_str(), provider_as_source(p.table.clone()), None)?;
        let time_type = tschema.field_with_name(&src.timestamp)?.data_type().clone();
        if tmin <= tmax && is_typed_time(&time_type) {
            let lo = reach.map(|r| tmin.saturating_sub(r));
            let mut pred = column(&src.timestamp).lt_eq(time_literal(&time_type, tmax));
            if let Some(lo) = lo {
                pred = pred.and(column(&src.timestamp).gt_eq(time_literal(&time_type, lo)));
            }
            builder = builder.filter(pred)?;
            explain.push(format!(
                "  scan pruned to event time in [{}, {}]",
                lo.map(format_instant).unwrap_or_else(|| "-inf".into()),
                format_instant(tmax)
            ));
        }
        let mut proj: Vec<Expr> = view
            .join_keys
            .iter()
            .zip(&key_types)
            .enumerate()
            .map(|(i, (k, jt))| cast_expr(column(k), jt.clone()).alias(plan::key_col(i)))
            .collect();
        proj.push(column(&src.timestamp).alias(plan::TIME));
        if let Some(c) = &src.created_timestamp {
            proj.push(column(c).alias(plan::CREATED));
        }
        for (i, c) in p.value_cols.iter().enumerate() {
            proj.push(column(c).alias(plan::value_col(i)));
        }
        for (i, f) in p.filters.iter().enumerate() {
            proj.push(coalesce(vec![f.clone(), lit(false)]).alias(plan::filter_col(i)));
        }
        let mut read: Vec<&str> = view.join_keys.iter().map(|s| s.as_str()).collect();
        read.push(&src.timestamp);
        read.extend(src.created_timestamp.as_deref());
        read.extend(p.value_cols.iter().map(|s| s.as_str()));
        explain.push(format!(
            "  columns read: {} (+ filter columns)",
            read.join(", ")
        ));
        let events_plan = builder.project(proj)?.build()?;
        let spec = ViewSpec {
            view: view.name.clone(),
            source: src.name.clone(),
            time_column: src.timestamp.clone(),
            created_column: src.created_timestamp.clone(),
            key_count: view.join_keys.len(),
            value_count: p.value_cols.len(),
            filter_count: p.filters.len(),
            ttl: view.ttl,
            filter_created: src.filter_created,
            features: p.features.clone(),
        };
        let node = PitJoinNode::try_new(spine_plan, events_plan, spec)?;
        let df = self.ctx.execute_logical_plan(node.into_plan()).await?;
        let phys = df.create_physical_plan().await?;
        explain.push("  physical plan:".into());
        explain.extend(
            displayable(phys.as_ref())
                .indent(true)
                .to_string()
                .lines()
                .map(|l| format!("    {l}")),
        );
        crate::profile::stage(format_args!("view {}: planned", view.name));
        let parts = collect_partitioned(phys.clone(), self.ctx.task_ctx()).await?;
        crate::profile::stage(format_args!("view {}: joined", view.name));
        let spills = phys.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
        if spills > 0 {
            explain.push(format!("  {spills} partition(s) exceeded the memory pool and were swept from disk in buckets"));
        }
        let batches: Vec<RecordBatch> = parts
            .into_iter()
            .flatten()
            .filter(|b| b.num_rows() > 0)
            .collect();
        // Put each row back at its spine position: one gather per feature, straight from the
        // partitions' batches.
        let mut pos = vec![(usize::MAX, 0usize); n];
        let mut seen = 0usize;
        for (bi, b) in batches.iter().enumerate() {
            let rid = b
                .column(0)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| Error::Internal("rid".into()))?;
            for (row, r) in rid.values().iter().enumerate() {
                pos[*r as usize] = (bi, row);
                seen += 1;
            }
        }
        if seen != n || pos.iter().any(|p| p.0 == usize::MAX) {
            return Err(Error::Internal(format!(
                "join returned {seen} rows for {n} spine rows"
            )));
        }
        let mut cols = Vec::new();
        for (j, f) in p.features.iter().enumerate() {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(j + 1).as_ref()).collect();
            cols.push(if parts.is_empty() {
                datafusion::arrow::array::new_empty_array(&f.output_type)
            } else {
                interleave(&parts, &pos)?
            });
        }
        Ok((cols, explain, spills))
    }
}

/// A schema's column names, for messages.
fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spine's time column: the one asked for, else `event_timestamp`, else the only
/// timestamp or date column.
pub fn spine_time_column(schema: &Schema, asked: Option<&str>) -> Result<String> {
    let names = || column_names(schema);
    if let Some(a) = asked {
        return match schema.field_with_name(a) {
            Ok(f) if is_time_type(f.data_type()) => Ok(a.to_string()),
            Ok(f) => Err(Error::Spine(format!(
                "column `{a}` is {}, not a timestamp",
                f.data_type()
            ))),
            Err(_) => Err(Error::Spine(format!(
                "has no column `{a}`; it has: {}",
                names()
            ))),
        };
    }
    if schema.field_with_name("event_timestamp").is_ok() {
        return Ok("event_timestamp".into());
    }
    let typed: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| is_typed_time(f.data_type()))
        .map(|f| f.name().as_str())
        .collect();
    match typed.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::Spine(format!(
            "has no `event_timestamp` and no timestamp column; name one with --spine-timestamp (columns: {})",
            names()
        ))),
        many => Err(Error::Spine(format!(
            "has several timestamp columns ({}); name one with --spine-timestamp",
            many.join(", ")
        ))),
    }
}

/// A literal in the time column's own type at or before the instant `us` (so pruning never
/// drops an event the sweep could need).
fn time_literal(dt: &DataType, us: i64) -> Expr {
    let v = match dt {
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => us.div_euclid(1_000_000),
                TimeUnit::Millisecond => us.div_euclid(1_000),
                TimeUnit::Microsecond => us,
                TimeUnit::Nanosecond => us.saturating_mul(1_000),
            };
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), tz.clone()),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(v), tz.clone()),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(v), tz.clone()),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(v), tz.clone()),
            }
        }
        DataType::Date32 => ScalarValue::Date32(Some(us.div_euclid(MICROS_PER_DAY) as i32)),
        DataType::Date64 => ScalarValue::Date64(Some(us.div_euclid(MICROS_PER_DAY) * 86_400_000)),
        _ => ScalarValue::Null,
    };
    lit(v)
}
