//! Training-set builds run in the background, for a server: a checked request becomes a job
//! that runs the same build as `quiver join` ([`crate::training`]), and callers follow it by
//! id, optionally waiting for its end. Every job ends in a terminal state: a panic in a build
//! (a bug here or in a library) ends it FAILED with the panic's message.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use quiver_core::Repo;
use quiver_offline::EngineOptions;
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::Metrics;
use crate::paths::Confinement;
use crate::serving::Features;
use crate::training;
use crate::{Error, Result};

/// Longest error message a job keeps: it echoes parts of the request.
const MAX_ERROR: usize = 2048;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobState {
    /// Building.
    #[default]
    Running,
    /// Built and written (and registered, when asked).
    Succeeded,
    /// Ended with an error.
    Failed,
}

/// A job as a caller sees it.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// The id callers follow the job by.
    pub id: String,
    /// Whether it is running, succeeded or failed.
    pub state: JobState,
    /// The output file, when the request wrote one.
    pub out: String,
    /// When it started, microseconds since the epoch.
    pub started_micros: i64,
    /// Seconds run so far, or in all once ended.
    pub seconds: f64,
    /// Rows of the built training set.
    pub rows: u64,
    /// Columns of the built training set.
    pub columns: u64,
    /// `NAME@VERSION (hash …)` when registered.
    pub registered: String,
    /// The plan, as `quiver join --explain` prints it.
    pub plan: Vec<String>,
    /// Why it failed.
    pub error: String,
}

/// A training-set request as it arrives over the network: paths as the caller wrote them.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// The features to join: a feature service or a list (required).
    pub features: Option<Features>,
    /// A Parquet or CSV file, or a recorded dataset `NAME[@VERSION]`.
    pub spine: String,
    /// The spine's time column; default `event_timestamp`, else its only timestamp column.
    pub spine_timestamp: Option<String>,
    /// Name every feature column `view__feature`.
    pub full_names: bool,
    /// The output file (none: register only).
    pub out: Option<String>,
    /// Whether an existing output file may be replaced.
    pub overwrite: bool,
    /// Record the result as the next version of this dataset.
    pub register: Option<String>,
    /// SOURCE@VERSION pins.
    pub pins: Vec<String>,
    /// Time travel: read every source as it was at this instant (microseconds).
    pub as_of: Option<i64>,
}

struct Entry {
    job: Job,
    started: Instant,
    /// Becomes `true` when the job ends.
    done: tokio::sync::watch::Receiver<bool>,
}

/// How many training-set builds a server runs at once, and how many more wait for a slot;
/// beyond both a request is refused (RESOURCE_EXHAUSTED) rather than queued without bound.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Builds running at once.
    pub running: usize,
    /// Builds waiting for a slot.
    pub queued: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            running: 2,
            queued: 16,
        }
    }
}

/// A build admitted past the limits: its place in the queue, then its slot.
struct Admitted {
    admitted: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    queued: bool,
}

