//! Partial aggregate states of window features, for reuse (DESIGN §4 "Reuse").
//!
//! A reusable feature is computed as a *state* per spine row — the sufficient statistics of
//! its window — and the value is finished from the state. States of disjoint windows merge
//! (widening: the stored window plus the band before it), and for invertible aggregates a
//! band's state subtracts (narrowing). Finishing a state runs exactly the arithmetic the sweep
//! runs on a window's prefix-sum difference, so a state computed cold, merged or subtracted
//! gives the value a cold computation gives (bit for bit wherever the double-double sums are
//! exact, which the property tests exercise; see ADR 0006).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, StructArray,
    make_comparator,
};
use arrow::compute::{SortOptions, kernels::zip::zip};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type};
use quiver_core::semantics::Agg;

use crate::dd::Dd;
use crate::{Error, Result};

/// What a state holds, by the aggregate and its input column type. Aggregates with the same
/// kind share stored states (a `mean` and a `sum` of a float column, `var` and `stddev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// An event count.
    Count,
    /// An exact integer sum (Decimal128) and its count.
    IntSum,
    /// Float sums (double-double) with counts of NaN and infinities: sum and mean.
    Float {
        /// Also a shifted second moment: var and stddev.
        moments: bool,
    },
    /// A min or max value.
    Extreme {
        /// `true` for max, `false` for min.
        max: bool,
    },
    /// The window's first value.
    First,
    /// The window's last value.
    Last,
    /// A latest-value feature: its value (exact reuse only).
    Latest,
}

impl StateKind {
    /// `None` for aggregates without a mergeable state (`count_distinct` keeps no set).
    pub fn of(agg: Agg, input: Option<&DataType>) -> Option<StateKind> {
        Some(match agg {
            Agg::Count => StateKind::Count,
            Agg::Sum if input.is_some_and(|t| t.is_integer()) => StateKind::IntSum,
            Agg::Sum | Agg::Mean => StateKind::Float { moments: false },
            Agg::Var | Agg::Stddev => StateKind::Float { moments: true },
            Agg::Min => StateKind::Extreme { max: false },
            Agg::Max => StateKind::Extreme { max: true },
            Agg::First => StateKind::First,
            Agg::Last => StateKind::Last,
            Agg::CountDistinct => return None,
        })
    }

    /// Whether a band's state can be subtracted (window narrowing).
    pub fn invertible(self) -> bool {
        matches!(
            self,
            StateKind::Count | StateKind::IntSum | StateKind::Float { .. }
        )
    }

    /// The kind's name, part of a stored state's definition key.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Count => "count",
            StateKind::IntSum => "int_sum",
            StateKind::Float { moments: false } => "float_sum",
            StateKind::Float { moments: true } => "moments",
            StateKind::Extreme { max: false } => "min",
            StateKind::Extreme { max: true } => "max",
            StateKind::First => "first",
            StateKind::Last => "last",
            StateKind::Latest => "latest",
        }
    }

    /// About how many bytes a state takes per spine row in memory (values taken as 8 bytes).
    pub fn row_bytes(self) -> u64 {
        match self {
            StateKind::Count => 8,
            StateKind::IntSum => 24,
            StateKind::Float { moments: false } => 48,
            StateKind::Float { moments: true } => 72,
            _ => 16,
        }
    }

    /// The state's struct type; `value` is the input column's type (min/max/first/last).
    pub fn data_type(self, value: &DataType) -> DataType {
        let int = |n: &str| Field::new(n, DataType::Int64, false);
        let float = |n: &str| Field::new(n, DataType::Float64, false);
        let mut f = vec![int("n")];
        match self {
            StateKind::Count => {}
            StateKind::IntSum => f.push(Field::new("s", DataType::Decimal128(38, 0), false)),
            StateKind::Float { moments } => {
                f.extend([float("s1h"), float("s1l")]);
                if moments {
                    f.extend([float("c"), float("s2h"), float("s2l")]);
                }
                f.extend([int("nan"), int("pinf"), int("ninf")]);
            }
            StateKind::Extreme { .. } | StateKind::First | StateKind::Last | StateKind::Latest => {
                f.push(Field::new("v", value.clone(), true))
            }
        }
        DataType::Struct(Fields::from(f))
    }
}

