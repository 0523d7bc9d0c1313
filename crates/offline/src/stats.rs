//! Scan estimates from file statistics, for the reuse cost gate and layout selection.
//!
//! A source's Parquet footers give, per row group, the row count, the compressed bytes of each
//! column chunk and the time column's min/max. That is the time sketch of a source: a scan
//! restricted to a time range reads the row groups whose [min, max] meets the range (what
//! DataFusion's row-group pruning does), and within a group events are taken as spread
//! evenly between min and max (for histograms). CSV files have no statistics: any scan reads
//! all of them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::Array;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};

use crate::source::Format;
use crate::{Error, Result};

/// One row group (or one whole file without statistics).
#[derive(Debug, Clone)]
pub struct Group {
    /// Event-time range in microseconds; `None` when unknown (no statistics, text times).
    pub time: Option<(i64, i64)>,
    /// Rows in the group (0 for a CSV file: unknown).
    pub rows: u64,
    /// Compressed bytes of the columns a scan reads.
    pub bytes: u64,
    /// Compressed bytes of every column (what a rewrite reads and writes).
    pub all_bytes: u64,
}

/// What a scan is expected to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Compressed bytes read.
    pub bytes: u64,
    /// Rows read.
    pub rows: u64,
    /// Row groups (or files without statistics) read.
    pub groups: u64,
    /// Rows expected inside the time range (each group's rows spread evenly over its
    /// [min, max]): the events the join keeps, packs and sweeps after decoding.
    pub in_range: u64,
}

impl std::ops::Add for Estimate {
    type Output = Estimate;
    fn add(self, o: Estimate) -> Estimate {
        Estimate {
            bytes: self.bytes + o.bytes,
            rows: self.rows + o.rows,
            groups: self.groups + o.groups,
            in_range: self.in_range + o.in_range,
        }
    }
}

/// The statistics of a source's files for one set of read columns.
#[derive(Debug, Clone, Default)]
pub struct ScanStats {
    /// Every row group of the source's files, in file order.
    pub groups: Vec<Group>,
}

impl ScanStats {
    /// Read the footers of `files`; `columns` are the columns a scan reads (the time column
    /// among them).
    pub fn load(files: &[PathBuf], time_col: &str, columns: &[&str]) -> Result<ScanStats> {
        let wanted: HashSet<&str> = columns.iter().copied().collect();
        let mut groups = Vec::new();
        for f in files {
            match Format::of(f) {
                Format::Parquet => parquet_groups(f, time_col, &wanted, &mut groups)?,
                Format::Csv => {
                    let len = match crate::objects::url_of(f) {
                        Some(u) => crate::objects::head(&u)?.map_or(0, |m| m.size),
                        None => std::fs::metadata(f)
                            .map_err(|source| Error::Io {
                                path: f.clone(),
                                source,
                            })?
                            .len(),
                    };
                    groups.push(Group {
                        time: None,
                        rows: 0,
                        bytes: len,
                        all_bytes: len,
                    });
                }
            }
        }
        Ok(ScanStats { groups })
    }

    /// The groups a scan of event times in [lo, hi] reads (`lo` = `None`: unbounded).
    pub fn estimate(&self, lo: Option<i64>, hi: i64) -> Estimate {
        self.groups
            .iter()
            .filter(|g| match g.time {
                None => true,
                Some((min, max)) => max >= lo.unwrap_or(i64::MIN) && min <= hi,
            })
            .fold(Estimate::default(), |e, g| {
                let in_range = match g.time {
                    None => g.rows,
                    Some((min, max)) => {
                        let (a, b) = (min.max(lo.unwrap_or(i64::MIN)), max.min(hi));
                        let share = (b as f64 - a as f64 + 1.0) / (max as f64 - min as f64 + 1.0);
                        (g.rows as f64 * share.clamp(0.0, 1.0)) as u64
                    }
                };
                e + Estimate {
                    bytes: g.bytes,
                    rows: g.rows,
                    groups: 1,
                    in_range,
                }
            })
    }

    /// What a scan of every row group reads.
    pub fn total(&self) -> Estimate {
        self.estimate(None, i64::MAX)
    }