impl Admitted {
    async fn run(
        mut self,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> (Self, Option<OwnedSemaphorePermit>) {
        let permit = slots.acquire_owned().await.ok();
        self.metrics.builds_queued.dec();
        self.metrics.builds_running.inc();
        self.queued = false;
        (self, permit)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
        match self.queued {
            true => self.metrics.builds_queued.dec(),
            false => self.metrics.builds_running.dec(),
        }
    }
}

/// The jobs of one repository.
pub struct Jobs {
    repo: Arc<Repo>,
    /// Held while a job uses the registry, which one process opens at a time (shared with
    /// [`crate::access::RegistryAccess`]).
    registry_lock: Arc<tokio::sync::Mutex<()>>,
    jobs: Arc<Mutex<HashMap<String, Entry>>>,
    order: Mutex<Vec<String>>,
    /// Where requests may read spines and write outputs.
    paths: Confinement,
    limits: JobLimits,
    /// Builds admitted (running or waiting).
    admitted: Arc<AtomicUsize>,
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

impl Jobs {
    /// Jobs over `repo`, reading and writing only where `paths` allows.
    pub fn new(repo: Repo, registry_lock: Arc<tokio::sync::Mutex<()>>, paths: Confinement) -> Self {
        Jobs {
            repo: Arc::new(repo),
            registry_lock,
            jobs: Default::default(),
            order: Default::default(),
            paths,
            limits: JobLimits::default(),
            admitted: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(JobLimits::default().running)),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// These jobs with `limits`, counting builds in `metrics`.
    pub fn limited(mut self, limits: JobLimits, metrics: Arc<Metrics>) -> Self {
        self.slots = Arc::new(tokio::sync::Semaphore::new(limits.running.max(1)));
        self.limits = limits;
        self.metrics = metrics;
        self
    }

    /// A place for one more build, or RESOURCE_EXHAUSTED naming the limits.
    fn admit(&self) -> Result<Admitted> {
        let max = self.limits.running.max(1) + self.limits.queued;
        let before = self.admitted.fetch_add(1, Ordering::SeqCst);
        if before >= max {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Exhausted(format!(
                "training sets: {} building and {} waiting, the server's limit \
                 (quiver serve --max-builds, --max-queued-builds); retry later",
                self.limits.running.max(1),
                self.limits.queued
            )));
        }
        self.metrics.builds_queued.inc();
        Ok(Admitted {
            admitted: Arc::clone(&self.admitted),
            metrics: Arc::clone(&self.metrics),
            queued: true,
        })
    }

    fn ended<T>(&self, r: &Result<T>) {
        self.metrics
            .builds
            .with_label_values(&[if r.is_ok() { "succeeded" } else { "failed" }])
            .inc();
    }

    /// `r` as a build request, its features resolved and its paths judged.
    fn request(&self, r: JobRequest) -> Result<training::Request> {
        let features = r
            .features
            .ok_or_else(|| Error::Invalid("kind: give `features` or `feature_service`".into()))?
            .resolve(&self.repo)?;
        // Paths are judged before any file is opened: a spine file and the output must lie
        // inside the repository or a --data-root, and the output must be new unless the
        // request says to replace it.
        let spine = match training::looks_like_path(&r.spine) {
            true => self.paths.read("spine", &r.spine)?.display().to_string(),
            false => r.spine,
        };
        let out = r
            .out
            .map(|o| self.paths.write("out", &o, r.overwrite))
            .transpose()?;
        let req = training::Request {
            spine,
            features,
            spine_timestamp: r.spine_timestamp,
            full_names: r.full_names,
            out,
            overwrite: r.overwrite,
            register: r.register,
            pins: r.pins,
            as_of: r.as_of,
            // a server's jobs run where its repository says (`engine.cluster`)
            cluster: None,
        };
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
        if job.state == JobState::Running {
            job.seconds = e.started.elapsed().as_secs_f64();
        }
        Ok((job, e.done.clone()))
    }

    /// Check `r` and start building it; the job as it starts.
    pub fn start(&self, r: JobRequest) -> Result<Job> {
        let req = self.request(r)?;
        training::check(&req)?;
        let admitted = self.admit()?;
        let id = {
            let mut order = self
                .order
                .lock()
                .map_err(|_| Error::Internal("jobs lock".into()))?;
            let id = format!("job-{}", order.len() + 1);
            order.push(id.clone());
            id
        };
        let job = Job {
            id: id.clone(),
            state: JobState::Running,
            out: req
                .out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            started_micros: quiver_core::time::now_micros(),
            ..Job::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        self.jobs
            .lock()
            .map_err(|_| Error::Internal("jobs lock".into()))?
            .insert(
                id.clone(),
                Entry {
                    job: job.clone(),
                    started,
                    done: rx,
                },
            );
        let (repo, jobs, lock, slots, metrics) = (
            self.repo.as_ref().clone(),
            Arc::clone(&self.jobs),
            Arc::clone(&self.registry_lock),
            Arc::clone(&self.slots),
            Arc::clone(&self.metrics),
        );
        tokio::spawn(async move {
            let _slot = admitted.run(slots).await;
            let _held = match training::recorded(&req) {
                true => Some(lock.lock_owned().await),
                false => None,
            };
            let built = AssertUnwindSafe(training::build(
                repo,
                EngineOptions::default(),
                &req,
                |_| {},
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))));
            metrics
                .builds
                .with_label_values(&[if built.is_ok() { "succeeded" } else { "failed" }])
                .inc();
            if let Ok(mut jobs) = jobs.lock()
                && let Some(e) = jobs.get_mut(&id)
            {
                e.job.seconds = started.elapsed().as_secs_f64();
                match built {
                    Ok(b) => {
                        e.job.state = JobState::Succeeded;
                        e.job.rows = b.rows as u64;
                        e.job.columns = b.columns as u64;
                        e.job.registered = b.registered.unwrap_or_default();
                        e.job.plan = b.plan;
                    }
                    Err(err) => {
                        e.job.state = JobState::Failed;
                        e.job.error = crate::error::truncated(&err.to_string(), MAX_ERROR);
                    }
                }
            }
            let _ = tx.send(true);
        });
        Ok(job)
    }

