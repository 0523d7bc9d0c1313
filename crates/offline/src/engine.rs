//! The offline engine: resolve a request against the repository, check every column before
//! reading data, plan one [`PitJoinNode`] per feature view, run them, and put the features
//! back beside the spine in spine order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlanBuilder, cast as cast_expr, lit};
use datafusion::physical_plan::{collect_partitioned, displayable};
use datafusion::prelude::{SessionConfig, SessionContext, coalesce};
use quiver_core::semantics::{Agg, key_join_type, output_names};
use quiver_core::time::{MICROS_PER_DAY, is_time_type, is_typed_time, to_micros};
use quiver_core::{Feature, FeatureKind, FeatureRef, FeatureView, Repo, Source};

use crate::plan::{self, PitJoinNode, PitQueryPlanner, ViewSpec};
use reuse_plan::ReusePlan;

mod cross;
mod reuse_plan;
mod tiles;
use crate::reuse::{self, ReuseCatalog};
use crate::runner::PlanRunner;
use crate::state::{self, StateKind};
use crate::stats::ScanStats;
use crate::sweep::{FeatureSpec, Kind};
use crate::table::{self, Column as OutColumn, Order, TrainingSet};
use crate::{Error, Result, gate, source};

/// How a session runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Partitions the join is split into (by entity key hash); defaults to the core count.
    pub target_partitions: usize,
    /// Rows per batch that DataFusion's operators produce.
    pub batch_size: usize,
    /// A memory pool limit in bytes; `None` = unbounded.
    pub memory_limit: Option<usize>,
    /// Keep computed feature states in the offline store's reuse catalog, up to this many
    /// bytes, and reuse them; `None` = reuse off.
    pub reuse_budget: Option<u64>,
    /// Take every stored state that can serve, without the cost gate (tests and benchmarks
    /// that exercise the reuse paths on any layout).
    pub reuse_always: bool,
    /// Called after each view's partitions are swept, before their results are gathered:
    /// the process can hand the memory they freed back (the CLI trims malloc's heap).
    pub after_sweep: Option<fn()>,
    /// Plan the join without running it (`quiver explain`): the reuse choices, the cost
    /// gate, the scan's pruning and an estimate of its reads from footer statistics are
    /// reported; no event is read, no state stored, nothing logged, and every feature
    /// comes back null.
    pub plan_only: bool,
    /// Run each view's physical plan there instead of in this process (a cluster); the
    /// spine is staged where its executors read it.
    pub runner: Option<Arc<dyn PlanRunner>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            batch_size: 8192,
            memory_limit: None,
            reuse_budget: None,
            reuse_always: false,
            after_sweep: None,
            plan_only: false,
            runner: None,
        }
    }
}

pub use crate::plan::MIN_MEMORY_PER_PARTITION;

/// A DataFusion session that plans the point-in-time join.
pub fn session(opts: &EngineOptions) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(opts.target_partitions.max(1))
        .with_batch_size(opts.batch_size.max(1))
        // Round-robin repartitioning would interleave a source's rows and lose the source
        // order that breaks ties; hash repartitioning keeps each input's order.
        .with_round_robin_repartition(false);
    config.options_mut().execution.parquet.pushdown_filters = false;
    // DataFusion reads the last 512 KiB of each file for its footer by default: free on a
    // local disk, but over object storage a small file is read whole before it is pruned.
    config.options_mut().execution.parquet.metadata_size_hint = Some(64 << 10);
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
    // `s3://` URLs are answered by Quiver's stores, built from the repository's settings.
    let mut runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(crate::objects::Registry::default()));
    if let Some(limit) = opts.memory_limit {
        let least = MIN_MEMORY_PER_PARTITION * opts.target_partitions.max(1);
        if limit < least {
            return Err(Error::MemoryLimit(format!(
                "--memory-limit {} is below the least a join runs in with {} partitions: {} ({} per partition)",
                gate::bytes(limit as f64),
                opts.target_partitions.max(1),
                gate::bytes(least as f64),
                gate::bytes(MIN_MEMORY_PER_PARTITION as f64),
            )));
        }
        // The limit governs the join's own pool, not the session's (see `JoinPool`).
        let pool = datafusion::execution::memory_pool::GreedyMemoryPool::new(limit);
        config = config.with_extension(Arc::new(crate::plan::JoinPool(Arc::new(pool))));
        runtime = runtime
            // DataFusion's spill files go where a killed run's are found and removed.
            .with_disk_manager_builder(
                datafusion::execution::disk_manager::DiskManagerBuilder::default().with_mode(
                    datafusion::execution::disk_manager::DiskManagerMode::Directories(vec![
                        crate::spill_dir::dir()?.to_path_buf(),
                    ]),
                ),
            );
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
    /// The features to compute for every spine row.
    pub features: Vec<FeatureRef>,
    /// The spine's time column; default `event_timestamp`, else its only timestamp column.
    pub spine_timestamp: Option<String>,
    /// Name every feature column `view__feature`.
    pub full_names: bool,
}

/// The training set and what was done to build it: a `RecordBatch`, or from
/// [`Engine::join_table`] a [`TrainingSet`] whose features are gathered as they are written.
#[derive(Debug)]
pub struct JoinOutput<T = RecordBatch> {
    /// The training set: the spine's columns, then the features.
    pub batch: T,
    /// Human-readable plan: per view, the pruning applied and the physical plan.
    pub explain: Vec<String>,
    /// Partitions that did not fit the memory pool and were swept from disk in buckets.
    pub spilled_partitions: usize,
    /// Bytes the source scans read (DataFusion's `bytes_scanned`).
    pub bytes_scanned: u64,
    /// Bytes of stored feature states read instead.
    pub stored_bytes_read: u64,
    /// Features produced from stored states (exact, widened or narrowed).
    pub reused: usize,
}

impl JoinOutput<TrainingSet> {
    /// The same output with every column gathered.
    pub fn gathered(self) -> Result<JoinOutput> {
        Ok(JoinOutput {
            batch: self.batch.into_batch()?,
            explain: self.explain,
            spilled_partitions: self.spilled_partitions,
            bytes_scanned: self.bytes_scanned,
            stored_bytes_read: self.stored_bytes_read,
            reused: self.reused,
        })
    }
}

/// A named version of a source and its files (for statistics).
#[derive(Debug, Clone)]
pub struct SourceVersion {
    /// Stable identity: equal ids, equal rows.
    pub id: String,
    /// The version's data files, whose footers give scan statistics.
    pub files: Vec<PathBuf>,
}

impl SourceVersion {
    /// A version of a Delta table: its folder and Delta version.
    pub fn delta(table: &Path, version: u64, files: Vec<PathBuf>) -> SourceVersion {
        let abs = std::path::absolute(table).unwrap_or_else(|_| table.to_path_buf());
        SourceVersion {
            id: format!("delta:{}@{version}", abs.display()),
            files,
        }
    }
}

/// The offline engine of one repository: a DataFusion session that plans point-in-time
/// joins, the sources' tables and the reuse catalog.
pub struct Engine {
    repo: Repo,
    ctx: SessionContext,
    tables: HashMap<String, Arc<dyn TableProvider>>,
    versions: HashMap<String, SourceVersion>,
    reuse: Option<ReuseCatalog>,
    reuse_always: bool,
    after_sweep: Option<fn()>,
    plan_only: bool,
    runner: Option<Arc<dyn PlanRunner>>,
    /// States being written behind the join that computed them.
    pending: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The last failure of a background store, reported by the next join.
    store_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.wait_pending();
    }
}

