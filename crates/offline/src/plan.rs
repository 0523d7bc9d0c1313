//! The point-in-time join as a DataFusion extension: [`PitJoinNode`] (logical),
//! [`PitJoinPlanner`] (extension planner) and [`PitJoinExec`] (physical), plus [`SeqExec`],
//! which stamps each event with its position in the source so that ties keep source order
//! after DataFusion has hash-partitioned the events.
//!
//! Column layout of the two inputs (built by the engine):
//! - spine: `__rid` (UInt64), the key columns `__k0..`, `__t` (Int64 microseconds);
//! - events: the key columns `__k0..`, `__t` (the source's time column as stored), `__c`
//!   (created time, if the source has one), the value columns `__v0..`, the filter columns
//!   `__f0..` (Boolean); [`SeqExec`] appends `__seq` (UInt64).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    ExecutionPlanProperties, InputDistributionRequirements, Partitioning, PhysicalExpr,
    PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use std::io::Seek;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use futures::{StreamExt, TryStreamExt};
use quiver_core::Duration;

use crate::Error;
use crate::pack::{BUCKETS, Pack, buckets_at};
use crate::sweep::{FeatureSpec, Lanes, needed_span, sweep};

pub const RID: &str = "__rid";
pub const TIME: &str = "__t";
pub const CREATED: &str = "__c";
pub const SEQ: &str = "__seq";

pub fn key_col(i: usize) -> String {
    format!("__k{i}")
}
pub fn value_col(i: usize) -> String {
    format!("__v{i}")
}
pub fn filter_col(i: usize) -> String {
    format!("__f{i}")
}

/// Everything the operator needs to know about one feature view's part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct ViewSpec {
    pub view: String,
    pub source: String,
    /// The source's time column, for messages.
    pub time_column: String,
    pub created_column: Option<String>,
    pub key_count: usize,
    pub value_count: usize,
    pub filter_count: usize,
    pub ttl: Option<Duration>,
    pub filter_created: bool,
    pub features: Vec<FeatureSpec>,
}

impl ViewSpec {
    fn output_schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new(RID, DataType::UInt64, false)];
        fields.extend(
            self.features
                .iter()
                .map(|f| Field::new(&f.name, f.output_type.clone(), true)),
        );
        Arc::new(Schema::new(fields))
    }
}

/// Logical node: for each spine row, the features of one view as of the row's time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PitJoinNode {
    spine: LogicalPlan,
    events: LogicalPlan,
    spec: Arc<ViewSpec>,
    schema: DFSchemaRef,
}

impl PitJoinNode {
    pub fn try_new(spine: LogicalPlan, events: LogicalPlan, spec: ViewSpec) -> DFResult<Self> {
        let schema = Arc::new(DFSchema::try_from(spec.output_schema().as_ref().clone())?);
        Ok(Self {
            spine,
            events,
            spec: Arc::new(spec),
            schema,
        })
    }

    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(self),
        })
    }
}

impl PartialOrd for PitJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.spine.partial_cmp(&other.spine) {
            Some(Ordering::Equal) => {}
            o => return o,
        }
        match self.events.partial_cmp(&other.events) {
            Some(Ordering::Equal) => {}
            o => return o,
        }
        self.spec.partial_cmp(&other.spec)
    }
}

impl UserDefinedLogicalNodeCore for PitJoinNode {
    fn name(&self) -> &str {
        "PitJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.spine, &self.events]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PitJoin: view={} features=[{}]",
            self.spec.view,
            feature_list(&self.spec)
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        if inputs.len() != 2 {
            return Err(DataFusionError::Internal("PitJoin takes two inputs".into()));
        }
        let events = inputs.swap_remove(1);
        let spine = inputs.swap_remove(0);
        Ok(Self {
            spine,
            events,
            spec: self.spec.clone(),
            schema: self.schema.clone(),
        })
    }
}

fn feature_list(spec: &ViewSpec) -> String {
    spec.features
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans [`PitJoinNode`] into [`PitJoinExec`] over a [`SeqExec`] of the events.
#[derive(Debug, Default)]
pub struct PitJoinPlanner;

#[async_trait]
impl ExtensionPlanner for PitJoinPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<PitJoinNode>() else {
            return Ok(None);
        };
        let events: Arc<dyn ExecutionPlan> = Arc::new(SeqExec::new(physical_inputs[1].clone()));
        Ok(Some(Arc::new(PitJoinExec::try_new(
            physical_inputs[0].clone(),
            events,
            n.spec.clone(),
        )?)))
    }
}

