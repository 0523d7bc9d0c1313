//! Reading sources and tables: Parquet files, folders or globs of Parquet files, CSV files,
//! Delta tables (a source's managed table, or a folder with a `_delta_log`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::DFSchema;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use quiver_core::Source;
use quiver_core::hash::type_class;

use parquet::file::metadata::ParquetMetaData;

use crate::objects;
use crate::table::{Columns, on_cores, spans};
use crate::{Error, Result};

/// A source whose event-time filters the engine applies itself: the pack drops every event
/// no window of its partition's spine rows admits (`sweep::needed_span`), and the scan's
/// time range never cuts into those windows. Declared exact, such a filter still reaches the
/// scan, which prunes row groups and files with it, but no filter operator tests and copies
/// every batch. Other filters are left as the source handles them.
#[derive(Debug)]
pub(crate) struct TimePruned {
    pub inner: Arc<dyn TableProvider>,
    /// The source's time column.
    pub time: String,
}

#[async_trait::async_trait]
impl TableProvider for TimePruned {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        // A file scan takes no filters from `scan`: DataFusion's physical optimizer pushes a
        // filter operator's predicate into it. With no operator left to push from, hand the
        // file source the time filters here, for its row-group and page statistics.
        // (A Delta table's own scan prunes its files with `filters` already.)
        let Some(exec) = plan.downcast_ref::<DataSourceExec>() else {
            return Ok(plan);
        };
        let schema = DFSchema::try_from(plan.schema())?;
        let time = filters
            .iter()
            .filter(|f| self.on_time(f))
            .map(|f| state.create_physical_expr(f.clone(), &schema))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        if time.is_empty() {
            return Ok(plan);
        }
        let pushed = exec
            .data_source()
            .try_pushdown_filters(time, state.config_options())?;
        Ok(match pushed.updated_node {
            Some(source) => Arc::new(DataSourceExec::new(source)),
            None => plan,
        })
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        let inner = self.inner.supports_filters_pushdown(filters)?;
        Ok(filters
            .iter()
            .zip(inner)
            .map(|(f, how)| {
                if self.on_time(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    how
                }
            })
            .collect())
    }
}

impl TimePruned {
    /// Whether a filter reads the time column and nothing else.
    fn on_time(&self, f: &Expr) -> bool {
        let cols = f.column_refs();
        !cols.is_empty() && cols.iter().all(|c| c.name == self.time)
    }
}

/// The file format of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Parquet files.
    Parquet,
    /// CSV files with a header row.
    Csv,
}

impl Format {
    /// By extension: `.csv` (any case) is CSV, everything else Parquet.
    pub fn of(path: &Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
        {
            Some(e) if e == "csv" => Format::Csv,
            _ => Format::Parquet,
        }
    }
}

/// The files a path names: a file, a folder (its Parquet or CSV files, recursively), or a
/// glob. Sorted, so that "source order" (DESIGN §3 ties) is the order of the file names.
pub fn list_files(path: &Path) -> Result<Vec<PathBuf>> {
    let text = path.to_string_lossy();
    let mut files = if let Some(url) = objects::url_of(path) {
        remote_files(&url)?
    } else if text.contains(['*', '?', '[']) {
        glob_files(path)?
    } else if path.is_dir() {
        let mut out = Vec::new();
        walk(path, &mut out).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        out
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(Error::Source(format!(
            "{}: no such file or folder",
            path.display()
        )));
    };
    files.retain(|f| {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with('.') && !name.starts_with('_')
    });
    files.sort();
    if files.is_empty() {
        return Err(Error::Source(format!(
            "{}: no Parquet or CSV files found",
            path.display()
        )));
    }
    let fmt = Format::of(&files[0]);
    if let Some(other) = files.iter().find(|f| Format::of(f) != fmt) {
        return Err(Error::Source(format!(
            "{}: mixes CSV and Parquet files ({} and {})",
            path.display(),
            files[0].display(),
            other.display()
        )));
    }
    Ok(files)
}

