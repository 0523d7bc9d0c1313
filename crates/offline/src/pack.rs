//! A partition's events packed as they arrive (DESIGN §4).
//!
//! Each event whose key is in the spine and whose time is set is appended to one of
//! [`BUCKETS`] buckets, chosen by a hash of its key: a bucket-local key id, its time, its
//! source order and the lanes of the view's [`Lanes`] — about 30 bytes for a typical view,
//! against the ~40 of the Arrow batch it came in — and the batch is dropped. Events of keys
//! the spine does not ask for are never kept, and events older than every finite window of
//! the partition's spine rows only as the one event per key that each lifetime first / last /
//! latest-value feature needs ([`OldEvents`]). Buckets are then swept one at a time, so the
//! sort's second copy is one bucket, not the partition. The hash is the one the spill files
//! use, so a spilled bucket reads back into the same bucket.

use std::collections::HashMap;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array, UInt64Array,
    new_empty_array,
};
use datafusion::arrow::compute::{concat, max, min, take};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::create_hashes_with_hasher;

use crate::sweep::{EventSide, Keep, Lanes, NULL_ID, OldEvents, SpineSide, as_f64, as_i64};
use crate::{Error, Result};

/// Buckets per partition: the unit swept at once, and of spilling.
pub const BUCKETS: usize = 32;
/// Elements per chunk of a packed column.
const CHUNK: usize = 1 << 14;

/// The bucket of each row: a hash of the key columns with fixed seeds.
pub fn buckets_of(keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
    buckets_at(keys, rows, 0, BUCKETS)
}

/// [`buckets_of`] from the `level`-th group of the hash's bits, into `ways` (a power of two
/// up to [`BUCKETS`]): level 0 is a row's bucket in its partition, and each further level
/// splits a bucket spilled to disk again.
pub fn buckets_at(keys: &[ArrayRef], rows: usize, level: u32, ways: usize) -> Result<Vec<u32>> {
    let mut hashes = vec![0u64; rows];
    let seeds = ahash::RandomState::with_seeds(0x51ed, 0x9e37, 0x79b9, 0x7f4a);
    create_hashes_with_hasher(keys, &seeds, &mut hashes)?;
    let shift = level * BUCKETS.trailing_zeros();
    Ok(hashes
        .iter()
        .map(|h| ((h >> shift) % ways as u64) as u32)
        .collect())
}