/// The query planner of Quiver's sessions: DataFusion's, plus the point-in-time join.
#[derive(Debug, Default)]
pub struct PitQueryPlanner;

#[async_trait]
impl QueryPlanner for PitQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PitJoinPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

fn key_exprs(schema: &Schema, n: usize, offset: usize) -> Vec<Arc<dyn PhysicalExpr>> {
    (0..n)
        .map(|i| Arc::new(Column::new(schema.field(offset + i).name(), offset + i)) as _)
        .collect()
}

/// Physical operator: asks for both inputs hash-partitioned on the entity key, then per
/// partition collects them and runs the sweep.
#[derive(Debug)]
pub struct PitJoinExec {
    spine: Arc<dyn ExecutionPlan>,
    events: Arc<dyn ExecutionPlan>,
    spec: Arc<ViewSpec>,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl PitJoinExec {
    pub fn try_new(
        spine: Arc<dyn ExecutionPlan>,
        events: Arc<dyn ExecutionPlan>,
        spec: Arc<ViewSpec>,
    ) -> DFResult<Self> {
        let schema = spec.output_schema();
        let n = spine.output_partitioning().partition_count();
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            spine,
            events,
            spec,
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn spec(&self) -> &ViewSpec {
        &self.spec
    }
}

impl DisplayAs for PitJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PitJoinExec: view={}, keys={}, features=[{}]",
            self.spec.view,
            self.spec.key_count,
            feature_list(&self.spec)
        )
    }
}

impl ExecutionPlan for PitJoinExec {
    fn name(&self) -> &'static str {
        "PitJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        let k = self.spec.key_count;
        InputDistributionRequirements::co_partitioned(vec![
            Distribution::KeyPartitioned(key_exprs(&self.spine.schema(), k, 1)),
            Distribution::KeyPartitioned(key_exprs(&self.events.schema(), k, 0)),
        ])
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.spine, &self.events]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 2 {
            return Err(DataFusionError::Internal(
                "PitJoinExec takes two children".into(),
            ));
        }
        let events = children.swap_remove(1);
        let spine = children.swap_remove(0);
        Ok(Arc::new(PitJoinExec::try_new(
            spine,
            events,
            self.spec.clone(),
        )?))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let spine = self.spine.execute(partition, context.clone())?;
        let events = self.events.execute(partition, context.clone())?;
        let spills = MetricBuilder::new(&self.metrics).spill_count(partition);
        let spec = self.spec.clone();
        let schema = self.schema();
        let pool = context.memory_pool();
        // Each partition packs events in memory up to half its share of a bounded pool; the
        // rest is for the inputs' repartitioning and for sweeping spilled buckets.
        let partitions = self
            .properties()
            .output_partitioning()
            .partition_count()
            .max(1);
        let budget = Budget::of(pool.memory_limit(), partitions);
        let reservation = MemoryConsumer::new(format!("PitJoinExec[{partition}]"))
            .with_can_spill(true)
            .register(pool);
        let out_schema = schema.clone();
        let fut = async move {
            let batches = run(
                &spec,
                &out_schema,
                spine,
                events,
                &reservation,
                budget,
                &spills,
            )
            .await;
            reservation.free();
            batches.map(|b| futures::stream::iter(b.into_iter().map(Ok)))
        };
        let stream = futures::stream::once(fut).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// What the sweep needs beside the input arrays, per event: order, sorted times, key ids,
/// prefix counts and sums. Reserved up front so that the pool bounds the whole operator.
const SWEEP_BYTES_PER_EVENT: usize = 48;

/// What the operator holds: the spine, the packed events, and the sweep of the largest
/// bucket (its packed lanes again, sorted, plus order and prefix sums).
fn held(spine: usize, pack: &Pack) -> usize {
    let (all, largest) = pack.bytes();
    spine + all + largest + largest / 2
}

