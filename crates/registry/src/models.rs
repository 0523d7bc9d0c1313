//! Model versions (DESIGN §7): what a model was trained on, how, how well it does and what it
//! costs; content-addressed artifacts; aliases and tags; and the impact of a change.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use quiver_core::hash::ContentHash;
use serde::{Deserialize, Serialize};

use crate::{
    Artifact, Edge, Error, FeatureUse, Operation, Registry, Result, VersionRef, key, prefix,
};

/// A model artifact in the store, named by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// The BLAKE3 hash of its bytes, which names its file.
    pub hash: ContentHash,
    /// Its size in bytes.
    pub bytes: u64,
    /// The file name it was registered from (for information).
    pub file: String,
}

/// A metric measured on an evaluation dataset version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The metric's name, such as `rmse` or `auc`.
    pub name: String,
    /// The evaluation dataset version it was measured on.
    pub eval: VersionRef,
    /// The value measured.
    pub value: f64,
}

/// The source tree a model was made from, when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeVersion {
    /// The git commit checked out.
    pub commit: String,
    /// Whether the work tree had uncommitted changes.
    pub dirty: bool,
}

/// Where a model was registered: the machine and the Quiver build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// The operating system, as Rust names it (`linux`, `macos`, …).
    pub os: String,
    /// The CPU architecture, as Rust names it (`x86_64`, `aarch64`, …).
    pub arch: String,
    /// The version of Quiver that registered it.
    pub quiver_version: String,
}

/// One version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// The model's name.
    pub name: String,
    /// From 1, in the order versions were registered.
    pub version: u64,
    /// The stored artifact.
    pub artifact: ArtifactFile,
    /// The training dataset version.
    pub dataset: VersionRef,
    /// The features it was trained on, with their definition versions (from the training
    /// set's lineage).
    pub features: Vec<FeatureUse>,
    /// The algorithm it was trained with; needed to retrain it.
    pub algo: Option<String>,
    /// The label column it predicts; needed to retrain it.
    pub label: Option<String>,
    /// Training parameters by name.
    pub params: BTreeMap<String, String>,
    /// Metrics measured on evaluation dataset versions.
    pub metrics: Vec<Metric>,
    /// Costs by name: `size_bytes`, `latency_mean_ms`, `latency_p99_ms`, or any given.
    pub costs: BTreeMap<String, f64>,
    /// The model version it was derived from, if any (a `derive` lineage edge).
    pub parent: Option<VersionRef>,
    /// The training seed, if any.
    pub seed: Option<u64>,
    /// The source tree it was made from, when known.
    pub code: Option<CodeVersion>,
    /// Where it was registered.
    pub env: Environment,
    /// Free tags by name.
    pub tags: BTreeMap<String, String>,
    /// When it was registered, in microseconds since the epoch.
    pub created_micros: i64,
}

impl ModelVersion {
    /// This version as `name@version`.
    pub fn reference(&self) -> VersionRef {
        VersionRef {
            name: self.name.clone(),
            version: self.version,
        }
    }

    /// The metric of this name on an evaluation dataset (any version when `eval.version` is 0).
    pub fn metric(&self, name: &str, eval: &VersionRef) -> Option<f64> {
        self.metrics
            .iter()
            .filter(|m| {
                m.name == name
                    && m.eval.name == eval.name
                    && (eval.version == 0 || m.eval.version == eval.version)
            })
            .map(|m| m.value)
            .next_back()
    }
}

/// Which version of a model a reference means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSel {
    /// The latest version.
    Latest,
    /// A version by number.
    Version(u64),
    /// The version an alias points at.
    Alias(String),
}

