//! `models …`, `train`, `predict` and `select …`: the model registry
//! (DESIGN §7).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use quiver_app::models::{Config, HalvingSpec, Registration, code_version, grid};
use quiver_core::time::format_instant;
use quiver_registry::ModelVersion;
use quiver_registry::select::{Best, Limit, parse_limit};
use quiver_train::Algo;

use super::{catalog, json};
use crate::table::print_table;

#[derive(Subcommand)]
pub enum Models {
    /// Register a model version trained elsewhere.
    Register {
        name: String,
        /// The model file, stored content-addressed.
        #[arg(long)]
        artifact: PathBuf,
        /// The training dataset, TRAINSET[@VER].
        #[arg(long)]
        dataset: String,
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
        /// A metric on an evaluation dataset: NAME@EVALSET[@VER]=VALUE.
        #[arg(long = "metric", value_name = "NAME@EVALSET@VER=V")]
        metrics: Vec<String>,
        #[arg(long = "cost", value_name = "NAME=V")]
        costs: Vec<String>,
        /// The model this one was derived from, NAME@VER.
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long = "tag", value_name = "K=V")]
        tags: Vec<String>,
    },
    /// Point an alias (`champion`, …) at a version; an alias moves.
    Alias { model: String, alias: String },
    /// Set free tags on a version (`K=` removes one).
    Tag {
        model: String,
        #[arg(required = true, value_name = "K=V")]
        tags: Vec<String>,
    },
    /// Every model: latest version, aliases.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One version: NAME, NAME@VER or NAME@ALIAS.
    Show {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Params, metrics, costs and lineage of two versions side by side.
    Diff { a: String, b: String },
    /// Evaluate a model Quiver trained on another dataset version and record the metrics.
    Evaluate {
        model: String,
        /// The evaluation dataset, EVALSET[@VER].
        #[arg(long)]
        on: String,
    },
    /// Rebuild a version Quiver trained from its lineage — its training set from the
    /// sources, then the model with the recorded algorithm, parameters and seed — and compare
    /// content hashes (exit 1 when they differ). Same as `quiver reproduce model:NAME@VER`.
    Reproduce { model: String },
}

