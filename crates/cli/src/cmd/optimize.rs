//! `optimize`: choose and write the layout of managed sources from the log of past joins.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use quiver_app::catalog::Catalog;
use quiver_core::Repo;
use quiver_offline::EngineOptions;

use super::args::parse_bytes;

/// Choose a layout for each managed source from the log of past joins (time bucketing
/// and sort order minimizing the bytes those joins read) and rewrite it as a new version.
#[derive(clap::Args)]
pub struct Optimize {
    /// Bytes the rewrites may read and write in total (default: no limit).
    #[arg(long, value_parser = parse_bytes)]
    budget: Option<usize>,
    /// Print the plan without rewriting anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

impl Optimize {
    /// Plan, rewrite what fits the budget, record the new versions, and report.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let outcomes =
            quiver_offline::layout::optimize(&repo, self.budget.map(|b| b as u64), self.dry_run)
                .await?;
        if outcomes.iter().any(|o| o.written.is_some()) {
            // Record the new versions now, so datasets and lineage show them.
            Catalog::open(repo.clone(), EngineOptions::default())?
                .sync_sources()
                .await?;
        }
        print_layouts(&outcomes, self.json, self.dry_run)?;
        Ok(ExitCode::SUCCESS)
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
