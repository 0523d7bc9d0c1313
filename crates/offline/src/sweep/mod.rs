//! The point-in-time sweep of one bucket of a partition (DESIGN §4; buckets come from
//! `crate::pack`).
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub struct FeatureSpec {
    /// Output column name.
    pub name: String,
    /// `view:feature`, for messages.
    pub label: String,
    /// What the feature computes.
    pub kind: Kind,
    /// Index into the value columns; `None` for `count` of `*`.
    pub column: Option<usize>,
    /// Index into the filter columns.
    pub filter: Option<usize>,
    /// The Arrow type of the feature's output column.
    pub output_type: DataType,
    /// Emit the window's partial-aggregate state ([`crate::state`]) instead of its value
    /// (window aggregates with a mergeable state, sources without `filter_created`).
    pub state: bool,
}

/// What a feature computes from its view's events.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    /// An aggregate over each spine row's window.
    Agg(Agg, Window),
    /// The latest value within the view's ttl.
    Latest,
}

/// The spine rows of one bucket of a partition (`crate::pack`): key ids local to the
/// bucket (`NULL_ID` where a key or the time is null) and times in microseconds.
pub struct SpineSide {
    /// Each spine row's id (`__rid`).
    pub rid: UInt64Array,
    /// Each spine row's key id.
    pub ids: Vec<u32>,
    /// Each spine row's time.
    pub t: Vec<i64>,
    /// Number of distinct keys in the bucket (key ids are below it).
    pub nkeys: usize,
}

/// The events of one bucket, in arrival order, as `crate::pack` keeps them: only events
/// whose key is in the spine and whose time is set; `seq` is the source order.
#[derive(Default)]
pub struct EventSide {
    /// Each event's key id.
    pub ids: Vec<u32>,
    /// Each event's time, microseconds.
    pub t: Vec<i64>,
    /// Created times, null as `i64::MIN` (earliest).
    pub created: Option<Vec<i64>>,
    /// Each event's position in source order.
    pub seq: Vec<u64>,
    /// The lanes of [`Lanes`].
    pub floats: Vec<Vec<f64>>,
    /// Per int lane, each event's value.
    pub ints: Vec<Vec<i64>>,
    /// Per mask, 1 where the event counts (value set, filter true); `None` for a mask that
    /// keeps every event.
    pub masks: Vec<Option<Vec<u8>>>,
    /// Per value column, the Arrow array where the layout keeps it.
    pub raw: Vec<Option<ArrayRef>>,
    /// Filters as Arrow arrays (`filter_created` sources only).
    pub filters: Vec<Option<BooleanArray>>,
}

mod blocks;
mod extremes;
mod lanes;
mod sorted;

use blocks::*;
use extremes::*;
use lanes::*;
pub use lanes::{Keep, Lanes, OldEvents, needed_span};
use sorted::*;

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
