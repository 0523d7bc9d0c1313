//! Where the sweep finds each input ([`Lanes`]), what a partition keeps of its old events,
//! and the span of event times a spine's windows admit.

// The folder's modules share the imports of `sweep` (mod.rs).
use super::*;

/// Where the sweep finds each input, decided once per view from its features and the
/// event column types: numeric columns travel as f64 / i64 lanes and each (column, filter)
/// pair as a byte mask, so a packed event costs a few bytes per input; columns whose values
/// are returned as they are (other types), count_distinct's and `filter_created`'s inputs
/// stay Arrow arrays.
pub struct Lanes {
    /// The value column of each float / int lane.
    pub floats: Vec<usize>,
    /// The value column of each int lane.
    pub ints: Vec<usize>,
    /// A feature label per int lane, for the message when values do not fit in Int64.
    pub int_labels: Vec<String>,
    /// (value column, filter) of each mask; a mask with neither keeps every event.
    pub masks: Vec<(Option<usize>, Option<usize>)>,
    /// Per value column: kept as an Arrow array.
    pub raw: Vec<bool>,
    /// Filters kept as Arrow arrays (`filter_created`).
    pub raw_filters: bool,
    /// The Arrow type of each value column.
    pub types: Vec<DataType>,
    /// Per feature: what it computes from which input, and its mask.
    pub(super) inputs: Vec<(Input, usize)>,
}

/// Where a returned value comes from.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Src {
    Float(usize),
    Int(usize),
    Raw(usize),
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Pick {
    First,
    Last,
    Latest,
}

#[derive(Clone, Copy)]
pub(super) enum Input {
    Count,
    Distinct(usize),
    Pick(Pick, Src),
    Extreme(Src, bool),
    IntSum(usize),
    Float(Agg, usize),
}

impl Lanes {
    /// Lay out a view's `features` over value columns of `types`; under `filter_created`,
    /// values and filters stay Arrow arrays.
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

    pub(super) fn int_lane(&mut self, c: usize, label: &str) -> usize {
        let i = slot(&mut self.ints, c);
        if self.int_labels.len() < self.ints.len() {
            self.int_labels.push(label.to_string());
        }
        i
    }

    /// A returned value's source: a lane when the lane holds the column's exact type.
    pub(super) fn value_src(&mut self, c: usize, label: &str) -> Src {
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
/// such event. `crate::pack` keeps only those, so a spine covering the last months of a
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
pub(super) fn admitted((lower, upper): (Lower, Upper)) -> (i128, i128) {
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
pub(super) fn feature_edges(f: &FeatureSpec, ttl: Option<Duration>, t: i64) -> (Lower, Upper) {
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
