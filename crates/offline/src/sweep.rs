//! The per-partition point-in-time sweep (DESIGN §4).
//!
//! One partition's spine rows and events are grouped by entity key with a counting sort on
//! dense key ids, events ordered inside each key by (event time, created time, source order)
//! — skipped where the source is already in that order — and then every window of every
//! requested feature is answered from the same sorted arrays: moving pointers give each spine
//! row its window as a range of sorted positions; prefix sums (double-double for floats, i128
//! for integers) answer count/sum/mean/var/stddev, positions of valid values answer first/last,
//! a monotonic deque answers min/max and a sliding multiset answers count_distinct. Window
//! ranges only move forward over the whole partition, because keys occupy consecutive blocks,
//! so each structure is swept once.
//!
//! Window edges come from `quiver_core::semantics`; nothing here decides what is in a window.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, UInt32Array, UInt64Array,
    make_comparator,
};
use arrow::compute::kernels::cast::{CastOptions, cast_with_options};
use arrow::compute::{SortOptions, cast, take};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use quiver_core::Duration;
use quiver_core::semantics::{Agg, Lower, Upper, Window, latest_edges};

use crate::dd::Dd;
use crate::state::{self, StateKind};
use crate::{Error, Result};

const NULL_ID: u32 = u32::MAX;

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

/// The spine rows of one partition. `t` is microseconds; keys are already normalized.
pub struct SpineSide {
    pub rid: UInt64Array,
    pub keys: Vec<ArrayRef>,
    pub t: Int64Array,
}

/// The events of one partition, in arrival order; `seq` is the source order.
pub struct EventSide {
    pub keys: Vec<ArrayRef>,
    pub t: Int64Array,
    pub created: Option<Int64Array>,
    pub seq: UInt64Array,
    pub values: Vec<ArrayRef>,
    pub filters: Vec<BooleanArray>,
}

