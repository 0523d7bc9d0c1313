//! Quiver's registry: dataset versions, feature-view versions and the lineage between them
//! (DESIGN §5, §7), in a crash-safe metadata store of its own.
//!
//! The registry records *what* every table version is (name, number, content hash, schema,
//! where its rows live) and *how* it was made ([`Operation`]): an ingest, a file added, a
//! point-in-time join of a spine version against source versions and feature-view versions,
//! a split or a filter of a parent version. Lineage edges are derived from those operations,
//! so the graph can never disagree with the records. It knows nothing of DataFusion, Delta or
//! sled's online trees: the server crate composes it with the offline and online stores.
//!
//! Storage is a folder: a sled database in `db/` (one tree per record kind, `meta` holding
//! [`FORMAT`]; every write flushed before it returns) and model artifacts in `artifacts/`,
//! named by their BLAKE3 hash (written to a temporary file, synced, then renamed). sled allows one process at a time, so [`Registry::open`]
//! waits for a bounded time while another `quiver` process holds it.
//!
//! ```
//! use quiver_registry::{Registry, DatasetVersion, DatasetKind, Storage, Operation};
//! let dir = tempfile::tempdir().unwrap();
//! let reg = Registry::open(dir.path()).unwrap();
//! let v = reg.add_dataset_version(DatasetVersion {
//!     name: "spine".into(), version: 0, kind: DatasetKind::Spine,
//!     hash: quiver_core::hash::hash_bytes(b"rows"), state: Default::default(),
//!     schema: vec![], created_micros: 0,
//!     storage: Storage::File { path: "spine.csv".into() },
//!     op: Operation::Add { file: "spine.csv".into() },
//! }).unwrap();
//! assert_eq!(v.version, 1);
//! assert_eq!(reg.dataset_version("spine", None).unwrap().version, 1);
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod models;
pub mod select;
mod tokens;

pub use models::{
    ArtifactFile, Change, CodeVersion, Environment, Metric, ModelSel, ModelVersion, parse_model_ref,
};
use quiver_core::hash::{ContentHash, HashState};
use quiver_core::{FeatureView, Source};
use serde::{Deserialize, Serialize};
pub use tokens::{TOKENS_STAMP, TokenRecord};

/// The layout version of the registry's records, checked on open.
pub const FORMAT: u32 = 1;
const FORMAT_KEY: &[u8] = b"format";
/// How long `open` waits for another process to release the registry.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Result alias with the registry's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading or writing the registry, each naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store (or an artifact file) could not be opened, read or written.
    #[error("registry {}: {source}", path.display())]
    Sled {
        /// The registry folder or artifact file concerned.
        path: PathBuf,
        /// The underlying failure (an I/O error for artifact files).
        source: sled::Error,
    },
    /// The registry was written with a record layout this build does not read.
    #[error("registry {}: format version {found} is not supported (this build reads {FORMAT})", path.display())]
    Format {
        /// The registry folder.
        path: PathBuf,
        /// The layout version found in it.
        found: u32,
    },
    /// A record (or an artifact) does not decode or does not match its hash.
    #[error("registry {}: record {key} is unreadable: {message}", path.display())]
    Corrupt {
        /// The registry folder or artifact file.
        path: PathBuf,
        /// The record's key, like `name@version`, or the artifact's hash.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// No version of a dataset of this name is recorded.
    #[error("unknown dataset `{name}`{}", known_list(.known))]
    UnknownDataset {
        /// The dataset asked for.
        name: String,
        /// The datasets the registry holds, sorted.
        known: Vec<String>,
    },
    /// The dataset exists but not at this version.
    #[error("dataset `{name}` has no version {version}; versions: 1..={latest}")]
    UnknownVersion {
        /// The dataset's name.
        name: String,
        /// The version asked for.
        version: u64,
        /// The dataset's latest version.
        latest: u64,
    },
    /// No version of a feature view of this name is recorded (it was never applied).
    #[error("feature view `{name}` has no recorded versions; run `quiver apply`")]
    UnknownView {
        /// The view asked for.
        name: String,
    },
    /// The feature view is recorded but not at this version.
    #[error("feature view `{name}` has no version {version}; versions: 1..={latest}")]
    UnknownViewVersion {
        /// The view's name.
        name: String,
        /// The version asked for.
        version: u64,
        /// The view's latest version.
        latest: u64,
    },
    /// A dataset version recorded again with a different content hash.
    #[error("dataset `{name}` version {version} is already recorded with other content")]
    Conflict {
        /// The dataset's name.
        name: String,
        /// The version recorded twice.
        version: u64,
    },
    /// No version of a model of this name is registered.
    #[error("unknown model `{name}`{}", known_models(.known))]
    UnknownModel {
        /// The model asked for.
        name: String,
        /// The models the registry holds, sorted.
        known: Vec<String>,
    },
    /// The model exists but not at this version.
    #[error("model `{name}` has no version {version}; versions: 1..={latest}")]
    UnknownModelVersion {
        /// The model's name.
        name: String,
        /// The version asked for.
        version: u64,
        /// The model's latest version.
        latest: u64,
    },
    /// The model has no alias of this name.
    #[error("model `{name}` has no alias `{alias}`{}", if .known.is_empty() { "; it has no aliases".to_string() } else { format!("; aliases: {}", .known.join(", ")) })]
    UnknownAlias {
        /// The model's name.
        name: String,
        /// The alias asked for.
        alias: String,
        /// The aliases the model has.
        known: Vec<String>,
    },
    /// A token of this name is in use.
    #[error("a token named `{name}` is in use; revoke it first or choose another name")]
    TokenExists {
        /// The name asked for.
        name: String,
    },
    /// No token in use has this name.
    #[error("no token in use is named `{name}`")]
    UnknownToken {
        /// The name asked for.
        name: String,
    },
    /// A reference (`NAME@VERSION`, an alias) that cannot be read.
    #[error("bad reference {text:?}: {message}")]
    BadRef {
        /// The reference as written.
        text: String,
        /// What is wrong with it and how to write it.
        message: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "; the registry holds no datasets yet".into()
    } else {
        format!("; datasets: {}", known.join(", "))
    }
}

