//! The point-in-time rules of DESIGN §3, in one place.
//!
//! The offline sweep, the online read path and the tests' SQL reference all take their window
//! edges, aggregate result types, key matching and output names from here.

use serde::{Deserialize, Serialize};
use std::fmt;

use arrow_schema::DataType;

use crate::Duration;

/// Which ends of a window are included.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// (s, e] — the default.
    #[default]
    Right,
    /// [s, e)
    Left,
    /// [s, e]
    Both,
    /// (s, e)
    Neither,
}

impl Closed {
    /// The valid spellings, for error messages.
    pub const NAMES: &'static str = "right, left, both, neither";

    /// Read a closure as written in `quiver.yaml`; `None` if unknown.
    pub fn parse(s: &str) -> Option<Closed> {
        Some(match s {
            "right" => Closed::Right,
            "left" => Closed::Left,
            "both" => Closed::Both,
            "neither" => Closed::Neither,
            _ => return None,
        })
    }

    fn start_included(self) -> bool {
        matches!(self, Closed::Left | Closed::Both)
    }

    fn end_included(self) -> bool {
        matches!(self, Closed::Right | Closed::Both)
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closed::Right => "right",
            Closed::Left => "left",
            Closed::Both => "both",
            Closed::Neither => "neither",
        })
    }
}

/// The lower edge of a window: which event times are at or after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lower {
    /// No lower edge: every earlier event counts (a lifetime window, or no ttl).
    Unbounded,
    /// event time > x
    Exclusive(i64),
    /// event time >= x
    Inclusive(i64),
}

/// The upper edge of a window: which event times are at or before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upper {
    /// event time < x
    Exclusive(i64),
    /// event time <= x
    Inclusive(i64),
}

impl Lower {
    /// True when an event at `ev` is not before this edge. Monotone in `ev` (false, then true),
    /// which is what lets a sorted sweep find the edge with a moving pointer.
    #[inline]
    pub fn admits(self, ev: i64) -> bool {
        match self {
            Lower::Unbounded => true,
            Lower::Exclusive(x) => ev > x,
            Lower::Inclusive(x) => ev >= x,
        }
    }

    /// The smallest event time admitted, for pruning scans.
    pub fn min_time(self) -> Option<i64> {
        match self {
            Lower::Unbounded => None,
            Lower::Exclusive(x) => Some(x.saturating_add(1)),
            Lower::Inclusive(x) => Some(x),
        }
    }
}

impl Upper {
    /// True when an event at `ev` is not after this edge. Monotone in `ev` (true, then false).
    #[inline]
    pub fn admits(self, ev: i64) -> bool {
        match self {
            Upper::Exclusive(x) => ev < x,
            Upper::Inclusive(x) => ev <= x,
        }
    }
}

/// The time window of a window-aggregate feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// `None` is a lifetime window.
    pub length: Option<Duration>,
    /// How far before the spine time the window ends; 0: at it.
    pub offset: Duration,
    /// Which ends of the window are included.
    pub closed: Closed,
}

impl Window {
    /// Edges for a spine row at `t`: end `e = t − offset`, start `s = e − length`.
    #[inline]
    pub fn edges(&self, t: i64) -> (Lower, Upper) {
        let e = t.saturating_sub(self.offset.micros());
        let upper = if self.closed.end_included() {
            Upper::Inclusive(e)
        } else {
            Upper::Exclusive(e)
        };
        let lower = match self.length {
            None => Lower::Unbounded,
            Some(w) => {
                let s = e.saturating_sub(w.micros());
                if self.closed.start_included() {
                    Lower::Inclusive(s)
                } else {
                    Lower::Exclusive(s)
                }
            }
        };
        (lower, upper)
    }

    /// Whether an event at `ev` falls in the window of a spine row at `t`.
    pub fn contains(&self, t: i64, ev: i64) -> bool {
        let (lo, hi) = self.edges(t);
        lo.admits(ev) && hi.admits(ev)
    }

