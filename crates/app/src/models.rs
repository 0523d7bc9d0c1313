//! Models (DESIGN §7): registration against training-set versions, the built-in trainer,
//! predictions, and selection under a budget. Composes the registry, the offline store (to
//! read datasets) and `quiver-train`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use datafusion::arrow::array::{Float64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use quiver_registry::{
    ArtifactFile, CodeVersion, DatasetVersion, Environment, FeatureUse, Metric, ModelVersion,
    Operation, parse_ref,
};
use quiver_train::{Algo, Model, Spec};

use crate::catalog::{Catalog, QUIVER_VERSION};
use crate::{Error, Result};

/// What `quiver models register` records besides the artifact.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The model's name.
    pub name: String,
    /// `TRAINSET@VER` (or the latest).
    pub dataset: String,
    /// Training parameters, as (name, value).
    pub params: Vec<(String, String)>,
    /// (metric, `EVALSET@VER`, value)
    pub metrics: Vec<(String, String, f64)>,
    /// Named costs such as latency; `size_bytes` is added from the artifact unless given.
    pub costs: Vec<(String, f64)>,
    /// `NAME@VER` of a parent model.
    pub parent: Option<String>,
    /// The training seed.
    pub seed: Option<u64>,
    /// The algorithm it was trained with (a model needs it to be retrained).
    pub algo: Option<String>,
    /// The label column it predicts (a model needs it to be retrained).
    pub label: Option<String>,
    /// Free-form (key, value) tags.
    pub tags: Vec<(String, String)>,
    /// The source tree the model came from (see [`code_version`]).
    pub code: Option<CodeVersion>,
    /// The feature columns the model reads (default: every feature of the training set).
    pub feature_columns: Option<Vec<String>>,
}

/// The git commit and dirty flag of the work tree holding `dir`, when it is one.
pub fn code_version(dir: &Path) -> Option<CodeVersion> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(CodeVersion { commit, dirty })
}

fn environment() -> Environment {
    Environment {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        quiver_version: QUIVER_VERSION.to_string(),
    }
}

fn dataset_ref(text: &str) -> Result<(String, Option<u64>)> {
    Ok(parse_ref(text)?)
}

impl Catalog {
    /// A lineage node named by a user: `model:NAME[@VER|@ALIAS]`, else a dataset version,
    /// else a feature-view version, else a model version.
    pub fn artifact(&self, text: &str) -> Result<quiver_registry::Artifact> {
        use quiver_registry::Artifact;
        if let Some(m) = text.strip_prefix("model:") {
            return Ok(Artifact::Model(self.registry.model(m)?.reference()));
        }
        if let Ok((name, ver)) = parse_ref(text) {
            if let Ok(v) = self.registry.dataset_version(&name, ver) {
                return Ok(Artifact::Dataset(v.reference()));
            }
            if let Ok(v) = self.registry.view_version(&name, ver) {
                return Ok(Artifact::View(quiver_registry::VersionRef {
                    name: v.view,
                    version: v.version,
                }));
            }
        }
        if let Ok(m) = self.registry.model(text) {
            return Ok(Artifact::Model(m.reference()));
        }
        let (name, ver) = parse_ref(text)?;
        // Nothing by that name: the dataset error names what exists.
        self.registry.dataset_version(&name, ver)?;
        Err(Error::NotFound(format!("unknown artifact {text}")))
    }

    fn dataset(&self, text: &str) -> Result<DatasetVersion> {
        let (name, v) = dataset_ref(text)?;
        Ok(self.registry.dataset_version(&name, v)?)
    }

    /// The join a dataset version descends from (through splits and filters), if any.
    pub fn join_of(&self, v: &DatasetVersion) -> Result<Option<quiver_registry::JoinRecord>> {
        let mut cur = v.clone();
        loop {
            match &cur.op {
                Operation::Join(j) => return Ok(Some(j.clone())),
                Operation::Split { parent, .. } | Operation::Filter { parent, .. } => {
                    cur = self
                        .registry
                        .dataset_version(&parent.name, Some(parent.version))?;
                }
                _ => return Ok(None),
            }
        }
    }

