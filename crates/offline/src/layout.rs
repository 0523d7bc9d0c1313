//! Layout selection (DESIGN §4 "Reuse", ADR 0006): from the log of past scans, choose per
//! managed source a time bucketing and a sort order that minimize the bytes the logged
//! workload reads, under a rewrite budget, and rewrite the table as a new Delta version.
//!
//! Candidates are every (bucketing, sort) pair: bucketing none / hour / day / month / year,
//! rows ordered inside a bucket by time or by (key, time). A rewrite writes row groups of
//! [`ROW_GROUP_ROWS`] rows in that order, so the reader's row-group pruning (min/max of the
//! time and key columns) decides what a scan reads. The cost of a candidate for one logged
//! scan [lo, hi] with k spine keys:
//! - sorted by time: the bytes inside [lo, hi] plus a partial row group at each end;
//! - sorted by (key, time) inside buckets: the buckets meeting [lo, hi], each in full, or
//!   only the row groups holding the k keys when the scan was restricted to them;
//! - every row group costs its footer entry, so fine buckets of few rows pay for their
//!   number.
//!
//! The current layout is costed from the real footers ([`ScanStats::estimate`]). The choice
//! over sources is exact: every subset whose rewrite fits the budget is tried (sources are few).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, SortOptions, concat_batches, lexsort_to_indices, take};
use chrono::{Datelike, TimeZone, Utc};
use quiver_core::Source;
use serde::Serialize;

use crate::reuse::ScanRecord;
use crate::stats::ScanStats;
use crate::{Error, Result};

/// Rows per row group a rewrite writes (at most; buckets end row groups too).
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// Rows per file a rewrite aims at.
pub const FILE_ROWS: usize = 1 << 20;
/// Footer bytes a row group costs every scan (column chunk metadata and statistics).
const ROW_GROUP_FOOTER: f64 = 600.0;

/// How a rewrite groups rows by event time (UTC); a row group never spans two buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// No bucketing: the table is one bucket.
    None,
    /// One bucket per hour.
    Hour,
    /// One bucket per day.
    Day,
    /// One bucket per calendar month.
    Month,
    /// One bucket per calendar year.
    Year,
}

impl Bucket {
    /// Every bucketing, finest after none; the candidates layout selection tries.
    pub const ALL: [Bucket; 5] = [
        Bucket::None,
        Bucket::Hour,
        Bucket::Day,
        Bucket::Month,
        Bucket::Year,
    ];

    /// The bucket of an instant (µs since the epoch, UTC).
    pub fn of(self, t: i64) -> i64 {
        const H: i64 = 3_600_000_000;
        match self {
            Bucket::None => 0,
            Bucket::Hour => t.div_euclid(H),
            Bucket::Day => t.div_euclid(24 * H),
            Bucket::Month | Bucket::Year => {
                let d = Utc
                    .timestamp_micros(t)
                    .single()
                    .unwrap_or_else(|| Utc.timestamp_micros(0).unwrap());
                if self == Bucket::Month {
                    d.year() as i64 * 12 + d.month0() as i64
                } else {
                    d.year() as i64
                }
            }
        }
    }

    /// The bucketing's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::None => "none",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Month => "month",
            Bucket::Year => "year",
        }
    }
}

/// How a rewrite orders rows inside a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By event time.
    Time,
    /// By entity key, then event time (scans restricted to few keys read fewer row groups).
    KeyTime,
}

impl Order {
    /// The order's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Order::Time => "time",
            Order::KeyTime => "key, time",
        }
    }
}

/// A candidate physical layout of a source's table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Layout {
    /// How rows are bucketed by time.
    pub bucket: Bucket,
    /// How rows are ordered inside a bucket.
    pub order: Order,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bucketed by {}, sorted by {}",
            self.bucket.name(),
            self.order.name()
        )
    }
}

