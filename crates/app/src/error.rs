//! The one error type of `quiver-app`: what went wrong in a use case, by domain kind, with
//! the lower crates' errors kept as sources. Transports map [`Error::kind`] to their own
//! codes (gRPC statuses in `quiver-grpc`); nothing here knows a status code.

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A use case's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names something the repository or registry does not have.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The request asks for something the server's rules forbid (a path outside its
    /// folders); the message names the rule.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller did not say who it is, or its token is unknown or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request is valid but comes before what it depends on (a fetch before its
    /// upload); the message says what to do first.
    #[error("{0}")]
    Precondition(String),
    /// The server holds as much of this as it is allowed to (uploaded rows, queued jobs);
    /// the message names the limit.
    #[error("{0}")]
    Exhausted(String),
    /// A bug or a failing store; its message is for the operator's log, not the caller.
    #[error("{0}")]
    Internal(String),
    /// The offline engine failed (a source, the spine, a join or a Delta table).
    #[error(transparent)]
    Offline(#[from] quiver_offline::Error),
    /// The registry failed or lacks what was asked for.
    #[error(transparent)]
    Registry(#[from] quiver_registry::Error),
    /// A definition or request error from `quiver-core`.
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
}

/// Arrow and DataFusion errors of the app's own queries are the offline engine's kind.
impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::Offline(e.into())
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Offline(e.into())
    }
}

/// What kind of failure an [`Error`] is, for a transport to pick its code from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something the request names does not exist.
    NotFound,
    /// The request itself is wrong and the caller can fix it.
    Invalid,
    /// The request is well formed but the server's rules forbid it (or the caller's role).
    PermissionDenied,
    /// The caller is not known (no token, an unknown or revoked one).
    Unauthenticated,
    /// The request is valid, but the data it acts on refuses it (an integer sum that leaves
    /// Int64).
    FailedPrecondition,
    /// A store the request needs cannot be reached now (a shared online store down or
    /// restarting); the same request may succeed later.
    Unavailable,
    /// Another writer changed what the request was computed from, again and again; the
    /// caller may retry.
    Aborted,
    /// The server is at a limit; the same request may succeed once others finish.
    ResourceExhausted,
    /// Not the caller's fault; details belong in the server's log.
    Internal,
}

impl Error {
    /// The domain kind of this error: the one place that classifies the lower crates' errors.
    pub fn kind(&self) -> ErrorKind {
        use quiver_offline::Error as O;
        use quiver_registry::Error as R;
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::Exhausted(_) => ErrorKind::ResourceExhausted,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::Precondition(_) => ErrorKind::FailedPrecondition,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Registry(
                R::UnknownDataset { .. }
                | R::UnknownVersion { .. }
                | R::UnknownView { .. }
                | R::UnknownViewVersion { .. }
                | R::UnknownModel { .. }
                | R::UnknownModelVersion { .. }
                | R::UnknownAlias { .. },
            ) => ErrorKind::NotFound,
            Error::Registry(R::BadRef { .. }) => ErrorKind::Invalid,
            Error::Registry(R::UnknownToken { .. }) => ErrorKind::NotFound,
            Error::Registry(R::TokenExists { .. }) => ErrorKind::FailedPrecondition,
            Error::Registry(_) => ErrorKind::Internal,
            Error::Core(c) | Error::Offline(O::Core(c)) => core_kind(c),
            // What the request got wrong (columns, types, unknown names) is the caller's to fix.
            Error::Offline(O::Source(_) | O::Spine(_)) => ErrorKind::Invalid,
            // The rows sent make an integer sum leave Int64: the data is refused, not wrapped.
            Error::Offline(O::SumOverflow { .. }) => ErrorKind::FailedPrecondition,
            Error::Offline(O::Object { fault, .. }) => match fault {
                quiver_offline::ObjectFault::Missing => ErrorKind::NotFound,
                quiver_offline::ObjectFault::Denied => ErrorKind::PermissionDenied,
                quiver_offline::ObjectFault::Failed => ErrorKind::Internal,
            },
            Error::Offline(_) => ErrorKind::Internal,
        }
    }
}

fn core_kind(c: &quiver_core::Error) -> ErrorKind {
    if let quiver_core::Error::Unavailable(_) = c {
        ErrorKind::Unavailable
    } else if let quiver_core::Error::Conflict(_) = c {
        ErrorKind::Aborted
    } else if c.is_not_found() {
        ErrorKind::NotFound
    } else if c.is_request() {
        ErrorKind::Invalid
    } else {
        ErrorKind::Internal
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut: messages echo
/// parts of a request, which may be of any size.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}