    /// The spine times at which an event at `ev` is in the window: `[enter, leave)`,
    /// `leave` = `None` for a lifetime window (the event stays in). A window's value moves
    /// only at these instants, which is what lets the online path serve any later lookup
    /// time from values computed at them.
    pub fn presence(&self, ev: i64) -> (i64, Option<i64>) {
        // end e = t − offset admits ev when ev ≤ e (or ev < e): t ≥ ev + offset (+ 1)
        let enter = ev
            .saturating_add(self.offset.micros())
            .saturating_add(!self.closed.end_included() as i64);
        // start s = e − length admits ev when ev ≥ s (or ev > s): t ≤ ev + offset + length
        // (or t < …)
        let leave = self.length.map(|w| {
            ev.saturating_add(self.offset.micros())
                .saturating_add(w.micros())
                .saturating_add(self.closed.start_included() as i64)
        });
        (enter, leave)
    }

    /// How far before the spine time this window can reach; `None` for lifetime windows.
    pub fn reach(&self) -> Option<i64> {
        self.length
            .map(|w| w.micros().saturating_add(self.offset.micros()))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.length {
            Some(w) => write!(f, "{w}")?,
            None => write!(f, "lifetime")?,
        }
        if self.offset != Duration::ZERO {
            write!(f, " offset {}", self.offset)?;
        }
        if self.closed != Closed::Right {
            write!(f, " closed {}", self.closed)?;
        }
        Ok(())
    }
}

/// Edges of a latest-value lookup at `t`: event time in [t − ttl, t], both ends included,
/// as Feast does; no ttl = unbounded.
#[inline]
pub fn latest_edges(ttl: Option<Duration>, t: i64) -> (Lower, Upper) {
    let lower = match ttl {
        None => Lower::Unbounded,
        Some(ttl) => Lower::Inclusive(t.saturating_sub(ttl.micros())),
    };
    (lower, Upper::Inclusive(t))
}

/// An aggregate function of a window-aggregate feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    /// The number of events with a non-null value (of rows, for column `*`).
    Count,
    /// The sum of the values: Int64 for integer columns, Float64 otherwise.
    Sum,
    /// The arithmetic mean of the values (also written `avg`).
    Mean,
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
    /// The earliest non-null value in the window.
    First,
    /// The latest non-null value in the window.
    Last,
    /// The sample standard deviation of the values (null under two values).
    Stddev,
    /// The sample variance of the values (null under two values).
    Var,
    /// The number of distinct non-null values.
    CountDistinct,
}

impl Agg {
    /// The valid spellings, for error messages.
    pub const NAMES: &'static str =
        "count, sum, mean, min, max, first, last, stddev, var, count_distinct";

    /// Read an aggregate as written in `quiver.yaml` (`avg` is `mean`); `None` if unknown.
    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "count" => Agg::Count,
            "sum" => Agg::Sum,
            "mean" | "avg" => Agg::Mean,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "first" => Agg::First,
            "last" => Agg::Last,
            "stddev" => Agg::Stddev,
            "var" => Agg::Var,
            "count_distinct" => Agg::CountDistinct,
            _ => return None,
        })
    }

    /// The aggregate's name as written in `quiver.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Mean => "mean",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::First => "first",
            Agg::Last => "last",
            Agg::Stddev => "stddev",
            Agg::Var => "var",
            Agg::CountDistinct => "count_distinct",
        }
    }

    /// The result type for an input column of type `input` (DESIGN §3 "Types"), or what
    /// the aggregate needs when the type does not fit.
    pub fn output_type(self, input: &DataType) -> Result<DataType, String> {
        let numeric = is_numeric(input);
        match self {
            Agg::Count | Agg::CountDistinct
                if self == Agg::CountDistinct && !is_hashable(input) =>
            {
                Err(format!(
                    "`count_distinct` needs numbers, strings, booleans or times, not {input}"
                ))
            }
            Agg::Count | Agg::CountDistinct => Ok(DataType::Int64),
            Agg::Sum if is_integer(input) => Ok(DataType::Int64),
            Agg::Sum if numeric => Ok(DataType::Float64),
            Agg::Mean | Agg::Stddev | Agg::Var if numeric => Ok(DataType::Float64),
            Agg::Sum | Agg::Mean | Agg::Stddev | Agg::Var => Err(format!(
                "`{}` needs a number (an integer or float column), not {input}",
                self.name()
            )),
            Agg::Min | Agg::Max if is_ordered(input) => Ok(input.clone()),
            Agg::Min | Agg::Max => Err(format!(
                "`{}` needs an ordered column (numbers, strings, booleans, times), not {input}",
                self.name()
            )),
            Agg::First | Agg::Last => Ok(input.clone()),
        }
    }

    /// The value of an empty window: 0 for counts, null (`None`) for everything else.
    pub fn empty_is_zero(self) -> bool {
        matches!(self, Agg::Count | Agg::CountDistinct)
    }
}

