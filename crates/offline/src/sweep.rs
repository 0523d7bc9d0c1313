//! The point-in-time sweep of one bucket of a partition (DESIGN §4; buckets come from
//! [`crate::pack`]).
//!
//! Events are grouped by entity key with a counting sort on dense key ids — times and every
//! lane of the [`Lanes`] carried along in one scatter, so later passes read contiguous
//! memory — and ordered inside each key by (event time, created time, source order), skipped
//! where the source is already in that order. Then each key is swept as one block held in
//! small reused buffers: moving pointers give each spine row its window as a range of the
//! block; prefix sums (double-double for floats, i128 for integers) answer
//! count/sum/mean/var/stddev, positions of valid values answer first/last/latest, segment
//! extremes shared by the windows that end together answer min/max (a branch-free two-stack
//! queue where ends differ) and a sliding multiset count_distinct. Keys
//! without spine rows are skipped. A bucket's results fit in cache, so they are written
//! straight at their spine rows.
//!
//! Window edges come from `quiver_core::semantics`; nothing here decides what is in a window.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Float64Array, Int64Array,
    StringArray, UInt32Array, UInt64Array, make_comparator,
};
use arrow::buffer::NullBuffer;
use arrow::compute::kernels::cast::{CastOptions, cast_with_options};
use arrow::compute::{SortOptions, cast, take};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use quiver_core::Duration;
use quiver_core::semantics::{Agg, Lower, Upper, Window, latest_edges};

use crate::dd::{Dd, RunningSum};
use crate::state::{self, StateKind};
use crate::{Error, Result};

pub(crate) const NULL_ID: u32 = u32::MAX;

/// What a feature computes, resolved against the event columns of its view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct FeatureSpec {
    /// Output column name.
    pub name: String,
    /// `view:feature`, for messages.
    pub label: String,
    pub kind: Kind,
    /// Index into the value columns; `None` for `count` of `*`.
    pub column: Option<usize>,
    /// Index into the filter columns.
    pub filter: Option<usize>,
    pub output_type: DataType,
    /// Emit the window's partial-aggregate state ([`crate::state`]) instead of its value
    /// (window aggregates with a mergeable state, sources without `filter_created`).
    pub state: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Kind {
    Agg(Agg, Window),
    Latest,
}

/// The spine rows of one bucket of a partition ([`crate::pack`]): key ids local to the
/// bucket (`NULL_ID` where a key or the time is null) and times in microseconds.
pub struct SpineSide {
    pub rid: UInt64Array,
    pub ids: Vec<u32>,
    pub t: Vec<i64>,
    pub nkeys: usize,
}

/// The events of one bucket, in arrival order, as [`crate::pack`] keeps them: only events
/// whose key is in the spine and whose time is set; `seq` is the source order.
#[derive(Default)]
pub struct EventSide {
    pub ids: Vec<u32>,
    pub t: Vec<i64>,
    /// Created times, null as `i64::MIN` (earliest).
    pub created: Option<Vec<i64>>,
    pub seq: Vec<u64>,
    /// The lanes of [`Lanes`].
    pub floats: Vec<Vec<f64>>,
    pub ints: Vec<Vec<i64>>,
    pub masks: Vec<Option<Vec<u8>>>,
    /// Per value column, the Arrow array where the layout keeps it.
    pub raw: Vec<Option<ArrayRef>>,
    /// Filters as Arrow arrays (`filter_created` sources only).
    pub filters: Vec<Option<BooleanArray>>,
}

/// Where the sweep finds each input, decided once per view from its features and the
/// event column types: numeric columns travel as f64 / i64 lanes and each (column, filter)
/// pair as a byte mask, so a packed event costs a few bytes per input; columns whose values
/// are returned as they are (other types), count_distinct's and `filter_created`'s inputs
/// stay Arrow arrays.
pub struct Lanes {
    /// The value column of each float / int lane.
    pub floats: Vec<usize>,
    pub ints: Vec<usize>,
    /// A feature label per int lane, for the message when values do not fit in Int64.
    pub int_labels: Vec<String>,
    /// (value column, filter) of each mask; a mask with neither keeps every event.
    pub masks: Vec<(Option<usize>, Option<usize>)>,
    /// Per value column: kept as an Arrow array.
    pub raw: Vec<bool>,
    /// Filters kept as Arrow arrays (`filter_created`).
    pub raw_filters: bool,
    pub types: Vec<DataType>,
    /// Per feature: what it computes from which input, and its mask.
    inputs: Vec<(Input, usize)>,
}

/// Where a returned value comes from.
#[derive(Clone, Copy, PartialEq)]
enum Src {
    Float(usize),
    Int(usize),
    Raw(usize),
}

#[derive(Clone, Copy, PartialEq)]
enum Pick {
    First,
    Last,
    Latest,
}

#[derive(Clone, Copy)]
enum Input {
    Count,
    Distinct(usize),
    Pick(Pick, Src),
    Extreme(Src, bool),
    IntSum(usize),
    Float(Agg, usize),
}

impl Lanes {
    pub fn new(
        features: &[FeatureSpec],
        types: &[DataType],
        filter_created: bool,
    ) -> Result<Lanes> {
        let mut l = Lanes {
            floats: Vec::new(),
            ints: Vec::new(),
            int_labels: Vec::new(),
            masks: Vec::new(),
            raw: vec![filter_created; types.len()],
            raw_filters: filter_created,
            types: types.to_vec(),
            inputs: Vec::new(),
        };
        if filter_created {
            return Ok(l);
        }
        for f in features {
            let c = f.column;
            let col = || c.ok_or_else(|| internal("feature without a column"));
            let input = match f.kind {
                Kind::Latest => Input::Pick(Pick::Latest, l.value_src(col()?, &f.label)),
                Kind::Agg(agg, _) => match agg {
                    Agg::Count => Input::Count,
                    Agg::First => Input::Pick(Pick::First, l.value_src(col()?, &f.label)),
                    Agg::Last => Input::Pick(Pick::Last, l.value_src(col()?, &f.label)),
                    Agg::CountDistinct => {
                        let c = col()?;
                        l.raw[c] = true;
                        Input::Distinct(c)
                    }
                    Agg::Min | Agg::Max => {
                        let c = col()?;
                        let src = match types[c] {
                            DataType::Int64
                            | DataType::Int32
                            | DataType::Int16
                            | DataType::Int8 => Src::Int(l.int_lane(c, &f.label)),
                            DataType::Float64 | DataType::Float32 => {
                                Src::Float(slot(&mut l.floats, c))
                            }
                            _ => {
                                l.raw[c] = true;
                                Src::Raw(c)
                            }
                        };
                        Input::Extreme(src, agg == Agg::Max)
                    }
                    Agg::Sum if types[col()?].is_integer() => {
                        Input::IntSum(l.int_lane(col()?, &f.label))
                    }
                    Agg::Sum | Agg::Mean | Agg::Var | Agg::Stddev => {
                        Input::Float(agg, slot(&mut l.floats, col()?))
                    }
                },
            };
            // A latest value is the last event whatever its value: its mask only tells
            // whether that value is present.
            let mask = match f.kind {
                Kind::Latest => (c, None),
                Kind::Agg(..) => (c, f.filter),
            };
            let mask = slot(&mut l.masks, mask);
            l.inputs.push((input, mask));
        }
        Ok(l)
    }

    /// Whether mask `j` is a lane: a mask with neither a column nor a filter admits every
    /// event and is not stored.
    pub fn mask_lane(&self, j: usize) -> bool {
        let (c, f) = self.masks[j];
        c.is_some() || f.is_some()
    }

    fn int_lane(&mut self, c: usize, label: &str) -> usize {
        let i = slot(&mut self.ints, c);
        if self.int_labels.len() < self.ints.len() {
            self.int_labels.push(label.to_string());
        }
        i
    }

    /// A returned value's source: a lane when the lane holds the column's exact type.
    fn value_src(&mut self, c: usize, label: &str) -> Src {
        match self.types[c] {
            DataType::Float64 => Src::Float(slot(&mut self.floats, c)),
            DataType::Int64 => Src::Int(self.int_lane(c, label)),
            _ => {
                self.raw[c] = true;
                Src::Raw(c)
            }
        }
    }
}

/// What a partition still needs of its events older than every finite window: nothing,
/// except that lifetime first / last / latest-value features need a key's earliest or latest
/// such event. [`crate::pack`] keeps only those, so a spine covering the last months of a
/// long history sorts and sweeps only those months.
pub struct OldEvents {
    /// Events before this microsecond are old.
    pub cutoff: i64,
    /// The events each key keeps of its old ones.
    pub keep: Vec<Keep>,
}

/// One old event a key keeps, in (time, created, source order) order — the sweep's order.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Keep {
    /// The earliest whose mask lane (an index into [`Lanes::masks`]) admits it.
    First(usize),
    /// The latest such.
    Last(usize),
    /// The latest of all.
    Latest,
}

/// The first and last microsecond a window's edges admit, as i128 so that no edge
/// overflows; an unbounded start is `i128::MIN`.
fn admitted((lower, upper): (Lower, Upper)) -> (i128, i128) {
    let first = match lower {
        Lower::Unbounded => i128::MIN,
        Lower::Exclusive(x) => x as i128 + 1,
        Lower::Inclusive(x) => x as i128,
    };
    let last = match upper {
        Upper::Exclusive(x) => x as i128 - 1,
        Upper::Inclusive(x) => x as i128,
    };
    (first, last)
}

