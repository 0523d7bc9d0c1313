//! `quiver.v1.TrainingService`: training-set jobs. A request is checked at once (features,
//! spine, output) and refused with a status naming the problem; a valid one becomes a job that
//! runs the same build as `quiver join` ([`crate::training`]) in the background, and clients
//! follow it with `GetJob` (optionally waiting for its end) or `ListJobs`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use quiver_core::Repo;
use quiver_offline::EngineOptions;
use tonic::{Request, Response, Status};

use crate::paths::Confinement;
use crate::proto::training_service_server::TrainingService;
use crate::proto::training_set_request::Kind;
use crate::proto::{self, Job, JobState};
use crate::training;
use crate::{Error, Result};

/// The longest a `GetJob` waits, under the server's 30 s request limit.
const MAX_WAIT: Duration = Duration::from_secs(25);

struct Entry {
    job: Job,
    started: Instant,
    /// Becomes `true` when the job ends.
    done: tokio::sync::watch::Receiver<bool>,
}

/// The service over one repository.
pub struct Training {
    repo: Arc<Repo>,
    /// Held while a job uses the registry, which one process opens at a time (shared with
    /// [`crate::grpc_registry::Registry`]).
    registry_lock: Arc<tokio::sync::Mutex<()>>,
    jobs: Arc<Mutex<HashMap<String, Entry>>>,
    order: Mutex<Vec<String>>,
    /// Where requests may read spines and write outputs.
    paths: Confinement,
}

impl Training {
    pub fn new(repo: Repo, registry_lock: Arc<tokio::sync::Mutex<()>>, paths: Confinement) -> Self {
        Training {
            repo: Arc::new(repo),
            registry_lock,
            jobs: Default::default(),
            order: Default::default(),
            paths,
        }
    }

    fn request(&self, r: proto::TrainingSetRequest) -> Result<training::Request> {
        let features = match r.kind {
            Some(Kind::FeatureService(name)) => self.repo.service(&name)?,
            Some(Kind::Features(list)) => crate::grpc::feature_refs(&self.repo, &list.val)?,
            None => {
                return Err(Error::InvalidArgument(
                    "kind: give `features` or `feature_service`".into(),
                ));
            }
        };
        // Paths are judged before any file is opened: a spine file and the output must lie
        // inside the repository or a --data-root, and the output must be new unless the
        // request says to replace it.
        let spine = match training::looks_like_path(&r.spine) {
            true => self.paths.read("spine", &r.spine)?.display().to_string(),
            false => r.spine,
        };
        let out = match r.out.is_empty() {
            true => None,
            false => Some(self.paths.write("out", &r.out, r.overwrite)?),
        };
        let req = training::Request {
            spine,
            features,
            spine_timestamp: r.spine_timestamp,
            full_names: r.full_feature_names,
            out,
            overwrite: r.overwrite,
            register: (!r.register.is_empty()).then_some(r.register),
            pins: r.source_versions,
            as_of: r.as_of_micros,
        };
        training::check(&req)?;
        Ok(req)
    }

    fn snapshot(&self, id: &str) -> Result<(Job, tokio::sync::watch::Receiver<bool>)> {
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| Error::Internal("jobs lock".into()))?;
        let e = jobs
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("id: no job `{id}`")))?;
        let mut job = e.job.clone();
        if job.state == JobState::Running as i32 {
            job.seconds = e.started.elapsed().as_secs_f64();
        }
        Ok((job, e.done.clone()))
    }
}

/// What a panic said, for a job's error.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    format!("the build failed unexpectedly (a bug): {said}")
}

#[tonic::async_trait]
impl TrainingService for Training {
    async fn start_training_set(
        &self,
        request: Request<proto::TrainingSetRequest>,
    ) -> std::result::Result<Response<Job>, Status> {
        let req = self.request(request.into_inner())?;
        let id = {
            let mut order = self
                .order
                .lock()
                .map_err(|_| Status::from(Error::Internal("jobs lock".into())))?;
            let id = format!("job-{}", order.len() + 1);
            order.push(id.clone());
            id
        };
        let job = Job {
            id: id.clone(),
            state: JobState::Running as i32,
            out: req
                .out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            started_micros: crate::grpc::now_micros(),
            ..Job::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        self.jobs
            .lock()
            .map_err(|_| Status::from(Error::Internal("jobs lock".into())))?
            .insert(
                id.clone(),
                Entry {
                    job: job.clone(),
                    started,
                    done: rx,
                },
            );
        let (repo, jobs, lock) = (
            self.repo.as_ref().clone(),
            Arc::clone(&self.jobs),
            Arc::clone(&self.registry_lock),
        );
        tokio::spawn(async move {
            let _held = match training::recorded(&req) {
                true => Some(lock.lock_owned().await),
                false => None,
            };
            // A panic in the build (a bug here or in a library) must end the job as FAILED,
            // not leave it RUNNING for ever.
            let built = AssertUnwindSafe(training::build(
                repo,
                EngineOptions::default(),
                &req,
                |_| {},
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))));
            if let Ok(mut jobs) = jobs.lock()
                && let Some(e) = jobs.get_mut(&id)
            {
                e.job.seconds = started.elapsed().as_secs_f64();
                match built {
                    Ok(b) => {
                        e.job.state = JobState::Succeeded as i32;
                        e.job.rows = b.rows as u64;
                        e.job.columns = b.columns as u64;
                        e.job.registered = b.registered.unwrap_or_default();
                        e.job.plan = b.plan;
                    }
                    Err(err) => {
                        e.job.state = JobState::Failed as i32;
                        e.job.error = crate::error::truncated(&err.to_string(), 2048);
                    }
                }
            }
            let _ = tx.send(true);
        });
        Ok(Response::new(job))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> std::result::Result<Response<Job>, Status> {
        let r = request.into_inner();
        let (job, mut done) = self.snapshot(&r.id)?;
        if r.wait_millis == 0 || job.state != JobState::Running as i32 {
            return Ok(Response::new(job));
        }
        let wait = Duration::from_millis(r.wait_millis as u64).min(MAX_WAIT);
        // Ended or not, the job as it is when the wait is over.
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        Ok(Response::new(self.snapshot(&r.id)?.0))
    }

    async fn list_jobs(
        &self,
        _request: Request<proto::ListJobsRequest>,
    ) -> std::result::Result<Response<proto::ListJobsResponse>, Status> {
        let ids: Vec<String> = self
            .order
            .lock()
            .map_err(|_| Status::from(Error::Internal("jobs lock".into())))?
            .iter()
            .rev()
            .cloned()
            .collect();
        let jobs = ids
            .iter()
            .map(|id| self.snapshot(id).map(|(j, _)| j))
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(proto::ListJobsResponse { jobs }))
    }
}