/// The costed choice for one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourcePlan {
    /// The source's name.
    pub source: String,
    /// How many logged scans of the source were costed.
    pub scans: usize,
    /// Bytes the logged scans read on the current layout (from its footers).
    pub current_bytes: u64,
    /// Every candidate with the bytes the logged scans would read.
    pub candidates: Vec<(Layout, u64)>,
    /// The candidate whose logged scans read the fewest bytes.
    pub best: Layout,
    /// Bytes the logged scans would read on `best`.
    pub best_bytes: u64,
    /// What the rewrite reads and writes: the table's bytes.
    pub rewrite_bytes: u64,
}

impl SourcePlan {
    /// Bytes the logged scans would read less on `best` than on the current layout.
    pub fn saving(&self) -> u64 {
        self.current_bytes.saturating_sub(self.best_bytes)
    }
}

/// Cost every candidate layout of a source for its logged scans.
pub fn plan_source(source: &str, stats: &ScanStats, scans: &[&ScanRecord]) -> SourcePlan {
    let total = stats.total();
    let all_bytes: u64 = stats.groups.iter().map(|g| g.all_bytes).sum();
    let current_bytes = scans.iter().map(|s| stats.estimate(s.lo, s.hi).bytes).sum();
    let times: Vec<(i64, i64)> = stats.groups.iter().filter_map(|g| g.time).collect();
    let (tmin, tmax) = times
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), &(x, y)| (a.min(x), b.max(y)));
    let mut candidates = Vec::new();
    if tmin <= tmax && total.rows > 0 {
        // The time sketch at a resolution of an hour (coarser for very long histories).
        let hour = 3_600_000_000i64;
        let width = hour.max((tmax - tmin) / 50_000 + 1);
        let n = ((tmax - tmin) / width + 1) as usize;
        let hist = stats.histogram(tmin, width, n);
        let bytes_per_row = total.bytes as f64 / total.rows as f64;
        let rg_bytes = bytes_per_row * ROW_GROUP_ROWS as f64;
        for bucket in Bucket::ALL {
            // rows and bytes per bucket, in time order
            let mut buckets: Vec<(i64, f64, f64, i64, i64)> = Vec::new(); // id, rows, bytes, start, end
            for (i, &(rows, bytes)) in hist.iter().enumerate() {
                let s = tmin + i as i64 * width;
                let id = bucket.of(s);
                match buckets.last_mut() {
                    Some(b) if b.0 == id => {
                        b.1 += rows;
                        b.2 += bytes;
                        b.4 = s + width - 1;
                    }
                    _ => buckets.push((id, rows, bytes, s, s + width - 1)),
                }
            }
            let row_groups: f64 = buckets
                .iter()
                .map(|b| (b.1 / ROW_GROUP_ROWS as f64).ceil())
                .sum();
            let footer = row_groups * ROW_GROUP_FOOTER;
            for order in [Order::Time, Order::KeyTime] {
                let mut cost = 0.0;
                for q in scans {
                    let lo = q.lo.unwrap_or(i64::MIN);
                    cost += footer;
                    cost += match order {
                        Order::Time => {
                            let inside: f64 = hist
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| {
                                    let s = tmin + *i as i64 * width;
                                    s + width > lo && s <= q.hi
                                })
                                .map(|(_, h)| h.1)
                                .sum();
                            (inside + 2.0 * rg_bytes).min(total.bytes as f64)
                        }
                        Order::KeyTime => buckets
                            .iter()
                            .filter(|b| b.4 >= lo && b.3 <= q.hi)
                            .map(|b| {
                                let groups = (b.1 / ROW_GROUP_ROWS as f64).ceil().max(1.0);
                                let k = q.distinct_keys as f64;
                                let frac = if q.distinct_keys > 0 && q.distinct_keys <= 64 {
                                    ((k + 1.0) / groups).min(1.0)
                                } else {
                                    1.0
                                };
                                b.2 * frac
                            })
                            .sum(),
                    };
                }
                candidates.push((Layout { bucket, order }, cost.round() as u64));
            }
        }
    }
    let (best, best_bytes) = candidates.iter().copied().min_by_key(|c| c.1).unwrap_or((
        Layout {
            bucket: Bucket::None,
            order: Order::Time,
        },
        current_bytes,
    ));
    SourcePlan {
        source: source.to_string(),
        scans: scans.len(),
        current_bytes,
        candidates,
        best,
        best_bytes,
        rewrite_bytes: all_bytes,
    }
}