/// Collect a partition and sweep it. Events are packed into key-hash buckets as they
/// arrive ([`crate::pack`]) and swept a bucket at a time. When the partition would hold more
/// than `cap` bytes, or the memory pool refuses another batch, switch to spilling: every
/// later batch is split by the same bucket hash into one file per bucket, and each bucket
/// reads its file back just before it is swept, so memory is bounded by what was packed plus
/// one bucket, not by the partition. The cap also keeps the inputs' own repartitioning from
/// running out of memory: DataFusion 55's `RepartitionExec` can deadlock once it spills
/// (apache/datafusion#24883).
async fn run(
    spec: &ViewSpec,
    schema: &SchemaRef,
    mut spine: SendableRecordBatchStream,
    mut events: SendableRecordBatchStream,
    reservation: &MemoryReservation,
    budget: Budget,
    spills: &Count,
) -> DFResult<Vec<RecordBatch>> {
    let spine_schema = spine.schema();
    let mut spine_batches = Vec::new();
    // A spine that does not fit goes to disk by bucket too, and so will every event.
    let mut spine_spill: Option<Spill> = None;
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    while let Some(b) = spine.next().await {
        let b = b?;
        let t = b
            .column(1 + spec.key_count)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("PitJoinExec: spine time".into()))?;
        if let (Some(a), Some(z)) = (
            datafusion::arrow::compute::min(t),
            datafusion::arrow::compute::max(t),
        ) {
            (lo, hi) = (lo.min(a), hi.max(z));
        }
        if let Some(sp) = spine_spill.as_mut() {
            sp.write(&b)?;
            continue;
        }
        let size = b.get_array_memory_size();
        if reservation.size() + size <= budget.cap && reservation.try_grow(size).is_ok() {
            spine_batches.push(b);
        } else {
            let mut sp = Spill::try_new(spine_schema.clone(), 1, spec.key_count, 0, BUCKETS)?;
            for held in spine_batches.drain(..) {
                sp.write(&held)?;
            }
            sp.write(&b)?;
            reservation.resize(0);
            spills.add(1);
            spine_spill = Some(sp);
        }
    }
    if let Some(sp) = spine_spill {
        let span = if lo <= hi {
            needed_span(&spec.features, spec.ttl, lo, hi)
        } else {
            (i64::MAX, i64::MIN)
        };
        return run_from_disk(spec, schema, sp, events, span, reservation, budget).await;
    }
    let spine = concat_batches(&spine_schema, &spine_batches)?;
    drop(spine_batches);
    let spine_bytes = reservation.size();
    let ev_schema = events.schema();
    let layout = layout_of(spec, &ev_schema)?;
    let mut pack = new_pack(spec, &layout, &spine)?;
    drop(spine);
    let mut spill: Option<Spill> = None;
    while let Some(b) = events.next().await {
        let b = b?;
        if let Some(sp) = spill.as_mut() {
            sp.write(&in_span(spec, pack.span(), &b)?)?;
            continue;
        }
        let need = b.get_array_memory_size() + b.num_rows() * SWEEP_BYTES_PER_EVENT;
        // The batch as it arrives must fit; once packed, it holds far less.
        if reservation.size() + need <= budget.cap && reservation.try_grow(need).is_ok() {
            push_batch(spec, &mut pack, &b)?;
            reservation.resize(held(spine_bytes, &pack));
        } else {
            let mut sp = Spill::try_new(ev_schema.clone(), 0, spec.key_count, 0, BUCKETS)?;
            sp.write(&in_span(spec, pack.span(), &b)?)?;
            spills.add(1);
            spill = Some(sp);
        }
    }
    crate::profile::stage(format_args!(
        "{}: {} events packed",
        spec.view,
        pack.events()
    ));
    let mut files = spill
        .map(|s| s.finish().map(|(files, _)| files))
        .transpose()?;
    let mut out = Vec::new();
    for b in 0..BUCKETS {
        if let Some(files) = files.as_mut() {
            push_spilled(
                spec,
                &mut pack,
                &mut files[b],
                spine_bytes,
                reservation,
                budget,
            )
            .await?;
        }
        out.extend(sweep_bucket(spec, schema, &layout, &mut pack, b)?);
        reservation.resize(held(spine_bytes, &pack));
    }
    crate::profile::stage(format_args!("{}: buckets swept", spec.view));
    Ok(out)
}