impl fmt::Display for Agg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a column type is an integer of any width, signed or unsigned.
pub fn is_integer(dt: &DataType) -> bool {
    dt.is_integer()
}

/// Whether a column type is a number (integer or float): what `sum`, `mean`, `stddev` and `var`
/// take.
pub fn is_numeric(dt: &DataType) -> bool {
    dt.is_integer()
        || matches!(
            dt,
            DataType::Float16 | DataType::Float32 | DataType::Float64
        )
}

fn is_temporal(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Duration(_)
    )
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Whether values of a column type can be ordered: what `min` and `max` take.
pub fn is_ordered(dt: &DataType) -> bool {
    is_numeric(dt) || is_temporal(dt) || is_string(dt) || *dt == DataType::Boolean
}

/// Whether values of a column type can be compared for equality: what `count_distinct` and key
/// columns take.
pub fn is_hashable(dt: &DataType) -> bool {
    is_ordered(dt)
}

/// How key columns of the spine and of a source are matched (DESIGN §3 "Output"): integers of
/// any width match by value (both become Int64), strings match strings (both become Utf8),
/// equal types match; any other pair is an error before the join runs.
pub fn key_join_type(spine: &DataType, source: &DataType) -> Result<DataType, String> {
    if spine.is_integer() && source.is_integer() {
        return Ok(DataType::Int64);
    }
    if is_string(spine) && is_string(source) {
        return Ok(DataType::Utf8);
    }
    if spine == source && is_hashable(spine) {
        return Ok(spine.clone());
    }
    Err(format!(
        "spine has {spine} and source has {source}; keys must both be integers, both strings, or the same type"
    ))
}