/// A view's part of a request, checked against the source schema.
struct ViewParts<'a> {
    view: &'a FeatureView,
    source: &'a Source,
    table: Arc<dyn TableProvider>,
    value_cols: Vec<String>,
    filters: Vec<Expr>,
    features: Vec<FeatureSpec>,
    /// Each feature's index in the view's definition.
    feature_index: Vec<usize>,
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

impl Engine {
    /// An engine over `repo`; fails when `opts.memory_limit` is below the least a join runs in.
    pub fn new(repo: Repo, opts: EngineOptions) -> Result<Engine> {
        crate::objects::configure(&repo.storage);
        let reuse = opts.reuse_budget.map(|b| ReuseCatalog::of_repo(&repo, b));
        Ok(Engine {
            repo,
            ctx: session(&opts)?,
            tables: HashMap::new(),
            versions: HashMap::new(),
            reuse,
            reuse_always: opts.reuse_always,
            after_sweep: opts.after_sweep,
            plan_only: opts.plan_only,
            runner: opts.runner,
            pending: Default::default(),
            store_error: Default::default(),
        })
    }

    /// Read a source from this table, known to hold `version` (reuse keys on it).
    pub fn with_source_version(
        mut self,
        source: &str,
        table: Arc<dyn TableProvider>,
        version: SourceVersion,
    ) -> Self {
        self.tables
            .insert(source.to_string(), in_source_order(table));
        self.versions.insert(source.to_string(), version);
        self
    }

    /// Wait for the states still being stored; returns the last store failure, if any.
    pub fn wait_pending(&self) -> Option<String> {
        let handles = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
        self.store_error.lock().ok().and_then(|mut e| e.take())
    }

