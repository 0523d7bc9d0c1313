//! `quiver.v1.TrainingService`: training-set jobs over [`Jobs`]. A request is checked at once
//! (features, spine, output) and refused with a status naming the problem; a valid one becomes
//! a job clients follow with `GetJob` (optionally waiting for its end) or `ListJobs`.

use std::time::Duration;

use quiver_app::audit::Auditor;
use quiver_app::jobs::{JobRequest, Jobs};
use quiver_app::serving::Features;
use tonic::{Request, Response, Status};

use crate::guard::{audited, caller};
use crate::proto::training_service_server::TrainingService;
use crate::proto::training_set_request::Kind;
use crate::proto::{self, Job};
use crate::{GrpcError, convert};

/// The longest a `GetJob` waits, under the server's 30 s request limit.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// The service over one repository's jobs.
pub struct TrainingSvc {
    jobs: std::sync::Arc<Jobs>,
    auditor: Auditor,
}

impl TrainingSvc {
    /// The service over `jobs`.
    pub fn new(jobs: std::sync::Arc<Jobs>, auditor: Auditor) -> Self {
        TrainingSvc { jobs, auditor }
    }
}

/// A request's message as the app's.
fn job_request(r: proto::TrainingSetRequest) -> JobRequest {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    JobRequest {
        features: r.kind.map(|k| match k {
            Kind::FeatureService(name) => Features::Service(name),
            Kind::Features(list) => Features::List(list.val),
        }),
        spine: r.spine,
        spine_timestamp: r.spine_timestamp,
        full_names: r.full_feature_names,
        out: non_empty(r.out),
        overwrite: r.overwrite,
        register: non_empty(r.register),
        pins: r.source_versions,
        as_of: r.as_of_micros,
    }
}

#[tonic::async_trait]
impl TrainingService for TrainingSvc {
    async fn start_training_set(
        &self,
        request: Request<proto::TrainingSetRequest>,
    ) -> Result<Response<Job>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let target = match (r.register.is_empty(), r.out.is_empty()) {
            (false, _) => r.register.clone(),
            (true, false) => r.out.clone(),
            (true, true) => "-".into(),
        };
        let started = self
            .jobs
            .start(job_request(r))
            .map_err(|e| Status::from(GrpcError::from(e)));
        audited(
            &self.auditor,
            &who,
            "grpc",
            "TrainingService/StartTrainingSet",
            &target,
            &started,
        );
        Ok(Response::new(convert::job(started?)))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let r = request.into_inner();
        let wait = Duration::from_millis(r.wait_millis as u64).min(MAX_WAIT);
        let job = self.jobs.get(&r.id, wait).await.map_err(GrpcError::from)?;
        Ok(Response::new(convert::job(job)))
    }

    async fn list_jobs(
        &self,
        _request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let jobs = self
            .jobs
            .list()
            .map_err(GrpcError::from)?
            .into_iter()
            .map(convert::job)
            .collect();
        Ok(Response::new(proto::ListJobsResponse { jobs }))
    }
}
