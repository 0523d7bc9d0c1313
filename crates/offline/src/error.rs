//! The one error type of `quiver-offline`.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the offline engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition or request error from `quiver-core` (bad config, time values, requests).
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// An integer sum left Int64: an error, never a wrapped number (DESIGN §3).
    #[error("feature `{feature}`: integer sum overflows Int64 at spine row {row}")]
    SumOverflow {
        /// The feature whose sum overflowed (`view:feature`).
        feature: String,
        /// The spine row (its `__rid`) whose window overflowed.
        row: u64,
    },
    /// A source's files or schema do not fit its definition.
    #[error("{0}")]
    Source(String),
    /// The spine does not fit the request.
    #[error("spine: {0}")]
    Spine(String),
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Object storage refused or failed a request; `message` says what failed (bucket
    /// missing, access denied, object not found, ...), never a credential.
    #[error("{url}: {message}")]
    Object {
        /// The URL of the object, folder or bucket involved.
        url: String,
        /// What failed.
        message: String,
        /// Which kind of failure it is.
        fault: ObjectFault,
    },
    /// DataFusion failed to plan or run a query.
    #[error("{0}")]
    DataFusion(DataFusionError),
    /// An Arrow error (casting, building, reading or writing batches).
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// A broken invariant: a bug in Quiver, not a fault in the input.
    #[error("internal error: {0}")]
    Internal(String),
    /// The memory limit is too small for the join; the message names the least that works.
    #[error("{0}")]
    MemoryLimit(String),
    /// A cluster that runs the join could not be reached or failed the job; the message names
    /// the cluster and what failed.
    #[error("cluster {cluster}: {message}")]
    Cluster {
        /// The scheduler's address, as configured.
        cluster: String,
        /// What failed.
        message: String,
    },
}

/// The kinds of object-storage failure callers tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectFault {
    /// The object, prefix or bucket does not exist.
    Missing,
    /// The credentials are missing, wrong, or not allowed this request.
    Denied,
    /// Anything else: the URL is malformed, the store failed or could not be reached.
    Failed,
}

/// Errors raised inside the operator travel through DataFusion boxed; unbox them on the way
/// out so that callers see Quiver's message, not DataFusion's wrapping.
impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(b) => match b.downcast::<Error>() {
                Ok(x) => *x,
                Err(b) => Error::DataFusion(DataFusionError::External(b)),
            },
            DataFusionError::Context(_, inner) => Error::from(*inner),
            DataFusionError::Shared(a) => match Arc::try_unwrap(a) {
                Ok(inner) => Error::from(inner),
                Err(a) => match a.as_ref() {
                    DataFusionError::External(b) => match b.downcast_ref::<Error>() {
                        Some(x) => Error::Source(x.to_string()),
                        None => Error::DataFusion(DataFusionError::Shared(a)),
                    },
                    _ => Error::DataFusion(DataFusionError::Shared(a)),
                },
            },
            DataFusionError::ArrowError(a, _) => Error::Arrow(*a),
            other => Error::DataFusion(other),
        }
    }
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        DataFusionError::External(Box::new(e))
    }
}
