//! The one error type of `quiver-offline`.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// An integer sum left Int64: an error, never a wrapped number (DESIGN §3).
    #[error("feature `{feature}`: integer sum overflows Int64 at spine row {row}")]
    SumOverflow { feature: String, row: u64 },
    /// A source's files or schema do not fit its definition.
    #[error("{0}")]
    Source(String),
    /// The spine does not fit the request.
    #[error("spine: {0}")]
    Spine(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    DataFusion(DataFusionError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The memory limit is too small for the join; the message names the least that works.
    #[error("{0}")]
    MemoryLimit(String),
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