/// [`run`] for a spine that does not fit the partition's share of the pool: the spine and
/// every event (cut to the time `span` the spine's windows admit) are split by bucket into
/// files, then each bucket is packed from its two files and swept on its own, so memory holds
/// one bucket's spine and events at a time ([`sweep_spilled`]).
async fn run_from_disk(
    spec: &ViewSpec,
    schema: &SchemaRef,
    spine: Spill,
    mut events: SendableRecordBatchStream,
    span: (i64, i64),
    reservation: &MemoryReservation,
    budget: Budget,
) -> DFResult<Vec<RecordBatch>> {
    let ev_schema = events.schema();
    let mut ev_spill = Spill::try_new(ev_schema.clone(), 0, spec.key_count, 0, BUCKETS)?;
    while let Some(b) = events.next().await {
        ev_spill.write(&in_span(spec, span, &b?)?)?;
    }
    let layout = layout_of(spec, &ev_schema)?;
    let spilled = Spilled {
        spines: spine.finish()?.0,
        events: ev_spill.finish()?,
    };
    let out = sweep_spilled(spec, schema, &layout, spilled, 0, budget, reservation).await?;
    crate::profile::stage(format_args!("{}: buckets swept from disk", spec.view));
    Ok(out)
}

/// A spine and its events split into bucket files by the same level of the key hash, with
/// each bucket's event count.
struct Spilled {
    spines: Vec<std::fs::File>,
    events: (Vec<std::fs::File>, Vec<usize>),
}

/// How many times a spilled bucket too large for the pool is split again: 32⁴ buckets per
/// partition at most, beyond which one key holds too many rows for any split.
const MAX_SPLITS: u32 = 3;

/// Pack and sweep spilled buckets one at a time. A bucket whose spine, events and sweep would
/// pass the partition's share of the pool (`2 × cap`: a spilled bucket may use the half the
/// pack did not) is split again by the next bits of the key hash, as many ways as it takes to
/// fit (a power of two up to [`BUCKETS`]), and swept sub-bucket by sub-bucket, so a pool far
/// smaller than a bucket still suffices.
fn sweep_spilled<'a>(
    spec: &'a ViewSpec,
    schema: &'a SchemaRef,
    layout: &'a Lanes,
    mut spilled: Spilled,
    level: u32,
    budget: Budget,
    reservation: &'a MemoryReservation,
) -> futures::future::BoxFuture<'a, DFResult<Vec<RecordBatch>>> {
    Box::pin(async move {
        let mut out = Vec::new();
        for b in 0..spilled.spines.len() {
            let parts = read_spilled(&mut spilled.spines[b])?.collect::<Result<Vec<_>, _>>()?;
            let Some(spine_schema) = parts.first().map(|p| p.schema()) else {
                continue;
            };
            let file = &mut spilled.events.0[b];
            let need = parts
                .iter()
                .map(|p| p.get_array_memory_size())
                .sum::<usize>()
                + file.metadata().map_err(io_error)?.len() as usize
                + spilled.events.1[b] * SWEEP_BYTES_PER_EVENT;
            let share = budget.cap.saturating_mul(2).max(1);
            if need > share && level < MAX_SPLITS {
                let ways = need.div_ceil(share).next_power_of_two().min(BUCKETS);
                let mut spines = Spill::try_new(spine_schema, 1, spec.key_count, level + 1, ways)?;
                for p in parts {
                    spines.write(&p)?;
                }
                let reader = read_spilled(file)?;
                let mut events =
                    Spill::try_new(reader.schema(), 0, spec.key_count, level + 1, ways)?;
                for batch in reader {
                    events.write(&batch?)?;
                }
                let split = Spilled {
                    spines: spines.finish()?.0,
                    events: events.finish()?,
                };
                out.extend(
                    sweep_spilled(spec, schema, layout, split, level + 1, budget, reservation)
                        .await?,
                );
                continue;
            }
            let spine = concat_batches(&spine_schema, &parts)?;
            drop(parts);
            let spine_bytes = spine.get_array_memory_size();
            grow_waiting(reservation, spine_bytes, budget).await?;
            let mut pack = new_pack(spec, layout, &spine)?;
            drop(spine);
            push_spilled(spec, &mut pack, file, spine_bytes, reservation, budget).await?;
            // The pack deals this bucket's keys to its own buckets again, and rows without a
            // key or time to its bucket 0: sweep whichever hold rows.
            for inner in 0..BUCKETS {
                out.extend(sweep_bucket(spec, schema, layout, &mut pack, inner)?);
            }
            reservation.resize(0);
        }
        Ok(out)
    })
}