fn known_models(known: &[String]) -> String {
    if known.is_empty() {
        "; no models are registered yet".into()
    } else {
        format!("; models: {}", known.join(", "))
    }
}

impl From<Error> for quiver_core::Error {
    fn from(e: Error) -> Self {
        quiver_core::Error::Request(e.to_string())
    }
}

/// What a dataset is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// A feature source (managed table or files referenced by path).
    Source,
    /// Label rows given by a user.
    Spine,
    /// A training set built by `quiver join --register`, or derived from one.
    Training,
}

impl DatasetKind {
    /// The kind's name, as shown in listings and SQL tables.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Source => "source",
            DatasetKind::Spine => "spine",
            DatasetKind::Training => "training",
        }
    }
}

/// Where a version's rows live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// A Delta table folder at a Delta version (time travel reads it back).
    Delta {
        /// The table's folder, as an absolute path.
        table: String,
        /// The Delta version holding this dataset version's rows.
        version: i64,
    },
    /// Files the user points at (versioned by content; earlier contents are not kept).
    File {
        /// The file, folder or glob, as an absolute path.
        path: String,
    },
}

/// `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionRef {
    /// The dataset, view or model name.
    pub name: String,
    /// The version number, from 1.
    pub version: u64,
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// `NAME` or `NAME@VER` as typed by a user; `None` is the latest version.
pub fn parse_ref(text: &str) -> Result<(String, Option<u64>)> {
    let bad = |message: &str| Error::BadRef {
        text: text.to_string(),
        message: message.to_string(),
    };
    match text.rsplit_once('@') {
        None if text.is_empty() => Err(bad("empty name")),
        None => Ok((text.to_string(), None)),
        Some(("", _)) => Err(bad("write NAME@VERSION")),
        Some((n, v)) => {
            let v: u64 = v
                .parse()
                .map_err(|_| bad("the version must be a number from 1"))?;
            if v == 0 {
                return Err(bad("versions are numbered from 1"));
            }
            Ok((n.to_string(), Some(v)))
        }
    }
}

/// A feature used by a join: the view version whose definition computed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureUse {
    /// The feature view's name.
    pub view: String,
    /// The view version whose definition computed the feature.
    pub view_version: u64,
    /// The feature's name within the view.
    pub feature: String,
}

impl std::fmt::Display for FeatureUse {
    /// `view@version:feature`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.view, self.view_version, self.feature)
    }
}

