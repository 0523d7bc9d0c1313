//! The catalog of computed feature states (DESIGN §4 "Reuse", ADR 0006).
//!
//! Every window feature the engine computes with reuse on is kept as a per-spine-row partial
//! aggregate state ([`crate::state`]) under a lineage key: the source version, the feature's
//! definition without its window (source columns, filter, entity keys, state kind) and the
//! spine's content (keys and times, in row order). The window (length, offset, closed) is
//! stored beside it, so a request for another window of the same definition and spine finds
//! it for widening or narrowing.
//!
//! Layout: `OFFLINE_STORE/reuse/manifest.json` lists the entries, `entries/ID.arrow` holds one
//! state column (Arrow IPC). An entry file is complete before the manifest names it (write to
//! a temporary name, rename), and the manifest itself is replaced by rename, so a crash leaves
//! either the old or the new catalog. Writers serialize on a lock file.
//!
//! Eviction is GreedyDual-Size: an entry's priority is the clock plus its compute cost per
//! byte, refreshed on every hit; over budget, the lowest priority goes and the clock rises to
//! it. Cheap-to-recompute, large, long-unused entries go first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use quiver_core::semantics::Window;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const FORMAT: u32 = 1;
/// The default size budget of the catalog.
pub const DEFAULT_BUDGET: u64 = 2 << 30;

/// One stored state column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// File stem under `entries/`.
    pub id: String,
    /// The source the state was computed from.
    pub source: String,
    /// The id of the source version it was computed from ([`crate::SourceVersion`]).
    pub source_version: String,
    /// Hash of the definition without its window.
    pub def: String,
    /// Hash of the spine (keys and times in row order).
    pub spine: String,
    /// The window the state covers.
    pub window: Window,
    /// The feature it was computed for (`view:feature`), for listings.
    pub feature: String,
    /// Spine rows (one state per row).
    pub rows: u64,
    /// Size of the stored file.
    pub bytes: u64,
    /// What computing it cost, microseconds (the eviction weight).
    pub cost_micros: u64,
    /// GreedyDual-Size priority: the lowest is evicted first.
    pub priority: f64,
    /// When the entry was last stored or used (the older goes first at equal priority).
    pub used_micros: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Manifest {
    format: u32,
    /// GreedyDual-Size clock.
    clock: f64,
    entries: Vec<Entry>,
}