/// `quiver models reproduce`: exit 0 when the training set and the artifact rebuild to the
/// recorded hashes, 1 when either differs.
pub(super) async fn reproduce_model(model: &str, repo: &Path) -> Result<std::process::ExitCode> {
    let cat = catalog(repo)?;
    cat.sync_sources().await?;
    let r = cat.reproduce_model(model).await?;
    let same = |a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
        if a.to_string() == b.to_string() {
            format!("identical (hash {a})")
        } else {
            format!("differs: recorded hash {a}, rebuilt {b}")
        }
    };
    println!(
        "{}: training set {}: {}",
        r.model.reference(),
        r.dataset.reference(),
        same(&r.dataset.hash, &r.dataset_rebuilt)
    );
    println!(
        "{}: artifact: {}",
        r.model.reference(),
        same(&r.model.artifact.hash, &r.rebuilt)
    );
    Ok(if r.identical() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

#[derive(Subcommand)]
pub enum Select {
    /// The version with the best metric on an evaluation set within the cost limits.
    Best {
        #[arg(long)]
        metric: String,
        /// The evaluation dataset, EVALSET[@VER] (default: its latest version).
        #[arg(long)]
        on: String,
        /// A SQL filter over `model_versions` choosing the candidates.
        #[arg(long = "where")]
        filter: Option<String>,
        /// A cost limit, COST=VALUE (repeat).
        #[arg(long = "max", value_name = "COST=V")]
        limits: Vec<String>,
        #[arg(long)]
        minimize: bool,
        #[arg(long)]
        json: bool,
    },
    /// The versions not dominated on the metric and the costs.
    Pareto {
        #[arg(long)]
        metric: String,
        #[arg(long)]
        on: String,
        #[arg(long = "where")]
        filter: Option<String>,
        /// Costs to trade off (default: latency_p99_ms and size_bytes).
        #[arg(long = "cost")]
        costs: Vec<String>,
        #[arg(long)]
        minimize: bool,
        #[arg(long)]
        json: bool,
    },
    /// Budgeted successive halving over algorithms × a parameter grid.
    Halving {
        /// The model name to register every trained version under.
        name: String,
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        eval: String,
        #[arg(long)]
        label: String,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        minimize: bool,
        /// Algorithms, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        algo: Vec<String>,
        /// A parameter and its values, K=V1,V2 (repeat).
        #[arg(long = "grid", value_name = "K=V1,V2")]
        grid: Vec<String>,
        /// Total training rows over all rungs.
        #[arg(long)]
        budget: usize,
        #[arg(long, default_value_t = 3)]
        eta: usize,
        /// How many to return.
        #[arg(long, default_value_t = 3)]
        k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn kv(text: &str, flag: &str) -> Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("--{flag} {text:?}: write KEY=VALUE"))?;
    if k.trim().is_empty() {
        bail!("--{flag} {text:?}: the key is empty");
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

fn number(text: &str, flag: &str) -> Result<f64> {
    let (k, v) = kv(text, flag)?;
    let x: f64 = v
        .parse()
        .map_err(|_| anyhow!("--{flag} {text:?}: {v:?} is not a number"))?;
    if !x.is_finite() {
        bail!("--{flag} {text:?}: {k} must be finite");
    }
    Ok(x)
}

impl Models {
    /// Run the subcommand (`reproduce` exits 1 when the rebuild differs).
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        if let Models::Reproduce { model } = &self {
            return reproduce_model(model, repo).await;
        }
        models(self, repo).await?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Select {
    /// Choose: exit 1 when no version fits.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        select(self, repo).await
    }
}

async fn models(cmd: Models, repo: &Path) -> Result<()> {
    let cat = catalog(repo)?;
    match cmd {
        Models::Register {
            name,
            artifact,
            dataset,
            params,
            metrics,
            costs,
            parent,
            seed,
            tags,
        } => {
            let mut r = Registration {
                name,
                dataset,
                parent,
                seed,
                code: code_version(&std::env::current_dir()?),
                ..Default::default()
            };
            for p in &params {
                r.params.push(kv(p, "param")?);
            }
            for t in &tags {
                r.tags.push(kv(t, "tag")?);
            }
            for c in &costs {
                r.costs.push((kv(c, "cost")?.0, number(c, "cost")?));
            }
            for m in &metrics {
                let (lhs, _) = m
                    .rsplit_once('=')
                    .ok_or_else(|| anyhow!("--metric {m:?}: write NAME@EVALSET@VER=VALUE"))?;
                let value = number(&format!("x={}", &m[lhs.len() + 1..]), "metric")
                    .map_err(|_| anyhow!("--metric {m:?}: the value is not a number"))?;
                let (metric, eval) = lhs
                    .split_once('@')
                    .ok_or_else(|| anyhow!("--metric {m:?}: write NAME@EVALSET@VER=VALUE"))?;
                r.metrics
                    .push((metric.to_string(), eval.to_string(), value));
            }
            let v = cat.register_model(&r, &artifact).await?;
            println!(
                "{}: artifact {} ({} bytes), trained on {}",
                v.reference(),
                &v.artifact.hash.to_string()[..12],
                v.artifact.bytes,
                v.dataset
            );
        }
        Models::Reproduce { .. } => unreachable!("handled by reproduce_model"),
        Models::Evaluate { model, on } => {
            let m = cat.evaluate(&model, &on).await?;
            let eval = quiver_app::models::eval_ref(&cat, &on)?;
            for x in m.metrics.iter().filter(|x| x.eval == eval) {
                println!(
                    "{}: {} on {} = {:.6}",
                    m.reference(),
                    x.name,
                    x.eval,
                    x.value
                );
            }
        }
        Models::Alias { model, alias } => {
            let m = cat.registry.model(&model)?;
            cat.registry.set_alias(&m.name, m.version, &alias)?;
            println!("{}@{alias} -> {}", m.name, m.reference());
        }
        Models::Tag { model, tags } => {
            let m = cat.registry.model(&model)?;
            let tags = tags
                .iter()
                .map(|t| kv(t, "tag"))
                .collect::<Result<Vec<_>>>()?;
            cat.registry.set_tags(&m.name, m.version, &tags)?;
            println!("{}: tags set", m.reference());
        }
        Models::List { json: as_json } => {
            let mut latest = Vec::new();
            for n in cat.registry.model_names()? {
                let m = cat.registry.model(&n)?;
                let aliases = cat.registry.aliases(&n)?;
                latest.push((m, aliases));
            }
            if as_json {
                let v: Vec<_> = latest
                    .iter()
                    .map(|(m, a)| serde_json::json!({"model": m, "aliases": a}))
                    .collect();
                return json(&v);
            }
            let mut rows = vec![vec![
                "model".into(),
                "latest".into(),
                "algo".into(),
                "dataset".into(),
                "aliases".into(),
                "created".into(),
            ]];
            for (m, a) in latest {
                rows.push(vec![
                    m.name.clone(),
                    m.version.to_string(),
                    m.algo.clone().unwrap_or_else(|| "-".into()),
                    m.dataset.to_string(),
                    a.iter()
                        .map(|(a, v)| format!("{a}->{v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    format_instant(m.created_micros),
                ]);
            }
            print_table(rows);
        }
        Models::Show {
            model,
            json: as_json,
        } => {
            let m = cat.registry.model(&model)?;
            if as_json {
                return json(&m);
            }
            print_model(&m);
        }
        Models::Diff { a, b } => {
            let (x, y) = (cat.registry.model(&a)?, cat.registry.model(&b)?);
            let (rx, ry) = (x.reference().to_string(), y.reference().to_string());
            let mut rows = vec![vec!["".into(), rx, ry]];
            let mut line = |k: String, a: Option<String>, b: Option<String>| {
                let (a, b) = (
                    a.unwrap_or_else(|| "-".into()),
                    b.unwrap_or_else(|| "-".into()),
                );
                let mark = if a == b { "" } else { " *" };
                rows.push(vec![format!("{k}{mark}"), a, b]);
            };
            line(
                "dataset".into(),
                Some(x.dataset.to_string()),
                Some(y.dataset.to_string()),
            );
            line("algo".into(), x.algo.clone(), y.algo.clone());
            line(
                "seed".into(),
                x.seed.map(|s| s.to_string()),
                y.seed.map(|s| s.to_string()),
            );
            line(
                "parent".into(),
                x.parent.as_ref().map(|p| p.to_string()),
                y.parent.as_ref().map(|p| p.to_string()),
            );
            line(
                "artifact".into(),
                Some(x.artifact.hash.to_string()[..12].to_string()),
                Some(y.artifact.hash.to_string()[..12].to_string()),
            );
            let keys: std::collections::BTreeSet<&String> =
                x.params.keys().chain(y.params.keys()).collect();
            for k in keys {
                line(
                    format!("param {k}"),
                    x.params.get(k).cloned(),
                    y.params.get(k).cloned(),
                );
            }
            let metric_keys: std::collections::BTreeSet<(String, String)> = x
                .metrics
                .iter()
                .chain(&y.metrics)
                .map(|m| (m.name.clone(), m.eval.to_string()))
                .collect();
            for (name, eval) in metric_keys {
                let get = |m: &ModelVersion| {
                    m.metrics
                        .iter()
                        .find(|x| x.name == name && x.eval.to_string() == eval)
                        .map(|x| format!("{:.6}", x.value))
                };
                line(format!("metric {name} on {eval}"), get(&x), get(&y));
            }
            let cost_keys: std::collections::BTreeSet<&String> =
                x.costs.keys().chain(y.costs.keys()).collect();
            for k in cost_keys {
                line(
                    format!("cost {k}"),
                    x.costs.get(k).map(|v| format!("{v}")),
                    y.costs.get(k).map(|v| format!("{v}")),
                );
            }
            let feats = |m: &ModelVersion| {
                Some(
                    m.features
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            };
            line("features".into(), feats(&x), feats(&y));
            print_table(rows);
        }
    }
    Ok(())
}

fn print_model(m: &ModelVersion) {
    println!("model    {}", m.reference());
    println!(
        "artifact {} ({} bytes, from {})",
        m.artifact.hash, m.artifact.bytes, m.artifact.file
    );
    println!("dataset  {}", m.dataset);
    if let Some(a) = &m.algo {
        println!(
            "algo     {a} (label {})",
            m.label.clone().unwrap_or_default()
        );
    }
    if let Some(s) = m.seed {
        println!("seed     {s}");
    }
    if let Some(p) = &m.parent {
        println!("parent   {p}");
    }
    match &m.code {
        Some(c) => println!(
            "code     {}{}",
            c.commit,
            if c.dirty { " (dirty)" } else { "" }
        ),
        None => println!("code     (not in a git work tree)"),
    }
    println!(
        "env      {} {}, quiver {}",
        m.env.os, m.env.arch, m.env.quiver_version
    );
    println!("created  {}", format_instant(m.created_micros));
    for (k, v) in &m.params {
        println!("param    {k} = {v}");
    }
    for x in &m.metrics {
        println!("metric   {} on {} = {}", x.name, x.eval, x.value);
    }
    for (k, v) in &m.costs {
        println!("cost     {k} = {v}");
    }
    for (k, v) in &m.tags {
        println!("tag      {k} = {v}");
    }
    if !m.features.is_empty() {
        println!(
            "features {}",
            m.features
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Train a model on a training-set version with the built-in trainer and register it.
#[derive(clap::Args)]
pub struct Train {
    name: String,
    /// The training set, TRAINSET[@VER].
    #[arg(long)]
    dataset: String,
    #[arg(long)]
    label: String,
    /// linear, logistic or tree.
    #[arg(long)]
    algo: String,
    #[arg(long = "param", value_name = "K=V")]
    params: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The evaluation set, EVALSET[@VER] (default: the training set).
    #[arg(long)]
    eval: Option<String>,
    /// Feature columns (default: the training set's numeric feature columns).
    #[arg(long = "feature-columns", value_delimiter = ',')]
    feature_columns: Option<Vec<String>>,
    /// The model this one derives from, NAME@VER.
    #[arg(long)]
    parent: Option<String>,
}

impl Train {
    /// Train, register and report the version, its metrics and costs.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let cat = catalog(repo)?;
        let algo: Algo = self.algo.parse()?;
        let params: BTreeMap<String, String> = self
            .params
            .iter()
            .map(|p| kv(p, "param"))
            .collect::<Result<_>>()?;
        let reg = Registration {
            parent: self.parent,
            code: code_version(&std::env::current_dir()?),
            ..Default::default()
        };
        let m = cat
            .train(
                &self.name,
                &self.dataset,
                &self.label,
                algo,
                params,
                self.seed,
                self.eval.as_deref(),
                self.feature_columns,
                reg,
            )
            .await?;
        println!(
            "{}: {} on {} ({} features), artifact {}",
            m.reference(),
            algo.name(),
            m.dataset,
            m.features.len(),
            &m.artifact.hash.to_string()[..12]
        );
        for x in &m.metrics {
            println!("  {} on {} = {:.6}", x.name, x.eval, x.value);
        }
        for (k, v) in &m.costs {
            println!("  cost {k} = {v:.6}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Predictions of a model (NAME@VER or NAME@ALIAS) for a dataset or file.
#[derive(clap::Args)]
pub struct Predict {
    model: String,
    /// A dataset NAME[@VER] or a Parquet/CSV file.
    #[arg(long)]
    dataset: String,
    #[arg(long)]
    out: PathBuf,
}

impl Predict {
    /// Predict and write the predictions.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let cat = catalog(repo)?;
        let data = cat.dataset_or_file(&self.dataset).await?;
        let batch = cat.predict(&self.model, data).await?;
        let out = &self.out;
        quiver_offline::source::write_table(out, &batch)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("{} predictions -> {}", batch.num_rows(), out.display());
        Ok(ExitCode::SUCCESS)
    }
}

async fn select(cmd: Select, repo: &Path) -> Result<ExitCode> {
    let cat = catalog(repo)?;
    match cmd {
        Select::Best {
            metric,
            on,
            filter,
            limits,
            minimize,
            json: as_json,
        } => {
            let limits: Vec<Limit> = limits
                .iter()
                .map(|l| parse_limit(l).map_err(|e| anyhow!(e)))
                .collect::<Result<_>>()?;
            let eval = quiver_app::models::eval_ref(&cat, &on)?;
            let cands = quiver_app::models::candidates(&cat, filter.as_deref()).await?;
            match quiver_registry::select::best(&cands, &metric, &eval, &limits, minimize) {
                Best::Found { model, metric: v } => {
                    if as_json {
                        json(&serde_json::json!({"model": model, metric.as_str(): v}))?;
                    } else {
                        println!("{model}: {metric} on {eval} = {v}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Best::NoneFits {
                    candidates,
                    closest,
                } => {
                    if candidates == 0 {
                        eprintln!(
                            "no model version has `{metric}` on {eval} (among {} candidates)",
                            cands.len()
                        );
                    } else {
                        eprintln!(
                            "none of the {candidates} versions with `{metric}` on {eval} fits the limits"
                        );
                        if let Some((r, why)) = closest {
                            eprintln!("closest: {r}, which violates {}", why.join(", "));
                        }
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Select::Pareto {
            metric,
            on,
            filter,
            costs,
            minimize,
            json: as_json,
        } => {
            let eval = quiver_app::models::eval_ref(&cat, &on)?;
            let costs = if costs.is_empty() {
                vec!["latency_p99_ms".to_string(), "size_bytes".to_string()]
            } else {
                costs
            };
            let cands = quiver_app::models::candidates(&cat, filter.as_deref()).await?;
            let front = quiver_registry::select::pareto(&cands, &metric, &eval, &costs, minimize);
            if as_json {
                json(&front)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![
                std::iter::once("model".to_string())
                    .chain(std::iter::once(metric.clone()))
                    .chain(costs.iter().cloned())
                    .collect::<Vec<_>>(),
            ];
            for (r, v) in front {
                let m = cands
                    .iter()
                    .find(|m| m.reference() == r)
                    .expect("on the front");
                let mut row = vec![r.to_string(), format!("{v:.6}")];
                for c in &costs {
                    row.push(m.costs.get(c).map(|x| format!("{x}")).unwrap_or_default());
                }
                rows.push(row);
            }
            print_table(rows);
            Ok(ExitCode::SUCCESS)
        }
        Select::Halving {
            name,
            dataset,
            eval,
            label,
            metric,
            minimize,
            algo,
            grid: g,
            budget,
            eta,
            k,
            seed,
        } => {
            let algos: Vec<Algo> = algo
                .iter()
                .map(|a| a.parse::<Algo>())
                .collect::<Result<_, _>>()?;
            let mut pairs = Vec::new();
            for item in &g {
                let (key, values) = kv(item, "grid")?;
                pairs.push((
                    key,
                    values.split(',').map(|s| s.trim().to_string()).collect(),
                ));
            }
            let configs: Vec<Config> = grid(&algos, &pairs);
            let spec = HalvingSpec {
                name,
                dataset,
                eval,
                label,
                metric: metric.clone(),
                minimize,
                configs,
                budget,
                eta,
                k,
                seed,
            };
            let reg = Registration {
                code: code_version(&std::env::current_dir()?),
                ..Default::default()
            };
            let h = cat.halving(&spec, reg).await?;
            for (i, r) in h.plan.iter().enumerate() {
                println!("rung {i}: {} configurations x {} rows", r.configs, r.rows);
            }
            println!(
                "trained {} models on {} rows in all (budget {budget})",
                h.trained.len(),
                h.rows_used
            );
            for (m, v) in &h.top {
                println!(
                    "{}: {metric} = {v:.6} ({} {})",
                    m.reference(),
                    m.algo.clone().unwrap_or_default(),
                    m.params
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
