//! `PitJoinExec`: the physical operator of a view's point-in-time join, run per partition.

// The folder's modules share the imports of `plan` (mod.rs).
use super::*;

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
    /// The operator over the physical `spine` and `events` inputs, with the spine's
    /// partition count.
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

    /// The view's part of the request that this operator computes.
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
        // The join's own pool when the session has one (see [`JoinPool`]), else the session's.
        let pool = match context.session_config().get_extension::<JoinPool>() {
            Some(p) => Arc::clone(&p.0),
            None => Arc::clone(context.memory_pool()),
        };
        let pool = &pool;
        // Each partition packs events in memory up to half its share of a bounded pool; the
        // rest is for sweeping spilled buckets.
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
                &budget,
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
pub(super) const SWEEP_BYTES_PER_EVENT: usize = 48;

/// What the operator holds: the spine, the packed events, and the sweep of the largest
/// bucket (its packed lanes again, sorted, plus order and prefix sums).
pub(super) fn held(spine: usize, pack: &Pack) -> usize {
    let (all, largest) = pack.bytes();
    spine + all + largest + largest / 2
}

/// Collect a partition and sweep it. Without a memory limit, events are packed into key-hash
/// buckets as they arrive ([`crate::pack`]) and swept a bucket at a time. With one, a
/// partition holds its spine and the events as they arrive up to its share of the pool, then
/// packs and sweeps them; past its share it goes to disk ([`run_from_disk`]): the spine and
/// every event are split by the same bucket hash into one file per bucket and each bucket is
/// swept on its own, split further when it must be. Memory is then bounded by one bucket, and
/// a partition never needs more than its share, so partitions never wait for each other's
/// memory. The bound also keeps the inputs' own repartitioning from running out of memory:
/// DataFusion 55's `RepartitionExec` can deadlock once it spills (apache/datafusion#24883).
pub(super) async fn run(
    spec: &ViewSpec,
    schema: &SchemaRef,
    mut spine: SendableRecordBatchStream,
    mut events: SendableRecordBatchStream,
    reservation: &MemoryReservation,
    budget: &Budget,
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
    // The times the spine's windows admit.
    let span = if lo <= hi {
        needed_span(&spec.features, spec.ttl, lo, hi)
    } else {
        (i64::MAX, i64::MIN)
    };
    let (spine, ev_spill) = match spine_spill {
        Some(sp) => {
            let ev_spill = Spill::try_new(events.schema(), 0, spec.key_count, 0, BUCKETS)?;
            (sp, ev_spill)
        }
        None => {
            let spine = concat_batches(&spine_schema, &spine_batches)?;
            drop(spine_batches);
            match run_in_memory(spec, schema, spine, &mut events, span, reservation, budget).await?
            {
                Ok(out) => return Ok(out),
                Err(to_disk) => {
                    spills.add(1);
                    to_disk
                }
            }
        }
    };
    run_from_disk(
        spec,
        schema,
        spine,
        ev_spill,
        events,
        span,
        reservation,
        budget,
    )
    .await
}

/// [`run`] for a spine that fits its share: the events are packed and swept in memory, or,
/// when they pass the share, the spine and the events read so far are split into bucket files
/// (the `Err`) for [`run_from_disk`] to go on with.
async fn run_in_memory(
    spec: &ViewSpec,
    schema: &SchemaRef,
    spine: RecordBatch,
    events: &mut SendableRecordBatchStream,
    span: (i64, i64),
    reservation: &MemoryReservation,
    budget: &Budget,
) -> DFResult<Result<Vec<RecordBatch>, (Spill, Spill)>> {
    let ev_schema = events.schema();
    let spine_bytes = reservation.size();
    let layout = layout_of(spec, &ev_schema)?;
    let mut pack = new_pack(spec, &layout, &spine)?;
    if budget.share == usize::MAX {
        drop(spine);
        while let Some(b) = events.next().await {
            push_batch(spec, &mut pack, &b?)?;
        }
    } else {
        // Held as they arrive, so that the partition can still go to disk whole.
        let mut held = Vec::new();
        while let Some(b) = events.next().await {
            let b = in_span(spec, span, &b?)?;
            // The batch and its sweep must fit; once packed, it holds far less.
            let need = b.get_array_memory_size() + b.num_rows() * SWEEP_BYTES_PER_EVENT;
            if reservation.size() + need <= budget.share && reservation.try_grow(need).is_ok() {
                held.push(b);
                continue;
            }
            let mut sp = Spill::try_new(spine.schema(), 1, spec.key_count, 0, BUCKETS)?;
            sp.write(&spine)?;
            let mut ev_spill = Spill::try_new(ev_schema, 0, spec.key_count, 0, BUCKETS)?;
            for h in held.iter().chain([&b]) {
                ev_spill.write(h)?;
            }
            reservation.resize(0);
            return Ok(Err((sp, ev_spill)));
        }
        drop(spine);
        for b in held {
            push_batch(spec, &mut pack, &b)?;
        }
    }
    crate::profile::stage(format_args!(
        "{}: {} events packed",
        spec.view,
        pack.events()
    ));
    reservation.resize(held(spine_bytes, &pack));
    let mut out = Vec::new();
    for b in 0..BUCKETS {
        out.extend(sweep_bucket(spec, schema, &layout, &mut pack, b)?);
        reservation.resize(held(spine_bytes, &pack));
    }
    crate::profile::stage(format_args!("{}: buckets swept", spec.view));
    Ok(Ok(out))
}

