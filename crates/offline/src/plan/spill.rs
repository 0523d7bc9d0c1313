//! Spilling: a partition whose events outgrow its share of the memory pool goes to disk by
//! bucket, and each bucket is packed and swept on its own, split further when it must be.

// The folder's modules share the imports of `plan` (mod.rs).
use super::*;

/// A spine and its events split into bucket files by the same level of the key hash, with
/// each bucket's event count.
pub(super) struct Spilled {
    pub(super) spines: Vec<std::fs::File>,
    pub(super) events: (Vec<std::fs::File>, Vec<usize>),
}

/// How many times a spilled bucket too large for the pool is split again: 32⁴ buckets per
/// partition at most, beyond which one key holds too many rows for any split.
pub(super) const MAX_SPLITS: u32 = 3;

/// Pack and sweep spilled buckets one at a time. A bucket whose spine, events and sweep might
/// pass the partition's share of the pool (estimated from its files, within a factor of two)
/// is split again by the next bits of the key hash, as many ways as it takes to fit (a power
/// of two up to [`BUCKETS`]), and swept sub-bucket by sub-bucket, so a pool far smaller than a
/// bucket still suffices. Split as far as it goes, a bucket may still hold too many spine
/// rows (a few hot keys, or every row without a key: they all hash alike); a spine row's
/// features depend on the events alone, so its spine is swept in slices, each against the
/// bucket's events read again.
pub(super) fn sweep_spilled<'a>(
    spec: &'a ViewSpec,
    schema: &'a SchemaRef,
    layout: &'a Lanes,
    mut spilled: Spilled,
    level: u32,
    budget: &'a Budget,
    reservation: &'a MemoryReservation,
) -> futures::future::BoxFuture<'a, DFResult<Vec<RecordBatch>>> {
    Box::pin(async move {
        let mut out = Vec::new();
        // The files' sizes estimate the pack and its sweep only roughly: aim at half.
        let share = (budget.share / 2).max(1);
        for b in 0..spilled.spines.len() {
            let spine_file = &mut spilled.spines[b];
            let spine_len = spine_file.metadata().map_err(io_error)?.len() as usize;
            let spine_reader = read_spilled(spine_file)?;
            let spine_schema = spine_reader.schema();
            let file = &mut spilled.events.0[b];
            let events_len = file.metadata().map_err(io_error)?.len() as usize
                + spilled.events.1[b] * SWEEP_BYTES_PER_EVENT;
            let need = spine_len + events_len;
            if need > share && level < MAX_SPLITS {
                let ways = need.div_ceil(share).next_power_of_two().min(BUCKETS);
                let mut spines = Spill::try_new(spine_schema, 1, spec.key_count, level + 1, ways)?;
                for p in spine_reader {
                    spines.write(&p?)?;
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
            // Spine rows per slice: what is left of the share beside the events, a sixteenth
            // of it at least.
            let slice_bytes = share.saturating_sub(events_len).max(share / 16).max(1);
            let rows = spilled.events.1[b];
            let (mut slice, mut sliced): (Vec<RecordBatch>, usize) = (Vec::new(), 0);
            let mut parts = spine_reader.peekable();
            while let Some(p) = parts.next() {
                let p = p?;
                sliced += batch_bytes(&p);
                slice.push(p);
                if sliced < slice_bytes && parts.peek().is_some() {
                    continue;
                }
                sliced = 0;
                let spine = concat_batches(&spine_schema, &std::mem::take(&mut slice))?;
                if spine.num_rows() == 0 {
                    continue;
                }
                let spine_bytes = batch_bytes(&spine);
                grow(reservation, spine_bytes, budget, 0).await?;
                let mut pack = new_pack(spec, layout, &spine)?;
                drop(spine);
                file.seek(std::io::SeekFrom::Start(0)).map_err(io_error)?;
                push_spilled(
                    spec,
                    &mut pack,
                    (file, rows),
                    spine_bytes,
                    reservation,
                    budget,
                )
                .await?;
                // The pack deals this bucket's keys to its own buckets again, and rows
                // without a key or time to its bucket 0: sweep whichever hold rows.
                for inner in 0..BUCKETS {
                    out.extend(sweep_bucket(spec, schema, layout, &mut pack, inner)?);
                }
                reservation.resize(0);
            }
        }
        Ok(out)
    })
}

/// The bytes a batch's rows take. A batch read from an IPC file shares one buffer among its
/// columns, which [`RecordBatch::get_array_memory_size`] counts once per column.
pub(super) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// Grow a partition's reservation within its share of the pool. Every partition may hold
/// up to its share (the pool over the partitions) and never more through this call, so a
/// partition that waits for memory holds no more than its share, and the others' holdings
/// plus its request fit the pool: when they give memory back it gets it, and waits always end
/// (lending one partition more than its share let two partitions each hold part of what they
/// needed and wait for each other). A request past the share fails at once; its error names a
/// limit that gives every partition as much. [`MEMORY_WAIT`] bounds a wait all the same.
///
/// `whole` forecasts what the partition will hold once the step that asks finishes (the
/// rest of a bucket's events), so that the error names a limit that gets past it.
pub(super) async fn grow(
    reservation: &MemoryReservation,
    bytes: usize,
    budget: &Budget,
    whole: usize,
) -> DFResult<()> {
    let want = reservation.size().saturating_add(bytes);
    if want > budget.share {
        return Err(budget.too_small(want, whole));
    }
    let start = std::time::Instant::now();
    while reservation.try_grow(bytes).is_err() {
        if start.elapsed() > MEMORY_WAIT {
            return Err(budget.too_small(want, whole));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(())
}

/// How long a partition waits for memory before the join fails.
pub(super) const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A partition's view of a bounded memory pool.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    /// What a partition packs in memory before it spills: half its share (the other half is
    /// for sweeping spilled buckets).
    pub(super) cap: usize,
    /// The most a partition holds at once: the pool over the partitions.
    pub(super) share: usize,
    /// The whole pool.
    pub(super) pool: usize,
    pub(super) partitions: usize,
}

impl Budget {
    pub(super) fn of(limit: MemoryLimit, partitions: usize) -> Self {
        match limit {
            MemoryLimit::Finite(n) => Budget {
                cap: n / (2 * partitions),
                share: n / partitions,
                pool: n,
                partitions,
            },
            _ => Budget {
                cap: usize::MAX,
                share: usize::MAX,
                pool: usize::MAX,
                partitions,
            },
        }
    }

    /// The error for a partition that needs `want` bytes at once, more than its share, and
    /// is forecast to need `whole` by the end of its step.
    pub(super) fn too_small(&self, want: usize, whole: usize) -> DataFusionError {
        // Every partition may need as much at once.
        let least = (want.max(whole).saturating_mul(self.partitions))
            .max(MIN_MEMORY_PER_PARTITION * self.partitions);
        DataFusionError::from(Error::MemoryLimit(format!(
            "the join needs {} at once in one partition (one bucket's spine rows, events and sweep), more than its share of the memory pool ({} over {} partitions) gives it; use --memory-limit {} or more, or leave it unbounded",
            crate::gate::bytes(want as f64),
            crate::gate::bytes(self.pool as f64),
            self.partitions,
            crate::gate::bytes(least as f64),
        )))
    }
}

/// Rows of one partition (events, or a spine too large to hold) spilled to disk in Arrow IPC,
/// one anonymous temp file per bucket of [`crate::pack`]; the key columns are
/// `key_from..key_from + key_count`.
pub(super) struct Spill {
    pub(super) key_from: usize,
    pub(super) key_count: usize,
    /// Which bits of the key hash choose the file ([`buckets_at`]).
    pub(super) level: u32,
    pub(super) writers: Vec<StreamWriter<std::io::BufWriter<std::fs::File>>>,
    pub(super) rows: Vec<usize>,
    /// Per bucket, rows not yet written: a batch split 32 ways (and a split bucket's again)
    /// would otherwise go to disk as many tiny IPC messages, each costing its own framing,
    /// write and decode.
    pub(super) pending: Vec<(Vec<RecordBatch>, usize)>,
}

/// Rows a bucket's file is written in at least (but for its last batch).
pub(super) const SPILL_ROWS: usize = 4096;

impl Spill {
    pub(super) fn try_new(
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

    pub(super) fn write(&mut self, batch: &RecordBatch) -> DFResult<()> {
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

    pub(super) fn flush(&mut self, k: usize) -> DFResult<()> {
        let (held, n) = std::mem::take(&mut self.pending[k]);
        if n > 0 {
            self.writers[k].write(&concat_batches(&held[0].schema(), &held)?)?;
        }
        Ok(())
    }

    /// Close the files, rewound for reading, with the rows each holds.
    pub(super) fn finish(mut self) -> DFResult<(Vec<std::fs::File>, Vec<usize>)> {
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
pub(super) fn read_spilled(
    f: &mut std::fs::File,
) -> DFResult<StreamReader<std::io::BufReader<&mut std::fs::File>>> {
    Ok(StreamReader::try_new(std::io::BufReader::new(f), None)?)
}