/// A point-in-time join, as recorded for its training set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRecord {
    /// The spine version whose rows were joined.
    pub spine: VersionRef,
    /// The spine's time column as given; none: the default choice.
    pub spine_timestamp: Option<String>,
    /// Whether every feature column was named `view__feature`.
    pub full_names: bool,
    /// Each source table version read.
    pub sources: Vec<VersionRef>,
    /// The requested features in order, with their definition versions.
    pub features: Vec<FeatureUse>,
    /// The version of Quiver that ran the join.
    pub quiver_version: String,
}

/// How a dataset version was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Files appended to a managed source table.
    Ingest {
        /// The names of the files appended.
        files: Vec<String>,
    },
    /// Files referenced by path, seen with this content.
    Observe {
        /// The absolute path read; for files by path, followed by `#` and a fingerprint of the
        /// files (sizes, modification times).
        path: String,
    },
    /// A user file stored as a dataset (`quiver datasets add`).
    Add {
        /// The file whose rows were stored, as an absolute path.
        file: String,
    },
    /// A table a client sent over the network (a spine streamed over Arrow Flight).
    Upload {
        /// The transport and the client's address, e.g. `flight 127.0.0.1:50123`.
        from: String,
    },
    /// A point-in-time join of a spine with feature views: a training set.
    Join(JoinRecord),
    /// One side of a seeded random split of a parent version.
    Split {
        /// The version split.
        parent: VersionRef,
        /// The fraction of the parent's rows on the train side, between 0 and 1.
        ratio: f64,
        /// The seed of the random split, so it can be made again.
        seed: u64,
        /// `train` (the `ratio` side) or `test`.
        part: String,
    },
    /// The rows of a parent version where a SQL predicate holds.
    Filter {
        /// The version filtered.
        parent: VersionRef,
        /// The SQL predicate over the parent's columns that kept rows satisfy.
        predicate: String,
    },
}

impl Operation {
    /// The operation's name, as used for lineage edges.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Ingest { .. } => "ingest",
            Operation::Observe { .. } => "observe",
            Operation::Add { .. } => "add",
            Operation::Upload { .. } => "upload",
            Operation::Join(_) => "join",
            Operation::Split { .. } => "split",
            Operation::Filter { .. } => "filter",
        }
    }

    /// The artifacts this operation read.
    pub fn inputs(&self) -> Vec<Artifact> {
        match self {
            Operation::Ingest { .. }
            | Operation::Observe { .. }
            | Operation::Add { .. }
            | Operation::Upload { .. } => vec![],
            Operation::Join(j) => {
                let mut v = vec![Artifact::Dataset(j.spine.clone())];
                v.extend(j.sources.iter().cloned().map(Artifact::Dataset));
                let mut views: Vec<VersionRef> = Vec::new();
                for f in &j.features {
                    let r = VersionRef {
                        name: f.view.clone(),
                        version: f.view_version,
                    };
                    if !views.contains(&r) {
                        views.push(r);
                    }
                }
                v.extend(views.into_iter().map(Artifact::View));
                v
            }
            Operation::Split { parent, .. } | Operation::Filter { parent, .. } => {
                vec![Artifact::Dataset(parent.clone())]
            }
        }
    }
}

/// One version of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVersion {
    /// The dataset's name.
    pub name: String,
    /// From 1, in the order versions were made.
    pub version: u64,
    /// What the dataset is for.
    pub kind: DatasetKind,
    /// The content hash of its rows, whatever files hold them.
    pub hash: ContentHash,
    /// The hash's running state, so an append extends it.
    pub state: HashState,
    /// (column, logical class) in column order.
    pub schema: Vec<(String, String)>,
    /// When the version was made, in microseconds since the epoch.
    pub created_micros: i64,
    /// Where its rows live.
    pub storage: Storage,
    /// How it was made: the source of its lineage edges.
    pub op: Operation,
}

impl DatasetVersion {
    /// This version as `name@version`.
    pub fn reference(&self) -> VersionRef {
        VersionRef {
            name: self.name.clone(),
            version: self.version,
        }
    }
}

/// A feature view's definition as recorded: the view and its source's time columns (the
/// source's `path` is kept for information; data versions are recorded separately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDefinition {
    /// The feature view as defined.
    pub view: FeatureView,
    /// The view's source (its time columns affect the values).
    pub source: Source,
}

impl ViewDefinition {
    /// The canonical text hashed for a version: everything that changes computed values.
    fn canonical(&self) -> String {
        let source = Source {
            path: None,
            ..self.source.clone()
        };
        serde_json::to_string(&(&self.view, &source)).unwrap_or_default()
    }

