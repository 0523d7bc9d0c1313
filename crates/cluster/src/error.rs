//! The error type of the cluster crate.

use datafusion::error::DataFusionError;

/// What can fail while starting a scheduler or an executor, or running a job on a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cluster address that is not `df://HOST:PORT`.
    #[error("cluster address `{0}`: expected df://HOST:PORT")]
    Address(String),
    /// The scheduler could not be reached or refused a request.
    #[error("scheduler {endpoint}: {message}")]
    Scheduler {
        /// The scheduler's address.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// The job was accepted but failed, or its results could not be fetched.
    #[error("job {job}: {message}")]
    Job {
        /// Ballista's job id.
        job: String,
        /// What failed, as the executors reported it.
        message: String,
    },
    /// Ballista failed to start a server.
    #[error("{0}")]
    Ballista(String),
    /// A plan could not be encoded or decoded, or a setting not applied.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A socket or a work folder.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(e.to_string())
    }
}

/// The result type of the cluster crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