/// A feature's window edges for a spine row at `t` (a latest value's reach back is the TTL).
fn feature_edges(f: &FeatureSpec, ttl: Option<Duration>, t: i64) -> (Lower, Upper) {
    match f.kind {
        Kind::Agg(_, w) => w.edges(t),
        Kind::Latest => latest_edges(ttl, t),
    }
}

/// The first and last microsecond any feature's window admits for spine rows timed from
/// `min_t` to `max_t`: an event outside them lies in no window of those rows. (Edges only
/// grow with the spine time, so the earliest and the latest rows bound them all.)
pub fn needed_span(
    features: &[FeatureSpec],
    ttl: Option<Duration>,
    min_t: i64,
    max_t: i64,
) -> (i64, i64) {
    let admits = |f: &FeatureSpec, t: i64| admitted(feature_edges(f, ttl, t));
    let first = features.iter().map(|f| admits(f, min_t).0).min();
    let last = features.iter().map(|f| admits(f, max_t).1).max();
    let clamp = |x: i128| x.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    match (first, last) {
        (Some(first), Some(last)) => (clamp(first), clamp(last)),
        _ => (i64::MAX, i64::MIN),
    }
}

impl Lanes {
    /// Whether any input stays an Arrow array (strings, count_distinct, `filter_created`):
    /// those are read by event index, not from lanes.
    pub fn keeps_arrays(&self) -> bool {
        self.raw_filters || self.raw.iter().any(|&r| r)
    }

    /// How the events of a partition whose earliest spine time is `min_t` can be reduced;
    /// `None` when every event must be kept: a lifetime feature that needs more than one
    /// event (count, sum, min, …), a state kept for reuse (it counts the window's events),
    /// or values kept as Arrow arrays.
    pub fn old_events(
        &self,
        features: &[FeatureSpec],
        ttl: Option<Duration>,
        min_t: i64,
    ) -> Option<OldEvents> {
        if self.keeps_arrays() {
            return None;
        }
        // Edges only grow with the spine time, so the earliest spine row bounds them all.
        let mut cutoff = i64::MAX as i128;
        let mut keep = Vec::new();
        for (f, &(input, mask)) in features.iter().zip(&self.inputs) {
            if f.state {
                return None;
            }
            let (first, last) = admitted(feature_edges(f, ttl, min_t));
            let first_in = if first == i128::MIN {
                let k = match input {
                    Input::Pick(Pick::First, _) => Keep::First(mask),
                    Input::Pick(Pick::Last, _) => Keep::Last(mask),
                    Input::Pick(Pick::Latest, _) => Keep::Latest,
                    _ => return None,
                };
                if !keep.contains(&k) {
                    keep.push(k);
                }
                // a lifetime window: every old event must lie before its end, for every row
                last + 1
            } else {
                first
            };
            cutoff = cutoff.min(first_in);
        }
        let cutoff = cutoff.max(i64::MIN as i128) as i64;
        Some(OldEvents { cutoff, keep })
    }
}

/// Compute every feature for every spine row of a bucket. Returns the spine row ids and one
/// array per feature, row-aligned with them.
pub fn sweep(
    features: &[FeatureSpec],
    layout: &Lanes,
    ttl: Option<Duration>,
    spine: &SpineSide,
    mut ev: EventSide,
) -> Result<(ArrayRef, Vec<ArrayRef>)> {
    // event indices are read only where values stay Arrow arrays
    let need_idx = layout.keeps_arrays();
    let s = Sorted::new(spine, &mut ev, need_idx);
    if !layout.raw_filters {
        // A bucket's results fit in cache, so they are written straight at their spine rows,
        // and the caller merges buckets by reading each sequentially.
        let blocks = Blocks::new(features, layout, ttl, spine.rid.len(), &ev)?;
        return Ok((Arc::new(spine.rid.clone()), blocks.run(&s, spine)?));
    }
    let rid = take(&spine.rid, &UInt32Array::from(s.srows.clone()), None)?;
    let mut ranges: HashMap<Window, (Vec<u32>, Vec<u32>)> = HashMap::new();
    let mut latest: Option<(Vec<u32>, Vec<u32>)> = None;
    // `direct` reads columns and filters by sorted position.
    let order = UInt32Array::from(s.order.clone());
    let mut cols: HashMap<usize, ArrayRef> = HashMap::new();
    let mut filters: HashMap<usize, BooleanArray> = HashMap::new();
    for f in features {
        if let Some(c) = f.column
            && !cols.contains_key(&c)
        {
            let raw = ev.raw[c].as_ref().ok_or_else(|| internal("raw column"))?;
            cols.insert(c, take(raw.as_ref(), &order, None)?);
        }
        if let Some(i) = f.filter
            && !filters.contains_key(&i)
        {
            let raw = ev.filters[i]
                .as_ref()
                .ok_or_else(|| internal("raw filter"))?;
            let sorted = take(raw, &order, None)?;
            filters.insert(i, sorted.as_boolean().clone());
        }
    }
    let mut out = Vec::with_capacity(features.len());
    for f in features {
        let (lo, hi) = match f.kind {
            Kind::Agg(_, w) => &*ranges.entry(w).or_insert_with(|| s.ranges(|t| w.edges(t))),
            Kind::Latest => &*latest.get_or_insert_with(|| s.ranges(|t| latest_edges(ttl, t))),
        };
        let col = f.column.map(|c| &cols[&c]);
        let filter = f.filter.map(|i| &filters[&i]);
        out.push(s.direct(f, col, filter, lo, hi, spine)?);
    }
    Ok((rid, out))
}

struct Sorted {
    /// Event indices in (key, time, created, seq) order; empty when no feature reads them.
    order: Vec<u32>,
    /// Event times in that order.
    ts: Vec<i64>,
    /// Created times in that order (null = earliest), when the source has them.
    created: Option<Vec<i64>>,
    /// The lanes, in that order.
    floats: Vec<Vec<f64>>,
    ints: Vec<Vec<i64>>,
    masks: Vec<Option<Vec<u8>>>,
    /// `eblock[k]..eblock[k+1]` are the sorted positions of key `k`.
    eblock: Vec<u32>,
    /// Spine indices: valid rows in (key, time) order, then rows with a null key or time.
    srows: Vec<u32>,
    n_valid: usize,
    /// `sblock[k]..sblock[k+1]` are the positions in `srows` of key `k`.
    sblock: Vec<u32>,
    /// Spine times in `srows` order (valid rows only).
    st: Vec<i64>,
}

/// `out[dest[i]] = src[i]` for every event with a destination: reads run sequentially and
/// writes stream into one run per key, so this stays cache-friendly where a gather by event
/// index would miss on nearly every read.
fn scatter<T: Copy + Default>(src: impl Iterator<Item = T>, dest: &[u32], len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    for (x, &d) in src.zip(dest) {
        if d != NULL_ID {
            out[d as usize] = x;
        }
    }
    out
}

/// Reorder `lane[..perm.len()]` by `perm` (the old position of each new one).
fn permute<T: Copy>(lane: &mut [T], perm: &[u32], tmp: &mut Vec<T>) {
    tmp.clear();
    tmp.extend(perm.iter().map(|&p| lane[p as usize]));
    lane[..tmp.len()].copy_from_slice(tmp);
}