    /// The hash of the definition: equal hashes, equal computed values.
    pub fn hash(&self) -> ContentHash {
        quiver_core::hash::hash_bytes(self.canonical().as_bytes())
    }

    /// The hash of one feature's definition: what it computes, whatever else the view holds.
    pub fn feature_hash(&self, feature: &str) -> Option<ContentHash> {
        let f = self.view.features.iter().find(|f| f.name == feature)?;
        let source = Source {
            path: None,
            ..self.source.clone()
        };
        let ttl = match f.kind {
            quiver_core::FeatureKind::Latest => self.view.ttl,
            _ => None,
        };
        let text =
            serde_json::to_string(&(f, &self.view.join_keys, &source, ttl)).unwrap_or_default();
        Some(quiver_core::hash::hash_bytes(text.as_bytes()))
    }
}

/// One version of a feature view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewVersion {
    /// The view's name.
    pub view: String,
    /// The version number, from 1, in the order definitions were applied.
    pub version: u64,
    /// The hash of the definition ([`ViewDefinition::hash`]).
    pub hash: ContentHash,
    /// When the version was applied, in microseconds since the epoch.
    pub created_micros: i64,
    /// The definition recorded.
    pub definition: ViewDefinition,
}

/// A node of the lineage graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Artifact {
    /// A dataset version.
    Dataset(VersionRef),
    /// A feature-view version.
    View(VersionRef),
    /// A model version.
    Model(VersionRef),
}

impl fmt::Display for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Artifact::Dataset(r) => write!(f, "dataset {r}"),
            Artifact::View(r) => write!(f, "feature view {r}"),
            Artifact::Model(r) => write!(f, "model {r}"),
        }
    }
}

/// `from` was read to make `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The artifact read.
    pub from: Artifact,
    /// The artifact made from it.
    pub to: Artifact,
    /// The operation that made `to`: `join`, `split`, `train`, `derive` and so on.
    pub op: String,
}

/// The registry store.
pub struct Registry {
    path: PathBuf,
    db: sled::Db,
    datasets: sled::Tree,
    views: sled::Tree,
    models: sled::Tree,
    aliases: sled::Tree,
    tokens: sled::Tree,
    /// While an operation runs between [`Registry::begin`] and its end, the dataset and
    /// view versions it recorded, so that a failure takes them back.
    journal: std::sync::Mutex<Option<Journal>>,
}

/// The keys an operation recorded so far, each with its tree.
type Journal = Vec<(Journaled, Vec<u8>)>;

/// Which tree a journaled key is in.
#[derive(Debug, Clone, Copy)]
enum Journaled {
    Dataset,
    View,
}

fn key(name: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 9);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

impl Registry {
    /// Open (or create) the registry, waiting up to a minute for another process holding it.
    pub fn open(path: impl AsRef<Path>) -> Result<Registry> {
        let path = path.as_ref().to_path_buf();
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        let db = loop {
            match sled::Config::new().path(path.join("db")).open() {
                Ok(db) => break db,
                // sled holds an exclusive file lock while a process has the database open.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("lock") && started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(source) => return Err(Error::Sled { path, source }),
            }
        };
        let err = |source| Error::Sled {
            path: path.clone(),
            source,
        };
        let meta = db.open_tree("meta").map_err(err)?;
        match meta.get(FORMAT_KEY).map_err(err)? {
            None => {
                meta.insert(FORMAT_KEY, &FORMAT.to_be_bytes())
                    .map_err(err)?;
                db.flush().map_err(err)?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                if found != FORMAT {
                    return Err(Error::Format { path, found });
                }
            }
        }
        Ok(Registry {
            datasets: db.open_tree("datasets").map_err(err)?,
            views: db.open_tree("feature_views").map_err(err)?,
            models: db.open_tree("models").map_err(err)?,
            aliases: db.open_tree("aliases").map_err(err)?,
            tokens: db.open_tree("tokens").map_err(err)?,
            path,
            db,
            journal: Default::default(),
        })
    }

    /// Start an operation whose records are all kept or none: the dataset and view versions
    /// recorded from now are taken back by [`Registry::rollback`] (a join that fails after
    /// recording its sources, definitions or spine), or kept by [`Registry::commit`].
    pub fn begin(&self) {
        if let Ok(mut j) = self.journal.lock() {
            *j = Some(Vec::new());
        }
    }

