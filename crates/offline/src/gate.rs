//! Planning reuse for one feature view: which stored state each feature can start from, the
//! band of events still to scan, and the cost gate between reuse and recomputation
//! (DESIGN §4 "Reuse", ADR 0006).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use quiver_core::Duration;
use quiver_core::semantics::{Closed, Window};

use crate::reuse::Entry;
use crate::state::StateKind;
use crate::stats::{Estimate, ScanStats};
use crate::sweep::Kind;
use quiver_core::time::format_instant as time_text;

/// How one requested feature is produced.
#[derive(Debug, Clone)]
pub enum Choice {
    /// Computed from the scan (as a state when `kind` is set, so it can be stored).
    Cold,
    /// The stored state is this window's.
    Exact(Entry),
    /// The stored state plus the band before it.
    Widen(Entry, Window),
    /// The stored state minus the band at its start.
    Narrow(Entry, Window),
}

impl Choice {
    /// The stored state this choice starts from (`None` when cold).
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Choice::Cold => None,
            Choice::Exact(e) | Choice::Widen(e, _) | Choice::Narrow(e, _) => Some(e),
        }
    }

    /// The band of events merged in (widen) or subtracted (narrow), if any.
    pub fn band(&self) -> Option<Window> {
        match self {
            Choice::Widen(_, b) | Choice::Narrow(_, b) => Some(*b),
            _ => None,
        }
    }

    /// One explain line: how the feature of window `want` is produced.
    pub fn describe(&self, want: &Window) -> String {
        match self {
            Choice::Cold => format!("{want}: computed from the scan"),
            Choice::Exact(e) => format!(
                "{want}: exact match (stored state, {})",
                bytes(e.bytes as f64)
            ),
            Choice::Widen(e, b) => format!(
                "{want}: widened from the stored {} plus the band {} ({})",
                e.window,
                band_text(b),
                bytes(e.bytes as f64)
            ),
            Choice::Narrow(e, b) => format!(
                "{want}: narrowed from the stored {} minus the band {} ({})",
                e.window,
                band_text(b),
                bytes(e.bytes as f64)
            ),
        }
    }
}

fn band_text(b: &Window) -> String {
    let e = b.offset;
    let (open, close) = match b.closed {
        Closed::Left => ("[", ")"),
        _ => ("(", "]"),
    };
    match b.length {
        Some(l) => format!(
            "{open}t−{}, t−{}{close}",
            Duration::from_micros(e.micros() + l.micros()),
            e
        ),
        None => format!("(−∞, t−{e}{close}"),
    }
}

/// The catalog's window for latest-value features (they are only ever reused exactly; their
/// TTL is part of the definition key).
pub const LATEST: Window = Window {
    length: None,
    offset: Duration::ZERO,
    closed: Closed::Right,
};

/// The catalog's window of a feature: its own, or [`LATEST`] for a latest value.
pub fn window_of(kind: &Kind) -> Window {
    match kind {
        Kind::Agg(_, w) => *w,
        Kind::Latest => LATEST,
    }
}

/// The events of `big`'s window that are not in the window with the same end and closure
/// and length `small` (which must be shorter): a window that ends where the short one
/// starts. With the window (s, e] or [s, e] and the short one starting at s′, that is
/// (s, s′] when starts are excluded and [s, s′) when they are included.
pub fn band(big: Window, small: Duration) -> Option<Window> {
    if small.micros() <= 0 || big.length.is_some_and(|l| l.micros() <= small.micros()) {
        return None;
    }
    let start_included = matches!(big.closed, Closed::Left | Closed::Both);
    Some(Window {
        length: big
            .length
            .map(|l| Duration::from_micros(l.micros() - small.micros())),
        offset: Duration::from_micros(big.offset.micros().checked_add(small.micros())?),
        closed: if start_included {
            Closed::Left
        } else {
            Closed::Right
        },
    })
}

fn len_micros(w: &Window) -> i64 {
    w.length.map_or(i64::MAX, |l| l.micros())
}

/// The best stored state for a window: an exact match, else the widening or narrowing with
/// the shortest band (narrowing only for invertible states).
pub fn choose(want: &Window, kind: StateKind, stored: &[Entry]) -> Choice {
    if let Some(e) = stored.iter().find(|e| e.window == *want) {
        return Choice::Exact(e.clone());
    }
    let mut best: Option<(i64, Choice)> = None;
    for e in stored
        .iter()
        .filter(|e| e.window.offset == want.offset && e.window.closed == want.closed)
    {
        let (have, need) = (len_micros(&e.window), len_micros(want));
        let candidate = if have < need {
            e.window
                .length
                .and_then(|s| band(*want, s))
                .map(|b| Choice::Widen(e.clone(), b))
        } else if kind.invertible() {
            want.length
                .and_then(|s| band(e.window, s))
                .map(|b| Choice::Narrow(e.clone(), b))
        } else {
            None
        };
        if let Some(c) = candidate {
            let width = len_micros(&c.band().expect("band"));
            if best.as_ref().is_none_or(|(w, _)| width < *w) {
                best = Some((width, c));
            }
        }
    }
    best.map(|(_, s)| s).unwrap_or(Choice::Cold)
}