/// [`run`] for a partition past its share of the pool: the spine and every event (cut to the
/// time `span` the spine's windows admit) are split by bucket into files (`events` goes
/// where `ev_spill`'s first batches went), then each bucket is packed from its two files and
/// swept on its own, so memory holds one bucket's spine and events at a time
/// ([`sweep_spilled`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_from_disk(
    spec: &ViewSpec,
    schema: &SchemaRef,
    spine: Spill,
    mut ev_spill: Spill,
    mut events: SendableRecordBatchStream,
    span: (i64, i64),
    reservation: &MemoryReservation,
    budget: &Budget,
) -> DFResult<Vec<RecordBatch>> {
    let ev_schema = events.schema();
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

pub(super) fn io_error(e: std::io::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The lanes of the view's features over the events input's value columns.
pub(super) fn layout_of(spec: &ViewSpec, ev_schema: &SchemaRef) -> DFResult<Lanes> {
    let first_value = spec.key_count + 1 + spec.created_column.is_some() as usize;
    let types: Vec<DataType> = (0..spec.value_count)
        .map(|j| ev_schema.field(first_value + j).data_type().clone())
        .collect();
    Ok(Lanes::new(&spec.features, &types, spec.filter_created)?)
}

/// A pack of `spine` (row id, keys, time) for the view's windows.
pub(super) fn new_pack<'l>(
    spec: &ViewSpec,
    layout: &'l Lanes,
    spine: &RecordBatch,
) -> DFResult<Pack<'l>> {
    Ok(Pack::new(
        layout,
        spine,
        spec.key_count,
        spec.created_column.is_some(),
        |lo, hi| needed_span(&spec.features, spec.ttl, lo, hi),
        |min_t| layout.old_events(&spec.features, spec.ttl, min_t),
    )?)
}

/// Pack a bucket's spilled events (`rows` of them in `file`), growing the reservation as
/// they come (within the partition's share of the pool).
pub(super) async fn push_spilled(
    spec: &ViewSpec,
    pack: &mut Pack<'_>,
    (file, rows): (&mut std::fs::File, usize),
    spine_bytes: usize,
    reservation: &MemoryReservation,
    budget: &Budget,
) -> DFResult<()> {
    let mut read = 0;
    for batch in read_spilled(file)? {
        let batch = batch?;
        read += batch.num_rows();
        // Should the share run out, the pack is forecast to grow with the events still to
        // come as it did with those read.
        let whole = |held: usize| held.saturating_mul(rows.max(1)) / read.max(1);
        let bytes = batch_bytes(&batch);
        grow(
            reservation,
            bytes,
            budget,
            whole(reservation.size() + bytes),
        )
        .await?;
        push_batch(spec, pack, &batch)?;
        let now = held(spine_bytes, pack);
        grow(
            reservation,
            now.saturating_sub(reservation.size()),
            budget,
            whole(now),
        )
        .await?;
        reservation.resize(now);
    }
    Ok(())
}

/// Sweep bucket `b` of a pack: its spine rows' features as one output batch (row id first),
/// or nothing when the bucket holds no spine row.
pub(super) fn sweep_bucket(
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

/// A time column of the events input in microseconds, or an error naming the source.
pub(super) fn source_time(spec: &ViewSpec, a: &ArrayRef, col: &str) -> DFResult<Int64Array> {
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
pub(super) fn in_span(
    spec: &ViewSpec,
    span: (i64, i64),
    batch: &RecordBatch,
) -> DFResult<RecordBatch> {
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
pub(super) fn push_batch(spec: &ViewSpec, pack: &mut Pack, batch: &RecordBatch) -> DFResult<()> {
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

pub(super) fn downcast<T: Array + 'static>(a: &ArrayRef) -> DFResult<&T> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "PitJoinExec: unexpected input type {}",
            a.data_type()
        ))
    })
}
