//! Cross-spine reuse: this spine's rows (keys and time) found in the stored spines of other
//! entries, so a feature stored for other spines is computed only for the rows they lack.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};

use crate::reuse::{self, ReuseCatalog};
use crate::{Result, gate};

/// Rows of this spine found in other spines' stored states, for one feature.
#[derive(Debug, Clone)]
pub(super) struct Cross {
    pub entries: Vec<reuse::Entry>,
    /// This spine's rows in order, in stretches. A refresh's 1.8 M rows are two of them (the
    /// stored rows, then the new day): a pair per row took 22 MB per feature, each page of
    /// it new memory to fault in.
    pub spans: Vec<Span>,
    pub matched: usize,
    /// This spine's rows.
    pub len: usize,
}

/// Consecutive spine rows: found at consecutive rows of one stored entry (`from`: index into
/// [`Cross::entries`] and the first row there), or (`None`) computed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub rows: u32,
    pub from: Option<(u32, u32)>,
}

impl Cross {
    /// Per spine row: (index into `entries`, row of that entry), or `None` to compute.
    #[cfg(test)]
    fn rows(&self) -> impl Iterator<Item = Option<(u32, u32)>> + '_ {
        self.spans
            .iter()
            .flat_map(|s| (0..s.rows).map(move |k| s.from.map(|(e, q)| (e, q + k))))
    }

    /// The first spine row of each span, with the span.
    pub(super) fn starts(&self) -> impl Iterator<Item = (u32, &Span)> + '_ {
        self.spans.iter().scan(0u32, |at, s| {
            let start = *at;
            *at += s.rows;
            Some((start, s))
        })
    }
}

/// Appends a stretch of rows to spans, extending the last one when it continues it.
fn push_span(spans: &mut Vec<Span>, rows: u32, from: Option<(u32, u32)>) {
    if rows == 0 {
        return;
    }
    if let Some(last) = spans.last_mut() {
        let continues = match (last.from, from) {
            (None, None) => true,
            (Some((e, q)), Some((f, r))) => e == f && q + last.rows == r,
            _ => false,
        };
        if continues {
            last.rows += rows;
            return;
        }
    }
    spans.push(Span { rows, from });
}

/// Per-row matches (each row's row in a stored spine) as spans of entry 0.
fn spans_of(rows: impl Iterator<Item = Option<u32>>) -> Vec<Span> {
    let mut spans = Vec::new();
    for q in rows {
        push_span(&mut spans, 1, q.map(|q| (0, q)));
    }
    spans
}

/// `have` with its rows to compute filled from `there` (spans of entry 0 over the same
/// rows), as entry `j`; whether any row was filled.
fn fill(have: &[Span], there: &[Span], j: u32) -> (Vec<Span>, bool) {
    let mut out = Vec::with_capacity(have.len() + there.len());
    let mut hit = false;
    let (mut a, mut b) = (have.iter().copied(), there.iter().copied());
    let (mut x, mut y) = (a.next(), b.next());
    while let (Some(h), Some(t)) = (x, y) {
        let n = h.rows.min(t.rows);
        let from = match (h.from, t.from) {
            (Some(f), _) => Some(f),
            (None, Some((_, q))) => {
                hit = true;
                Some((j, q))
            }
            (None, None) => None,
        };
        push_span(&mut out, n, from);
        let rest = |s: Span| Span {
            rows: s.rows - n,
            from: s.from.map(|(e, q)| (e, q + n)),
        };
        x = if h.rows > n { Some(rest(h)) } else { a.next() };
        y = if t.rows > n { Some(rest(t)) } else { b.next() };
    }
    (out, hit)
}

/// Looks up this spine's rows (keys and time) in the stored spines of other entries. The
/// spine's rows are encoded, and each stored spine matched against them, once per join:
/// every feature of a view asks about the same spines.
pub(super) struct CrossFinder<'a> {
    cat: &'a ReuseCatalog,
    cols: Vec<ArrayRef>,
    /// This spine's encoding and its rows' hashes, made at the first lookup.
    mine: Option<(
        datafusion::arrow::row::RowConverter,
        datafusion::arrow::row::Rows,
        Vec<u64>,
    )>,
    hasher: ahash::RandomState,
    /// Per stored spine (when it could be read): this spine's rows as spans of rows there.
    matches: HashMap<String, Option<Vec<Span>>>,
}

