//! The catalog of computed feature states (DESIGN §4 "Reuse", ADR 0006).
//!
//! Every window feature the engine computes with reuse on is kept as a per-spine-row partial
//! aggregate state ([`crate::state`]) under a lineage key: the source version, the feature's
//! definition without its window (source columns, filter, entity keys, state kind) and the
//! spine's content (keys and times, in row order). The window (length, offset, closed) is
//! stored beside it, so a request for another window of the same definition and spine finds
//! it for widening or narrowing.
//!
//! Layout: `OFFLINE_STORE/reuse/manifest.json` lists the entries; `entries/FILE.arrow` and
//! `spines/FILE.arrow` hold state columns and spines' key and time columns (Arrow IPC). An
//! entry's state and a spine are lists of **parts** (row ranges of such files), so a spine
//! that grew by a day is stored as yesterday's files plus a file of the new rows: nothing
//! already stored is rewritten. Files are immutable (each write takes a new name) and are
//! removed when no entry or spine refers to them. A file is complete before the manifest names
//! it (write to a temporary name, rename), and the manifest itself is replaced by rename, so a
//! crash leaves either the old or the new catalog. Writers serialize on a lock file.
//!
//! Eviction is GreedyDual-Size: an entry's priority is the clock plus its compute cost per
//! byte, refreshed on every hit; over budget, the lowest priority goes and the clock rises to
//! it. Cheap-to-recompute, large, long-unused entries go first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use arrow::ipc::writer::FileWriter;
use quiver_core::semantics::Window;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where the catalog's files live: a local folder, or a prefix of object storage (an `s3://`
/// offline store), so every machine that joins over the store shares its states. On a file
/// system a replace is a write to a temporary name and a rename; an object put is atomic by
/// itself, and "create unless it exists" is a conditional put.
mod place {
    use std::path::Path;
    use std::time::Duration;

    use super::io;
    use crate::Result;
    use crate::objects;

    /// The file's bytes, `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
        match objects::url_of(path) {
            Some(url) => Ok(objects::get_opt(&url)?.map(|b| b.to_vec())),
            None => match std::fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(path)(e)),
            },
        }
    }

    /// The file's bytes without copying them, `None` when there is none. A local file is
    /// mapped: a state is read by every join that reuses it, and reading a 1.8 M-row
    /// refresh's 85 MB of states into fresh memory was a fifth of the join's CPU time (every
    /// new page zeroed on first touch), where mapping them uses the page cache's pages as they
    /// are.
    pub fn map(path: &Path) -> Result<Option<arrow::buffer::Buffer>> {
        if let Some(url) = objects::url_of(path) {
            return Ok(objects::get_opt(&url)?.map(arrow::buffer::Buffer::from));
        }
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        // SAFETY: the catalog never changes a file in place: each is written under a name of
        // its writer's own and renamed over the old one, and eviction unlinks it, which
        // leaves a mapping valid. Only a file truncated behind Quiver's back could fault.
        let mapped = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
        Ok(Some(bytes::Bytes::from_owner(mapped).into()))
    }

    /// Replace the file with `bytes`, all at once for readers.
    pub fn write(path: &Path, bytes: Vec<u8>) -> Result<()> {
        match objects::url_of(path) {
            Some(url) => objects::put(&url, bytes.into(), false),
            None => {
                // A name of this writer's own: two writers may replace the same file.
                static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tmp = path.with_extension(format!("{}-{seq}.tmp", std::process::id()));
                std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
                std::fs::rename(&tmp, path).map_err(io(path))
            }
        }
    }

    /// Create the file with `bytes` unless it exists; `false` when it did.
    pub fn create(path: &Path, bytes: &[u8]) -> Result<bool> {
        match objects::url_of(path) {
            Some(url) => objects::create(&url, bytes.to_vec().into()),
            None => {
                use std::io::Write;
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                {
                    Ok(mut f) => {
                        let _ = f.write_all(bytes);
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(io(path)(e)),
                }
            }
        }
    }

    /// Remove the file; a missing one is not an error, and a failure leaves a stray that a
    /// later sweep removes.
    pub fn remove(path: &Path) {
        let _ = match objects::url_of(path) {
            Some(url) => objects::delete(&url),
            None => std::fs::remove_file(path).map_err(io(path)),
        };
    }

    /// Whether the file exists.
    pub fn exists(path: &Path) -> Result<bool> {
        match objects::url_of(path) {
            Some(url) => Ok(objects::head(&url)?.is_some()),
            None => Ok(path.exists()),
        }
    }

    /// How long ago the file was last written, if it exists.
    pub fn age(path: &Path) -> Option<Duration> {
        match objects::url_of(path) {
            Some(url) => {
                let m = objects::head(&url).ok()??;
                (chrono::Utc::now() - m.last_modified).to_std().ok()
            }
            None => std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok()),
        }
    }

    /// The files directly in a folder with their ages (none when it does not exist).
    pub fn list(dir: &Path) -> Vec<(String, Duration)> {
        match objects::url_of(dir) {
            Some(url) => objects::list(&url)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(p, m)| {
                    let name = p.file_name()?.to_string_lossy().into_owned();
                    let age = (chrono::Utc::now() - m.last_modified).to_std().ok()?;
                    Some((name, age))
                })
                .collect(),
            None => std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|f| {
                    let age = f.metadata().ok()?.modified().ok()?.elapsed().ok()?;
                    Some((f.file_name().to_string_lossy().into_owned(), age))
                })
                .collect(),
        }
    }

    /// Make the folder (object storage has none to make).
    pub fn make_dir(dir: &Path) -> Result<()> {
        match objects::url_of(dir) {
            Some(_) => Ok(()),
            None => std::fs::create_dir_all(dir).map_err(io(dir)),
        }
    }

    /// Whether the catalog is in object storage.
    pub fn remote(dir: &Path) -> bool {
        objects::url_of(dir).is_some()
    }
}