/// The files an object URL names: an object, every object under a prefix ("folder"), or the
/// objects under a glob's fixed prefix that match it segment by segment.
fn remote_files(url: &url::Url) -> Result<Vec<PathBuf>> {
    let text = url.as_str();
    let data_file = |p: &Path| {
        matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref(),
            Some("parquet" | "csv" | "pq")
        )
    };
    if let Some(star) = text.find(['*', '?', '[']) {
        let base = &text[..text[..star].rfind('/').map_or(0, |i| i + 1)];
        let base_url = url::Url::parse(base).map_err(|e| Error::Source(format!("{text}: {e}")))?;
        let pattern: Vec<&str> = text[base.len()..].split('/').collect();
        return Ok(objects::list(&base_url)?
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                let rest = p.to_string_lossy();
                let segs: Vec<&str> = rest[base.len().min(rest.len())..].split('/').collect();
                segs.len() == pattern.len()
                    && segs.iter().zip(&pattern).all(|(s, pat)| wildcard(pat, s))
            })
            .collect());
    }
    if !text.ends_with('/')
        && let Some(_) = objects::head(url)?
    {
        return Ok(vec![PathBuf::from(text)]);
    }
    let files: Vec<PathBuf> = objects::list(url)?
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| data_file(p))
        .collect();
    if files.is_empty() {
        return Err(Error::Object {
            url: text.to_string(),
            message: "no such object, and no Parquet or CSV objects under it".into(),
            fault: crate::ObjectFault::Missing,
        });
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref(),
            Some("parquet" | "csv" | "pq")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// A minimal glob: `*` and `?` within the last path component(s), matched segment by segment.
fn glob_files(pattern: &Path) -> Result<Vec<PathBuf>> {
    let mut base = PathBuf::new();
    let mut rest = Vec::new();
    for c in pattern.components() {
        let s = c.as_os_str().to_string_lossy().to_string();
        if rest.is_empty() && !s.contains(['*', '?', '[']) {
            base.push(c);
        } else {
            rest.push(s);
        }
    }
    let mut current = vec![base];
    for (i, seg) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        let mut next = Vec::new();
        for dir in &current {
            let Ok(rd) = std::fs::read_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) else {
                continue;
            };
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if wildcard(seg, &name) && (last || entry.path().is_dir()) {
                    next.push(dir.join(&name));
                }
            }
        }
        current = next;
    }
    Ok(current.into_iter().filter(|p| p.is_file()).collect())
}

