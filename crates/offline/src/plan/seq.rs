//! `SeqExec`: numbers a scan's rows in source order (ties broken by arrival).

// The folder's modules share the imports of `plan` (mod.rs).
use super::*;

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
    /// Number the rows of `input` (or pass them through when they carry `__seq`).
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