/// Per-row float sums as the sweep keeps them.
#[derive(Default)]
pub struct FloatParts {
    /// Per row, how many values were summed.
    pub n: Vec<i64>,
    /// Per row, the sum of the values (double-double).
    pub s1: Vec<Dd>,
    /// Per-row shift and shifted second moment (moments only).
    pub c: Vec<f64>,
    /// Per row, the shifted sum of squares (double-double; moments only).
    pub s2: Vec<Dd>,
    /// Per row, the counts of NaN, +∞ and −∞ values.
    pub special: Vec<[i64; 3]>,
}

impl FloatParts {
    /// The state column, one struct per row.
    pub fn build(self, moments: bool) -> Result<ArrayRef> {
        let mut out = FloatCols::new(self.n, moments);
        for (r, (&s1, &sp)) in self.s1.iter().zip(&self.special).enumerate() {
            out.push(s1, moments.then(|| (self.c[r], self.s2[r])), sp);
        }
        out.build()
    }
}

/// A float state's columns, filled row by row (a merge writes them directly, without the
/// sweep's per-row parts).
struct FloatCols {
    moments: bool,
    n: Vec<i64>,
    s1: [Vec<f64>; 2],
    c: Vec<f64>,
    s2: [Vec<f64>; 2],
    special: [Vec<i64>; 3],
}

impl FloatCols {
    fn new(n: Vec<i64>, moments: bool) -> FloatCols {
        let rows = n.len();
        let cap = |on: bool| Vec::with_capacity(if on { rows } else { 0 });
        FloatCols {
            moments,
            n,
            s1: [cap(true), cap(true)],
            c: cap(moments),
            s2: [cap(moments), cap(moments)],
            special: std::array::from_fn(|_| Vec::with_capacity(rows)),
        }
    }

    #[inline]
    fn push(&mut self, s1: Dd, shifted: Option<(f64, Dd)>, special: [i64; 3]) {
        let (h, l) = s1.parts();
        self.s1[0].push(h);
        self.s1[1].push(l);
        if let Some((c, s2)) = shifted {
            let (h, l) = s2.parts();
            self.c.push(c);
            self.s2[0].push(h);
            self.s2[1].push(l);
        }
        for (col, v) in self.special.iter_mut().zip(special) {
            col.push(v);
        }
    }

    fn build(self) -> Result<ArrayRef> {
        let f64s = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let i64s = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let [s1h, s1l] = self.s1;
        let mut cols = vec![i64s(self.n), f64s(s1h), f64s(s1l)];
        if self.moments {
            let [s2h, s2l] = self.s2;
            cols.extend([f64s(self.c), f64s(s2h), f64s(s2l)]);
        }
        cols.extend(self.special.map(i64s));
        build(
            StateKind::Float {
                moments: self.moments,
            },
            &DataType::Null,
            cols,
        )
    }
}

/// A state array from its columns, in the order of [`StateKind::data_type`].
pub fn build(kind: StateKind, value: &DataType, cols: Vec<ArrayRef>) -> Result<ArrayRef> {
    let DataType::Struct(fields) = kind.data_type(value) else {
        return Err(Error::Internal("state type".into()));
    };
    Ok(Arc::new(StructArray::try_new(fields, cols, None)?))
}

