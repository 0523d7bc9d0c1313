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
    /// Per spine row: (index into `entries`, row of that entry), or `None` to compute.
    pub rows: Vec<Option<(u32, u32)>>,
    pub matched: usize,
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
    /// Per stored spine (when it could be read): for each row of this spine, its row there.
    matches: HashMap<String, Option<Vec<Option<u32>>>>,
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
    fn match_spine(&mut self, key: &str) -> Result<Option<Vec<Option<u32>>>> {
        use datafusion::arrow::row::{RowConverter, SortField};
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
        let stored = match self.cat.load_spine(key)? {
            Some(b) if b.num_columns() == self.cols.len() => conv.convert_columns(b.columns()).ok(),
            _ => None,
        };
        let Some(stored) = stored else {
            return Ok(None);
        };
        let mut first: HashMap<u64, u32, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(stored.num_rows(), self.hasher.clone());
        for (q, row) in stored.iter().enumerate() {
            first.entry(row_hash(&self.hasher, row)).or_insert(q as u32);
        }
        Ok(Some(
            hashes
                .iter()
                .enumerate()
                .map(|(r, h)| {
                    first
                        .get(h)
                        .copied()
                        .filter(|&q| stored.row(q as usize) == mine.row(r))
                })
                .collect(),
        ))
    }

    /// Match this spine's rows against the stored spines of `others` (in order).
    pub(super) fn find(&mut self, others: Vec<reuse::Entry>) -> Result<Option<Cross>> {
        let n = self.cols.first().map_or(0, |c| c.len());
        let mut rows: Vec<Option<(u32, u32)>> = vec![None; n];
        let mut entries = Vec::new();
        let mut matched = 0;
        for e in others {
            if !self.matches.contains_key(&e.spine) {
                let m = self.match_spine(&e.spine)?;
                self.matches.insert(e.spine.clone(), m);
            }
            let Some(Some(there)) = self.matches.get(&e.spine) else {
                continue;
            };
            let j = entries.len() as u32;
            let mut hit = false;
            for (slot, q) in rows.iter_mut().zip(there) {
                if slot.is_none()
                    && let Some(q) = q
                {
                    *slot = Some((j, *q));
                    matched += 1;
                    hit = true;
                }
            }
            if hit {
                entries.push(e);
            }
            if matched == n {
                break;
            }
        }
        Ok((matched > 0).then_some(Cross {
            entries,
            rows,
            matched,
        }))
    }
}

/// Spine rows that some cross-spine feature still has to compute, ascending.
pub(super) fn unmatched_rows<'c>(cross: impl IntoIterator<Item = &'c Option<Cross>>) -> Vec<u32> {
    let mut need: Vec<bool> = Vec::new();
    for c in cross.into_iter().flatten() {
        need.resize(c.rows.len(), false);
        for (r, m) in c.rows.iter().enumerate() {
            if m.is_none() {
                need[r] = true;
            }
        }
    }
    need.iter()
        .enumerate()
        .filter(|(_, n)| **n)
        .map(|(r, _)| r as u32)
        .collect()
}

/// The smallest and largest valid time among some spine rows.
pub(super) fn time_span(t: &Int64Array, rows: impl Iterator<Item = u32>) -> (i64, i64) {
    rows.filter(|&r| t.is_valid(r as usize))
        .map(|r| t.value(r as usize))
        .fold((i64::MAX, i64::MIN), |(a, b), x| (a.min(x), b.max(x)))
}
