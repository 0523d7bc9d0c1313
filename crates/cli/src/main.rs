//! `quiver`: the command line of the Quiver feature store.
//!
//! `quiver validate` checks a feature repository without reading data rows;
//! `quiver join` builds a point-in-time correct training set from a spine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use quiver_core::Repo;
use quiver_offline::{Engine, EngineOptions, source};

mod alloc;
mod init;
mod models;
mod table;
mod versions;

#[global_allocator]
static GLOBAL: alloc::HugePageAlloc = alloc::HugePageAlloc;

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "Quiver feature store: point-in-time correct training sets, online serving, versioned datasets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which features a command asks for.
#[derive(clap::Args)]
struct Select {
    /// Feature references, `view:feature`, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "service",
        required_unless_present = "service"
    )]
    features: Vec<String>,
    /// A feature service of quiver.yaml.
    #[arg(long)]
    service: Option<String>,
}

impl Select {
    fn resolve(&self, repo: &Repo) -> Result<Vec<quiver_core::FeatureRef>> {
        Ok(match &self.service {
            Some(s) => repo.service(s)?,
            None => repo.resolve_refs(&self.features)?,
        })
    }
}

/// Which versions of the sources a join reads (default: the current ones).
#[derive(clap::Args)]
struct Versions {
    /// Read a source at a recorded version, SOURCE@VERSION (repeat for more).
    #[arg(
        long = "source-version",
        visible_alias = "source",
        value_name = "SOURCE@VERSION"
    )]
    pins: Vec<String>,
    /// Time travel: read every source as it was at this instant (RFC 3339).
    #[arg(long)]
    as_of: Option<String>,
}

impl Versions {
    /// The pins and the `--as-of` instant (microseconds).
    fn resolve(self) -> Result<(Vec<String>, Option<i64>)> {
        let as_of = self
            .as_of
            .as_deref()
            .map(|t| instant_arg(Some(t), "--as-of"))
            .transpose()?;
        Ok((self.pins, as_of))
    }
}

/// How a join runs: partitions, memory and reuse.
#[derive(clap::Args)]
struct RunOptions {
    /// Partitions to split the join into by entity key (default: the number of cores).
    #[arg(long)]
    partitions: Option<usize>,
    /// Memory pool limit, e.g. 512MB or 2GB (default: unbounded). It bounds what the join
    /// operators hold (packed events, sweeps, the inputs' repartitioning): past it they
    /// spill to disk. It does not bound the spine as read, the training set being written or
    /// the process's own overhead, so the peak resident size is above it (64MB gave a
    /// 317 MB peak on a 2M-row spine). Below 128KB per partition a join cannot run and is
    /// refused at once.
    #[arg(long, value_parser = parse_bytes, verbatim_doc_comment)]
    memory_limit: Option<usize>,
    /// Neither reuse stored feature states nor store new ones.
    #[arg(long)]
    no_reuse: bool,
    /// Size budget of the reuse catalog (OFFLINE_STORE/reuse), e.g. 4GB (default 2GB).
    #[arg(long, value_parser = parse_bytes)]
    reuse_budget: Option<usize>,
}

