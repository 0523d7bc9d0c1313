//! `validate`: quiver.yaml and every source's files, without reading data rows.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use quiver_core::Repo;
use quiver_offline::{Engine, EngineOptions};

/// Check quiver.yaml and every source's columns, without reading data rows.
#[derive(clap::Args)]
pub struct Validate {}

impl Validate {
    /// Check, and say what was checked.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let (views, sources) = (repo.views.len(), repo.sources.len());
        let name = repo.project.clone();
        Engine::new(repo, EngineOptions::default())?.check().await?;
        println!("{name}: ok ({views} feature views, {sources} sources)");
        Ok(ExitCode::SUCCESS)
    }
}
