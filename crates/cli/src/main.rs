//! `quiver`: the command line of the Quiver feature store.
//!
//! This file parses and dispatches only: each command is an `Args` struct in [`cmd`], one
//! module per command group, whose `run` calls `quiver-app` for the work and prints.

// The doc comments of commands and flags are clap's help text, where `NAME[@VER]` is syntax,
// not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod alloc;
mod cmd;
mod table;

use cmd::{
    cluster, datasets, init, join, lineage, models, online, optimize, sql, tokens, validate,
};

#[global_allocator]
static GLOBAL: alloc::HugePageAlloc = alloc::HugePageAlloc;

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "Quiver feature store: point-in-time correct training sets, online serving, versioned datasets"
)]
struct Cli {
    /// The feature repository folder (or its quiver.yaml).
    #[arg(long, default_value = ".", global = true)]
    repo: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a feature repository: the bundled sample (data, spine, a feature service), or
    /// with --empty a commented quiver.yaml skeleton.
    Init(init::Init),
    /// Check quiver.yaml and every source's columns, without reading data rows.
    Validate(validate::Validate),
    /// Compute feature views as of a time and write them to the online store.
    Materialize(online::Materialize),
    /// Push rows of a view's source (a Parquet or CSV file) to the online store: the pushed
    /// entities' values are computed again with them.
    Push(online::Push),
    /// Serve online lookups over gRPC (quiver.v1.OnlineService, health, reflection).
    Serve(online::Serve),
    /// Look features up in the online store, or through a server with --addr.
    Get(online::Get),
    /// Build a training set: the spine plus the requested features, point-in-time correct.
    Join(join::Join),
    /// Plan a join without running it: per view, which features come from stored states
    /// (exact, widened, narrowed, other spines) and which are computed, the cost gate's
    /// estimates and choice, the scan's pruning, its estimated reads and the physical plan.
    /// Reads the spine and the sources' footers, no event.
    Explain(join::Explain),
    /// Choose a layout for each managed source from the log of past joins (time bucketing
    /// and sort order minimizing the bytes those joins read) and rewrite it as a new version.
    Optimize(optimize::Optimize),
    /// Append Parquet or CSV files to the managed table of a source (a new version).
    Ingest(datasets::Ingest),
    /// Record the feature views of quiver.yaml in the registry: changed definitions become new
    /// versions.
    Apply(datasets::Apply),
    /// Versioned datasets: sources, spines and training sets.
    #[command(subcommand)]
    Datasets(datasets::Datasets),
    /// Recorded feature-view versions.
    #[command(subcommand, name = "feature-views")]
    FeatureViews(datasets::FeatureViews),
    /// What a dataset or feature-view version was made from, and what was made from it.
    Lineage(lineage::Lineage),
    /// Registered models: register, alias, tag, list, show, diff.
    #[command(subcommand)]
    Models(models::Models),
    /// Train a model on a training-set version with the built-in trainer and register it.
    Train(models::Train),
    /// Predictions of a model (NAME@VER or NAME@ALIAS) for a dataset or file.
    Predict(models::Predict),
    /// What is stale because a source got a new version (SOURCE[@VER]) or a feature's
    /// definition changed (VIEW[@VER]:FEATURE), in dependency order.
    Impact(lineage::Impact),
    /// Choose a model version: best under cost limits, the Pareto front, or successive halving.
    #[command(subcommand)]
    Select(models::Select),
    /// SQL over the registry (model_versions, metrics, lineage_edges, …) and datasets by name.
    Sql(sql::Sql),
    /// Rebuild a dataset version (or, as model:NAME@VER, a model Quiver trained) from its
    /// lineage and compare content hashes (exit 1 when they differ).
    Reproduce(datasets::Reproduce),
    /// Start a Ballista scheduler that runs joins (`join --cluster df://HOST:PORT`).
    Scheduler(cluster::Scheduler),
    /// Start a Ballista executor of a scheduler's joins.
    Executor(cluster::Executor),
    /// Bearer tokens a server accepts, each with a role: create (printed once), list, revoke.
    #[command(subcommand)]
    Tokens(tokens::Tokens),
}

/// What the audit log says a command did, for commands that write: (method, target).
fn audited(cmd: &Command) -> Option<(&'static str, String)> {
    use datasets::Datasets as D;
    use models::Models as M;
    // The command line as typed (it carries no secret: tokens are printed, never taken).
    let typed = || std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let method = match cmd {
        Command::Tokens(t) => return t.audited(),
        Command::Materialize(_) => "materialize",
        Command::Push(_) => "push",
        Command::Ingest(_) => "ingest",
        Command::Apply(_) => "apply",
        Command::Train(_) => "train",
        Command::Optimize(_) => "optimize",
        Command::Join(j) if j.registers() => "join --register",
        Command::Models(M::Register { .. }) => "models register",
        Command::Models(M::Alias { .. }) => "models alias",
        Command::Models(M::Tag { .. }) => "models tag",
        Command::Models(M::Evaluate { .. }) => "models evaluate",
        Command::Datasets(D::Add { .. }) => "datasets add",
        Command::Datasets(D::Split { .. }) => "datasets split",
        Command::Datasets(D::Filter { .. }) => "datasets filter",
        _ => return None,
    };
    Some((method, typed()))
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
    let repo = cli.repo.clone();
    let audit = audited(&cli.command);
    let done = dispatch(cli).await;
    // A write is logged in the repository's audit log, as the server logs its own.
    if let Some((method, target)) = audit
        && repo.join("quiver.yaml").is_file()
        && let Ok(log) = quiver_app::audit::Audit::open(&repo.join(".quiver/audit.log"))
    {
        let who = format!("cli:{}", std::env::var("USER").unwrap_or_default());
        let e = quiver_app::audit::Entry {
            who: &who,
            transport: "cli",
            method,
            target: &target,
        };
        match &done {
            Ok(_) => log.record::<()>(&e, &Ok(())),
            Err(err) => log.record_failure(&e, "error", &format!("{err:#}")),
        }
    }
    done
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let repo = cli.repo.as_path();
    match cli.command {
        Command::Init(c) => c.run(),
        Command::Validate(c) => c.run(repo).await,
        Command::Materialize(c) => c.run(repo).await,
        Command::Push(c) => c.run(repo).await,
        Command::Serve(c) => c.run(repo).await,
        Command::Get(c) => c.run(repo).await,
        Command::Join(c) => c.run(repo).await,
        Command::Explain(c) => c.run(repo).await,
        Command::Optimize(c) => c.run(repo).await,
        Command::Ingest(c) => c.run(repo).await,
        Command::Apply(c) => c.run(repo),
        Command::Datasets(c) => c.run(repo).await,
        Command::FeatureViews(c) => c.run(repo),
        Command::Lineage(c) => c.run(repo).await,
        Command::Models(c) => c.run(repo).await,
        Command::Train(c) => c.run(repo).await,
        Command::Predict(c) => c.run(repo).await,
        Command::Impact(c) => c.run(repo).await,
        Command::Select(c) => c.run(repo).await,
        Command::Sql(c) => c.run(repo).await,
        Command::Reproduce(c) => c.run(repo).await,
        Command::Scheduler(c) => c.run(repo).await,
        Command::Executor(c) => c.run(repo).await,
        Command::Tokens(c) => c.run(repo),
    }
}