impl RunOptions {
    fn engine_options(&self) -> EngineOptions {
        let mut opts = EngineOptions::default();
        if let Some(p) = self.partitions {
            opts.target_partitions = p;
        }
        opts.memory_limit = self.memory_limit;
        opts.after_sweep = Some(alloc::trim);
        if !self.no_reuse {
            opts.reuse_budget = Some(
                self.reuse_budget
                    .map(|b| b as u64)
                    .unwrap_or(quiver_offline::reuse::DEFAULT_BUDGET),
            );
        }
        opts
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a feature repository: the bundled sample (data, spine, a feature service), or
    /// with --empty a commented quiver.yaml skeleton.
    Init {
        /// The folder (made if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The project name (default: the folder's name).
        #[arg(long)]
        project: Option<String>,
        /// Only a quiver.yaml skeleton, no sample data.
        #[arg(long)]
        empty: bool,
    },
    /// Check quiver.yaml and every source's columns, without reading data rows.
    Validate {
        /// The feature repository folder (or its quiver.yaml).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Compute feature views as of a time and write them to the online store.
    Materialize {
        /// Feature views to materialize (default: all).
        views: Vec<String>,
        /// The time to materialize as of (RFC 3339); default: now.
        #[arg(long)]
        end: Option<String>,
        /// Only entities with an event at or after this time (RFC 3339).
        #[arg(long, conflicts_with = "incremental")]
        start: Option<String>,
        /// Continue from each view's watermark: only the entities whose values can have
        /// changed since the last materialization.
        #[arg(long)]
        incremental: bool,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Push rows of a view's source (a Parquet or CSV file) to the online store: the pushed
    /// entities' values are computed again with them.
    Push {
        view: String,
        file: PathBuf,
        /// Also append the rows to the source's managed table.
        #[arg(long)]
        to_offline: bool,
        /// Compute the values as of this time (RFC 3339); default: now.
        #[arg(long)]
        at: Option<String>,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Serve online lookups over gRPC (quiver.v1.OnlineService, health, reflection).
    Serve {
        #[arg(long, default_value = "127.0.0.1:6566")]
        addr: String,
        /// A folder besides the repository where requests may read spines and write
        /// training sets (repeat for more); requests may use no other path.
        #[arg(long = "data-root", value_name = "DIR")]
        data_roots: Vec<PathBuf>,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Look features up in the online store, or through a server with --addr.
    Get {
        /// A running `quiver serve` to ask instead of opening the store (host:port).
        #[arg(long)]
        addr: Option<String>,
        /// An entity as key=value (comma-separated for composite keys); repeat for more.
        #[arg(long = "entity", required = true)]
        entities: Vec<String>,
        #[command(flatten)]
        select: Select,
        /// Look up as of this time (RFC 3339; default now): ttl is checked against it.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Build a training set: the spine plus the requested features, point-in-time correct.
    Join {
        /// The spine (label rows): a Parquet or CSV file (by extension), or a recorded
        /// dataset NAME[@VERSION].
        #[arg(long)]
        spine: String,
        #[command(flatten)]
        select: Select,
        /// The spine's time column (default `event_timestamp`, else its only timestamp column).
        #[arg(long)]
        spine_timestamp: Option<String>,
        /// Name every feature column `view__feature`.
        #[arg(long)]
        full_names: bool,
        /// Output file: Parquet or CSV, by extension. Replaced only when the join succeeds.
        #[arg(long, required_unless_present = "register")]
        out: Option<PathBuf>,
        /// Store the training set as the next version of this dataset, with its lineage.
        #[arg(long)]
        register: Option<String>,
        #[command(flatten)]
        versions: Versions,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Print the plan: pruning applied and the physical plan of each view.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Plan a join without running it: per view, which features come from stored states
    /// (exact, widened, narrowed, other spines) and which are computed, the cost gate's
    /// estimates and choice, the scan's pruning, its estimated reads and the physical plan.
    /// Reads the spine and the sources' footers, no event.
    Explain {
        /// The spine: a Parquet or CSV file, or a recorded dataset NAME[@VERSION].
        #[arg(long)]
        spine: String,
        #[command(flatten)]
        select: Select,
        #[arg(long)]
        spine_timestamp: Option<String>,
        #[arg(long)]
        full_names: bool,
        #[command(flatten)]
        versions: Versions,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Choose a layout for each managed source from the log of past joins (time bucketing
    /// and sort order minimizing the bytes those joins read) and rewrite it as a new version.
    Optimize {
        /// Bytes the rewrites may read and write in total (default: no limit).
        #[arg(long, value_parser = parse_bytes)]
        budget: Option<usize>,
        /// Print the plan without rewriting anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Append Parquet or CSV files to the managed table of a source (a new version).
    Ingest {
        source: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Record the feature views of quiver.yaml in the registry: changed definitions become new
    /// versions.
    Apply {
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Versioned datasets: sources, spines and training sets.
    Datasets {
        #[command(subcommand)]
        command: versions::Datasets,
        #[arg(long, default_value = ".", global = true)]
        repo: PathBuf,
    },
    /// Recorded feature-view versions.
    #[command(name = "feature-views")]
    FeatureViews {
        #[command(subcommand)]
        command: versions::FeatureViews,
        #[arg(long, default_value = ".", global = true)]
        repo: PathBuf,
    },
    /// What a dataset or feature-view version was made from, and what was made from it.
    Lineage {
        /// NAME@VERSION (NAME = the latest version).
        artifact: String,
        #[arg(long, conflicts_with = "downstream")]
        upstream: bool,
        #[arg(long)]
        downstream: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Registered models: register, alias, tag, list, show, diff.
    Models {
        #[command(subcommand)]
        command: models::Models,
        #[arg(long, default_value = ".", global = true)]
        repo: PathBuf,
    },
    /// Train a model on a training-set version with the built-in trainer and register it.
    Train {
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
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Predictions of a model (NAME@VER or NAME@ALIAS) for a dataset or file.
    Predict {
        model: String,
        /// A dataset NAME[@VER] or a Parquet/CSV file.
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// What is stale because a source got a new version (SOURCE[@VER]) or a feature's
    /// definition changed (VIEW[@VER]:FEATURE), in dependency order.
    Impact {
        target: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Choose a model version: best under cost limits, the Pareto front, or successive halving.
    Select {
        #[command(subcommand)]
        command: models::Select,
        #[arg(long, default_value = ".", global = true)]
        repo: PathBuf,
    },
    /// SQL over the registry (model_versions, metrics, lineage_edges, …) and datasets by name.
    Sql {
        query: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Rebuild a dataset version (or, as model:NAME@VER, a model Quiver trained) from its
    /// lineage and compare content hashes (exit 1 when they differ).
    Reproduce {
        /// NAME@VERSION (NAME = the latest version), or model:NAME@VERSION.
        dataset: String,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_uppercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 512MB, 2GB, 1000000"))?;
    let m = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "K" | "KIB" => 1024.0,
        "MB" | "M" | "MIB" => 1024.0 * 1024.0,
        "GB" | "G" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("bad size {s:?}: unit must be B, KB, MB or GB")),
    };
    Ok((n * m) as usize)
}

fn instant_arg(text: Option<&str>, flag: &str) -> Result<i64> {
    match text {
        None => Ok(quiver_server::grpc::now_micros()),
        Some(t) => quiver_core::time::parse_instant(t).ok_or_else(|| {
            anyhow::anyhow!("{flag} {t:?}: expected an RFC 3339 time, e.g. 2024-02-09T00:00:00Z")
        }),
    }
}

/// Resolves on SIGINT or SIGTERM, for a graceful shutdown.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn print_values(
    refs: &[quiver_core::FeatureRef],
    entities: &[String],
    values: &[Vec<quiver_server::online::Value>],
    json: bool,
) {
    use quiver_core::store::json_string;
    if json {
        let rows: Vec<String> = entities
            .iter()
            .zip(values)
            .map(|(e, vals)| {
                let feats: Vec<String> = refs
                    .iter()
                    .zip(vals)
                    .map(|(r, v)| {
                        format!(
                            "{}: {{\"value\": {}, \"status\": \"{}\", \"event_time\": {}}}",
                            json_string(&r.to_string()),
                            v.value.to_json(),
                            v.status.name(),
                            v.event_time
                                .map(|t| json_string(&quiver_core::time::format_instant(t)))
                                .unwrap_or_else(|| "null".into())
                        )
                    })
                    .collect();
                format!(
                    "{{\"entity\": {}, \"features\": {{{}}}}}",
                    json_string(e),
                    feats.join(", ")
                )
            })
            .collect();
        println!("[{}]", rows.join(",\n "));
        return;
    }
    let mut table: Vec<Vec<String>> = vec![
        std::iter::once("entity".to_string())
            .chain(refs.iter().map(|r| r.to_string()))
            .collect(),
    ];
    for (e, vals) in entities.iter().zip(values) {
        let mut row = vec![e.clone()];
        for v in vals {
            row.push(match v.status {
                quiver_server::online::Status::Present => v.value.to_string(),
                s => s.name().to_string(),
            });
        }
        table.push(row);
    }
    table::print_table(table);
}

fn main() -> ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ingest {
            source,
            files,
            repo,
        } => versions::ingest(&source, &files, &repo).await?,
        Command::Apply { repo } => versions::apply(&repo)?,
        Command::Datasets { command, repo } => versions::datasets(command, &repo).await?,
        Command::FeatureViews { command, repo } => versions::feature_views(command, &repo)?,
        Command::Lineage {
            artifact,
            upstream,
            downstream,
            json,
            repo,
        } => versions::lineage(&artifact, upstream, downstream, json, &repo).await?,
        Command::Reproduce { dataset, repo } => {
            return match dataset.strip_prefix("model:") {
                Some(model) => models::reproduce_model(model, &repo).await,
                None => versions::reproduce(&dataset, &repo).await,
            };
        }
        Command::Models {
            command: models::Models::Reproduce { model },
            repo,
        } => return models::reproduce_model(&model, &repo).await,
        Command::Models { command, repo } => models::models(command, &repo).await?,
        Command::Train {
            name,
            dataset,
            label,
            algo,
            params,
            seed,
            eval,
            feature_columns,
            parent,
            repo,
        } => {
            models::train(
                &name,
                &dataset,
                &label,
                &algo,
                &params,
                seed,
                eval.as_deref(),
                feature_columns,
                parent,
                &repo,
            )
            .await?
        }
        Command::Predict {
            model,
            dataset,
            out,
            repo,
        } => models::predict(&model, &dataset, &out, &repo).await?,
        Command::Impact { target, json, repo } => models::impact(&target, json, &repo).await?,
        Command::Select { command, repo } => return models::select(command, &repo).await,
        Command::Sql { query, json, repo } => models::sql(&query, json, &repo).await?,
        Command::Init {
            dir,
            project,
            empty,
        } => {
            let created = init::init(&dir, project.as_deref(), empty)?;
            for line in init::next_steps(&created) {
                println!("{line}");
            }
        }
        other => run_engine(other).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_engine(command: Command) -> Result<()> {
    match command {
        Command::Optimize {
            budget,
            dry_run,
            json,
            repo,
        } => {
            let repo = Repo::load(&repo)?;
            let outcomes =
                quiver_offline::layout::optimize(&repo, budget.map(|b| b as u64), dry_run).await?;
            if outcomes.iter().any(|o| o.written.is_some()) {
                // Record the new versions now, so datasets and lineage show them.
                quiver_server::catalog::Catalog::open(repo.clone(), EngineOptions::default())?
                    .sync_sources()
                    .await?;
            }
            print_layouts(&outcomes, json, dry_run)?;
            Ok(())
        }
        Command::Validate { repo } => {
            let repo = Repo::load(&repo)?;
            let (views, sources) = (repo.views.len(), repo.sources.len());
            let name = repo.project.clone();
            Engine::new(repo, EngineOptions::default())?.check().await?;
            println!("{name}: ok ({views} feature views, {sources} sources)");
            Ok(())
        }
        Command::Materialize {
            views,
            end,
            start,
            incremental,
            repo,
        } => {
            let repo = Repo::load(&repo)?;
            let end = instant_arg(end.as_deref(), "--end")?;
            let range = match (start, incremental) {
                (Some(t), _) => {
                    quiver_server::online::Range::Since(instant_arg(Some(&t), "--start")?)
                }
                (None, true) => quiver_server::online::Range::Incremental,
                (None, false) => quiver_server::online::Range::All,
            };
            let store = quiver_online::SledStore::open(&repo.online_store)?;
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            let done = quiver_server::online::materialize_range(
                &repo,
                &store,
                &views,
                range,
                end,
                EngineOptions::default(),
                |v, n| bar.set_message(format!("{v}: {n} rows")),
            )
            .await;
            bar.finish_and_clear();
            for m in done? {
                println!(
                    "{}: {} entity rows as of {} in {:.2} s ({:.0} rows/s)",
                    m.view,
                    m.rows,
                    quiver_core::time::format_instant(end),
                    m.seconds,
                    m.rows as f64 / m.seconds.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Push {
            view,
            file,
            to_offline,
            at,
            repo,
        } => {
            let repo = Repo::load(&repo)?;
            let at = instant_arg(at.as_deref(), "--at")?;
            let ctx = quiver_offline::session(&EngineOptions::default())?;
            let (schema, batches) = source::read_table(&ctx, &file).await?;
            let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
            let def = repo
                .views
                .get(&view)
                .ok_or_else(|| anyhow::anyhow!("unknown feature view `{view}`"))?;
            if to_offline {
                let cat =
                    quiver_server::catalog::Catalog::open(repo.clone(), EngineOptions::default())?;
                let v = cat
                    .append(
                        &def.source,
                        vec![(file.display().to_string(), schema.clone(), batches)],
                        quiver_registry::Operation::Ingest {
                            files: vec![file.display().to_string()],
                        },
                    )
                    .await?;
                println!("{}: {} rows in all", v.reference(), v.state.rows);
            }
            let store = quiver_online::SledStore::open(&repo.online_store)?;
            let p = quiver_server::online::push(
                &repo,
                &store,
                &view,
                batch,
                to_offline,
                at,
                EngineOptions::default(),
            )
            .await?;
            println!(
                "{view}: {} rows pushed, {} entities updated",
                p.rows, p.entities
            );
            Ok(())
        }
        Command::Serve {
            addr,
            data_roots,
            repo,
        } => {
            let repo = Repo::load(&repo)?;
            let store = std::sync::Arc::new(quiver_online::SledStore::open(&repo.online_store)?);
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!(
                "quiver: serving {} on {}",
                repo.project,
                listener.local_addr()?
            );
            let options = quiver_server::grpc::ServeOptions { data_roots };
            quiver_server::grpc::serve_with(repo, store, listener, options, shutdown_signal())
                .await?;
            eprintln!("quiver: stopped");
            Ok(())
        }
        Command::Get {
            addr,
            entities,
            select,
            at,
            json,
            repo,
        } => {
            let repo = Repo::load(&repo)?;
            let refs = select.resolve(&repo)?;
            let at = instant_arg(at.as_deref(), "--at")?;
            let ents = entities
                .iter()
                .map(|e| quiver_server::online::parse_entity(e))
                .collect::<Result<Vec<_>, _>>()?;
            let values = match addr {
                Some(addr) => quiver_server::grpc::remote_get(&addr, &refs, &ents, at).await?,
                None => {
                    let store = quiver_online::SledStore::open(&repo.online_store)?;
                    quiver_server::online::get(&repo, &store, &refs, &ents, at)?
                }
            };
            print_values(&refs, &entities, &values, json);
            Ok(())
        }
        Command::Join {
            spine,
            select,
            spine_timestamp,
            full_names,
            out,
            register,
            versions,
            repo,
            explain,
            run,
        } => {
            let started = Instant::now();
            let repo = Repo::load(&repo)?;
            let (pins, as_of) = versions.resolve()?;
            let req = quiver_server::training::Request {
                spine: spine.clone(),
                features: select.resolve(&repo)?,
                spine_timestamp,
                full_names,
                out: out.clone(),
                // The user's own command replaces its output, as any command-line tool does.
                overwrite: true,
                register,
                pins,
                as_of,
            };
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            let built = quiver_server::training::build(repo, run.engine_options(), &req, |m| {
                bar.set_message(m)
            })
            .await;
            bar.finish_and_clear();
            let built = built?;
            if explain {
                for line in &built.plan {
                    println!("{line}");
                }
            }
            let registered = built.registered;
            let target = match (&out, &registered) {
                (Some(o), Some(r)) => format!("{} and {r}", o.display()),
                (Some(o), None) => o.display().to_string(),
                (None, Some(r)) => r.clone(),
                (None, None) => "nowhere".into(),
            };
            println!(
                "{} rows, {} columns -> {target} in {:.2} s",
                built.rows,
                built.columns,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Explain {
            spine,
            select,
            spine_timestamp,
            full_names,
            versions,
            repo,
            run,
        } => {
            let repo = Repo::load(&repo)?;
            let (pins, as_of) = versions.resolve()?;
            let req = quiver_server::training::Request {
                spine,
                features: select.resolve(&repo)?,
                spine_timestamp,
                full_names,
                pins,
                as_of,
                ..Default::default()
            };
            let (plan, rows, columns) =
                quiver_server::training::explain(repo, run.engine_options(), &req).await?;
            for line in &plan {
                println!("{line}");
            }
            println!(
                "plan only: {rows} spine rows, {columns} columns; no event was read (`quiver join` runs it)"
            );
            Ok(())
        }
        Command::Init { .. }
        | Command::Ingest { .. }
        | Command::Apply { .. }
        | Command::Datasets { .. }
        | Command::FeatureViews { .. }
        | Command::Lineage { .. }
        | Command::Reproduce { .. }
        | Command::Models { .. }
        | Command::Train { .. }
        | Command::Predict { .. }
        | Command::Impact { .. }
        | Command::Select { .. }
        | Command::Sql { .. } => unreachable!("handled in run"),
    }
}

fn print_layouts(
    outcomes: &[quiver_offline::layout::Outcome],
    json: bool,
    dry_run: bool,
) -> Result<()> {
    use quiver_offline::gate::bytes;
    if json {
        println!("{}", serde_json::to_string_pretty(outcomes)?);
        return Ok(());
    }
    if outcomes.is_empty() {
        println!("no managed source has logged joins yet; run some joins first");
    }
    for o in outcomes {
        let p = &o.plan;
        println!("source `{}`: {} logged scan(s)", p.source, p.scans);
        println!(
            "  current layout: {} read by the logged scans",
            bytes(p.current_bytes as f64)
        );
        for (l, b) in &p.candidates {
            println!("    candidate {l}: {}", bytes(*b as f64));
        }
        let ratio = p.current_bytes as f64 / p.best_bytes.max(1) as f64;
        println!(
            "  best: {}: {} ({ratio:.1}x less, saves {}); rewrite reads and writes {}",
            p.best,
            bytes(p.best_bytes as f64),
            bytes(p.saving() as f64),
            bytes(p.rewrite_bytes as f64)
        );
        let what = match (o.chosen, o.written, dry_run) {
            (false, _, _) if p.saving() == 0 => "kept: no candidate reads less".to_string(),
            (false, _, _) => "kept: the rewrite does not fit the budget".to_string(),
            (true, _, true) => "would rewrite (dry run)".to_string(),
            (true, Some(v), _) => format!("rewritten as version {} (Delta version {v})", v + 1),
            (true, None, _) => "not rewritten".to_string(),
        };
        println!("  {what}");
    }
    Ok(())
}