/// Bits that hold a position below `n`.
fn position_bits(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

/// `(t − min) << bits | position` for each time, when the span of times and the positions
/// fit in 64 bits together (a key's events over a few years, at microseconds, do).
fn pack_keys(ts: &[i64], out: &mut Vec<u64>) -> bool {
    let (Some(&lo), Some(&hi)) = (ts.iter().min(), ts.iter().max()) else {
        return false;
    };
    let bits = position_bits(ts.len());
    let span = (hi as i128 - lo as i128) as u128;
    if bits >= 64 || span >= 1u128 << (64 - bits) {
        return false;
    }
    out.clear();
    out.extend(
        ts.iter()
            .enumerate()
            .map(|(p, &t)| ((t.wrapping_sub(lo) as u64) << bits) | p as u64),
    );
    true
}

/// Order each run of `perm` whose items tie (`same(i, j)` on their indices in `perm`) by
/// source order.
fn sort_ties(perm: &mut [u32], same: impl Fn(usize, usize) -> bool, src: impl Fn(u32) -> u64) {
    let mut i = 0;
    while i < perm.len() {
        let mut e = i + 1;
        while e < perm.len() && same(i, e) {
            e += 1;
        }
        if e - i > 1 {
            perm[i..e].sort_unstable_by_key(|&x| src(x));
        }
        i = e;
    }
}

impl Sorted {
    /// `need_idx`: keep [`Sorted::order`] (else it stays empty).
    fn new(spine: &SpineSide, ev: &mut EventSide, need_idx: bool) -> Sorted {
        let nkeys = spine.nkeys;
        // Counting sort by key id: each event's position in key-grouped order, arrival order
        // within a key.
        let mut eblock = vec![0u32; nkeys + 1];
        for &id in &ev.ids {
            if id != NULL_ID {
                eblock[id as usize + 1] += 1;
            }
        }
        for k in 0..nkeys {
            eblock[k + 1] += eblock[k];
        }
        let total = eblock[nkeys] as usize;
        let mut fill = eblock.clone();
        let dest: Vec<u32> = ev
            .ids
            .iter()
            .map(|&id| {
                if id == NULL_ID {
                    return NULL_ID;
                }
                let d = fill[id as usize];
                fill[id as usize] += 1;
                d
            })
            .collect();
        drop(fill);
        // Each lane is freed as soon as it is carried over, so a bucket never holds two
        // copies of more than one lane.
        let mut ts = scatter(std::mem::take(&mut ev.t).into_iter(), &dest, total);
        let seq = scatter(std::mem::take(&mut ev.seq).into_iter(), &dest, total);
        let mut order = if need_idx {
            scatter(0..dest.len() as u32, &dest, total)
        } else {
            Vec::new()
        };
        let mut created = ev
            .created
            .take()
            .map(|c| scatter(c.into_iter(), &dest, total));
        let mut floats: Vec<Vec<f64>> = std::mem::take(&mut ev.floats)
            .into_iter()
            .map(|x| scatter(x.into_iter(), &dest, total))
            .collect();
        let mut ints: Vec<Vec<i64>> = std::mem::take(&mut ev.ints)
            .into_iter()
            .map(|x| scatter(x.into_iter(), &dest, total))
            .collect();
        let mut masks: Vec<Option<Vec<u8>>> = std::mem::take(&mut ev.masks)
            .into_iter()
            .map(|m| m.map(|x| scatter(x.into_iter(), &dest, total)))
            .collect();
        drop(dest);
        // Each key's events are sorted as a contiguous run of cached (time, created, position)
        // keys — source order only breaks the rare ties afterwards, which keeps the sorted
        // items small — and every lane follows the same permutation.
        let mut scratch: Vec<(i64, i64, u32)> = Vec::new();
        let mut packed: Vec<u64> = Vec::new();
        let mut perm: Vec<u32> = Vec::new();
        let (mut tf, mut ti, mut tu, mut tb, mut tt) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in 0..nkeys {
            let (bs, be) = (eblock[k] as usize, eblock[k + 1] as usize);
            let c = |p: usize| created.as_ref().map_or(0, |c| c[p]);
            let key = |p: usize| (ts[p], c(p), seq[p]);
            // Sources stored sorted by (key, time) skip the sort: checking is one pass.
            if (bs + 1..be).all(|p| key(p - 1) <= key(p)) {
                continue;
            }
            let src = |x: u32| seq[bs + x as usize];
            perm.clear();
            if created.is_none() && pack_keys(&ts[bs..be], &mut packed) {
                // (time, position) packed in a u64 sorts about twice as fast as a tuple.
                packed.sort_unstable();
                let bits = position_bits(be - bs);
                let mask = (1u64 << bits) - 1;
                perm.extend(packed.iter().map(|&x| (x & mask) as u32));
                sort_ties(
                    &mut perm,
                    |a, b| packed[a] >> bits == packed[b] >> bits,
                    src,
                );
            } else {
                // Source order only breaks the rare ties afterwards, which keeps the sorted
                // items small.
                scratch.clear();
                scratch.extend((bs..be).map(|p| (ts[p], c(p), (p - bs) as u32)));
                scratch.sort_unstable();
                perm.extend(scratch.iter().map(|x| x.2));
                sort_ties(
                    &mut perm,
                    |a, b| scratch[a].0 == scratch[b].0 && scratch[a].1 == scratch[b].1,
                    src,
                );
            }
            // every lane follows the same permutation
            permute(&mut ts[bs..be], &perm, &mut tt);
            if let Some(c) = created.as_mut() {
                permute(&mut c[bs..be], &perm, &mut tt);
            }
            if need_idx {
                permute(&mut order[bs..be], &perm, &mut tu);
            }
            for lane in &mut floats {
                permute(&mut lane[bs..be], &perm, &mut tf);
            }
            for lane in &mut ints {
                permute(&mut lane[bs..be], &perm, &mut ti);
            }
            for lane in masks.iter_mut().flatten() {
                permute(&mut lane[bs..be], &perm, &mut tb);
            }
        }
        drop(seq);

        let stv = &spine.t;
        let sid = &spine.ids;
        let sp_ok = |i: usize| sid[i] != NULL_ID;
        let (sblock, mut srows) = group_by_key(sid, nkeys, sp_ok);
        for k in 0..nkeys {
            srows[sblock[k] as usize..sblock[k + 1] as usize]
                .sort_unstable_by_key(|&i| stv[i as usize]);
        }
        let n_valid = srows.len();
        let st = srows.iter().map(|&i| stv[i as usize]).collect();
        srows.extend((0..sid.len() as u32).filter(|&i| !sp_ok(i as usize)));
        Sorted {
            order,
            ts,
            created,
            floats,
            ints,
            masks,
            eblock,
            srows,
            n_valid,
            sblock,
            st,
        }
    }

    /// For each valid spine row (in `srows` order) the range `lo..hi` of sorted event
    /// positions inside its window.
    fn ranges(&self, edges: impl Fn(i64) -> (Lower, Upper)) -> (Vec<u32>, Vec<u32>) {
        let mut los = Vec::with_capacity(self.n_valid);
        let mut his = Vec::with_capacity(self.n_valid);
        let nkeys = self.sblock.len() - 1;
        for k in 0..nkeys {
            let (bs, be) = (self.eblock[k] as usize, self.eblock[k + 1] as usize);
            let (mut lo, mut hi) = (bs, bs);
            for r in self.sblock[k] as usize..self.sblock[k + 1] as usize {
                let (l, u) = edges(self.st[r]);
                while hi < be && u.admits(self.ts[hi]) {
                    hi += 1;
                }
                while lo < hi && !l.admits(self.ts[lo]) {
                    lo += 1;
                }
                los.push(lo as u32);
                his.push(hi as u32);
            }
        }
        (los, his)
    }

    fn rid(&self, spine: &SpineSide, r: usize) -> u64 {
        spine.rid.value(self.srows[r] as usize)
    }

    /// Features of a `filter_created` source: an event is visible to a spine row only if it
    /// was also created at or before the row's time, so windows are no longer contiguous
    /// ranges and each row's window is walked directly.
    fn direct(
        &self,
        f: &FeatureSpec,
        col: Option<&ArrayRef>,
        filter: Option<&BooleanArray>,
        lo: &[u32],
        hi: &[u32],
        spine: &SpineSide,
    ) -> Result<ArrayRef> {
        let n = self.srows.len();
        let created = self
            .created
            .as_ref()
            .ok_or_else(|| internal("filter_created without created times"))?;
        let col_nulls = col.and_then(|c| c.logical_nulls());
        let visible = |r: usize, p: usize| created[p] <= self.st[r];
        let valid = |p: usize| {
            col_nulls.as_ref().is_none_or(|nl| nl.is_valid(p))
                && filter.is_none_or(|fl| fl.is_valid(p) && fl.value(p))
        };
        let agg = match f.kind {
            Kind::Latest => {
                let idx = (0..n).map(|r| {
                    if r >= self.n_valid {
                        return None;
                    }
                    (lo[r] as usize..hi[r] as usize)
                        .rev()
                        .find(|&p| visible(r, p))
                        .map(|p| p as u32)
                });
                return take_values(col, idx);
            }
            Kind::Agg(agg, _) => agg,
        };
        let mut pos: Vec<usize> = Vec::new();
        let mut ints: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut floats: Vec<Option<f64>> = Vec::with_capacity(n);
        let mut idx: Vec<Option<u32>> = Vec::with_capacity(n);
        let xi = match (agg, col) {
            (Agg::Sum, Some(c)) if c.data_type().is_integer() => Some(as_i64(c, &f.label)?),
            _ => None,
        };
        let xf = match (agg, col) {
            (Agg::Sum | Agg::Mean | Agg::Var | Agg::Stddev, Some(c)) if xi.is_none() => {
                Some(as_f64(c)?)
            }
            _ => None,
        };
        let better = match (agg, col) {
            (Agg::Min | Agg::Max, Some(c)) => Some(Better::new(c, agg == Agg::Max)?),
            _ => None,
        };
        let ids = match (agg, col) {
            (Agg::CountDistinct, Some(c)) => Some(value_ids(c)?),
            _ => None,
        };
        for r in 0..self.n_valid {
            pos.clear();
            pos.extend((lo[r] as usize..hi[r] as usize).filter(|&p| visible(r, p) && valid(p)));
            let ev_idx = pos.iter().copied();
            match agg {
                Agg::Count => ints.push(Some(pos.len() as i64)),
                Agg::CountDistinct => {
                    let ids = ids.as_ref().ok_or_else(|| internal("ids"))?;
                    let mut seen: Vec<u32> = ev_idx.map(|i| ids.0[i]).collect();
                    seen.sort_unstable();
                    seen.dedup();
                    ints.push(Some(seen.len() as i64));
                }
                Agg::First => idx.push(pos.first().map(|&p| p as u32)),
                Agg::Last => idx.push(pos.last().map(|&p| p as u32)),
                Agg::Min | Agg::Max => {
                    let b = better.as_ref().ok_or_else(|| internal("cmp"))?;
                    let mut best: Option<u32> = None;
                    for i in ev_idx {
                        if best.is_none_or(|bi| !b.is(bi, i as u32)) {
                            best = Some(i as u32);
                        }
                    }
                    idx.push(best);
                }
                Agg::Sum if xi.is_some() => {
                    let x = xi.as_ref().ok_or_else(|| internal("ints"))?;
                    if pos.is_empty() {
                        ints.push(None);
                        continue;
                    }
                    let s: i128 = ev_idx.map(|i| x.value(i) as i128).sum();
                    ints.push(Some(i64::try_from(s).map_err(|_| Error::SumOverflow {
                        feature: f.label.clone(),
                        row: self.rid(spine, r),
                    })?));
                }
                Agg::Sum | Agg::Mean | Agg::Var | Agg::Stddev => {
                    let x = xf.as_ref().ok_or_else(|| internal("floats"))?;
                    let vals: Vec<f64> = ev_idx.map(|i| x.value(i)).collect();
                    floats.push(direct_moment(agg, &vals));
                }
            }
        }
        Ok(match agg {
            Agg::Count | Agg::CountDistinct => {
                ints.resize(n, Some(0));
                Arc::new(Int64Array::from(ints))
            }
            Agg::Sum if xi.is_some() => {
                ints.resize(n, None);
                Arc::new(Int64Array::from(ints))
            }
            Agg::Sum | Agg::Mean | Agg::Var | Agg::Stddev => {
                floats.resize(n, None);
                Arc::new(Float64Array::from(floats))
            }
            Agg::Min | Agg::Max | Agg::First | Agg::Last => {
                idx.resize(n, None);
                take_values(col, idx.into_iter())?
            }
        })
    }
}

/// The window edges a block sweep answers: a feature's window, or the latest-value edges.
#[derive(Clone, Copy, PartialEq)]
enum Edges {
    Window(Window),
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrefixKind {
    Int,
    Float,
    Moments,
}

/// What one feature computes for a key's block. Numeric inputs are lanes of the sorted
/// bucket ([`Sorted::floats`] / [`Sorted::ints`]).
enum Op {
    Count,
    IntSum,
    /// sum / mean / var / stddev as floats.
    Float(Agg),
    Pick(Pick, Src),
    /// Min or max over a block's order-preserving i64 keys (`Blocks::keys`) of a float or
    /// integer lane.
    ExtremeF64(usize, bool),
    ExtremeI64(usize, bool),
    ExtremeDyn(Better),
    /// Value ids per event and the live count of each id in the current window.
    Distinct(Vec<u32>, Vec<u32>),
}

/// One output column of a bucket, filled at each spine row's index in the bucket.
enum Out {
    /// Counts: never null, 0 by default.
    Count(Vec<i64>),
    I64(Vec<i64>, BooleanBufferBuilder),
    F64(Vec<f64>, BooleanBufferBuilder),
    /// Event indices (`NULL_ID` = null), taken from the value column at the end.
    Idx(Vec<u32>),
    I128(Vec<i128>),
    Parts(state::FloatParts),
}

struct Job<'a> {
    spec: &'a FeatureSpec,
    op: Op,
    edges: usize,
    mask: usize,
    prefix: Option<usize>,
    /// The state emitted instead of the value, when the feature keeps one.
    state: Option<StateKind>,
    /// Valid events per window, for states that keep a value.
    n: Vec<i64>,
    /// The value column, for results taken from it.
    col: Option<ArrayRef>,
    /// The value column's type (min/max return it).
    col_type: Option<DataType>,
    out: Out,
}

/// Which events of a key count for a (column, filter) pair, built per key block.
#[derive(Default)]
struct LocalMask {
    /// `cnt[p]` = number of valid positions before block position `p`.
    cnt: Vec<u32>,
    /// The valid block positions, ascending.
    vpos: Vec<u32>,
}

/// Prefix sums over one key block (i128 for integer sums, double-double otherwise).
#[derive(Default)]
struct LocalPrefix {
    int: Vec<i128>,
    p1: Vec<Dd>,
    p2: Vec<Dd>,
    /// Prefix counts of NaN, +inf and −inf, only when the block has any.
    special: Vec<[u32; 3]>,
    has_special: bool,
    /// The key's first finite valid value, which its moments are taken about.
    shift: f64,
}

struct PrefixDef {
    mask: usize,
    kind: PrefixKind,
    /// Index into `Blocks::floats` or `Blocks::ints`.
    input: usize,
}

/// A block's float and int lanes, and its min/max keys.
type BlockLanes<'x> = (&'x [&'x [f64]], &'x [&'x [i64]]);

/// One key's sorted events and spine rows.
struct Block<'a> {
    ts: &'a [i64],
    /// Event index of each sorted position.
    idx: &'a [u32],
    st: &'a [i64],
    /// Partition spine row of each of the key's rows, in time order.
    rows: &'a [u32],
}

/// The block-at-a-time sweep: each key's events are gathered into small reused buffers and
/// every feature of the key is computed from them, so the working set is the largest key,
/// not the partition, and results land directly at their spine rows.
struct Blocks<'a> {
    jobs: Vec<Job<'a>>,
    edges: Vec<Edges>,
    ttl: Option<Duration>,
    masks: usize,
    prefixes: Vec<PrefixDef>,
    /// (mask, lane) of each array of min/max keys, built once per block and shared by every
    /// window.
    keys: Vec<(usize, Src)>,
}

fn unset(rows: usize) -> BooleanBufferBuilder {
    let mut b = BooleanBufferBuilder::new(rows);
    b.append_n(rows, false);
    b
}

fn slot<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    list.iter().position(|x| *x == item).unwrap_or_else(|| {
        list.push(item);
        list.len() - 1
    })
}