    /// Keep what the operation begun with [`Registry::begin`] recorded.
    pub fn commit(&self) {
        if let Ok(mut j) = self.journal.lock() {
            *j = None;
        }
    }

    /// Take back every version recorded since [`Registry::begin`].
    pub fn rollback(&self) -> Result<()> {
        let taken = self.journal.lock().ok().and_then(|mut j| j.take());
        for (tree, k) in taken.into_iter().flatten().rev() {
            match tree {
                Journaled::Dataset => self.datasets.remove(&k),
                Journaled::View => self.views.remove(&k),
            }
            .map_err(self.err())?;
        }
        self.flush()
    }

    fn journal(&self, tree: Journaled, k: Vec<u8>) {
        if let Ok(mut j) = self.journal.lock()
            && let Some(keys) = j.as_mut()
        {
            keys.push((tree, k));
        }
    }

    /// The registry's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(sled::Error) -> Error + '_ {
        move |source| Error::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    fn decode<T: for<'a> Deserialize<'a>>(&self, k: &[u8], v: &[u8]) -> Result<T> {
        serde_json::from_slice(v).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            key: String::from_utf8_lossy(k).replace('\0', "@"),
            message: e.to_string(),
        })
    }

    // ---- datasets

    /// Record a dataset version under the number it carries (managed tables number their
    /// versions from their Delta log). Recording the same version again with the same hash is
    /// a no-op; with another hash it is a conflict.
    pub fn put_dataset_version(&self, v: &DatasetVersion) -> Result<()> {
        let k = key(&v.name, v.version);
        let bytes = serde_json::to_vec(v).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            key: v.reference().to_string(),
            message: e.to_string(),
        })?;
        let prev = self
            .datasets
            .compare_and_swap(&k, None as Option<&[u8]>, Some(bytes))
            .map_err(self.err())?;
        if let Err(cas) = prev {
            let existing: DatasetVersion = self.decode(&k, &cas.current.unwrap_or_default())?;
            if existing.hash != v.hash {
                return Err(Error::Conflict {
                    name: v.name.clone(),
                    version: v.version,
                });
            }
            return Ok(());
        }
        self.journal(Journaled::Dataset, k);
        self.flush()
    }

    /// Record a new version with the next number (the number in `v` is ignored). When the
    /// latest version already has this content and operation, it is returned instead.
    pub fn add_dataset_version(&self, mut v: DatasetVersion) -> Result<DatasetVersion> {
        loop {
            let latest = self.latest_version(&v.name)?;
            if let Some(l) = &latest
                && l.hash == v.hash
                && l.op == v.op
                && l.storage == v.storage
            {
                return Ok(l.clone());
            }
            v.version = latest.map(|l| l.version).unwrap_or(0) + 1;
            let k = key(&v.name, v.version);
            let bytes = serde_json::to_vec(&v).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                key: v.reference().to_string(),
                message: e.to_string(),
            })?;
            // Another writer may take the number first: then take the next one.
            if self
                .datasets
                .compare_and_swap(&k, None as Option<&[u8]>, Some(bytes))
                .map_err(self.err())?
                .is_ok()
            {
                self.journal(Journaled::Dataset, k);
                self.flush()?;
                return Ok(v);
            }
        }
    }

    fn latest_version(&self, name: &str) -> Result<Option<DatasetVersion>> {
        match self.datasets.scan_prefix(prefix(name)).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv.map_err(self.err())?;
                Ok(Some(self.decode(&k, &v)?))
            }
        }
    }

    /// Every version of a dataset, oldest first (empty when unknown).
    pub fn dataset_versions(&self, name: &str) -> Result<Vec<DatasetVersion>> {
        self.datasets
            .scan_prefix(prefix(name))
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                self.decode(&k, &v)
            })
            .collect()
    }

    /// The names of all datasets, sorted.
    pub fn dataset_names(&self) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        for kv in self.datasets.iter() {
            let (k, _) = kv.map_err(self.err())?;
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            out.insert(String::from_utf8_lossy(&k[..end]).into_owned());
        }
        Ok(out.into_iter().collect())
    }

    /// Every dataset version, by name then version.
    pub fn all_dataset_versions(&self) -> Result<Vec<DatasetVersion>> {
        self.datasets
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                self.decode(&k, &v)
            })
            .collect()
    }

    /// One version (`None` = the latest), or an error naming what exists.
    pub fn dataset_version(&self, name: &str, version: Option<u64>) -> Result<DatasetVersion> {
        let Some(latest) = self.latest_version(name)? else {
            return Err(Error::UnknownDataset {
                name: name.to_string(),
                known: self.dataset_names()?,
            });
        };
        match version {
            None => Ok(latest),
            Some(v) => {
                let k = key(name, v);
                match self.datasets.get(&k).map_err(self.err())? {
                    Some(bytes) => self.decode(&k, &bytes),
                    None => Err(Error::UnknownVersion {
                        name: name.to_string(),
                        version: v,
                        latest: latest.version,
                    }),
                }
            }
        }
    }

    // ---- feature views

    /// Record a view's definition: a new version when it differs from the latest one, else
    /// the latest. Returns the version and whether it is new.
    pub fn apply_view(&self, definition: ViewDefinition, now: i64) -> Result<(ViewVersion, bool)> {
        let name = definition.view.name.clone();
        let hash = definition.hash();
        loop {
            let latest = self.view_versions(&name)?.pop();
            if let Some(l) = &latest
                && l.hash == hash
            {
                return Ok((l.clone(), false));
            }
            let v = ViewVersion {
                view: name.clone(),
                version: latest.map(|l| l.version).unwrap_or(0) + 1,
                hash,
                created_micros: now,
                definition: definition.clone(),
            };
            let bytes = serde_json::to_vec(&v).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                key: format!("{name}@{}", v.version),
                message: e.to_string(),
            })?;
            let k = key(&name, v.version);
            if self
                .views
                .compare_and_swap(&k, None as Option<&[u8]>, Some(bytes))
                .map_err(self.err())?
                .is_ok()
            {
                self.journal(Journaled::View, k);
                self.flush()?;
                return Ok((v, true));
            }
        }
    }

    /// Every version of a feature view, oldest first (empty when unknown).
    pub fn view_versions(&self, view: &str) -> Result<Vec<ViewVersion>> {
        self.views
            .scan_prefix(prefix(view))
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                self.decode(&k, &v)
            })
            .collect()
    }

    /// The names of all feature views with a recorded version, sorted.
    pub fn view_names(&self) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        for kv in self.views.iter() {
            let (k, _) = kv.map_err(self.err())?;
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            out.insert(String::from_utf8_lossy(&k[..end]).into_owned());
        }
        Ok(out.into_iter().collect())
    }

    /// One version of a feature view (`None` = the latest), or an error naming what exists.
    pub fn view_version(&self, view: &str, version: Option<u64>) -> Result<ViewVersion> {
        let all = self.view_versions(view)?;
        let Some(latest) = all.last() else {
            return Err(Error::UnknownView {
                name: view.to_string(),
            });
        };
        match version {
            None => Ok(latest.clone()),
            Some(v) => {
                all.iter()
                    .find(|x| x.version == v)
                    .cloned()
                    .ok_or(Error::UnknownViewVersion {
                        name: view.to_string(),
                        version: v,
                        latest: latest.version,
                    })
            }
        }
    }

    // ---- lineage

    /// Every lineage edge, derived from the recorded operations and model versions.
    pub fn edges(&self) -> Result<Vec<Edge>> {
        let mut out = self.model_edges()?;
        for v in self.all_dataset_versions()? {
            let to = Artifact::Dataset(v.reference());
            for from in v.op.inputs() {
                out.push(Edge {
                    from,
                    to: to.clone(),
                    op: v.op.name().to_string(),
                });
            }
        }
        Ok(out)
    }

    /// Artifacts upstream (`up`) or downstream of `start`, breadth first, each once, with its
    /// distance from `start`; downstream lists come in dependency order (a parent before its
    /// children).
    pub fn walk(&self, start: &Artifact, up: bool) -> Result<Vec<(usize, Edge)>> {
        let edges = self.edges()?;
        let mut next: BTreeMap<&Artifact, Vec<&Edge>> = BTreeMap::new();
        for e in &edges {
            let k = if up { &e.to } else { &e.from };
            next.entry(k).or_default().push(e);
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut queue = VecDeque::from([(start.clone(), 0usize)]);
        seen.insert(start.clone());
        while let Some((a, d)) = queue.pop_front() {
            for e in next.get(&a).map(|v| v.as_slice()).unwrap_or(&[]) {
                let other = if up { &e.from } else { &e.to };
                out.push((d + 1, (*e).clone()));
                if seen.insert(other.clone()) {
                    queue.push_back((other.clone(), d + 1));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, hash: &[u8], op: Operation) -> DatasetVersion {
        DatasetVersion {
            name: name.into(),
            version: 0,
            kind: DatasetKind::Training,
            hash: quiver_core::hash::hash_bytes(hash),
            state: HashState::default(),
            schema: vec![("x".into(), "int".into())],
            created_micros: 1,
            storage: Storage::File { path: "f".into() },
            op,
        }
    }

    #[test]
    fn versions_number_from_one_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = Registry::open(dir.path()).unwrap();
            let a = reg
                .add_dataset_version(version("s", b"1", Operation::Add { file: "a".into() }))
                .unwrap();
            let same = reg
                .add_dataset_version(version("s", b"1", Operation::Add { file: "a".into() }))
                .unwrap();
            let b = reg
                .add_dataset_version(version("s", b"2", Operation::Add { file: "a".into() }))
                .unwrap();
            assert_eq!((a.version, same.version, b.version), (1, 1, 2));
        }
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.dataset_version("s", None).unwrap().version, 2);
        assert_eq!(
            reg.dataset_version("s", Some(1)).unwrap().hash,
            quiver_core::hash::hash_bytes(b"1")
        );
        let e = reg.dataset_version("s", Some(7)).unwrap_err().to_string();
        assert_eq!(e, "dataset `s` has no version 7; versions: 1..=2");
        let e = reg.dataset_version("nope", None).unwrap_err().to_string();
        assert_eq!(e, "unknown dataset `nope`; datasets: s");
    }

    #[test]
    fn put_conflicts_only_on_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let mut v = version("src", b"1", Operation::Ingest { files: vec![] });
        v.version = 3;
        reg.put_dataset_version(&v).unwrap();
        reg.put_dataset_version(&v).unwrap();
        let mut w = version("src", b"2", Operation::Ingest { files: vec![] });
        w.version = 3;
        assert!(matches!(
            reg.put_dataset_version(&w),
            Err(Error::Conflict { .. })
        ));
    }

    #[test]
    fn lineage_walks_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let spine = reg
            .add_dataset_version(version("spine", b"s", Operation::Add { file: "s".into() }))
            .unwrap();
        let join = JoinRecord {
            spine: spine.reference(),
            spine_timestamp: None,
            full_names: false,
            sources: vec![VersionRef {
                name: "src".into(),
                version: 1,
            }],
            features: vec![FeatureUse {
                view: "v".into(),
                view_version: 2,
                feature: "f".into(),
            }],
            quiver_version: "0".into(),
        };
        let train = reg
            .add_dataset_version(version("train", b"t", Operation::Join(join)))
            .unwrap();
        let part = reg
            .add_dataset_version(version(
                "train_train",
                b"tt",
                Operation::Split {
                    parent: train.reference(),
                    ratio: 0.8,
                    seed: 7,
                    part: "train".into(),
                },
            ))
            .unwrap();
        let down = reg
            .walk(&Artifact::Dataset(spine.reference()), false)
            .unwrap();
        let reached: Vec<String> = down.iter().map(|(d, e)| format!("{d} {}", e.to)).collect();
        assert_eq!(
            reached,
            vec!["1 dataset train@1", "2 dataset train_train@1"]
        );
        let up = reg
            .walk(&Artifact::Dataset(part.reference()), true)
            .unwrap();
        let reached: Vec<String> = up.iter().map(|(d, e)| format!("{d} {}", e.from)).collect();
        assert_eq!(
            reached,
            vec![
                "1 dataset train@1",
                "2 dataset spine@1",
                "2 dataset src@1",
                "2 feature view v@2"
            ]
        );
    }

    #[test]
    fn refs_parse_with_clear_errors() {
        assert_eq!(parse_ref("a").unwrap(), ("a".into(), None));
        assert_eq!(parse_ref("a@3").unwrap(), ("a".into(), Some(3)));
        assert!(parse_ref("a@0").unwrap_err().to_string().contains("from 1"));
        assert!(parse_ref("a@x").unwrap_err().to_string().contains("number"));
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(FORMAT_KEY, &9u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let e = Registry::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("format version 9"), "{e}");
    }
}