/// A handle on the catalog folder.
#[derive(Debug, Clone)]
pub struct ReuseCatalog {
    dir: PathBuf,
    budget: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

use quiver_core::time::now_micros;

/// The catalog's writer lock: a file created exclusively, removed on drop. A lock older than
/// a minute belongs to a writer that died and is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Result<Lock> {
        let path = dir.join("lock");
        let start = Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Lock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(60));
                    if stale {
                        let _ = std::fs::remove_file(&path);
                    } else if start.elapsed() > Duration::from_secs(30) {
                        return Err(Error::Source(format!(
                            "{}: the reuse catalog is locked by another process",
                            path.display()
                        )));
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl ReuseCatalog {
    /// The catalog of an offline store; stores through this handle evict down to `budget`
    /// bytes of states.
    pub fn new(offline_store: &Path, budget: u64) -> ReuseCatalog {
        ReuseCatalog {
            dir: offline_store.join("reuse"),
            budget,
        }
    }

    /// The catalog's folder (`reuse` in the offline store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The byte budget stores evict down to.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    fn entry_path(&self, id: &str) -> PathBuf {
        self.dir.join("entries").join(format!("{id}.arrow"))
    }

    fn read_manifest(&self) -> Result<Manifest> {
        let p = self.manifest_path();
        match std::fs::read(&p) {
            Ok(b) => {
                let m: Manifest = serde_json::from_slice(&b).map_err(|e| {
                    Error::Source(format!("{}: not a reuse manifest: {e}", p.display()))
                })?;
                if m.format != FORMAT {
                    return Err(Error::Source(format!(
                        "{}: reuse catalog format {} (this Quiver reads {FORMAT})",
                        p.display(),
                        m.format
                    )));
                }
                Ok(m)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest {
                format: FORMAT,
                ..Default::default()
            }),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let p = self.manifest_path();
        // under the writer lock: one writer at a time uses this name
        let tmp = self.dir.join("manifest.json.tmp");
        let bytes = serde_json::to_vec(m).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))
    }

    /// Run `f` on the manifest under the writer lock and save what it leaves, evicting down
    /// to the budget when asked.
    fn update<T>(&self, evict_to_budget: bool, f: impl FnOnce(&mut Manifest) -> T) -> Result<T> {
        std::fs::create_dir_all(self.dir.join("entries")).map_err(io(&self.dir))?;
        let _lock = Lock::take(&self.dir)?;
        let mut m = self.read_manifest()?;
        let out = f(&mut m);
        let budget = if evict_to_budget {
            self.budget
        } else {
            u64::MAX
        };
        let (keep, gone) = evict(&mut m, budget);
        m.entries = keep;
        self.write_manifest(&m)?;
        for e in gone {
            let _ = std::fs::remove_file(self.entry_path(&e.id));
        }
        // Spines no entry refers to any more go too.
        if let Ok(files) = std::fs::read_dir(self.dir.join("spines")) {
            let live: std::collections::HashSet<&str> =
                m.entries.iter().map(|e| e.spine.as_str()).collect();
            for f in files.flatten() {
                let name = f.file_name();
                let stem = name.to_string_lossy();
                let key = stem.strip_suffix(".arrow").unwrap_or(&stem);
                if !live.contains(key) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(out)
    }

    /// Every entry, for listings and tests.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        Ok(self.read_manifest()?.entries)
    }

    /// The stored states of a definition over a spine.
    pub fn find(&self, def: &str, spine: &str) -> Result<Vec<Entry>> {
        Ok(self
            .read_manifest()?
            .entries
            .into_iter()
            .filter(|e| e.def == def && e.spine == spine)
            .collect())
    }

    fn spine_path(&self, key: &str) -> PathBuf {
        self.dir.join("spines").join(format!("{key}.arrow"))
    }

    /// Keep a spine's key and time columns (once per spine), so that another spine can find
    /// its rows among them (cross-spine reuse).
    pub fn store_spine(&self, key: &str, cols: &RecordBatch) -> Result<()> {
        let p = self.spine_path(key);
        if p.exists() {
            return Ok(());
        }
        let dir = self.dir.join("spines");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_ipc(&p, cols)
    }

    /// A stored spine's key and time columns.
    pub fn load_spine(&self, key: &str) -> Result<Option<RecordBatch>> {
        read_ipc(&self.spine_path(key))
    }

    /// Read a stored state; `None` when its file has gone (evicted by a concurrent writer).
    pub fn load(&self, e: &Entry) -> Result<Option<ArrayRef>> {
        let p = self.entry_path(&e.id);
        let Some(batch) = read_ipc(&p)? else {
            return Ok(None);
        };
        if batch.num_rows() as u64 != e.rows || batch.num_columns() != 1 {
            return Err(Error::Source(format!(
                "{}: reuse entry does not match its manifest",
                p.display()
            )));
        }
        Ok(Some(batch.column(0).clone()))
    }

    /// Mark entries as used (raising their eviction priority).
    pub fn touch(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.update(false, |m| {
            let clock = m.clock;
            for e in m.entries.iter_mut().filter(|e| ids.contains(&e.id)) {
                e.priority = clock + weight(e);
                e.used_micros = now_micros();
            }
        })
    }

    /// Store states (entry metadata without id/bytes/priority, and the column). A set of
    /// states larger than half the budget is refused (an error saying so; nothing stored).
    /// Returns the bytes written.
    pub fn store(&self, items: Vec<(Entry, ArrayRef)>) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        // Admission: one join may not take more than half the budget, or a single large
        // cold join would flush everything else (and pay a large write for it).
        let size: u64 = items
            .iter()
            .map(|(_, c)| c.get_array_memory_size() as u64)
            .sum();
        if size > self.budget / 2 {
            return Err(Error::Source(format!(
                "{:.1} MB of states is over half the reuse budget ({:.1} MB; see --reuse-budget)",
                size as f64 / 1e6,
                self.budget as f64 / 1e6
            )));
        }
        std::fs::create_dir_all(self.dir.join("entries")).map_err(io(&self.dir))?;
        let mut written = Vec::new();
        let mut total = 0;
        for (mut e, col) in items {
            e.id = entry_id(&e);
            let p = self.entry_path(&e.id);
            let schema = Schema::new(vec![Field::new("state", col.data_type().clone(), false)]);
            let batch = RecordBatch::try_new(std::sync::Arc::new(schema), vec![col])?;
            write_ipc(&p, &batch)?;
            e.bytes = std::fs::metadata(&p).map_err(io(&p))?.len();
            total += e.bytes;
            written.push(e);
        }
        self.update(true, |m| {
            for mut e in written {
                e.priority = m.clock + weight(&e);
                e.used_micros = now_micros();
                m.entries.retain(|x| x.id != e.id);
                m.entries.push(e);
            }
        })?;
        Ok(total)
    }

    /// Drop every entry computed from a source (a new version of it makes them stale).
    /// Returns how many went.
    pub fn invalidate(&self, source: &str) -> Result<usize> {
        if !self.manifest_path().exists() {
            return Ok(0);
        }
        let gone = self.update(false, |m| {
            let (gone, keep): (Vec<Entry>, Vec<Entry>) =
                m.entries.drain(..).partition(|e| e.source == source);
            m.entries = keep;
            gone
        })?;
        for e in &gone {
            let _ = std::fs::remove_file(self.entry_path(&e.id));
        }
        Ok(gone.len())
    }

    /// Append a record of a scan to the join log that layout selection reads.
    pub fn log_scan(&self, rec: &ScanRecord) -> Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let p = self.dir.join("joins.jsonl");
        let mut line = serde_json::to_vec(rec).map_err(|e| Error::Internal(e.to_string()))?;
        line.push(b'\n');
        // One write of a whole line: concurrent appenders interleave lines, not bytes.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(&line))
            .map_err(io(&p))
    }

    /// The logged scans (lines that do not parse are skipped: a torn last line after a crash).
    pub fn scans(&self) -> Result<Vec<ScanRecord>> {
        let p = self.dir.join("joins.jsonl");
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(s
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p)(e)),
        }
    }
}