/// The event times a feature needs for spine times in [tmin, tmax]: `lo` = `None` unbounded.
pub fn needed(kind: &Kind, ttl: Option<Duration>, tmin: i64, tmax: i64) -> (Option<i64>, i64) {
    match kind {
        Kind::Agg(_, w) => (
            w.reach().map(|r| tmin.saturating_sub(r)),
            tmax.saturating_sub(w.offset.micros()),
        ),
        Kind::Latest => (ttl.map(|d| tmin.saturating_sub(d.micros())), tmax),
    }
}

/// The smallest range holding every range; `None` when there is nothing to scan.
pub fn hull(ranges: impl IntoIterator<Item = (Option<i64>, i64)>) -> Option<(Option<i64>, i64)> {
    ranges.into_iter().reduce(|a, b| {
        let lo = match (a.0, b.0) {
            (Some(x), Some(y)) => Some(x.min(y)),
            _ => None,
        };
        (lo, a.1.max(b.1))
    })
}

/// A plan's expected work: the scan, the spine rows swept, the stored states read and the
/// spine rows matched against stored spines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// What the source scan is expected to read.
    pub scan: Estimate,
    /// Bytes of stored states read.
    pub stored_bytes: u64,
    /// Rows of stored states read.
    pub stored_rows: u64,
    /// Stored files read (each part of each stored state).
    pub stored_files: u64,
    /// Spine rows swept, once per feature computed (cold features and bands over every row,
    /// the rest over the rows other spines lack).
    pub swept: u64,
    /// Spine rows matched against other spines' rows (once per spine, whatever the features).
    pub matched: u64,
    /// States merged: a stored state with its band (one per spine row and feature), and day
    /// tiles (about two per grid cell and one per spine row, for each state merged).
    pub merged: u64,
}

/// The cost gate's time model: wall seconds per unit of each kind of work, on the 2 cores a
/// join runs on. Fitted to the stage timings (`QUIVER_PROFILE=1`) of cold and warm runs of
/// `benches/reuse_process.py` on the project's 2-core machine (benches/README.md, "Reuse,
/// whole process"): a cold daily join decoded 13 M event rows and packed 11.6 M in 0.59 s and
/// swept them in 0.46 s; a warm one decoded 4 M in 0.17 s; an exact repeat read and finished
/// 5.5 M stored state rows in 0.08 s; the dense workload's 30d snapshot join merged its
/// 62 k rows from 120 k day tiles (a sum and a max: about 604 k merges) in 19 ms (`--dense`).
#[derive(Debug, Clone, Copy)]
pub struct TimeModel {
    /// Per event row decoded (every row of every row group the scan reads).
    pub scan_row: f64,
    /// Per event row inside the scanned time range (packed by key and time, swept).
    pub event_row: f64,
    /// Per spine row swept, per feature (the sweep's output, finishing).
    pub swept_row: f64,
    /// Per stored state row read (reading the file, finishing).
    pub stored_row: f64,
    /// Per stored file read (finding, opening and decoding its header): what makes reuse
    /// lose on tiny joins, where it saves nothing else.
    pub stored_file: f64,
    /// Per spine row matched against a stored spine (aligning, or hashing when it does not
    /// line up).
    pub matched_row: f64,
    /// Per state merged (two states in, one out): widening, narrowing, day tiles.
    pub merged_row: f64,
}

/// The fitted model (see [`TimeModel`]).
pub const TIME_MODEL: TimeModel = TimeModel {
    scan_row: 4.0e-8,
    event_row: 4.0e-8,
    swept_row: 2.0e-8,
    stored_row: 1.5e-8,
    stored_file: 5.0e-4,
    matched_row: 1.0e-8,
    merged_row: 3.0e-8,
};