fn wildcard(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// A DataFusion table over the files a path names (a Delta table folder reads its latest
/// version); `what` names it in messages.
pub async fn file_table(
    ctx: &SessionContext,
    path: &Path,
    what: &str,
) -> Result<Arc<dyn TableProvider>> {
    if crate::delta::is_delta_table(path) {
        let snap = crate::delta::snapshot(path, None).await?;
        return files_table(ctx, &snap.files, Some(snap.schema), path, what).await;
    }
    let files = list_files(path).map_err(|e| Error::Source(format!("{what}: {e}")))?;
    files_table(ctx, &files, None, path, what).await
}

/// A DataFusion table over a list of files in source order. `schema` is used when there are
/// no files (an empty table version) and otherwise inferred; `path` and `what` name the table
/// in messages.
pub async fn files_table(
    ctx: &SessionContext,
    files: &[PathBuf],
    schema: Option<SchemaRef>,
    path: &Path,
    what: &str,
) -> Result<Arc<dyn TableProvider>> {
    let Some(first) = files.first() else {
        let schema =
            schema.ok_or_else(|| Error::Source(format!("{what}: {}: no files", path.display())))?;
        return Ok(Arc::new(datafusion::datasource::empty::EmptyTable::new(
            schema,
        )));
    };
    let fmt = Format::of(first);
    if fmt == Format::Parquet {
        check_parquet_files(files, schema.as_ref(), what)?;
    }
    let urls = files
        .iter()
        .map(|f| {
            if objects::is_remote(f) {
                return ListingTableUrl::parse(f.to_string_lossy()).map_err(Error::from);
            }
            let abs = std::path::absolute(f).map_err(|source| Error::Io {
                path: f.clone(),
                source,
            })?;
            ListingTableUrl::parse(abs.to_string_lossy()).map_err(Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    let options = match fmt {
        Format::Parquet => ListingOptions::new(Arc::new(
            ParquetFormat::default().with_force_view_types(false),
        ))
        .with_file_extension(""),
        Format::Csv => ListingOptions::new(Arc::new(CsvFormat::default().with_has_header(true)))
            .with_file_extension(""),
    };
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await
        .map_err(|e| {
            Error::Source(format!(
                "{what}: cannot read {}: {}",
                path.display(),
                Error::from(e)
            ))
        })?;
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// Read every Parquet file's footer and check its columns against the table's: a file that
/// is not Parquet, is truncated or has a column of another kind than the same column in the
/// table (`schema`, else the first file) is an error naming the file and the column — before
/// any row is read. DataFusion infers a table's schema from its first file only and would
/// otherwise fail half-way through a scan with a message that names neither.
fn check_parquet_files(files: &[PathBuf], schema: Option<&SchemaRef>, what: &str) -> Result<()> {
    let mut reference = schema.cloned();
    for f in files {
        let file_schema = parquet_schema(f).map_err(|m| {
            Error::Source(format!(
                "{what}: {}: not a readable Parquet file: {m}",
                f.display()
            ))
        })?;
        let Some(table) = &reference else {
            reference = Some(file_schema);
            continue;
        };
        for field in file_schema.fields() {
            let Ok(want) = table.field_with_name(field.name()) else {
                continue;
            };
            let (a, b) = (field.data_type(), want.data_type());
            let same = a == b
                || matches!(
                    (type_class(a), type_class(b)),
                    (Some(x), Some(y)) if x == y
                );
            if !same {
                return Err(Error::Source(format!(
                    "{what}: {}: column `{}` is {a}, but the table's is {b}",
                    f.display(),
                    field.name()
                )));
            }
        }
    }
    Ok(())
}

/// The Arrow schema in a Parquet file's footer, or what is wrong with the file.
fn parquet_schema(path: &Path) -> std::result::Result<SchemaRef, String> {
    use parquet::file::metadata::ParquetMetaDataReader;
    if objects::is_remote(path) {
        let m = parquet_footer(path)?;
        let schema = parquet::arrow::parquet_to_arrow_schema(
            m.file_metadata().schema_descr(),
            m.file_metadata().key_value_metadata(),
        )
        .map_err(|e| e.to_string())?;
        return Ok(Arc::new(schema));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    // The footer is the metadata, its length (4 bytes) and the magic `PAR1`. The async
    // reader DataFusion uses (parquet 59.3, `ParquetMetaDataPushDecoder::try_decode`)
    // subtracts the declared length from the file's without a check and panics when it is
    // larger; the synchronous reader used here checks, and the panic guard below keeps any
    // other decoder bug from taking the process down.
    if len < 12 {
        return Err(format!("{len} bytes is too short for a Parquet file"));
    }
    let parsed = std::panic::catch_unwind(|| {
        ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                parquet::arrow::parquet_to_arrow_schema(
                    m.file_metadata().schema_descr(),
                    m.file_metadata().key_value_metadata(),
                )
                .map_err(|e| e.to_string())
            })
    })
    .map_err(|_| "the Parquet reader failed on its footer (corrupt file)".to_string())??;
    Ok(Arc::new(parsed))
}

/// The size of a file or object.
pub fn file_size(path: &Path) -> Result<u64> {
    match objects::url_of(path) {
        Some(u) => Ok(objects::head(&u)?.map_or(0, |m| m.size)),
        None => std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            }),
    }
}

/// The footer of a Parquet file, local or an object (read with two ranged requests at most:
/// the last 64 KiB, and the rest of the metadata if it is larger), or what is wrong with it.
pub(crate) fn parquet_footer(path: &Path) -> std::result::Result<Arc<ParquetMetaData>, String> {
    use parquet::file::metadata::ParquetMetaDataReader;
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    let Some(url) = objects::url_of(path) else {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        return ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .map(Arc::new)
            .map_err(|e| e.to_string());
    };
    let meta = objects::head(&url)
        .map_err(|e| e.to_string())?
        .ok_or("object not found")?;
    let len = meta.size;
    if len < 12 {
        return Err(format!("{len} bytes is too short for a Parquet file"));
    }
    // An object's footer is read once per version of the object: a join checks the schemas
    // and estimates its scan from the same footers, and every read is a round trip.
    type Footers = HashMap<(String, u64, Option<String>), Arc<ParquetMetaData>>;
    static FOOTERS: LazyLock<Mutex<Footers>> = LazyLock::new(Default::default);
    let id = (url.to_string(), len, meta.e_tag.clone());
    if let Some(m) = FOOTERS.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return Ok(m.clone());
    }
    // Most footers fit the last 16 KiB; a larger one costs a second request.
    let tail_len = len.min(16 << 10);
    let tail = objects::get_range(&url, len - tail_len..len).map_err(|e| e.to_string())?;
    let footer: [u8; 8] = tail[tail.len() - 8..].try_into().expect("8 bytes");
    let meta_len = parquet::file::metadata::FooterTail::try_new(&footer)
        .map_err(|e| e.to_string())?
        .metadata_length() as u64;
    if meta_len + 8 > len {
        return Err(format!(
            "its footer declares {meta_len} bytes of metadata in a {len}-byte file"
        ));
    }
    let bytes = if meta_len + 8 <= tail_len {
        tail.slice((tail_len - 8 - meta_len) as usize..(tail_len - 8) as usize)
    } else {
        objects::get_range(&url, len - 8 - meta_len..len - 8).map_err(|e| e.to_string())?
    };
    let m = std::panic::catch_unwind(|| ParquetMetaDataReader::decode_metadata(&bytes))
        .map_err(|_| "the Parquet reader failed on its footer (corrupt file)".to_string())?
        .map(Arc::new)
        .map_err(|e| e.to_string())?;
    let mut cache = FOOTERS.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 4096 {
        cache.clear();
    }
    cache.insert(id, m.clone());
    Ok(m)
}

/// What identifies the files under a path without reading them: each file's absolute path,
/// size and modification time, hashed. Equal fingerprints, equal rows (short of a rewrite
/// that keeps size and mtime); it names the version of a source Quiver does not manage.
pub fn fingerprint(path: &Path) -> Result<(String, Vec<PathBuf>)> {
    let files = list_files(path)?;
    let mut h = String::new();
    if let Some(url) = objects::url_of(path) {
        // An object's identity is its URL, size and entity tag (or modification time).
        for f in &files {
            let u = objects::url_of(f).expect("listed under an object URL");
            let m = objects::head(&u)?.ok_or_else(|| Error::Object {
                url: u.to_string(),
                message: "object not found".into(),
                fault: crate::ObjectFault::Missing,
            })?;
            let tag = m.e_tag.unwrap_or_else(|| m.last_modified.to_rfc3339());
            h.push_str(&format!("{}|{}|{tag}\n", f.display(), m.size));
        }
        let id = quiver_core::hash::hash_bytes(h.as_bytes());
        return Ok((format!("{url}#{id}"), files));
    }
    for f in &files {
        let m = std::fs::metadata(f).map_err(|source| Error::Io {
            path: f.clone(),
            source,
        })?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
        h.push_str(&format!("{}|{}|{mtime}\n", abs.display(), m.len()));
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok((
        format!(
            "{}#{}",
            abs.display(),
            quiver_core::hash::hash_bytes(h.as_bytes())
        ),
        files,
    ))
}

/// Where a source's rows are: its `path`, or the table Quiver manages for it in the offline
/// store (`OFFLINE_STORE/sources/NAME`, a Delta table).
pub fn source_location(offline_store: &Path, source: &Source) -> PathBuf {
    match &source.path {
        Some(p) => p.clone(),
        None => managed_source_path(offline_store, &source.name),
    }
}

/// The managed table of a source.
pub fn managed_source_path(offline_store: &Path, name: &str) -> PathBuf {
    offline_store.join("sources").join(name)
}

/// The provider of a source defined in `quiver.yaml`, at its latest version.
pub async fn source_table(
    ctx: &SessionContext,
    offline_store: &Path,
    source: &Source,
) -> Result<Arc<dyn TableProvider>> {
    let path = source_location(offline_store, source);
    if source.path.is_none() && !crate::delta::is_delta_table(&path) {
        return Err(Error::Source(format!(
            "source `{}` has no `path` and its managed table is empty; add data with `quiver ingest {} FILE…`",
            source.name, source.name
        )));
    }
    file_table(ctx, &path, &format!("source `{}`", source.name)).await
}

/// Read a whole table (spine) in file order.
pub async fn read_table(
    ctx: &SessionContext,
    path: &Path,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let table = file_table(ctx, path, "spine").await?;
    collect_table(ctx, table, path).await
}

/// Read every row of a provider, in file order.
pub async fn collect_table(
    ctx: &SessionContext,
    table: Arc<dyn TableProvider>,
    path: &Path,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = table.schema();
    let df = ctx.read_table(table)?;
    // Partitions are contiguous slices of the files in order; keep that order.
    let parts = df.collect_partitioned().await.map_err(|e| {
        Error::Spine(format!(
            "cannot read {}: {}",
            path.display(),
            Error::from(e)
        ))
    })?;
    Ok((schema, parts.into_iter().flatten().collect()))
}

/// Write a table as Parquet or CSV (by extension) through a temporary file in the same
/// folder, renamed into place only when complete, so a failed join never replaces the output.
pub fn write_table<C: Columns + ?Sized>(path: &Path, data: &C) -> Result<()> {
    write_table_as(path, data, true)
}

/// [`write_table`] that never replaces a file: if `path` exists when the table is complete
/// (or appeared while it was written), nothing is written and the error says so.
pub fn write_new_table<C: Columns + ?Sized>(path: &Path, data: &C) -> Result<()> {
    write_table_as(path, data, false)
}

fn write_table_as<C: Columns + ?Sized>(path: &Path, data: &C, replace: bool) -> Result<()> {
    if let Some(url) = objects::url_of(path) {
        // Written whole to a local file first, then uploaded: the object appears complete
        // when the upload finishes, or not at all.
        if !replace && objects::head(&url)?.is_some() {
            return Err(Error::Object {
                url: url.to_string(),
                message: "already exists".into(),
                fault: crate::ObjectFault::Failed,
            });
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let local = dir.path().join(name);
        write_table_as(&local, data, true)?;
        return objects::upload(&local, &url);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(io)?;
        match Format::of(path) {
            Format::Parquet => write_parquet(file, data).map_err(|e| match e {
                WriteError::Data(e) => e,
                WriteError::Parquet(e) => Error::Source(format!("{}: {e}", path.display())),
            })?,
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file);
                for (off, len) in spans(data.num_rows(), SLICE) {
                    w.write(&data.slice_batch(off, len)?)?;
                }
            }
        }
        if replace {
            return std::fs::rename(&tmp, path).map_err(io);
        }
        // A link fails when the name is taken, where a rename would replace the file.
        std::fs::hard_link(&tmp, path).map_err(io)?;
        std::fs::remove_file(&tmp).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rows a writer takes from each column at a time: small enough for the slice to stay in
/// cache while it is encoded, large enough that per-call overheads vanish.
const SLICE: usize = 1 << 14;

/// Rows per Parquet row group, as Polars writes them: a row group's encoded pages are held
/// until it is complete, and smaller groups reuse that memory instead of touching more.
const ROW_GROUP: usize = 1 << 18;

enum WriteError {
    /// Gathering the rows failed.
    Data(Error),
    Parquet(parquet::errors::ParquetError),
}

impl From<parquet::errors::ParquetError> for WriteError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        WriteError::Parquet(e)
    }
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Data(e)
    }
}