/// Format 2 stores states and spines as parts of files; format 1 (one file per entry and per
/// spine) is read and rewritten as 2. Format 3 leaves a state's all-zero counts out of its
/// file (`without_zero_counts`); format 2 files are format 3 files that left none out.
const FORMAT: u32 = 3;
/// An entry or spine of more parts than this is stored whole instead (a spine that lines up
/// with stored ones only in many short runs, and the read fan-out of many days of growth).
pub const MAX_PARTS: usize = 64;
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
    /// Its state, in row order, as parts of files under `entries/` (format 1: empty, the
    /// whole of `entries/ID.arrow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// Rows `start..start + rows` of a stored file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Part {
    /// The file's stem.
    pub file: String,
    /// Its first row.
    pub start: u64,
    /// How many rows.
    pub rows: u64,
}

/// A stored file's size and rows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
struct FileInfo {
    bytes: u64,
    rows: u64,
}

/// A piece of a state or spine to store: rows of something already stored, or rows of what
/// this store writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Rows `start..start + rows` of a stored entry (by id) or spine (by key).
    Stored {
        /// The entry's id or the spine's key.
        of: String,
        /// Its first row.
        start: u64,
        /// How many rows.
        rows: u64,
    },
    /// Rows `start..start + rows` of the new array.
    New {
        /// Its first row.
        start: u64,
        /// How many rows.
        rows: u64,
    },
}

/// What to store of a state column or a spine: the whole, and when it is mostly stored
/// already, its pieces and the array of the rows that are not. The catalog stores the pieces
/// when everything they name is still there, the whole otherwise.
#[derive(Debug, Clone)]
pub struct ToStore<W, N = W> {
    /// The whole column (as chunks) or spine batch.
    pub whole: W,
    /// Its pieces in row order, and the array their `New` rows index.
    pub pieces: Option<(Vec<Piece>, N)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Manifest {
    format: u32,
    /// GreedyDual-Size clock.
    clock: f64,
    entries: Vec<Entry>,
    /// State files under `entries/`.
    #[serde(default)]
    files: std::collections::BTreeMap<String, FileInfo>,
    /// Each stored spine as parts of files under `spines/`.
    #[serde(default)]
    spines: std::collections::BTreeMap<String, Vec<Part>>,
    /// Spine files under `spines/`.
    #[serde(default)]
    spine_files: std::collections::BTreeMap<String, FileInfo>,
}

impl Manifest {
    /// A format-1 manifest in format 2: each entry the whole of its own file, each spine the
    /// whole of `spines/KEY.arrow`.
    fn upgrade(&mut self) {
        for e in &mut self.entries {
            if e.parts.is_empty() {
                e.parts = vec![Part {
                    file: e.id.clone(),
                    start: 0,
                    rows: e.rows,
                }];
                self.files.insert(
                    e.id.clone(),
                    FileInfo {
                        bytes: e.bytes,
                        rows: e.rows,
                    },
                );
            }
            if !self.spines.contains_key(&e.spine) {
                self.spines.insert(
                    e.spine.clone(),
                    vec![Part {
                        file: e.spine.clone(),
                        start: 0,
                        rows: e.rows,
                    }],
                );
                self.spine_files.insert(
                    e.spine.clone(),
                    FileInfo {
                        bytes: 0,
                        rows: e.rows,
                    },
                );
            }
        }
        self.format = FORMAT;
    }

    /// The state bytes an entry reads: its parts' shares of their files.
    fn entry_bytes(&self, parts: &[Part]) -> u64 {
        parts
            .iter()
            .map(|p| {
                let f = self.files.get(&p.file).copied().unwrap_or_default();
                (f.bytes as u128 * p.rows as u128 / f.rows.max(1) as u128) as u64
            })
            .sum()
    }

