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
    /// The request asks for something the server's rules forbid (a path outside its
    /// folders); the message names the rule.
    #[error("{0}")]
    PermissionDenied(String),
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

/// Longest message a status carries: messages echo parts of the request, and a status's
/// message travels in a header that clients cap (a 1 MB feature name echoed back made the
/// client see RESOURCE_EXHAUSTED instead of the error).
const MAX_MESSAGE: usize = 2048;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let s = status_of(e);
        if s.message().len() <= MAX_MESSAGE {
            return s;
        }
        tonic::Status::new(s.code(), truncated(s.message(), MAX_MESSAGE))
    }
}

fn status_of(e: Error) -> tonic::Status {
    match e {
        Error::NotFound(m) => tonic::Status::not_found(m),
        Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        Error::PermissionDenied(m) => tonic::Status::permission_denied(m),
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
            quiver_registry::Error::BadRef { .. } => tonic::Status::invalid_argument(r.to_string()),
            other => status_of(Error::Internal(other.to_string())),
        },
        Error::Core(c) if c.is_not_found() => tonic::Status::not_found(c.to_string()),
        Error::Core(c) if c.is_request() => tonic::Status::invalid_argument(c.to_string()),
        Error::Core(c) => status_of(Error::Internal(c.to_string())),
        Error::Offline(quiver_offline::Error::Core(c)) => status_of(Error::Core(c)),
        // What the request got wrong (columns, types, unknown names) is the caller's to fix.
        Error::Offline(
            o @ (quiver_offline::Error::Source(_) | quiver_offline::Error::Spine(_)),
        ) => tonic::Status::invalid_argument(o.to_string()),
        // The rows sent make an integer sum leave Int64: the data is refused, not wrapped.
        Error::Offline(o @ quiver_offline::Error::SumOverflow { .. }) => {
            tonic::Status::failed_precondition(o.to_string())
        }
        Error::Offline(o) => status_of(Error::Internal(o.to_string())),
        Error::Transport(t) => {
            eprintln!("quiver serve: transport error: {t}");
            tonic::Status::unavailable("transport error")
        }
    }
}