/// `len` states of a window holding no event, of the state type `like`: merged with any
/// state, it leaves it as it was.
pub fn empty(like: &DataType, len: usize) -> Result<ArrayRef> {
    let DataType::Struct(fields) = like else {
        return Err(Error::Internal("not a state type".into()));
    };
    let cols = fields
        .iter()
        .map(|f| -> Result<ArrayRef> {
            Ok(match f.data_type() {
                _ if f.is_nullable() => arrow::array::new_null_array(f.data_type(), len),
                DataType::Int64 => Arc::new(Int64Array::from(vec![0; len])),
                DataType::Float64 => Arc::new(Float64Array::from(vec![0.0; len])),
                DataType::Decimal128(p, s) => {
                    Arc::new(Decimal128Array::from(vec![0; len]).with_precision_and_scale(*p, *s)?)
                }
                other => return Err(Error::Internal(format!("state field of type {other}"))),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(StructArray::try_new(fields.clone(), cols, None)?))
}

/// The state of a `count`, or the `n` and value of min/max/first/last.
pub fn with_value(kind: StateKind, n: Vec<i64>, value: Option<ArrayRef>) -> Result<ArrayRef> {
    let n: ArrayRef = Arc::new(Int64Array::from(n));
    match (kind, value) {
        (StateKind::Count, _) => build(kind, &DataType::Null, vec![n]),
        (_, Some(v)) => {
            let t = v.data_type().clone();
            build(kind, &t, vec![n, v])
        }
        _ => Err(Error::Internal("state without its value".into())),
    }
}

/// An integer-sum state column from per-row counts and exact sums.
pub fn int_sum(n: Vec<i64>, s: Vec<i128>) -> Result<ArrayRef> {
    let s = Decimal128Array::from(s).with_precision_and_scale(38, 0)?;
    build(
        StateKind::IntSum,
        &DataType::Null,
        vec![Arc::new(Int64Array::from(n)), Arc::new(s)],
    )
}

struct View<'a> {
    s: &'a StructArray,
}

impl<'a> View<'a> {
    fn new(a: &'a ArrayRef) -> Result<View<'a>> {
        let s = a
            .as_struct_opt()
            .ok_or_else(|| Error::Internal("not a state array".into()))?;
        Ok(View { s })
    }
    fn col(&self, name: &str) -> Result<&'a ArrayRef> {
        self.s
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("state has no `{name}`")))
    }
    fn i64s(&self, name: &str) -> Result<&'a [i64]> {
        Ok(self
            .col(name)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::Internal(format!("state `{name}`")))?
            .values())
    }
    fn f64s(&self, name: &str) -> Result<&'a [f64]> {
        Ok(self
            .col(name)?
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| Error::Internal(format!("state `{name}`")))?
            .values())
    }
    /// A double-double column as its (high, low) parts.
    fn dd(&self, h: &str, l: &str) -> Result<(&'a [f64], &'a [f64])> {
        Ok((self.f64s(h)?, self.f64s(l)?))
    }
    fn sums(&self) -> Result<&'a [i128]> {
        Ok(self
            .col("s")?
            .as_primitive_opt::<arrow::datatypes::Decimal128Type>()
            .ok_or_else(|| Error::Internal("state `s`".into()))?
            .values())
    }
    /// The counts of NaN, +inf and −inf values.
    fn special(&self) -> Result<[&'a [i64]; 3]> {
        Ok([self.i64s("nan")?, self.i64s("pinf")?, self.i64s("ninf")?])
    }
}

/// The feature value of every row of a state array. `label` names the feature in errors;
/// rows are spine rows in spine order.
pub fn finish(agg: Agg, kind: StateKind, state: &ArrayRef, label: &str) -> Result<ArrayRef> {
    let v = View::new(state)?;
    let n = v.i64s("n")?;
    Ok(match kind {
        StateKind::Count => Arc::new(Int64Array::from(n.to_vec())),
        StateKind::IntSum => {
            let s = v.sums()?;
            let mut out = Vec::with_capacity(n.len());
            for (row, (&c, &s)) in n.iter().zip(s).enumerate() {
                out.push(if c == 0 {
                    None
                } else {
                    Some(i64::try_from(s).map_err(|_| Error::SumOverflow {
                        feature: label.to_string(),
                        row: row as u64,
                    })?)
                });
            }
            Arc::new(Int64Array::from(out))
        }
        StateKind::Float { moments } => {
            let s1 = v.dd("s1h", "s1l")?;
            let s2 = if moments {
                v.dd("s2h", "s2l")?
            } else {
                (&[][..], &[][..])
            };
            let [nan, pinf, ninf] = v.special()?;
            let var_like = matches!(agg, Agg::Var | Agg::Stddev);
            let min_n = if var_like { 2 } else { 1 };
            let out: Float64Array = (0..n.len())
                .map(|r| {
                    let c = n[r];
                    if c < min_n {
                        return None;
                    }
                    let (nan, pinf, ninf) = (nan[r], pinf[r], ninf[r]);
                    if nan > 0 || pinf > 0 || ninf > 0 {
                        return Some(if nan > 0 || (pinf > 0 && ninf > 0) || var_like {
                            f64::NAN
                        } else if pinf > 0 {
                            f64::INFINITY
                        } else {
                            f64::NEG_INFINITY
                        });
                    }
                    let sum = Dd::from_parts(s1.0[r], s1.1[r]);
                    Some(match agg {
                        Agg::Sum => sum.to_f64(),
                        Agg::Mean => sum.div_f64(c as f64).to_f64(),
                        _ => {
                            let var = Dd::from_parts(s2.0[r], s2.1[r])
                                .sub(sum.mul(sum).div_f64(c as f64))
                                .div_f64((c - 1) as f64)
                                .to_f64()
                                .max(0.0);
                            if agg == Agg::Var { var } else { var.sqrt() }
                        }
                    })
                })
                .collect();
            Arc::new(out)
        }
        StateKind::Extreme { .. } | StateKind::First | StateKind::Last | StateKind::Latest => {
            v.col("v")?.clone()
        }
    })
}

