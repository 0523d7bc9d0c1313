//! Day tiles (ADR 0006 "Day tiles"): when every spine row's time falls on the same time of
//! day, a window of whole days ending a whole number of days before it is the disjoint union
//! of one-day windows, each ending on that time of day — the states of a **grid** of
//! (key, tile end) rows under a one-day window. The grid is swept like any spine, stored like
//! any spine's states, and matched against stored grids like any other spine, so a wider
//! window, a later day or another spine of the same days reads only the days no join has
//! tiled yet. Each spine row's state is then its tiles' states merged, latest first.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::array::{DynComparator, make_comparator};
use datafusion::arrow::compute::{SortColumn, SortOptions, lexsort_to_indices};
use datafusion::arrow::compute::{concat, take};
use quiver_core::Duration;
use quiver_core::semantics::{Closed, Window};
use quiver_core::time::MICROS_PER_DAY;

use crate::Result;
use crate::state::{self, StateKind};

/// The longest window tiled, in days (a longer one merges too many tiles per row).
const MAX_DAYS: i64 = 400;
/// The most cells (days × keys) a grid may span: its index is 4 bytes a cell.
const MAX_CELLS: usize = 16 << 20;
const NONE: u32 = u32::MAX;

/// The tile window of a closure: one day, ending at the tile's time.
pub(super) fn tile_window(closed: Closed) -> Window {
    Window {
        length: Some(Duration::from_micros(MICROS_PER_DAY)),
        offset: Duration::ZERO,
        closed,
    }
}

/// How a window splits into day tiles: how many, and how many days before the spine time
/// the latest one ends. `None` when it does not split: a lifetime window, a length or offset
/// that is not whole days, a single day (nothing to merge), or a closure that includes or
/// excludes both edges (the tiles of `[s, e]` would each hold their shared edge twice).
pub(super) fn split(w: &Window) -> Option<Tiling> {
    if !matches!(w.closed, Closed::Right | Closed::Left) {
        return None;
    }
    let (len, off) = (w.length?.micros(), w.offset.micros());
    if len % MICROS_PER_DAY != 0 || off % MICROS_PER_DAY != 0 || off < 0 {
        return None;
    }
    let days = len / MICROS_PER_DAY;
    (2..=MAX_DAYS).contains(&days).then_some(Tiling {
        days: days as u32,
        shift: off / MICROS_PER_DAY,
    })
}

/// A window as day tiles: `days` of them, the latest ending `shift` days before the spine
/// row's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tiling {
    pub days: u32,
    pub shift: i64,
}

/// The time of day every spine time falls on, when they all do (and none is null).
pub(super) fn phase(t: &Int64Array) -> Option<i64> {
    if t.is_empty() || t.null_count() > 0 {
        return None;
    }
    let p = t.value(0).rem_euclid(MICROS_PER_DAY);
    t.values()
        .iter()
        .all(|v| v.rem_euclid(MICROS_PER_DAY) == p)
        .then_some(p)
}

/// The (key, tile end) rows a spine's tiled windows need, and where each spine row's tiles
/// sit among them.
pub(super) struct Grid {
    /// The grid as a spine input (`__rid`, keys, time), ordered by (tile end, key): the
    /// days a later or wider join adds are runs of their own.
    pub sbatch: RecordBatch,
    /// Grid row of each (day − `first_day`, key id) cell, [`NONE`] where none is needed.
    cells: Vec<u32>,
    keys: usize,
    first_day: i64,
    /// Per spine row: its key id and the day number of its time.
    row_key: Vec<u32>,
    row_day: Vec<i64>,
}