/// `NAME`, `NAME@VERSION` or `NAME@ALIAS`.
pub fn parse_model_ref(text: &str) -> Result<(String, ModelSel)> {
    let bad = |message: &str| Error::BadRef {
        text: text.to_string(),
        message: message.to_string(),
    };
    match text.rsplit_once('@') {
        None if text.is_empty() => Err(bad("empty name")),
        None => Ok((text.to_string(), ModelSel::Latest)),
        Some(("", _)) | Some((_, "")) => Err(bad("write NAME@VERSION or NAME@ALIAS")),
        Some((n, v)) => match v.parse::<u64>() {
            Ok(0) => Err(bad("versions are numbered from 1")),
            Ok(v) => Ok((n.to_string(), ModelSel::Version(v))),
            Err(_) => Ok((n.to_string(), ModelSel::Alias(v.to_string()))),
        },
    }
}

fn alias_key(name: &str, alias: &str) -> Vec<u8> {
    let mut k = prefix(name);
    k.extend_from_slice(alias.as_bytes());
    k
}

/// What changed, for [`Registry::impact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A dataset (a source) at a version: everything built from its older versions is stale.
    Dataset(VersionRef),
    /// A feature's definition as of a view version: everything built from a view version
    /// where the feature was defined otherwise is stale.
    Feature {
        /// The feature view's name.
        view: String,
        /// The feature's name within the view.
        feature: String,
        /// The view version whose definition of the feature is current.
        version: u64,
    },
}

impl Registry {
    fn artifacts_dir(&self) -> PathBuf {
        self.path.join("artifacts")
    }

    /// The file holding an artifact.
    pub fn artifact_path(&self, hash: &ContentHash) -> PathBuf {
        self.artifacts_dir().join(hash.to_string())
    }

    /// Store bytes under their hash (once; a crash leaves at most a temporary file).
    pub fn store_artifact(&self, bytes: &[u8]) -> Result<ContentHash> {
        let hash = quiver_core::hash::hash_bytes(bytes);
        let path = self.artifact_path(&hash);
        if path.exists() {
            return Ok(hash);
        }
        let io = |e: std::io::Error| Error::Sled {
            path: path.clone(),
            source: sled::Error::Io(e),
        };
        std::fs::create_dir_all(self.artifacts_dir()).map_err(io)?;
        let tmp = self
            .artifacts_dir()
            .join(format!(".{hash}.{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(hash)
    }

    /// An artifact's bytes, checked against its hash.
    pub fn read_artifact(&self, hash: &ContentHash) -> Result<Vec<u8>> {
        let path = self.artifact_path(hash);
        let bytes = std::fs::read(&path).map_err(|e| Error::Sled {
            path: path.clone(),
            source: sled::Error::Io(e),
        })?;
        if quiver_core::hash::hash_bytes(&bytes) != *hash {
            return Err(Error::Corrupt {
                path,
                key: hash.to_string(),
                message: "artifact content does not match its hash".into(),
            });
        }
        Ok(bytes)
    }

    /// Register a model version with the next number (the number in `m` is ignored).
    pub fn add_model_version(&self, mut m: ModelVersion) -> Result<ModelVersion> {
        loop {
            let latest = self.model_versions(&m.name)?.pop();
            m.version = latest.map(|l| l.version).unwrap_or(0) + 1;
            let bytes = self.encode(&m, &m.reference().to_string())?;
            if self
                .models
                .compare_and_swap(key(&m.name, m.version), None as Option<&[u8]>, Some(bytes))
                .map_err(self.err())?
                .is_ok()
            {
                self.flush()?;
                return Ok(m);
            }
        }
    }

    fn encode<T: Serialize>(&self, v: &T, what: &str) -> Result<Vec<u8>> {
        serde_json::to_vec(v).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            key: what.to_string(),
            message: e.to_string(),
        })
    }