    /// The features of a training set a model reads: all of them, or those whose output
    /// columns (the last columns of a join's output, in request order) are in `columns`.
    async fn features_used(
        &self,
        v: &DatasetVersion,
        columns: Option<&[String]>,
    ) -> Result<Vec<FeatureUse>> {
        let Some(join) = self.join_of(v)? else {
            return Ok(vec![]);
        };
        let Some(columns) = columns else {
            return Ok(join.features);
        };
        let names: Vec<String> = v.schema.iter().map(|(n, _)| n.clone()).collect();
        let first = names.len().saturating_sub(join.features.len());
        Ok(join
            .features
            .into_iter()
            .zip(&names[first..])
            .filter(|(_, n)| columns.contains(n))
            .map(|(f, _)| f)
            .collect())
    }

    /// Register a model version: every reference is checked before anything is stored.
    pub async fn register_model(&self, r: &Registration, artifact: &Path) -> Result<ModelVersion> {
        let bytes = std::fs::read(artifact)
            .map_err(|e| Error::Invalid(format!("--artifact {}: {e}", artifact.display())))?;
        self.register_bytes(r, &bytes, &artifact.display().to_string())
            .await
    }

    /// [`Catalog::register_model`] for artifact bytes already in memory (gRPC, `train`).
    pub async fn register_bytes(
        &self,
        r: &Registration,
        bytes: &[u8],
        file: &str,
    ) -> Result<ModelVersion> {
        check_name(&r.name)?;
        let dataset = self.dataset(&r.dataset)?;
        let mut metrics = Vec::new();
        for (name, eval, value) in &r.metrics {
            let e = self
                .dataset(eval)
                .map_err(|e| Error::Invalid(format!("--metric {name}@{eval}={value}: {e}")))?;
            metrics.push(Metric {
                name: name.clone(),
                eval: e.reference(),
                value: *value,
            });
        }
        let parent = match &r.parent {
            Some(p) => Some(self.registry.model(p)?.reference()),
            None => None,
        };
        let hash = self.registry.store_artifact(bytes)?;
        let mut costs: BTreeMap<String, f64> = r.costs.iter().cloned().collect();
        costs
            .entry("size_bytes".into())
            .or_insert(bytes.len() as f64);
        let m = ModelVersion {
            name: r.name.clone(),
            version: 0,
            artifact: ArtifactFile {
                hash,
                bytes: bytes.len() as u64,
                file: file.to_string(),
            },
            features: self
                .features_used(&dataset, r.feature_columns.as_deref())
                .await?,
            dataset: dataset.reference(),
            algo: r.algo.clone(),
            label: r.label.clone(),
            params: r.params.iter().cloned().collect(),
            metrics,
            costs,
            parent,
            seed: r.seed,
            code: r.code.clone(),
            env: environment(),
            tags: r.tags.iter().cloned().collect(),
            created_micros: quiver_core::time::now_micros(),
        };
        Ok(self.registry.add_model_version(m)?)
    }

