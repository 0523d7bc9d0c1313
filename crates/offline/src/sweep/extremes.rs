//! Sliding minimum and maximum: segment extremes shared by windows that end together,
//! a two-stack queue where ends differ, and the total orders that compare floats.

// The folder's modules share the imports of `sweep` (mod.rs).
use super::*;

/// Buffers reused by every min/max feature of a partition.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) sfx: Vec<MinMax>,
    pub(super) best: Vec<Option<u32>>,
    pub(super) tails: Vec<Option<MinMax>>,
    pub(super) spans: Vec<(usize, usize)>,
}

/// A min and a max carried together: one pass and one query serve a window's `min` and
/// `max` features, which feature sets usually ask for in pairs.
pub(super) type MinMax = (i64, i64);

/// Per spine row of a block, its window's min and max (`None` when the window is empty).
pub(super) type WindowExtremes = Vec<Option<MinMax>>;

pub(super) const NO_MIN_MAX: MinMax = (i64::MAX, i64::MIN);

#[inline(always)]
pub(super) fn min_max(a: MinMax, b: MinMax) -> MinMax {
    (a.0.min(b.0), a.1.max(b.1))
}

/// Sliding min and max for windows that all end where a spine row's window ends, in one pass
/// over the values shared by every such window. The values split into segments, segment `r`
/// running from the previous spine row's window end to row `r`'s; a window `a..end(r)` is
/// then the suffix of the segment holding `a` (kept per value) plus whole segments up to `r`,
/// whose extremes slide over a list as long as the rows, not the values. A window's min and
/// max cost about one step per spine row instead of two per event; the values are read once
/// for all.
pub(super) struct Segments {
    pub(super) ends: Vec<u32>,
    /// `suffix[j]`: the extremes of values `j..` to the end of j's segment.
    pub(super) suffix: Vec<MinMax>,
    /// Each segment's extremes ([`NO_MIN_MAX`] when empty).
    pub(super) whole: Vec<MinMax>,
}

impl Segments {
    pub(super) fn new(keys: &[i64], ends: Vec<u32>) -> Segments {
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
    pub(super) fn query(
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
pub(super) fn sliding_best<T: Copy>(
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
pub(super) fn f64_key(x: f64) -> i64 {
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
pub(super) fn sliding_extreme<T: Copy>(
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
pub(super) fn key_f64(k: i64) -> f64 {
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

pub(super) fn direct_moment(agg: Agg, v: &[f64]) -> Option<f64> {
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

/// "Strictly better than" for min/max, specialized for the common column types.
pub(super) enum Better {
    I64(Int64Array, bool),
    F64(Float64Array, bool),
    Str(StringArray, bool),
    Dyn(arrow::array::DynComparator, bool),
}

impl Better {
    pub(super) fn new(col: &ArrayRef, max: bool) -> Result<Better> {
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
    pub(super) fn is(&self, a: u32, b: u32) -> bool {
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
