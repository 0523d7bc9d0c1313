//! Versioned datasets (DESIGN §5, §7): the offline store's Delta tables composed with the
//! registry's records.
//!
//! - Managed sources live in `OFFLINE_STORE/sources/NAME`, datasets (spines, training sets and
//!   what is derived from them) in `OFFLINE_STORE/datasets/NAME`; both are Delta tables whose
//!   version N is Delta version N−1. The Delta log is the authority on which versions exist;
//!   the registry adds each version's content hash and how it was made, and [`Catalog::sync`]
//!   records any version a crashed writer committed but did not record.
//! - Sources read by `path` are versioned by content: a new version is recorded when the rows
//!   change (a file fingerprint avoids re-hashing unchanged files). Their old contents are not
//!   kept, so only their current version can be read.
//! - A registered training set records the spine version, every source version, every feature
//!   definition version and the Quiver version ([`quiver_registry::JoinRecord`]);
//!   [`Catalog::rebuild`] recomputes any dataset version from that lineage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use quiver_core::hash::{ContentHash, HashState, TableHasher, canonical_schema};
use quiver_core::{FeatureRef, Repo};
use quiver_offline::delta::{self, Mode};
use quiver_offline::reuse::ReuseCatalog;
use quiver_offline::{Engine, EngineOptions, JoinRequest, SourceVersion, source};
use quiver_registry::{
    DatasetKind, DatasetVersion, FeatureUse, JoinRecord, Operation, Registry, Storage, VersionRef,
    ViewDefinition, ViewVersion,
};

use crate::{Error, Result};

/// The Quiver version recorded in lineage.
pub const QUIVER_VERSION: &str = env!("CARGO_PKG_VERSION");

use quiver_core::time::now_micros as now;

/// Which version of each source a join reads.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// `source → version`; sources not named read their latest version (or the one current at
    /// `as_of`).
    pub versions: HashMap<String, u64>,
    /// Time travel: the latest version of each source made at or before this instant.
    pub as_of: Option<i64>,
}

/// A table version's rows.
#[derive(Debug, Clone)]
pub struct Rows {
    /// The rows' schema.
    pub schema: SchemaRef,
    /// The rows, in batches.
    pub batches: Vec<RecordBatch>,
}

impl Rows {
    /// The rows as one batch.
    pub fn concat(&self) -> Result<RecordBatch> {
        Ok(concat_batches(&self.schema, &self.batches).map_err(quiver_offline::Error::from)?)
    }

    /// How many rows there are.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// The hash (and its state) of a table's rows.
pub fn hash_table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(ContentHash, HashState)> {
    let mut h = TableHasher::new(schema).map_err(quiver_offline::Error::from)?;
    for b in batches {
        h.update(b).map_err(quiver_offline::Error::from)?;
    }
    Ok((h.finish(), h.state()))
}

/// What changed between two dataset versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// One line per column removed (`-`), added (`+`) or retyped (`~`).
    pub schema_changes: Vec<String>,
    /// Rows only in the second version (rows compared as multisets).
    pub added: u64,
    /// Rows only in the first version (rows compared as multisets).
    pub removed: u64,
}

/// The result of [`Catalog::reproduce`].
#[derive(Debug)]
pub struct Reproduction {
    /// The dataset version as recorded.
    pub target: DatasetVersion,
    /// The content hash of the rebuilt rows.
    pub rebuilt: ContentHash,
    /// `None` when identical; else where the rebuilt rows first differ from the stored ones.
    pub difference: Option<String>,
}

/// The registry and the offline store of one repository.
pub struct Catalog {
    /// The repository: its definitions and where its stores live.
    pub repo: Repo,
    /// The repository's registry of versions and lineage.
    pub registry: Registry,
    opts: EngineOptions,
}

impl Catalog {
    /// Open the registry of `repo`; joins and reads run with `opts`.
    pub fn open(repo: Repo, opts: EngineOptions) -> Result<Catalog> {
        quiver_offline::objects::configure(&repo.storage);
        let registry = Registry::open(&repo.registry)?;
        Ok(Catalog {
            repo,
            registry,
            opts,
        })
    }

    fn ctx(&self) -> Result<datafusion::prelude::SessionContext> {
        Ok(quiver_offline::session(&self.opts)?)
    }

    /// The Delta table folder of dataset `name` in the offline store.
    pub fn dataset_path(&self, name: &str) -> PathBuf {
        self.repo.offline_store.join("datasets").join(name)
    }

