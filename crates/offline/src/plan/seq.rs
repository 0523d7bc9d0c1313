//! `SeqExec`: numbers a scan's rows in source order (ties broken by arrival).

// The folder's modules share the imports of `plan` (mod.rs).
use super::*;

/// Appends `__seq`: the input's file group in the high bits, the row within it in the low
/// bits. DataFusion gives file scans contiguous, ordered slices of the sorted file list, so
/// this number orders events as the source does (file, then row) even after hash
/// repartitioning. An input that already carries `__seq` (in-memory sources number their rows
/// themselves) passes through unchanged.
///
/// The group number is the group's place in the scan as it was planned (`origins`), not the
/// partition index the operator is executed with: a Ballista scheduler restricts each task's
/// copy of the plan to that task's file groups and numbers them from 0 again, and tasks
/// numbering their events alike would make ties between files ambiguous.
#[derive(Debug)]
pub struct SeqExec {
    input: Arc<dyn ExecutionPlan>,
    /// The first file (path, byte offset) of each file group of the planned scan, in order.
    origins: Arc<Vec<(String, i64)>>,
    cache: Arc<PlanProperties>,
}

impl SeqExec {
    /// Number the rows of `input` (or pass them through when they carry `__seq`).
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let origins = Arc::new(group_heads(&input).unwrap_or_default());
        Self::with_origins(input, origins)
    }

    /// Number the rows of `input`, whose file groups are among `origins` (the groups of the
    /// scan as planned, from [`SeqExec::origins`] of the unrestricted plan).
    pub fn with_origins(input: Arc<dyn ExecutionPlan>, origins: Arc<Vec<(String, i64)>>) -> Self {
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
        Self {
            input,
            origins,
            cache,
        }
    }

    /// The first file (path, byte offset) of each file group of the scan as planned.
    pub fn origins(&self) -> &Arc<Vec<(String, i64)>> {
        &self.origins
    }

    /// The number of `partition`'s file group in the planned scan: its place in `origins`,
    /// or the partition itself when the input is not a file scan.
    fn group_number(&self, partition: usize) -> usize {
        group_heads(&self.input)
            .and_then(|heads| heads.get(partition).cloned())
            .and_then(|head| self.origins.iter().position(|o| *o == head))
            .unwrap_or(partition)
    }
}

/// The first file (path, byte offset) of each file group of the file scan under `plan`,
/// following operators that keep their input's partitions (projections, filters); `None`
/// when there is no such scan. An empty group has an empty path.
fn group_heads(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<(String, i64)>> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let mut node = plan;
    loop {
        if let Some(scan) = node.downcast_ref::<DataSourceExec>() {
            let config = scan.data_source().downcast_ref::<FileScanConfig>()?;
            let heads = config
                .file_groups
                .iter()
                .map(|g| match g.files().first() {
                    Some(f) => (
                        f.object_meta.location.to_string(),
                        f.range.as_ref().map_or(0, |r| r.start),
                    ),
                    None => (String::new(), 0),
                })
                .collect();
            return Some(heads);
        }
        let children = node.children();
        let [child] = children.as_slice() else {
            return None;
        };
        if child.output_partitioning().partition_count()
            != node.output_partitioning().partition_count()
        {
            return None;
        }
        node = child;
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
        let input = children.swap_remove(0);
        // A plan restricted to some of its file groups (a cluster task's copy) keeps the
        // planned numbering; a scan regrouped by the optimizer is numbered afresh. Either way
        // the numbers follow the source order, which is all a tie needs.
        let kept = group_heads(&input).is_some_and(|heads| {
            heads
                .iter()
                .all(|h| h.0.is_empty() || self.origins.contains(h))
        });
        if kept {
            return Ok(Arc::new(SeqExec::with_origins(
                input,
                Arc::clone(&self.origins),
            )));
        }
        Ok(Arc::new(SeqExec::new(input)))
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
        let group = self.group_number(partition);
        let schema = self.schema();
        let out = schema.clone();
        let mut next = (group as u64) << 40;
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
