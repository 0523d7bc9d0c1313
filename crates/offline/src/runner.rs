//! Where a view's physical plan runs: in this process (the default), or on a cluster that a
//! [`PlanRunner`] submits it to. The engine plans the same way in both cases; only the
//! execution of the finished physical plan moves, and the spine, which a plan would otherwise
//! carry inside it, is staged as a Parquet file the cluster's executors read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::Result;

/// Runs finished physical plans somewhere other than this process.
#[async_trait]
pub trait PlanRunner: Send + Sync + std::fmt::Debug {
    /// Where the plans run, for `--explain` (e.g. `Ballista cluster df://host:50050`).
    fn describe(&self) -> String;

    /// A folder or `s3://` prefix that every executor can read, where the spine of a join is
    /// staged for the time of the job.
    fn staging(&self) -> &Path;

    /// Run `plan` with `session`'s settings and return every output batch (in any order:
    /// the join's output rows carry their spine row id) and what the executors measured;
    /// `spine` is the staged spine file the plan scans (its reads are not the sources').
    async fn run(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        session: &SessionContext,
        spine: &Path,
    ) -> Result<RemoteRun>;
}

/// What a remote run returns.
#[derive(Debug, Default)]
pub struct RemoteRun {
    /// The plan's output batches.
    pub batches: Vec<RecordBatch>,
    /// Operator metrics summed over the job's tasks, by name (`bytes_scanned`,
    /// `spill_count`, `output_rows`, ...).
    pub metrics: BTreeMap<String, u64>,
    /// Lines for `--explain`: the job, its stages and where the time went.
    pub explain: Vec<String>,
}