    /// Build `r` now, in memory, for the caller to stream to its client (Arrow Flight): on
    /// `uploaded` when the client sent its spine, else on `r.spine` (a dataset, or a file the
    /// paths allow). Registers when asked, holding the registry as [`Jobs::start`] does. The
    /// build stops when the returned future is dropped (the client went away).
    pub async fn stream(
        &self,
        r: JobRequest,
        uploaded: Option<training::Uploaded>,
    ) -> Result<training::Streamed> {
        if r.out.is_some() {
            return Err(Error::Invalid(
                "out: a streamed training set goes to the client; start a job to write a file"
                    .into(),
            ));
        }
        if uploaded.is_none() && r.spine.is_empty() {
            return Err(Error::Invalid(
                "spine: send the spine's rows first (DoPut on the same command) or name a dataset"
                    .into(),
            ));
        }
        let req = self.request(r)?;
        let _slot = self.admit()?.run(Arc::clone(&self.slots)).await;
        let _held = match training::streamed_recorded(&req, uploaded.is_some()) {
            true => Some(self.registry_lock.lock().await),
            false => None,
        };
        let repo = self.repo.as_ref().clone();
        let built = AssertUnwindSafe(training::build_streamed(
            repo,
            EngineOptions::default(),
            &req,
            uploaded,
        ))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))));
        self.ended(&built);
        built
    }

    /// Job `id` now, or once it ends when that comes within `wait`.
    pub async fn get(&self, id: &str, wait: Duration) -> Result<Job> {
        let (job, mut done) = self.snapshot(id)?;
        if wait.is_zero() || job.state != JobState::Running {
            return Ok(job);
        }
        // Ended or not, the job as it is when the wait is over.
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        Ok(self.snapshot(id)?.0)
    }

    /// Every job, newest first.
    pub fn list(&self) -> Result<Vec<Job>> {
        let ids: Vec<String> = self
            .order
            .lock()
            .map_err(|_| Error::Internal("jobs lock".into()))?
            .iter()
            .rev()
            .cloned()
            .collect();
        ids.iter()
            .map(|id| self.snapshot(id).map(|(j, _)| j))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_beyond_the_running_and_queued_limits_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sample-data");
        let repo = Repo::load(&dir).unwrap();
        let paths = Confinement::new(&repo.dir, &[]).unwrap();
        let metrics = Arc::new(Metrics::new());
        let jobs = Jobs::new(repo, Default::default(), paths).limited(
            JobLimits {
                running: 1,
                queued: 1,
            },
            Arc::clone(&metrics),
        );
        let a = jobs.admit().unwrap();
        let b = jobs.admit().unwrap();
        assert_eq!(metrics.builds_queued.get(), 2);
        let e = jobs.admit().err().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::ResourceExhausted);
        assert!(e.to_string().contains("--max-queued-builds"), "{e}");
        drop(a);
        let c = jobs.admit().unwrap();
        drop((b, c));
        assert_eq!(metrics.builds_queued.get(), 0);
        assert_eq!(jobs.admitted.load(Ordering::SeqCst), 0);
    }
}
