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
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
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
use futures::StreamExt;
use quiver_core::Duration;

use crate::Error;
use crate::sweep::{EventSide, FeatureSpec, SpineSide, sweep};

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

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let spine = self.spine.execute(partition, context.clone())?;
        let events = self.events.execute(partition, context.clone())?;
        let spec = self.spec.clone();
        let schema = self.schema();
        let reservation = MemoryConsumer::new(format!("PitJoinExec[{partition}]"))
            .register(context.memory_pool());
        let out_schema = schema.clone();
        let fut = async move {
            let spine = collect_reserved(spine, &reservation).await?;
            let events = collect_reserved(events, &reservation).await?;
            let batch = run_partition(&spec, &out_schema, spine, events)?;
            reservation.free();
            Ok(batch)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

/// Collect a partition's input, accounting it to the memory pool; `None` when it is empty.
async fn collect_reserved(
    mut stream: SendableRecordBatchStream,
    reservation: &MemoryReservation,
) -> DFResult<RecordBatch> {
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        let b = b?;
        reservation.try_grow(b.get_array_memory_size())?;
        batches.push(b);
    }
    Ok(concat_batches(&schema, &batches)?)
}

fn run_partition(
    spec: &ViewSpec,
    schema: &SchemaRef,
    spine: RecordBatch,
    events: RecordBatch,
) -> DFResult<RecordBatch> {
    let k = spec.key_count;
    let sc = spine.columns();
    let spine_side = SpineSide {
        rid: downcast::<UInt64Array>(&sc[0])?.clone(),
        keys: sc[1..1 + k].to_vec(),
        t: downcast::<Int64Array>(&sc[1 + k])?.clone(),
    };
    let ec = events.columns();
    let source_time = |a: &ArrayRef, col: &str| -> DFResult<Int64Array> {
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
    };
    let mut i = k;
    let t = source_time(&ec[i], &spec.time_column)?;
    i += 1;
    let created = match &spec.created_column {
        Some(c) => {
            i += 1;
            Some(source_time(&ec[i - 1], c)?)
        }
        None => None,
    };
    let values = ec[i..i + spec.value_count].to_vec();
    i += spec.value_count;
    let filters = ec[i..i + spec.filter_count]
        .iter()
        .map(|a| downcast::<BooleanArray>(a).cloned())
        .collect::<DFResult<Vec<_>>>()?;
    i += spec.filter_count;
    let seq = downcast::<UInt64Array>(&ec[i])?.clone();
    let ev = EventSide {
        keys: ec[..k].to_vec(),
        t,
        created,
        seq,
        values,
        filters,
    };
    drop(events);
    let (rid, cols) = sweep(
        &spec.features,
        spec.ttl,
        spec.filter_created,
        &spine_side,
        &ev,
    )?;
    let mut all = vec![rid];
    all.extend(cols);
    Ok(RecordBatch::try_new(schema.clone(), all)?)
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
        fields.push(Field::new(SEQ, DataType::UInt64, false));
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