    /// Wait at most `bound` for the states still being stored, then let the rest go: a
    /// process about to exit calls this so that slow storage never holds the user up by more
    /// than the bound. States not stored by then are simply not kept (the catalog changes by
    /// rename under its lock, so an interrupted store leaves it as it was; its files are
    /// swept later). Returns whether everything was stored.
    pub fn settle_pending(&self, bound: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            let done = self
                .pending
                .lock()
                .map(|p| p.iter().all(|h| h.is_finished()))
                .unwrap_or(true);
            if done {
                self.wait_pending();
                return true;
            }
            if start.elapsed() >= bound {
                // dropped handles detach their threads; the process exit ends them
                if let Ok(mut p) = self.pending.lock() {
                    p.clear();
                }
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// The reuse catalog, when reuse is on.
    pub fn reuse_catalog(&self) -> Option<&ReuseCatalog> {
        self.reuse.as_ref()
    }

    /// Read a source from this table instead of its files (tests, embedding). Its version
    /// is unknown, so nothing computed from it is reused.
    pub fn with_source_table(mut self, source: &str, table: Arc<dyn TableProvider>) -> Self {
        self.tables
            .insert(source.to_string(), in_source_order(table));
        self.versions.remove(source);
        self
    }

    /// The repository requests are resolved against.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The DataFusion session joins are planned and run in.
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
                state: false,
            });
        }
        Ok(ViewParts {
            view,
            source: src,
            table,
            value_cols,
            filters,
            features,
            feature_index: feats.iter().map(|(i, _)| *i).collect(),
        })
    }

    /// The distinct entity keys of a view's source with an event at or before `end`
    /// (microseconds), as the source's key columns: the entities `materialize` writes.
    pub async fn entities(&self, view: &str, end: i64) -> Result<RecordBatch> {
        self.entities_between(view, None, end).await
    }

    /// A view and its source's events in [`start`, `end`] (unbounded below when `start` is
    /// `None`); a text time column cannot be filtered in the scan and is left whole.
    async fn source_events(
        &self,
        view: &str,
        start: Option<i64>,
        end: i64,
    ) -> Result<(&FeatureView, datafusion::dataframe::DataFrame)> {
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
        Ok((v, df))
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
        let (v, df) = self.source_events(view, start, end).await?;
        let keys: Vec<Expr> = v.join_keys.iter().map(|k| column(k)).collect();
        let df = df.select(keys)?.distinct()?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(concat_batches(&schema, &batches)?)
    }

    /// The key columns and event times (microseconds, a last Int64 column `__t`) of a view's
    /// source events in [`start`, `end`]: the events whose windows the online path steps
    /// through. A text time column cannot be filtered in the scan; its events are read whole
    /// and cut here.
    pub async fn events_between(&self, view: &str, start: i64, end: i64) -> Result<RecordBatch> {
        let (v, df) = self.source_events(view, Some(start), end).await?;
        let src = &self.repo.sources[&v.source];
        let mut cols: Vec<Expr> = v.join_keys.iter().map(|k| column(k)).collect();
        cols.push(column(&src.timestamp));
        let df = df.select(cols)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batch = concat_batches(&schema, &df.collect().await?)?;
        let k = v.join_keys.len();
        let t = to_micros(batch.column(k).as_ref(), &src.timestamp, 0)?;
        let keep: BooleanArray = t
            .iter()
            .map(|x| Some(x.is_some_and(|x| (start..=end).contains(&x))))
            .collect();
        let mut fields: Vec<Field> = schema.fields()[..k]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(plan::TIME, DataType::Int64, true));
        let mut arrays: Vec<ArrayRef> = batch.columns()[..k].to_vec();
        arrays.push(Arc::new(t));
        let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        Ok(datafusion::arrow::compute::filter_record_batch(
            &out, &keep,
        )?)
    }

    /// The same engine with each view's source cut to the events known at `end`: event time
    /// at or before it and, for `filter_created` sources, created at or before it (or with no
    /// created time). The online path computes the values a lookup after `end` sees from
    /// these — what the store was told as of `end`, not events it has not seen. A text time
    /// column cannot be cut in the scan and is left whole.
    pub async fn known_at(mut self, end: i64) -> Result<Engine> {
        let used: std::collections::BTreeSet<&str> = self
            .repo
            .views
            .values()
            .map(|v| v.source.as_str())
            .collect();
        let sources: Vec<Source> = used
            .into_iter()
            .map(|s| self.repo.sources[s].clone())
            .collect();
        for src in sources {
            let table = self.table(&src).await?;
            let schema = table.schema();
            let upper = |name: &str| -> Result<Option<Expr>> {
                let dt = schema.field_with_name(name)?.data_type().clone();
                Ok(is_typed_time(&dt).then(|| column(name).lt_eq(time_upper(&dt, end))))
            };
            let Some(mut cut) = upper(&src.timestamp)? else {
                continue;
            };
            if src.filter_created
                && let Some(c) = &src.created_timestamp
                && let Some(known) = upper(c)?
            {
                cut = cut.and(column(c).is_null().or(known));
            }
            let view = self.ctx.read_table(table)?.filter(cut)?.into_view();
            self.tables.insert(src.name.clone(), view);
        }
        Ok(self)
    }

    /// Read a spine file (Parquet or CSV) and join.
    pub async fn join_file(&self, spine: &Path, req: &JoinRequest) -> Result<JoinOutput> {
        self.join_file_table(spine, req).await?.gathered()
    }

    /// [`Engine::join_file`], its features left in the sweep's pieces for a writer to
    /// gather (see [`TrainingSet`]).
    pub async fn join_file_table(
        &self,
        spine: &Path,
        req: &JoinRequest,
    ) -> Result<JoinOutput<TrainingSet>> {
        let (schema, batches) = source::read_table(&self.ctx, spine).await?;
        self.join_table(schema, batches, req).await
    }

    /// Build the training set for a spine: one row per spine row, in spine order, spine
    /// columns untouched, then the requested features in request order (DESIGN §3).
    pub async fn join(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        req: &JoinRequest,
    ) -> Result<JoinOutput> {
        self.join_table(schema, batches, req).await?.gathered()
    }

    /// [`Engine::join`], its features left in the sweep's pieces for a writer to gather.
    pub async fn join_table(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        req: &JoinRequest,
    ) -> Result<JoinOutput<TrainingSet>> {
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
        // Earlier joins' states land in the catalog first (this join's views store theirs
        // while the next view is computed).
        let mut explain = Vec::new();
        if let Some(e) = self.wait_pending() {
            explain.push(format!("earlier feature states not stored: {e}"));
        }
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
        let mut columns: Vec<Option<OutColumn>> = vec![None; req.features.len()];
        let mut spilled_partitions = 0;
        let (mut bytes_scanned, mut stored_bytes_read, mut reused) = (0, 0, 0);
        for (p, idx) in parts {
            let r = self.view_columns(&p, &spine, &t, (tmin, tmax)).await?;
            explain.extend(r.explain);
            spilled_partitions += r.spills;
            bytes_scanned += r.bytes_scanned;
            stored_bytes_read += r.stored_bytes_read;
            reused += r.reused;
            for (c, i) in r.columns.into_iter().zip(idx) {
                columns[i] = Some(c);
            }
        }
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut arrays: Vec<OutColumn> = spine
            .columns()
            .iter()
            .cloned()
            .map(OutColumn::Ready)
            .collect();
        for (i, c) in columns.into_iter().enumerate() {
            let c = c.ok_or_else(|| Error::Internal("feature not computed".into()))?;
            fields.push(Field::new(&names[i], c.data_type().clone(), true));
            arrays.push(c);
        }
        let batch = TrainingSet::new(Arc::new(Schema::new(fields)), arrays, n)?;
        Ok(JoinOutput {
            batch,
            explain,
            spilled_partitions,
            bytes_scanned,
            stored_bytes_read,
            reused,
        })
    }

    /// The spine input of one view: `__rid`, the join keys cast to the join types, `__t`.
    fn spine_input(
        &self,
        p: &ViewParts<'_>,
        spine: &RecordBatch,
        t: &Int64Array,
    ) -> Result<(RecordBatch, Vec<DataType>)> {
        let n = spine.num_rows();
        let sschema = spine.schema();
        let tschema = p.table.schema();
        let view = p.view;
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
        Ok((
            RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?,
            key_types,
        ))
    }

    /// Compute one view's requested features, reusing stored states where the cost gate
    /// finds it cheaper (DESIGN §4 "Reuse").
    async fn view_columns(
        &self,
        p: &ViewParts<'_>,
        spine: &RecordBatch,
        t: &Int64Array,
        (tmin, tmax): (i64, i64),
    ) -> Result<ViewResult> {
        let (sbatch, key_types) = self.spine_input(p, spine, t)?;
        crate::profile::stage(format_args!("view {}: spine input", p.view.name));
        let view = p.view;
        let src = p.source;
        let time_type = p
            .table
            .schema()
            .field_with_name(&src.timestamp)?
            .data_type()
            .clone();
        let typed = tmin <= tmax && is_typed_time(&time_type);
        let ranges = |kinds: &mut dyn Iterator<Item = Kind>| {
            gate::hull(kinds.map(|k| gate::needed(&k, view.ttl, tmin, tmax)))
        };
        let facts = reuse_plan::SpineFacts {
            sbatch: &sbatch,
            key_types: &key_types,
            t,
            span: (tmin, tmax),
        };
        let plan = self.plan_reuse(p, &facts).await?;
        let mut explain: Vec<String> = plan.to_string().lines().map(String::from).collect();
        let reuse = &plan.reuse;
        // The stored states this plan merges are read on a thread of their own while the scan
        // runs (decompressing them took about as long as merging them).
        let prefetch = match (reuse, self.plan_only) {
            (Some((cat, _)), false) => {
                let scans = !plan.work.is_empty()
                    || !plan.sub_work.is_empty()
                    || plan.tiles.as_ref().is_some_and(|t| !t.unmatched.is_empty());
                prefetch_states(cat, &plan.features, plan.tiles.as_ref(), scans)
            }
            _ => None,
        };
        let started = std::time::Instant::now();
        let mut passes = Vec::new();
        let range = typed
            .then(|| ranges(&mut plan.work.iter().map(|f| f.kind)))
            .flatten();
        if !plan.work.is_empty() {
            passes.push((range, Pass::Main));
        }
        // what a pass over some rows of the spine (or the grid, `times`) reads for `feats`
        let rows_range = |feats: &[FeatureSpec], times: &Int64Array, rows: &[u32]| {
            let (lo, hi) = cross::time_span(times, rows.iter().copied());
            typed
                .then(|| {
                    gate::hull(
                        feats
                            .iter()
                            .map(|f| gate::needed(&f.kind, view.ttl, lo, hi)),
                    )
                })
                .flatten()
        };
        let unmatched = &plan.unmatched;
        if !plan.sub_work.is_empty() && !unmatched.is_empty() {
            passes.push((rows_range(&plan.sub_work, t, unmatched), Pass::Rest));
        }
        if let Some(tp) = &plan.tiles
            && !tp.unmatched.is_empty()
        {
            passes.push((rows_range(&tp.work, tp.ends(), &tp.unmatched), Pass::Grid));
        }
        if passes.is_empty() {
            explain.push("  no scan: every feature is stored".into());
        }
        let (mut cols, mut sub_cols, mut grid_cols) = (Vec::new(), Vec::new(), Vec::new());
        let (mut spills, mut scanned) = (0, 0);
        for (range, pass) in passes {
            let (batch, feats) = match (&pass, &plan.tiles) {
                (Pass::Main, _) => (sbatch.clone(), &plan.work),
                (Pass::Rest, _) => (sub_spine(&sbatch, unmatched)?, &plan.sub_work),
                (Pass::Grid, Some(tp)) => {
                    explain.push(format!(
                        "  day tiles: {} of the grid's {} (key, day) rows computed",
                        tp.unmatched.len(),
                        tp.grid.rows()
                    ));
                    (sub_spine(&tp.grid.sbatch, &tp.unmatched)?, &tp.work)
                }
                (Pass::Grid, None) => return Err(Error::Internal("a grid without tiles".into())),
            };
            let swept = self
                .sweep_view(p, feats, &batch, &key_types, range, &time_type)
                .await?;
            explain.extend(swept.explain);
            if self.plan_only {
                explain.push(format!(
                    "  the scan would read {}",
                    self.scan_estimate(p, range).await?
                ));
                continue;
            }
            explain.push(format!("  bytes scanned: {}", swept.bytes_scanned));
            spills += swept.spills;
            scanned += swept.bytes_scanned;
            match pass {
                Pass::Main => cols = swept.columns,
                Pass::Rest => sub_cols = swept.columns,
                Pass::Grid => grid_cols = swept.columns,
            }
            if let Err(e) = self.log_scan(p, range, swept.distinct_keys, swept.bytes_scanned) {
                explain.push(format!("  join log not written: {e}"));
            }
        }
        if self.plan_only {
            return Ok(ViewResult {
                columns: p
                    .features
                    .iter()
                    .map(|f| OutColumn::Ready(new_null_array(&f.output_type, sbatch.num_rows())))
                    .collect(),
                explain,
                spills: 0,
                bytes_scanned: 0,
                stored_bytes_read: 0,
                reused: 0,
            });
        }
        let compute_micros = started.elapsed().as_micros() as u64;
        crate::profile::stage(format_args!("view {}: swept", p.view.name));
        // States are combined, finished and stored whole: gather them (in parallel) now.
        // Plain values stay in their pieces for the writer.
        let swept = Swept {
            cols: states_gathered(cols, &plan.work)?,
            sub_cols: states_gathered(sub_cols, &plan.sub_work)?,
            grid_cols: match &plan.tiles {
                Some(tp) => states_gathered(grid_cols, &tp.work)?,
                None => Vec::new(),
            },
            compute_micros,
        };
        let prefetched = match prefetch {
            Some(h) => h
                .join()
                .map_err(|_| Error::Internal("reading stored states panicked".into()))??,
            None => HashMap::new(),
        };
        crate::profile::stage(format_args!("view {}: stored states read", p.view.name));
        let finished = self.finish_view(p, &plan, swept, prefetched, &sbatch, &mut explain)?;
        crate::profile::stage(format_args!(
            "view {}: states handed to the writer",
            p.view.name
        ));
        Ok(ViewResult {
            columns: finished.columns,
            explain,
            spills,
            bytes_scanned: scanned,
            stored_bytes_read: finished.stored_bytes_read,
            reused: finished.reused,
        })
    }

    /// Record a scan in the join log that `quiver optimize` reads.
    fn log_scan(
        &self,
        p: &ViewParts<'_>,
        range: reuse_plan::Range,
        distinct_keys: u64,
        bytes_scanned: u64,
    ) -> Result<()> {
        let Some(cat) = &self.reuse else {
            return Ok(());
        };
        let src = p.source;
        let mut columns: Vec<String> = vec![src.timestamp.clone()];
        columns.extend(p.value_cols.iter().cloned());
        let rec = reuse::ScanRecord {
            source: src.name.clone(),
            lo: range.and_then(|r| r.0),
            hi: range.map_or(i64::MAX, |r| r.1),
            columns,
            key_columns: p.view.join_keys.clone(),
            distinct_keys,
            bytes_scanned,
            at_micros: 0,
        };
        cat.log_scan(&rec.now())
    }

    /// Each feature's state comes from the scan, the catalog or both (read here, in order).
    /// Features with the same definition and window (a sum and a mean of a column) share one
    /// state: it is merged and stored once. Merging the states, then finishing the values,
    /// runs in parallel; the new states are stored behind, on a thread of their own.
    fn finish_view(
        &self,
        p: &ViewParts<'_>,
        plan: &ReusePlan<'_>,
        swept: Swept,
        prefetched: Prefetched,
        sbatch: &RecordBatch,
        explain: &mut Vec<String>,
    ) -> Result<Finished> {
        let (src, reuse) = (p.source, &plan.reuse);
        let Swept {
            cols,
            sub_cols,
            grid_cols,
            compute_micros,
        } = swept;
        let mut states: Vec<(String, quiver_core::semantics::Window, StateFrom)> = Vec::new();
        let mut to_store = Vec::new();
        let mut finish: Vec<FinishJob> = Vec::with_capacity(p.features.len());
        let mut reused = 0usize;
        let mut loader = reuse.as_ref().map(|(cat, _)| Loader::new(cat, prefetched));
        // the spine as pieces of stored spines and the rows computed here, when a feature
        // took rows of other spines in a few runs
        let mut spine_pieces: Option<Vec<reuse::Piece>> = None;
        let per_feature = compute_micros
            / (plan.work.len()
                + plan.sub_work.len()
                + plan.tiles.as_ref().map_or(0, |t| t.work.len()))
            .max(1) as u64;
        let tiles = match (&plan.tiles, &mut loader) {
            (Some(tp), Some(loader)) => Some(tile_states(tp, grid_cols, loader)?),
            (Some(_), None) => return Err(Error::Internal("tiles without a catalog".into())),
            (None, _) => None,
        };
        for (fp, f) in plan.features.iter().zip(&p.features) {
            // (a cross-spine feature whose rows other spines all hold has no second pass)
            let computed = fp.slot.and_then(|j| {
                if fp.cross.is_some() {
                    sub_cols.get(j).cloned()
                } else {
                    cols.get(j).cloned()
                }
            });
            let Some(kind) = fp.kind else {
                finish.push(FinishJob::Plain(
                    computed.ok_or_else(|| Error::Internal("feature not computed".into()))?,
                ));
                continue;
            };
            // latest values finish as their value, whatever the aggregate
            let agg = match f.kind {
                Kind::Agg(agg, _) => agg,
                Kind::Latest => Agg::Last,
            };
            let want = gate::window_of(&f.kind);
            let (Some((_, version)), Some(def), Some(loader)) = (reuse, &fp.def, &mut loader)
            else {
                return Err(Error::Internal("state without a catalog".into()));
            };
            let from_tiles = match (fp.tiles, &plan.tiles) {
                (Some((slot, _)), Some(tp)) => tp.cross[slot].is_some(),
                _ => false,
            };
            if fp.reused() || from_tiles {
                reused += 1;
            }
            let finish_job = |state| FinishJob::State {
                state,
                agg,
                kind,
                label: f.label.clone(),
            };
            if let Some(k) = states.iter().position(|(d, w, _)| d == def && *w == want) {
                finish.push(finish_job(k));
                continue;
            }
            let computed = computed.map(|c| c.array()).transpose()?;
            let mut pieces = None;
            let from = match (&fp.choice, &fp.cross, computed, fp.tiles, &tiles) {
                (_, _, _, Some((slot, w)), Some((grid, done))) => {
                    StateFrom::Tiles(kind, Arc::clone(grid), Arc::clone(&done.states[slot]), w)
                }
                (_, Some(c), rest, _, _) => {
                    let (arrays, rest) = loader.cross_inputs(c, rest)?;
                    let (from, runs) = cross_state(c, arrays, &rest, &plan.unmatched);
                    // a few runs: slices of the stored states and of the rows computed here,
                    // finished as they are and stored as pieces
                    if let Some(runs) = runs {
                        if spine_pieces.is_none() {
                            spine_pieces = Some(run_pieces(&runs, |e| &c.entries[e].spine));
                        }
                        pieces = Some((run_pieces(&runs, |e| &c.entries[e].id), rest));
                    }
                    from
                }
                (gate::Choice::Cold, None, Some(c), _, _) => StateFrom::Ready(c),
                (gate::Choice::Exact(e), None, _, _, _) => StateFrom::Ready(loader.load(e)?),
                (gate::Choice::Widen(e, _), None, Some(b), _, _) => {
                    StateFrom::Merge(kind, loader.load(e)?, b, false)
                }
                (gate::Choice::Narrow(e, _), None, Some(b), _, _) => {
                    StateFrom::Merge(kind, loader.load(e)?, b, true)
                }
                _ => return Err(Error::Internal("reuse plan without its inputs".into())),
            };
            if !matches!(fp.choice, gate::Choice::Exact(_)) {
                to_store.push((
                    states.len(),
                    reuse::Entry {
                        id: String::new(),
                        source: src.name.clone(),
                        source_version: version.id.clone(),
                        def: def.clone(),
                        spine: plan.spine_key.clone(),
                        window: want,
                        feature: f.label.clone(),
                        rows: 0,
                        bytes: 0,
                        cost_micros: per_feature,
                        priority: 0.0,
                        used_micros: 0,
                        parts: Vec::new(),
                    },
                    pieces,
                ));
            }
            finish.push(finish_job(states.len()));
            states.push((def.clone(), want, from));
        }
        let panicked = |what: &'static str| move || Error::Internal(format!("{what} panicked"));
        crate::profile::stage(format_args!("view {}: states planned", p.view.name));
        let states = table::on_cores(
            states.into_iter().map(|(_, _, from)| from).collect(),
            StateFrom::state,
            panicked("merging states"),
        )?;
        crate::profile::stage(format_args!("view {}: states merged", p.view.name));
        let out = table::on_cores(
            finish,
            |job| job.run(&states),
            panicked("finishing a feature"),
        )?;
        let to_store: Vec<(reuse::Entry, reuse::ToStore<Vec<ArrayRef>, ArrayRef>)> = to_store
            .into_iter()
            .map(|(k, e, pieces)| {
                let rows = states[k].iter().map(|a| a.len() as u64).sum();
                let whole = states[k].clone();
                (reuse::Entry { rows, ..e }, reuse::ToStore { whole, pieces })
            })
            .collect();
        crate::profile::stage(format_args!("view {}: finished", p.view.name));
        // the tiles computed here, stored as their grid's states (beside stored grids' rows)
        let tiles_to_store = match (&plan.tiles, tiles, reuse) {
            (Some(tp), Some((_, done)), Some((_, version))) if !tp.unmatched.is_empty() => {
                let label = plan
                    .features
                    .iter()
                    .zip(&p.features)
                    .find(|(fp, _)| fp.tiles.is_some())
                    .map_or(String::new(), |(_, f)| format!("{} (day tiles)", f.label));
                let items = done
                    .to_store
                    .into_iter()
                    .enumerate()
                    .map(|(s, store)| {
                        let entry = reuse::Entry {
                            id: String::new(),
                            source: src.name.clone(),
                            source_version: version.id.clone(),
                            def: tp.defs[s].clone(),
                            spine: tp.key.clone(),
                            window: gate::window_of(&tp.work[s].kind),
                            feature: label.clone(),
                            rows: tp.grid.rows() as u64,
                            bytes: 0,
                            cost_micros: per_feature,
                            priority: 0.0,
                            used_micros: 0,
                            parts: Vec::new(),
                        };
                        (entry, store)
                    })
                    .collect::<Vec<_>>();
                let spine = reuse::ToStore {
                    whole: gate::spine_batch(&tp.grid.sbatch)?,
                    pieces: match done.spine_pieces {
                        Some(p) => Some((
                            p,
                            gate::spine_batch(&sub_spine(&tp.grid.sbatch, &tp.unmatched)?)?,
                        )),
                        None => None,
                    },
                };
                Some((tp.key.clone(), spine, items))
            }
            _ => None,
        };
        if let (Some((cat, _)), Some(loader)) = (reuse, loader) {
            // Write-behind: the states are written on a thread of their own while the
            // caller uses the result; the next lookup (or dropping the engine) waits for it.
            let spine_cols = reuse::ToStore {
                whole: gate::spine_batch(sbatch)?,
                pieces: match spine_pieces {
                    Some(p) => Some((p, gate::spine_batch(&sub_spine(sbatch, &plan.unmatched)?)?)),
                    None => None,
                },
            };
            let count = to_store.len() + tiles_to_store.as_ref().map_or(0, |t| t.2.len());
            let cat = (*cat).clone();
            let spine_key = plan.spine_key.clone();
            let failed = Arc::clone(&self.store_error);
            let touched = loader.touched;
            let handle = std::thread::spawn(move || {
                let kept = cat.touch(&touched).and_then(|_| {
                    if !to_store.is_empty() {
                        cat.store((&spine_key, spine_cols), to_store)?;
                    }
                    match tiles_to_store {
                        Some((key, spine, items)) => cat.store((&key, spine), items),
                        None => Ok(0),
                    }
                });
                if let Err(e) = kept
                    && let Ok(mut f) = failed.lock()
                {
                    *f = Some(e.to_string());
                }
            });
            if let Ok(mut p) = self.pending.lock() {
                p.push(handle);
            }
            if count > 0 {
                explain.push(format!(
                    "  {count} feature state(s) stored in the background for reuse"
                ));
            }
            return Ok(Finished {
                columns: out,
                stored_bytes_read: loader.stored_read,
                reused,
            });
        }
        Ok(Finished {
            columns: out,
            stored_bytes_read: 0,
            reused,
        })
    }

    /// Scan a view's source over `range` and sweep `features`; returns the columns in spine
    /// order, explain lines, spilled partitions, bytes scanned and the spine's distinct keys
    /// (counted up to a small cap).
    async fn sweep_view(
        &self,
        p: &ViewParts<'_>,
        features: &[FeatureSpec],
        sbatch: &RecordBatch,
        key_types: &[DataType],
        range: Option<(Option<i64>, i64)>,
        time_type: &DataType,
    ) -> Result<SweptView> {
        let n = sbatch.num_rows();
        let view = p.view;
        let src = p.source;
        let bs = self.ctx.state().config().batch_size();
        let mut explain = Vec::new();
        // A cluster's executors read the spine from a staged file (a plan carrying it would
        // pass gRPC's message limits); the file is removed when the view is done.
        let staged = match &self.runner {
            Some(runner) if !self.plan_only => {
                let staged = Staged::write(runner.staging(), &view.name, sbatch)?;
                explain.push(format!("  spine staged at {}", staged.0.display()));
                Some(staged)
            }
            _ => None,
        };
        let spine_table: Arc<dyn TableProvider> = match &staged {
            Some(s) => {
                source::files_table(
                    &self.ctx,
                    std::slice::from_ref(&s.0),
                    None,
                    &s.0,
                    "staged spine",
                )
                .await?
            }
            None => {
                let slices: Vec<RecordBatch> = (0..n.div_ceil(bs).max(1))
                    .map(|i| sbatch.slice(i * bs, bs.min(n - (i * bs).min(n))))
                    .collect();
                Arc::new(MemTable::try_new(sbatch.schema(), vec![slices])?)
            }
        };
        let spine_plan =
            LogicalPlanBuilder::scan("spine", provider_as_source(spine_table), None)?.build()?;

        let table = Arc::new(source::TimePruned {
            inner: p.table.clone(),
            time: src.timestamp.clone(),
        });
        let mut builder =
            LogicalPlanBuilder::scan(src.name.as_str(), provider_as_source(table), None)?;
        if let Some((lo, hi)) = range {
            let mut pred = column(&src.timestamp).lt_eq(time_literal(time_type, hi));
            if let Some(lo) = lo {
                pred = pred.and(column(&src.timestamp).gt_eq(time_literal(time_type, lo)));
            }
            builder = builder.filter(pred)?;
            explain.push(format!(
                "  scan pruned to event time in {}",
                gate::range_text(range)
            ));
        }
        // Semi-join on the keys: a spine with few entities reads only their row groups (when
        // the source is laid out by key, statistics skip the rest).
        let (key_list, distinct) = few_keys(sbatch, MAX_KEY_LIST);
        let tschema = p.table.schema();
        if let Some(list) = key_list
            && view.join_keys.len() == 1
            && tschema.field_with_name(&view.join_keys[0])?.data_type() == &key_types[0]
        {
            explain.push(format!(
                "  scan restricted to the spine's {} key(s)",
                list.len()
            ));
            builder = builder.filter(column(&view.join_keys[0]).in_list(list, false))?;
        }
        let mut proj: Vec<Expr> = view
            .join_keys
            .iter()
            .zip(key_types)
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
        // an in-memory source numbered its rows itself (`in_source_order`)
        if tschema.field_with_name(plan::SEQ).is_ok() {
            proj.push(column(plan::SEQ));
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
            features: features.to_vec(),
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
        if self.plan_only
            && let Some(runner) = &self.runner
        {
            explain.push(format!(
                "  would run on {}, the spine staged in {}",
                runner.describe(),
                runner.staging().display()
            ));
        }
        if self.plan_only {
            // nothing runs: the caller (`view_columns`) answers with null features
            return Ok(SweptView {
                columns: Vec::new(),
                explain,
                spills: 0,
                bytes_scanned: 0,
                distinct_keys: distinct,
            });
        }
        let (batches, spills, mut scanned) = match &self.runner {
            Some(runner) => {
                explain.push(format!("  runs on {}", runner.describe()));
                let spine = staged.as_ref().map(|s| s.0.clone()).unwrap_or_default();
                let ran = runner.run(phys.clone(), &self.ctx, &spine).await?;
                drop(staged);
                explain.extend(ran.explain);
                let metric = |name: &str| ran.metrics.get(name).copied().unwrap_or(0);
                let (spills, scanned) = (metric("spill_count") as usize, metric("bytes_scanned"));
                (ran.batches, spills, scanned)
            }
            None => {
                let parts = collect_partitioned(phys.clone(), self.ctx.task_ctx()).await?;
                let spills = phys.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
                let scanned = metric_sum(phys.as_ref(), "bytes_scanned");
                (
                    parts.into_iter().flatten().collect::<Vec<_>>(),
                    spills,
                    scanned,
                )
            }
        };
        crate::profile::stage(format_args!("view {}: joined", view.name));
        if let Some(hook) = self.after_sweep {
            hook();
        }
        if spills > 0 {
            explain.push(format!("  {spills} partition(s) exceeded the memory pool and were swept from disk in buckets"));
        }
        if scanned == 0 {
            // CSV scans are not metered by DataFusion; they read their files whole.
            let loc = source::source_location(&self.repo.offline_store, src);
            if let Ok(files) = source::list_files(&loc) {
                scanned = files
                    .iter()
                    .filter(|f| source::Format::of(f) == source::Format::Csv)
                    .filter_map(|f| source::file_size(f).ok())
                    .sum();
            }
        }
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        // Where each spine row sits among the pieces.
        let ids = batches
            .iter()
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .map(|a| a.values().clone())
                    .ok_or_else(|| Error::Internal("rid".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let order = Arc::new(Order::from_row_ids(ids, n)?);
        // The columns stay in their pieces: whoever reads the result gathers them in spine
        // order (the Parquet writer a slice at a time, see `table`).
        let cols: Vec<OutColumn> = (0..features.len())
            .map(|j| {
                if batches.is_empty() {
                    let t = &features[j].output_type;
                    return OutColumn::Ready(datafusion::arrow::array::new_empty_array(t));
                }
                OutColumn::Scattered {
                    pieces: Arc::new(batches.iter().map(|b| b.column(j + 1).clone()).collect()),
                    order: Arc::clone(&order),
                }
            })
            .collect();
        Ok(SweptView {
            columns: cols,
            explain,
            spills,
            bytes_scanned: scanned,
            distinct_keys: distinct,
        })
    }

    /// What a scan of a view's source over `range` would read, from the files' footers.
    async fn scan_estimate(
        &self,
        p: &ViewParts<'_>,
        range: Option<(Option<i64>, i64)>,
    ) -> Result<String> {
        let Some(v) = self.source_version(p.source).await? else {
            return Ok("an in-memory table (no statistics)".into());
        };
        let stats = ScanStats::load(&v.files, &p.source.timestamp, &read_columns(p))?;
        // no range: the scan is not pruned by time (CSV groups count whole either way)
        let range = range.unwrap_or((None, i64::MAX));
        Ok(gate::Cost::of(Some(&stats), Some(range), &[]).text())
    }

    /// The version of a source the engine reads, when it can be named: a Delta version, or
    /// a fingerprint of the files (paths, sizes, modification times).
    async fn source_version(&self, s: &Source) -> Result<Option<SourceVersion>> {
        if let Some(v) = self.versions.get(&s.name) {
            return Ok(Some(v.clone()));
        }
        if self.tables.contains_key(&s.name) {
            return Ok(None);
        }
        let path = source::source_location(&self.repo.offline_store, s);
        if crate::delta::is_delta_table(&path) {
            let snap = crate::delta::snapshot(&path, None).await?;
            return Ok(Some(SourceVersion::delta(&path, snap.version, snap.files)));
        }
        let (id, files) = source::fingerprint(&path)?;
        Ok(Some(SourceVersion {
            id: format!("files:{id}"),
            files,
        }))
    }
}

/// The sweep's columns of a view: over every spine row, over the rows other spines did not
/// give, and over the day tiles' grid rows no stored grid holds; and the time the sweep took.
struct Swept {
    cols: Vec<OutColumn>,
    sub_cols: Vec<OutColumn>,
    grid_cols: Vec<OutColumn>,
    compute_micros: u64,
}

/// A scan and sweep of one view: over every spine row, the rows other spines lack, or the
/// day tiles' grid rows.
enum Pass {
    Main,
    Rest,
    Grid,
}

/// A view's finished columns, with what reuse read.
struct Finished {
    columns: Vec<OutColumn>,
    stored_bytes_read: u64,
    reused: usize,
}

/// What one view's scan and sweep gave.
struct SweptView {
    columns: Vec<OutColumn>,
    explain: Vec<String>,
    spills: usize,
    bytes_scanned: u64,
    distinct_keys: u64,
}

/// What one view contributed to a join.
struct ViewResult {
    columns: Vec<OutColumn>,
    explain: Vec<String>,
    spills: usize,
    bytes_scanned: u64,
    stored_bytes_read: u64,
    reused: usize,
}

/// The source columns a view's scan reads (for footer statistics).
fn read_columns<'a>(p: &'a ViewParts<'_>) -> Vec<&'a str> {
    let src = p.source;
    let mut cols: Vec<&str> = p.view.join_keys.iter().map(|s| s.as_str()).collect();
    cols.push(&src.timestamp);
    cols.extend(src.created_timestamp.as_deref());
    cols.extend(p.value_cols.iter().map(|s| s.as_str()));
    cols
}

/// Whether two swept features have the same window and the same state kind.
fn kinds_equal(a: &FeatureSpec, b: &FeatureSpec) -> bool {
    match (a.kind, b.kind) {
        (Kind::Agg(x, wa), Kind::Agg(y, wb)) => {
            wa == wb
                && StateKind::of(x, Some(&DataType::Float64))
                    == StateKind::of(y, Some(&DataType::Float64))
                && StateKind::of(x, Some(&DataType::Int64))
                    == StateKind::of(y, Some(&DataType::Int64))
        }
        (Kind::Latest, Kind::Latest) => true,
        _ => false,
    }
}

/// Stored states by entry id (`None`: the file has gone).
type Prefetched = HashMap<String, Option<ArrayRef>>;

/// Starts reading, on a thread of its own, every stored state that the features' choices
/// and rows of other spines name (each once; `None` for an entry whose file has gone). `None` when they name none.
/// With no scan to overlap (`scans` false), the states are read on every core.
fn prefetch_states(
    cat: &ReuseCatalog,
    features: &[reuse_plan::FeaturePlan],
    tiles: Option<&reuse_plan::TilePlan>,
    scans: bool,
) -> Option<std::thread::JoinHandle<Result<Prefetched>>> {
    let mut entries: Vec<reuse::Entry> = Vec::new();
    let stored_tiles = tiles
        .into_iter()
        .flat_map(|t| t.cross.iter().flatten().flat_map(|c| c.entries.iter()));
    let named = features
        .iter()
        .flat_map(|f| {
            f.choice
                .entry()
                .into_iter()
                .chain(f.cross.iter().flat_map(|c| c.entries.iter()))
        })
        .chain(stored_tiles);
    for e in named {
        if !entries.iter().any(|x| x.id == e.id) {
            entries.push(e.clone());
        }
    }
    if entries.is_empty() {
        return None;
    }
    let cat = cat.clone();
    let load = move |e: reuse::Entry| cat.load(&e).map(|a| (e.id, a));
    Some(std::thread::spawn(move || {
        if scans {
            // one thread: the scan it overlaps keeps the other cores busy
            return entries.into_iter().map(load).collect();
        }
        let loaded = table::on_cores(entries, load, || {
            Error::Internal("reading a stored state panicked".into())
        })?;
        Ok(loaded.into_iter().collect())
    }))
}

/// Where a feature's state comes from.
enum StateFrom {
    /// Computed by the scan, or stored for exactly this window.
    Ready(ArrayRef),
    /// A stored state merged with (or, `true`, less) the band the scan computed.
    Merge(StateKind, ArrayRef, ArrayRef, bool),
    /// Rows of several states by (state, row): other spines' and the scan's.
    Rows(Vec<ArrayRef>, Vec<(usize, usize)>),
    /// Slices of stored states and of the scan's, in row order (a spine that lines up with
    /// stored ones in a few runs): kept as chunks, each finished as it is.
    Runs(Vec<ArrayRef>),
    /// Merged from day tiles: the grid, its tiles' states, and how the window splits.
    Tiles(StateKind, Arc<tiles::Grid>, ArrayRef, tiles::Tiling),
}

impl StateFrom {
    fn state(self) -> Result<Vec<ArrayRef>> {
        match self {
            StateFrom::Ready(a) => Ok(vec![a]),
            StateFrom::Runs(slices) => Ok(slices),
            StateFrom::Merge(kind, stored, band, subtract) => {
                Ok(vec![state::combine(kind, &stored, &band, subtract)?])
            }
            StateFrom::Rows(arrays, idx) => {
                Ok(vec![OutColumn::from_positions(arrays, idx).array()?])
            }
            StateFrom::Tiles(kind, grid, tiles, w) => Ok(vec![grid.compose(kind, &tiles, w)?]),
        }
    }
}

/// One output feature before it is finished.
enum FinishJob {
    /// A plain value column (no state).
    Plain(OutColumn),
    /// The value finished from a state (an index into the view's states).
    State {
        state: usize,
        agg: Agg,
        kind: StateKind,
        label: String,
    },
}

impl FinishJob {
    /// The finished column: each chunk of the state finished as it is, then joined.
    fn run(self, states: &[Vec<ArrayRef>]) -> Result<OutColumn> {
        match self {
            FinishJob::Plain(c) => Ok(c),
            FinishJob::State {
                state,
                agg,
                kind,
                label,
            } => {
                let mut done = states[state]
                    .iter()
                    .map(|chunk| state::finish(agg, kind, chunk, &label))
                    .collect::<Result<Vec<_>>>()?;
                if done.len() == 1 {
                    return Ok(OutColumn::Ready(done.remove(0)));
                }
                Ok(OutColumn::Chunks(Arc::new(done)))
            }
        }
    }
}

/// The source of a run of rows computed here (not taken from a stored entry).
const NEW_ROWS: u32 = u32::MAX;

/// A run of consecutive rows of one source: (entry index or [`NEW_ROWS`], first row there,
/// rows).
type Run = (u32, u32, u32);

/// A cross-spine state as runs (entry index or [`NEW_ROWS`], first row there, rows): runs of
/// consecutive rows of one stored entry, and of the rows computed here (`unmatched`: the
/// spine rows computed, ascending, so a span's first row's place among them is where its
/// rows start). `None` when there are more runs than a stored entry may have parts (rows of
/// many spines, or new rows scattered through the spine): the state is then gathered row by
/// row and stored whole.
fn cross_runs(c: &cross::Cross, unmatched: &[u32]) -> Option<Vec<Run>> {
    if c.spans.len() > reuse::MAX_PARTS {
        return None;
    }
    let runs: Vec<Run> = span_runs(c, unmatched).collect();
    (!runs.is_empty()).then_some(runs)
}

/// Each span of `c` as a run (see [`cross_runs`]), without a bound on their number.
fn span_runs<'a>(c: &'a cross::Cross, unmatched: &'a [u32]) -> impl Iterator<Item = Run> + 'a {
    c.starts().map(|(at, s)| match s.from {
        Some((e, q)) => (e, q, s.rows),
        None => (
            NEW_ROWS,
            unmatched.partition_point(|&r| r < at) as u32,
            s.rows,
        ),
    })
}

/// A cross-spine state from rows of stored states (`arrays`, one per entry of `c`) and of
/// the rows computed here (`rest`; `unmatched`: the rows it holds, ascending): slices of
/// them when they line up in a few runs (returned, so the state can be stored as pieces),
/// else gathered row by row.
fn cross_state(
    c: &cross::Cross,
    mut arrays: Vec<ArrayRef>,
    rest: &ArrayRef,
    unmatched: &[u32],
) -> (StateFrom, Option<Vec<Run>>) {
    match cross_runs(c, unmatched) {
        Some(runs) => {
            let slices = runs
                .iter()
                .map(|&(src, start, len)| match src {
                    NEW_ROWS => rest.slice(start as usize, len as usize),
                    e => arrays[e as usize].slice(start as usize, len as usize),
                })
                .collect();
            (StateFrom::Runs(slices), Some(runs))
        }
        None => {
            arrays.push(Arc::clone(rest));
            let last = arrays.len() - 1;
            let mut idx = Vec::with_capacity(c.len);
            for (src, start, len) in span_runs(c, unmatched) {
                let src = if src == NEW_ROWS { last } else { src as usize };
                idx.extend((start..start + len).map(|q| (src, q as usize)));
            }
            (StateFrom::Rows(arrays, idx), None)
        }
    }
}

/// The day tiles' states, one array per grid state, and what of them to store.
struct TileStates {
    states: Vec<ArrayRef>,
    /// Per grid state: the whole, or pieces of stored grids' states and the rows computed.
    to_store: Vec<reuse::ToStore<Vec<ArrayRef>, ArrayRef>>,
    /// The grid as pieces of stored grids and its computed rows, when a state is in pieces.
    spine_pieces: Option<Vec<reuse::Piece>>,
}

/// Each grid state's tiles: the rows stored grids hold and the rows the grid pass computed
/// (`computed`, one column per state over the plan's unmatched grid rows).
fn tile_states(
    tp: &reuse_plan::TilePlan,
    computed: Vec<OutColumn>,
    loader: &mut Loader<'_>,
) -> Result<(Arc<tiles::Grid>, TileStates)> {
    let mut done = TileStates {
        states: Vec::with_capacity(tp.work.len()),
        to_store: Vec::with_capacity(tp.work.len()),
        spine_pieces: None,
    };
    for (slot, c) in tp.cross.iter().enumerate() {
        let rest = computed.get(slot).map(|c| c.array()).transpose()?;
        let (chunks, pieces) = match (c, rest) {
            (None, Some(rest)) => (vec![rest], None),
            (Some(c), rest) => {
                let (arrays, rest) = loader.cross_inputs(c, rest)?;
                let (from, runs) = cross_state(c, arrays, &rest, &tp.unmatched);
                let pieces = runs.map(|runs| {
                    if done.spine_pieces.is_none() {
                        done.spine_pieces = Some(run_pieces(&runs, |e| &c.entries[e].spine));
                    }
                    (run_pieces(&runs, |e| &c.entries[e].id), rest)
                });
                (from.state()?, pieces)
            }
            (None, None) => return Err(Error::Internal("tiles not computed".into())),
        };
        done.states.push(match chunks.as_slice() {
            [one] => Arc::clone(one),
            _ => {
                let refs: Vec<&dyn Array> = chunks.iter().map(|a| a.as_ref()).collect();
                datafusion::arrow::compute::concat(&refs)?
            }
        });
        done.to_store.push(reuse::ToStore {
            whole: chunks,
            pieces,
        });
    }
    Ok((Arc::clone(&tp.grid), done))
}

/// Reads stored states for one view, each once (from what was prefetched when it can),
/// counting the bytes read and the entries used.
struct Loader<'c> {
    cat: &'c ReuseCatalog,
    prefetched: Prefetched,
    loaded: HashMap<String, ArrayRef>,
    touched: Vec<String>,
    stored_read: u64,
}

impl<'c> Loader<'c> {
    fn new(cat: &'c ReuseCatalog, prefetched: Prefetched) -> Loader<'c> {
        Loader {
            cat,
            prefetched,
            loaded: HashMap::new(),
            touched: Vec::new(),
            stored_read: 0,
        }
    }

    /// The stored states a cross-spine state takes rows of, and the rows computed here
    /// (`rest`; none computed when the stored spines hold every row).
    fn cross_inputs(
        &mut self,
        c: &cross::Cross,
        rest: Option<ArrayRef>,
    ) -> Result<(Vec<ArrayRef>, ArrayRef)> {
        let arrays = c
            .entries
            .iter()
            .map(|e| self.load(e))
            .collect::<Result<Vec<_>>>()?;
        let rest = match (rest, arrays.first()) {
            (Some(r), _) => r,
            (None, Some(a)) if c.matched == c.len => a.slice(0, 0),
            _ => return Err(Error::Internal("rows left without a pass".into())),
        };
        Ok((arrays, rest))
    }

    fn load(&mut self, e: &reuse::Entry) -> Result<ArrayRef> {
        if let Some(a) = self.loaded.get(&e.id) {
            return Ok(Arc::clone(a));
        }
        self.stored_read += e.bytes;
        self.touched.push(e.id.clone());
        let a = match self.prefetched.remove(&e.id) {
            Some(a) => a,
            None => self.cat.load(e)?,
        };
        let a = a.ok_or_else(|| {
            Error::Source(format!(
                "reuse entry {} was evicted while in use; run the join again",
                e.id
            ))
        })?;
        self.loaded.insert(e.id.clone(), Arc::clone(&a));
        Ok(a)
    }
}

/// Runs as catalog pieces, a stored run naming what `of` gives for its entry (its id, or its
/// spine's key).
fn run_pieces<'a>(runs: &[Run], of: impl Fn(usize) -> &'a String) -> Vec<reuse::Piece> {
    runs.iter()
        .map(|&(src, start, rows)| match src {
            NEW_ROWS => reuse::Piece::New {
                start: start as u64,
                rows: rows as u64,
            },
            e => reuse::Piece::Stored {
                of: of(e as usize).clone(),
                start: start as u64,
                rows: rows as u64,
            },
        })
        .collect()
}

/// A spine input restricted to some rows, renumbered so the sweep puts them in that order.
fn sub_spine(sbatch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    let idx = datafusion::arrow::array::UInt32Array::from(rows.to_vec());
    let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(
        0..rows.len() as u64,
    ))];
    for c in &sbatch.columns()[1..] {
        cols.push(datafusion::arrow::compute::take(c.as_ref(), &idx, None)?);
    }
    Ok(RecordBatch::try_new(sbatch.schema(), cols)?)
}