/// A row's hash for cross-spine lookups (equal bytes are then checked).
fn row_hash(state: &ahash::RandomState, row: datafusion::arrow::row::Row<'_>) -> u64 {
    state.hash_one(row.as_ref())
}

impl<'a> CrossFinder<'a> {
    pub(super) fn new(cat: &'a ReuseCatalog, sbatch: &RecordBatch) -> Result<CrossFinder<'a>> {
        Ok(CrossFinder {
            cat,
            cols: gate::spine_columns(sbatch),
            mine: None,
            matches: HashMap::new(),
            hasher: ahash::RandomState::new(),
        })
    }

    /// For each row of this spine, its row in the stored spine `key`; `None` when that spine
    /// cannot be read or has other columns.
    ///
    /// A spine's key is the hash of its content, so a stored spine of `rows` rows that this
    /// one begins with (rows appended since) is recognised by hashing this spine's first
    /// `rows` rows, without reading it. Otherwise the two spines are aligned, walking both in
    /// order ([`align`]): a spine that grew (rows inserted) or rolled (its oldest rows dropped)
    /// lines up in a few runs compared column by column, with no row encoded or hashed. When
    /// that finds less than half of this spine (a shuffled or re-sorted spine), every row is
    /// hashed instead.
    fn match_spine(&mut self, key: &str, rows: u64) -> Result<Option<Vec<Span>>> {
        use datafusion::arrow::row::{RowConverter, SortField};
        let n = self.cols.first().map_or(0, |c| c.len());
        if rows as usize <= n && rows > 0 {
            let prefix: Vec<ArrayRef> = self
                .cols
                .iter()
                .map(|c| c.slice(0, rows as usize))
                .collect();
            if gate::spine_key(&prefix)? == key {
                crate::profile::stage(format_args!("stored spine is this one's first {rows} rows"));
                let mut spans = Vec::new();
                push_span(&mut spans, rows as u32, Some((0, 0)));
                push_span(&mut spans, (n - rows as usize) as u32, None);
                return Ok(Some(spans));
            }
        }
        let Some(stored) = self.cat.load_spine(key)? else {
            return Ok(None);
        };
        if stored.num_columns() != self.cols.len()
            || stored
                .columns()
                .iter()
                .zip(&self.cols)
                .any(|(a, b)| a.data_type() != b.data_type())
        {
            return Ok(None);
        }
        crate::profile::stage(format_args!(
            "stored spine read ({} rows)",
            stored.num_rows()
        ));
        let aligned = align(&self.cols, stored.columns())?;
        crate::profile::stage(format_args!("spines aligned"));
        let found = aligned.iter().filter(|m| m.is_some()).count();
        if found * 2 >= aligned.len() || found == stored.num_rows() {
            return Ok(Some(spans_of(aligned.into_iter())));
        }
        drop(aligned);
        if self.mine.is_none() {
            let conv = RowConverter::new(
                self.cols
                    .iter()
                    .map(|c| SortField::new(c.data_type().clone()))
                    .collect(),
            )?;
            let rows = conv.convert_columns(&self.cols)?;
            let hashes = rows.iter().map(|r| row_hash(&self.hasher, r)).collect();
            self.mine = Some((conv, rows, hashes));
        }
        let Some((conv, mine, hashes)) = &self.mine else {
            return Ok(None);
        };
        let Ok(stored) = conv.convert_columns(stored.columns()) else {
            return Ok(None);
        };
        let mut first: HashMap<u64, u32, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(stored.num_rows(), self.hasher.clone());
        for (q, row) in stored.iter().enumerate() {
            first.entry(row_hash(&self.hasher, row)).or_insert(q as u32);
        }
        Ok(Some(spans_of(hashes.iter().enumerate().map(|(r, h)| {
            first
                .get(h)
                .copied()
                .filter(|&q| stored.row(q as usize) == mine.row(r))
        }))))
    }

    /// Match this spine's rows against the stored spines of `others` (in order).
    pub(super) fn find(&mut self, others: Vec<reuse::Entry>) -> Result<Option<Cross>> {
        let n = self.cols.first().map_or(0, |c| c.len());
        if n > u32::MAX as usize {
            return Ok(None);
        }
        let mut spans = Vec::new();
        push_span(&mut spans, n as u32, None);
        let mut entries = Vec::new();
        let mut matched = 0;
        for e in others {
            // rows matched up to a point and none after it (new rows appended): a spine of
            // no more rows than that — the day before of a refresh — has nothing to add
            if let [
                Span {
                    rows: prefix,
                    from: Some(_),
                },
                Span { from: None, .. },
            ] = spans[..]
                && e.rows <= prefix as u64
            {
                continue;
            }
            if !self.matches.contains_key(&e.spine) {
                let m = self.match_spine(&e.spine, e.rows)?;
                self.matches.insert(e.spine.clone(), m);
            }
            let Some(Some(there)) = self.matches.get(&e.spine) else {
                continue;
            };
            let (filled, hit) = fill(&spans, there, entries.len() as u32);
            if hit {
                spans = filled;
                entries.push(e);
                matched = spans
                    .iter()
                    .filter(|s| s.from.is_some())
                    .map(|s| s.rows as usize)
                    .sum();
            }
            if matched == n {
                break;
            }
        }
        Ok((matched > 0).then_some(Cross {
            entries,
            spans,
            matched,
            len: n,
        }))
    }
}

/// Spine rows that some cross-spine feature still has to compute, ascending.
pub(super) fn unmatched_rows<'c>(cross: impl IntoIterator<Item = &'c Option<Cross>>) -> Vec<u32> {
    let mut ranges: Vec<(u32, u32)> = cross
        .into_iter()
        .flatten()
        .flat_map(|c| c.starts().filter(|(_, s)| s.from.is_none()))
        .map(|(at, s)| (at, at + s.rows))
        .collect();
    ranges.sort_unstable();
    let mut rows = Vec::new();
    let mut upto = 0u32;
    for (a, b) in ranges {
        rows.extend(a.max(upto)..b);
        upto = upto.max(b);
    }
    rows
}

