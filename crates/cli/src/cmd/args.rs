//! Arguments several commands share: which features, which source versions, how a join
//! runs, sizes and instants.

use anyhow::Result;
use quiver_core::Repo;
use quiver_offline::EngineOptions;

use crate::alloc;

/// Which features a command asks for.
#[derive(clap::Args)]
pub struct Select {
    /// Feature references, `view:feature`, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "service",
        required_unless_present = "service"
    )]
    pub features: Vec<String>,
    /// A feature service of quiver.yaml.
    #[arg(long)]
    pub service: Option<String>,
}

impl Select {
    /// The references asked for, checked against the repository.
    pub fn resolve(&self, repo: &Repo) -> Result<Vec<quiver_core::FeatureRef>> {
        Ok(match &self.service {
            Some(s) => repo.service(s)?,
            None => repo.resolve_refs(&self.features)?,
        })
    }
}

/// Which versions of the sources a join reads (default: the current ones).
#[derive(clap::Args)]
pub struct Versions {
    /// Read a source at a recorded version, SOURCE@VERSION (repeat for more).
    #[arg(
        long = "source-version",
        visible_alias = "source",
        value_name = "SOURCE@VERSION"
    )]
    pub pins: Vec<String>,
    /// Time travel: read every source as it was at this instant (RFC 3339).
    #[arg(long)]
    pub as_of: Option<String>,
}

impl Versions {
    /// The pins and the `--as-of` instant (microseconds).
    pub fn resolve(self) -> Result<(Vec<String>, Option<i64>)> {
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
pub struct RunOptions {
    /// Partitions to split the join into by entity key (default: the number of cores).
    #[arg(long)]
    pub partitions: Option<usize>,
    /// Memory pool limit, e.g. 512MB or 2GB (default: unbounded). It bounds what the join
    /// operators hold (packed events, spilled buckets, sweeps): past it they spill to disk.
    /// It does not bound the spine as read, the few batches per partition pair DataFusion's
    /// repartitioning holds, the training set being written or the process's own overhead,
    /// so the peak resident size is above it (64MB gave a 317 MB peak on a 2M-row spine).
    /// Below 128KB per partition a join cannot run and is refused at once.
    #[arg(long, value_parser = parse_bytes, verbatim_doc_comment)]
    pub memory_limit: Option<usize>,
    /// Neither reuse stored feature states nor store new ones.
    #[arg(long)]
    pub no_reuse: bool,
    /// Size budget of the reuse catalog (OFFLINE_STORE/reuse), e.g. 4GB (default 2GB).
    #[arg(long, value_parser = parse_bytes)]
    pub reuse_budget: Option<usize>,
    /// Take every reuse the plan finds, whatever the cost gate predicts: the reuse benchmark
    /// times the plan the gate turned down with it.
    #[arg(long, hide = true)]
    pub force_reuse: bool,
    /// Run the join on this Ballista cluster, df://HOST:PORT (default: `engine.cluster` of
    /// quiver.yaml, else in this process). Planning, reuse and registration stay here; the
    /// spine is staged in `engine.staging` (default OFFLINE_STORE/staging), which every
    /// executor must be able to read.
    #[arg(long, value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,
}

impl RunOptions {
    /// The engine options these flags give.
    pub fn engine_options(&self) -> EngineOptions {
        let mut opts = EngineOptions::default();
        if let Some(p) = self.partitions {
            opts.target_partitions = p;
        }
        opts.memory_limit = self.memory_limit;
        opts.after_sweep = Some(alloc::trim);
        opts.reuse_always = self.force_reuse;
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

/// A size such as 512MB, 2GB or 1000000.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
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

/// An RFC 3339 instant given for `flag` (default now), in microseconds.
pub fn instant_arg(text: Option<&str>, flag: &str) -> Result<i64> {
    match text {
        None => Ok(quiver_core::time::now_micros()),
        Some(t) => quiver_core::time::parse_instant(t).ok_or_else(|| {
            anyhow::anyhow!("{flag} {t:?}: expected an RFC 3339 time, e.g. 2024-02-09T00:00:00Z")
        }),
    }
}