impl Cost {
    /// The cost of scanning `range` (the whole table when there are no `stats`) plus reading
    /// the `stored` states.
    pub fn of(
        stats: Option<&ScanStats>,
        range: Option<(Option<i64>, i64)>,
        stored: &[&Entry],
    ) -> Cost {
        let scan = match (range, stats) {
            (None, _) => Estimate::default(),
            (Some((lo, hi)), Some(s)) => s.estimate(lo, hi),
            // No statistics: count the whole table as read, whatever the range.
            (Some(_), None) => Estimate {
                bytes: u64::MAX / 4,
                rows: u64::MAX / 4,
                groups: 0,
                in_range: u64::MAX / 4,
            },
        };
        Cost {
            scan,
            stored_bytes: stored.iter().map(|e| e.bytes).sum(),
            stored_rows: stored.iter().map(|e| e.rows).sum(),
            stored_files: stored.iter().map(|e| e.parts.len().max(1) as u64).sum(),
            swept: 0,
            matched: 0,
            merged: 0,
        }
    }

    /// The expected seconds of this work under `m`.
    pub fn seconds(&self, m: &TimeModel) -> f64 {
        if self.scan.bytes >= u64::MAX / 4 {
            return f64::INFINITY;
        }
        self.scan.rows as f64 * m.scan_row
            + self.scan.in_range as f64 * m.event_row
            + self.swept as f64 * m.swept_row
            + self.stored_rows as f64 * m.stored_row
            + self.stored_files as f64 * m.stored_file
            + self.matched as f64 * m.matched_row
            + self.merged as f64 * m.merged_row
    }

    /// All bytes expected to be read: the scan's and the stored states'.
    pub fn bytes(&self) -> u64 {
        self.scan.bytes.saturating_add(self.stored_bytes)
    }

    /// All rows expected to be read: the scan's and the stored states'.
    pub fn rows(&self) -> u64 {
        self.scan.rows.saturating_add(self.stored_rows)
    }

    /// The cost as text, for explain.
    pub fn text(&self) -> String {
        if self.scan.bytes >= u64::MAX / 4 {
            return "the whole source (no statistics)".into();
        }
        let mut s = format!(
            "≈ {:.3} s: {} in {} row group(s), {} rows",
            self.seconds(&TIME_MODEL),
            bytes(self.scan.bytes as f64),
            self.scan.groups,
            self.scan.rows
        );
        if self.stored_bytes > 0 {
            s.push_str(&format!(
                " + {} of stored states",
                bytes(self.stored_bytes as f64)
            ));
        }
        s
    }
}

/// A byte count in decimal units (B, kB, MB, GB), for messages.
pub fn bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// A range as text, for explain.
pub fn range_text(r: Option<(Option<i64>, i64)>) -> String {
    match r {
        None => "nothing".into(),
        Some((lo, hi)) => format!(
            "[{}, {}]",
            lo.map(time_text).unwrap_or_else(|| "-inf".into()),
            time_text(hi)
        ),
    }
}