/// The schema a table is written to Parquet with: timestamps in seconds become milliseconds
/// (same instants). Parquet has no seconds unit, so the writer would store them as plain
/// INT64 and readers other than arrow-rs (pyarrow, DuckDB) would see integers, not times
/// (issue 18.8: a CSV spine with whole-second times is inferred as seconds).
fn parquet_schema_of(schema: &SchemaRef) -> SchemaRef {
    use arrow::datatypes::{DataType, TimeUnit};
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(TimeUnit::Second, _)))
    {
        return schema.clone();
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(TimeUnit::Second, tz) => Arc::new(
                f.as_ref()
                    .clone()
                    .with_data_type(DataType::Timestamp(TimeUnit::Millisecond, tz.clone())),
            ),
            _ => f.clone(),
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// Parquet with the columns of each row group encoded in parallel, one thread per core: a
/// training set is wide (a column per feature) and encoding is most of the time it takes to
/// write. Each thread takes its columns a slice at a time, so a result whose features are
/// still in the sweep's pieces ([`crate::table::TrainingSet`]) is reordered into a small buffer
/// that is reused rather than into whole new columns.
fn write_parquet<C: Columns + ?Sized>(
    file: std::fs::File,
    data: &C,
) -> std::result::Result<(), WriteError> {
    use parquet::arrow::ArrowSchemaConverter;
    use parquet::arrow::arrow_writer::{
        ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
    };
    use parquet::file::writer::SerializedFileWriter;

    let schema = parquet_schema_of(&data.schema());
    let mut props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        // One mini-batch per slice handed over: at the default of 1024 values, the per-batch
        // bookkeeping (levels, statistics, page-size checks) was a tenth of the writer's time.
        .set_write_batch_size(SLICE);
    // Feature values are mostly distinct floats: dictionaries and compression cost time and
    // save little. Times are mostly distinct too: the writer would hash every value until the
    // dictionary overflows, only to fall back to plain pages. (Counts and keys repeat, and
    // keep theirs.)
    for f in schema.fields() {
        let (ty, col) = (
            f.data_type(),
            parquet::schema::types::ColumnPath::from(f.name().as_str()),
        );
        if ty.is_temporal() || ty.is_floating() {
            props = props.set_column_dictionary_enabled(col.clone(), false);
        }
        if ty.is_floating() {
            props = props
                .set_column_compression(col.clone(), parquet::basic::Compression::UNCOMPRESSED)
                .set_column_statistics_enabled(
                    col,
                    parquet::file::properties::EnabledStatistics::Chunk,
                );
        }
    }
    let mut props = props.build();
    // Keep the Arrow schema (time zones, exact types) so the spine columns read back unchanged.
    parquet::arrow::add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let props = Arc::new(props);
    let parquet_schema = ArrowSchemaConverter::new()
        .with_coerce_types(props.coerce_types())
        .convert(&schema)?;
    let mut writer = SerializedFileWriter::new(
        std::io::BufWriter::new(file),
        parquet_schema.root_schema_ptr(),
        props.clone(),
    )?;
    let factory = ArrowRowGroupWriterFactory::new(&writer, schema.clone());
    // Leaf columns per field (a struct has several), from an empty array of its type.
    let leaves_per_field = schema
        .fields()
        .iter()
        .map(|f| Ok(compute_leaves(f, &arrow::array::new_empty_array(f.data_type()))?.len()))
        .collect::<std::result::Result<Vec<_>, WriteError>>()?;
    // A row group's encoded chunks go to the file on a thread of their own, so the encoders
    // go on with the next row group instead of waiting for the copy into the file.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ArrowColumnChunk>>(1);
        let appender = scope.spawn(move || -> std::result::Result<(), WriteError> {
            for chunks in rx {
                let mut rgw = writer.next_row_group()?;
                for chunk in chunks {
                    chunk.append_to_row_group(&mut rgw)?;
                }
                rgw.close()?;
            }
            writer.close()?;
            Ok(())
        });
        let encoded = (|| {
            for (rg, (off, len)) in spans(data.num_rows(), ROW_GROUP).enumerate() {
                let mut writers = factory.create_column_writers(rg)?.into_iter();
                let fields: Vec<(usize, Vec<_>)> = leaves_per_field
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| (i, writers.by_ref().take(k).collect()))
                    .collect();
                let encode = |(i, mut ws): (usize, Vec<ArrowColumnWriter>)| {
                    let field = schema.field(i);
                    for (at, n) in spans(len, SLICE) {
                        let mut arr = data.column_slice(i, off + at, n)?;
                        if arr.data_type() != field.data_type() {
                            arr = arrow::compute::cast(&arr, field.data_type())
                                .map_err(|e| WriteError::Data(e.into()))?;
                        }
                        for (w, l) in ws.iter_mut().zip(compute_leaves(field, &arr)?) {
                            w.write(&l)?;
                        }
                    }
                    ws.into_iter()
                        .map(|w| Ok(w.close()?))
                        .collect::<std::result::Result<Vec<ArrowColumnChunk>, WriteError>>()
                };
                let chunks = on_cores(fields, encode, || {
                    WriteError::Parquet(parquet::errors::ParquetError::General(
                        "a column encoder panicked".into(),
                    ))
                })?;
                if tx.send(chunks.into_iter().flatten().collect()).is_err() {
                    break; // the appender failed; its error is returned below
                }
            }
            Ok(())
        })();
        drop(tx);
        let appended = appender.join().unwrap_or_else(|_| {
            Err(WriteError::Parquet(parquet::errors::ParquetError::General(
                "the row group writer panicked".into(),
            )))
        });
        encoded.and(appended)
    })
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards() {
        assert!(wildcard("*.parquet", "a.parquet"));
        assert!(wildcard("part-?.csv", "part-1.csv"));
        assert!(!wildcard("*.parquet", "a.csv"));
    }
}