/// Bring a moments state's sums to another shift: Σ(x−a) = Σ(x−b) + m(b−a) and
/// Σ(x−a)² = Σ(x−b)² + 2(b−a)Σ(x−b) + m(b−a)², over the `m` finite values.
fn reshift(s1: Dd, s2: Dd, m: i64, from: f64, to: f64) -> (Dd, Dd) {
    if m == 0 || from == to {
        return (s1, s2);
    }
    let d = Dd::from_f64(from).sub(Dd::from_f64(to));
    let md = d.mul(Dd::from_f64(m as f64));
    let s2 = s2.add(d.mul(s1).mul(Dd::from_f64(2.0))).add(md.mul(d));
    (s1.add(md), s2)
}

/// Combine the states of two disjoint windows of the same rows. `later` covers the events
/// after every event of `earlier` (widening: the stored window and the band before it), which
/// is what decides first/last. With `subtract`, `earlier` is removed from `later` instead
/// (narrowing; only for invertible kinds, and `earlier` must lie inside `later`).
pub fn combine(
    kind: StateKind,
    later: &ArrayRef,
    earlier: &ArrayRef,
    subtract: bool,
) -> Result<ArrayRef> {
    if later.len() != earlier.len() {
        return Err(Error::Internal("states of different lengths".into()));
    }
    if subtract && !kind.invertible() {
        return Err(Error::Internal(format!(
            "{} states cannot be subtracted",
            kind.name()
        )));
    }
    let (a, b) = (View::new(later)?, View::new(earlier)?);
    let (na, nb) = (a.i64s("n")?, b.i64s("n")?);
    let sign = if subtract { -1 } else { 1 };
    let n: Vec<i64> = na.iter().zip(nb).map(|(x, y)| x + sign * y).collect();
    match kind {
        StateKind::Count => with_value(kind, n, None),
        StateKind::IntSum => {
            let s = a
                .sums()?
                .iter()
                .zip(b.sums()?)
                .map(|(x, y)| if subtract { x - y } else { x + y })
                .collect();
            int_sum(n, s)
        }
        StateKind::Float { moments } => {
            let (spa, spb) = (a.special()?, b.special()?);
            let (s1a, s1b) = (a.dd("s1h", "s1l")?, b.dd("s1h", "s1l")?);
            let shifted = if moments {
                Some((
                    (a.f64s("c")?, a.dd("s2h", "s2l")?),
                    (b.f64s("c")?, b.dd("s2h", "s2l")?),
                ))
            } else {
                None
            };
            let mut out = FloatCols::new(n, moments);
            for r in 0..na.len() {
                let special = [0, 1, 2].map(|k| spa[k][r] + sign * spb[k][r]);
                let x1 = Dd::from_parts(s1a.0[r], s1a.1[r]);
                let y1 = Dd::from_parts(s1b.0[r], s1b.1[r]);
                let Some(((ca, s2a), (cb, s2b))) = shifted else {
                    out.push(
                        if subtract { x1.sub(y1) } else { x1.add(y1) },
                        None,
                        special,
                    );
                    continue;
                };
                let (x2, y2) = (
                    Dd::from_parts(s2a.0[r], s2a.1[r]),
                    Dd::from_parts(s2b.0[r], s2b.1[r]),
                );
                // the finite values each side holds (the shift is theirs)
                let finite = |n: &[i64], sp: [&[i64]; 3]| n[r] - sp[0][r] - sp[1][r] - sp[2][r];
                let (ma, mb) = (finite(na, spa), finite(nb, spb));
                // Keep the stored window's shift unless it holds no finite value.
                let (s1, s2, c) = if ma == 0 && !subtract {
                    (y1, y2, cb[r])
                } else {
                    let (b1, b2) = reshift(y1, y2, mb, cb[r], ca[r]);
                    if subtract {
                        (x1.sub(b1), x2.sub(b2), ca[r])
                    } else {
                        (x1.add(b1), x2.add(b2), ca[r])
                    }
                };
                out.push(s1, Some((c, s2)), special);
            }
            out.build()
        }
        StateKind::Extreme { max } => {
            let (va, vb) = (a.col("v")?, b.col("v")?);
            let cmp = make_comparator(vb.as_ref(), va.as_ref(), SortOptions::default())?;
            let take_b: BooleanArray = (0..na.len())
                .map(|r| {
                    Some(if nb[r] == 0 {
                        false
                    } else if na[r] == 0 {
                        true
                    } else {
                        let o = float_aware(vb, va, r).unwrap_or_else(|| cmp(r, r));
                        if max { o.is_gt() } else { o.is_lt() }
                    })
                })
                .collect();
            let v = zip(&take_b, vb, va)?;
            with_value(kind, n, Some(v))
        }
        StateKind::Latest => Err(Error::Internal("latest values do not combine".into())),
        StateKind::First | StateKind::Last => {
            let (va, vb) = (a.col("v")?, b.col("v")?);
            let take_b: BooleanArray = (0..na.len())
                .map(|r| {
                    Some(match kind {
                        StateKind::First => nb[r] > 0,
                        _ => na[r] == 0 && nb[r] > 0,
                    })
                })
                .collect();
            let v = zip(&take_b, vb, va)?;
            with_value(kind, n, Some(v))
        }
    }
}

