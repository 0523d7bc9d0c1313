//! The one error type of `quiver-server`, and its mapping to gRPC status codes — the only
//! place where that mapping is made.

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a feature, view or service the repository does not have.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A store or engine failed; details go to the server log, not to the client.
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Offline(#[from] quiver_offline::Error),
    #[error(transparent)]
    Registry(#[from] quiver_registry::Error),
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::Internal(m) => {
                eprintln!("quiver serve: internal error: {m}");
                tonic::Status::internal("internal error; see the server log")
            }
            Error::Registry(r) => match r {
                quiver_registry::Error::UnknownDataset { .. }
                | quiver_registry::Error::UnknownVersion { .. }
                | quiver_registry::Error::UnknownView { .. }
                | quiver_registry::Error::UnknownViewVersion { .. }
                | quiver_registry::Error::UnknownModel { .. }
                | quiver_registry::Error::UnknownModelVersion { .. }
                | quiver_registry::Error::UnknownAlias { .. } => {
                    tonic::Status::not_found(r.to_string())
                }
                quiver_registry::Error::BadRef { .. } => {
                    tonic::Status::invalid_argument(r.to_string())
                }
                other => tonic::Status::from(Error::Internal(other.to_string())),
            },
            Error::Core(
                c @ (quiver_core::Error::Request(_) | quiver_core::Error::Config { .. }),
            ) => tonic::Status::invalid_argument(c.to_string()),
            Error::Core(c) => tonic::Status::from(Error::Internal(c.to_string())),
            // What the request got wrong (columns, types, unknown names) is the caller's to fix.
            Error::Offline(
                o @ (quiver_offline::Error::Source(_)
                | quiver_offline::Error::Spine(_)
                | quiver_offline::Error::Core(
                    quiver_core::Error::Request(_) | quiver_core::Error::Config { .. },
                )),
            ) => tonic::Status::invalid_argument(o.to_string()),
            Error::Offline(o) => tonic::Status::from(Error::Internal(o.to_string())),
            Error::Transport(t) => {
                eprintln!("quiver serve: transport error: {t}");
                tonic::Status::unavailable("transport error")
            }
        }
    }
}