fn io_error(e: std::io::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The lanes of the view's features over the events input's value columns.
fn layout_of(spec: &ViewSpec, ev_schema: &SchemaRef) -> DFResult<Lanes> {
    let first_value = spec.key_count + 1 + spec.created_column.is_some() as usize;
    let types: Vec<DataType> = (0..spec.value_count)
        .map(|j| ev_schema.field(first_value + j).data_type().clone())
        .collect();
    Ok(Lanes::new(&spec.features, &types, spec.filter_created)?)
}

/// A pack of `spine` (row id, keys, time) for the view's windows.
fn new_pack<'l>(spec: &ViewSpec, layout: &'l Lanes, spine: &RecordBatch) -> DFResult<Pack<'l>> {
    Ok(Pack::new(
        layout,
        spine,
        spec.key_count,
        spec.created_column.is_some(),
        |lo, hi| needed_span(&spec.features, spec.ttl, lo, hi),
        |min_t| layout.old_events(&spec.features, spec.ttl, min_t),
    )?)
}

/// Pack a bucket's spilled events, growing the reservation as they come (waiting for memory
/// other partitions free).
async fn push_spilled(
    spec: &ViewSpec,
    pack: &mut Pack<'_>,
    file: &mut std::fs::File,
    spine_bytes: usize,
    reservation: &MemoryReservation,
    budget: Budget,
) -> DFResult<()> {
    for batch in read_spilled(file)? {
        let batch = batch?;
        grow_waiting(reservation, batch.get_array_memory_size(), budget).await?;
        push_batch(spec, pack, &batch)?;
        let now = held(spine_bytes, pack);
        grow_waiting(reservation, now.saturating_sub(reservation.size()), budget).await?;
        reservation.resize(now);
    }
    Ok(())
}

/// Sweep bucket `b` of a pack: its spine rows' features as one output batch (row id first),
/// or nothing when the bucket holds no spine row.
fn sweep_bucket(
    spec: &ViewSpec,
    schema: &SchemaRef,
    layout: &Lanes,
    pack: &mut Pack<'_>,
    b: usize,
) -> DFResult<Option<RecordBatch>> {
    let (sp, ev) = pack.take_bucket(b, spec.filter_count)?;
    if sp.rid.is_empty() {
        return Ok(None);
    }
    let (rid, cols) = sweep(&spec.features, layout, spec.ttl, &sp, ev)?;
    let mut all = vec![rid];
    all.extend(cols);
    Ok(Some(RecordBatch::try_new(schema.clone(), all)?))
}

/// Grow a reservation, waiting while other consumers hold the pool: the inputs'
/// repartitioning frees its buffers as the other partitions drain them. A request the whole
/// pool could not hold fails at once, and any other after [`MEMORY_WAIT`], with an error
/// naming the least limit that would do (before, a pool too small for one bucket waited
/// [`MEMORY_WAIT`] per bucket, for ever in effect).
async fn grow_waiting(
    reservation: &MemoryReservation,
    bytes: usize,
    budget: Budget,
) -> DFResult<()> {
    let start = std::time::Instant::now();
    let want = reservation.size().saturating_add(bytes);
    loop {
        match reservation.try_grow(bytes) {
            Ok(()) => return Ok(()),
            Err(_) if want > budget.pool => return Err(budget.too_small(want, false)),
            Err(_) if start.elapsed() > MEMORY_WAIT => return Err(budget.too_small(want, true)),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
        }
    }
}

/// A partition's view of a bounded memory pool.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// What a partition packs in memory before it spills: half its share of the pool (the
    /// other half is for the inputs' repartitioning and for sweeping spilled buckets).
    cap: usize,
    /// The whole pool.
    pool: usize,
    partitions: usize,
}

impl Budget {
    fn of(limit: MemoryLimit, partitions: usize) -> Self {
        match limit {
            MemoryLimit::Finite(n) => Budget {
                cap: n / (2 * partitions),
                pool: n,
                partitions,
            },
            _ => Budget {
                cap: usize::MAX,
                pool: usize::MAX,
                partitions,
            },
        }
    }