/// Spines with at most this many distinct keys restrict the scan to them.
const MAX_KEY_LIST: usize = 64;

/// The distinct values of a single-key spine input as literals when there are at most `cap`
/// of them, and how many there are (counted up to `cap + 1`).
fn few_keys(sbatch: &RecordBatch, cap: usize) -> (Option<Vec<Expr>>, u64) {
    if sbatch.num_columns() != 3 {
        return (None, 0);
    }
    let keys = sbatch.column(1);
    let mut seen: Vec<ScalarValue> = Vec::new();
    for i in 0..keys.len() {
        if keys.is_null(i) {
            continue;
        }
        let Ok(v) = ScalarValue::try_from_array(keys.as_ref(), i) else {
            return (None, 0);
        };
        if !seen.contains(&v) {
            if seen.len() == cap {
                return (None, cap as u64 + 1);
            }
            seen.push(v);
        }
    }
    let n = seen.len() as u64;
    (Some(seen.into_iter().map(lit).collect()), n)
}

/// `cols` with the columns of the features swept as states gathered whole, in parallel;
/// each one's pieces are released as it is done.
fn states_gathered(mut cols: Vec<OutColumn>, feats: &[FeatureSpec]) -> Result<Vec<OutColumn>> {
    let empty = || OutColumn::Ready(datafusion::arrow::array::new_null_array(&DataType::Null, 0));
    let idx: Vec<usize> = (0..cols.len()).filter(|&j| feats[j].state).collect();
    let states = idx
        .iter()
        .map(|&j| std::mem::replace(&mut cols[j], empty()))
        .collect();
    for (j, a) in idx.into_iter().zip(table::gather_all(states)?) {
        cols[j] = OutColumn::Ready(a);
    }
    Ok(cols)
}