impl<'a> Blocks<'a> {
    fn new(
        features: &'a [FeatureSpec],
        layout: &Lanes,
        ttl: Option<Duration>,
        rows: usize,
        ev: &EventSide,
    ) -> Result<Blocks<'a>> {
        let mut edges = Vec::new();
        let mut prefix_keys: Vec<(usize, PrefixKind, usize)> = Vec::new();
        let mut keys: Vec<(usize, Src)> = Vec::new();
        let mut jobs = Vec::with_capacity(features.len());
        let raw = |c: usize| ev.raw[c].clone().ok_or_else(|| internal("raw column"));
        for (f, &(input, mask)) in features.iter().zip(&layout.inputs) {
            let col_type = f.column.map(|c| layout.types[c].clone());
            let e = match f.kind {
                Kind::Latest => Edges::Latest,
                Kind::Agg(_, w) => Edges::Window(w),
            };
            let mut col = None;
            let (op, prefix) = match input {
                Input::Count => (Op::Count, None),
                Input::Distinct(c) => {
                    let (ids, n) = value_ids(&raw(c)?)?;
                    (Op::Distinct(ids, vec![0; n]), None)
                }
                Input::Pick(p, src) => {
                    if let Src::Raw(c) = src {
                        col = Some(raw(c)?);
                    }
                    (Op::Pick(p, src), None)
                }
                Input::Extreme(src @ Src::Float(_), max) => {
                    (Op::ExtremeF64(slot(&mut keys, (mask, src)), max), None)
                }
                Input::Extreme(src @ Src::Int(_), max) => {
                    (Op::ExtremeI64(slot(&mut keys, (mask, src)), max), None)
                }
                Input::Extreme(Src::Raw(c), max) => {
                    let a = raw(c)?;
                    let better = Better::new(&a, max)?;
                    col = Some(a);
                    (Op::ExtremeDyn(better), None)
                }
                Input::IntSum(g) => (Op::IntSum, Some((PrefixKind::Int, g))),
                Input::Float(agg, g) => {
                    let kind = if matches!(agg, Agg::Var | Agg::Stddev) {
                        PrefixKind::Moments
                    } else {
                        PrefixKind::Float
                    };
                    (Op::Float(agg), Some((kind, g)))
                }
            };
            let prefix = prefix.map(|(kind, input)| slot(&mut prefix_keys, (mask, kind, input)));
            let state = if f.state {
                Some(match f.kind {
                    Kind::Agg(agg, _) => StateKind::of(agg, col_type.as_ref())
                        .ok_or_else(|| internal("state of an aggregate without one"))?,
                    Kind::Latest => StateKind::Latest,
                })
            } else {
                None
            };
            let out = match (&op, state) {
                (Op::Count | Op::Distinct(..), _) => Out::Count(vec![0; rows]),
                (Op::IntSum, Some(_)) => Out::I128(vec![0; rows]),
                (Op::IntSum | Op::ExtremeI64(..) | Op::Pick(_, Src::Int(_)), _) => {
                    Out::I64(vec![0; rows], unset(rows))
                }
                (Op::Float(agg), Some(_)) => {
                    let moments = matches!(agg, Agg::Var | Agg::Stddev);
                    let m = if moments { rows } else { 0 };
                    Out::Parts(state::FloatParts {
                        n: vec![0; rows],
                        s1: vec![Dd::ZERO; rows],
                        c: vec![0.0; m],
                        s2: vec![Dd::ZERO; m],
                        special: vec![[0; 3]; rows],
                    })
                }
                (Op::Float(_) | Op::ExtremeF64(..) | Op::Pick(_, Src::Float(_)), _) => {
                    Out::F64(vec![0.0; rows], unset(rows))
                }
                (Op::Pick(_, Src::Raw(_)) | Op::ExtremeDyn(_), _) => Out::Idx(vec![NULL_ID; rows]),
            };
            let keeps_value = matches!(
                state,
                Some(StateKind::Extreme { .. } | StateKind::First | StateKind::Last)
            ) || matches!((state, &op), (Some(_), Op::IntSum));
            jobs.push(Job {
                spec: f,
                op,
                edges: slot(&mut edges, e),
                mask,
                prefix,
                state,
                n: if keeps_value {
                    vec![0; rows]
                } else {
                    Vec::new()
                },
                col,
                col_type,
                out,
            });
        }
        let prefixes = prefix_keys
            .into_iter()
            .map(|(mask, kind, input)| PrefixDef { mask, kind, input })
            .collect();
        Ok(Blocks {
            jobs,
            edges,
            ttl,
            masks: layout.masks.len(),
            keys,
            prefixes,
        })
    }

    fn run(mut self, s: &Sorted, spine: &SpineSide) -> Result<Vec<ArrayRef>> {
        let nkeys = s.sblock.len() - 1;
        let mut ranges: Vec<Vec<(u32, u32)>> = vec![Vec::new(); self.edges.len()];
        let mut bounds: Vec<Vec<(i128, i128)>> = vec![Vec::new(); self.edges.len()];
        // per window, the first window with the same ends (itself if none)
        let mut ends_of: Vec<usize> = vec![0; self.edges.len()];
        let mut masks: Vec<LocalMask> = (0..self.masks).map(|_| Default::default()).collect();
        let mut prefixes: Vec<LocalPrefix> = (0..self.prefixes.len())
            .map(|_| Default::default())
            .collect();
        let mut scratch = Scratch::default();
        let mut kvs: Vec<Vec<i64>> = vec![Vec::new(); self.keys.len()];
        // per (key lane, window end group) and per (key lane, window)
        let mut segs: Vec<((usize, usize), Segments)> = Vec::new();
        let mut exts: Vec<((usize, usize), WindowExtremes)> = Vec::new();
        for k in 0..nkeys {
            let (ss, se) = (s.sblock[k] as usize, s.sblock[k + 1] as usize);
            if ss == se {
                continue;
            }
            let (bs, be) = (s.eblock[k] as usize, s.eblock[k + 1] as usize);
            let b = Block {
                ts: &s.ts[bs..be],
                idx: s.order.get(bs..be).unwrap_or_default(),
                st: &s.st[ss..se],
                rows: &s.srows[ss..se],
            };
            for (w, e) in self.edges.iter().enumerate() {
                match *e {
                    Edges::Window(w0) => b.bounds(|t| w0.edges(t), &mut bounds[w]),
                    Edges::Latest => b.bounds(|t| latest_edges(self.ttl, t), &mut bounds[w]),
                }
                // Windows with the same ends (1d and 90d without offsets) share the walk
                // to their ends.
                let last = |v: usize| bounds[v].iter().map(|x| x.1);
                ends_of[w] = (0..w).find(|&v| last(v).eq(last(w))).unwrap_or(w);
                let (done, rest) = ranges.split_at_mut(w);
                let same = (ends_of[w] < w).then(|| &done[ends_of[w]][..]);
                b.ranges(&bounds[w], same, &mut rest[0]);
            }
            for (lm, lane) in masks.iter_mut().zip(&s.masks) {
                lm.cnt.clear();
                lm.vpos.clear();
                lm.cnt.push(0);
                match lane {
                    Some(lane) => {
                        // `extend` over a mapped slice sizes once: no capacity check per value
                        let lane = &lane[bs..be];
                        let mut c = 0u32;
                        lm.cnt.extend(lane.iter().map(|&ok| {
                            c += (ok != 0) as u32;
                            c
                        }));
                        lm.vpos.reserve(c as usize);
                        lm.vpos
                            .extend((0..lane.len() as u32).filter(|&p| lane[p as usize] != 0));
                    }
                    None => {
                        lm.vpos.extend(0..(be - bs) as u32);
                        lm.cnt.extend(1..=(be - bs) as u32);
                    }
                }
            }
            let fx: Vec<&[f64]> = s.floats.iter().map(|x| &x[bs..be]).collect();
            let ix: Vec<&[i64]> = s.ints.iter().map(|x| &x[bs..be]).collect();
            for (p, def) in self.prefixes.iter().enumerate() {
                let m = &masks[def.mask];
                match def.kind {
                    PrefixKind::Int => prefixes[p].ints(ix[def.input], m),
                    kind => prefixes[p].floats(fx[def.input], m, kind == PrefixKind::Moments),
                }
            }
            for (kv, &(mask, src)) in kvs.iter_mut().zip(&self.keys) {
                let vpos = &masks[mask].vpos;
                kv.clear();
                match src {
                    Src::Float(g) => kv.extend(vpos.iter().map(|&p| f64_key(fx[g][p as usize]))),
                    Src::Int(g) => kv.extend(vpos.iter().map(|&p| ix[g][p as usize])),
                    Src::Raw(_) => {}
                }
            }
            // Min/max features whose windows end together (1d and 90d without offsets do)
            // share one pass over the key's values, and the min and the max of one window
            // one query: see `Segments`.
            segs.clear();
            // `exts[..n_exts]` are this key's; the buffers beyond are kept for reuse
            let mut n_exts = 0;
            for job in &self.jobs {
                let (Op::ExtremeF64(k, _) | Op::ExtremeI64(k, _)) = job.op else {
                    continue;
                };
                let (g, w, m) = (ends_of[job.edges], job.edges, &masks[job.mask]);
                if exts[..n_exts].iter().any(|(key, _)| *key == (k, w)) {
                    continue;
                }
                let s = match segs.iter().position(|(key, _)| *key == (k, g)) {
                    Some(s) => s,
                    None => {
                        let ends = ranges[g].iter().map(|&(_, h)| m.cnt[h as usize]).collect();
                        segs.push(((k, g), Segments::new(&kvs[k], ends)));
                        segs.len() - 1
                    }
                };
                let windows = ranges[w]
                    .iter()
                    .map(|&(l, h)| (m.cnt[l as usize] as usize, m.cnt[h as usize] as usize));
                if n_exts == exts.len() {
                    exts.push(((k, w), Vec::new()));
                }
                let (key, out) = &mut exts[n_exts];
                *key = (k, w);
                segs[s].1.query(windows, &mut scratch, out);
                n_exts += 1;
            }
            for job in &mut self.jobs {
                let ext = match job.op {
                    Op::ExtremeF64(k, _) | Op::ExtremeI64(k, _) => exts[..n_exts]
                        .iter()
                        .find(|(key, _)| *key == (k, job.edges))
                        .map(|(_, e)| &e[..]),
                    _ => None,
                };
                job.block(
                    &b,
                    &ranges[job.edges],
                    &masks[job.mask],
                    job.prefix.map(|p| &prefixes[p]),
                    (&fx, &ix),
                    ext,
                    &mut scratch,
                    spine,
                )?;
            }
        }
        self.jobs.into_iter().map(Job::finish).collect()
    }
}