/// Windows of `m` consecutive day tiles merged without [`combine`], for the kinds that have
/// a cheaper way: counts and sums by prefix sums over each key's days (exact for counts and
/// integer sums; double-double for floats, as the sweep's own prefix sums), min and max of
/// 64-bit values by van Herk's blocks over plain values. `cells[d * keys + k]` is the row of
/// `tiles` holding key `k`'s tile of day `d` (`u32::MAX`: none, an empty tile); each of
/// `rows` is (key, first day) of one window. `None` for the other kinds, which the caller
/// merges with [`combine`].
pub fn tile_windows(
    kind: StateKind,
    tiles: &ArrayRef,
    (cells, keys): (&[u32], usize),
    m: usize,
    rows: &[(u32, usize)],
) -> Result<Option<ArrayRef>> {
    let v = View::new(tiles)?;
    let tn = v.i64s("n")?;
    let n = windows(
        &prefix(cells, keys, 0, |t| tn[t], |a, b| a + b),
        keys,
        m,
        rows,
        |a, b| a - b,
    );
    Ok(Some(match kind {
        StateKind::Count => with_value(kind, n, None)?,
        StateKind::IntSum => {
            let ts = v.sums()?;
            let p = prefix(cells, keys, 0i128, |t| ts[t], |a, b| a + b);
            int_sum(n, windows(&p, keys, m, rows, |a, b| a - b))?
        }
        StateKind::Float { moments: false } => {
            let (h, l) = v.dd("s1h", "s1l")?;
            let p = prefix(
                cells,
                keys,
                Dd::ZERO,
                |t| Dd::from_parts(h[t], l[t]),
                Dd::add,
            );
            let sp = v.special()?;
            let q = prefix(
                cells,
                keys,
                [0i64; 3],
                |t| [sp[0][t], sp[1][t], sp[2][t]],
                |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]],
            );
            let special = windows(&q, keys, m, rows, |a, b| {
                [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
            });
            FloatParts {
                n,
                s1: windows(&p, keys, m, rows, Dd::sub),
                c: Vec::new(),
                s2: Vec::new(),
                special,
            }
            .build(false)?
        }
        StateKind::Extreme { max } => {
            let col = v.col("v")?;
            // a tile with values but no value cannot be: leave it to the general merge
            if (0..col.len()).any(|t| tn[t] > 0 && col.is_null(t)) {
                return Ok(None);
            }
            let have = |t: usize| tn[t] > 0;
            let value: ArrayRef = match col.data_type() {
                DataType::Float64 => {
                    let x = col.as_primitive::<Float64Type>().values();
                    let better = |b: f64, a: f64| match max {
                        true => b.total_cmp(&a).is_gt(),
                        false => b.total_cmp(&a).is_lt(),
                    };
                    let w = extremes((cells, keys), m, rows, |t| have(t).then(|| x[t]), better);
                    Arc::new(Float64Array::from(w))
                }
                DataType::Int64 => {
                    let x = col.as_primitive::<Int64Type>().values();
                    let better = |b: i64, a: i64| if max { b > a } else { b < a };
                    let w = extremes((cells, keys), m, rows, |t| have(t).then(|| x[t]), better);
                    Arc::new(Int64Array::from(w))
                }
                _ => return Ok(None),
            };
            with_value(kind, n, Some(value))?
        }
        _ => return Ok(None),
    }))
}

