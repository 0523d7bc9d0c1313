//! Managed tables: Delta Lake tables (DESIGN §5) through the `deltalake` crate.
//!
//! A managed table is a Delta table folder; every ingest or overwrite is one Delta commit, so a
//! version is (table, Delta version) and time travel reads the files of an earlier snapshot.
//! Readers do not use Delta's own scan: they take the snapshot's file list and read it through
//! the same Parquet path as any other source ([`crate::source::files_table`]), so pruning, the
//! point-in-time operator and source order are the same whatever stores the rows. Source order
//! across files is commit order (file modification time, then path), stable for a version.
//!
//! Writes check the incoming schema against the table's first: a missing, extra or retyped
//! column is refused naming it, before any file is written. Concurrent writers are left to
//! Delta's optimistic commit protocol (appends do not conflict and are retried onto the next
//! version); creating a table that another writer created first is retried as an append.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::errors::DeltaTableError;
use deltalake::protocol::SaveMode;
use quiver_core::hash::type_class;

use crate::objects;
use crate::{Error, Result};

/// Whether a folder (or object prefix) is a Delta table.
pub fn is_delta_table(path: &Path) -> bool {
    match objects::url_of(&path.join("_delta_log")) {
        Some(log) => objects::list(&log).is_ok_and(|l| !l.is_empty()),
        None => path.join("_delta_log").is_dir(),
    }
}

fn url(path: &Path) -> Result<url::Url> {
    if let Some(u) = objects::url_of(path) {
        register_object_stores();
        // A table is a folder: its URL ends with `/`, so the log is found under it.
        let text = u.as_str().trim_end_matches('/');
        return url::Url::parse(&format!("{text}/"))
            .map_err(|e| Error::Source(format!("{}: {e}", path.display())));
    }
    let abs = std::path::absolute(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| Error::Source(format!("{}: not a usable table path", path.display())))
}

/// Teach deltalake to reach `s3://` tables through Quiver's stores (`objects`), and to
/// commit there with Delta's default log store: each commit is a conditional put (create
/// only), which S3 and compatible stores honour, so no lock table is needed.
fn register_object_stores() {
    use deltalake::logstore::{
        LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig,
    };
    struct Stores;
    impl ObjectStoreFactory for Stores {
        fn parse_url_opts(
            &self,
            url: &url::Url,
            _: &StorageConfig,
        ) -> deltalake::DeltaResult<(ObjectStoreRef, object_store::path::Path)> {
            let err = |e: Error| DeltaTableError::Generic(e.to_string());
            Ok((
                objects::store(url).map_err(err)?,
                objects::key(url).map_err(err)?,
            ))
        }
    }
    struct Logs;
    impl LogStoreFactory for Logs {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &url::Url,
            options: &StorageConfig,
        ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
            Ok(deltalake::logstore::default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let u = url::Url::parse(scheme).expect("a scheme URL");
            deltalake::logstore::object_store_factories().insert(u.clone(), Arc::new(Stores));
            deltalake::logstore::logstore_factories().insert(u, Arc::new(Logs));
        }
    });
}

fn delta_err(path: &Path, e: DeltaTableError) -> Error {
    // Kernel errors carry a backtrace in their text; the first lines say what went wrong.
    let text = e.to_string();
    let text = text.split("\n   0: ").next().unwrap_or(&text).trim_end();
    Error::Source(format!("table {}: {text}", path.display()))
}

/// The type Delta stores for an Arrow type, of the same logical class (so content hashes
/// do not change): timestamps in µs (UTC, or naive), unsigned integers widened, string and
/// binary views and large types as plain ones, dictionaries decoded.
fn delta_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Timestamp(_, Some(_)) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Date64 => DataType::Date32,
        DataType::Float16 => DataType::Float32,
        DataType::Dictionary(_, v) => delta_type(v),
        other => other.clone(),
    }
}

/// A batch with every column in the type Delta stores (`delta_type`); a value that does
/// not fit (an unsigned integer above Int64) is an error naming the column.
pub fn to_delta_types(batch: &RecordBatch, what: &str) -> Result<RecordBatch> {
    let schema = batch.schema();
    if schema
        .fields()
        .iter()
        .all(|f| delta_type(f.data_type()) == *f.data_type())
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        let to = delta_type(f.data_type());
        cols.push(if to == *f.data_type() {
            c.clone()
        } else {
            cast_with_options(c, &to, &strict)
                .map_err(|e| Error::Source(format!("{what}: column `{}`: {e}", f.name())))?
        });
        fields.push(f.as_ref().clone().with_data_type(to));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        cols,
    )?)
}