/// The sum of a named metric over a physical plan and its children.
fn metric_sum(plan: &dyn datafusion::physical_plan::ExecutionPlan, name: &str) -> u64 {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name(name))
        .map_or(0, |v| v.as_usize() as u64);
    own + plan
        .children()
        .iter()
        .map(|c| metric_sum(c.as_ref(), name))
        .sum::<u64>()
}

/// An in-memory table with its source order attached as `__seq` (the row's place, partition
/// by partition), in one partition. DataFusion deals a `MemTable`'s batches out to more
/// partitions sorted by size, and round-robins them when it cannot, so numbering rows after
/// the scan ([`plan::SeqExec`], right for files) would not be the table's order; ties on
/// event time are broken by that order (DESIGN §3). Other providers are returned as they are.
fn in_source_order(table: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
    let Some(mem) = table.downcast_ref::<MemTable>() else {
        return table;
    };
    let schema = mem.schema();
    if schema.field_with_name(plan::SEQ).is_ok() {
        return table;
    }
    let mut batches = Vec::new();
    for part in &mem.batches {
        let Ok(part) = part.try_read() else {
            return table;
        };
        batches.extend(part.iter().cloned());
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(plan::SEQ, DataType::UInt64, false));
    let numbered = Arc::new(Schema::new(fields));
    let mut next = 0u64;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_rows() as u64;
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(UInt64Array::from_iter_values(next..next + n)));
        next += n;
        match RecordBatch::try_new(numbered.clone(), cols) {
            Ok(b) => out.push(b),
            Err(_) => return table,
        }
    }
    match MemTable::try_new(numbered, vec![out]) {
        Ok(t) => Arc::new(t),
        Err(_) => table,
    }
}

/// A schema's column names, for messages.
fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .filter(|f| f.name() != plan::SEQ)
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

/// A literal `x` in the time column's type with `col <= x` exactly when the column's value,
/// in microseconds, is at or before `us` (nanoseconds keep the sub-microsecond part).
fn time_upper(dt: &DataType, us: i64) -> Expr {
    match dt {
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => lit(ScalarValue::TimestampNanosecond(
            Some(us.saturating_mul(1_000).saturating_add(999)),
            tz.clone(),
        )),
        _ => time_literal(dt, us),
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

/// A spine written where a cluster's executors read it, removed when dropped.
struct Staged(PathBuf);

impl Staged {
    fn write(dir: &Path, view: &str, spine: &RecordBatch) -> Result<Staged> {
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("spine-{view}-{}-{nanos}-{n}.parquet", std::process::id());
        if !crate::objects::is_remote(dir) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let path = dir.join(name);
        source::write_table(&path, spine)?;
        Ok(Staged(path))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Best effort: a leftover staged spine is garbage, not state.
        match crate::objects::url_of(&self.0) {
            Some(url) => {
                let _ = crate::objects::delete(&url);
            }
            None => {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