impl Grid {
    /// The grid of `sbatch` (a spine input: `__rid`, keys, time) for windows tiled as
    /// `tilings`. `None` when the spine's times do not share a time of day, or the grid would
    /// pass `max_rows` rows (sparse keys: tiles would cost more than they save).
    pub fn build(
        sbatch: &RecordBatch,
        tilings: &[Tiling],
        max_rows: usize,
    ) -> Result<Option<Grid>> {
        let ncols = sbatch.num_columns();
        let Some(t) = sbatch
            .column(ncols - 1)
            .as_any()
            .downcast_ref::<Int64Array>()
        else {
            return Ok(None);
        };
        let (Some(phase), false) = (phase(t), tilings.is_empty()) else {
            return Ok(None);
        };
        let n = t.len();
        // key ids in the keys' sort order: the same keys number alike whatever spine they
        // come from
        let key_cols = &sbatch.columns()[1..ncols - 1];
        let sort: Vec<SortColumn> = key_cols
            .iter()
            .map(|c| SortColumn {
                values: Arc::clone(c),
                options: None,
            })
            .collect();
        let order = lexsort_to_indices(&sort, None)?;
        let cmp: Vec<DynComparator> = key_cols
            .iter()
            .map(|c| make_comparator(c.as_ref(), c.as_ref(), SortOptions::default()))
            .collect::<std::result::Result<_, _>>()?;
        let same = |a: usize, b: usize| cmp.iter().all(|c| c(a, b).is_eq());
        let mut row_key = vec![0u32; n];
        let mut first_of_key: Vec<u32> = Vec::new();
        for (i, &r) in order.values().iter().enumerate() {
            if i == 0 || !same(order.value(i - 1) as usize, r as usize) {
                first_of_key.push(r);
            }
            row_key[r as usize] = first_of_key.len() as u32 - 1;
        }
        let keys = first_of_key.len();
        let row_day: Vec<i64> = t
            .values()
            .iter()
            .map(|v| (v - phase).div_euclid(MICROS_PER_DAY))
            .collect();
        let (dmin, dmax) = row_day
            .iter()
            .fold((i64::MAX, i64::MIN), |(a, b), &d| (a.min(d), b.max(d)));
        let reach = tilings.iter().map(|w| w.shift + w.days as i64 - 1).max();
        let near = tilings.iter().map(|w| w.shift).min();
        let (Some(reach), Some(near)) = (reach, near) else {
            return Ok(None);
        };
        let (first_day, last_day) = (dmin - reach, dmax - near);
        // the earliest tile's start must be a time (no overflow at the far past)
        let earliest = (first_day - 1)
            .checked_mul(MICROS_PER_DAY)
            .and_then(|v| v.checked_add(phase));
        let days = (last_day - first_day + 1) as usize;
        if earliest.is_none() || days.saturating_mul(keys) > MAX_CELLS {
            return Ok(None);
        }
        let mut cells = vec![NONE; days * keys];
        for (&k, &d) in row_key.iter().zip(&row_day) {
            for w in tilings {
                let last = d - w.shift - first_day;
                for j in 0..w.days as i64 {
                    cells[(last - j) as usize * keys + k as usize] = 0;
                }
            }
        }
        let mut rid = 0u32;
        let (mut take_key, mut ends) = (Vec::new(), Vec::new());
        for (c, cell) in cells.iter_mut().enumerate() {
            if *cell == NONE {
                continue;
            }
            if rid as usize >= max_rows {
                return Ok(None);
            }
            *cell = rid;
            rid += 1;
            take_key.push(first_of_key[c % keys]);
            ends.push(phase + (first_day + (c / keys) as i64) * MICROS_PER_DAY);
        }
        let idx = UInt32Array::from(take_key);
        let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(0..rid as u64))];
        for c in key_cols {
            cols.push(take(c.as_ref(), &idx, None)?);
        }
        cols.push(Arc::new(Int64Array::from(ends)));
        Ok(Some(Grid {
            sbatch: RecordBatch::try_new(sbatch.schema(), cols)?,
            cells,
            keys,
            first_day,
            row_key,
            row_day,
        }))
    }

    /// Grid rows.
    pub fn rows(&self) -> usize {
        self.sbatch.num_rows()
    }

    /// The grid row of each spine row's tile `j` (0: the latest) of a window tiled as `w`.
    #[cfg(test)]
    fn tile(&self, w: Tiling, j: i64) -> UInt32Array {
        self.row_key
            .iter()
            .zip(&self.row_day)
            .map(|(&k, &d)| {
                let day = (d - w.shift - j - self.first_day) as usize;
                self.cells[day * self.keys + k as usize]
            })
            .collect()
    }

    /// Cells the grid's index spans (days × keys): the states a merge over it computes.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Each spine row's state of a window tiled as `w`: its tiles' states (`tiles`, one per
    /// grid row) merged, later ones first, as widening merges a stored window with the band
    /// before it (which decides first and last).
    ///
    /// Merged by blocks of `w.days` days (van Herk / Gil-Werman): within each block, every
    /// cell's merge of the tiles from the block's start up to it (prefixes) and from it to
    /// the block's end (suffixes); a window of `w.days` days is then a suffix of one block
    /// and a prefix of the next, one merge per row, for about two merges per cell in all
    /// (merging each row's tiles one by one took `w.days` per row). Cells the grid does not
    /// hold take an empty state: no row's window reaches them, but a block's run may.
    pub fn compose(&self, kind: StateKind, tiles: &ArrayRef, w: Tiling) -> Result<ArrayRef> {
        let (m, keys) = (w.days as usize, self.keys);
        // counts, sums and 64-bit min/max have kernels of their own (no array per step)
        let firsts: Vec<(u32, usize)> = self
            .row_key
            .iter()
            .zip(&self.row_day)
            .map(|(&k, &d)| (k, (d - w.shift - self.first_day) as usize + 1 - m))
            .collect();
        if let Some(done) = state::tile_windows(kind, tiles, (&self.cells, keys), m, &firsts)? {
            return Ok(done);
        }
        let days = self.cells.len() / keys;
        let ext = concat(&[tiles.as_ref(), state::empty(tiles.data_type(), 1)?.as_ref()])?;
        let empty = tiles.len() as u32;
        // the cells at offset `i` of their blocks, by (block, key)
        let at = |i: usize| -> Result<ArrayRef> {
            let idx: UInt32Array = (i..days)
                .step_by(m)
                .flat_map(|d| self.cells[d * keys..(d + 1) * keys].iter())
                .map(|&c| if c == NONE { empty } else { c })
                .collect();
            Ok(take(ext.as_ref(), &idx, None)?)
        };
        let offsets = m.min(days);
        let cells: Vec<ArrayRef> = (0..offsets).map(at).collect::<Result<_>>()?;
        let mut pre: Vec<ArrayRef> = Vec::with_capacity(offsets);
        for d in &cells {
            pre.push(match pre.last() {
                None => Arc::clone(d),
                Some(p) => state::combine(kind, d, &p.slice(0, d.len()), false)?,
            });
        }
        let mut suf: Vec<ArrayRef> = Vec::with_capacity(offsets);
        for d in cells.iter().rev() {
            // blocks holding the next offset come first; the last block may end before it
            suf.push(match suf.last() {
                None => Arc::clone(d),
                Some(later) => {
                    let l = later.len();
                    let head = state::combine(kind, later, &d.slice(0, l), false)?;
                    match l == d.len() {
                        true => head,
                        false => concat(&[head.as_ref(), d.slice(l, d.len() - l).as_ref()])?,
                    }
                }
            });
        }
        suf.reverse();
        // each row: the suffix of its first day's block and the prefix of its last day's
        // (a window that is one whole block: that block's suffix from its first day), taken
        // from all of them laid end to end, an empty state last
        let none = state::empty(tiles.data_type(), 1)?;
        let mut parts: Vec<&dyn Array> = pre.iter().map(|a| a.as_ref()).collect();
        parts.extend(suf.iter().map(|a| a.as_ref()));
        parts.push(none.as_ref());
        let mut base = Vec::with_capacity(parts.len());
        let mut at_end = 0u32;
        for a in &parts {
            base.push(at_end);
            at_end += a.len() as u32;
        }
        let all = concat(&parts)?;
        let none_at = at_end - 1;
        let n = firsts.len();
        let (mut later, mut earlier) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &(k, a) in &firsts {
            let e = a + m - 1;
            let (qa, ia) = (a / m, a % m);
            let row = |block: usize| (block * keys) as u32 + k;
            if ia == 0 {
                later.push(base[offsets] + row(qa));
                earlier.push(none_at);
            } else {
                later.push(base[e % m] + row(e / m));
                earlier.push(base[offsets + ia] + row(qa));
            }
        }
        let take_rows = |idx: Vec<u32>| take(all.as_ref(), &UInt32Array::from(idx), None);
        state::combine(kind, &take_rows(later)?, &take_rows(earlier)?, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    const DAY: i64 = MICROS_PER_DAY;

    fn spine(keys: &[i64], t: &[i64]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("__rid", DataType::UInt64, false),
            Field::new("__k0", DataType::Int64, true),
            Field::new("__t", DataType::Int64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(UInt64Array::from_iter_values(0..keys.len() as u64)),
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(Int64Array::from(t.to_vec())),
            ],
        )
        .unwrap()
    }

    fn w(days: i64, off: i64, closed: Closed) -> Window {
        Window {
            length: Some(Duration::from_micros(days * DAY)),
            offset: Duration::from_micros(off),
            closed,
        }
    }

    #[test]
    fn only_whole_days_with_one_edge_included_split() {
        let r = Closed::Right;
        assert_eq!(split(&w(30, 0, r)), Some(Tiling { days: 30, shift: 0 }));
        assert_eq!(
            split(&w(7, 2 * DAY, Closed::Left)),
            Some(Tiling { days: 7, shift: 2 })
        );
        assert_eq!(split(&w(1, 0, r)), None, "one tile: nothing to merge");
        assert_eq!(split(&w(30, 3_600_000_000, r)), None, "offset of an hour");
        assert_eq!(split(&w(30, 0, Closed::Both)), None);
        assert_eq!(split(&w(30, 0, Closed::Neither)), None);
        let hours = Window {
            length: Some(Duration::from_micros(36 * 3_600_000_000)),
            ..w(1, 0, r)
        };
        assert_eq!(split(&hours), None);
        let lifetime = Window {
            length: None,
            ..w(1, 0, r)
        };
        assert_eq!(split(&lifetime), None);
    }

    #[test]
    fn a_spine_off_its_time_of_day_has_no_grid() {
        let t = [10 * DAY + 5, 11 * DAY + 5, 11 * DAY + 6];
        let tiling = [Tiling { days: 2, shift: 0 }];
        let sp = spine(&[1, 2, 3], &t);
        assert!(Grid::build(&sp, &tiling, 100).unwrap().is_none());
        let sp = spine(&[1, 2], &t[..2]);
        assert!(Grid::build(&sp, &tiling, 100).unwrap().is_some());
    }

    #[test]
    fn the_grid_holds_each_needed_tile_once_in_day_then_key_order() {
        // key 7 on days 10 and 11, key 3 on day 11; 3-day windows ending a day before
        let sp = spine(&[7, 3, 7], &[10 * DAY, 11 * DAY, 11 * DAY]);
        let tiling = Tiling { days: 3, shift: 1 };
        let g = Grid::build(&sp, &[tiling], 100).unwrap().unwrap();
        let keys = g
            .sbatch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let ends = g
            .sbatch
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let got: Vec<(i64, i64)> = (0..g.rows())
            .map(|r| (ends.value(r) / DAY, keys.value(r)))
            .collect();
        // key 7 needs days 7..=10, key 3 days 8..=10
        assert_eq!(
            got,
            vec![(7, 7), (8, 3), (8, 7), (9, 3), (9, 7), (10, 3), (10, 7)]
        );
        assert!(
            Grid::build(&sp, &[tiling], 6).unwrap().is_none(),
            "over max_rows"
        );
        // row 2 (key 7, day 11): tiles ending on days 10, 9, 8
        let at = |j| g.tile(tiling, j).value(2) as usize;
        assert_eq!((at(0), at(1), at(2)), (6, 4, 2));
    }
}