    fn check_name(name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !name.starts_with('.');
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "dataset name {name:?}: use letters, digits, `_`, `-` and `.`"
            )))
        }
    }

    // ---- reading versions

    /// The rows of a Delta table version.
    async fn read_delta(&self, table: &Path, version: u64) -> Result<Rows> {
        let snap = delta::snapshot(table, Some(version)).await?;
        let ctx = self.ctx()?;
        let provider =
            source::files_table(&ctx, &snap.files, Some(snap.schema.clone()), table, "table")
                .await?;
        let (schema, batches) = source::collect_table(&ctx, provider, table).await?;
        Ok(Rows { schema, batches })
    }

    /// The rows of a recorded dataset version.
    pub async fn read(&self, v: &DatasetVersion) -> Result<Rows> {
        match &v.storage {
            Storage::Delta { table, version } => {
                self.read_delta(Path::new(table), *version as u64).await
            }
            Storage::File { path } => {
                let ctx = self.ctx()?;
                let provider = source::file_table(&ctx, Path::new(path), "dataset").await?;
                let (schema, batches) =
                    source::collect_table(&ctx, provider, Path::new(path)).await?;
                let (hash, _) = hash_table(&schema, &batches)?;
                if hash != v.hash {
                    return Err(Error::Invalid(format!(
                        "{}: the files at {path} changed since this version was recorded, and files referenced by path keep only their current content; ingest them into a managed table to keep every version",
                        v.reference()
                    )));
                }
                Ok(Rows { schema, batches })
            }
        }
    }

    /// A provider for a source version, for the join engine.
    /// A provider over a recorded source version, with the version's identity when the rows
    /// can be named by it (Delta versions; reuse keys on it).
    async fn source_provider(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        v: &DatasetVersion,
    ) -> Result<(Arc<dyn TableProvider>, Option<SourceVersion>)> {
        match &v.storage {
            Storage::Delta { table, version } => {
                let snap = delta::snapshot(Path::new(table), Some(*version as u64)).await?;
                let provider = source::files_table(
                    ctx,
                    &snap.files,
                    Some(snap.schema),
                    Path::new(table),
                    &format!("source `{}`", v.name),
                )
                .await?;
                let id = SourceVersion::delta(Path::new(table), snap.version, snap.files);
                Ok((provider, Some(id)))
            }
            Storage::File { .. } => {
                // Only the current content can be read; check it is still this version.
                let t = self.read(v).await?;
                Ok((
                    Arc::new(
                        datafusion::datasource::MemTable::try_new(t.schema, vec![t.batches])
                            .map_err(quiver_offline::Error::from)?,
                    ),
                    None,
                ))
            }
        }
    }

    // ---- recording versions

    /// Record every committed version of a managed Delta table that the registry lacks (a
    /// writer that crashed after its commit), extending the previous version's hash when the
    /// commit only added files.
    pub async fn sync(&self, name: &str, table: &Path, kind: DatasetKind) -> Result<()> {
        self.sync_with(name, table, kind, None).await
    }

    /// [`Catalog::sync`], recording `op` for the Delta version given with it (the commit
    /// this process just made) instead of the operation read off the log.
    async fn sync_with(
        &self,
        name: &str,
        table: &Path,
        kind: DatasetKind,
        made: Option<(u64, Operation)>,
    ) -> Result<()> {
        let Some(latest) = delta::latest_version(table).await? else {
            return Ok(());
        };
        let recorded = self.registry.dataset_versions(name)?;
        if let Some(other) = recorded
            .iter()
            .find(|v| !matches!(v.storage, Storage::Delta { .. }))
        {
            return Err(Error::Invalid(format!(
                "dataset `{name}` has versions of files by path ({}) and a managed table at {}; rename one",
                other.reference(),
                table.display()
            )));
        }
        let mut prev: Option<(DatasetVersion, Vec<PathBuf>)> = None;
        for dv in 0..=latest {
            let version = dv + 1;
            if let Some(r) = recorded.iter().find(|r| r.version == version) {
                prev = Some((r.clone(), vec![]));
                continue;
            }
            let snap = delta::snapshot(table, Some(dv)).await?;
            let prev_files = match &prev {
                Some((p, files)) if files.is_empty() && dv > 0 => {
                    let Storage::Delta { version: pv, .. } = p.storage else {
                        unreachable!()
                    };
                    delta::snapshot(table, Some(pv as u64)).await?.files
                }
                Some((_, files)) => files.clone(),
                None => vec![],
            };
            let schema = canonical_schema(&snap.schema).map_err(quiver_offline::Error::from)?;
            let appended = prev.is_some() && prev_files.iter().all(|f| snap.files.contains(f));
            let (new_files, mut state) = match (&prev, appended) {
                (Some((p, _)), true) if p.schema == schema => (
                    snap.files
                        .iter()
                        .filter(|f| !prev_files.contains(f))
                        .cloned()
                        .collect::<Vec<_>>(),
                    p.state,
                ),
                _ => (snap.files.clone(), HashState::default()),
            };
            // What made the version: this process's operation, else what the writer noted
            // in the commit (it may have died before recording it), else what the log shows.
            let made_here = match &made {
                Some((v, op)) if *v == dv => Some(op.clone()),
                _ => delta::commit_note(table, dv)
                    .await?
                    .and_then(|n| serde_json::from_value::<Operation>(n).ok()),
            };
            let ctx = self.ctx()?;
            let provider = source::files_table(
                &ctx,
                &new_files,
                Some(snap.schema.clone()),
                table,
                &format!("table `{name}`"),
            )
            .await?;
            let (s, batches) = source::collect_table(&ctx, provider, table).await?;
            let mut h = TableHasher::resume(&s, state).map_err(quiver_offline::Error::from)?;
            for b in &batches {
                h.update(b).map_err(quiver_offline::Error::from)?;
            }
            state = h.state();
            let record = DatasetVersion {
                name: name.to_string(),
                version,
                kind,
                hash: quiver_core::hash::finish(&schema, &state),
                state,
                schema,
                created_micros: snap.committed_micros.unwrap_or_else(now),
                storage: Storage::Delta {
                    table: abs(table),
                    version: dv as i64,
                },
                op: match (made_here, kind) {
                    (Some(op), _) => op,
                    (None, DatasetKind::Source) => Operation::Ingest {
                        files: new_files
                            .iter()
                            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into()))
                            .collect(),
                    },
                    _ => Operation::Observe { path: abs(table) },
                },
            };
            self.registry.put_dataset_version(&record)?;
            prev = Some((record, snap.files));
        }
        Ok(())
    }

    /// Record the current content of a source read by `path`; unchanged content keeps its
    /// version.
    pub async fn observe_path_source(&self, name: &str, path: &Path) -> Result<DatasetVersion> {
        let fingerprint = source::fingerprint(path)?.0;
        let latest = self.registry.dataset_versions(name)?.pop();
        if let Some(l) = &latest
            && l.op
                == (Operation::Observe {
                    path: fingerprint.clone(),
                })
        {
            return Ok(l.clone());
        }
        let ctx = self.ctx()?;
        let provider = source::file_table(&ctx, path, &format!("source `{name}`")).await?;
        let (schema, batches) = source::collect_table(&ctx, provider, path).await?;
        let (hash, state) = hash_table(&schema, &batches)?;
        let record = DatasetVersion {
            name: name.to_string(),
            version: 0,
            kind: DatasetKind::Source,
            hash,
            state,
            schema: canonical_schema(&schema).map_err(quiver_offline::Error::from)?,
            created_micros: now(),
            storage: Storage::File { path: abs(path) },
            op: Operation::Observe { path: fingerprint },
        };
        // Same rows under a new fingerprint (files touched): keep the version.
        if let Some(l) = latest
            && l.hash == hash
        {
            return Ok(l);
        }
        Ok(self.registry.add_dataset_version(record)?)
    }

    /// The version of a source a join reads, recorded.
    pub async fn source_version(&self, name: &str, pins: &Pins) -> Result<DatasetVersion> {
        let src = self.source(name)?;
        let loc = source::source_location(&self.repo.offline_store, src);
        let managed = src.path.is_none() || delta::is_delta_table(&loc);
        if managed {
            if !delta::is_delta_table(&loc) {
                return Err(Error::Invalid(format!(
                    "source `{name}` has no data yet; add some with `quiver ingest {name} FILE…`"
                )));
            }
            self.sync(name, &loc, DatasetKind::Source).await?;
        }
        let pick = |versions: Vec<DatasetVersion>| -> Result<DatasetVersion> {
            if let Some(v) = pins.versions.get(name) {
                return versions
                    .iter()
                    .find(|x| x.version == *v)
                    .cloned()
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "source `{name}` has no version {v}; versions: 1..={}",
                            versions.last().map(|l| l.version).unwrap_or(0)
                        ))
                    });
            }
            if let Some(t) = pins.as_of {
                return versions
                    .iter()
                    .rev()
                    .find(|x| x.created_micros <= t)
                    .cloned()
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "source `{name}` has no version made at or before {}",
                            quiver_core::time::format_instant(t)
                        ))
                    });
            }
            versions
                .last()
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("source `{name}` has no versions")))
        };
        if managed {
            pick(self.registry.dataset_versions(name)?)
        } else {
            let current = self.observe_path_source(name, &loc).await?;
            let v = pick(self.registry.dataset_versions(name)?)?;
            if v.hash != current.hash {
                return Err(Error::Invalid(format!(
                    "source `{name}` is read from files by path, which keep only their current content ({}); {} cannot be read any more",
                    current.reference(),
                    v.reference()
                )));
            }
            Ok(v)
        }
    }

    /// Write rows as the next version of a dataset (a Delta overwrite) and record it. When the
    /// latest version holds the same rows and was made the same way, it is returned instead.
    pub async fn write_dataset(
        &self,
        name: &str,
        kind: DatasetKind,
        table: &Rows,
        op: Operation,
    ) -> Result<DatasetVersion> {
        Self::check_name(name)?;
        let path = self.dataset_path(name);
        self.sync(name, &path, kind).await?;
        let (hash, state) = hash_table(&table.schema, &table.batches)?;
        if let Some(l) = self.registry.dataset_versions(name)?.pop()
            && l.hash == hash
            && l.op == op
        {
            return Ok(l);
        }
        let dv = delta::write(
            &path,
            table.batches.clone(),
            Mode::Overwrite,
            &format!("dataset `{name}`"),
            Some(note(&op)?),
        )
        .await?;
        let record = DatasetVersion {
            name: name.to_string(),
            version: dv + 1,
            kind,
            hash,
            state,
            schema: canonical_schema(&table.schema).map_err(quiver_offline::Error::from)?,
            created_micros: now(),
            storage: Storage::Delta {
                table: abs(&path),
                version: dv as i64,
            },
            op,
        };
        self.registry.put_dataset_version(&record)?;
        Ok(record)
    }

    // ---- operations

    /// Append files (Parquet or CSV) to a managed source: checked against the table's schema
    /// and the feature views that read it first; nothing is written on any error.
    pub async fn ingest(&self, name: &str, files: &[PathBuf]) -> Result<DatasetVersion> {
        if files.is_empty() {
            return Err(Error::Invalid("ingest: no files given".into()));
        }
        self.check_managed(name)?;
        // Read everything before writing anything.
        let ctx = self.ctx()?;
        let mut parts = Vec::new();
        for f in files {
            let what = format!("ingest {}", f.display());
            let provider = source::file_table(&ctx, f, &what).await?;
            let (s, bs) = source::collect_table(&ctx, provider, f)
                .await
                .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
            parts.push((what, s, bs));
        }
        let op = Operation::Ingest {
            files: files.iter().map(|p| abs(p)).collect(),
        };
        self.append(name, parts, op).await
    }

    /// A source of quiver.yaml, or an error naming the ones there are.
    fn source(&self, name: &str) -> Result<&quiver_core::Source> {
        self.repo.sources.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown source `{name}`; sources: {}",
                self.repo
                    .sources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The source, when Quiver manages its table.
    fn check_managed(&self, name: &str) -> Result<&quiver_core::Source> {
        let src = self.source(name)?;
        if let Some(p) = &src.path
            && !delta::is_delta_table(p)
        {
            return Err(Error::Invalid(format!(
                "source `{name}` reads files at {} (its `path`); only the table Quiver manages for a source without `path` can be written",
                p.display()
            )));
        }
        Ok(src)
    }

    /// Append rows to a managed source as one commit: every part (named `what` in messages)
    /// is checked against the table's schema and the feature views that read the source
    /// first; nothing is written on any error.
    pub async fn append(
        &self,
        name: &str,
        parts: Vec<(String, SchemaRef, Vec<RecordBatch>)>,
        op: Operation,
    ) -> Result<DatasetVersion> {
        let src = self.check_managed(name)?;
        let table = source::source_location(&self.repo.offline_store, src);
        self.sync(name, &table, DatasetKind::Source).await?;
        let existing = delta::latest_version(&table).await?;
        let target = match existing {
            Some(v) => Some(delta::snapshot(&table, Some(v)).await?.schema),
            None => None,
        };
        let mut batches = Vec::new();
        let mut schema: Option<SchemaRef> = target.clone();
        for (what, s, bs) in parts {
            // Compare in the types Delta stores: what the table holds after the first ingest.
            let s = delta::to_delta_types(&RecordBatch::new_empty(s), &what)?.schema();
            let reference = schema.get_or_insert_with(|| s.clone()).clone();
            // An empty file still has to fit.
            delta::conform(&reference, &RecordBatch::new_empty(s), &what)?;
            for b in bs {
                let b = delta::to_delta_types(&b, &what)?;
                batches.push(delta::conform(&reference, &b, &what)?);
            }
        }
        let schema =
            schema.unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        canonical_schema(&schema).map_err(quiver_offline::Error::from)?;
        let mem = Arc::new(
            datafusion::datasource::MemTable::try_new(schema.clone(), vec![batches.clone()])
                .map_err(quiver_offline::Error::from)?,
        );
        Engine::new(self.repo.clone(), self.opts.clone())?
            .with_source_table(name, mem)
            .check_source(name)
            .await?;
        let dv = delta::write(
            &table,
            batches,
            Mode::Append,
            &format!("source `{name}`"),
            Some(note(&op)?),
        )
        .await?;
        // States computed from older versions can never serve again (they are keyed by
        // version); free their space now. A failure here only delays that to eviction.
        let _ = ReuseCatalog::of_repo(&self.repo, 0).invalidate(name);
        self.sync_with(name, &table, DatasetKind::Source, Some((dv, op)))
            .await?;
        Ok(self.registry.dataset_version(name, Some(dv + 1))?)
    }

    /// Store a user file (a spine) as the next version of a dataset.
    pub async fn add(&self, file: &Path, name: &str) -> Result<DatasetVersion> {
        let table = self.read_file(file).await?;
        self.add_table(file, name, &table).await
    }

    /// The rows of a spine file as they will read once recorded: in the types the dataset's
    /// Delta table stores (so a join on them equals a join on the recorded version).
    pub async fn read_file(&self, file: &Path) -> Result<Rows> {
        let ctx = self.ctx()?;
        let (schema, batches) = source::read_table(&ctx, file).await?;
        recordable(schema, &batches, &file.display().to_string())
    }

    /// Record `table`, read from `file` ([`Catalog::read_file`]), as the next version of
    /// dataset `name` (unless the latest version holds the same rows from the same file).
    pub async fn add_table(&self, file: &Path, name: &str, table: &Rows) -> Result<DatasetVersion> {
        self.write_dataset(
            name,
            DatasetKind::Spine,
            table,
            Operation::Add { file: abs(file) },
        )
        .await
    }

    /// Record the current definitions of the views (all when `views` is empty): a changed
    /// definition becomes a new version. Returns each view's version and whether it is new.
    pub fn apply(&self, views: &[String]) -> Result<Vec<(ViewVersion, bool)>> {
        let mut out = Vec::new();
        for (name, v) in &self.repo.views {
            if !views.is_empty() && !views.contains(name) {
                continue;
            }
            let def = ViewDefinition {
                view: v.clone(),
                source: self.repo.sources[&v.source].clone(),
            };
            out.push(self.registry.apply_view(def, now())?);
        }
        Ok(out)
    }

    /// Resolve a spine argument: an existing file is added as (a version of) a dataset named
    /// after the file; anything else is `NAME[@VER]` of a recorded dataset.
    pub async fn spine_version(&self, spine: &str) -> Result<DatasetVersion> {
        let p = Path::new(spine);
        if p.is_file() || p.is_dir() {
            return self.add(p, &spine_name(p)).await;
        }
        let (name, version) = quiver_registry::parse_ref(spine)?;
        Ok(self.registry.dataset_version(&name, version)?)
    }

    /// A point-in-time join against recorded versions. Returns the training set and the
    /// lineage to record with it.
    pub async fn join(
        &self,
        spine: &Rows,
        features: &[FeatureRef],
        spine_timestamp: Option<String>,
        full_names: bool,
        pins: &Pins,
    ) -> Result<(RecordBatch, JoinRecord)> {
        self.join_explained(spine, features, spine_timestamp, full_names, pins)
            .await
            .map(|(b, r, _)| (b, r))
    }

    /// [`Catalog::join`], with the engine's plan (`--explain` lines).
    pub async fn join_explained(
        &self,
        spine: &Rows,
        features: &[FeatureRef],
        spine_timestamp: Option<String>,
        full_names: bool,
        pins: &Pins,
    ) -> Result<(RecordBatch, JoinRecord, Vec<String>)> {
        let mut views: Vec<String> = Vec::new();
        for f in features {
            if !views.contains(&f.view) {
                views.push(f.view.clone());
            }
        }
        let applied = self.apply(&views)?;
        let mut sources: Vec<DatasetVersion> = Vec::new();
        for v in &views {
            let s = &self.repo.views[v].source;
            if !sources.iter().any(|x| &x.name == s) {
                sources.push(self.source_version(s, pins).await?);
            }
        }
        let record = JoinRecord {
            // Filled in by the caller that registers the result.
            spine: VersionRef {
                name: String::new(),
                version: 0,
            },
            spine_timestamp,
            full_names,
            sources: sources.iter().map(|s| s.reference()).collect(),
            features: features
                .iter()
                .map(|f| FeatureUse {
                    view: f.view.clone(),
                    view_version: applied
                        .iter()
                        .find(|(v, _)| v.view == f.view)
                        .map(|(v, _)| v.version)
                        .unwrap_or(0),
                    feature: f.feature.clone(),
                })
                .collect(),
            quiver_version: QUIVER_VERSION.to_string(),
        };
        let spine = Rows {
            schema: spine.schema.clone(),
            batches: spine.batches.clone(),
        };
        let (batch, plan) = self
            .run_join(&record, self.repo.clone(), Some(spine))
            .await?;
        Ok((batch, record, plan))
    }

    /// Run a recorded join with the given definitions.
    async fn run_join(
        &self,
        record: &JoinRecord,
        repo: Repo,
        spine: Option<Rows>,
    ) -> Result<(RecordBatch, Vec<String>)> {
        let spine = match spine {
            Some(s) => s,
            None => {
                let v = self
                    .registry
                    .dataset_version(&record.spine.name, Some(record.spine.version))?;
                self.rebuild(&v).await?
            }
        };
        let mut engine = Engine::new(repo, self.opts.clone())?;
        let ctx = self.ctx()?;
        for s in &record.sources {
            let v = self.registry.dataset_version(&s.name, Some(s.version))?;
            engine = match self.source_provider(&ctx, &v).await? {
                (p, Some(id)) => engine.with_source_version(&s.name, p, id),
                (p, None) => engine.with_source_table(&s.name, p),
            };
        }
        let req = JoinRequest {
            features: record
                .features
                .iter()
                .map(|f| FeatureRef {
                    view: f.view.clone(),
                    feature: f.feature.clone(),
                })
                .collect(),
            spine_timestamp: record.spine_timestamp.clone(),
            full_names: record.full_names,
        };
        let out = engine.join(spine.schema, spine.batches, &req).await?;
        Ok((out.batch, out.explain))
    }

    /// The repository as it was for a recorded join: the recorded view definitions (and their
    /// sources' time columns), whatever quiver.yaml says now.
    fn recorded_repo(&self, record: &JoinRecord) -> Result<Repo> {
        let mut repo = self.repo.clone();
        repo.views.clear();
        repo.sources.clear();
        repo.services.clear();
        for f in &record.features {
            if repo.views.contains_key(&f.view) {
                continue;
            }
            let vv = self.registry.view_version(&f.view, Some(f.view_version))?;
            repo.entities.insert(
                vv.definition.view.entity.clone(),
                vv.definition.view.join_keys.clone(),
            );
            repo.sources.insert(
                vv.definition.source.name.clone(),
                vv.definition.source.clone(),
            );
            repo.views.insert(f.view.clone(), vv.definition.view);
        }
        Ok(repo)
    }

    /// Recompute a dataset version from its lineage: a join from its recorded inputs and
    /// definitions, a split or filter from its rebuilt parent, stored inputs (ingests, added
    /// files) read back.
    pub fn rebuild<'a>(
        &'a self,
        v: &'a DatasetVersion,
    ) -> futures::future::BoxFuture<'a, Result<Rows>> {
        Box::pin(async move {
            match &v.op {
                Operation::Join(record) => {
                    let repo = self.recorded_repo(record)?;
                    let (batch, _) = self.run_join(record, repo, None).await?;
                    Ok(Rows {
                        schema: batch.schema(),
                        batches: vec![batch],
                    })
                }
                Operation::Split {
                    parent,
                    ratio,
                    seed,
                    part,
                } => {
                    let p = self
                        .registry
                        .dataset_version(&parent.name, Some(parent.version))?;
                    let t = self.rebuild(&p).await?;
                    let (train, test) = split(&t, *ratio, *seed)?;
                    Ok(if part == "train" { train } else { test })
                }
                Operation::Filter { parent, predicate } => {
                    let p = self
                        .registry
                        .dataset_version(&parent.name, Some(parent.version))?;
                    let t = self.rebuild(&p).await?;
                    self.filter_rows(t, predicate).await
                }
                Operation::Ingest { .. }
                | Operation::Observe { .. }
                | Operation::Add { .. }
                | Operation::Upload { .. } => self.read(v).await,
            }
        })
    }

    /// Rebuild a dataset version and compare it with what was recorded.
    pub async fn reproduce(&self, name: &str, version: Option<u64>) -> Result<Reproduction> {
        let target = self.registry.dataset_version(name, version)?;
        let rebuilt = self.rebuild(&target).await?;
        let (hash, _) = hash_table(&rebuilt.schema, &rebuilt.batches)?;
        let difference = if hash == target.hash {
            None
        } else {
            let stored = self.read(&target).await?;
            Some(first_difference(&stored, &rebuilt)?)
        };
        Ok(Reproduction {
            target,
            rebuilt: hash,
            difference,
        })
    }

    /// The rows of a table where a SQL predicate holds, in order.
    pub async fn filter_rows(&self, t: Rows, predicate: &str) -> Result<Rows> {
        let ctx = self.ctx()?;
        let mem = datafusion::datasource::MemTable::try_new(t.schema.clone(), vec![t.batches])
            .map_err(quiver_offline::Error::from)?;
        let df = ctx
            .read_table(Arc::new(mem))
            .map_err(quiver_offline::Error::from)?;
        let expr = df.parse_sql_expr(predicate).map_err(|e| {
            Error::Invalid(format!(
                "--where {predicate:?}: {}",
                quiver_offline::Error::from(e)
            ))
        })?;
        let df = df.filter(expr).map_err(|e| {
            Error::Invalid(format!(
                "--where {predicate:?}: {}",
                quiver_offline::Error::from(e)
            ))
        })?;
        let parts = df
            .collect_partitioned()
            .await
            .map_err(quiver_offline::Error::from)?;
        Ok(Rows {
            schema: t.schema,
            batches: parts.into_iter().flatten().collect(),
        })
    }

    /// Split a dataset version into seeded train/test children, recorded as
    /// `INTO_TRAIN`/`INTO_TEST` (default `NAME_train`, `NAME_test`).
    pub async fn split(
        &self,
        parent: &DatasetVersion,
        ratio: f64,
        seed: u64,
        names: (&str, &str),
    ) -> Result<(DatasetVersion, DatasetVersion)> {
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(Error::Invalid(format!(
                "--ratio {ratio}: must be between 0 and 1 (exclusive)"
            )));
        }
        let t = self.read(parent).await?;
        let (train, test) = split(&t, ratio, seed)?;
        let op = |part: &str| Operation::Split {
            parent: parent.reference(),
            ratio,
            seed,
            part: part.to_string(),
        };
        let kind = DatasetKind::Training;
        let a = self
            .write_dataset(names.0, kind, &train, op("train"))
            .await?;
        let b = self.write_dataset(names.1, kind, &test, op("test")).await?;
        Ok((a, b))
    }

    /// Keep the rows of a dataset version where a predicate holds, as a new version of `into`.
    pub async fn filter(
        &self,
        parent: &DatasetVersion,
        predicate: &str,
        into: &str,
    ) -> Result<DatasetVersion> {
        let t = self.read(parent).await?;
        let kept = self.filter_rows(t, predicate).await?;
        self.write_dataset(
            into,
            parent.kind,
            &kept,
            Operation::Filter {
                parent: parent.reference(),
                predicate: predicate.to_string(),
            },
        )
        .await
    }

    /// Schema changes and rows added/removed from `a` to `b` (rows compared as multisets
    /// over the columns both have).
    pub async fn diff(&self, a: &DatasetVersion, b: &DatasetVersion) -> Result<Diff> {
        let mut schema_changes = Vec::new();
        for (c, t) in &a.schema {
            match b.schema.iter().find(|(d, _)| d == c) {
                None => schema_changes.push(format!("- column {c} ({t})")),
                Some((_, u)) if u != t => schema_changes.push(format!("~ column {c}: {t} -> {u}")),
                _ => {}
            }
        }
        for (c, t) in &b.schema {
            if !a.schema.iter().any(|(d, _)| d == c) {
                schema_changes.push(format!("+ column {c} ({t})"));
            }
        }
        let common: Vec<String> = a
            .schema
            .iter()
            .filter(|(c, t)| b.schema.iter().any(|(d, u)| d == c && u == t))
            .map(|(c, _)| c.clone())
            .collect();
        let mut counts: HashMap<[u8; 32], i64> = HashMap::new();
        for (v, sign) in [(a, 1i64), (b, -1i64)] {
            let t = self.read(v).await?;
            let idx: Vec<usize> = common
                .iter()
                .map(|c| t.schema.index_of(c))
                .collect::<std::result::Result<_, _>>()
                .map_err(quiver_offline::Error::from)?;
            let projected = Arc::new(
                t.schema
                    .project(&idx)
                    .map_err(quiver_offline::Error::from)?,
            );
            let mut h = TableHasher::new(&projected).map_err(quiver_offline::Error::from)?;
            for batch in &t.batches {
                let p = batch.project(&idx).map_err(quiver_offline::Error::from)?;
                for r in h.row_hashes(&p).map_err(quiver_offline::Error::from)? {
                    *counts.entry(r).or_default() += sign;
                }
            }
        }
        let removed = counts.values().filter(|c| **c > 0).sum::<i64>() as u64;
        let added = counts.values().filter(|c| **c < 0).map(|c| -c).sum::<i64>() as u64;
        Ok(Diff {
            schema_changes,
            added,
            removed,
        })
    }

    /// Record every source's current version (for listings): a managed table's committed
    /// versions, and the content of files read by path when it changed.
    pub async fn sync_sources(&self) -> Result<()> {
        for (name, s) in &self.repo.sources {
            let loc = source::source_location(&self.repo.offline_store, s);
            if delta::is_delta_table(&loc) {
                self.sync(name, &loc, DatasetKind::Source).await?;
            } else if s.path.is_some() && loc.exists() {
                self.observe_path_source(name, &loc).await?;
            }
        }
        Ok(())
    }
}