/// Names of the feature columns of a join (DESIGN §3 "Output"): the feature's name, or
/// `view__feature` when `full_names` is set, when two requested features share a name, or when
/// the name is already a spine column.
pub fn output_names(
    requested: &[(&str, &str)],
    full_names: bool,
    spine_columns: &[&str],
) -> Vec<String> {
    requested
        .iter()
        .map(|(view, feature)| {
            let clash = requested.iter().filter(|(_, f)| f == feature).count() > 1
                || spine_columns.contains(feature);
            if full_names || clash {
                format!("{view}__{feature}")
            } else {
                feature.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn presence_is_exactly_the_spine_times_whose_window_holds_the_event() {
        let ev = 1_000_000;
        for closed in [Closed::Right, Closed::Left, Closed::Both, Closed::Neither] {
            for (len, off) in [
                (Some("3us"), "0us"),
                (Some("1us"), "2us"),
                (None, "4us"),
                (None, "0us"),
            ] {
                let win = w(len, off, closed);
                let (enter, leave) = win.presence(ev);
                for t in ev - 3..ev + 12 {
                    let inside = t >= enter && leave.is_none_or(|l| t < l);
                    assert_eq!(
                        win.contains(t, ev),
                        inside,
                        "{win} t={t} presence {enter}..{leave:?}"
                    );
                }
            }
        }
    }

    fn w(len: Option<&str>, offset: &str, closed: Closed) -> Window {
        Window {
            length: len.map(|l| Duration::parse(l).unwrap()),
            offset: Duration::parse(offset).unwrap(),
            closed,
        }
    }

    #[test]
    fn every_closure_at_both_edges() {
        let t = 100 * DAY;
        let (s, e) = (t - 30 * DAY, t);
        let cases = [
            (Closed::Right, false, true),
            (Closed::Left, true, false),
            (Closed::Both, true, true),
            (Closed::Neither, false, false),
        ];
        for (closed, start_in, end_in) in cases {
            let win = w(Some("30d"), "0s", closed);
            assert_eq!(win.contains(t, s), start_in, "{closed} start");
            assert_eq!(win.contains(t, e), end_in, "{closed} end");
            assert!(!win.contains(t, s - 1), "{closed} before start");
            assert!(win.contains(t, s + 1), "{closed} after start");
            assert!(win.contains(t, e - 1), "{closed} before end");
            assert!(!win.contains(t, e + 1), "{closed} after end");
        }
    }

    #[test]
    fn offset_moves_both_edges() {
        let t = 100 * DAY;
        let win = w(Some("1d"), "1h", Closed::Both);
        let e = t - 3_600_000_000;
        assert!(win.contains(t, e) && win.contains(t, e - DAY));
        assert!(!win.contains(t, e + 1) && !win.contains(t, e - DAY - 1));
    }

    #[test]
    fn lifetime_has_no_start() {
        let t = 100 * DAY;
        assert!(w(None, "0s", Closed::Right).contains(t, i64::MIN + 1));
        assert!(!w(None, "0s", Closed::Left).contains(t, t));
    }

    #[test]
    fn latest_ttl_is_inclusive_both_ends() {
        let ttl = Some(Duration::parse("1d").unwrap());
        let (lo, hi) = latest_edges(ttl, 10 * DAY);
        assert!(lo.admits(9 * DAY) && hi.admits(10 * DAY));
        assert!(!lo.admits(9 * DAY - 1) && !hi.admits(10 * DAY + 1));
    }

    #[test]
    fn result_types() {
        assert_eq!(Agg::Sum.output_type(&DataType::Int32), Ok(DataType::Int64));
        assert_eq!(
            Agg::Sum.output_type(&DataType::Float32),
            Ok(DataType::Float64)
        );
        assert_eq!(Agg::Count.output_type(&DataType::Utf8), Ok(DataType::Int64));
        assert_eq!(Agg::Max.output_type(&DataType::Utf8), Ok(DataType::Utf8));
        assert_eq!(
            Agg::Mean.output_type(&DataType::UInt8),
            Ok(DataType::Float64)
        );
        assert!(
            Agg::Sum
                .output_type(&DataType::Utf8)
                .unwrap_err()
                .contains("needs a number")
        );
    }

    #[test]
    fn keys_widen_integers_only() {
        assert_eq!(
            key_join_type(&DataType::Int32, &DataType::UInt64),
            Ok(DataType::Int64)
        );
        assert_eq!(
            key_join_type(&DataType::LargeUtf8, &DataType::Utf8),
            Ok(DataType::Utf8)
        );
        assert!(key_join_type(&DataType::Int64, &DataType::Utf8).is_err());
    }

    #[test]
    fn names_collide_to_full_names() {
        let req = [("a", "x"), ("b", "x"), ("b", "y"), ("b", "label")];
        assert_eq!(
            output_names(&req, false, &["label"]),
            ["a__x", "b__x", "y", "b__label"]
        );
        assert_eq!(output_names(&req[2..3], true, &[]), ["b__y"]);
    }
}
