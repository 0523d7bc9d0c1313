//! The one error type of `quiver-core`.

use std::path::PathBuf;

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the data model, each with the place it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of `quiver.yaml` is wrong; `path` is the field's path, like
    /// `feature_views.user_purchases.features[2].window`.
    #[error("{}: {path}: {message}", file.display())]
    Config {
        file: PathBuf,
        path: String,
        message: String,
    },
    /// The repository file could not be read at all.
    #[error("cannot read {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A value of a time column could not be read as an instant.
    #[error(
        "column `{column}`, row {row}: cannot read {value:?} as a time (expected RFC 3339 / ISO 8601, e.g. 2024-01-31T12:00:00Z or 2024-01-31)"
    )]
    BadTime {
        column: String,
        row: usize,
        value: String,
    },
    /// A column used as a time column has a type that holds no instants.
    #[error(
        "column `{column}` is {data_type}; a time column must be a timestamp, a date, or RFC 3339 strings"
    )]
    NotATimeColumn { column: String, data_type: String },
    /// A store (online or registry) failed; the message says which and why.
    #[error("{0}")]
    Store(String),
    /// A request names something the repository does not have, or asks for something impossible.
    #[error("{0}")]
    Request(String),
}

impl Error {
    pub(crate) fn config(
        file: &std::path::Path,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.to_path_buf(),
            path: path.into(),
            message: message.into(),
        }
    }
}