/// Write a batch as an Arrow IPC file: to a temporary name, then renamed into place.
fn write_ipc(path: &Path, batch: &RecordBatch) -> Result<()> {
    // A name of this writer's own: two joins may store the same entry at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{seq}.tmp", std::process::id()));
    {
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        // LZ4: counts, non-finite tallies and low parts of sums are mostly small or zero, and
        // LZ4 compresses them at memory speed (zstd saved a little more, and cost the join
        // more time than it saved).
        let opts = arrow::ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))?;
        let mut w =
            FileWriter::try_new_with_options(std::io::BufWriter::new(f), &batch.schema(), opts)?;
        w.write(batch)?;
        w.finish()?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Read the one batch of an Arrow IPC file; `None` when there is no file.
fn read_ipc(path: &Path) -> Result<Option<RecordBatch>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io(path)(err)),
    };
    let mut r = FileReader::try_new(std::io::BufReader::new(f), None)?;
    let batch = r
        .next()
        .transpose()?
        .ok_or_else(|| Error::Source(format!("{}: empty reuse file", path.display())))?;
    Ok(Some(batch))
}

/// One scan of a source by a join: what layout selection optimizes for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScanRecord {
    /// The source scanned.
    pub source: String,
    /// Event-time range read, microseconds (`lo` = `None`: unbounded).
    pub lo: Option<i64>,
    /// Upper end of the event-time range read, microseconds.
    pub hi: i64,
    /// Columns read.
    pub columns: Vec<String>,
    /// The view's join key columns (what a (key, time) layout sorts by).
    pub key_columns: Vec<String>,
    /// Distinct spine keys (a key-restricted scan when small).
    pub distinct_keys: u64,
    /// Bytes the scan read from the source's files.
    pub bytes_scanned: u64,
    /// When the scan ran, microseconds since the epoch.
    pub at_micros: i64,
}

impl ScanRecord {
    /// The record stamped with the current time.
    pub fn now(mut self) -> Self {
        self.at_micros = now_micros();
        self
    }
}