    /// The columns a model trains on: the training set's feature columns (the last columns of
    /// a join's output) that are numeric, or every numeric column but the label — read off the
    /// recorded schema, without reading rows.
    fn feature_columns(&self, v: &DatasetVersion, label: &str) -> Result<Vec<String>> {
        let first = match self.join_of(v)? {
            Some(j) => v.schema.len().saturating_sub(j.features.len()),
            None => 0,
        };
        Ok(v.schema[first..]
            .iter()
            .filter(|(n, class)| n != label && matches!(class.as_str(), "int" | "float" | "bool"))
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn rows(&self, v: &DatasetVersion) -> Result<RecordBatch> {
        self.read(v).await?.concat()
    }

    /// Train a model on a training-set version and register it with metrics on `eval` (the
    /// training set itself when none is given), measured costs and lineage.
    #[allow(clippy::too_many_arguments)]
    pub async fn train(
        &self,
        name: &str,
        dataset: &str,
        label: &str,
        algo: Algo,
        params: BTreeMap<String, String>,
        seed: u64,
        eval: Option<&str>,
        features: Option<Vec<String>>,
        mut reg: Registration,
    ) -> Result<ModelVersion> {
        check_name(name)?;
        let train_v = self.dataset(dataset)?;
        let eval_v = match eval {
            Some(e) => self.dataset(e)?,
            None => train_v.clone(),
        };
        let features = match features {
            Some(f) => f,
            None => self.feature_columns(&train_v, label)?,
        };
        let data = self.rows(&train_v).await?;
        let spec = Spec {
            algo,
            label: label.to_string(),
            features,
            params: params.clone(),
            seed,
        };
        let model = quiver_train::train(&data, &spec).map_err(train_err)?;
        let eval_rows = self.rows(&eval_v).await?;
        let metrics = model.evaluate(&eval_rows).map_err(train_err)?;
        let bytes = model.to_bytes();
        let (mean, p99) = latency(&model, &eval_rows)?;
        reg.name = name.to_string();
        reg.dataset = train_v.reference().to_string();
        reg.feature_columns = Some(model.features.clone());
        reg.params = params.into_iter().collect();
        reg.seed = Some(seed);
        reg.algo = Some(algo.name().to_string());
        reg.label = Some(label.to_string());
        reg.metrics = metrics
            .into_iter()
            .map(|(k, v)| (k, eval_v.reference().to_string(), v))
            .collect();
        reg.costs.extend([
            ("latency_mean_ms".into(), mean),
            ("latency_p99_ms".into(), p99),
        ]);
        self.register_bytes(&reg, &bytes, &format!("{}.json", algo.name()))
            .await
    }

    /// Rebuild a model version from its lineage (DESIGN §7 "Reproduce"): its training set
    /// is rebuilt from the sources and definitions it was made from (and its hash compared),
    /// then the model is trained again on those rebuilt rows with the recorded algorithm,
    /// label, feature columns, parameters and seed, and its artifact hash compared. Models
    /// registered from outside Quiver cannot be retrained here, and say so.
    pub async fn reproduce_model(&self, model: &str) -> Result<ModelReproduction> {
        let m = self.registry.model(model)?;
        let stored = self.runnable(&m)?;
        let (Some(algo), Some(label)) = (&m.algo, &m.label) else {
            return Err(Error::Invalid(format!(
                "{}: registered without an algorithm and label; only models `quiver train` made can be rebuilt",
                m.reference()
            )));
        };
        let target = self
            .registry
            .dataset_version(&m.dataset.name, Some(m.dataset.version))?;
        let rows = self.rebuild(&target).await?;
        let (data_hash, _) = crate::catalog::hash_table(&rows.schema, &rows.batches)?;
        let spec = Spec {
            algo: algo.parse().map_err(train_err)?,
            label: label.clone(),
            features: stored.features.clone(),
            params: m.params.clone(),
            seed: m.seed.unwrap_or(0),
        };
        let rebuilt = quiver_train::train(&rows.concat()?, &spec).map_err(train_err)?;
        Ok(ModelReproduction {
            rebuilt: quiver_core::hash::hash_bytes(&rebuilt.to_bytes()),
            dataset_rebuilt: data_hash,
            dataset: target,
            model: m,
        })
    }

    /// Evaluate a model version (one Quiver trained) on a dataset version and record the
    /// metrics with it.
    pub async fn evaluate(&self, model: &str, eval: &str) -> Result<ModelVersion> {
        let m = self.registry.model(model)?;
        let eval_v = self.dataset(eval)?;
        let runnable = self.runnable(&m)?;
        let rows = self.rows(&eval_v).await?;
        let metrics = runnable.evaluate(&rows).map_err(train_err)?;
        let metrics: Vec<Metric> = metrics
            .into_iter()
            .map(|(name, value)| Metric {
                name,
                eval: eval_v.reference(),
                value,
            })
            .collect();
        Ok(self.registry.add_metrics(&m.name, m.version, &metrics)?)
    }

    /// The model behind a version, when its artifact is one Quiver can run.
    fn runnable(&self, m: &ModelVersion) -> Result<Model> {
        let bytes = self.registry.read_artifact(&m.artifact.hash)?;
        Model::from_bytes(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a model Quiver can run ({e}); it was registered from {}",
                m.reference(),
                m.artifact.file
            ))
        })
    }

    /// Predictions of a model version for the rows of a dataset (or file): the rows plus a
    /// `prediction` column.
    pub async fn predict(&self, model: &str, data: RecordBatch) -> Result<RecordBatch> {
        let m = self.registry.model(model)?;
        let model = self.runnable(&m)?;
        let p = model.predict(&data).map_err(train_err)?;
        let mut fields: Vec<Field> = data
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("prediction", DataType::Float64, false));
        let mut cols = data.columns().to_vec();
        cols.push(std::sync::Arc::new(Float64Array::from(p)));
        Ok(
            RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), cols)
                .map_err(quiver_offline::Error::from)?,
        )
    }

    /// The rows of a dataset reference or a file.
    pub async fn dataset_or_file(&self, text: &str) -> Result<RecordBatch> {
        let p = Path::new(text);
        if p.exists() {
            let ctx = quiver_offline::session(&Default::default())?;
            let (schema, batches) = quiver_offline::source::read_table(&ctx, p).await?;
            return Ok(
                datafusion::arrow::compute::concat_batches(&schema, &batches)
                    .map_err(quiver_offline::Error::from)?,
            );
        }
        let v = self.dataset(text)?;
        self.rows(&v).await
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['@', '/', '\0']) {
        return Err(Error::Invalid(format!(
            "model name {name:?}: must be non-empty without `@` or `/`"
        )));
    }
    Ok(())
}

