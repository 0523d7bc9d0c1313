//! One module per command group; each command is a clap `Args` struct with a `run` that
//! parses nothing more and calls `quiver-app` (or the engine) for the work, then prints.

pub mod args;
pub mod cluster;
pub mod datasets;
pub mod init;
pub mod join;
pub mod lineage;
pub mod models;
pub mod online;
pub mod optimize;
pub mod sql;
pub mod tokens;
pub mod validate;

use std::path::Path;

use anyhow::Result;
use quiver_app::catalog::Catalog;
use quiver_core::Repo;
use quiver_offline::EngineOptions;

/// The repository's catalog (registry and offline store).
fn catalog(repo: &Path) -> Result<Catalog> {
    Ok(Catalog::open(Repo::load(repo)?, EngineOptions::default())?)
}

/// Print `v` as pretty JSON.
fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