    /// Resolve pieces against stored parts (`of` looks a stored entry's or spine's parts up),
    /// the new rows being parts of `new_file`; `None` when a piece names what is gone or the
    /// result has too many parts.
    fn resolve(
        pieces: &[Piece],
        new_file: &str,
        of: impl Fn(&str) -> Option<Vec<Part>>,
    ) -> Option<Vec<Part>> {
        let mut out: Vec<Part> = Vec::new();
        for piece in pieces {
            let parts = match piece {
                Piece::Stored {
                    of: id,
                    start,
                    rows,
                } => sub_parts(&of(id)?, *start, *rows)?,
                Piece::New { start, rows } => vec![Part {
                    file: new_file.to_string(),
                    start: *start,
                    rows: *rows,
                }],
            };
            for p in parts {
                match out.last_mut() {
                    Some(l) if l.file == p.file && l.start + l.rows == p.start => l.rows += p.rows,
                    _ => out.push(p),
                }
            }
        }
        (out.len() <= MAX_PARTS).then_some(out)
    }
}

/// Where a stored state or spine ends up: its `resolved` parts, naming the `new` file written
/// for it (now listed in `files`), or — when what the pieces named is gone — a whole file
/// written by `whole`, the new file then dropped (`drop_new`). Returns the parts and the bytes
/// written.
fn settle(
    resolved: Option<Vec<Part>>,
    new: &Option<(String, FileInfo)>,
    files: &mut std::collections::BTreeMap<String, FileInfo>,
    drop_new: impl FnOnce(),
    whole: impl FnOnce() -> Result<(String, FileInfo)>,
) -> Result<(Vec<Part>, u64)> {
    let (parts, written) = match resolved {
        Some(parts) => (parts, new.clone()),
        None => {
            drop_new();
            let (f, info) = whole()?;
            let part = Part {
                file: f.clone(),
                start: 0,
                rows: info.rows,
            };
            (vec![part], Some((f, info)))
        }
    };
    let bytes = written.as_ref().map_or(0, |(_, i)| i.bytes);
    if let Some((f, info)) = written {
        files.insert(f, info);
    }
    Ok((parts, bytes))
}

/// Rows `start..start + rows` of a list of parts, as parts; `None` when out of range.
fn sub_parts(parts: &[Part], start: u64, rows: u64) -> Option<Vec<Part>> {
    let (mut at, end) = (0u64, start.checked_add(rows)?);
    let mut out = Vec::new();
    for p in parts {
        let (lo, hi) = (at.max(start), (at + p.rows).min(end));
        if lo < hi {
            out.push(Part {
                file: p.file.clone(),
                start: p.start + (lo - at),
                rows: hi - lo,
            });
        }
        at += p.rows;
    }
    (out.iter().map(|p| p.rows).sum::<u64>() == rows).then_some(out)
}

/// A new file name: files are never rewritten, since other entries may name their rows.
fn fresh_name(stem: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = blake3::Hasher::new();
    h.update(stem.as_bytes());
    h.update(&now_micros().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.finalize().to_hex()[..32].to_string()
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

/// The catalog's writer lock: a file created exclusively (in object storage, a conditional
/// put), holding its writer's pid, removed on drop. A lock whose process is gone (a join that
/// exited before its states were stored; checked on a local folder), or older than a minute,
/// belongs to a writer that died and is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Result<Lock> {
        let path = dir.join("lock");
        let start = Instant::now();
        loop {
            if place::create(&path, std::process::id().to_string().as_bytes())? {
                return Ok(Lock(path));
            }
            let age = place::age(&path);
            // a pid is written just after the file is made: give it a moment
            let dead = !place::remote(dir)
                && age.is_some_and(|a| a > Duration::from_millis(100))
                && std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .is_some_and(|pid| {
                        Path::new("/proc/self").exists()
                            && !Path::new(&format!("/proc/{pid}")).exists()
                    });
            let stale = dead || age.is_some_and(|age| age > Duration::from_secs(60));
            if stale {
                place::remove(&path);
            } else if start.elapsed() > Duration::from_secs(30) {
                return Err(Error::Source(format!(
                    "{}: the reuse catalog is locked by another process",
                    path.display()
                )));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        place::remove(&self.0);
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

    /// The catalog of `repo`: `OFFLINE_STORE/reuse`, a folder or an object-storage prefix
    /// (an `s3://` offline store keeps its states, and the log of scans, in the bucket, so
    /// every machine joining over it shares them).
    pub fn of_repo(repo: &quiver_core::Repo, budget: u64) -> ReuseCatalog {
        ReuseCatalog::new(&repo.offline_store, budget)
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
        match place::read(&p)? {
            Some(b) => {
                let m: Manifest = serde_json::from_slice(&b).map_err(|e| {
                    Error::Source(format!("{}: not a reuse manifest: {e}", p.display()))
                })?;
                let mut m = m;
                match m.format {
                    1 => m.upgrade(),
                    2 => m.format = FORMAT,
                    FORMAT => {}
                    other => {
                        return Err(Error::Source(format!(
                            "{}: reuse catalog format {other} (this Quiver reads 1 to {FORMAT})",
                            p.display()
                        )));
                    }
                }
                Ok(m)
            }
            None => Ok(Manifest {
                format: FORMAT,
                ..Default::default()
            }),
        }
    }

    fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec(m).map_err(|e| Error::Internal(e.to_string()))?;
        place::write(&self.manifest_path(), bytes)
    }

    /// Run `f` on the manifest under the writer lock and save what it leaves, evicting down
    /// to the budget when asked.
    fn update<T>(&self, evict_to_budget: bool, f: impl FnOnce(&mut Manifest) -> T) -> Result<T> {
        place::make_dir(&self.dir.join("entries"))?;
        let _lock = Lock::take(&self.dir)?;
        let mut m = self.read_manifest()?;
        let out = f(&mut m);
        let budget = if evict_to_budget {
            self.budget
        } else {
            u64::MAX
        };
        evict(&mut m, budget);
        // Files no entry or spine names any more go (only files the manifest listed: a
        // concurrent writer's new files are not listed yet).
        let live: std::collections::HashSet<&str> =
            m.entries.iter().map(|e| e.spine.as_str()).collect();
        m.spines.retain(|k, _| live.contains(k.as_str()));
        let dead = |files: &mut std::collections::BTreeMap<String, FileInfo>,
                    used: std::collections::HashSet<String>| {
            let gone: Vec<String> = files
                .keys()
                .filter(|f| !used.contains(*f))
                .cloned()
                .collect();
            for f in &gone {
                files.remove(f);
            }
            gone
        };
        let used = m
            .entries
            .iter()
            .flat_map(|e| &e.parts)
            .map(|p| p.file.clone());
        let gone_states = dead(&mut m.files, used.collect());
        let used = m.spines.values().flatten().map(|p| p.file.clone());
        let gone_spines = dead(&mut m.spine_files, used.collect());
        self.write_manifest(&m)?;
        self.sweep_strays(&m);
        for f in gone_states {
            place::remove(&self.entry_path(&f));
        }
        for f in gone_spines {
            place::remove(&self.spine_path(&f));
        }
        Ok(out)
    }

    /// Remove files the manifest does not name that are older than ten minutes: left by a
    /// store that was cut short (a process that exited past its bound, a crash). A
    /// concurrent writer's new files are seconds old.
    fn sweep_strays(&self, m: &Manifest) {
        for (dir, named) in [("entries", &m.files), ("spines", &m.spine_files)] {
            let dir = self.dir.join(dir);
            for (name, age) in place::list(&dir) {
                let stem = name.strip_suffix(".arrow").unwrap_or(&name);
                if !named.contains_key(stem) && age > Duration::from_secs(600) {
                    place::remove(&dir.join(&name));
                }
            }
        }
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

    fn spine_path(&self, file: &str) -> PathBuf {
        self.dir.join("spines").join(format!("{file}.arrow"))
    }

    /// Read parts of files (each file once) as one batch; `None` when a file has gone.
    fn assemble(
        &self,
        parts: &[Part],
        path: impl Fn(&str) -> PathBuf,
    ) -> Result<Option<RecordBatch>> {
        let mut files: std::collections::HashMap<&str, RecordBatch> = Default::default();
        let mut slices = Vec::with_capacity(parts.len());
        for p in parts {
            if !files.contains_key(p.file.as_str()) {
                let Some(b) = read_ipc(&path(&p.file))? else {
                    return Ok(None);
                };
                files.insert(&p.file, with_zero_counts(b)?);
            }
            let b = &files[p.file.as_str()];
            if p.start + p.rows > b.num_rows() as u64 {
                return Err(Error::Source(format!(
                    "{}: {} rows, a part names rows {}..{}",
                    path(&p.file).display(),
                    b.num_rows(),
                    p.start,
                    p.start + p.rows
                )));
            }
            slices.push(b.slice(p.start as usize, p.rows as usize));
        }
        match slices.len() {
            0 => Ok(None),
            1 => Ok(slices.pop()),
            _ => Ok(Some(arrow::compute::concat_batches(
                &slices[0].schema(),
                &slices,
            )?)),
        }
    }

    /// A stored spine's key and time columns, in row order.
    pub fn load_spine(&self, key: &str) -> Result<Option<RecordBatch>> {
        let m = self.read_manifest()?;
        match m.spines.get(key) {
            Some(parts) => self.assemble(parts, |f| self.spine_path(f)),
            None => Ok(None),
        }
    }

    /// Read a stored state; `None` when a file of it has gone (evicted by a concurrent
    /// writer).
    pub fn load(&self, e: &Entry) -> Result<Option<ArrayRef>> {
        let whole;
        let parts = match e.parts.is_empty() {
            true => {
                whole = [Part {
                    file: e.id.clone(),
                    start: 0,
                    rows: e.rows,
                }];
                &whole[..]
            }
            false => &e.parts[..],
        };
        let Some(batch) = self.assemble(parts, |f| self.entry_path(f))? else {
            return Ok(None);
        };
        if batch.num_rows() as u64 != e.rows || batch.num_columns() != 1 {
            return Err(Error::Source(format!(
                "{}: reuse entry {} does not match its manifest",
                self.dir.display(),
                e.id
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

    /// Store states (entry metadata without id/bytes/priority, and the column) computed over
    /// the spine `spine.0` (its key and time columns, stored once per spine). States and the
    /// spine given as pieces of stored ones write only their new rows. A set of states larger
    /// than half the budget is refused (an error saying so; nothing stored). Returns the bytes
    /// written.
    pub fn store(
        &self,
        spine: (&str, ToStore<RecordBatch>),
        items: Vec<(Entry, ToStore<Vec<ArrayRef>, ArrayRef>)>,
    ) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        // a state given in chunks (stored slices and new rows) is one column when stored whole
        let one = |chunks: &[ArrayRef]| -> Result<ArrayRef> {
            match chunks {
                [a] => Ok(a.clone()),
                _ => {
                    let refs: Vec<&dyn arrow::array::Array> =
                        chunks.iter().map(|a| a.as_ref()).collect();
                    Ok(arrow::compute::concat(&refs)?)
                }
            }
        };
        let items = items
            .into_iter()
            .map(|(e, st)| {
                let whole = match &st.pieces {
                    Some(_) => None,
                    None => Some(one(&st.whole)?),
                };
                Ok((e, st, whole))
            })
            .collect::<Result<Vec<_>>>()?;
        // Admission: one join may not take more than half the budget, or a single large
        // cold join would flush everything else (and pay a large write for it).
        let size: u64 = items
            .iter()
            .map(|(_, c, whole)| match (&c.pieces, whole) {
                (Some((_, new)), _) => new.get_array_memory_size() as u64,
                (None, Some(w)) => w.get_array_memory_size() as u64,
                (None, None) => 0,
            })
            .sum();
        if size > self.budget / 2 {
            return Err(Error::Source(format!(
                "{:.1} MB of states is over half the reuse budget ({:.1} MB; see --reuse-budget)",
                size as f64 / 1e6,
                self.budget as f64 / 1e6
            )));
        }
        for d in ["entries", "spines"] {
            place::make_dir(&self.dir.join(d))?;
        }
        // The new rows are written before the lock is taken; what the manifest no longer
        // has by then is written whole under it.
        let state_file = |col: &ArrayRef| -> Result<(String, FileInfo)> {
            let name = fresh_name("state");
            let batch = without_zero_counts(col)?;
            Ok((name.clone(), write_file(&self.entry_path(&name), &batch)?))
        };
        let spine_file = |b: &RecordBatch| -> Result<(String, FileInfo)> {
            let name = fresh_name("spine");
            Ok((name.clone(), write_file(&self.spine_path(&name), b)?))
        };
        let (spine_key, spine) = spine;
        let spine_known = self.read_manifest()?.spines.contains_key(spine_key);
        let spine_new = match (&spine.pieces, spine_known) {
            (Some((_, new)), false) if new.num_rows() > 0 => Some(spine_file(new)?),
            _ => None,
        };
        let mut written = Vec::with_capacity(items.len());
        for (mut e, st, whole) in items {
            e.id = entry_id(&e);
            let new = match (&st.pieces, &whole) {
                (Some((_, new)), _) if new.is_empty() => None,
                (Some((_, new)), _) => Some(state_file(new)?),
                (None, Some(w)) => Some(state_file(w)?),
                (None, None) => None,
            };
            written.push((e, st, new));
        }
        crate::profile::stage(format_args!(
            "reuse: {} state file(s) written",
            written.len()
        ));
        let mut orphans: Vec<PathBuf> = Vec::new();
        let total = self.update(true, |m| -> Result<u64> {
            let mut total = 0;
            if !m.spines.contains_key(spine_key) {
                let pieces = spine.pieces.as_ref().and_then(|(pieces, _)| {
                    let new = spine_new.as_ref().map_or("", |(f, _)| f.as_str());
                    Manifest::resolve(pieces, new, |k| m.spines.get(k).cloned())
                });
                let (parts, bytes) = settle(
                    pieces,
                    &spine_new,
                    &mut m.spine_files,
                    || orphans.extend(spine_new.iter().map(|(f, _)| self.spine_path(f))),
                    || spine_file(&spine.whole),
                )?;
                total += bytes;
                m.spines.insert(spine_key.to_string(), parts);
            } else if let Some((f, _)) = &spine_new {
                orphans.push(self.spine_path(f));
            }
            for (mut e, st, new) in written {
                let resolved = match &st.pieces {
                    Some((pieces, _)) => {
                        let name = new.as_ref().map_or("", |(f, _)| f.as_str());
                        Manifest::resolve(pieces, name, |id| {
                            m.entries
                                .iter()
                                .find(|x| x.id == id)
                                .map(|x| x.parts.clone())
                        })
                    }
                    None => new.as_ref().map(|(f, info)| {
                        vec![Part {
                            file: f.clone(),
                            start: 0,
                            rows: info.rows,
                        }]
                    }),
                };
                let (parts, bytes) = settle(
                    resolved,
                    &new,
                    &mut m.files,
                    || orphans.extend(new.iter().map(|(f, _)| self.entry_path(f))),
                    || state_file(&one(&st.whole)?),
                )?;
                total += bytes;
                e.parts = parts;
                e.bytes = m.entry_bytes(&e.parts);
                e.priority = m.clock + weight(&e);
                e.used_micros = now_micros();
                m.entries.retain(|x| x.id != e.id);
                m.entries.push(e);
            }
            Ok(total)
        })?;
        for p in orphans {
            place::remove(&p);
        }
        crate::profile::stage(format_args!("reuse: catalog updated"));
        total
    }

    /// Drop every entry computed from a source (a new version of it makes them stale).
    /// Returns how many went.
    pub fn invalidate(&self, source: &str) -> Result<usize> {
        if !place::exists(&self.manifest_path())? {
            return Ok(0);
        }
        self.update(false, |m| {
            let before = m.entries.len();
            m.entries.retain(|e| e.source != source);
            before - m.entries.len()
        })
    }

    /// Append a record of a scan to the join log that layout selection reads: a line of
    /// `joins.jsonl` in a folder, an object of its own under `joins/` in object storage
    /// (objects cannot be appended to).
    pub fn log_scan(&self, rec: &ScanRecord) -> Result<()> {
        use std::io::Write;
        let mut line = serde_json::to_vec(rec).map_err(|e| Error::Internal(e.to_string()))?;
        if place::remote(&self.dir) {
            let name = format!("{}-{}.json", now_micros(), fresh_name("scan"));
            return place::write(&self.dir.join("joins").join(name), line);
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let p = self.dir.join("joins.jsonl");
        line.push(b'\n');
        // One write of a whole line: concurrent appenders interleave lines, not bytes.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(&line))
            .map_err(io(&p))
    }

    /// The logged scans, oldest first (lines that do not parse are skipped: a torn last line
    /// after a crash).
    pub fn scans(&self) -> Result<Vec<ScanRecord>> {
        if place::remote(&self.dir) {
            let dir = self.dir.join("joins");
            let mut names: Vec<String> = place::list(&dir).into_iter().map(|(n, _)| n).collect();
            // names start with the time they were logged
            names.sort_by_key(|n| {
                n.split('-')
                    .next()
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0)
            });
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                if let Some(b) = place::read(&dir.join(&n))?
                    && let Ok(r) = serde_json::from_slice(&b)
                {
                    out.push(r);
                }
            }
            return Ok(out);
        }
        let p = self.dir.join("joins.jsonl");
        match place::read(&p)? {
            Some(b) => Ok(String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            None => Ok(Vec::new()),
        }
    }
}

/// The metadata key naming, in order, every child of a stored state's struct, where some
/// were left out of the file for being all zero.
const ALL_CHILDREN: &str = "quiver.children";

/// A state as the one-column batch its file holds. Children that are counts (non-nullable
/// Int64) and zero in every row — a float sum's NaN and infinity counts, nearly always — are
/// left out and named in the field's metadata: they were half of a float sum's bytes, and
/// on the machines Quiver is measured on every new megabyte of file costs ~2.5 ms (the
/// host backs a page the guest writes for the first time; benches/README.md).
fn without_zero_counts(col: &ArrayRef) -> Result<RecordBatch> {
    use arrow::array::{Array, AsArray, StructArray};
    use arrow::datatypes::{DataType, Int64Type};
    let field = |dt: &DataType| Field::new("state", dt.clone(), false);
    let whole = |f: Field, col: ArrayRef| -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(vec![f])),
            vec![col],
        )?)
    };
    let DataType::Struct(fields) = col.data_type() else {
        return whole(field(col.data_type()), col.clone());
    };
    let s = col.as_struct();
    let zero = |k: usize| {
        let (f, c) = (&fields[k], s.column(k));
        // the first child always stays: a struct keeps at least one
        k > 0
            && f.data_type() == &DataType::Int64
            && !f.is_nullable()
            && f.metadata().is_empty()
            && c.null_count() == 0
            && c.as_primitive::<Int64Type>()
                .values()
                .iter()
                .all(|&v| v == 0)
    };
    let keep: Vec<usize> = (0..fields.len()).filter(|&k| !zero(k)).collect();
    if s.nulls().is_some() || keep.len() == fields.len() {
        return whole(field(col.data_type()), col.clone());
    }
    let kept: arrow::datatypes::Fields = keep.iter().map(|&k| fields[k].clone()).collect();
    let children = keep.iter().map(|&k| s.column(k).clone()).collect();
    let slim = StructArray::try_new(kept.clone(), children, None)?;
    let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    let f = field(&DataType::Struct(kept))
        .with_metadata([(ALL_CHILDREN.to_string(), names.join(","))].into());
    whole(f, std::sync::Arc::new(slim))
}

/// A file's batch with the counts `without_zero_counts` left out put back, as zeros.
fn with_zero_counts(b: RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, AsArray, Int64Array, StructArray};
    use arrow::datatypes::DataType;
    let Some(names) = b
        .schema()
        .fields()
        .first()
        .and_then(|f| f.metadata().get(ALL_CHILDREN).cloned())
    else {
        return Ok(b);
    };
    let bad = |what: &str| Error::Source(format!("a stored state's children: {what}"));
    let s = b
        .column(0)
        .as_struct_opt()
        .ok_or_else(|| bad("not a struct"))?;
    let (mut fields, mut children) = (Vec::new(), Vec::new());
    // One buffer of zeros for every count left out: a float sum's three special counts
    // would otherwise take three new columns of memory, each zeroed page by page.
    let mut zeros: Option<ArrayRef> = None;
    for name in names.split(',') {
        match s.fields().iter().position(|f| f.name() == name) {
            Some(k) => {
                fields.push(s.fields()[k].clone());
                children.push(s.column(k).clone());
            }
            None => {
                fields.push(std::sync::Arc::new(Field::new(
                    name,
                    DataType::Int64,
                    false,
                )));
                let zeros = zeros.get_or_insert_with(|| {
                    std::sync::Arc::new(Int64Array::from(vec![0i64; s.len()])) as ArrayRef
                });
                children.push(std::sync::Arc::clone(zeros));
            }
        }
    }
    if children.len() < s.num_columns() {
        return Err(bad("the metadata names fewer than the file holds"));
    }
    let full = StructArray::try_new(fields.into(), children, None)?;
    let f = Field::new("state", full.data_type().clone(), false);
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![f])),
        vec![std::sync::Arc::new(full)],
    )?)
}