/// Running sums over each key's days: entry `(d + 1) * keys + k` holds key `k`'s tiles of
/// days up to `d` (entry `k`: none).
fn prefix<T: Copy>(
    cells: &[u32],
    keys: usize,
    zero: T,
    of: impl Fn(usize) -> T,
    add: impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut p = Vec::with_capacity(cells.len() + keys);
    p.resize(keys, zero);
    for (c, &t) in cells.iter().enumerate() {
        let x = if t == u32::MAX { zero } else { of(t as usize) };
        p.push(add(p[c], x));
    }
    p
}

/// Each window's running sums at its end less those before its start.
fn windows<T: Copy>(
    p: &[T],
    keys: usize,
    m: usize,
    rows: &[(u32, usize)],
    sub: impl Fn(T, T) -> T,
) -> Vec<T> {
    rows.iter()
        .map(|&(k, a)| sub(p[(a + m) * keys + k as usize], p[a * keys + k as usize]))
        .collect()
}

/// The best value of each window (`better(b, a)`: b beats a; ties keep the later value, as
/// [`combine`] does), by blocks of `m` days: each block's running best from its start and
/// from its end, a window being the end of one block and the start of the next.
fn extremes<T: Copy>(
    (cells, keys): (&[u32], usize),
    m: usize,
    rows: &[(u32, usize)],
    value: impl Fn(usize) -> Option<T>,
    better: impl Fn(T, T) -> bool,
) -> Vec<Option<T>> {
    let days = cells.len() / keys;
    let tile = |c: usize| match cells[c] {
        u32::MAX => None,
        t => value(t as usize),
    };
    let pick = |later: Option<T>, earlier: Option<T>| match (later, earlier) {
        (Some(a), Some(b)) if better(b, a) => Some(b),
        (None, b) => b,
        (a, _) => a,
    };
    let mut pre: Vec<Option<T>> = Vec::with_capacity(cells.len());
    for c in 0..cells.len() {
        let d = c / keys;
        pre.push(match d % m {
            0 => tile(c),
            _ => pick(tile(c), pre[c - keys]),
        });
    }
    let mut suf: Vec<Option<T>> = vec![None; cells.len()];
    for c in (0..cells.len()).rev() {
        let d = c / keys;
        suf[c] = match d % m == m - 1 || d + 1 == days {
            true => tile(c),
            false => pick(suf[c + keys], tile(c)),
        };
    }
    rows.iter()
        .map(|&(k, a)| {
            let (first, last) = (a * keys + k as usize, (a + m - 1) * keys + k as usize);
            match a % m {
                0 => suf[first],
                _ => pick(pre[last], suf[first]),
            }
        })
        .collect()
}

