//! The block-at-a-time sweep: each key's events gathered into small reused buffers, and
//! each feature answered over the block (prefix sums, positions, sliding extremes and
//! multisets).

// The folder's modules share the imports of `sweep` (mod.rs).
use super::*;

/// The window edges a block sweep answers: a feature's window, or the latest-value edges.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Edges {
    Window(Window),
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PrefixKind {
    Int,
    Float,
    Moments,
}

/// What one feature computes for a key's block. Numeric inputs are lanes of the sorted
/// bucket ([`Sorted::floats`] / [`Sorted::ints`]).
pub(super) enum Op {
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
pub(super) enum Out {
    /// Counts: never null, 0 by default.
    Count(Vec<i64>),
    I64(Vec<i64>, BooleanBufferBuilder),
    F64(Vec<f64>, BooleanBufferBuilder),
    /// Event indices (`NULL_ID` = null), taken from the value column at the end.
    Idx(Vec<u32>),
    I128(Vec<i128>),
    Parts(state::FloatParts),
}

pub(super) struct Job<'a> {
    pub(super) spec: &'a FeatureSpec,
    pub(super) op: Op,
    pub(super) edges: usize,
    pub(super) mask: usize,
    pub(super) prefix: Option<usize>,
    /// The state emitted instead of the value, when the feature keeps one.
    pub(super) state: Option<StateKind>,
    /// Valid events per window, for states that keep a value.
    pub(super) n: Vec<i64>,
    /// The value column, for results taken from it.
    pub(super) col: Option<ArrayRef>,
    /// The value column's type (min/max return it).
    pub(super) col_type: Option<DataType>,
    pub(super) out: Out,
}

/// Which events of a key count for a (column, filter) pair, built per key block.
#[derive(Default)]
pub(super) struct LocalMask {
    /// `cnt[p]` = number of valid positions before block position `p`.
    pub(super) cnt: Vec<u32>,
    /// The valid block positions, ascending.
    pub(super) vpos: Vec<u32>,
}

/// Prefix sums over one key block (i128 for integer sums, double-double otherwise).
#[derive(Default)]
pub(super) struct LocalPrefix {
    pub(super) int: Vec<i128>,
    pub(super) p1: Vec<Dd>,
    pub(super) p2: Vec<Dd>,
    /// Prefix counts of NaN, +inf and −inf, only when the block has any.
    pub(super) special: Vec<[u32; 3]>,
    pub(super) has_special: bool,
    /// The key's first finite valid value, which its moments are taken about.
    pub(super) shift: f64,
}

pub(super) struct PrefixDef {
    pub(super) mask: usize,
    pub(super) kind: PrefixKind,
    /// Index into `Blocks::floats` or `Blocks::ints`.
    pub(super) input: usize,
}

/// A block's float and int lanes, and its min/max keys.
pub(super) type BlockLanes<'x> = (&'x [&'x [f64]], &'x [&'x [i64]]);

/// One key's sorted events and spine rows.
pub(super) struct Block<'a> {
    pub(super) ts: &'a [i64],
    /// Event index of each sorted position.
    pub(super) idx: &'a [u32],
    pub(super) st: &'a [i64],
    /// Partition spine row of each of the key's rows, in time order.
    pub(super) rows: &'a [u32],
}

/// The block-at-a-time sweep: each key's events are gathered into small reused buffers and
/// every feature of the key is computed from them, so the working set is the largest key,
/// not the partition, and results land directly at their spine rows.
pub(super) struct Blocks<'a> {
    pub(super) jobs: Vec<Job<'a>>,
    pub(super) edges: Vec<Edges>,
    pub(super) ttl: Option<Duration>,
    pub(super) masks: usize,
    pub(super) prefixes: Vec<PrefixDef>,
    /// (mask, lane) of each array of min/max keys, built once per block and shared by every
    /// window.
    pub(super) keys: Vec<(usize, Src)>,
}

pub(super) fn unset(rows: usize) -> BooleanBufferBuilder {
    let mut b = BooleanBufferBuilder::new(rows);
    b.append_n(rows, false);
    b
}

pub(super) fn slot<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    list.iter().position(|x| *x == item).unwrap_or_else(|| {
        list.push(item);
        list.len() - 1
    })
}

impl<'a> Blocks<'a> {
    pub(super) fn new(
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

    pub(super) fn run(mut self, s: &Sorted, spine: &SpineSide) -> Result<Vec<ArrayRef>> {
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
    pub(super) fn bounds(
        &self,
        edges: impl Fn(i64) -> (Lower, Upper),
        out: &mut Vec<(i128, i128)>,
    ) {
        out.clear();
        out.extend(self.st.iter().map(|&t| admitted(edges(t))));
    }

    /// For each spine row of the block, the range `lo..hi` of block positions in its window
    /// given its [`Block::bounds`]; `same_ends` are ranges of windows with the same last
    /// microseconds, whose ends are taken instead of walked again.
    pub(super) fn ranges(
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
    pub(super) fn ints(&mut self, x: &[i64], m: &LocalMask) {
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

    pub(super) fn floats(&mut self, x: &[f64], m: &LocalMask, moments: bool) {
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
    pub(super) fn specials(&self, l: usize, h: usize) -> [u32; 3] {
        if !self.has_special {
            return [0; 3];
        }
        [0, 1, 2].map(|k| self.special[h][k] - self.special[l][k])
    }
}

impl Job<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block(
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
    pub(super) fn finish(self) -> Result<ArrayRef> {
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
