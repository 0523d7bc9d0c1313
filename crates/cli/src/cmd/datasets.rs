//! `ingest`, `apply`, `datasets …`, `feature-views …` and `reproduce`: the
//! versioned offline store and the registry (DESIGN §5, §7).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use quiver_core::time::format_instant;
use quiver_registry::{DatasetVersion, Operation, ViewVersion, parse_ref};

use super::{catalog, json};
use crate::table::print_table;

#[derive(Subcommand)]
pub enum Datasets {
    /// Every dataset: kind, latest version, rows, hash.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One version (NAME = the latest): hash, schema, storage, how it was made.
    Show {
        /// NAME or NAME@VERSION.
        dataset: String,
        #[arg(long)]
        json: bool,
    },
    /// Every version of a dataset, oldest first.
    Log {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Rows added and removed, and schema changes, from A to B.
    Diff { a: String, b: String },
    /// Store a file (a spine) as the next version of a dataset.
    Add {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Split a version into seeded train/test datasets (NAME_train, NAME_test).
    Split {
        dataset: String,
        /// Share of rows in the train part.
        #[arg(long)]
        ratio: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Names of the two parts, `TRAIN,TEST`.
        #[arg(long, value_delimiter = ',', num_args = 2)]
        into: Option<Vec<String>>,
    },
    /// Keep the rows where a SQL predicate holds, as the next version of NAME (default: the
    /// same dataset).
    Filter {
        dataset: String,
        #[arg(long = "where")]
        predicate: String,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum FeatureViews {
    /// Every recorded view: latest version and when it was made.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A view's definition at a version (VIEW = the latest) and what changed from the one
    /// before.
    Show {
        view: String,
        #[arg(long)]
        json: bool,
    },
}

fn short(h: &quiver_core::hash::ContentHash) -> String {
    h.to_string()[..12].to_string()
}

fn op_text(op: &Operation) -> String {
    match op {
        Operation::Ingest { files } => format!("ingest {}", files.join(" ")),
        Operation::Observe { path } => {
            format!("observed {}", path.split('#').next().unwrap_or(path))
        }
        Operation::Add { file } => format!("add {file}"),
        Operation::Upload { from } => format!("uploaded by {from}"),
        Operation::Join(j) => format!(
            "join spine {} with {} ({}; quiver {})",
            j.spine,
            j.features
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            j.sources
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            j.quiver_version
        ),
        Operation::Split {
            parent,
            ratio,
            seed,
            part,
        } => format!("split {parent} ratio {ratio} seed {seed}: {part}"),
        Operation::Filter { parent, predicate } => format!("filter {parent} where {predicate}"),
    }
}

impl Datasets {
    /// Run the subcommand.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        datasets(self, repo).await?;
        Ok(ExitCode::SUCCESS)
    }
}

impl FeatureViews {
    /// Run the subcommand.
    pub fn run(self, repo: &Path) -> Result<ExitCode> {
        feature_views(self, repo)?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn datasets(cmd: Datasets, repo: &Path) -> Result<()> {
    let cat = catalog(repo)?;
    match cmd {
        Datasets::List { json: as_json } => {
            cat.sync_sources().await?;
            let mut latest: Vec<DatasetVersion> = Vec::new();
            for n in cat.registry.dataset_names()? {
                latest.push(cat.registry.dataset_version(&n, None)?);
            }
            if as_json {
                return json(&latest);
            }
            let mut rows = vec![vec![
                "dataset".into(),
                "kind".into(),
                "version".into(),
                "rows".into(),
                "hash".into(),
                "created".into(),
            ]];
            for v in latest {
                rows.push(vec![
                    v.name.clone(),
                    v.kind.name().into(),
                    v.version.to_string(),
                    v.state.rows.to_string(),
                    short(&v.hash),
                    format_instant(v.created_micros),
                ]);
            }
            print_table(rows);
        }
        Datasets::Show {
            dataset,
            json: as_json,
        } => {
            cat.sync_sources().await?;
            let (name, ver) = parse_ref(&dataset)?;
            let v = cat.registry.dataset_version(&name, ver)?;
            if as_json {
                return json(&v);
            }
            println!("dataset  {}", v.reference());
            println!("kind     {}", v.kind.name());
            println!("hash     {}", v.hash);
            println!("rows     {}", v.state.rows);
            println!("created  {}", format_instant(v.created_micros));
            match &v.storage {
                quiver_registry::Storage::Delta { table, version } => {
                    println!("stored   Delta table {table} version {version}")
                }
                quiver_registry::Storage::File { path } => println!("stored   files at {path}"),
            }
            println!("made by  {}", op_text(&v.op));
            println!("schema");
            for (c, t) in &v.schema {
                println!("  {c}  {t}");
            }
        }
        Datasets::Log {
            name,
            json: as_json,
        } => {
            cat.sync_sources().await?;
            let all = cat.registry.dataset_versions(&name)?;
            if all.is_empty() {
                cat.registry.dataset_version(&name, None)?;
            }
            if as_json {
                return json(&all);
            }
            let mut rows = vec![vec![
                "version".into(),
                "created".into(),
                "rows".into(),
                "hash".into(),
                "made by".into(),
            ]];
            for v in all {
                rows.push(vec![
                    v.version.to_string(),
                    format_instant(v.created_micros),
                    v.state.rows.to_string(),
                    short(&v.hash),
                    op_text(&v.op),
                ]);
            }
            print_table(rows);
        }
        Datasets::Diff { a, b } => {
            cat.sync_sources().await?;
            let (na, va) = parse_ref(&a)?;
            let (nb, vb) = parse_ref(&b)?;
            let x = cat.registry.dataset_version(&na, va)?;
            let y = cat.registry.dataset_version(&nb, vb)?;
            let d = cat.diff(&x, &y).await?;
            println!("{} -> {}", x.reference(), y.reference());
            if x.hash == y.hash {
                println!("identical content ({})", short(&x.hash));
                return Ok(());
            }
            for line in &d.schema_changes {
                println!("schema: {line}");
            }
            println!("rows: +{} added, -{} removed", d.added, d.removed);
        }
        Datasets::Add { file, name } => {
            let v = cat.add(&file, &name).await?;
            println!(
                "{}: {} rows, hash {}",
                v.reference(),
                v.state.rows,
                short(&v.hash)
            );
        }
        Datasets::Split {
            dataset,
            ratio,
            seed,
            into,
        } => {
            let (name, ver) = parse_ref(&dataset)?;
            let parent = cat.registry.dataset_version(&name, ver)?;
            let names =
                into.unwrap_or_else(|| vec![format!("{name}_train"), format!("{name}_test")]);
            let (a, b) = cat
                .split(&parent, ratio, seed, (&names[0], &names[1]))
                .await?;
            for v in [a, b] {
                println!(
                    "{}: {} rows, hash {}",
                    v.reference(),
                    v.state.rows,
                    short(&v.hash)
                );
            }
        }
        Datasets::Filter {
            dataset,
            predicate,
            name,
        } => {
            let (n, ver) = parse_ref(&dataset)?;
            let parent = cat.registry.dataset_version(&n, ver)?;
            let into = name.unwrap_or(n);
            let v = cat.filter(&parent, &predicate, &into).await?;
            println!(
                "{}: {} rows, hash {}",
                v.reference(),
                v.state.rows,
                short(&v.hash)
            );
        }
    }
    Ok(())
}

/// Record the feature views of quiver.yaml in the registry: changed definitions become new
/// versions.
#[derive(clap::Args)]
pub struct Apply {}

impl Apply {
    /// Record, and say what changed.
    pub fn run(self, repo: &Path) -> Result<ExitCode> {
        apply(repo)?;
        Ok(ExitCode::SUCCESS)
    }
}

fn apply(repo: &Path) -> Result<()> {
    let cat = catalog(repo)?;
    for (v, new) in cat.apply(&[])? {
        println!(
            "{}@{}: {}",
            v.view,
            v.version,
            if new { "new version" } else { "unchanged" }
        );
    }
    Ok(())
}

/// The definition changes from `a` to `b`, one line each.
fn view_changes(a: &ViewVersion, b: &ViewVersion) -> Vec<String> {
    let (x, y) = (&a.definition, &b.definition);
    let mut out = Vec::new();
    if x.view.entity != y.view.entity || x.view.join_keys != y.view.join_keys {
        out.push(format!(
            "entity: {} {:?} -> {} {:?}",
            x.view.entity, x.view.join_keys, y.view.entity, y.view.join_keys
        ));
    }
    if x.view.source != y.view.source
        || x.source.timestamp != y.source.timestamp
        || x.source.created_timestamp != y.source.created_timestamp
        || x.source.filter_created != y.source.filter_created
    {
        out.push(format!(
            "source: {} (time {}) -> {} (time {})",
            x.source.name, x.source.timestamp, y.source.name, y.source.timestamp
        ));
    }
    if x.view.ttl != y.view.ttl {
        out.push(format!("ttl: {:?} -> {:?}", x.view.ttl, y.view.ttl));
    }
    for f in &x.view.features {
        match y.view.features.iter().find(|g| g.name == f.name) {
            None => out.push(format!("- feature {}", f.name)),
            Some(g) if g != f => out.push(format!(
                "~ feature {}: {} -> {}",
                f.name,
                feature_text(f),
                feature_text(g)
            )),
            _ => {}
        }
    }
    for g in &y.view.features {
        if !x.view.features.iter().any(|f| f.name == g.name) {
            out.push(format!("+ feature {}: {}", g.name, feature_text(g)));
        }
    }
    out
}

fn feature_text(f: &quiver_core::Feature) -> String {
    let mut s = match f.kind {
        quiver_core::FeatureKind::Latest => format!("latest({})", f.column),
        quiver_core::FeatureKind::Aggregate { agg, window } => format!(
            "{}({}) window {} offset {} closed {:?}",
            agg.name(),
            f.column,
            window
                .length
                .map(|d| d.to_string())
                .unwrap_or_else(|| "lifetime".into()),
            window.offset,
            window.closed
        ),
    };
    if let Some(filter) = &f.filter {
        s.push_str(&format!(" where {filter}"));
    }
    s
}

fn feature_views(cmd: FeatureViews, repo: &Path) -> Result<()> {
    let cat = catalog(repo)?;
    match cmd {
        FeatureViews::List { json: as_json } => {
            let mut latest = Vec::new();
            for n in cat.registry.view_names()? {
                latest.push(cat.registry.view_version(&n, None)?);
            }
            if as_json {
                return json(&latest);
            }
            let mut rows = vec![vec![
                "view".into(),
                "version".into(),
                "features".into(),
                "hash".into(),
                "created".into(),
            ]];
            for v in latest {
                rows.push(vec![
                    v.view.clone(),
                    v.version.to_string(),
                    v.definition.view.features.len().to_string(),
                    short(&v.hash),
                    format_instant(v.created_micros),
                ]);
            }
            print_table(rows);
        }
        FeatureViews::Show {
            view,
            json: as_json,
        } => {
            let (name, ver) = parse_ref(&view)?;
            let v = cat.registry.view_version(&name, ver)?;
            if as_json {
                return json(&v);
            }
            println!(
                "feature view {}@{}  ({})",
                v.view,
                v.version,
                short(&v.hash)
            );
            println!("created  {}", format_instant(v.created_micros));
            println!(
                "entity   {} {:?}",
                v.definition.view.entity, v.definition.view.join_keys
            );
            println!(
                "source   {} (time {})",
                v.definition.source.name, v.definition.source.timestamp
            );
            if let Some(ttl) = v.definition.view.ttl {
                println!("ttl      {ttl}");
            }
            for f in &v.definition.view.features {
                println!("  {}: {}", f.name, feature_text(f));
            }
            if v.version > 1 {
                let prev = cat.registry.view_version(&name, Some(v.version - 1))?;
                println!("changes from version {}:", prev.version);
                for line in view_changes(&prev, &v) {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(())
}

/// Rebuild a dataset version (or, as model:NAME@VER, a model Quiver trained) from its
/// lineage and compare content hashes (exit 1 when they differ).
#[derive(clap::Args)]
pub struct Reproduce {
    /// NAME@VERSION (NAME = the latest version), or model:NAME@VERSION.
    dataset: String,
}

impl Reproduce {
    /// Rebuild and compare: exit 0 when identical, 1 when not.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        match self.dataset.strip_prefix("model:") {
            Some(model) => super::models::reproduce_model(model, repo).await,
            None => reproduce(&self.dataset, repo).await,
        }
    }
}

async fn reproduce(target: &str, repo: &Path) -> Result<ExitCode> {
    let cat = catalog(repo)?;
    cat.sync_sources().await?;
    let (name, ver) = parse_ref(target)?;
    let r = cat.reproduce(&name, ver).await?;
    match r.difference {
        None => {
            println!(
                "{}: identical (hash {})",
                r.target.reference(),
                r.target.hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(d) => {
            println!(
                "{}: differs: recorded hash {}, rebuilt {}; first difference: {d}",
                r.target.reference(),
                r.target.hash,
                r.rebuilt
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Append Parquet or CSV files to the managed table of a source (a new version).
#[derive(clap::Args)]
pub struct Ingest {
    source: String,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

impl Ingest {
    /// Append, and print the new version.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        ingest(&self.source, &self.files, repo).await?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn ingest(source: &str, files: &[PathBuf], repo: &Path) -> Result<()> {
    let cat = catalog(repo)?;
    let v = cat.ingest(source, files).await?;
    println!(
        "{}: {} rows in all, hash {}",
        v.reference(),
        v.state.rows,
        short(&v.hash)
    );
    Ok(())
}
