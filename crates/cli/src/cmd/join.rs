//! `join` and `explain`: training sets, built or planned (DESIGN §3, §4).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use quiver_app::training;
use quiver_core::Repo;

use super::args::{RunOptions, Select, Versions};

/// Build a training set: the spine plus the requested features, point-in-time correct.
#[derive(clap::Args)]
pub struct Join {
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
    /// Print the plan: pruning applied and the physical plan of each view.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    run: RunOptions,
}

impl Join {
    /// Whether it records a dataset version (an audited write).
    pub fn registers(&self) -> bool {
        self.register.is_some()
    }
}

impl Join {
    /// Build it, with a progress spinner, and say where it went.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let started = Instant::now();
        let repo = Repo::load(repo)?;
        let (pins, as_of) = self.versions.resolve()?;
        let req = training::Request {
            spine: self.spine,
            features: self.select.resolve(&repo)?,
            spine_timestamp: self.spine_timestamp,
            full_names: self.full_names,
            out: self.out.clone(),
            // The user's own command replaces its output, as any command-line tool does.
            overwrite: true,
            register: self.register,
            pins,
            as_of,
            cluster: self.run.cluster.clone(),
        };
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let built = training::build(repo, self.run.engine_options(), &req, |m| {
            bar.set_message(m)
        })
        .await;
        bar.finish_and_clear();
        let built = built?;
        if self.explain {
            for line in &built.plan {
                println!("{line}");
            }
        }
        let target = match (&self.out, &built.registered) {
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
        Ok(ExitCode::SUCCESS)
    }
}

/// Plan a join without running it: per view, which features come from stored states
/// (exact, widened, narrowed, other spines) and which are computed, the cost gate's
/// estimates and choice, the scan's pruning, its estimated reads and the physical plan.
/// Reads the spine and the sources' footers, no event.
#[derive(clap::Args)]
pub struct Explain {
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
    #[command(flatten)]
    run: RunOptions,
}

impl Explain {
    /// Print the plan and the training set's shape.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let (pins, as_of) = self.versions.resolve()?;
        let req = training::Request {
            spine: self.spine,
            features: self.select.resolve(&repo)?,
            spine_timestamp: self.spine_timestamp,
            full_names: self.full_names,
            pins,
            as_of,
            cluster: self.run.cluster.clone(),
            ..Default::default()
        };
        let (plan, rows, columns) =
            training::explain(repo, self.run.engine_options(), &req).await?;
        for line in &plan {
            println!("{line}");
        }
        println!(
            "plan only: {rows} spine rows, {columns} columns; no event was read (`quiver join` runs it)"
        );
        Ok(ExitCode::SUCCESS)
    }
}