/// One version of a table: its number and its data files in source order.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The Delta version (from 0).
    pub version: u64,
    /// The version's data files, in source order (oldest first).
    pub files: Vec<PathBuf>,
    /// The table's Arrow schema at this version.
    pub schema: SchemaRef,
    /// Commit time of this version, microseconds.
    pub committed_micros: Option<i64>,
}

async fn open(path: &Path, version: Option<u64>) -> Result<DeltaTable> {
    if !is_delta_table(path) {
        return Err(Error::Source(format!(
            "{}: no Delta table here (no _delta_log folder)",
            path.display()
        )));
    }
    let u = url(path)?;
    let t = match version {
        None => deltalake::open_table(u).await,
        Some(v) => deltalake::open_table_with_version(u, v).await,
    };
    t.map_err(|e| delta_err(path, e))
}

/// The latest version of a table, or `None` when there is no table yet.
pub async fn latest_version(path: &Path) -> Result<Option<u64>> {
    if !is_delta_table(path) {
        return Ok(None);
    }
    Ok(Some(snapshot(path, None).await?.version))
}

/// The files and schema of a version (`None` = latest).
pub async fn snapshot(path: &Path, version: Option<u64>) -> Result<Snapshot> {
    let table = open(path, version).await?;
    let state = table.snapshot().map_err(|e| delta_err(path, e))?;
    let v = state.version();
    let mut files: Vec<(i64, String)> = state
        .log_data()
        .iter()
        .map(|f| (f.modification_time(), f.path().into_owned()))
        .collect();
    files.sort();
    Ok(Snapshot {
        version: v,
        files: files.into_iter().map(|(_, p)| path.join(p)).collect(),
        schema: state.snapshot().arrow_schema(),
        committed_micros: state.version_timestamp(v).map(|ms| ms * 1000),
    })
}

/// Check `input` against a table's schema and cast it to the table's types: every table
/// column must be present with the same logical class, and no other column may come.
pub fn conform(table: &Schema, batch: &RecordBatch, what: &str) -> Result<RecordBatch> {
    let input = batch.schema();
    for f in input.fields() {
        if table.field_with_name(f.name()).is_err() {
            return Err(Error::Source(format!(
                "{what}: column `{}` is not in the table (columns: {})",
                f.name(),
                names(table)
            )));
        }
    }
    let mut cols = Vec::with_capacity(table.fields().len());
    for f in table.fields() {
        let Ok(i) = input.index_of(f.name()) else {
            return Err(Error::Source(format!(
                "{what}: column `{}` ({}) is missing",
                f.name(),
                f.data_type()
            )));
        };
        let got = input.field(i).data_type();
        if type_class(got) != type_class(f.data_type()) {
            return Err(Error::Source(format!(
                "{what}: column `{}` is {got}, the table has {}",
                f.name(),
                f.data_type()
            )));
        }
        cols.push(if got == f.data_type() {
            batch.column(i).clone()
        } else {
            cast(batch.column(i), f.data_type())?
        });
    }
    Ok(RecordBatch::try_new(Arc::new(table.clone()), cols)?)
}

fn names(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a write changes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add the rows (a source ingest).
    Append,
    /// Replace every row (a new version of a dataset).
    Overwrite,
}

/// The key of the commit metadata that records what made a version (the operation the
/// registry records, as JSON): a process killed between its commit and its registry write
/// leaves the commit, and whoever records the version next reads what made it from here.
pub const NOTE_KEY: &str = "quiver.operation";

/// What made version `version` of a table, as [`write`](fn@write) noted it in the commit, if it did.
pub async fn commit_note(path: &Path, version: u64) -> Result<Option<serde_json::Value>> {
    use futures::StreamExt;
    let table = open(path, Some(version)).await?;
    let mut history = table.history(Some(1));
    while let Some(info) = history.next().await {
        let info = info.map_err(|e| delta_err(path, e))?;
        if let Some(v) = info.info.get(NOTE_KEY) {
            return Ok(Some(v.clone()));
        }
    }
    Ok(None)
}