/// A model version rebuilt from its lineage.
#[derive(Debug, Clone)]
pub struct ModelReproduction {
    /// The model version as registered.
    pub model: ModelVersion,
    /// Its training set as recorded, and the hash of the rebuilt one.
    pub dataset: quiver_registry::DatasetVersion,
    /// The hash of the training set rebuilt from its lineage.
    pub dataset_rebuilt: quiver_core::hash::ContentHash,
    /// The hash of the artifact trained again.
    pub rebuilt: quiver_core::hash::ContentHash,
}

impl ModelReproduction {
    /// Whether both the training set and the artifact came out with their recorded hashes.
    pub fn identical(&self) -> bool {
        self.rebuilt == self.model.artifact.hash && self.dataset_rebuilt == self.dataset.hash
    }
}

fn train_err(e: quiver_train::Error) -> Error {
    Error::Invalid(e.to_string())
}

/// Mean and p99 latency of one-row predictions, in milliseconds, over up to 2000 rows.
fn latency(model: &Model, rows: &RecordBatch) -> Result<(f64, f64)> {
    let n = rows.num_rows().min(2000);
    if n == 0 {
        return Ok((0.0, 0.0));
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let one = rows.slice(i, 1);
        let t = Instant::now();
        let p = model.predict(&one).map_err(train_err)?;
        std::hint::black_box(p);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = times.iter().sum::<f64>() / n as f64;
    times.sort_by(f64::total_cmp);
    let p99 = times[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    Ok((mean, p99))
}

/// One candidate configuration of successive halving.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The algorithm to train.
    pub algo: Algo,
    /// Its parameters, by name.
    pub params: BTreeMap<String, String>,
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.algo.name())?;
        for (k, v) in &self.params {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Every algorithm × the cartesian product of the grid values it takes.
pub fn grid(algos: &[Algo], grid: &[(String, Vec<String>)]) -> Vec<Config> {
    let mut out = Vec::new();
    for &algo in algos {
        let mut configs = vec![BTreeMap::new()];
        for (k, values) in grid {
            if !quiver_train::params_of(algo).contains(&k.as_str()) {
                continue;
            }
            configs = configs
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(k.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        out.extend(configs.into_iter().map(|params| Config { algo, params }));
    }
    out
}

/// What successive halving did.
#[derive(Debug)]
pub struct Halving {
    /// The rungs: how many configurations train on how many rows at each.
    pub plan: Vec<quiver_registry::select::Rung>,
    /// Training rows used in all (never above the budget).
    pub rows_used: usize,
    /// Every model trained, with its rung and metric.
    pub trained: Vec<(usize, ModelVersion, f64)>,
    /// The top `k`: the best of the last rung first, then those that went out earlier.
    pub top: Vec<(ModelVersion, f64)>,
}

/// A seeded permutation of `0..n` (Fisher–Yates over SplitMix64).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// The settings of one halving run.
#[derive(Debug, Clone)]
pub struct HalvingSpec {
    /// The name every trained model is registered under.
    pub name: String,
    /// The training set, `NAME[@VER]`.
    pub dataset: String,
    /// The dataset the metric is measured on, `NAME[@VER]`.
    pub eval: String,
    /// The label column.
    pub label: String,
    /// The metric configurations are ranked by.
    pub metric: String,
    /// Whether a lower metric is better.
    pub minimize: bool,
    /// The candidate configurations.
    pub configs: Vec<Config>,
    /// Total training rows over all rungs.
    pub budget: usize,
    /// The halving factor: each rung keeps the best 1/η.
    pub eta: usize,
    /// How many models `top` keeps (at least one).
    pub k: usize,
    /// Seed of the row samples and of every training run.
    pub seed: u64,
}

impl Catalog {
    /// Budgeted successive halving: rung by rung, train the surviving configurations on a
    /// larger seeded sample (samples are nested), register each model, keep the best 1/η.
    pub async fn halving(&self, h: &HalvingSpec, reg: Registration) -> Result<Halving> {
        if h.configs.is_empty() {
            return Err(Error::Invalid(
                "halving: no candidate configurations".into(),
            ));
        }
        let train_v = self.dataset(&h.dataset)?;
        let eval_v = self.dataset(&h.eval)?;
        let data = self.rows(&train_v).await?;
        let eval_rows = self.rows(&eval_v).await?;
        let features = self.feature_columns(&train_v, &h.label)?;
        let plan = quiver_registry::select::halving_plan(
            h.configs.len(),
            data.num_rows(),
            h.budget,
            h.eta,
        );
        if plan.is_empty() {
            return Err(Error::Invalid(format!(
                "--budget {}: too small to train {} configurations on even one row each",
                h.budget,
                h.configs.len()
            )));
        }
        let order = permutation(data.num_rows(), h.seed);
        let mut alive: Vec<usize> = (0..h.configs.len()).collect();
        let mut trained = Vec::new();
        let mut out_early: Vec<(usize, ModelVersion, f64)> = Vec::new();
        let mut rows_used = 0;
        let mut last: Vec<(ModelVersion, f64)> = Vec::new();
        for (r, rung) in plan.iter().enumerate() {
            alive.truncate(rung.configs);
            let idx = datafusion::arrow::array::UInt64Array::from(
                order[..rung.rows]
                    .iter()
                    .map(|i| *i as u64)
                    .collect::<Vec<_>>(),
            );
            let sample = datafusion::arrow::compute::take_record_batch(&data, &idx)
                .map_err(quiver_offline::Error::from)?;
            let mut scored: Vec<(usize, ModelVersion, f64)> = Vec::new();
            for &c in &alive {
                let cfg = &h.configs[c];
                let spec = Spec {
                    algo: cfg.algo,
                    label: h.label.clone(),
                    features: features.clone(),
                    params: cfg.params.clone(),
                    seed: h.seed,
                };
                rows_used += sample.num_rows();
                let model = quiver_train::train(&sample, &spec).map_err(train_err)?;
                let metrics = model.evaluate(&eval_rows).map_err(train_err)?;
                let Some(score) = metrics.get(&h.metric).copied() else {
                    return Err(Error::Invalid(format!(
                        "--metric {}: {} models report {}",
                        h.metric,
                        cfg.algo.name(),
                        metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                };
                let (mean, p99) = latency(&model, &eval_rows)?;
                let mut reg = reg.clone();
                reg.name = h.name.clone();
                reg.dataset = train_v.reference().to_string();
                reg.feature_columns = Some(features.clone());
                reg.params = cfg.params.clone().into_iter().collect();
                reg.seed = Some(h.seed);
                reg.algo = Some(cfg.algo.name().to_string());
                reg.label = Some(h.label.clone());
                reg.metrics = metrics
                    .into_iter()
                    .map(|(k, v)| (k, eval_v.reference().to_string(), v))
                    .collect();
                reg.costs.extend([
                    ("latency_mean_ms".into(), mean),
                    ("latency_p99_ms".into(), p99),
                    ("train_rows".into(), sample.num_rows() as f64),
                ]);
                reg.tags.extend([
                    ("halving_rung".into(), r.to_string()),
                    ("halving_seed".into(), h.seed.to_string()),
                ]);
                let bytes = model.to_bytes();
                let m = self
                    .register_bytes(&reg, &bytes, &format!("{}.json", cfg.algo.name()))
                    .await?;
                trained.push((r, m.clone(), score));
                scored.push((c, m, score));
            }
            // Best first; ties by configuration order, so the same seed gives the same result.
            scored.sort_by(|a, b| {
                let (x, y) = if h.minimize { (a.2, b.2) } else { (b.2, a.2) };
                x.total_cmp(&y).then(a.0.cmp(&b.0))
            });
            let keep = plan.get(r + 1).map(|n| n.configs).unwrap_or(scored.len());
            for s in scored.iter().skip(keep).rev() {
                out_early.push(s.clone());
            }
            alive = scored.iter().map(|s| s.0).collect();
            last = scored.into_iter().map(|(_, m, v)| (m, v)).collect();
        }
        let mut top = last;
        top.truncate(plan.last().map(|r| r.configs).unwrap_or(0));
        top.extend(out_early.into_iter().rev().map(|(_, m, v)| (m, v)));
        top.truncate(h.k.max(1));
        Ok(Halving {
            plan,
            rows_used,
            trained,
            top,
        })
    }
}

/// The evaluation dataset version `on` names (`NAME[@VERSION]`).
pub fn eval_ref(cat: &Catalog, on: &str) -> Result<quiver_registry::VersionRef> {
    let (name, v) = parse_ref(on)?;
    Ok(cat.registry.dataset_version(&name, v)?.reference())
}

/// Every model version, or those a SQL `filter` over `model_versions` keeps.
pub async fn candidates(cat: &Catalog, filter: Option<&str>) -> Result<Vec<ModelVersion>> {
    let all = cat.registry.all_model_versions()?;
    Ok(match filter.filter(|f| !f.trim().is_empty()) {
        None => all,
        Some(f) => {
            let keep = crate::sql::filter_models(cat, f).await?;
            all.into_iter()
                .filter(|m| keep.contains(&(m.name.clone(), m.version)))
                .collect()
        }
    })
}

/// The versions of model `name`, or the latest version of every model when `name` is empty.
pub fn list_models(cat: &Catalog, name: &str) -> Result<Vec<ModelVersion>> {
    if name.is_empty() {
        return cat
            .registry
            .model_names()?
            .iter()
            .map(|n| Ok(cat.registry.model(n)?))
            .collect();
    }
    let all = cat.registry.model_versions(name)?;
    if all.is_empty() {
        // Not found: the registry's error names it.
        cat.registry.model(name)?;
    }
    Ok(all)
}
