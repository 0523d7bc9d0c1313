//! The one place where Quiver's errors become HTTP statuses: the app's [`ErrorKind`] picks the
//! code; internal errors go to the server's log, not to the client. The body is what Feast's
//! server sends, a JSON string holding `{"module", "class", "message"}`, so Feast's client
//! raises an exception carrying the message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quiver_app::{Error, ErrorKind};

/// Longest message a response carries: messages echo parts of the request.
const MAX_MESSAGE: usize = 2048;

/// The error of this crate's handlers.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A use case failed.
    #[error(transparent)]
    App(#[from] Error),
    /// The body is not the JSON the route takes; the message names the field.
    #[error("{0}")]
    Body(String),
    /// The body is longer than the server takes (its limit in bytes).
    #[error(
        "the request body is larger than {0} bytes, the server's limit (quiver serve --max-message-bytes)"
    )]
    TooLarge(usize),
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            HttpError::Body(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            e @ HttpError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            HttpError::App(e) => {
                let message = e.to_string();
                let code = match e.kind() {
                    ErrorKind::NotFound => StatusCode::NOT_FOUND,
                    ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                    ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
                    ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
                    ErrorKind::FailedPrecondition | ErrorKind::Aborted => StatusCode::CONFLICT,
                    ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                    ErrorKind::Internal => {
                        tracing::error!(error = %message, transport = "http", "internal error");
                        return error_body(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal error; see the server log",
                        );
                    }
                };
                (code, message)
            }
        };
        error_body(code, &quiver_app::truncated(&message, MAX_MESSAGE))
    }
}

fn error_body(code: StatusCode, message: &str) -> Response {
    let detail = serde_json::json!({
        "module": "feast.errors",
        "class": "FeastError",
        "message": message,
    })
    .to_string();
    let body = serde_json::Value::String(detail).to_string();
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
