//! Events grouped by entity key (a counting sort on dense key ids) and ordered inside each
//! key by (event time, created time, source order), every lane carried along.

// The folder's modules share the imports of `sweep` (mod.rs).
use super::*;

pub(super) struct Sorted {
    /// Event indices in (key, time, created, seq) order; empty when no feature reads them.
    pub(super) order: Vec<u32>,
    /// Event times in that order.
    pub(super) ts: Vec<i64>,
    /// Created times in that order (null = earliest), when the source has them.
    pub(super) created: Option<Vec<i64>>,
    /// The lanes, in that order.
    pub(super) floats: Vec<Vec<f64>>,
    pub(super) ints: Vec<Vec<i64>>,
    pub(super) masks: Vec<Option<Vec<u8>>>,
    /// `eblock[k]..eblock[k+1]` are the sorted positions of key `k`.
    pub(super) eblock: Vec<u32>,
    /// Spine indices: valid rows in (key, time) order, then rows with a null key or time.
    pub(super) srows: Vec<u32>,
    pub(super) n_valid: usize,
    /// `sblock[k]..sblock[k+1]` are the positions in `srows` of key `k`.
    pub(super) sblock: Vec<u32>,
    /// Spine times in `srows` order (valid rows only).
    pub(super) st: Vec<i64>,
}

/// `out[dest[i]] = src[i]` for every event with a destination: reads run sequentially and
/// writes stream into one run per key, so this stays cache-friendly where a gather by event
/// index would miss on nearly every read.
pub(super) fn scatter<T: Copy + Default>(
    src: impl Iterator<Item = T>,
    dest: &[u32],
    len: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); len];
    for (x, &d) in src.zip(dest) {
        if d != NULL_ID {
            out[d as usize] = x;
        }
    }
    out
}

/// Reorder `lane[..perm.len()]` by `perm` (the old position of each new one).
pub(super) fn permute<T: Copy>(lane: &mut [T], perm: &[u32], tmp: &mut Vec<T>) {
    tmp.clear();
    tmp.extend(perm.iter().map(|&p| lane[p as usize]));
    lane[..tmp.len()].copy_from_slice(tmp);
}

/// Bits that hold a position below `n`.
pub(super) fn position_bits(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

/// `(t − min) << bits | position` for each time, when the span of times and the positions
/// fit in 64 bits together (a key's events over a few years, at microseconds, do).
pub(super) fn pack_keys(ts: &[i64], out: &mut Vec<u64>) -> bool {
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
pub(super) fn sort_ties(
    perm: &mut [u32],
    same: impl Fn(usize, usize) -> bool,
    src: impl Fn(u32) -> u64,
) {
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
    pub(super) fn new(spine: &SpineSide, ev: &mut EventSide, need_idx: bool) -> Sorted {
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
    pub(super) fn ranges(&self, edges: impl Fn(i64) -> (Lower, Upper)) -> (Vec<u32>, Vec<u32>) {
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

    pub(super) fn rid(&self, spine: &SpineSide, r: usize) -> u64 {
        spine.rid.value(self.srows[r] as usize)
    }

    /// Features of a `filter_created` source: an event is visible to a spine row only if it
    /// was also created at or before the row's time, so windows are no longer contiguous
    /// ranges and each row's window is walked directly.
    pub(super) fn direct(
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

/// Dense ids of a column's values (equal values, equal ids) and how many there are.
pub(super) fn value_ids(col: &ArrayRef) -> Result<(Vec<u32>, usize)> {
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
pub(super) fn group_by_key(
    ids: &[u32],
    nkeys: usize,
    ok: impl Fn(usize) -> bool,
) -> (Vec<u32>, Vec<u32>) {
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
