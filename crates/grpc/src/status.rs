//! The one place where Quiver's errors become gRPC statuses: the app's [`ErrorKind`] picks
//! the code; internal errors go to the server's log, not to the client. Services return
//! [`GrpcError`] from their bodies (`?` on any app result), and its `From` for
//! [`tonic::Status`] is the only mapping (the orphan rule forbids `From<quiver_app::Error>`
//! for a foreign type, hence the local enum).

use quiver_app::{Error, ErrorKind};

/// Longest message a status carries: messages echo parts of the request, and a status's
/// message travels in a header that clients cap (a 1 MB feature name echoed back made the
/// client see RESOURCE_EXHAUSTED instead of the error).
const MAX_MESSAGE: usize = 2048;

/// The error of this crate's server and client functions.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// A use case failed.
    #[error(transparent)]
    App(#[from] Error),
    /// The server could not listen, or a client could not connect.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A server answered a client's call with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl From<GrpcError> for tonic::Status {
    fn from(e: GrpcError) -> Self {
        let e = match e {
            GrpcError::App(e) => e,
            GrpcError::Status(s) => return s,
            GrpcError::Transport(t) => {
                tracing::error!(error = %t, "transport error");
                return tonic::Status::unavailable("transport error");
            }
        };
        let message = e.to_string();
        let code = match e.kind() {
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Invalid => tonic::Code::InvalidArgument,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Internal => {
                tracing::error!(error = %message, "internal error");
                return tonic::Status::internal("internal error; see the server log");
            }
        };
        tonic::Status::new(code, quiver_app::truncated(&message, MAX_MESSAGE))
    }
}