impl Block<'_> {
    /// For each spine row of the block, the first and last admitted microsecond of its
    /// window (as i128, so no edge overflows), which keeps the pointer walks of
    /// [`Block::ranges`] to one comparison per step.
    fn bounds(&self, edges: impl Fn(i64) -> (Lower, Upper), out: &mut Vec<(i128, i128)>) {
        out.clear();
        out.extend(self.st.iter().map(|&t| admitted(edges(t))));
    }

    /// For each spine row of the block, the range `lo..hi` of block positions in its window
    /// given its [`Block::bounds`]; `same_ends` are ranges of windows with the same last
    /// microseconds, whose ends are taken instead of walked again.
    fn ranges(
        &self,
        bounds: &[(i128, i128)],
        same_ends: Option<&[(u32, u32)]>,
        out: &mut Vec<(u32, u32)>,
    ) {
        out.clear();
        let (mut lo, mut hi) = (0usize, 0usize);
        let ts = self.ts;
        for (r, &(first, last)) in bounds.iter().enumerate() {
            match same_ends {
                Some(s) => hi = s[r].1 as usize,
                None => {
                    while hi < ts.len() && ts[hi] as i128 <= last {
                        hi += 1;
                    }
                }
            }
            while lo < hi && (ts[lo] as i128) < first {
                lo += 1;
            }
            out.push((lo as u32, hi as u32));
        }
    }
}

impl LocalPrefix {
    fn ints(&mut self, x: &[i64], m: &LocalMask) {
        self.int.clear();
        let mut acc = 0i128;
        self.int.push(acc);
        for (p, &v) in x.iter().enumerate() {
            if m.cnt[p + 1] > m.cnt[p] {
                acc += v as i128;
            }
            self.int.push(acc);
        }
    }

