//! What an artifact was made from and what was made from it, and what a change makes stale:
//! the lineage queries every front end answers the same way.

use quiver_registry::{Artifact, Change, Edge, parse_ref};

use crate::catalog::Catalog;
use crate::{Error, Result};

/// An artifact's lineage in one or both directions.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// The artifact asked about.
    pub start: Artifact,
    /// What it was made from, with each edge's depth; `None` when not asked.
    pub upstream: Option<Vec<(usize, Edge)>>,
    /// What was made from it; `None` when not asked.
    pub downstream: Option<Vec<(usize, Edge)>>,
}

/// The lineage of `target` (`NAME@VERSION`, `NAME` = the latest); neither direction asked
/// means both.
pub fn lineage(cat: &Catalog, target: &str, upstream: bool, downstream: bool) -> Result<Lineage> {
    let start = cat.artifact(target)?;
    let (up, down) = match (upstream, downstream) {
        (false, false) => (true, true),
        x => x,
    };
    let walk = |on: bool, dir: bool| -> Result<Option<Vec<(usize, Edge)>>> {
        Ok(match on {
            true => Some(cat.registry.walk(&start, dir)?),
            false => None,
        })
    };
    Ok(Lineage {
        upstream: walk(up, true)?,
        downstream: walk(down, false)?,
        start,
    })
}

/// What is stale because `target` changed: a source version (`SOURCE[@VER]`) or a feature's
/// definition (`VIEW[@VER]:FEATURE`); in dependency order.
pub fn impact(cat: &Catalog, target: &str) -> Result<Vec<Artifact>> {
    let change = match target.split_once(':') {
        Some((view, feature)) => {
            let (view, ver) = parse_ref(view)?;
            let v = cat.registry.view_version(&view, ver)?;
            let never_had = |x: &quiver_registry::ViewVersion| {
                x.definition.view.features.iter().all(|f| f.name != feature)
            };
            if never_had(&v) && cat.registry.view_versions(&view)?.iter().all(never_had) {
                return Err(Error::NotFound(format!(
                    "feature view `{view}` never had a feature `{feature}`"
                )));
            }
            Change::Feature {
                view,
                feature: feature.to_string(),
                version: v.version,
            }
        }
        None => {
            let (name, ver) = parse_ref(target)?;
            Change::Dataset(cat.registry.dataset_version(&name, ver)?.reference())
        }
    };
    Ok(cat.registry.impact(&change)?)
}