/// The smallest and largest valid time among some spine rows.
pub(super) fn time_span(t: &Int64Array, rows: impl Iterator<Item = u32>) -> (i64, i64) {
    rows.filter(|&r| t.is_valid(r as usize))
        .map(|r| t.value(r as usize))
        .fold((i64::MAX, i64::MIN), |(a, b), x| (a.min(x), b.max(x)))
}

/// How far ahead [`align`] looks for a row after a mismatch, in either spine.
const LOOKAHEAD: usize = 64;
/// How many times [`align`] searches the whole stored spine for a row it lost.
const SEARCHES: usize = 64;

/// Aligns this spine's rows (`mine`: keys and time) with a stored spine's (`stored`, the same
/// columns) by walking both in order: equal stretches are compared a chunk at a time
/// (`not_distinct` over both columns: nulls equal nulls, as the row encoding has them), a row
/// of this spine missing from the stored one (inserted) or a stored row missing here (dropped)
/// is stepped over by looking a little ahead in each, and a longer jump (a rolling spine's
/// dropped first day) is found by searching the stored times. Every match is checked, so the
/// result is exact whatever the spines' orders; a spine that does not line up gives up early
/// and reports what it matched. Returns, per row of `mine`, its row in `stored`.
pub(super) fn align(mine: &[ArrayRef], stored: &[ArrayRef]) -> Result<Vec<Option<u32>>> {
    use datafusion::arrow::array::{DynComparator, make_comparator};
    use datafusion::arrow::compute::SortOptions;
    let n = mine.first().map_or(0, |c| c.len());
    let m = stored.first().map_or(0, |c| c.len());
    let mut out = vec![None; n];
    if n == 0 || m == 0 || m > u32::MAX as usize {
        return Ok(out);
    }
    let cmps: Vec<DynComparator> = mine
        .iter()
        .zip(stored)
        .map(|(a, b)| make_comparator(a.as_ref(), b.as_ref(), SortOptions::default()))
        .collect::<std::result::Result<_, _>>()?;
    let eq = |i: usize, j: usize| cmps.iter().all(|c| c(i, j).is_eq());
    // the stored rows of each time, for the long jumps (the time column is the last, Int64)
    let times = |cols: &[ArrayRef]| {
        cols.last()
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .cloned()
    };
    let (my_t, their_t) = (times(mine), times(stored));
    let find = |i: usize| -> Option<usize> {
        let (a, b) = (my_t.as_ref()?, their_t.as_ref()?);
        if a.is_null(i) {
            return None;
        }
        let t = a.value(i);
        b.values()
            .iter()
            .enumerate()
            .filter(|&(j, &x)| x == t && b.is_valid(j))
            .map(|(j, _)| j)
            .find(|&j| eq(i, j))
    };
    let (mut i, mut j) = (0usize, 0usize);
    let (mut matched, mut missed, mut searches, mut failed) = (0usize, 0usize, 0usize, 0usize);
    while i < n {
        if j < m && eq(i, j) {
            let len = 1 + equal_run(mine, i + 1, stored, j + 1)?;
            for (k, slot) in out[i..i + len].iter_mut().enumerate() {
                *slot = Some((j + k) as u32);
            }
            (i, j, matched) = (i + len, j + len, matched + len);
            continue;
        }
        // stored rows dropped here: this row a little further on in the stored spine
        if let Some(d) = (1..LOOKAHEAD).find(|&d| j + d < m && eq(i, j + d)) {
            j += d;
            continue;
        }
        // rows inserted here: the stored row a little further on in this spine
        let inserted = j < m && (1..LOOKAHEAD).any(|d| i + d < n && eq(i + d, j));
        if !inserted && searches < SEARCHES {
            searches += 1;
            if let Some(k) = find(i) {
                j = k;
                continue;
            }
            // a row found nowhere (the new day of a refresh): the next is likely new too
            failed += 1;
            if failed >= 4 {
                searches = SEARCHES;
            }
        }
        i += 1;
        missed += 1;
        // a spine that does not line up: stop paying for lookaheads
        if missed > 4096 && missed > matched {
            break;
        }
    }
    Ok(out)
}