    fn floats(&mut self, x: &[f64], m: &LocalMask, moments: bool) {
        // Shift by the key's first finite valid value: variance does not change, and the sums
        // of squares stay small enough to subtract without cancellation. (A NaN or infinite
        // shift would poison every finite value of the key.)
        self.shift = if moments {
            m.vpos
                .iter()
                .map(|&p| x[p as usize])
                .find(|v| v.is_finite())
                .unwrap_or(0.0)
        } else {
            0.0
        };
        let shift = Dd::from_f64(self.shift);
        self.p1.clear();
        self.p2.clear();
        self.special.clear();
        self.has_special = false;
        // Infinities and NaN are counted apart: they would turn every later prefix into NaN.
        let (mut s1, mut s2, mut sp) = (Dd::ZERO, Dd::ZERO, [0u32; 3]);
        let mut sum = RunningSum::default();
        self.p1.push(s1);
        if moments {
            self.p2.push(s2);
        }
        for (p, &v) in x.iter().enumerate() {
            if m.cnt[p + 1] > m.cnt[p] {
                if v.is_finite() {
                    if moments {
                        // x − shift exactly (as a double-double), so the sums do not depend
                        // on which shift a scan happened to pick: a stored state re-shifted
                        // for reuse finishes to the value a cold scan gives.
                        let y = Dd::from_f64(v).sub(shift);
                        s1 = s1.add(y);
                        s2 = s2.add(y.mul(y));
                    } else {
                        sum.add(v);
                    }
                } else {
                    if !self.has_special {
                        self.has_special = true;
                        self.special.resize(p + 1, [0; 3]);
                    }
                    sp[if v.is_nan() {
                        0
                    } else if v > 0.0 {
                        1
                    } else {
                        2
                    }] += 1;
                }
            }
            if moments {
                self.p1.push(s1);
                self.p2.push(s2);
            } else {
                self.p1.push(sum.value());
            }
            if self.has_special {
                self.special.push(sp);
            }
        }
    }

    /// NaN, +inf and −inf counts in block positions `l..h`.
    fn specials(&self, l: usize, h: usize) -> [u32; 3] {
        if !self.has_special {
            return [0; 3];
        }
        [0, 1, 2].map(|k| self.special[h][k] - self.special[l][k])
    }
}

impl Job<'_> {
    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        b: &Block,
        rg: &[(u32, u32)],
        m: &LocalMask,
        prefix: Option<&LocalPrefix>,
        (fx, ix): BlockLanes,
        ext: Option<&[Option<MinMax>]>,
        sc: &mut Scratch,
        spine: &SpineSide,
    ) -> Result<()> {
        // valid positions of a window, as indices into m.vpos
        let vr = |r: usize| {
            let (l, h) = rg[r];
            (m.cnt[l as usize] as usize, m.cnt[h as usize] as usize)
        };
        let count = |r: usize| {
            let (a, c) = vr(r);
            (c - a) as i64
        };
        let rows = b.rows.iter().map(|&row| row as usize);
        if !self.n.is_empty() {
            for (r, row) in rows.clone().enumerate() {
                self.n[row] = count(r);
            }
        }
        let nrows = b.rows.len();
        match (&mut self.op, &mut self.out) {
            (Op::Count, Out::Count(v)) => {
                for (r, row) in rows.enumerate() {
                    v[row] = count(r);
                }
            }
            (Op::Distinct(ids, counts), Out::Count(v)) => {
                let id = |j: usize| ids[b.idx[m.vpos[j] as usize] as usize] as usize;
                let (mut a0, mut b0, mut distinct) = (0usize, 0usize, 0i64);
                for (r, row) in rows.enumerate() {
                    let (a, c) = vr(r);
                    while b0 < c {
                        counts[id(b0)] += 1;
                        distinct += (counts[id(b0)] == 1) as i64;
                        b0 += 1;
                    }
                    while a0 < a {
                        counts[id(a0)] -= 1;
                        distinct -= (counts[id(a0)] == 0) as i64;
                        a0 += 1;
                    }
                    v[row] = distinct;
                }
                // leave the counts empty for the next key
                for j in a0..b0 {
                    counts[id(j)] -= 1;
                }
            }
            (Op::Pick(pick, src), out) => {
                let (pick, src) = (*pick, *src);
                for (r, row) in rows.enumerate() {
                    // the block position picked, if any
                    let p = match pick {
                        Pick::First | Pick::Last => {
                            let (a, c) = vr(r);
                            let j = if pick == Pick::First {
                                a
                            } else {
                                c.wrapping_sub(1)
                            };
                            (a < c).then(|| m.vpos[j] as usize)
                        }
                        // the last event; from a lane, present only if its value is
                        Pick::Latest => {
                            let (l, h) = (rg[r].0 as usize, rg[r].1 as usize);
                            (l < h).then(|| h - 1)
                        }
                    };
                    let Some(p) = p else { continue };
                    let present = pick != Pick::Latest || m.cnt[p + 1] > m.cnt[p];
                    match (src, &mut *out) {
                        (Src::Raw(_), Out::Idx(v)) => v[row] = b.idx[p],
                        (Src::Float(g), Out::F64(v, valid)) if present => {
                            v[row] = fx[g][p];
                            valid.set_bit(row, true);
                        }
                        (Src::Int(g), Out::I64(v, valid)) if present => {
                            v[row] = ix[g][p];
                            valid.set_bit(row, true);
                        }
                        _ => {}
                    }
                }
            }
            (Op::ExtremeF64(_, max) | Op::ExtremeI64(_, max), out) => {
                let ext = ext.ok_or_else(|| internal("min/max without its window extremes"))?;
                for (row, e) in rows.zip(ext) {
                    let Some((lo, hi)) = *e else { continue };
                    let k = if *max { hi } else { lo };
                    match out {
                        Out::F64(v, valid) => {
                            v[row] = key_f64(k);
                            valid.set_bit(row, true);
                        }
                        Out::I64(v, valid) => {
                            v[row] = k;
                            valid.set_bit(row, true);
                        }
                        _ => return Err(internal("min/max output")),
                    }
                }
            }
            (Op::ExtremeDyn(better), Out::Idx(v)) => {
                let ev = |p: usize| b.idx[p];
                sliding_best(
                    (0..nrows).map(vr),
                    &m.vpos,
                    ev,
                    |a, c| better.is(a, c),
                    &mut sc.best,
                );
                for (row, p) in rows.zip(&sc.best) {
                    if let Some(p) = p {
                        v[row] = b.idx[*p as usize];
                    }
                }
            }
            (Op::IntSum, out) => {
                let p = prefix.ok_or_else(|| internal("integer sum without prefix sums"))?;
                for (r, row) in rows.enumerate() {
                    let (l, h) = (rg[r].0 as usize, rg[r].1 as usize);
                    let s = p.int[h] - p.int[l];
                    match out {
                        Out::I128(v) => v[row] = s,
                        Out::I64(v, valid) if count(r) > 0 => {
                            v[row] = i64::try_from(s).map_err(|_| Error::SumOverflow {
                                feature: self.spec.label.clone(),
                                row: spine.rid.value(row),
                            })?;
                            valid.set_bit(row, true);
                        }
                        _ => {}
                    }
                }
            }
            (Op::Float(agg), Out::Parts(parts)) => {
                let p = prefix.ok_or_else(|| internal("state without its prefix sums"))?;
                let moments = matches!(agg, Agg::Var | Agg::Stddev);
                for (r, row) in rows.enumerate() {
                    let (l, h) = (rg[r].0 as usize, rg[r].1 as usize);
                    parts.n[row] = count(r);
                    parts.s1[row] = p.p1[h].sub(p.p1[l]);
                    if moments {
                        parts.s2[row] = p.p2[h].sub(p.p2[l]);
                        parts.c[row] = if l < h { p.shift } else { 0.0 };
                    }
                    parts.special[row] = p.specials(l, h).map(|x| x as i64);
                }
            }
            (Op::Float(agg), Out::F64(v, valid)) => {
                let p = prefix.ok_or_else(|| internal("numeric aggregate without prefix sums"))?;
                let moments = matches!(agg, Agg::Var | Agg::Stddev);
                let min_n = if moments { 2 } else { 1 };
                for (r, row) in rows.enumerate() {
                    let c = count(r);
                    if c < min_n {
                        continue;
                    }
                    let (l, h) = (rg[r].0 as usize, rg[r].1 as usize);
                    let [nan, pinf, ninf] = p.specials(l, h);
                    v[row] = if nan > 0 || pinf > 0 || ninf > 0 {
                        if nan > 0 || (pinf > 0 && ninf > 0) || moments {
                            f64::NAN
                        } else if pinf > 0 {
                            f64::INFINITY
                        } else {
                            f64::NEG_INFINITY
                        }
                    } else {
                        let sum = p.p1[h].sub(p.p1[l]);
                        match agg {
                            Agg::Sum => sum.to_f64(),
                            Agg::Mean => sum.div_f64(c as f64).to_f64(),
                            _ => {
                                let sq = p.p2[h].sub(p.p2[l]);
                                let var = sq
                                    .sub(sum.mul(sum).div_f64(c as f64))
                                    .div_f64((c - 1) as f64)
                                    .to_f64()
                                    .max(0.0);
                                if *agg == Agg::Var { var } else { var.sqrt() }
                            }
                        }
                    };
                    valid.set_bit(row, true);
                }
            }
            _ => return Err(internal("feature output of the wrong shape")),
        }
        Ok(())
    }

    /// The finished column: values, or states for features that keep them.
    fn finish(self) -> Result<ArrayRef> {
        let Job {
            op,
            state,
            n,
            col,
            col_type,
            out,
            ..
        } = self;
        let value: ArrayRef = match out {
            Out::Count(v) => {
                if state == Some(StateKind::Count) {
                    return state::with_value(StateKind::Count, v, None);
                }
                Arc::new(Int64Array::from(v))
            }
            Out::I128(s) => return state::int_sum(n, s),
            Out::Parts(parts) => {
                return parts.build(matches!(state, Some(StateKind::Float { moments: true })));
            }
            Out::I64(v, mut valid) => {
                let a = Int64Array::new(v.into(), Some(NullBuffer::new(valid.finish())));
                match (&op, &col_type) {
                    (Op::ExtremeI64(..), Some(t)) => cast(&a, t)?,
                    _ => Arc::new(a),
                }
            }
            Out::F64(v, mut valid) => {
                let a = Float64Array::new(v.into(), Some(NullBuffer::new(valid.finish())));
                match (&op, &col_type) {
                    (Op::ExtremeF64(..), Some(t)) => cast(&a, t)?,
                    _ => Arc::new(a),
                }
            }
            Out::Idx(v) => {
                let idx = v.into_iter().map(|i| (i != NULL_ID).then_some(i));
                take_values(col.as_ref(), idx)?
            }
        };
        match state {
            None => Ok(value),
            // a latest value's window holds one event, counted when its value is present
            Some(StateKind::Latest) => {
                let n = (0..value.len()).map(|r| value.is_valid(r) as i64).collect();
                state::with_value(StateKind::Latest, n, Some(value))
            }
            Some(kind) => state::with_value(kind, n, Some(value)),
        }
    }
}

