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

/// The least memory pool a partition of a join runs in: its inputs' repartitioning holds a
/// batch per partition pair, and a spilled bucket split as far as it goes still needs its
/// spine rows and a batch of events at once.
pub const MIN_MEMORY_PER_PARTITION: usize = 128 << 10;

/// The memory pool the join's operators ([`PitJoinExec`]) reserve from, kept apart from the
/// session's pool (a session config extension). The session's pool stays unbounded so that
/// DataFusion's `RepartitionExec` never spills: in DataFusion 55 a repartition that spills
/// from two inputs at once can deadlock, every task parked and nothing failing
/// (apache/datafusion#24883, fixed after 55 by apache/datafusion#24891); `--memory-limit 1MB`
/// on a 2M-row spine hung that way. The repartition buffers a few batches per partition
/// pair; the join's packed events, spilled buckets and sweeps are what grows with the data.
#[derive(Debug)]
pub struct JoinPool(
    /// The pool, bounded by `--memory-limit`.
    pub Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
);

/// Spine column: the spine row's id (UInt64), which the join's output is keyed by.
pub const RID: &str = "__rid";
/// Time column of both inputs (spine: Int64 microseconds; events: as stored).
pub const TIME: &str = "__t";
/// Events column: the created time, when the source has one.
pub const CREATED: &str = "__c";
/// Events column [`SeqExec`] appends: the event's position in source order.
pub const SEQ: &str = "__seq";

/// Name of the `i`th entity key column of both inputs.
pub fn key_col(i: usize) -> String {
    format!("__k{i}")
}
/// Name of the `i`th value column of the events input.
pub fn value_col(i: usize) -> String {
    format!("__v{i}")
}
/// Name of the `i`th filter column (Boolean) of the events input.
pub fn filter_col(i: usize) -> String {
    format!("__f{i}")
}

/// Everything the operator needs to know about one feature view's part of a request
/// (serializable: a cluster's codec sends it to the executors).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub struct ViewSpec {
    /// The feature view's name.
    pub view: String,
    /// The name of the view's source.
    pub source: String,
    /// The source's time column, for messages.
    pub time_column: String,
    /// The source's created-time column, when it has one.
    pub created_column: Option<String>,
    /// Number of entity key columns (`__k0..`).
    pub key_count: usize,
    /// Number of value columns (`__v0..`).
    pub value_count: usize,
    /// Number of filter columns (`__f0..`).
    pub filter_count: usize,
    /// The view's ttl: how old an event a latest-value feature may still return.
    pub ttl: Option<Duration>,
    /// Whether a spine row sees only events created at or before its time.
    pub filter_created: bool,
    /// The features to compute, in output column order.
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
    /// The join of one view's `spine` and `events` plans, laid out as the module doc says.
    pub fn try_new(spine: LogicalPlan, events: LogicalPlan, spec: ViewSpec) -> DFResult<Self> {
        let schema = Arc::new(DFSchema::try_from(spec.output_schema().as_ref().clone())?);
        Ok(Self {
            spine,
            events,
            spec: Arc::new(spec),
            schema,
        })
    }

    /// The node wrapped as a logical plan (an extension node).
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

mod exec;
mod seq;
mod spill;

pub use exec::PitJoinExec;
use exec::*;
pub use seq::SeqExec;
use spill::*;