/// The content key of a spine for one view: its join keys (already cast to the join types)
/// and times, in row order, so a stored state lines up row for row.
pub fn spine_key(columns: &[ArrayRef]) -> crate::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(&(columns.first().map_or(0, |c| c.len()) as u64).to_le_bytes());
    for c in columns {
        h.update(c.data_type().to_string().as_bytes());
        hash_validity(&mut h, c.as_ref());
        match c.data_type() {
            DataType::Int64 | DataType::UInt64 | DataType::Float64 => {
                let d = c.to_data();
                let w = 8;
                let buf = &d.buffers()[0];
                h.update(&buf.as_slice()[d.offset() * w..(d.offset() + d.len()) * w]);
            }
            DataType::Int32 | DataType::UInt32 | DataType::Date32 => {
                let d = c.to_data();
                let buf = &d.buffers()[0];
                h.update(&buf.as_slice()[d.offset() * 4..(d.offset() + d.len()) * 4]);
            }
            DataType::Utf8 => {
                let s = c.as_string::<i32>();
                for i in 0..s.len() {
                    let v = s.value(i).as_bytes();
                    h.update(&(v.len() as u32).to_le_bytes());
                    h.update(v);
                }
            }
            other => {
                let conv = RowConverter::new(vec![SortField::new(other.clone())])?;
                let rows = conv.convert_columns(std::slice::from_ref(c))?;
                for r in rows.iter() {
                    h.update(&(r.data().len() as u32).to_le_bytes());
                    h.update(r.data());
                }
            }
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Feeds a column's validity to a spine key's hash as one byte per row (1 valid, 0 null), a
/// block at a time: a byte vector of the whole column asked row by row through `dyn Array`
/// was half of a 1.8 M-row spine's key.
fn hash_validity(h: &mut blake3::Hasher, c: &dyn Array) {
    const BLOCK: usize = 1 << 16;
    let mut bytes = [1u8; BLOCK];
    let nulls = c.nulls();
    let mut at = 0;
    while at < c.len() {
        let k = BLOCK.min(c.len() - at);
        if let Some(n) = nulls {
            for (b, v) in bytes[..k].iter_mut().zip(n.inner().slice(at, k).iter()) {
                *b = v as u8;
            }
        }
        h.update(&bytes[..k]);
        at += k;
    }
}

/// The spine's key and time columns of a spine input batch (`__rid` first).
pub fn spine_columns(sbatch: &RecordBatch) -> Vec<ArrayRef> {
    sbatch.columns()[1..].to_vec()
}

/// The key and time columns as a batch of their own (stored for cross-spine lookups).
pub fn spine_batch(sbatch: &RecordBatch) -> crate::Result<RecordBatch> {
    let idx: Vec<usize> = (1..sbatch.num_columns()).collect();
    Ok(sbatch.project(&idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_core::semantics::Agg;

    /// The validity fed block by block, against one byte per row asked row by row (how
    /// keys of stored spines were made): sliced columns, with and without nulls, longer
    /// than a block.
    #[test]
    fn validity_hashes_as_one_byte_per_row() {
        use arrow::array::Int64Array;
        let n = 150_000;
        let with: ArrayRef = std::sync::Arc::new(Int64Array::from_iter(
            (0..n as i64).map(|i| (i % 7 != 3).then_some(i)),
        ));
        let without: ArrayRef = std::sync::Arc::new(Int64Array::from_iter_values(0..n as i64));
        for c in [with.clone(), with.slice(5, n - 9), without.slice(3, n - 3)] {
            let mut fast = blake3::Hasher::new();
            hash_validity(&mut fast, c.as_ref());
            let mut slow = blake3::Hasher::new();
            slow.update(
                &(0..c.len())
                    .map(|i| c.is_valid(i) as u8)
                    .collect::<Vec<_>>(),
            );
            assert_eq!(fast.finalize(), slow.finalize());
        }
    }

    fn w(days: Option<i64>, off: i64, closed: Closed) -> Window {
        Window {
            length: days.map(|d| Duration::from_micros(d * 86_400_000_000)),
            offset: Duration::from_micros(off),
            closed,
        }
    }

    /// Widening and narrowing bands partition the windows exactly, for every closure, at
    /// and around every edge.
    #[test]
    fn bands_partition_windows_at_every_edge() {
        let day = 86_400_000_000i64;
        for closed in [Closed::Right, Closed::Left, Closed::Both, Closed::Neither] {
            for off in [0, 5, day] {
                for (big, small) in [(Some(40), 30), (None, 30), (Some(2), 1)] {
                    let wb = w(big, off, closed);
                    let ws = w(Some(small), off, closed);
                    let b = band(wb, Duration::from_micros(small * day)).unwrap();
                    let t = 100 * day;
                    let e = t - off;
                    for edge in [e, e - small * day, e - 40 * day, e - 2 * day, e - day] {
                        for ev in [edge - 1, edge, edge + 1] {
                            assert_eq!(
                                wb.contains(t, ev),
                                ws.contains(t, ev) ^ b.contains(t, ev),
                                "{closed:?} off {off} big {big:?} small {small} ev {ev}"
                            );
                            assert!(!(ws.contains(t, ev) && b.contains(t, ev)));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn choose_prefers_exact_then_the_shortest_band() {
        let e = |days: i64| Entry {
            id: days.to_string(),
            source: "s".into(),
            source_version: "v".into(),
            def: "d".into(),
            spine: "sp".into(),
            window: w(Some(days), 0, Closed::Right),
            feature: "v:f".into(),
            rows: 1,
            bytes: 1,
            cost_micros: 1,
            priority: 0.0,
            used_micros: 0,
            parts: Vec::new(),
        };
        let stored = [e(10), e(30), e(60)];
        let kind = StateKind::of(Agg::Sum, Some(&DataType::Int64)).unwrap();
        assert!(
            matches!(choose(&w(Some(30), 0, Closed::Right), kind, &stored), Choice::Exact(x) if x.id == "30")
        );
        assert!(
            matches!(choose(&w(Some(40), 0, Closed::Right), kind, &stored), Choice::Widen(x, _) if x.id == "30")
        );
        assert!(
            matches!(choose(&w(Some(55), 0, Closed::Right), kind, &stored), Choice::Narrow(x, _) if x.id == "60")
        );
        let max = StateKind::of(Agg::Max, Some(&DataType::Int64)).unwrap();
        assert!(
            matches!(choose(&w(Some(55), 0, Closed::Right), max, &stored), Choice::Widen(x, _) if x.id == "30")
        );
        assert!(matches!(
            choose(&w(Some(5), 0, Closed::Right), max, &stored),
            Choice::Cold
        ));
        assert!(matches!(
            choose(&w(Some(40), 0, Closed::Both), kind, &stored),
            Choice::Cold
        ));
    }
}