/// Buffers reused by every min/max feature of a partition.
#[derive(Default)]
struct Scratch {
    sfx: Vec<MinMax>,
    best: Vec<Option<u32>>,
    tails: Vec<Option<MinMax>>,
    spans: Vec<(usize, usize)>,
}

/// A min and a max carried together: one pass and one query serve a window's `min` and
/// `max` features, which feature sets usually ask for in pairs.
type MinMax = (i64, i64);

/// Per spine row of a block, its window's min and max (`None` when the window is empty).
type WindowExtremes = Vec<Option<MinMax>>;

const NO_MIN_MAX: MinMax = (i64::MAX, i64::MIN);

#[inline(always)]
fn min_max(a: MinMax, b: MinMax) -> MinMax {
    (a.0.min(b.0), a.1.max(b.1))
}

/// Sliding min and max for windows that all end where a spine row's window ends, in one pass
/// over the values shared by every such window. The values split into segments, segment `r`
/// running from the previous spine row's window end to row `r`'s; a window `a..end(r)` is
/// then the suffix of the segment holding `a` (kept per value) plus whole segments up to `r`,
/// whose extremes slide over a list as long as the rows, not the values. A window's min and
/// max cost about one step per spine row instead of two per event; the values are read once
/// for all.
struct Segments {
    ends: Vec<u32>,
    /// `suffix[j]`: the extremes of values `j..` to the end of j's segment.
    suffix: Vec<MinMax>,
    /// Each segment's extremes ([`NO_MIN_MAX`] when empty).
    whole: Vec<MinMax>,
}

impl Segments {
    fn new(keys: &[i64], ends: Vec<u32>) -> Segments {
        let last = ends.last().map_or(0, |&e| e as usize);
        let mut suffix = vec![NO_MIN_MAX; last];
        let mut whole = Vec::with_capacity(ends.len());
        let mut start = 0usize;
        for &e in &ends {
            let e = e as usize;
            let mut acc = NO_MIN_MAX;
            for j in (start..e).rev() {
                acc = min_max(acc, (keys[j], keys[j]));
                suffix[j] = acc;
            }
            whole.push(acc);
            start = start.max(e);
        }
        Segments {
            ends,
            suffix,
            whole,
        }
    }

    /// The extremes of each window `a..b` (row `r`'s, with `b` its window end), into `out`.
    fn query(
        &self,
        windows: impl Iterator<Item = (usize, usize)>,
        sc: &mut Scratch,
        out: &mut Vec<Option<MinMax>>,
    ) {
        out.clear();
        sc.spans.clear();
        let (mut s, mut first) = (0usize, 0usize);
        for (r, (a, b)) in windows.enumerate() {
            debug_assert_eq!(b, self.ends[r] as usize);
            if a >= b {
                out.push(None);
                // empty, and keeping both ends where they were keeps them non-decreasing
                sc.spans.push((first, first));
                continue;
            }
            while self.ends[s] as usize <= a {
                s += 1;
            }
            out.push(Some(self.suffix[a]));
            first = s + 1;
            sc.spans.push((first, r + 1));
        }
        let whole = &self.whole;
        sliding_extreme(
            sc.spans.iter().copied(),
            |j| whole[j],
            &mut sc.sfx,
            NO_MIN_MAX,
            min_max,
            &mut sc.tails,
        );
        for (e, t) in out.iter_mut().zip(&sc.tails) {
            if let (Some(e), Some(t)) = (e.as_mut(), t) {
                *e = min_max(*e, *t);
            }
        }
    }
}

/// Sliding-window extreme with a monotonic deque: for each window (as a range of indices
/// into `vpos`, both ends non-decreasing), the position of the best value, or `None` when the
/// window is empty. The deque keeps values beside positions so comparisons read no arrays.
fn sliding_best<T: Copy>(
    ranges: impl Iterator<Item = (usize, usize)>,
    vpos: &[u32],
    value: impl Fn(usize) -> T,
    better: impl Fn(T, T) -> bool,
    out: &mut Vec<Option<u32>>,
) {
    // A queue in a Vec: `head` is the front; popped fronts are dropped in bulk when they
    // dominate, so pushes and pops are plain Vec operations without wrap-around.
    let mut q: Vec<(T, u32)> = Vec::new();
    let mut head = 0usize;
    let mut next = 0usize;
    out.clear();
    for (a, b) in ranges {
        while next < b {
            let x = value(vpos[next] as usize);
            while q.len() > head && !better(q[q.len() - 1].0, x) {
                q.pop();
            }
            q.push((x, next as u32));
            next += 1;
        }
        while head < q.len() && (q[head].1 as usize) < a {
            head += 1;
        }
        if head > 1024 && head * 2 > q.len() {
            q.drain(..head);
            head = 0;
        }
        out.push((a < b && head < q.len()).then(|| vpos[q[head].1 as usize]));
    }
}

/// An i64 whose order is the IEEE total order of the f64 (and back: the map is its own inverse).
#[inline]
fn f64_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

/// Sliding extreme of `key` over windows given as index ranges `a..b` with both ends
/// non-decreasing. A two-stack queue: the back is a running extreme, the front holds suffix
/// extremes rebuilt (once per element at most) when the window start passes it. No
/// data-dependent branches, so it runs at memory speed on random data.
///
/// `sfx[j - base]` holds the extreme of `key(j)..key(mid)` for the front `base..mid`; it only
/// ever spans one window, so it stays small and is reused across windows and features.
#[inline(always)]
fn sliding_extreme<T: Copy>(
    ranges: impl Iterator<Item = (usize, usize)>,
    key: impl Fn(usize) -> T,
    sfx: &mut Vec<T>,
    identity: T,
    ext: impl Fn(T, T) -> T,
    out: &mut Vec<Option<T>>,
) {
    let (mut base, mut mid, mut next, mut back) = (0usize, 0usize, 0usize, identity);
    out.clear();
    for (a, b) in ranges {
        while next < b {
            back = ext(back, key(next));
            next += 1;
        }
        if a >= mid {
            base = a;
            if sfx.len() < next - a {
                sfx.resize(next - a, identity);
            }
            let mut acc = identity;
            for j in (a..next).rev() {
                acc = ext(acc, key(j));
                sfx[j - a] = acc;
            }
            mid = next;
            back = identity;
        }
        out.push((a < b).then(|| ext(sfx[a - base], back)));
    }
}

#[inline]
fn key_f64(k: i64) -> f64 {
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

fn direct_moment(agg: Agg, v: &[f64]) -> Option<f64> {
    let n = v.len();
    match agg {
        _ if n == 0 => None,
        Agg::Sum => Some(v.iter().fold(Dd::ZERO, |s, &x| s.add_f64(x)).to_f64()),
        Agg::Mean => Some(
            v.iter()
                .fold(Dd::ZERO, |s, &x| s.add_f64(x))
                .div_f64(n as f64)
                .to_f64(),
        ),
        _ if n < 2 => None,
        _ => {
            let mean = v.iter().sum::<f64>() / n as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
            Some(if agg == Agg::Var { var } else { var.sqrt() })
        }
    }
}

fn internal(what: &str) -> Error {
    Error::Internal(what.to_string())
}

/// Gather values by event index (`None` = null) keeping the column's type.
fn take_values(col: Option<&ArrayRef>, idx: impl Iterator<Item = Option<u32>>) -> Result<ArrayRef> {
    let col = col.ok_or_else(|| internal("value feature without a column"))?;
    let idx: UInt32Array = idx.collect();
    Ok(take(col.as_ref(), &idx, None)?)
}

pub(crate) fn as_i64(col: &ArrayRef, label: &str) -> Result<Int64Array> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let a = cast_with_options(col, &DataType::Int64, &opts).map_err(|e| {
        Error::Source(format!(
            "feature `{label}`: column values do not fit in Int64: {e}"
        ))
    })?;
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| internal("i64 cast"))
}

