//! Submitting a view's physical plan to a Ballista scheduler and collecting its output and
//! metrics: the [`PlanRunner`] of `quiver join --cluster`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ballista_core::client::BallistaClient;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::operator_metric::Metric;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobMetricsParams, GetJobStatusParams, KeyValuePair,
    PartitionLocation, RemoveSessionParams, SuccessfulJob, execute_query_result, job_status,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;
use quiver_core::config::Storage;
use quiver_offline::runner::{PlanRunner, RemoteRun};
use tonic::transport::Channel;

use crate::codec::QuiverCodec;
use crate::error::{Error, Result};
use crate::settings::StorageOptions;

/// A Ballista 55 cluster that runs Quiver's joins: the scheduler at `df://HOST:PORT`, and a
/// folder or `s3://` prefix its executors read staged spines from.
#[derive(Debug, Clone)]
pub struct Cluster {
    url: String,
    endpoint: String,
    staging: PathBuf,
    storage: Storage,
    settings: Vec<(String, String)>,
    queue_limit: Duration,
}

impl Cluster {
    /// The cluster whose scheduler is at `url` (`df://HOST:PORT`), with spines staged under
    /// `staging`, and scans configured by the repository's `storage`.
    pub fn new(url: &str, staging: PathBuf, storage: Storage) -> Result<Cluster> {
        // the one rule for cluster addresses, shared with `engine.cluster` in quiver.yaml
        quiver_core::config::check_cluster(url).map_err(|_| Error::Address(url.to_string()))?;
        let addr = &url["df://".len()..];
        Ok(Cluster {
            url: url.to_string(),
            endpoint: format!("http://{addr}"),
            staging,
            storage,
            // The static planner cuts stages at the hash repartitions and keeps each side's
            // partition count, which is what co-partitions the join's two inputs; the
            // adaptive one may coalesce a side's partitions from its measured sizes.
            settings: vec![("ballista.planner.adaptive.enabled".into(), "false".into())],
            queue_limit: Duration::from_secs(60),
        })
    }