/// A column grown in fixed chunks: no doubling slack and no copy on growth.
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy> Chunked<T> {
    /// The chunk the next `n` values go to, with room for all of them: a batch's values
    /// for one bucket are appended without a capacity check per value.
    fn room(&mut self, n: usize) -> &mut Vec<T> {
        if self
            .chunks
            .last()
            .is_none_or(|c| c.capacity() - c.len() < n)
        {
            self.chunks.push(Vec::with_capacity(n.max(CHUNK)));
        }
        self.len += n;
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    /// The values, then `more`.
    fn into_vec(self, more: &[T]) -> Vec<T> {
        let mut v = Vec::with_capacity(self.len + more.len());
        for c in self.chunks {
            v.extend_from_slice(&c);
        }
        v.extend_from_slice(more);
        v
    }
}

/// Each lane's values followed by the same lane of a bucket's kept old events.
fn with_kept<T: Copy>(lanes: Vec<Chunked<T>>, kept: &[Vec<T>]) -> Vec<Vec<T>> {
    lanes
        .into_iter()
        .zip(kept)
        .map(|(c, o)| c.into_vec(o))
        .collect()
}

/// A batch's kept rows grouped by bucket: bucket `b`'s rows are `rows[at[b]..at[b + 1]]`,
/// in batch order.
struct ByBucket {
    rows: Vec<u32>,
    at: [usize; BUCKETS + 1],
}

impl ByBucket {
    /// A counting sort of `(row, bucket)` pairs.
    fn new(kept: &[(u32, u32)]) -> ByBucket {
        let mut at = [0usize; BUCKETS + 1];
        for &(_, b) in kept {
            at[b as usize + 1] += 1;
        }
        for b in 0..BUCKETS {
            at[b + 1] += at[b];
        }
        let mut fill = at;
        let mut rows = vec![0u32; kept.len()];
        for &(i, b) in kept {
            rows[fill[b as usize]] = i;
            fill[b as usize] += 1;
        }
        ByBucket { rows, at }
    }

    fn of(&self, b: usize) -> &[u32] {
        &self.rows[self.at[b]..self.at[b + 1]]
    }

    /// Append `value(i)` of each of a bucket's rows `i` to that bucket's lane: one `extend`
    /// per bucket, without a capacity check or a length update per value.
    fn lane<'a, T: Copy + 'a>(
        &self,
        lanes: impl Iterator<Item = &'a mut Chunked<T>>,
        value: impl Fn(usize) -> T,
    ) {
        for (b, l) in lanes.enumerate() {
            let rows = self.of(b);
            if !rows.is_empty() {
                l.room(rows.len())
                    .extend(rows.iter().map(|&i| value(i as usize)));
            }
        }
    }
}

#[derive(Default)]
struct Bucket {
    ids: Chunked<u32>,
    t: Chunked<i64>,
    created: Chunked<i64>,
    seq: Chunked<u64>,
    floats: Vec<Chunked<f64>>,
    ints: Vec<Chunked<i64>>,
    masks: Vec<Option<Chunked<u8>>>,
    /// Per value column / filter: the bucket's rows of each batch, where the layout keeps
    /// the Arrow array.
    raw: Vec<Vec<ArrayRef>>,
    filters: Vec<Vec<ArrayRef>>,
    /// Memory the bucket holds.
    bytes: usize,
}

impl Bucket {
    /// An empty bucket with the lanes of `layout`.
    fn new(layout: &Lanes) -> Bucket {
        Bucket {
            floats: (0..layout.floats.len())
                .map(|_| Chunked::default())
                .collect(),
            ints: (0..layout.ints.len()).map(|_| Chunked::default()).collect(),
            masks: (0..layout.masks.len())
                .map(|j| layout.mask_lane(j).then(Chunked::default))
                .collect(),
            raw: vec![Vec::new(); layout.raw.len()],
            ..Bucket::default()
        }
    }
}

/// The old events ([`OldEvents`]) a bucket keeps: for each of its keys, one event per
/// [`Keep`], overwritten in place when a better one arrives.
#[derive(Default)]
struct Kept {
    /// Position of each (key id, keep) event in the lanes below (`NONE` until one is seen),
    /// beside its rank: most old events lose to it, and are turned away after one read.
    at: Vec<(u32, Rank)>,
    /// The lanes of [`Bucket`], a position per kept event.
    ids: Vec<u32>,
    t: Vec<i64>,
    created: Vec<i64>,
    seq: Vec<u64>,
    floats: Vec<Vec<f64>>,
    ints: Vec<Vec<i64>>,
    masks: Vec<Option<Vec<u8>>>,
}

const NONE: u32 = u32::MAX;

/// (time, created, seq): the sweep's order of events.
type Rank = (i64, i64, u64);

/// `lane[p] = x`, where `p` is either a position of the lane or the next one.
fn set<T>(lane: &mut Vec<T>, p: usize, x: T) {
    if p == lane.len() {
        lane.push(x);
    } else {
        lane[p] = x;
    }
}

impl Kept {
    /// Room for `slots` (key id, keep) events, with the lanes of `layout`.
    fn new(layout: &Lanes, slots: usize) -> Kept {
        Kept {
            at: vec![(NONE, (0, 0, 0)); slots],
            floats: vec![Vec::new(); layout.floats.len()],
            ints: vec![Vec::new(); layout.ints.len()],
            masks: (0..layout.masks.len())
                .map(|j| layout.mask_lane(j).then(Vec::new))
                .collect(),
            ..Kept::default()
        }
    }

    /// Offer the old event of key `id` with `rank` for slot `r` of `n` keeps: the position
    /// whose lanes it is to fill when it beats the event kept there (comes `later` or
    /// earlier in the sweep's order), or when none is kept yet — then the next position.
    fn offer(
        &mut self,
        (id, r, n): (usize, usize, usize),
        rank: Rank,
        later: bool,
    ) -> Option<usize> {
        let (at, cur) = self.at[id * n + r];
        if at != NONE && (if later { rank <= cur } else { rank >= cur }) {
            return None;
        }
        let p = if at == NONE {
            self.t.len()
        } else {
            at as usize
        };
        self.at[id * n + r] = (p as u32, rank);
        set(&mut self.ids, p, id as u32);
        set(&mut self.t, p, rank.0);
        set(&mut self.created, p, rank.1);
        set(&mut self.seq, p, rank.2);
        Some(p)
    }
}

/// A key's bucket and its id in the bucket, as `id << 32 | bucket`.
type Slot = u64;
const NO_SLOT: Slot = u64::MAX;

/// Spine keys to their slots: events find their bucket here instead of hashing again.
enum Keys {
    /// Integer keys in a narrow range (ids, mostly): a table indexed by key − min, so an
    /// event costs an array read instead of a hash lookup.
    Dense {
        min: i64,
        table: Vec<Slot>,
    },
    Int(HashMap<i64, Slot, ahash::RandomState>),
    Rows(RowConverter, HashMap<Vec<u8>, Slot, ahash::RandomState>),
}

impl Keys {
    /// The slot of each row's key (`NO_SLOT` for null keys); `new` gives unknown keys one.
    fn slots(
        &mut self,
        keys: &[ArrayRef],
        mut new: impl FnMut(usize) -> Option<Slot>,
    ) -> Result<Vec<Slot>> {
        let n = keys.first().map_or(0, |k| k.len());
        let null = |i: usize| keys.iter().any(|k| k.is_null(i));
        let int = || {
            keys[0]
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Internal("key type".into()))
        };
        Ok(match self {
            Keys::Dense { min, table } => {
                let k = int()?;
                let v = k.values();
                (0..n)
                    .map(|i| {
                        let off = v[i].wrapping_sub(*min) as u64;
                        if k.is_null(i) || off >= table.len() as u64 {
                            return NO_SLOT;
                        }
                        let s = &mut table[off as usize];
                        if *s == NO_SLOT {
                            *s = new(i).unwrap_or(NO_SLOT);
                        }
                        *s
                    })
                    .collect()
            }
            Keys::Int(map) => {
                let v = int()?.values();
                (0..n)
                    .map(|i| {
                        if null(i) {
                            return NO_SLOT;
                        }
                        match map.get(&v[i]) {
                            Some(&id) => id,
                            None => new(i)
                                .inspect(|&id| {
                                    map.insert(v[i], id);
                                })
                                .unwrap_or(NO_SLOT),
                        }
                    })
                    .collect()
            }
            Keys::Rows(conv, map) => {
                let rows = conv.convert_columns(keys)?;
                (0..n)
                    .map(|i| {
                        if null(i) {
                            return NO_SLOT;
                        }
                        let r = rows.row(i);
                        match map.get(r.as_ref()) {
                            Some(&id) => id,
                            None => new(i)
                                .inspect(|&id| {
                                    map.insert(r.as_ref().to_vec(), id);
                                })
                                .unwrap_or(NO_SLOT),
                        }
                    })
                    .collect()
            }
        })
    }
}