    /// Rows and read bytes per time bucket, spreading each group evenly over its [min, max]
    /// (the time sketch layout selection works from). Buckets are `width` µs from `origin`.
    pub fn histogram(&self, origin: i64, width: i64, buckets: usize) -> Vec<(f64, f64)> {
        let mut h = vec![(0.0, 0.0); buckets];
        for g in &self.groups {
            let Some((min, max)) = g.time else { continue };
            let b0 = ((min - origin).div_euclid(width)).clamp(0, buckets as i64 - 1) as usize;
            let b1 = ((max - origin).div_euclid(width)).clamp(0, buckets as i64 - 1) as usize;
            let span = (max - min + 1).max(1) as f64;
            for (b, slot) in h.iter_mut().enumerate().take(b1 + 1).skip(b0) {
                let s = (origin + b as i64 * width).max(min);
                let e = (origin + (b as i64 + 1) * width).min(max + 1);
                let share = if b0 == b1 {
                    1.0
                } else {
                    (e - s).max(0) as f64 / span
                };
                slot.0 += g.rows as f64 * share;
                slot.1 += g.bytes as f64 * share;
            }
        }
        h
    }
}

fn parquet_groups(
    f: &Path,
    time_col: &str,
    wanted: &HashSet<&str>,
    out: &mut Vec<Group>,
) -> Result<()> {
    let bad = |e: parquet::errors::ParquetError| {
        Error::Source(format!("{}: cannot read the footer: {e}", f.display()))
    };
    let meta = if crate::objects::is_remote(f) {
        let footer = crate::source::parquet_footer(f)
            .map_err(|m| Error::Source(format!("{}: cannot read the footer: {m}", f.display())))?;
        ArrowReaderMetadata::try_new(footer, ArrowReaderOptions::new()).map_err(bad)?
    } else {
        let file = std::fs::File::open(f).map_err(|source| Error::Io {
            path: f.to_path_buf(),
            source,
        })?;
        ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(bad)?
    };
    let pq = meta.metadata();
    let schema = meta.schema();
    let times =
        match StatisticsConverter::try_new(time_col, schema, pq.file_metadata().schema_descr()) {
            Ok(conv) => {
                let mins = conv.row_group_mins(pq.row_groups()).map_err(bad)?;
                let maxs = conv.row_group_maxes(pq.row_groups()).map_err(bad)?;
                let to = |a: &dyn Array| quiver_core::time::to_micros(a, time_col, 0).ok();
                match (to(mins.as_ref()), to(maxs.as_ref())) {
                    (Some(a), Some(b)) => (0..a.len())
                        .map(|i| (a.is_valid(i) && b.is_valid(i)).then(|| (a.value(i), b.value(i))))
                        .collect(),
                    _ => vec![None; pq.num_row_groups()],
                }
            }
            Err(_) => vec![None; pq.num_row_groups()],
        };
    for (rg, time) in pq.row_groups().iter().zip(times) {
        let mut bytes = 0u64;
        let mut all = 0u64;
        for c in rg.columns() {
            let size = c.compressed_size().max(0) as u64;
            all += size;
            let root = c.column_path().parts().first().map(|s| s.as_str());
            if root.is_some_and(|r| wanted.contains(r)) {
                bytes += size;
            }
        }
        out.push(Group {
            time,
            rows: rg.num_rows().max(0) as u64,
            bytes,
            all_bytes: all,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_count_overlapping_groups() {
        let g = |a, b| Group {
            time: Some((a, b)),
            rows: 10,
            bytes: 100,
            all_bytes: 300,
        };
        let s = ScanStats {
            groups: vec![g(0, 9), g(10, 19), g(20, 29)],
        };
        assert_eq!(s.estimate(Some(10), 19).groups, 1);
        assert_eq!(s.estimate(Some(9), 20).bytes, 300);
        assert_eq!(s.estimate(None, 5).rows, 10);
        let h = s.histogram(0, 15, 2);
        assert!(
            (h[0].0 - 15.0).abs() < 1e-9 && (h[1].0 - 15.0).abs() < 1e-9,
            "{h:?}"
        );
    }
}
