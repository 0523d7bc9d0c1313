//! `lineage` and `impact`: what an artifact was made from, and what a change makes stale.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{catalog, json};

/// What a dataset or feature-view version was made from, and what was made from it.
#[derive(clap::Args)]
pub struct Lineage {
    /// NAME@VERSION (NAME = the latest version).
    artifact: String,
    #[arg(long, conflicts_with = "downstream")]
    upstream: bool,
    #[arg(long)]
    downstream: bool,
    #[arg(long)]
    json: bool,
}

impl Lineage {
    /// Print the edges, indented by depth, or as JSON.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let cat = catalog(repo)?;
        cat.sync_sources().await?;
        let l = quiver_app::lineage::lineage(&cat, &self.artifact, self.upstream, self.downstream)?;
        if self.json {
            let edges = |v: &Option<Vec<(usize, quiver_registry::Edge)>>| {
                v.iter()
                    .flatten()
                    .map(|(d, e)| serde_json::json!({"depth": d, "from": e.from, "to": e.to, "op": e.op}))
                    .collect::<Vec<_>>()
            };
            json(&serde_json::json!({
                "artifact": l.start,
                "upstream": edges(&l.upstream),
                "downstream": edges(&l.downstream),
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("{}", l.start);
        if let Some(ups) = &l.upstream {
            println!("upstream:");
            if ups.is_empty() {
                println!("  (none)");
            }
            for (d, e) in ups {
                println!("{}<- {} ({} of {})", "  ".repeat(*d), e.from, e.op, e.to);
            }
        }
        if let Some(downs) = &l.downstream {
            println!("downstream:");
            if downs.is_empty() {
                println!("  (none)");
            }
            for (d, e) in downs {
                println!("{}-> {} ({} of {})", "  ".repeat(*d), e.to, e.op, e.from);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// What is stale because a source got a new version (SOURCE[@VER]) or a feature's
/// definition changed (VIEW[@VER]:FEATURE), in dependency order.
#[derive(clap::Args)]
pub struct Impact {
    target: String,
    #[arg(long)]
    json: bool,
}

impl Impact {
    /// Print the stale artifacts, one per line, or as JSON.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let cat = catalog(repo)?;
        cat.sync_sources().await?;
        let stale = quiver_app::lineage::impact(&cat, &self.target)?;
        if self.json {
            json(&stale)?;
            return Ok(ExitCode::SUCCESS);
        }
        if stale.is_empty() {
            println!("nothing is stale");
        }
        for a in stale {
            println!("{a}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