/// Which sources to rewrite: the subset with the largest saving whose rewrites fit the
/// budget (`None` = no limit), trying every subset. Sources that would not read less are
/// never chosen.
pub fn choose(plans: &[SourcePlan], budget: Option<u64>) -> Vec<bool> {
    let useful: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].saving() > 0)
        .collect();
    let mut best = (0u64, 0usize);
    // Sources are few (one per managed table); cap the search at 2^16 subsets.
    let n = useful.len().min(16);
    for mask in 0usize..(1 << n) {
        let (mut cost, mut saving) = (0u64, 0u64);
        for (j, &i) in useful.iter().take(n).enumerate() {
            if mask & (1 << j) != 0 {
                cost = cost.saturating_add(plans[i].rewrite_bytes);
                saving += plans[i].saving();
            }
        }
        if budget.is_none_or(|b| cost <= b) && saving > best.0 {
            best = (saving, mask);
        }
    }
    let mut out = vec![false; plans.len()];
    for (j, &i) in useful.iter().take(n).enumerate() {
        out[i] = best.1 & (1 << j) != 0;
    }
    out
}

/// Order a table's rows for a layout. The sort is stable over the rows' current order, so
/// events tied on (key, time, created) keep their relative order: the join's last tie-break
/// gives the same answers after the rewrite.
/// Also returns the row offsets where buckets change.
pub fn arrange(
    batches: &[RecordBatch],
    source: &Source,
    keys: &[String],
    layout: Layout,
) -> Result<(RecordBatch, Vec<usize>)> {
    let Some(first) = batches.first() else {
        return Err(Error::Source(format!("source `{}` is empty", source.name)));
    };
    let all = concat_batches(&first.schema(), batches)?;
    let n = all.num_rows();
    let time = all
        .column_by_name(&source.timestamp)
        .ok_or_else(|| Error::Source(format!("no column `{}`", source.timestamp)))?;
    let micros = quiver_core::time::to_micros(time.as_ref(), &source.timestamp, 0)?;
    let bucket: Int64Array = micros
        .iter()
        .map(|t| Some(t.map_or(i64::MIN, |t| layout.bucket.of(t))))
        .collect();
    let opts = Some(SortOptions {
        descending: false,
        nulls_first: true,
    });
    let bucket: ArrayRef = Arc::new(bucket);
    let mut cols = vec![SortColumn {
        values: bucket.clone(),
        options: opts,
    }];
    if layout.order == Order::KeyTime {
        for k in keys {
            let c = all
                .column_by_name(k)
                .ok_or_else(|| Error::Source(format!("no key column `{k}`")))?;
            cols.push(SortColumn {
                values: c.clone(),
                options: opts,
            });
        }
    }
    cols.push(SortColumn {
        values: Arc::new(micros) as ArrayRef,
        options: opts,
    });
    cols.push(SortColumn {
        values: Arc::new(UInt32Array::from_iter_values(0..n as u32)) as ArrayRef,
        options: opts,
    });
    let idx = lexsort_to_indices(&cols, None)?;
    let arrays = all
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let sorted = take(bucket.as_ref(), &idx, None)?;
    let b = sorted
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| Error::Internal("bucket ids".into()))?
        .values();
    let cuts = (1..n).filter(|&i| b[i] != b[i - 1]).collect();
    Ok((RecordBatch::try_new(all.schema(), arrays)?, cuts))
}

/// What `quiver optimize` decided for one source, and the version it wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The costed candidates.
    pub plan: SourcePlan,
    /// Whether the source was picked for rewriting within the budget.
    pub chosen: bool,
    /// The Delta version the rewrite committed.
    pub written: Option<u64>,
}