/// How many rows from `mine[i..]` and `stored[j..]` are equal, compared a chunk at a time.
fn equal_run(mine: &[ArrayRef], i: usize, stored: &[ArrayRef], j: usize) -> Result<usize> {
    use datafusion::arrow::compute::kernels::cmp::not_distinct;
    let n = mine.first().map_or(0, |c| c.len());
    let m = stored.first().map_or(0, |c| c.len());
    let (mut run, mut chunk) = (0usize, 64usize);
    loop {
        let len = chunk.min(n - (i + run)).min(m - (j + run));
        if len == 0 {
            return Ok(run);
        }
        let mut same: Option<datafusion::arrow::buffer::BooleanBuffer> = None;
        for (a, b) in mine.iter().zip(stored) {
            let e = not_distinct(&a.slice(i + run, len), &b.slice(j + run, len))?;
            let v = e.values().clone();
            same = Some(match same {
                Some(s) => &s & &v,
                None => v,
            });
        }
        let same = same.expect("at least one column");
        if same.count_set_bits() == len {
            run += len;
            chunk = (chunk * 2).min(1 << 16);
            continue;
        }
        return Ok(run + same.iter().position(|b| !b).unwrap_or(len));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};

    use super::{Cross, align, fill, spans_of, unmatched_rows};

    /// Key and time columns: keys with nulls, times with ties.
    fn cols(rows: &[(Option<i64>, Option<i64>)]) -> Vec<ArrayRef> {
        let k: Int64Array = rows.iter().map(|r| r.0).collect();
        let t: Int64Array = rows.iter().map(|r| r.1).collect();
        vec![Arc::new(k), Arc::new(t)]
    }

    fn row(i: i64) -> (Option<i64>, Option<i64>) {
        (
            (i % 11 != 0).then_some(i % 7),
            (i % 13 != 0).then_some(i / 3),
        )
    }

    #[test]
    fn aligns_dropped_inserted_and_appended_rows_exactly() {
        let stored: Vec<_> = (0..5000).map(row).collect();
        // the first 700 rows dropped, a stretch of 200 dropped in the middle, new rows
        // scattered and appended
        let mut mine = Vec::new();
        for i in 700..5000 {
            if (2000..2200).contains(&i) {
                continue;
            }
            mine.push(stored[i as usize]);
            if i % 97 == 0 {
                mine.push((Some(100 + i), Some(-i)));
            }
        }
        mine.extend((0..300).map(|i| (Some(1000 + i), Some(9000 + i))));
        let got = align(&cols(&mine), &cols(&stored)).unwrap();
        // every match is exact; equal rows elsewhere (all-null ones repeat) may cost a few
        // rows their match, never a wrong one
        for (r, m) in got.iter().enumerate() {
            if let Some(q) = m {
                assert_eq!(mine[r], stored[*q as usize], "row {r}");
            }
        }
        let found = got.iter().filter(|m| m.is_some()).count();
        assert!(
            (4000..=4100).contains(&found),
            "{found} of 4100 old rows found"
        );
    }

    #[test]
    fn a_shuffled_spine_gives_up_without_wrong_matches() {
        let stored: Vec<_> = (0..20_000).map(row).collect();
        let mut mine = stored.clone();
        let mut x = 7u64;
        for i in (1..mine.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            mine.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let got = align(&cols(&mine), &cols(&stored)).unwrap();
        for (r, m) in got.iter().enumerate() {
            if let Some(q) = m {
                assert_eq!(mine[r], stored[*q as usize]);
            }
        }
        assert!(got.iter().filter(|m| m.is_some()).count() < mine.len() / 2);
    }

    /// Spans filled from several stored spines, against the same rows filled one by one: a
    /// row takes the first stored spine that holds it.
    #[test]
    fn spans_fill_as_rows_do() {
        let n = 3000usize;
        let mut x = 11u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // per stored spine: each row's row there, in long stretches with gaps and jumps
        let theres: Vec<Vec<Option<u32>>> = (0..4)
            .map(|_| {
                let mut rows = Vec::with_capacity(n);
                while rows.len() < n {
                    let len = (1 + next() % 300) as usize;
                    let start = (next() % 10_000) as u32;
                    let found = next() % 3 != 0;
                    for k in 0..len.min(n - rows.len()) {
                        rows.push(found.then_some(start + k as u32));
                    }
                }
                rows
            })
            .collect();
        let mut want: Vec<Option<(u32, u32)>> = vec![None; n];
        let mut spans = spans_of(std::iter::repeat_n(None, n));
        let mut entries = 0u32;
        for there in &theres {
            let mut hit = false;
            for (slot, q) in want.iter_mut().zip(there) {
                if slot.is_none() && q.is_some() {
                    *slot = q.map(|q| (entries, q));
                    hit = true;
                }
            }
            let (filled, got_hit) = fill(&spans, &spans_of(there.iter().copied()), entries);
            assert_eq!(got_hit, hit);
            if hit {
                spans = filled;
                entries += 1;
            }
        }
        let matched = want.iter().filter(|r| r.is_some()).count();
        let c = Cross {
            entries: Vec::new(),
            spans: spans.clone(),
            matched,
            len: n,
        };
        assert_eq!(c.rows().collect::<Vec<_>>(), want);
        // every span is maximal: no two neighbours continue each other
        for w in spans.windows(2) {
            let continues = match (w[0].from, w[1].from) {
                (None, None) => true,
                (Some((e, q)), Some((f, r))) => e == f && q + w[0].rows == r,
                _ => false,
            };
            assert!(!continues, "{w:?}");
        }
        let unmatched: Vec<u32> = (0..n as u32)
            .filter(|&r| want[r as usize].is_none())
            .collect();
        assert_eq!(unmatched_rows(&[Some(c.clone()), None]), unmatched);
        // a second feature that lacks every fifth row: the union of both
        let other = Cross {
            spans: spans_of((0..n).map(|r| (r % 5 != 0).then_some(r as u32))),
            matched: n - n / 5,
            ..c.clone()
        };
        let union: Vec<u32> = (0..n as u32)
            .filter(|&r| want[r as usize].is_none() || r % 5 == 0)
            .collect();
        assert_eq!(unmatched_rows(&[Some(c), Some(other)]), union);
    }
}