/// The lock every writer of a managed table holds from before its first file until after
/// its commit (`_quiver_writer.lock` in the table's folder; released when the handle
/// drops, or when the process dies). Under it no other writer has files in flight, so files
/// no commit references are leftovers of a writer that died ([`remove_orphans`]).
///
/// Object storage has no such lock: there each commit is a conditional put, so concurrent
/// writers still cannot both commit a version, and a dead writer's files stay unreferenced.
async fn writer_lock(path: &Path) -> Result<Option<std::fs::File>> {
    if objects::is_remote(path) {
        return Ok(None);
    }
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(io)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join("_quiver_writer.lock"))
        .map_err(io)?;
    tokio::task::spawn_blocking(move || f.lock().map(|_| Some(f)))
        .await
        .map_err(|e| Error::Internal(format!("table lock: {e}")))?
        .map_err(io)
}

/// Remove the data files of writers that died before committing: files in the table's
/// folder that no commit of the log references — object_store's unfinished uploads
/// (`…parquet#N`) always, finished files only when they are newer than the oldest commit
/// the log still holds (an older one may be referenced by a commit the log no longer
/// lists). Call only under `writer_lock`. Returns the files removed.
pub fn remove_orphans(path: &Path) -> Result<Vec<PathBuf>> {
    if objects::is_remote(path) {
        return Ok(vec![]);
    }
    let log = path.join("_delta_log");
    let Ok(entries) = std::fs::read_dir(&log) else {
        return Ok(vec![]);
    };
    let mut referenced = std::collections::HashSet::new();
    let mut oldest_commit: Option<std::time::SystemTime> = None;
    let mut newest_checkpoint: Option<std::time::SystemTime> = None;
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") && name.len() == 25 {
            let text = std::fs::read_to_string(&p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                for kind in ["add", "remove"] {
                    if let Some(f) = v
                        .get(kind)
                        .and_then(|a| a.get("path"))
                        .and_then(|p| p.as_str())
                    {
                        referenced.insert(decode(f));
                    }
                }
            }
            if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                oldest_commit = Some(oldest_commit.map_or(m, |o| o.min(m)));
            }
        } else if name.contains(".checkpoint") {
            // A checkpoint lists the files of the versions it sums up; rather than read it,
            // judge only files newer than the newest checkpoint.
            if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest_checkpoint = Some(newest_checkpoint.map_or(m, |o| o.max(m)));
            }
        }
    }
    let floor = match (oldest_commit, newest_checkpoint) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let mut removed = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(path)
                .map(|r| r.to_string_lossy().to_string())
                .unwrap_or_default();
            if referenced.contains(&rel) {
                continue;
            }
            let unfinished = name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let after_log = match (meta.modified(), floor) {
                (Ok(m), Some(o)) => m >= o,
                _ => false,
            };
            if (unfinished || after_log) && std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    Ok(removed)
}

/// A path of the Delta log, percent-decoded.
fn decode(p: &str) -> String {
    percent_encoding::percent_decode_str(p)
        .decode_utf8_lossy()
        .into_owned()
}