    /// Every version of a model, oldest first (empty when unknown).
    pub fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        self.models
            .scan_prefix(prefix(name))
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                self.decode(&k, &v)
            })
            .collect()
    }

    /// Every model version, by name then version.
    pub fn all_model_versions(&self) -> Result<Vec<ModelVersion>> {
        self.models
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                self.decode(&k, &v)
            })
            .collect()
    }

    /// The names of all registered models, sorted.
    pub fn model_names(&self) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        for m in self.all_model_versions()? {
            out.insert(m.name);
        }
        Ok(out.into_iter().collect())
    }

    /// A model version by reference (`NAME`, `NAME@VER`, `NAME@ALIAS`), or an error naming
    /// what exists.
    pub fn model(&self, text: &str) -> Result<ModelVersion> {
        let (name, sel) = parse_model_ref(text)?;
        let all = self.model_versions(&name)?;
        let Some(latest) = all.last() else {
            return Err(Error::UnknownModel {
                name,
                known: self.model_names()?,
            });
        };
        let version = match sel {
            ModelSel::Latest => latest.version,
            ModelSel::Version(v) => v,
            ModelSel::Alias(a) => self.alias(&name, &a)?.ok_or_else(|| Error::UnknownAlias {
                name: name.clone(),
                alias: a.clone(),
                known: self
                    .aliases(&name)
                    .map(|v| v.into_iter().map(|(a, _)| a).collect())
                    .unwrap_or_default(),
            })?,
        };
        all.iter()
            .find(|m| m.version == version)
            .cloned()
            .ok_or(Error::UnknownModelVersion {
                name,
                version,
                latest: latest.version,
            })
    }

    /// Point an alias at a version (moving it if it pointed elsewhere).
    pub fn set_alias(&self, name: &str, version: u64, alias: &str) -> Result<()> {
        if alias.is_empty() || alias.parse::<u64>().is_ok() || alias.contains('@') {
            return Err(Error::BadRef {
                text: alias.to_string(),
                message: "an alias is a name that is not a number and has no `@`".into(),
            });
        }
        self.model(&format!("{name}@{version}"))?;
        self.aliases
            .insert(alias_key(name, alias), &version.to_be_bytes())
            .map_err(self.err())?;
        self.flush()
    }

    /// The version an alias of a model points at, if it is set.
    pub fn alias(&self, name: &str, alias: &str) -> Result<Option<u64>> {
        Ok(self
            .aliases
            .get(alias_key(name, alias))
            .map_err(self.err())?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
    }

    /// A model's aliases and the versions they point at.
    pub fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>> {
        let p = prefix(name);
        self.aliases
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                Ok((
                    String::from_utf8_lossy(&k[p.len()..]).into_owned(),
                    u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
                ))
            })
            .collect()
    }

    /// Set (or, with an empty value, remove) free tags on a model version.
    pub fn set_tags(&self, name: &str, version: u64, tags: &[(String, String)]) -> Result<()> {
        let k = key(name, version);
        loop {
            let mut m = self.model(&format!("{name}@{version}"))?;
            let old = self.encode(&m, &k.len().to_string())?;
            for (t, v) in tags {
                if v.is_empty() {
                    m.tags.remove(t);
                } else {
                    m.tags.insert(t.clone(), v.clone());
                }
            }
            let new = self.encode(&m, &m.reference().to_string())?;
            if self
                .models
                .compare_and_swap(&k, Some(old), Some(new))
                .map_err(self.err())?
                .is_ok()
            {
                return self.flush();
            }
        }
    }

    /// Record metrics measured after registration (an evaluation on another dataset); a
    /// metric already recorded for the same name and evaluation set is replaced.
    pub fn add_metrics(
        &self,
        name: &str,
        version: u64,
        metrics: &[Metric],
    ) -> Result<ModelVersion> {
        let k = key(name, version);
        loop {
            let m = self.model(&format!("{name}@{version}"))?;
            let old = self.encode(&m, name)?;
            let mut new_m = m.clone();
            for x in metrics {
                new_m
                    .metrics
                    .retain(|y| !(y.name == x.name && y.eval == x.eval));
                new_m.metrics.push(x.clone());
            }
            let new = self.encode(&new_m, name)?;
            if self
                .models
                .compare_and_swap(&k, Some(old), Some(new))
                .map_err(self.err())?
                .is_ok()
            {
                self.flush()?;
                return Ok(new_m);
            }
        }
    }

    /// Lineage edges of models: training set → model (`train`), evaluation sets → model
    /// (`evaluate`), parent → child (`derive`).
    pub(crate) fn model_edges(&self) -> Result<Vec<Edge>> {
        let mut out = Vec::new();
        for m in self.all_model_versions()? {
            let to = Artifact::Model(m.reference());
            out.push(Edge {
                from: Artifact::Dataset(m.dataset.clone()),
                to: to.clone(),
                op: "train".into(),
            });
            let mut evals: Vec<&VersionRef> = Vec::new();
            for metric in &m.metrics {
                if !evals.contains(&&metric.eval) && metric.eval != m.dataset {
                    evals.push(&metric.eval);
                }
            }
            for e in evals {
                out.push(Edge {
                    from: Artifact::Dataset(e.clone()),
                    to: to.clone(),
                    op: "evaluate".into(),
                });
            }
            if let Some(p) = &m.parent {
                out.push(Edge {
                    from: Artifact::Model(p.clone()),
                    to: to.clone(),
                    op: "derive".into(),
                });
            }
        }
        Ok(out)
    }

    /// Everything built from an outdated version and therefore stale, in dependency order
    /// (whatever an artifact was built from comes before it).
    pub fn impact(&self, change: &Change) -> Result<Vec<Artifact>> {
        let edges = self.edges()?;
        let mut roots: BTreeSet<Artifact> = BTreeSet::new();
        match change {
            Change::Dataset(r) => {
                for v in self.dataset_versions(&r.name)? {
                    if v.version < r.version {
                        roots.insert(Artifact::Dataset(v.reference()));
                    }
                }
            }
            Change::Feature {
                view,
                feature,
                version,
            } => {
                let versions = self.view_versions(view)?;
                let current = versions
                    .iter()
                    .find(|v| v.version == *version)
                    .and_then(|v| v.definition.feature_hash(feature));
                let outdated: BTreeSet<u64> = versions
                    .iter()
                    .filter(|v| {
                        v.version < *version && v.definition.feature_hash(feature) != current
                    })
                    .map(|v| v.version)
                    .collect();
                // Only what used this feature, not every feature of the view.
                for d in self.all_dataset_versions()? {
                    if let Operation::Join(j) = &d.op
                        && j.features.iter().any(|f| {
                            &f.view == view
                                && &f.feature == feature
                                && outdated.contains(&f.view_version)
                        })
                    {
                        roots.insert(Artifact::Dataset(d.reference()));
                    }
                }
                for m in self.all_model_versions()? {
                    if m.features.iter().any(|f| {
                        &f.view == view
                            && &f.feature == feature
                            && outdated.contains(&f.view_version)
                    }) {
                        roots.insert(Artifact::Model(m.reference()));
                    }
                }
            }
        }
        // The closure downstream of the roots.
        let mut stale: BTreeSet<Artifact> = BTreeSet::new();
        let mut frontier: Vec<Artifact> = roots.iter().cloned().collect();
        while let Some(a) = frontier.pop() {
            for e in edges.iter().filter(|e| e.from == a) {
                if stale.insert(e.to.clone()) {
                    frontier.push(e.to.clone());
                }
            }
        }
        if matches!(change, Change::Feature { .. }) {
            stale.extend(roots.iter().cloned());
        }
        // Kahn's algorithm over the stale subgraph; ties in name order.
        let mut indegree: BTreeMap<&Artifact, usize> = stale.iter().map(|a| (a, 0)).collect();
        for e in &edges {
            if stale.contains(&e.from)
                && let Some(d) = indegree.get_mut(&e.to)
            {
                *d += 1;
            }
        }
        let mut ready: BTreeSet<&Artifact> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(a, _)| *a)
            .collect();
        let mut out = Vec::new();
        while let Some(a) = ready.pop_first() {
            out.push(a.clone());
            for e in edges.iter().filter(|e| &e.from == a) {
                if let Some(d) = indegree.get_mut(&e.to) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(&e.to);
                    }
                }
            }
        }
        Ok(out)
    }
}