    /// Also send this Ballista or DataFusion setting with every job (e.g.
    /// `ballista.shuffle.force_remote_read`).
    pub fn with_setting(mut self, key: &str, value: &str) -> Cluster {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// How long a job may wait for an executor before it fails (default 60 s).
    pub fn with_queue_limit(mut self, limit: Duration) -> Cluster {
        self.queue_limit = limit;
        self
    }

    fn scheduler_err(&self, message: impl std::fmt::Display) -> Error {
        Error::Scheduler {
            endpoint: self.url.clone(),
            message: message.to_string(),
        }
    }

    async fn scheduler(&self, max: usize) -> Result<SchedulerGrpcClient<Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| self.scheduler_err(e))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| self.scheduler_err(format!("cannot connect: {e}")))?;
        Ok(SchedulerGrpcClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    /// Submit `plan` and wait for its output.
    async fn submit(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        session: &SessionContext,
        spine: &Path,
    ) -> Result<RemoteRun> {
        let staged = spine.file_name().and_then(|n| n.to_str());
        let start = Instant::now();
        let mut config = session
            .copied_config()
            .upgrade_for_ballista()
            .with_option_extension(StorageOptions::of(&self.storage));
        for (k, v) in &self.settings {
            config.options_mut().set(k, v)?;
        }
        let max = config.ballista_grpc_client_max_message_size();
        let node = PhysicalPlanNode::try_from_physical_plan(plan, &QuiverCodec::default())?;
        let mut buf = Vec::new();
        node.try_encode(&mut buf)?;
        let plan_bytes = buf.len();
        let settings = config
            .options()
            .entries()
            .into_iter()
            .map(|e| KeyValuePair {
                key: e.key,
                value: e.value,
            })
            .collect();
        let mut scheduler = self.scheduler(max).await?;
        // A session per job: the scheduler keeps a session's settings, and the next job may
        // carry others (another repository's storage, another partition count).
        static JOBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let session_id = format!(
            "quiver-{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
            JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut request = tonic::Request::new(ExecuteQueryParams {
            query: Some(Query::PhysicalPlan(buf)),
            settings,
            session_id: session_id.clone(),
            operation_id: String::new(),
        });
        ballista_core::version::insert_version_header(request.metadata_mut());
        let result = scheduler
            .execute_query(request)
            .await
            .map_err(|s| self.scheduler_err(s.message()))?
            .into_inner()
            .result
            .ok_or_else(|| self.scheduler_err("empty answer to the job submission"))?;
        let job = match result {
            execute_query_result::Result::Success(ok) => ok.job_id,
            execute_query_result::Result::Failure(f) => {
                return Err(self.scheduler_err(format!("job refused: {f:?}")));
            }
        };
        let submitted = start.elapsed();
        // Cancel the job if this future is dropped (the user interrupted the join).
        let mut guard = CancelOnDrop {
            client: Some(scheduler.clone()),
            job: job.clone(),
        };
        let done = self.wait(&mut scheduler, &job).await?;
        guard.client = None;
        let ran = start.elapsed();
        let job_err = |message: String| Error::Job {
            job: job.clone(),
            message,
        };
        let mut batches = Vec::new();
        let mut fetched_bytes = 0u64;
        for loc in done.partition_location {
            let b = fetch(loc, max).await.map_err(&job_err)?;
            fetched_bytes += b
                .iter()
                .map(|b| b.get_array_memory_size() as u64)
                .sum::<u64>();
            batches.extend(b);
        }
        let fetched = start.elapsed();
        let (metrics, stages) = self.metrics(&mut scheduler, &job, staged).await;
        // best effort: the scheduler would otherwise keep the job's session
        let _ = scheduler
            .remove_session(RemoveSessionParams { session_id })
            .await;
        let mut explain = vec![format!(
            "  job {job}: plan {} sent; submitted in {:.3} s, ran {:.3} s (scheduler: queued {} ms, executing {} ms), results fetched in {:.3} s ({})",
            human_bytes(plan_bytes as u64),
            submitted.as_secs_f64(),
            (ran - submitted).as_secs_f64(),
            done.started_at.saturating_sub(done.queued_at),
            done.ended_at.saturating_sub(done.started_at),
            (fetched - ran).as_secs_f64(),
            human_bytes(fetched_bytes),
        )];
        explain.extend(stages);
        Ok(RemoteRun {
            batches,
            metrics,
            explain,
        })
    }

    /// Poll the job until it ends.
    async fn wait(
        &self,
        scheduler: &mut SchedulerGrpcClient<Channel>,
        job: &str,
    ) -> Result<SuccessfulJob> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let status = scheduler
                .get_job_status(GetJobStatusParams {
                    job_id: job.to_string(),
                })
                .await
                .map_err(|s| self.scheduler_err(s.message()))?
                .into_inner()
                .status
                .and_then(|s| s.status);
            match status {
                Some(job_status::Status::Successful(done)) => return Ok(done),
                Some(job_status::Status::Failed(f)) => {
                    return Err(Error::Job {
                        job: job.to_string(),
                        message: f.error,
                    });
                }
                Some(job_status::Status::Running(_)) => {}
                None | Some(job_status::Status::Queued(_)) => {
                    if start.elapsed() > self.queue_limit {
                        let _ = scheduler
                            .cancel_job(CancelJobParams {
                                job_id: job.to_string(),
                            })
                            .await;
                        return Err(Error::Job {
                            job: job.to_string(),
                            message: format!(
                                "no executor started it in {} s; is an executor registered with the scheduler?",
                                self.queue_limit.as_secs()
                            ),
                        });
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The job's operator metrics summed by name, and a line per stage for `--explain`.
    /// The sums leave out the scan of the staged spine (`staged`): locally the spine is in
    /// memory, and `bytes_scanned` counts what was read of the sources.
    async fn metrics(
        &self,
        scheduler: &mut SchedulerGrpcClient<Channel>,
        job: &str,
        staged: Option<&str>,
    ) -> (BTreeMap<String, u64>, Vec<String>) {
        let mut sums = BTreeMap::new();
        let mut lines = Vec::new();
        let Ok(answer) = scheduler
            .get_job_metrics(GetJobMetricsParams {
                job_id: job.to_string(),
            })
            .await
        else {
            lines.push("  (the scheduler kept no metrics of the job)".into());
            return (sums, lines);
        };
        for stage in answer.into_inner().stages {
            let mut ops = Vec::new();
            // the stage's wall time: its tasks' first start to last end (ns)
            let (mut first, mut last) = (i64::MAX, i64::MIN);
            for op in &stage.operators {
                let spine = staged.is_some_and(|f| op.operator_desc.contains(f));
                let (mut rows, mut elapsed, mut bytes) = (0u64, 0u64, 0u64);
                let mut longest: BTreeMap<&str, u64> = BTreeMap::new();
                for m in &op.metrics {
                    let (name, value) = match &m.metric {
                        Some(Metric::OutputRows(v)) => {
                            rows += v;
                            ("output_rows", *v)
                        }
                        Some(Metric::ElapseTime(v)) => {
                            elapsed += v;
                            ("elapsed_compute", *v)
                        }
                        Some(Metric::SpillCount(v)) => ("spill_count", *v),
                        Some(Metric::SpilledBytes(v)) => ("spilled_bytes", *v),
                        Some(Metric::OutputBytes(v)) => ("output_bytes", *v),
                        Some(Metric::Count(c)) => (c.name.as_str(), c.value),
                        Some(Metric::Gauge(g)) => (g.name.as_str(), g.value),
                        Some(Metric::Time(t)) => {
                            *longest.entry(t.name.as_str()).or_insert(0) += t.value;
                            (t.name.as_str(), t.value)
                        }
                        Some(Metric::StartTimestamp(t)) => {
                            first = first.min(*t);
                            continue;
                        }
                        Some(Metric::EndTimestamp(t)) => {
                            last = last.max(*t);
                            continue;
                        }
                        _ => continue,
                    };
                    if name.contains("bytes") && name != "spilled_bytes" {
                        bytes += value;
                    }
                    if !spine {
                        *sums.entry(name.to_string()).or_insert(0) += value;
                    }
                }
                let mut text = format!("{} {rows} rows", op.operator_type);
                if elapsed > 0 {
                    text += &format!(", compute {:.2} s", elapsed as f64 / 1e9);
                }
                if let Some((name, t)) = longest.iter().max_by_key(|(_, t)| **t)
                    && *t > 0
                {
                    text += &format!(", {name} {:.2} s", *t as f64 / 1e9);
                }
                if bytes > 0 {
                    text += &format!(", {}", human_bytes(bytes));
                }
                ops.push(text);
            }
            let wall = match last > first {
                true => format!(", wall {:.2} s", (last - first) as f64 / 1e9),
                false => String::new(),
            };
            lines.push(format!(
                "  stage {} ({} partitions{wall}): {}",
                stage.stage_id,
                stage.partitions,
                ops.join(" ← ")
            ));
        }
        (sums, lines)
    }
}

#[async_trait]
impl PlanRunner for Cluster {
    fn describe(&self) -> String {
        format!("Ballista cluster {}", self.url)
    }

    fn staging(&self) -> &Path {
        &self.staging
    }

    async fn run(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        session: &SessionContext,
        spine: &Path,
    ) -> quiver_offline::Result<RemoteRun> {
        self.submit(plan, session, spine)
            .await
            .map_err(|e| quiver_offline::Error::Cluster {
                cluster: self.url.clone(),
                message: e.to_string(),
            })
    }
}

/// Read one output partition of a finished job from the executor that holds it (Flight).
async fn fetch(
    loc: PartitionLocation,
    max: usize,
) -> std::result::Result<Vec<RecordBatch>, String> {
    let layout = loc.layout();
    let meta = loc
        .executor_meta
        .ok_or("a result partition has no executor")?;
    let id = loc.partition_id.ok_or("a result partition has no id")?;
    let mut client =
        BallistaClient::try_new(&meta.host, meta.port as u16, max, false, None, 3, 100, 0, 0)
            .await
            .map_err(|e| format!("executor {}:{}: {e}", meta.host, meta.port))?;
    let stream = client
        .fetch_partition(&meta.id, &id.into(), loc.file_id, layout, true)
        .await
        .map_err(|e| format!("executor {}:{}: {e}", meta.host, meta.port))?;
    stream
        .try_collect()
        .await
        .map_err(|e| format!("executor {}:{}: {e}", meta.host, meta.port))
}

/// Cancels a job whose caller went away before it ended.
struct CancelOnDrop {
    client: Option<SchedulerGrpcClient<Channel>>,
    job: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(mut client) = self.client.take() {
            let job = self.job.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.cancel_job(CancelJobParams { job_id: job }).await;
                });
            }
        }
    }
}

fn human_bytes(n: u64) -> String {
    quiver_offline::gate::bytes(n as f64)
}