/// A location as the registry records it: an object URL as written, a path made absolute.
fn abs(p: &Path) -> String {
    if quiver_offline::objects::is_remote(p) {
        return p.display().to_string();
    }
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// A row's side in a seeded split: SplitMix64 of (seed, row number) as a uniform number in
/// [0, 1). Deterministic for a seed and row order, independent of batch sizes.
fn unit(seed: u64, row: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(row)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Rows as they will read once recorded: in the types a dataset's Delta table stores, so a
/// join on them equals a join on the recorded version. `what` names them in errors.
pub fn recordable(schema: SchemaRef, batches: &[RecordBatch], what: &str) -> Result<Rows> {
    let schema = delta::to_delta_types(&RecordBatch::new_empty(schema), what)?.schema();
    let batches = batches
        .iter()
        .map(|b| delta::to_delta_types(b, what))
        .collect::<quiver_offline::Result<Vec<_>>>()?;
    Ok(Rows { schema, batches })
}

/// Split rows into (train, test): a row goes to train when its draw is below `ratio`.
pub fn split(t: &Rows, ratio: f64, seed: u64) -> Result<(Rows, Rows)> {
    let mut train = Vec::new();
    let mut test = Vec::new();
    let mut row = 0u64;
    for b in &t.batches {
        let mask: datafusion::arrow::array::BooleanArray = (0..b.num_rows())
            .map(|i| Some(unit(seed, row + i as u64) < ratio))
            .collect();
        row += b.num_rows() as u64;
        let inverse =
            datafusion::arrow::compute::not(&mask).map_err(quiver_offline::Error::from)?;
        train.push(filter_record_batch(b, &mask).map_err(quiver_offline::Error::from)?);
        test.push(filter_record_batch(b, &inverse).map_err(quiver_offline::Error::from)?);
    }
    Ok((
        Rows {
            schema: t.schema.clone(),
            batches: train,
        },
        Rows {
            schema: t.schema.clone(),
            batches: test,
        },
    ))
}

/// Where two tables first differ, in row order: the schema, the row count, or the first row
/// and column whose values differ.
pub fn first_difference(stored: &Rows, rebuilt: &Rows) -> Result<String> {
    let a = canonical_schema(&stored.schema).map_err(quiver_offline::Error::from)?;
    let b = canonical_schema(&rebuilt.schema).map_err(quiver_offline::Error::from)?;
    if a != b {
        let col = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        return Ok(format!(
            "schema differs at column {col}: stored {:?}, rebuilt {:?}",
            a.get(col),
            b.get(col)
        ));
    }
    let sa = stored.concat()?;
    let sb = rebuilt.concat()?;
    // Whole-row hashes find the row; one column's hashes on that row find the column.
    let row_hashes = |b: &RecordBatch| -> Result<Vec<[u8; 32]>> {
        let mut h = TableHasher::new(&b.schema()).map_err(quiver_offline::Error::from)?;
        Ok(h.row_hashes(b).map_err(quiver_offline::Error::from)?)
    };
    let (ha, hb) = (row_hashes(&sa)?, row_hashes(&sb)?);
    if let Some(row) = ha.iter().zip(&hb).position(|(x, y)| x != y) {
        for (c, (name, _)) in a.iter().enumerate() {
            let x = sa
                .project(&[c])
                .map_err(quiver_offline::Error::from)?
                .slice(row, 1);
            let y = sb
                .project(&[c])
                .map_err(quiver_offline::Error::from)?
                .slice(row, 1);
            if row_hashes(&x)? != row_hashes(&y)? {
                return Ok(format!(
                    "row {row}, column `{name}`: stored {}, rebuilt {}",
                    show(x.column(0).as_ref()),
                    show(y.column(0).as_ref())
                ));
            }
        }
    }
    if sa.num_rows() != sb.num_rows() {
        return Ok(format!(
            "row count: stored {}, rebuilt {}",
            sa.num_rows(),
            sb.num_rows()
        ));
    }
    Ok("same rows in another order".into())
}

fn show(a: &dyn Array) -> String {
    datafusion::arrow::util::display::ArrayFormatter::try_new(a, &Default::default())
        .map(|f| f.value(0).to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The dataset a spine file is recorded as: named after the file, with what a dataset name
/// cannot hold replaced.
pub fn spine_name(p: &Path) -> String {
    let stem: String = p
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stem.trim_start_matches('.') {
        "" => "spine".to_string(),
        s => s.to_string(),
    }
}

/// An operation as noted in the Delta commit it makes ([`delta::commit_note`]).
fn note(op: &Operation) -> Result<serde_json::Value> {
    serde_json::to_value(op).map_err(|e| Error::Internal(format!("operation note: {e}")))
}