pub(crate) fn as_f64(col: &ArrayRef) -> Result<Float64Array> {
    let a = cast(col, &DataType::Float64)?;
    a.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| internal("f64 cast"))
}

/// "Strictly better than" for min/max, specialized for the common column types.
enum Better {
    I64(Int64Array, bool),
    F64(Float64Array, bool),
    Str(StringArray, bool),
    Dyn(arrow::array::DynComparator, bool),
}

impl Better {
    fn new(col: &ArrayRef, max: bool) -> Result<Better> {
        Ok(match col.data_type() {
            DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8 => {
                Better::I64(as_i64(col, "")?, max)
            }
            DataType::Float64 | DataType::Float32 => Better::F64(as_f64(col)?, max),
            DataType::Utf8 => Better::Str(
                col.as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .ok_or_else(|| internal("str"))?,
                max,
            ),
            _ => Better::Dyn(
                make_comparator(col.as_ref(), col.as_ref(), SortOptions::default())?,
                max,
            ),
        })
    }

    /// Whether event `a`'s value beats event `b`'s (ties do not).
    #[inline]
    fn is(&self, a: u32, b: u32) -> bool {
        use std::cmp::Ordering;
        let (a, b) = (a as usize, b as usize);
        let (ord, max) = match self {
            Better::I64(v, m) => (v.value(a).cmp(&v.value(b)), *m),
            Better::F64(v, m) => (v.value(a).total_cmp(&v.value(b)), *m),
            Better::Str(v, m) => (v.value(a).cmp(v.value(b)), *m),
            Better::Dyn(c, m) => (c(a, b), *m),
        };
        if max {
            ord == Ordering::Greater
        } else {
            ord == Ordering::Less
        }
    }
}

/// Dense ids of a column's values (equal values, equal ids) and how many there are.
fn value_ids(col: &ArrayRef) -> Result<(Vec<u32>, usize)> {
    let conv = RowConverter::new(vec![SortField::new(col.data_type().clone())])?;
    let rows = conv.convert_columns(std::slice::from_ref(col))?;
    let mut map: HashMap<&[u8], u32, ahash::RandomState> = HashMap::default();
    let ids = (0..rows.num_rows())
        .map(|i| {
            let next = map.len() as u32;
            *map.entry(rows.row(i).data()).or_insert(next)
        })
        .collect();
    Ok((ids, map.len()))
}

/// Counting sort of the rows that pass `ok` by key id: `(block starts, row indices)`, rows
/// of one key in their original order.
fn group_by_key(ids: &[u32], nkeys: usize, ok: impl Fn(usize) -> bool) -> (Vec<u32>, Vec<u32>) {
    let mut block = vec![0u32; nkeys + 1];
    for (i, &id) in ids.iter().enumerate() {
        if ok(i) {
            block[id as usize + 1] += 1;
        }
    }
    for k in 0..nkeys {
        block[k + 1] += block[k];
    }
    let mut fill = block.clone();
    let mut rows = vec![0u32; block[nkeys] as usize];
    for (i, &id) in ids.iter().enumerate() {
        if ok(i) {
            rows[fill[id as usize] as usize] = i as u32;
            fill[id as usize] += 1;
        }
    }
    (block, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_core::semantics::Closed;

    const H: i64 = 3_600_000_000;

    fn feature(kind: Kind) -> FeatureSpec {
        FeatureSpec {
            name: "f".into(),
            label: "v:f".into(),
            kind,
            column: Some(0),
            filter: None,
            output_type: DataType::Float64,
            state: false,
        }
    }

    fn window(length: Option<i64>, offset: i64, closed: Closed) -> Window {
        Window {
            length: length.map(Duration::from_micros),
            offset: Duration::from_micros(offset),
            closed,
        }
    }

    /// The cutoff is exact: an event a microsecond before it is in no finite window of any
    /// spine row from `min_t` on and inside every lifetime window's end, and the cutoff
    /// itself is in the earliest row's window of the feature that sets it.
    #[test]
    fn old_events_end_exactly_where_the_earliest_window_begins() {
        let closed = [Closed::Right, Closed::Left, Closed::Both, Closed::Neither];
        let min_t = 1000 * H;
        for len in [Some(H), Some(3 * H)] {
            for offset in [0, 2 * H, 5 * H] {
                for &c in &closed {
                    for &lc in &closed {
                        // a lifetime window that ends before every finite one starts sets it
                        for (ttl, loff) in [(None, 0), (Some(2 * H), 0), (None, 10 * H)] {
                            let mut fs = vec![
                                feature(Kind::Agg(Agg::Sum, window(len, offset, c))),
                                feature(Kind::Agg(Agg::Last, window(None, loff, lc))),
                            ];
                            if ttl.is_some() {
                                fs.push(feature(Kind::Latest));
                            }
                            let types = [DataType::Float64];
                            let layout = Lanes::new(&fs, &types, false).unwrap();
                            let ttl = ttl.map(Duration::from_micros);
                            let old = layout.old_events(&fs, ttl, min_t).unwrap();
                            assert_eq!(old.keep, vec![Keep::Last(0)]);
                            let cut = old.cutoff;
                            let edges = |f: &FeatureSpec, t| feature_edges(f, ttl, t);
                            let mut tight = false;
                            for f in &fs {
                                for t in [min_t, min_t + 1, min_t + H, min_t + 50 * H] {
                                    let (lo, hi) = edges(f, t);
                                    match lo {
                                        Lower::Unbounded => assert!(hi.admits(cut - 1)),
                                        _ => assert!(!(lo.admits(cut - 1) && hi.admits(cut - 1))),
                                    }
                                }
                                let (lo, hi) = edges(f, min_t);
                                tight |= match lo {
                                    Lower::Unbounded => !hi.admits(cut),
                                    _ => lo.admits(cut),
                                };
                            }
                            assert!(tight, "cutoff {cut} is not where a window begins");
                        }
                    }
                }
            }
        }
    }

    /// The span a partition keeps is exact: the microsecond before its start is in no window
    /// of any row between the earliest and the latest, its first and last microseconds are
    /// in one, and so is the microsecond after its end of no window.
    #[test]
    fn needed_span_holds_every_window_of_the_partition_and_no_more() {
        let closed = [Closed::Right, Closed::Left, Closed::Both, Closed::Neither];
        let (min_t, max_t) = (1000 * H, 1200 * H + 7);
        for len in [Some(H), Some(3 * H), None] {
            for offset in [0, 2 * H] {
                for &c in &closed {
                    for ttl in [None, Some(5 * H)] {
                        let mut fs = vec![
                            feature(Kind::Agg(Agg::Sum, window(len, offset, c))),
                            feature(Kind::Agg(Agg::Min, window(Some(2 * H), 0, Closed::Right))),
                        ];
                        if ttl.is_some() {
                            fs.push(feature(Kind::Latest));
                        }
                        let ttl = ttl.map(Duration::from_micros);
                        let (first, last) = needed_span(&fs, ttl, min_t, max_t);
                        let in_some = |x: i64| {
                            fs.iter().any(|f| {
                                [min_t, min_t + 1, (min_t + max_t) / 2, max_t - 1, max_t]
                                    .iter()
                                    .any(|&t| {
                                        let (lo, hi) = feature_edges(f, ttl, t);
                                        lo.admits(x) && hi.admits(x)
                                    })
                            })
                        };
                        assert!(in_some(last) && !in_some(last.saturating_add(1)));
                        if len.is_none() {
                            assert_eq!(first, i64::MIN);
                        } else {
                            assert!(in_some(first) && !in_some(first - 1), "{first}");
                        }
                    }
                }
            }
        }
        assert_eq!(needed_span(&[], None, min_t, max_t), (i64::MAX, i64::MIN));
    }

    #[test]
    fn lifetime_aggregates_of_many_events_keep_every_event() {
        let lifetime = window(None, 0, Closed::Right);
        let types = [DataType::Float64];
        for agg in [Agg::Count, Agg::Sum, Agg::Min, Agg::Mean] {
            let fs = vec![feature(Kind::Agg(agg, lifetime))];
            let layout = Lanes::new(&fs, &types, false).unwrap();
            assert!(layout.old_events(&fs, None, 0).is_none(), "{agg:?}");
        }
        // a kept state counts the window's events
        let mut f = feature(Kind::Agg(Agg::Last, window(Some(H), 0, Closed::Right)));
        f.state = true;
        let layout = Lanes::new(std::slice::from_ref(&f), &types, false).unwrap();
        assert!(layout.old_events(&[f], None, 0).is_none());
        // values kept as Arrow arrays
        let fs = vec![feature(Kind::Latest)];
        let layout = Lanes::new(&fs, &[DataType::Utf8], false).unwrap();
        assert!(layout.old_events(&fs, None, 0).is_none());
    }
}