/// One partition's spine, split into buckets, and its events packed into the same buckets.
pub struct Pack<'l> {
    layout: &'l Lanes,
    keys: Keys,
    rid: UInt64Array,
    spine_t: Int64Array,
    spine_rows: Vec<Vec<u32>>,
    spine_ids: Vec<Vec<u32>>,
    nkeys: Vec<u32>,
    buckets: Vec<Bucket>,
    has_created: bool,
    events: usize,
    /// Packed bytes per event.
    per_event: usize,
    /// The first and last microsecond a window of this partition's spine rows admits: the
    /// events outside are dropped here, so the scan's time range only has to prune row groups
    /// and files, and no filter operator tests and copies every row.
    span: (i64, i64),
    /// Events older than every finite window, reduced to the few each key needs.
    old: Option<OldEvents>,
    kept: Vec<Kept>,
}

/// The positions of `rid` in ascending order of their values (distinct spine row ids): a
/// scatter through a table when they are dense, as a partition's share of a spine is, else a
/// sort.
fn spine_order(rid: &[u64]) -> Vec<u32> {
    let (Some(&lo), Some(&hi)) = (rid.iter().min(), rid.iter().max()) else {
        return Vec::new();
    };
    if ((hi - lo) as u128) < 4 * rid.len() as u128 + 1024 {
        let mut at = vec![u32::MAX; (hi - lo + 1) as usize];
        for (i, &r) in rid.iter().enumerate() {
            at[(r - lo) as usize] = i as u32;
        }
        at.retain(|&i| i != u32::MAX);
        if at.len() == rid.len() {
            return at;
        }
    }
    let mut order: Vec<u32> = (0..rid.len() as u32).collect();
    order.sort_unstable_by_key(|&i| rid[i as usize]);
    order
}