/// Floats compare by IEEE total order, as the sweep's min/max do (arrow's comparator also
/// orders NaN, but not -0.0 against 0.0 the same way on every type).
fn float_aware(b: &ArrayRef, a: &ArrayRef, r: usize) -> Option<std::cmp::Ordering> {
    match (b.data_type(), a.data_type()) {
        (DataType::Float64, DataType::Float64) => {
            let (b, a) = (
                b.as_primitive::<Float64Type>(),
                a.as_primitive::<Float64Type>(),
            );
            Some(b.value(r).total_cmp(&a.value(r)))
        }
        (DataType::Float32, DataType::Float32) => {
            let (b, a) = (
                b.as_primitive::<arrow::datatypes::Float32Type>(),
                a.as_primitive::<arrow::datatypes::Float32Type>(),
            );
            Some(b.value(r).total_cmp(&a.value(r)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float_state(rows: &[&[f64]], moments: bool) -> ArrayRef {
        let mut p = FloatParts::default();
        for vals in rows {
            let c = vals.first().copied().unwrap_or(0.0);
            let mut s1 = Dd::ZERO;
            let mut s2 = Dd::ZERO;
            for &v in *vals {
                let y = Dd::from_f64(v).sub(Dd::from_f64(if moments { c } else { 0.0 }));
                s1 = s1.add(y);
                s2 = s2.add(y.mul(y));
            }
            p.n.push(vals.len() as i64);
            p.s1.push(s1);
            p.c.push(c);
            p.s2.push(s2);
            p.special.push([0; 3]);
        }
        p.build(moments).unwrap()
    }

    #[test]
    fn moments_merge_and_subtract_across_shifts() {
        let all: &[f64] = &[3.0, 5.5, -2.25, 8.0, 1.0];
        let (early, late) = all.split_at(2);
        let whole = float_state(&[all], true);
        let merged = combine(
            StateKind::Float { moments: true },
            &float_state(&[late], true),
            &float_state(&[early], true),
            false,
        )
        .unwrap();
        let k = StateKind::Float { moments: true };
        for agg in [Agg::Var, Agg::Stddev] {
            assert_eq!(
                finish(agg, k, &merged, "f").unwrap().as_ref(),
                finish(agg, k, &whole, "f").unwrap().as_ref()
            );
        }
        let back = combine(k, &whole, &float_state(&[early], true), true).unwrap();
        assert_eq!(
            finish(Agg::Var, k, &back, "f").unwrap().as_ref(),
            finish(Agg::Var, k, &float_state(&[late], true), "f")
                .unwrap()
                .as_ref()
        );
    }

    #[test]
    fn first_last_and_extremes_merge_by_time_and_order() {
        let st = |kind, n: Vec<i64>, v: Vec<Option<i64>>| {
            with_value(kind, n, Some(Arc::new(Int64Array::from(v)) as ArrayRef)).unwrap()
        };
        for (kind, want) in [
            (StateKind::First, vec![Some(1), Some(7), None]),
            (StateKind::Last, vec![Some(7), Some(7), None]),
            (
                StateKind::Extreme { max: true },
                vec![Some(7), Some(7), None],
            ),
            (
                StateKind::Extreme { max: false },
                vec![Some(1), Some(7), None],
            ),
        ] {
            let later = st(kind, vec![1, 1, 0], vec![Some(7), Some(7), None]);
            let earlier = st(kind, vec![1, 0, 0], vec![Some(1), None, None]);
            let m = combine(kind, &later, &earlier, false).unwrap();
            let got = finish(Agg::Max, kind, &m, "f").unwrap();
            assert_eq!(
                got.as_ref(),
                &Int64Array::from(want) as &dyn Array,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn integer_sums_report_overflow_at_the_row() {
        let s = int_sum(vec![1, 2], vec![5, i64::MAX as i128 + 1]).unwrap();
        let e = finish(Agg::Sum, StateKind::IntSum, &s, "v:f").unwrap_err();
        assert!(e.to_string().contains("spine row 1"), "{e}");
    }
}