    /// The error for a partition that needs `want` bytes at once; `waited` when the pool
    /// could hold them but the other consumers did not free enough in time.
    fn too_small(&self, want: usize, waited: bool) -> DataFusionError {
        // Every partition may need as much at once, and the repartitioning of the inputs
        // holds batches beside them: a quarter more.
        let mut least = (want as f64 * self.partitions as f64 * 1.25)
            .max((crate::engine::MIN_MEMORY_PER_PARTITION * self.partitions) as f64);
        if waited {
            // The pool was full of what the others held: this much more would have let
            // the request through while they hold it.
            least = least.max((self.pool as f64 + want as f64) * 1.25);
        }
        DataFusionError::from(Error::MemoryLimit(format!(
            "the join needs {} at once in one partition (one bucket's spine rows, events and sweep), more than the memory pool ({}) can give it; use --memory-limit {} or more, or leave it unbounded",
            crate::gate::bytes(want as f64),
            crate::gate::bytes(self.pool as f64),
            crate::gate::bytes(least),
        )))
    }
}

/// How long a spilled bucket waits for memory before the join fails.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A time column of the events input in microseconds, or an error naming the source.
fn source_time(spec: &ViewSpec, a: &ArrayRef, col: &str) -> DFResult<Int64Array> {
    quiver_core::time::to_micros(a.as_ref(), col, 0).map_err(|e| {
        let msg = match e {
            quiver_core::Error::BadTime { column, value, .. } => format!(
                "source `{}`: column `{column}`: cannot read {value:?} as a time (expected RFC 3339 / ISO 8601)",
                spec.source
            ),
            other => format!("source `{}`: {other}", spec.source),
        };
        DataFusionError::from(Error::Source(msg))
    })
}

/// The rows of an events batch whose time lies in `span` (the pack's). The scan's time filter
/// does not remove the others (`source::TimePruned`); the pack drops them, but a batch spilled
/// to disk would carry them there and back.
fn in_span(spec: &ViewSpec, span: (i64, i64), batch: &RecordBatch) -> DFResult<RecordBatch> {
    let t = source_time(spec, batch.column(spec.key_count), &spec.time_column)?;
    let keep: BooleanArray = t
        .iter()
        .map(|v| Some(v.is_some_and(|v| (span.0..=span.1).contains(&v))))
        .collect();
    if keep.true_count() == batch.num_rows() {
        return Ok(batch.clone());
    }
    Ok(filter_record_batch(batch, &keep)?)
}

/// Pack one batch of the events input (keys, time, created, values, filters, seq).
fn push_batch(spec: &ViewSpec, pack: &mut Pack, batch: &RecordBatch) -> DFResult<()> {
    let k = spec.key_count;
    let ec = batch.columns();
    let mut i = k;
    let t = source_time(spec, &ec[i], &spec.time_column)?;
    i += 1;
    let created = match &spec.created_column {
        Some(c) => {
            i += 1;
            Some(source_time(spec, &ec[i - 1], c)?)
        }
        None => None,
    };
    let values = &ec[i..i + spec.value_count];
    i += spec.value_count;
    let filters = ec[i..i + spec.filter_count]
        .iter()
        .map(|a| downcast::<BooleanArray>(a).cloned())
        .collect::<DFResult<Vec<_>>>()?;
    i += spec.filter_count;
    let seq = downcast::<UInt64Array>(&ec[i])?;
    pack.push(&ec[..k], &t, created.as_ref(), seq, values, &filters)?;
    Ok(())
}

/// Rows of one partition (events, or a spine too large to hold) spilled to disk in Arrow IPC,
/// one anonymous temp file per bucket of [`crate::pack`]; the key columns are
/// `key_from..key_from + key_count`.
struct Spill {
    key_from: usize,
    key_count: usize,
    /// Which bits of the key hash choose the file ([`buckets_at`]).
    level: u32,
    writers: Vec<StreamWriter<std::io::BufWriter<std::fs::File>>>,
    rows: Vec<usize>,
    /// Per bucket, rows not yet written: a batch split 32 ways (and a split bucket's again)
    /// would otherwise go to disk as many tiny IPC messages, each costing its own framing,
    /// write and decode.
    pending: Vec<(Vec<RecordBatch>, usize)>,
}

/// Rows a bucket's file is written in at least (but for its last batch).
const SPILL_ROWS: usize = 4096;