impl<'l> Pack<'l> {
    /// `spine` holds the row id, the key columns and the time in microseconds; `old` says
    /// which events older than the spine's earliest window a key still needs, given that
    /// earliest spine time.
    pub fn new(
        layout: &'l Lanes,
        spine: &RecordBatch,
        key_count: usize,
        has_created: bool,
        span: impl FnOnce(i64, i64) -> (i64, i64),
        old: impl FnOnce(i64) -> Option<OldEvents>,
    ) -> Result<Pack<'l>> {
        let sc = spine.columns();
        let keys = &sc[1..1 + key_count];
        let rid = sc[0]
            .as_primitive_opt()
            .cloned()
            .ok_or_else(|| Error::Internal("rid".into()))?;
        let spine_t: Int64Array = sc[1 + key_count]
            .as_primitive_opt()
            .cloned()
            .ok_or_else(|| Error::Internal("spine time".into()))?;
        let mut map = if let (1, Some(k)) = (key_count, keys[0].as_primitive_opt::<Int64Type>()) {
            let (lo, hi) = (min(k), max(k));
            match (lo, hi) {
                // at most 8 slots per spine row (and a floor for small spines)
                (Some(lo), Some(hi))
                    if (hi as i128 - lo as i128) < (8 * k.len() as i128).max(1 << 16) =>
                {
                    Keys::Dense {
                        min: lo,
                        table: vec![NO_SLOT; (hi as i128 - lo as i128 + 1) as usize],
                    }
                }
                _ => Keys::Int(HashMap::default()),
            }
        } else {
            let fields = keys
                .iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect();
            Keys::Rows(RowConverter::new(fields)?, HashMap::default())
        };
        let n = spine.num_rows();
        let bucket = buckets_of(keys, n)?;
        let mut nkeys = vec![0u32; BUCKETS];
        let slots = map.slots(keys, |i| {
            let b = bucket[i] as usize;
            nkeys[b] += 1;
            Some(((nkeys[b] - 1) as u64) << 32 | b as u64)
        })?;
        let (mut spine_rows, mut spine_ids) =
            (vec![Vec::new(); BUCKETS], vec![Vec::new(); BUCKETS]);
        // Rows are dealt to buckets in spine order, so each bucket's results come out in
        // spine order and the buckets merge front to back (`table`).
        for i in spine_order(rid.values()) {
            let i = i as usize;
            // rows without a key or a time match nothing; they go with bucket 0
            let (b, id) = if slots[i] == NO_SLOT || spine_t.is_null(i) {
                (0, NULL_ID)
            } else {
                (bucket[i] as usize, (slots[i] >> 32) as u32)
            };
            spine_rows[b].push(i as u32);
            spine_ids[b].push(id);
        }
        let buckets = (0..BUCKETS).map(|_| Bucket::new(layout)).collect();
        let span = match (min(&spine_t), max(&spine_t)) {
            (Some(lo), Some(hi)) => span(lo, hi),
            _ => (i64::MAX, i64::MIN),
        };
        let old = min(&spine_t).and_then(old);
        let keeps = old.as_ref().map_or(0, |o| o.keep.len());
        let kept = nkeys
            .iter()
            .map(|&n| Kept::new(layout, n as usize * keeps))
            .collect();
        Ok(Pack {
            layout,
            keys: map,
            rid,
            spine_t,
            spine_rows,
            spine_ids,
            nkeys,
            buckets,
            has_created,
            events: 0,
            per_event: 4
                + 8
                + 8
                + 8 * has_created as usize
                + 8 * (layout.floats.len() + layout.ints.len())
                + (0..layout.masks.len())
                    .filter(|&j| layout.mask_lane(j))
                    .count(),
            span,
            old,
            kept,
        })
    }

    /// Events packed so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Memory the packed events hold, and the most any one bucket holds.
    pub fn bytes(&self) -> (usize, usize) {
        let each = self.buckets.iter().map(|b| b.bytes);
        (each.clone().sum(), each.max().unwrap_or(0))
    }

    /// Pack one batch of events: the key columns, then `values` and `filters`, with the
    /// times already in microseconds.
    pub fn push(
        &mut self,
        keys: &[ArrayRef],
        t: &Int64Array,
        created: Option<&Int64Array>,
        seq: &UInt64Array,
        values: &[ArrayRef],
        filters: &[BooleanArray],
    ) -> Result<()> {
        let layout = self.layout;
        let slots = self.keys.slots(keys, |_| None)?;
        let (tv, sv) = (t.values(), seq.values());
        let cutoff = self.old.as_ref().map_or(i64::MIN, |o| o.cutoff);
        let (first, last) = self.span;
        // Old and kept rows are split without a branch on the time: in a source not sorted by
        // time, which side a row falls on is a coin toss the CPU cannot predict.
        let n = slots.len();
        let (mut old_rows, mut recent) = (vec![0u32; n], vec![(0u32, 0u32); n]);
        let (mut n_old, mut n_recent) = (0, 0);
        for (i, &slot) in slots.iter().enumerate() {
            if slot == NO_SLOT || t.is_null(i) || !(first..=last).contains(&tv[i]) {
                continue;
            }
            let old = tv[i] < cutoff;
            old_rows[n_old] = i as u32;
            recent[n_recent] = (i as u32, (slot & 0xffff_ffff) as u32);
            n_old += old as usize;
            n_recent += !old as usize;
        }
        old_rows.truncate(n_old);
        recent.truncate(n_recent);
        // Column at a time: the recent rows are grouped by bucket once, then each lane is
        // appended bucket by bucket (a row at a time, each row's lanes were as many scattered
        // appends).
        let by = ByBucket::new(&recent);
        drop(recent);
        let floats = layout
            .floats
            .iter()
            .map(|&c| as_f64(&values[c]))
            .collect::<Result<Vec<_>>>()?;
        let ints = layout
            .ints
            .iter()
            .zip(&layout.int_labels)
            .map(|(&c, label)| as_i64(&values[c], label))
            .collect::<Result<Vec<_>>>()?;
        let masks: Vec<Option<_>> = layout
            .masks
            .iter()
            .enumerate()
            .map(|(j, &(c, f))| {
                layout.mask_lane(j).then(|| {
                    (
                        c.and_then(|c| values[c].logical_nulls()),
                        f.map(|f| &filters[f]),
                    )
                })
            })
            .collect();
        let admits = |j: usize, i: usize| -> bool {
            masks[j].as_ref().is_none_or(|(nulls, filter)| {
                nulls.as_ref().is_none_or(|x| x.is_valid(i))
                    && filter.is_none_or(|x| x.is_valid(i) && x.value(i))
            })
        };
        let buckets = &mut self.buckets;
        by.lane(buckets.iter_mut().map(|b| &mut b.ids), |i| {
            (slots[i] >> 32) as u32
        });
        by.lane(buckets.iter_mut().map(|b| &mut b.t), |i| tv[i]);
        // `seq` is kept whole: DataFusion may deal an input partition's batches round-robin
        // before hashing them, so arrival order is not source order.
        by.lane(buckets.iter_mut().map(|b| &mut b.seq), |i| sv[i]);
        let created_at =
            |i: usize| created.map_or(0, |c| if c.is_valid(i) { c.value(i) } else { i64::MIN });
        if created.is_some() {
            by.lane(buckets.iter_mut().map(|b| &mut b.created), created_at);
        }
        for (j, x) in floats.iter().enumerate() {
            let v = x.values();
            by.lane(buckets.iter_mut().map(|b| &mut b.floats[j]), |i| v[i]);
        }
        for (j, x) in ints.iter().enumerate() {
            let v = x.values();
            by.lane(buckets.iter_mut().map(|b| &mut b.ints[j]), |i| v[i]);
        }
        for (j, m) in masks.iter().enumerate() {
            if m.is_none() {
                continue;
            }
            let lanes = buckets.iter_mut().filter_map(|b| b.masks[j].as_mut());
            by.lane(lanes, |i| admits(j, i) as u8);
        }
        // Old events: each replaces the one its key keeps for a `Keep` when it comes later
        // (earlier, for `First`) in the sweep's order.
        if let Some(old) = self.old.as_ref().filter(|o| !o.keep.is_empty()) {
            let nk = old.keep.len();
            for i in old_rows {
                let i = i as usize;
                let slot = slots[i];
                let (b, id) = ((slot & 0xffff_ffff) as usize, (slot >> 32) as usize);
                let rank = (tv[i], created_at(i), sv[i]);
                let kp = &mut self.kept[b];
                for (r, &keep) in old.keep.iter().enumerate() {
                    let (wanted, later) = match keep {
                        Keep::First(j) => (admits(j, i), false),
                        Keep::Last(j) => (admits(j, i), true),
                        Keep::Latest => (true, true),
                    };
                    let new_at = kp.t.len();
                    let Some(p) = wanted.then(|| kp.offer((id, r, nk), rank, later)).flatten()
                    else {
                        continue;
                    };
                    if p == new_at {
                        self.buckets[b].bytes += self.per_event;
                        self.events += 1;
                    }
                    for (l, x) in kp.floats.iter_mut().zip(&floats) {
                        set(l, p, x.values()[i]);
                    }
                    for (l, x) in kp.ints.iter_mut().zip(&ints) {
                        set(l, p, x.values()[i]);
                    }
                    for (j, l) in kp.masks.iter_mut().enumerate() {
                        if let Some(l) = l {
                            set(l, p, admits(j, i) as u8);
                        }
                    }
                }
            }
        }
        let buckets = &mut self.buckets;
        for (b, bk) in buckets.iter_mut().enumerate() {
            bk.bytes += by.of(b).len() * self.per_event;
        }
        self.events += by.rows.len();
        // inputs kept as Arrow arrays: each bucket's rows of the batch, taken
        let array_buckets = if layout.keeps_arrays() {
            0..BUCKETS
        } else {
            0..0
        };
        for b in array_buckets {
            let rows = by.of(b);
            if rows.is_empty() {
                continue;
            }
            let idx = UInt32Array::from(rows.to_vec());
            let bk = &mut self.buckets[b];
            for (c, keep) in layout.raw.iter().enumerate() {
                if *keep {
                    let a = take(values[c].as_ref(), &idx, None)?;
                    bk.bytes += a.get_array_memory_size();
                    bk.raw[c].push(a);
                }
            }
            if layout.raw_filters {
                bk.filters.resize(filters.len(), Vec::new());
                for (j, f) in filters.iter().enumerate() {
                    let a = take(f, &idx, None)?;
                    bk.bytes += a.get_array_memory_size();
                    bk.filters[j].push(a);
                }
            }
        }
        Ok(())
    }

    /// Take bucket `b` out of the pack, ready to sweep.
    pub fn take_bucket(&mut self, b: usize, filter_count: usize) -> Result<(SpineSide, EventSide)> {
        // in spine order, as `new` dealt them
        let rows = std::mem::take(&mut self.spine_rows[b]);
        let ids = std::mem::take(&mut self.spine_ids[b]);
        let t = self.spine_t.values();
        let spine = SpineSide {
            t: rows.iter().map(|&r| t[r as usize]).collect(),
            rid: take(&self.rid, &UInt32Array::from(rows), None)?
                .as_primitive_opt()
                .cloned()
                .ok_or_else(|| Error::Internal("rid".into()))?,
            ids,
            nkeys: self.nkeys[b] as usize,
        };
        let layout = self.layout;
        // batches read back from later buckets' spill files still find every lane here
        let bk = std::mem::replace(&mut self.buckets[b], Bucket::new(layout));
        let joined = |parts: Vec<ArrayRef>, ty: &DataType| -> Result<ArrayRef> {
            if parts.is_empty() {
                return Ok(new_empty_array(ty));
            }
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            Ok(concat(&refs)?)
        };
        let raw = bk
            .raw
            .into_iter()
            .enumerate()
            .map(|(c, parts)| {
                layout
                    .raw
                    .get(c)
                    .copied()
                    .unwrap_or(false)
                    .then(|| joined(parts, &layout.types[c]))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let mut filters = Vec::new();
        if layout.raw_filters {
            let mut parts = bk.filters;
            parts.resize(filter_count, Vec::new());
            for p in parts {
                filters.push(Some(joined(p, &DataType::Boolean)?.as_boolean().clone()));
            }
        }
        let kp = std::mem::replace(&mut self.kept[b], Kept::new(layout, 0));
        // a key's kept old events join its others; the sweep sorts them into place
        let ev = EventSide {
            ids: bk.ids.into_vec(&kp.ids),
            t: bk.t.into_vec(&kp.t),
            created: self.has_created.then(|| bk.created.into_vec(&kp.created)),
            seq: bk.seq.into_vec(&kp.seq),
            floats: with_kept(bk.floats, &kp.floats),
            ints: with_kept(bk.ints, &kp.ints),
            masks: bk
                .masks
                .into_iter()
                .zip(&kp.masks)
                .map(|(m, o)| m.map(|c| c.into_vec(o.as_deref().unwrap_or(&[]))))
                .collect(),
            raw,
            filters,
        };
        Ok((spine, ev))
    }
}

#[cfg(test)]
mod tests {
    use super::spine_order;

    #[test]
    fn spine_order_lists_positions_by_ascending_row_id() {
        let check = |rid: &[u64]| {
            let order = spine_order(rid);
            assert_eq!(order.len(), rid.len());
            let ids: Vec<u64> = order.iter().map(|&i| rid[i as usize]).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{rid:?} -> {order:?}");
        };
        check(&[]);
        check(&[5]);
        check(&[4, 0, 2, 8, 6]); // dense: through the table
        check(&[3, 1 << 40, 7, u64::MAX, 0]); // sparse: sorted
    }
}