/// Write a batch as an Arrow IPC file, whole for readers; returns its size and rows.
fn write_file(path: &Path, batch: &RecordBatch) -> Result<FileInfo> {
    // Uncompressed: a state is read back by every join that reuses it, and decoding LZ4
    // (arrow's pure-Rust codec) took ~100 ms per 1.8 M-row state, longer than computing the
    // day a refresh adds; uncompressed files are read at the speed of a copy. They take ~4x
    // the disk (the budget counts file bytes, so fewer states are kept).
    let write = |out: &mut dyn std::io::Write| -> Result<()> {
        let mut w = FileWriter::try_new(out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
        Ok(())
    };
    let bytes = if place::remote(path) {
        // An object is put whole.
        let mut out = Vec::new();
        write(&mut out)?;
        let n = out.len() as u64;
        place::write(path, out)?;
        n
    } else {
        // Streamed to a name of this writer's own, then renamed into place.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}-{seq}.tmp", std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut out = std::io::BufWriter::new(f);
        write(&mut out)?;
        std::io::Write::flush(&mut out).map_err(io(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        std::fs::metadata(path).map_err(io(path))?.len()
    };
    Ok(FileInfo {
        bytes,
        rows: batch.num_rows() as u64,
    })
}

/// Read the one batch of an Arrow IPC file; `None` when there is no file.
fn read_ipc(path: &Path) -> Result<Option<RecordBatch>> {
    // The whole file mapped (or one get), its arrays decoded in place (zero copy): a stream
    // reader zero-fills a buffer per message and copies into it, which took a third of an
    // exact repeat's time in page faults and memset.
    let Some(buf) = place::map(path)? else {
        return Ok(None);
    };
    // Whatever is wrong with the file (cut short, overwritten), the error names it.
    decode_ipc(&buf)
        .map(Some)
        .map_err(|e| Error::Source(format!("{}: {e}", path.display())))
}

/// The one batch of an Arrow IPC file's bytes, its arrays pointing into them.
fn decode_ipc(buf: &arrow::buffer::Buffer) -> Result<RecordBatch> {
    use arrow::ipc::reader::{FileDecoder, read_footer_length};
    let bad = |what: &str| Error::Source(what.to_string());
    let trailer = buf
        .len()
        .checked_sub(10)
        .ok_or_else(|| bad("not an Arrow IPC file"))?;
    let tail: [u8; 10] = buf[trailer..].try_into().expect("ten bytes");
    let footer_len = read_footer_length(tail)?;
    let footer_at = trailer
        .checked_sub(footer_len)
        .ok_or_else(|| bad("not an Arrow IPC file"))?;
    let footer = arrow::ipc::root_as_footer(&buf[footer_at..trailer])
        .map_err(|e| bad(&format!("unreadable footer: {e}")))?;
    let schema =
        arrow::ipc::convert::fb_to_schema(footer.schema().ok_or_else(|| bad("no schema"))?);
    let mut decoder = FileDecoder::new(std::sync::Arc::new(schema), footer.version());
    let block_data = |b: &arrow::ipc::Block| -> Result<arrow::buffer::Buffer> {
        let (at, len) = (
            b.offset() as usize,
            b.metaDataLength() as usize + b.bodyLength() as usize,
        );
        if at.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(bad("a block lies past the end of the file"));
        }
        Ok(buf.slice_with_length(at, len))
    };
    for b in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(b, &block_data(b)?)?;
    }
    let block = footer
        .recordBatches()
        .and_then(|bs| bs.iter().next())
        .ok_or_else(|| bad("empty reuse file"))?;
    decoder
        .read_record_batch(block, &block_data(block)?)?
        .ok_or_else(|| bad("empty reuse file"))
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

/// GreedyDual-Size over the manifest: entries go, lowest priority first, until the files
/// the rest name (each counted once: entries share the files of the days they grew from)
/// fit the budget.
fn evict(m: &mut Manifest, budget: u64) {
    let total = |m: &Manifest| -> u64 {
        let used: std::collections::HashSet<&str> = m
            .entries
            .iter()
            .flat_map(|e| &e.parts)
            .map(|p| p.file.as_str())
            .collect();
        used.iter()
            .map(|f| m.files.get(*f).map_or(0, |i| i.bytes))
            .sum()
    };
    while !m.entries.is_empty() && total(m) > budget {
        let (i, _) = m
            .entries
            .iter()
            .enumerate()
            .min_by(|a, b| {
                a.1.priority
                    .total_cmp(&b.1.priority)
                    .then(a.1.used_micros.cmp(&b.1.used_micros))
            })
            .expect("non-empty");
        let e = m.entries.swap_remove(i);
        m.clock = m.clock.max(e.priority);
    }
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
            parts: Vec::new(),
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

    /// A spine of `n` rows: times 0, 1, ...
    fn spine_of(from: i64, n: usize) -> RecordBatch {
        let t: ArrayRef = std::sync::Arc::new(arrow::array::Int64Array::from_iter_values(
            from..from + n as i64,
        ));
        RecordBatch::try_from_iter([("t", t)]).unwrap()
    }

    fn store1(c: &ReuseCatalog, e: Entry, col: ArrayRef) {
        let spine = ToStore {
            whole: spine_of(0, col.len()),
            pieces: None,
        };
        let key = e.spine.clone();
        let st = ToStore {
            whole: vec![col],
            pieces: None,
        };
        c.store((&key, spine), vec![(e, st)]).unwrap();
    }

    #[test]
    fn a_grown_spine_stores_only_its_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        store1(&c, entry("d", 30, 10), col());
        let old = c.entries().unwrap().remove(0);
        let files = |sub: &str| {
            std::fs::read_dir(dir.path().join("reuse").join(sub))
                .unwrap()
                .count()
        };
        assert_eq!((files("entries"), files("spines")), (1, 1));
        // today: the last 990 stored rows, then 10 new ones
        let new_col = col().slice(0, 10);
        let pieces = vec![
            Piece::Stored {
                of: old.id.clone(),
                start: 10,
                rows: 990,
            },
            Piece::New { start: 0, rows: 10 },
        ];
        let whole =
            arrow::compute::concat(&[col().slice(10, 990).as_ref(), new_col.as_ref()]).unwrap();
        let spine_pieces = vec![
            Piece::Stored {
                of: "sp".into(),
                start: 10,
                rows: 990,
            },
            Piece::New { start: 0, rows: 10 },
        ];
        let spine = ToStore {
            whole: spine_of(10, 1000),
            pieces: Some((spine_pieces, spine_of(1000, 10))),
        };
        let e = Entry {
            spine: "sp2".into(),
            ..entry("d", 30, 10)
        };
        let st = ToStore {
            whole: vec![whole.clone()],
            pieces: Some((pieces, new_col)),
        };
        c.store(("sp2", spine), vec![(e, st)]).unwrap();
        assert_eq!((files("entries"), files("spines")), (2, 2));
        let grown = c.find("d", "sp2").unwrap().remove(0);
        assert_eq!(grown.parts.len(), 2);
        assert_eq!(c.load(&grown).unwrap().unwrap().as_ref(), whole.as_ref());
        assert_eq!(c.load_spine("sp2").unwrap().unwrap(), spine_of(10, 1000));
        // yesterday's entry goes; its file stays while today's names its rows
        c.update(false, |m| m.entries.retain(|e| e.spine == "sp2"))
            .unwrap();
        assert_eq!((files("entries"), files("spines")), (2, 2));
        assert_eq!(c.load(&grown).unwrap().unwrap().as_ref(), whole.as_ref());
        assert_eq!(c.invalidate("s").unwrap(), 1);
        assert_eq!((files("entries"), files("spines")), (0, 0));
    }

    /// A state's all-zero counts are left out of its file and come back as zeros; a count
    /// with one non-zero row, a nullable child and the first child stay in the file.
    #[test]
    fn all_zero_counts_are_not_written_and_read_back_as_zeros() {
        use arrow::array::{Float64Array, Int64Array, StructArray};
        use arrow::datatypes::DataType;
        let state = |nan: Vec<i64>| -> ArrayRef {
            let int = |n: &str| Field::new(n, DataType::Int64, false);
            let fields = vec![
                int("n"),
                Field::new("s1h", DataType::Float64, false),
                int("nan"),
                int("pinf"),
                Field::new("v", DataType::Int64, true),
            ];
            let kids: Vec<ArrayRef> = vec![
                std::sync::Arc::new(Int64Array::from(vec![0, 0, 0])),
                std::sync::Arc::new(Float64Array::from(vec![1.5, 0.0, -2.0])),
                std::sync::Arc::new(Int64Array::from(nan)),
                std::sync::Arc::new(Int64Array::from(vec![0, 0, 0])),
                std::sync::Arc::new(Int64Array::from(vec![Some(0), None, Some(0)])),
            ];
            std::sync::Arc::new(StructArray::try_new(fields.into(), kids, None).unwrap())
        };
        let dir = tempfile::tempdir().unwrap();
        let c = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        for (def, nan, stored) in [
            ("zeros", vec![0, 0, 0], vec!["n", "s1h", "v"]),
            ("one nan", vec![0, 1, 0], vec!["n", "s1h", "nan", "v"]),
        ] {
            let mut e = entry(def, 30, 10);
            e.rows = 3;
            store1(&c, e, state(nan.clone()));
            let found = c.find(def, "sp").unwrap();
            let file = c.entry_path(&found[0].parts[0].file);
            let raw = read_ipc(&file).unwrap().unwrap();
            let DataType::Struct(f) = raw.schema().field(0).data_type().clone() else {
                panic!("not a struct")
            };
            let names: Vec<&str> = f.iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, stored, "{def}");
            let got = c.load(&found[0]).unwrap().unwrap();
            assert_eq!(got.as_ref(), state(nan).as_ref(), "{def}");
        }
    }

    /// Format 1 wrote LZ4-compressed files; they still read back.
    #[test]
    fn reads_format_1_compressed_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.arrow");
        let batch = RecordBatch::try_from_iter([("state", col())]).unwrap();
        let opts = arrow::ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let f = std::fs::File::create(&p).unwrap();
        let mut w = FileWriter::try_new_with_options(f, &batch.schema(), opts).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        assert_eq!(read_ipc(&p).unwrap().unwrap(), batch);
        std::fs::write(&p, b"not arrow").unwrap();
        assert!(read_ipc(&p).is_err());
        assert!(read_ipc(&dir.path().join("none.arrow")).unwrap().is_none());
    }

    /// A mapped file that is empty or cut short is an error naming it, never a crash; one
    /// unlinked while its arrays are in use (evicted by another writer) still reads.
    #[test]
    fn mapped_files_cut_short_or_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.arrow");
        let batch = RecordBatch::try_from_iter([("state", col())]).unwrap();
        write_file(&p, &batch).unwrap();
        let whole = std::fs::read(&p).unwrap();
        let loaded = read_ipc(&p).unwrap().unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(loaded, batch);
        for len in [0, 6, whole.len() / 2, whole.len() - 1] {
            std::fs::write(&p, &whole[..len]).unwrap();
            let err = read_ipc(&p).expect_err("a file cut short").to_string();
            assert!(err.contains("s.arrow"), "{len} bytes: {err}");
        }
    }

    #[test]
    fn stores_finds_loads_and_invalidates() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        store1(&c, entry("d", 30, 10), col());
        let found = c.find("d", "sp").unwrap();
        assert_eq!(found.len(), 1);
        let got = c.load(&found[0]).unwrap().unwrap();
        assert_eq!(got.as_ref(), col().as_ref());
        assert!(c.find("d", "other").unwrap().is_empty());
        assert_eq!(c.invalidate("s").unwrap(), 1);
        assert!(c.find("d", "sp").unwrap().is_empty());
        assert!(!c.entry_path(&found[0].parts[0].file).exists());
    }

    #[test]
    fn eviction_keeps_the_costly_per_byte_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let probe = ReuseCatalog::new(dir.path(), DEFAULT_BUDGET);
        store1(&probe, entry("probe", 1, 1), col());
        let size = probe.entries().unwrap()[0].bytes;
        probe.invalidate("s").unwrap();
        // Room for two entries: the cheap one goes when a third arrives.
        let c = ReuseCatalog::new(dir.path(), size * 2 + size / 2);
        store1(&c, entry("a", 1, 1_000_000), col());
        store1(&c, entry("b", 2, 10), col());
        store1(&c, entry("c", 3, 1_000_000), col());
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
