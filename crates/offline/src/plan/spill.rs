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

/// Pack and sweep spilled buckets one at a time. A bucket whose spine, events and sweep would
/// pass the partition's share of the pool (`2 × cap`: a spilled bucket may use the half the
/// pack did not) is split again by the next bits of the key hash, as many ways as it takes to
/// fit (a power of two up to [`BUCKETS`]), and swept sub-bucket by sub-bucket, so a pool far
/// smaller than a bucket still suffices.
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
            let share = budget.share.max(1);
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
            grow(reservation, spine_bytes, budget).await?;
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

/// Grow a partition's reservation, waiting while other partitions hold the pool: they give
/// memory back as they finish their buckets. A request the whole pool could not hold fails
/// at once, and so does a wait that could not end — every running partition of the join's
/// pool waiting ([`Waits`]): two partitions each holding part of what they needed once
/// waited for each other for ever. The error names a limit that would give the request.
/// [`MEMORY_WAIT`] bounds a wait all the same.
pub(super) async fn grow(
    reservation: &MemoryReservation,
    bytes: usize,
    budget: &Budget,
) -> DFResult<()> {
    let want = reservation.size().saturating_add(bytes);
    if reservation.try_grow(bytes).is_ok() {
        return Ok(());
    }
    if want > budget.pool {
        return Err(budget.too_small(want, false));
    }
    let _waiting = budget.waits.as_ref().map(|w| w.waiting());
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        if reservation.try_grow(bytes).is_ok() {
            return Ok(());
        }
        let stuck = budget.waits.as_ref().is_some_and(|w| w.all_waiting());
        if stuck || start.elapsed() > MEMORY_WAIT {
            // A partition frees its memory before it stops counting as running: one that
            // just ended has left room.
            if reservation.try_grow(bytes).is_ok() {
                return Ok(());
            }
            return Err(budget.too_small(want, true));
        }
    }
}

/// How many partitions of a join's pool run and how many of them wait for memory: when all
/// that run wait, none will give memory back.
#[derive(Debug, Default)]
pub struct Waits {
    running: std::sync::atomic::AtomicUsize,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Counts one partition in a [`Waits`] counter while it lives.
pub(super) struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A running partition, counted while it lives (owned, for a stream).
pub(super) struct Running(Arc<Waits>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Waits {
    /// Count a partition as running until the guard drops.
    pub(super) fn running(self: &Arc<Self>) -> Running {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Running(Arc::clone(self))
    }

    /// Count a partition as waiting until the guard drops.
    fn waiting(&self) -> Counted<'_> {
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(&self.waiting)
    }

    fn all_waiting(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiting.load(SeqCst) >= self.running.load(SeqCst)
    }
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
    /// The pool's running and waiting partitions, when the join has its own pool.
    pub(super) waits: Option<Arc<Waits>>,
}

impl Budget {
    pub(super) fn of(limit: MemoryLimit, partitions: usize, waits: Option<Arc<Waits>>) -> Self {
        match limit {
            MemoryLimit::Finite(n) => Budget {
                cap: n / (2 * partitions),
                share: n / partitions,
                pool: n,
                partitions,
                waits,
            },
            _ => Budget {
                cap: usize::MAX,
                share: usize::MAX,
                pool: usize::MAX,
                partitions,
                waits,
            },
        }
    }

    /// The error for a partition that needs `want` bytes at once; `waited` when the pool
    /// could hold them but the other partitions held the rest.
    pub(super) fn too_small(&self, want: usize, waited: bool) -> DataFusionError {
        // Every partition may need as much at once; after a wait, the others held the pool.
        let mut least =
            (want.saturating_mul(self.partitions)).max(MIN_MEMORY_PER_PARTITION * self.partitions);
        if waited {
            least = least.max(self.pool.saturating_add(want));
        }
        DataFusionError::from(Error::MemoryLimit(format!(
            "the join needs {} at once in one partition (one bucket's spine rows, events and sweep), more than the memory pool ({}) can give it; use --memory-limit {} or more, or leave it unbounded",
            crate::gate::bytes(want as f64),
            crate::gate::bytes(self.pool as f64),
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