/// Write batches as one commit (creating the table on first write) and return the new
/// Delta version. For an append to an existing table the batches are first checked against
/// its schema ([`conform`]); `what` names the input in messages; `note` (what made the
/// version) is kept in the commit ([`commit_note`]). Writers of a table take turns
/// (`writer_lock`), and each first removes what a writer that died left behind.
pub async fn write(
    path: &Path,
    batches: Vec<RecordBatch>,
    mode: Mode,
    what: &str,
    note: Option<serde_json::Value>,
) -> Result<u64> {
    let batches = batches
        .iter()
        .map(|b| to_delta_types(b, what))
        .collect::<Result<Vec<_>>>()?;
    let _turn = writer_lock(path).await?;
    remove_orphans(path)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let existing = if is_delta_table(path) {
            Some(snapshot(path, None).await?)
        } else {
            None
        };
        let batches = match (&existing, mode) {
            (Some(s), Mode::Append) => batches
                .iter()
                .map(|b| conform(&s.schema, b, what))
                .collect::<Result<Vec<_>>>()?,
            _ => batches.clone(),
        };
        if !objects::is_remote(path) {
            std::fs::create_dir_all(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let table = DeltaTable::try_from_url(url(path)?)
            .await
            .map_err(|e| delta_err(path, e))?;
        let save = match mode {
            Mode::Append => SaveMode::Append,
            Mode::Overwrite => SaveMode::Overwrite,
        };
        let mut builder = table.write(batches).with_save_mode(save);
        if let Some(n) = &note {
            builder = builder.with_commit_properties(
                deltalake::kernel::transaction::CommitProperties::default()
                    .with_metadata([(NOTE_KEY.to_string(), n.clone())]),
            );
        }
        if mode == Mode::Overwrite {
            builder = builder.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
        }
        match builder.await {
            Ok(t) => return Ok(t.version().unwrap_or(0)),
            // Another writer committed first (e.g. both created the table): try again on top.
            Err(
                e
                @ (DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::Transaction { .. }),
            ) if attempts < 5 => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(delta_err(path, e)),
        }
    }
}

/// Rewrite a table's rows as one overwrite commit (layout selection): `rows` in their new
/// order, with `cuts` the row offsets where a row group must end (bucket boundaries); row
/// groups also end every `row_group_rows` rows, and files hold about `file_rows` rows, ending
/// on a cut. Files are written first and committed together, replacing every current file,
/// so a crash before the commit leaves the table as it was (the stray files are never
/// referenced). Returns the new Delta version.
pub async fn rewrite(
    path: &Path,
    rows: RecordBatch,
    cuts: &[usize],
    row_group_rows: usize,
    file_rows: usize,
    what: &str,
) -> Result<u64> {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::kernel::{Action, Add, Remove};
    use deltalake::protocol::DeltaOperation;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    let batch = to_delta_types(&rows, what)?;
    let _turn = writer_lock(path).await?;
    remove_orphans(path)?;
    let table = open(path, None).await?;
    let state = table.snapshot().map_err(|e| delta_err(path, e))?.clone();
    let n = batch.num_rows();
    let now_ms = quiver_core::time::now_micros() / 1000;
    let tag = blake3::hash(format!("{}{now_ms}{n}", path.display()).as_bytes()).to_hex();
    let tag = &tag[..16];
    // Boundaries: every cut, plus a row-group boundary every `row_group_rows`.
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < n).collect();
    cuts.push(n);
    cuts.sort_unstable();
    cuts.dedup();
    let step = row_group_rows.max(1);
    let mut actions = Vec::new();
    let (mut start, mut file_no) = (0usize, 0usize);
    while start < n {
        // this file: whole buckets up to about `file_rows` rows
        let end = cuts
            .iter()
            .copied()
            .filter(|&c| c > start)
            .take_while(|&c| c - start <= file_rows.max(1))
            .last()
            .unwrap_or_else(|| cuts.iter().copied().find(|&c| c > start).unwrap_or(n));
        let name = format!("part-{file_no:05}-{tag}.snappy.parquet");
        // An object is written locally first and uploaded whole.
        let staging = match objects::is_remote(path) {
            true => Some(tempfile::tempdir().map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?),
            false => None,
        };
        let file = match &staging {
            Some(d) => d.path().join(&name),
            None => path.join(&name),
        };
        let bad =
            |e: parquet::errors::ParquetError| Error::Source(format!("{}: {e}", file.display()));
        {
            let f = std::fs::File::create(&file).map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            let props = WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .set_max_row_group_row_count(Some(step))
                .build();
            let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props)).map_err(bad)?;
            let mut at = start;
            for &c in cuts.iter().filter(|&&c| c > start && c <= end) {
                while at < c {
                    let len = step.min(c - at);
                    w.write(&batch.slice(at, len)).map_err(bad)?;
                    w.flush().map_err(bad)?;
                    at += len;
                }
            }
            w.close().map_err(bad)?;
        }
        let size = std::fs::metadata(&file)
            .map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?
            .len() as i64;
        if let Some(u) = objects::url_of(&path.join(&name)) {
            objects::upload(&file, &u)?;
        }
        actions.push(Action::Add(Add {
            path: name,
            partition_values: Default::default(),
            size,
            modification_time: now_ms,
            data_change: true,
            stats: Some(format!("{{\"numRecords\":{}}}", end - start)),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        }));
        start = end;
        file_no += 1;
    }
    for f in state.log_data().iter() {
        actions.push(Action::Remove(Remove {
            path: f.path().into_owned(),
            data_change: true,
            deletion_timestamp: Some(now_ms),
            extended_file_metadata: Some(true),
            partition_values: Some(Default::default()),
            size: Some(f.size()),
            ..Default::default()
        }));
    }
    let op = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: None,
        predicate: None,
    };
    let done = CommitBuilder::default()
        .with_actions(actions)
        .build(Some(&state), table.log_store(), op)
        .await
        .map_err(|e| delta_err(path, e))?;
    Ok(done.version() as u64)
}