fn weight(e: &Entry) -> f64 {
    e.cost_micros.max(1) as f64 / e.bytes.max(1) as f64
}

fn entry_id(e: &Entry) -> String {
    let w = serde_json::to_string(&e.window).unwrap_or_default();
    let mut h = blake3::Hasher::new();
    for part in [&e.def, &e.spine, &w] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex()[..32].to_string()
}

/// GreedyDual-Size over the manifest: split into what stays and what goes.
fn evict(m: &mut Manifest, budget: u64) -> (Vec<Entry>, Vec<Entry>) {
    let mut entries = std::mem::take(&mut m.entries);
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut gone = Vec::new();
    while total > budget && !entries.is_empty() {
        let (i, _) = entries
            .iter()
            .enumerate()
            .min_by(|a, b| {
                a.1.priority
                    .total_cmp(&b.1.priority)
                    .then(a.1.used_micros.cmp(&b.1.used_micros))
            })
            .expect("non-empty");
        let e = entries.swap_remove(i);
        m.clock = m.clock.max(e.priority);
        total -= e.bytes;
        gone.push(e);
    }
    (entries, gone)
}

/// A hash of named parts, hex: the definition and spine keys.
pub fn key_of(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_core::Duration;
    use quiver_core::semantics::Closed;

    fn entry(def: &str, days: i64, cost: u64) -> Entry {
        Entry {
            id: String::new(),
            source: "s".into(),
            source_version: "v1".into(),
            def: def.into(),
            spine: "sp".into(),
            window: Window {
                length: Some(Duration::from_micros(days * 86_400_000_000)),
                offset: Duration::ZERO,
                closed: Closed::Right,
            },
            feature: "v:f".into(),
            rows: 1000,
            bytes: 0,
            cost_micros: cost,
            priority: 0.0,
            used_micros: 0,
        }
    }

    /// A count state of incompressible values, so file and memory sizes agree.
    fn col() -> ArrayRef {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let n = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 1) as i64
            })
            .collect();
        crate::state::with_value(crate::state::StateKind::Count, n, None).unwrap()
    }

    #[test]
    fn stores_finds_loads_and_invalidates() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        c.store(vec![(entry("d", 30, 10), col())]).unwrap();
        let found = c.find("d", "sp").unwrap();
        assert_eq!(found.len(), 1);
        let got = c.load(&found[0]).unwrap().unwrap();
        assert_eq!(got.as_ref(), col().as_ref());
        assert!(c.find("d", "other").unwrap().is_empty());
        assert_eq!(c.invalidate("s").unwrap(), 1);
        assert!(c.find("d", "sp").unwrap().is_empty());
        assert!(!c.entry_path(&found[0].id).exists());
    }

    #[test]
    fn eviction_keeps_the_costly_per_byte_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let probe = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        probe.store(vec![(entry("probe", 1, 1), col())]).unwrap();
        let size = probe.entries().unwrap()[0].bytes;
        probe.invalidate("s").unwrap();
        // Room for two entries: the cheap one goes when a third arrives.
        let c = ReuseCatalog::new(dir.path(), size * 2 + size / 2);
        c.store(vec![(entry("a", 1, 1_000_000), col())]).unwrap();
        c.store(vec![(entry("b", 2, 10), col())]).unwrap();
        c.store(vec![(entry("c", 3, 1_000_000), col())]).unwrap();
        let mut defs: Vec<String> = c.entries().unwrap().into_iter().map(|e| e.def).collect();
        defs.sort();
        assert_eq!(defs, ["a", "c"]);
        let total: u64 = c.entries().unwrap().iter().map(|e| e.bytes).sum();
        assert!(total <= c.budget());
    }

    #[test]
    fn scan_log_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        let rec = ScanRecord {
            source: "s".into(),
            lo: Some(1),
            hi: 2,
            columns: vec!["a".into()],
            key_columns: vec!["k".into()],
            distinct_keys: 3,
            bytes_scanned: 4,
            at_micros: 5,
        };
        c.log_scan(&rec).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(c.dir().join("joins.jsonl"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"source\":"))
            .unwrap();
        assert_eq!(c.scans().unwrap(), vec![rec]);
    }
}