/// Compute every feature for every spine row of the partition. Returns the spine row ids
/// and one array per feature, row-aligned with them.
pub fn sweep(
    features: &[FeatureSpec],
    ttl: Option<Duration>,
    filter_created: bool,
    spine: &SpineSide,
    ev: &EventSide,
) -> Result<(ArrayRef, Vec<ArrayRef>)> {
    let s = Sorted::new(spine, ev)?;
    let rid = take(&spine.rid, &UInt32Array::from(s.srows.clone()), None)?;
    let mut ranges: HashMap<Window, (Vec<u32>, Vec<u32>)> = HashMap::new();
    let mut latest: Option<(Vec<u32>, Vec<u32>)> = None;
    let mut masks: HashMap<(Option<usize>, Option<usize>), Mask> = HashMap::new();
    let mut prefixes: HashMap<(Option<usize>, Option<usize>, PrefixKind), Prefix> = HashMap::new();
    let mut scratch = Scratch::default();
    // Columns and filters are gathered into sorted order once, so that every structure below
    // reads them sequentially and results are positions in that order.
    let order = UInt32Array::from(s.order.clone());
    let mut cols: HashMap<usize, ArrayRef> = HashMap::new();
    let mut filters: HashMap<usize, BooleanArray> = HashMap::new();
    for f in features {
        if let Some(c) = f.column
            && !cols.contains_key(&c)
        {
            cols.insert(c, take(ev.values[c].as_ref(), &order, None)?);
        }
        if let Some(i) = f.filter
            && !filters.contains_key(&i)
        {
            let sorted = take(&ev.filters[i], &order, None)?;
            let sorted = sorted
                .as_any()
                .downcast_ref::<BooleanArray>()
                .cloned()
                .ok_or_else(|| internal("filter"))?;
            filters.insert(i, sorted);
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
        let array = if filter_created {
            s.direct(f, col, filter, lo, hi, spine)?
        } else {
            let mask = &*masks
                .entry((f.column, f.filter))
                .or_insert_with(|| s.mask(col, filter));
            // Prefix sums are shared by every window and aggregate over the same column and mask.
            let kind = match (f.kind, col) {
                (Kind::Agg(Agg::Sum, _), Some(c)) if c.data_type().is_integer() => {
                    Some(PrefixKind::Int)
                }
                (Kind::Agg(Agg::Sum | Agg::Mean, _), Some(_)) => Some(PrefixKind::Float),
                (Kind::Agg(Agg::Var | Agg::Stddev, _), Some(_)) => Some(PrefixKind::Moments),
                _ => None,
            };
            let prefix = match (kind, col) {
                (Some(kind), Some(c)) => {
                    let key = (f.column, f.filter, kind);
                    if let std::collections::hash_map::Entry::Vacant(e) = prefixes.entry(key) {
                        e.insert(s.prefix(c, mask, &f.label, kind)?);
                    }
                    prefixes.get(&key)
                }
                _ => None,
            };
            s.fast(f, col, mask, prefix, &mut scratch, lo, hi, spine)?
        };
        out.push(array);
        crate::profile::stage(format_args!("sweep: feature {}", f.name));
    }
    Ok((rid, out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrefixKind {
    Int,
    Float,
    Moments,
}

/// Buffers reused by every min/max feature of a partition.
#[derive(Default)]
struct Scratch {
    sfx: Vec<i64>,
}

enum Prefix {
    Int(Vec<i128>),
    Float {
        p1: Vec<Dd>,
        p2: Vec<Dd>,
        special: Option<Vec<[u32; 3]>>,
        /// Per sorted position, the shift its key's moments are taken about.
        shift: Vec<f64>,
    },
}

/// Valid positions (value non-null and filter true) in sorted event order.
struct Mask {
    /// `cnt[p]` = number of valid positions before `p`.
    cnt: Vec<u32>,
    /// The valid positions, ascending.
    vpos: Vec<u32>,
}

struct Sorted {
    /// Event indices in (key, time, created, seq) order.
    order: Vec<u32>,
    /// Event times in that order.
    ts: Vec<i64>,
    /// Created times in that order (null = earliest), when the source has them.
    created: Option<Vec<i64>>,
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

impl Sorted {
    fn new(spine: &SpineSide, ev: &EventSide) -> Result<Sorted> {
        let (sid, eid, nkeys) = key_ids(&spine.keys, &ev.keys)?;
        crate::profile::stage(format_args!("sweep: key ids"));
        let t = ev.t.values();
        let ev_ok = |i: usize| eid[i] != NULL_ID && ev.t.is_valid(i);
        let (eblock, mut order) = group_by_key(&eid, nkeys, ev_ok);
        let created: Option<Vec<i64>> = ev.created.as_ref().map(|c| {
            (0..c.len())
                .map(|i| if c.is_valid(i) { c.value(i) } else { i64::MIN })
                .collect()
        });
        let seq = ev.seq.values();
        let cr = created.as_deref();
        // Each key's events are gathered into a contiguous scratch of sort keys, so the sort
        // compares cached values instead of chasing indices into the whole partition.
        let mut ts = vec![0i64; order.len()];
        let mut created_sorted = cr.map(|_| vec![0i64; order.len()]);
        let mut scratch: Vec<(i64, i64, u64, u32)> = Vec::new();
        for k in 0..nkeys {
            let (bs, be) = (eblock[k] as usize, eblock[k + 1] as usize);
            scratch.clear();
            scratch.extend(order[bs..be].iter().map(|&i| {
                let iu = i as usize;
                (t[iu], cr.map_or(0, |c| c[iu]), seq[iu], i)
            }));
            // Sources stored sorted by (key, time) skip the sort: checking is one pass.
            if !scratch.windows(2).all(|w| w[0] <= w[1]) {
                scratch.sort_unstable();
            }
            for (j, &(et, ct, _, i)) in scratch.iter().enumerate() {
                order[bs + j] = i;
                ts[bs + j] = et;
                if let Some(cs) = created_sorted.as_mut() {
                    cs[bs + j] = ct;
                }
            }
        }
        let created = created_sorted;
        crate::profile::stage(format_args!("sweep: events grouped and sorted by key"));

        let stv = spine.t.values();
        let sp_ok = |i: usize| sid[i] != NULL_ID && spine.t.is_valid(i);
        let (sblock, mut srows) = group_by_key(&sid, nkeys, sp_ok);
        for k in 0..nkeys {
            srows[sblock[k] as usize..sblock[k + 1] as usize]
                .sort_unstable_by_key(|&i| stv[i as usize]);
        }
        let n_valid = srows.len();
        let st = srows.iter().map(|&i| stv[i as usize]).collect();
        srows.extend((0..sid.len() as u32).filter(|&i| !sp_ok(i as usize)));
        Ok(Sorted {
            order,
            ts,
            created,
            eblock,
            srows,
            n_valid,
            sblock,
            st,
        })
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

    fn mask(&self, col: Option<&ArrayRef>, filter: Option<&BooleanArray>) -> Mask {
        let mut cnt = Vec::with_capacity(self.order.len() + 1);
        let mut vpos = Vec::new();
        cnt.push(0u32);
        let col_nulls = col.and_then(|c| c.logical_nulls());
        for p in 0..self.order.len() {
            let ok = col_nulls.as_ref().is_none_or(|n| n.is_valid(p))
                && filter.is_none_or(|f| f.is_valid(p) && f.value(p));
            if ok {
                vpos.push(p as u32);
            }
            cnt.push(vpos.len() as u32);
        }
        Mask { cnt, vpos }
    }

    fn rid(&self, spine: &SpineSide, r: usize) -> u64 {
        spine.rid.value(self.srows[r] as usize)
    }

    /// Features over contiguous ranges, for sources without `filter_created`.
    #[allow(clippy::too_many_arguments)]
    fn fast(
        &self,
        f: &FeatureSpec,
        col: Option<&ArrayRef>,
        m: &Mask,
        prefix: Option<&Prefix>,
        scratch: &mut Scratch,
        lo: &[u32],
        hi: &[u32],
        spine: &SpineSide,
    ) -> Result<ArrayRef> {
        let n = self.srows.len();
        // valid positions of a window, as indices into m.vpos
        let vr = |r: usize| {
            (
                m.cnt[lo[r] as usize] as usize,
                m.cnt[hi[r] as usize] as usize,
            )
        };
        if f.state {
            return self.state_of(f, col, m, prefix, scratch, lo, hi, spine);
        }
        let agg = match f.kind {
            Kind::Latest => {
                let idx = (0..n).map(|r| (r < self.n_valid && lo[r] < hi[r]).then(|| hi[r] - 1));
                return take_values(col, idx);
            }
            Kind::Agg(agg, _) => agg,
        };
        let valid_rows = 0..self.n_valid;
        Ok(match agg {
            Agg::Count => {
                let mut v: Vec<i64> = valid_rows
                    .map(|r| (m.cnt[hi[r] as usize] - m.cnt[lo[r] as usize]) as i64)
                    .collect();
                v.resize(n, 0);
                Arc::new(Int64Array::from(v))
            }
            Agg::First | Agg::Last => {
                let idx = (0..n).map(|r| {
                    if r >= self.n_valid {
                        return None;
                    }
                    let (a, b) = vr(r);
                    (a < b).then(|| {
                        let j = if agg == Agg::First { a } else { b - 1 };
                        m.vpos[j]
                    })
                });
                take_values(col, idx)?
            }
            Agg::Min | Agg::Max => {
                let col = col.ok_or_else(|| internal("min/max without a column"))?;
                let max = agg == Agg::Max;
                let ranges = (0..self.n_valid).map(vr);
                match Better::new(col, max)? {
                    // Numbers: a branch-free sliding extreme over order-preserving i64 keys.
                    Better::F64(v, _) => {
                        let v = v.values();
                        let key = |j: usize| f64_key(v[m.vpos[j] as usize]);
                        let mut out: Vec<Option<f64>> =
                            sliding_extreme(ranges, key, &mut scratch.sfx, max)
                                .into_iter()
                                .map(|k| k.map(key_f64))
                                .collect();
                        out.resize(n, None);
                        cast(
                            &(Arc::new(Float64Array::from(out)) as ArrayRef),
                            col.data_type(),
                        )?
                    }
                    Better::I64(v, _) => {
                        let v = v.values();
                        let key = |j: usize| v[m.vpos[j] as usize];
                        let mut out = sliding_extreme(ranges, key, &mut scratch.sfx, max);
                        out.resize(n, None);
                        cast(
                            &(Arc::new(Int64Array::from(out)) as ArrayRef),
                            col.data_type(),
                        )?
                    }
                    other => {
                        let mut idx =
                            sliding_best(ranges, &m.vpos, |p| p as u32, |a, b| other.is(a, b));
                        idx.resize(n, None);
                        take_values(Some(col), idx.into_iter())?
                    }
                }
            }
            Agg::CountDistinct => {
                let col = col.ok_or_else(|| internal("count_distinct without a column"))?;
                let ids = value_ids(col)?;
                let mut counts = vec![0u32; ids.1];
                let (mut a0, mut b0, mut distinct) = (0usize, 0usize, 0i64);
                let mut v = Vec::with_capacity(n);
                for r in 0..self.n_valid {
                    let (a, b) = vr(r);
                    while b0 < b {
                        let id = ids.0[m.vpos[b0] as usize] as usize;
                        counts[id] += 1;
                        distinct += (counts[id] == 1) as i64;
                        b0 += 1;
                    }
                    while a0 < a {
                        let id = ids.0[m.vpos[a0] as usize] as usize;
                        counts[id] -= 1;
                        distinct -= (counts[id] == 0) as i64;
                        a0 += 1;
                    }
                    v.push(distinct);
                }
                v.resize(n, 0);
                Arc::new(Int64Array::from(v))
            }
            Agg::Sum | Agg::Mean | Agg::Var | Agg::Stddev => {
                let prefix =
                    prefix.ok_or_else(|| internal("numeric aggregate without prefix sums"))?;
                self.numeric(f, agg, prefix, m, lo, hi, spine)?
            }
        })
    }

    /// The partial-aggregate state of a window feature for every spine row: the valid count
    /// and the prefix-sum differences (or the value, for min/max/first/last) — exactly what
    /// [`Sorted::numeric`] and friends finish values from.
    #[allow(clippy::too_many_arguments)]
    fn state_of(
        &self,
        f: &FeatureSpec,
        col: Option<&ArrayRef>,
        m: &Mask,
        prefix: Option<&Prefix>,
        scratch: &mut Scratch,
        lo: &[u32],
        hi: &[u32],
        spine: &SpineSide,
    ) -> Result<ArrayRef> {
        let kind = match f.kind {
            Kind::Agg(agg, _) => StateKind::of(agg, col.map(|c| c.data_type()))
                .ok_or_else(|| internal("state of an aggregate without one"))?,
            Kind::Latest => StateKind::Latest,
        };
        let rows = self.srows.len();
        let (l, h) = (|r: usize| lo[r] as usize, |r: usize| hi[r] as usize);
        // Kinds that keep a value: the value as a plain feature computes it.
        let value = match kind {
            StateKind::Extreme { .. } | StateKind::First | StateKind::Last | StateKind::Latest => {
                let plain = FeatureSpec {
                    state: false,
                    ..f.clone()
                };
                Some(self.fast(&plain, col, m, prefix, scratch, lo, hi, spine)?)
            }
            _ => None,
        };
        let n: Vec<i64> = match (kind, &value) {
            // a latest value's window holds one event, counted when its value is present
            (StateKind::Latest, Some(v)) => (0..v.len()).map(|r| v.is_valid(r) as i64).collect(),
            _ => {
                let mut n: Vec<i64> = (0..self.n_valid)
                    .map(|r| (m.cnt[h(r)] - m.cnt[l(r)]) as i64)
                    .collect();
                n.resize(rows, 0);
                n
            }
        };
        if value.is_some() {
            return state::with_value(kind, n, value);
        }
        match (kind, prefix) {
            (StateKind::Count, _) => state::with_value(kind, n, None),
            (StateKind::IntSum, Some(Prefix::Int(p))) => {
                let mut s: Vec<i128> = (0..self.n_valid).map(|r| p[h(r)] - p[l(r)]).collect();
                s.resize(rows, 0);
                state::int_sum(n, s)
            }
            (
                StateKind::Float { moments },
                Some(Prefix::Float {
                    p1,
                    p2,
                    special,
                    shift,
                }),
            ) => {
                let mut parts = state::FloatParts {
                    special: Vec::with_capacity(rows),
                    ..Default::default()
                };
                for r in 0..self.n_valid {
                    parts.s1.push(p1[h(r)].sub(p1[l(r)]));
                    if moments {
                        parts.s2.push(p2[h(r)].sub(p2[l(r)]));
                        parts.c.push(if l(r) < h(r) { shift[l(r)] } else { 0.0 });
                    }
                    parts.special.push(match special {
                        Some(sv) => [0, 1, 2].map(|k| (sv[h(r)][k] - sv[l(r)][k]) as i64),
                        None => [0; 3],
                    });
                }
                parts.s1.resize(rows, Dd::ZERO);
                if moments {
                    parts.s2.resize(rows, Dd::ZERO);
                    parts.c.resize(rows, 0.0);
                }
                parts.special.resize(rows, [0; 3]);
                parts.n = n;
                parts.build(moments)
            }
            _ => Err(internal("state without its prefix sums")),
        }
    }

    /// Prefix sums of a numeric column over a mask's valid positions: i128 for integer sums,
    /// double-double for the rest, with the first and second moments for var/stddev.
    fn prefix(&self, col: &ArrayRef, m: &Mask, label: &str, kind: PrefixKind) -> Result<Prefix> {
        let len = self.order.len();
        if kind == PrefixKind::Int {
            let x = as_i64(col, label)?;
            let mut p = Vec::with_capacity(len + 1);
            let mut acc = 0i128;
            p.push(acc);
            let mut j = 0;
            for pos in 0..len {
                if j < m.vpos.len() && m.vpos[j] as usize == pos {
                    acc += x.value(pos) as i128;
                    j += 1;
                }
                p.push(acc);
            }
            return Ok(Prefix::Int(p));
        }
        let x = as_f64(col)?;
        let xv = x.values();
        let moments = kind == PrefixKind::Moments;
        // Shift each key's values by its first finite valid value: variance does not change,
        // and the sums of squares stay small enough to subtract without cancellation. (A NaN
        // or infinite shift would poison every finite value of the key.)
        let mut shift = vec![0.0f64; if moments { len } else { 0 }];
        if moments {
            for k in 0..self.eblock.len() - 1 {
                let (bs, be) = (self.eblock[k] as usize, self.eblock[k + 1] as usize);
                let (c0, c1) = (m.cnt[bs] as usize, m.cnt[be] as usize);
                let c = m.vpos[c0..c1]
                    .iter()
                    .map(|&p| xv[p as usize])
                    .find(|v| v.is_finite())
                    .unwrap_or(0.0);
                shift[bs..be].fill(c);
            }
        }
        // Infinities and NaN are counted apart: they would turn every later prefix into NaN.
        let mut p1 = Vec::with_capacity(len + 1);
        let mut p2 = Vec::with_capacity(if moments { len + 1 } else { 0 });
        let mut special: Option<Vec<[u32; 3]>> = None;
        let (mut s1, mut s2, mut sp) = (Dd::ZERO, Dd::ZERO, [0u32; 3]);
        p1.push(s1);
        if moments {
            p2.push(s2);
        }
        let mut j = 0;
        for pos in 0..len {
            if j < m.vpos.len() && m.vpos[j] as usize == pos {
                j += 1;
                let v = xv[pos];
                if v.is_finite() {
                    if moments {
                        // x − shift exactly (as a double-double), so the sums do not depend
                        // on which shift a scan happened to pick: a stored state re-shifted
                        // for reuse finishes to the value a cold scan gives.
                        let y = Dd::from_f64(v).sub(Dd::from_f64(shift[pos]));
                        s1 = s1.add(y);
                        s2 = s2.add(y.mul(y));
                    } else {
                        s1 = s1.add_f64(v);
                    }
                } else {
                    let sv = special.get_or_insert_with(|| vec![[0; 3]; pos + 1]);
                    sv.resize(pos + 1, sp);
                    sp[if v.is_nan() {
                        0
                    } else if v > 0.0 {
                        1
                    } else {
                        2
                    }] += 1;
                }
            }
            p1.push(s1);
            if moments {
                p2.push(s2);
            }
            if let Some(sv) = special.as_mut() {
                sv.push(sp);
            }
        }
        Ok(Prefix::Float {
            p1,
            p2,
            special,
            shift,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn numeric(
        &self,
        f: &FeatureSpec,
        agg: Agg,
        prefix: &Prefix,
        m: &Mask,
        lo: &[u32],
        hi: &[u32],
        spine: &SpineSide,
    ) -> Result<ArrayRef> {
        let n = self.srows.len();
        let count = |r: usize| (m.cnt[hi[r] as usize] - m.cnt[lo[r] as usize]) as i64;
        let (p1, p2, special) = match prefix {
            Prefix::Int(p) => {
                let mut out: Vec<Option<i64>> = Vec::with_capacity(n);
                for r in 0..self.n_valid {
                    if count(r) == 0 {
                        out.push(None);
                        continue;
                    }
                    let s = p[hi[r] as usize] - p[lo[r] as usize];
                    let s = i64::try_from(s).map_err(|_| Error::SumOverflow {
                        feature: f.label.clone(),
                        row: self.rid(spine, r),
                    })?;
                    out.push(Some(s));
                }
                out.resize(n, None);
                return Ok(Arc::new(Int64Array::from(out)));
            }
            Prefix::Float {
                p1, p2, special, ..
            } => (p1, p2, special),
        };
        let moments = matches!(agg, Agg::Var | Agg::Stddev);
        let mut out: Vec<Option<f64>> = Vec::with_capacity(n);
        for r in 0..self.n_valid {
            let c = count(r);
            let (l, h) = (lo[r] as usize, hi[r] as usize);
            let min_n = if moments { 2 } else { 1 };
            if c < min_n {
                out.push(None);
                continue;
            }
            if let Some(sv) = special {
                let d = |k: usize| sv[h][k] - sv[l][k];
                let (nan, pinf, ninf) = (d(0), d(1), d(2));
                if nan > 0 || pinf > 0 || ninf > 0 {
                    out.push(Some(if nan > 0 || (pinf > 0 && ninf > 0) || moments {
                        f64::NAN
                    } else if pinf > 0 {
                        f64::INFINITY
                    } else {
                        f64::NEG_INFINITY
                    }));
                    continue;
                }
            }
            let sum = p1[h].sub(p1[l]);
            out.push(Some(match agg {
                Agg::Sum => sum.to_f64(),
                Agg::Mean => sum.div_f64(c as f64).to_f64(),
                _ => {
                    let sq = p2[h].sub(p2[l]);
                    let var = sq
                        .sub(sum.mul(sum).div_f64(c as f64))
                        .div_f64((c - 1) as f64)
                        .to_f64()
                        .max(0.0);
                    if agg == Agg::Var { var } else { var.sqrt() }
                }
            }));
        }
        out.resize(n, None);
        Ok(Arc::new(Float64Array::from(out)))
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

/// Sliding-window extreme with a monotonic deque: for each window (as a range of indices
/// into `vpos`, both ends non-decreasing), the position of the best value, or `None` when the
/// window is empty. The deque keeps values beside positions so comparisons read no arrays.
fn sliding_best<T: Copy>(
    ranges: impl Iterator<Item = (usize, usize)>,
    vpos: &[u32],
    value: impl Fn(usize) -> T,
    better: impl Fn(T, T) -> bool,
) -> Vec<Option<u32>> {
    // A queue in a Vec: `head` is the front; popped fronts are dropped in bulk when they
    // dominate, so pushes and pops are plain Vec operations without wrap-around.
    let mut q: Vec<(T, u32)> = Vec::new();
    let mut head = 0usize;
    let mut next = 0usize;
    let mut out = Vec::with_capacity(ranges.size_hint().0);
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
    out
}

/// An i64 whose order is the IEEE total order of the f64 (and back: the map is its own inverse).
#[inline]
fn f64_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

/// Sliding min or max of `keys` over windows given as index ranges `a..b` with both ends
/// non-decreasing. A two-stack queue: the back is a running extreme, the front holds suffix
/// extremes rebuilt (once per element at most) when the window start passes it. No
/// data-dependent branches, so it runs at memory speed on random data.
fn sliding_extreme(
    ranges: impl Iterator<Item = (usize, usize)>,
    key: impl Fn(usize) -> i64,
    sfx: &mut Vec<i64>,
    max: bool,
) -> Vec<Option<i64>> {
    if max {
        sliding_extreme_by(ranges, key, sfx, i64::MIN, i64::max)
    } else {
        sliding_extreme_by(ranges, key, sfx, i64::MAX, i64::min)
    }
}

/// `sfx[j - base]` holds the extreme of `key(j)..key(mid)` for the front `base..mid`; it only
/// ever spans one window, so it stays small and is reused across windows and features.
#[inline(always)]
fn sliding_extreme_by(
    ranges: impl Iterator<Item = (usize, usize)>,
    key: impl Fn(usize) -> i64,
    sfx: &mut Vec<i64>,
    identity: i64,
    ext: impl Fn(i64, i64) -> i64,
) -> Vec<Option<i64>> {
    let (mut base, mut mid, mut next, mut back) = (0usize, 0usize, 0usize, identity);
    let mut out = Vec::with_capacity(ranges.size_hint().0);
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
    out
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

fn as_i64(col: &ArrayRef, label: &str) -> Result<Int64Array> {
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

fn as_f64(col: &ArrayRef) -> Result<Float64Array> {
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

/// Dense key ids shared by the spine and the events of a partition; `NULL_ID` where any key
/// column is null.
fn key_ids(spine: &[ArrayRef], ev: &[ArrayRef]) -> Result<(Vec<u32>, Vec<u32>, usize)> {
    if spine.len() == 1
        && let (Some(s), Some(e)) = (
            spine[0].as_any().downcast_ref::<Int64Array>(),
            ev[0].as_any().downcast_ref::<Int64Array>(),
        )
    {
        let mut map: HashMap<i64, u32, ahash::RandomState> = HashMap::default();
        let mut id = |a: &Int64Array| -> Vec<u32> {
            let vals = a.values();
            (0..a.len())
                .map(|i| {
                    if a.is_null(i) {
                        return NULL_ID;
                    }
                    let next = map.len() as u32;
                    *map.entry(vals[i]).or_insert(next)
                })
                .collect()
        };
        let e = id(e);
        let s = id(s);
        return Ok((s, e, map.len()));
    }
    let fields = spine
        .iter()
        .map(|a| SortField::new(a.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields)?;
    let srows = conv.convert_columns(spine)?;
    let erows = conv.convert_columns(ev)?;
    let mut map: HashMap<&[u8], u32, ahash::RandomState> = HashMap::default();
    let e = assign_ids(&mut map, &erows, ev);
    let s = assign_ids(&mut map, &srows, spine);
    let n = map.len();
    Ok((s, e, n))
}

fn assign_ids<'a>(
    map: &mut HashMap<&'a [u8], u32, ahash::RandomState>,
    rows: &'a arrow::row::Rows,
    cols: &[ArrayRef],
) -> Vec<u32> {
    (0..rows.num_rows())
        .map(|i| {
            if cols.iter().any(|c| c.is_null(i)) {
                return NULL_ID;
            }
            let next = map.len() as u32;
            *map.entry(rows.row(i).data()).or_insert(next)
        })
        .collect()
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