/// Plan (and unless `dry_run`, apply) layouts for every managed source with logged scans.
pub async fn optimize(
    repo: &quiver_core::Repo,
    budget: Option<u64>,
    dry_run: bool,
) -> Result<Vec<Outcome>> {
    let log = crate::reuse::ReuseCatalog::of_repo(repo, 0).scans()?;
    let mut plans = Vec::new();
    let mut tables = Vec::new();
    for (name, src) in &repo.sources {
        let path = crate::source::managed_source_path(&repo.offline_store, name);
        if src.path.is_some() || !crate::delta::is_delta_table(&path) {
            continue;
        }
        let scans: Vec<&ScanRecord> = log.iter().filter(|r| &r.source == name).collect();
        if scans.is_empty() {
            continue;
        }
        let mut cols: Vec<&str> = vec![src.timestamp.as_str()];
        for r in &scans {
            cols.extend(r.columns.iter().map(|s| s.as_str()));
            cols.extend(r.key_columns.iter().map(|s| s.as_str()));
        }
        cols.sort();
        cols.dedup();
        let snap = crate::delta::snapshot(&path, None).await?;
        let stats = ScanStats::load(&snap.files, &src.timestamp, &cols)?;
        let keys = scans
            .last()
            .map(|r| r.key_columns.clone())
            .unwrap_or_default();
        plans.push(plan_source(name, &stats, &scans));
        tables.push((path, src.clone(), keys, snap));
    }
    let chosen = choose(&plans, budget);
    let mut out = Vec::new();
    for ((plan, chosen), (path, src, keys, snap)) in plans.into_iter().zip(chosen).zip(tables) {
        let mut written = None;
        if chosen && !dry_run {
            let ctx = crate::session(&crate::EngineOptions {
                target_partitions: 1,
                ..Default::default()
            })?;
            let what = format!("source `{}`", src.name);
            let table =
                crate::source::files_table(&ctx, &snap.files, Some(snap.schema), &path, &what)
                    .await?;
            let (_, batches) = crate::source::collect_table(&ctx, table, &path).await?;
            let (arranged, cuts) = arrange(&batches, &src, &keys, plan.best)?;
            drop(batches);
            let v = crate::delta::rewrite(&path, arranged, &cuts, ROW_GROUP_ROWS, FILE_ROWS, &what)
                .await?;
            written = Some(v);
        }
        out.push(Outcome {
            plan,
            chosen,
            written,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Group;

    fn scan(lo: i64, hi: i64, keys: u64) -> ScanRecord {
        ScanRecord {
            source: "s".into(),
            lo: Some(lo),
            hi,
            columns: vec![],
            key_columns: vec![],
            distinct_keys: keys,
            bytes_scanned: 0,
            at_micros: 0,
        }
    }

    /// A table whose row groups each span the whole history (written in key order): a time
    /// range reads everything today, and sorting by time cuts that to the range.
    #[test]
    fn time_ranges_choose_time_clustering_and_report_the_saving() {
        let day = 86_400_000_000i64;
        let groups = (0..100)
            .map(|_| Group {
                time: Some((0, 730 * day)),
                rows: 200_000,
                bytes: 1_000_000,
                all_bytes: 2_000_000,
            })
            .collect();
        let stats = ScanStats { groups };
        let q = scan(600 * day, 670 * day, 10_000);
        let p = plan_source("s", &stats, &[&q]);
        assert_eq!(p.current_bytes, 100_000_000);
        // Any layout that clusters by time serves; key order alone never does.
        let key_only = Layout {
            bucket: Bucket::None,
            order: Order::KeyTime,
        };
        assert_ne!(p.best, key_only, "{p:?}");
        assert!(p.saving() > p.current_bytes * 8 / 10, "{p:?}");
        assert_eq!(
            choose(std::slice::from_ref(&p), Some(p.rewrite_bytes - 1)),
            vec![false]
        );
        assert_eq!(choose(std::slice::from_ref(&p), None), vec![true]);
    }

    #[test]
    fn months_are_calendar_months() {
        let jan31 = 1_706_659_200_000_000; // 2024-01-31T00:00:00Z
        let feb1 = jan31 + 86_400_000_000;
        assert_eq!(Bucket::Month.of(feb1) - Bucket::Month.of(jan31), 1);
        assert_eq!(Bucket::Year.of(feb1), 2024);
    }
}