impl Spill {
    fn try_new(
        schema: SchemaRef,
        key_from: usize,
        key_count: usize,
        level: u32,
        ways: usize,
    ) -> DFResult<Self> {
        let writers = (0..ways)
            .map(|_| {
                let f = tempfile::tempfile_in(crate::spill_dir::dir()?).map_err(io_error)?;
                Ok(StreamWriter::try_new(std::io::BufWriter::new(f), &schema)?)
            })
            .collect::<DFResult<Vec<_>>>()?;
        Ok(Self {
            key_from,
            key_count,
            level,
            writers,
            rows: vec![0; ways],
            pending: vec![(Vec::new(), 0); ways],
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> DFResult<()> {
        let keys = &batch.columns()[self.key_from..self.key_from + self.key_count];
        let mut rows = vec![Vec::new(); self.writers.len()];
        for (i, b) in buckets_at(keys, batch.num_rows(), self.level, self.writers.len())?
            .into_iter()
            .enumerate()
        {
            rows[b as usize].push(i as u32);
        }
        for (k, idx) in rows.into_iter().enumerate() {
            if !idx.is_empty() {
                self.rows[k] += idx.len();
                let (held, n) = &mut self.pending[k];
                *n += idx.len();
                held.push(take_record_batch(batch, &UInt32Array::from(idx))?);
                if *n >= SPILL_ROWS {
                    self.flush(k)?;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self, k: usize) -> DFResult<()> {
        let (held, n) = std::mem::take(&mut self.pending[k]);
        if n > 0 {
            self.writers[k].write(&concat_batches(&held[0].schema(), &held)?)?;
        }
        Ok(())
    }

    /// Close the files, rewound for reading, with the rows each holds.
    fn finish(mut self) -> DFResult<(Vec<std::fs::File>, Vec<usize>)> {
        for k in 0..self.writers.len() {
            self.flush(k)?;
        }
        let files = self
            .writers
            .into_iter()
            .map(|mut w| {
                w.finish()?;
                let mut f = w
                    .into_inner()?
                    .into_inner()
                    .map_err(|e| io_error(e.into_error()))?;
                f.seek(std::io::SeekFrom::Start(0)).map_err(io_error)?;
                Ok(f)
            })
            .collect::<DFResult<_>>()?;
        Ok((files, self.rows))
    }
}

/// A bucket's spilled batches, in the order they were written, read one at a time.
fn read_spilled(
    f: &mut std::fs::File,
) -> DFResult<StreamReader<std::io::BufReader<&mut std::fs::File>>> {
    Ok(StreamReader::try_new(std::io::BufReader::new(f), None)?)
}

fn downcast<T: Array + 'static>(a: &ArrayRef) -> DFResult<&T> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "PitJoinExec: unexpected input type {}",
            a.data_type()
        ))
    })
}

/// Appends `__seq`: the input partition in the high bits, the row within it in the low bits.
/// DataFusion gives file scans contiguous, ordered slices of the sorted file list, so this
/// number orders events as the source does (file, then row) even after hash repartitioning.
/// An input that already carries `__seq` (in-memory sources number their rows themselves)
/// passes through unchanged.
#[derive(Debug)]
pub struct SeqExec {
    input: Arc<dyn ExecutionPlan>,
    cache: Arc<PlanProperties>,
}

impl SeqExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let mut fields: Vec<Field> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if !fields.iter().any(|f| f.name() == SEQ) {
            fields.push(Field::new(SEQ, DataType::UInt64, false));
        }
        let schema = Arc::new(Schema::new(fields));
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { input, cache }
    }
}

impl DisplayAs for SeqExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SeqExec")
    }
}

impl ExecutionPlan for SeqExec {
    fn name(&self) -> &'static str {
        "SeqExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // Repartitioning below would interleave rows and lose the source order.
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("SeqExec takes one child".into()));
        }
        Ok(Arc::new(SeqExec::new(children.swap_remove(0))))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        if self.input.schema().field_with_name(SEQ).is_ok() {
            return Ok(input);
        }
        let schema = self.schema();
        let out = schema.clone();
        let mut next = (partition as u64) << 40;
        let stream = input.map(move |b| {
            let b = b?;
            let n = b.num_rows() as u64;
            let seq: ArrayRef = Arc::new(UInt64Array::from_iter_values(next..next + n));
            next += n;
            let mut cols = b.columns().to_vec();
            cols.push(seq);
            Ok(RecordBatch::try_new(out.clone(), cols)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
