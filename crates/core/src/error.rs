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
        /// The repository file the mistake is in.
        file: PathBuf,
        /// The field's path in the file.
        path: String,
        /// What is wrong and what would be valid.
        message: String,
    },
    /// The repository file could not be read at all.
    #[error("cannot read {}: {source}", file.display())]
    Io {
        /// The file that could not be read.
        file: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A value of a time column could not be read as an instant.
    #[error(
        "column `{column}`, row {row}: cannot read {value:?} as a time (expected RFC 3339 / ISO 8601, e.g. 2024-01-31T12:00:00Z or 2024-01-31)"
    )]
    BadTime {
        /// The column's name.
        column: String,
        /// The row number in the whole table, from 0.
        row: usize,
        /// The text that is not an instant.
        value: String,
    },
    /// A column used as a time column has a type that holds no instants.
    #[error(
        "column `{column}` is {data_type}; a time column must be a timestamp, a date, or RFC 3339 strings"
    )]
    NotATimeColumn {
        /// The column's name.
        column: String,
        /// The column's Arrow type, as displayed.
        data_type: String,
    },
    /// A store (online or registry) failed; the message says which and why.
    #[error("{0}")]
    Store(String),
    /// A shared store cannot be reached now (a server down or restarting); retrying later
    /// may succeed. The message names the store and what failed.
    #[error("{0}")]
    Unavailable(String),
    /// Another writer changed what a write was computed from (a concurrent push to the same
    /// source through another process); computing again over the new state succeeds.
    #[error("{0}")]
    Conflict(String),
    /// A request asks for something impossible; the message names the field.
    #[error("{0}")]
    Request(String),
    /// A feature reference names a view the repository does not have.
    #[error("unknown feature view `{view}` in `{reference}`; views: {known}")]
    UnknownView {
        /// The view named in the reference.
        view: String,
        /// The reference as written.
        reference: String,
        /// The views there are, comma separated.
        known: String,
    },
    /// A feature reference names a feature its view does not have.
    #[error("feature view `{view}` has no feature `{feature}`; it has: {known}")]
    UnknownFeature {
        /// The view of the reference.
        view: String,
        /// The feature the view does not have.
        feature: String,
        /// The features the view has, comma separated.
        known: String,
    },
    /// A feature service the repository does not have.
    #[error("unknown feature service `{name}`; services: {known}")]
    UnknownService {
        /// The service asked for.
        name: String,
        /// The services there are, comma separated.
        known: String,
    },
    /// A feature reference that is not `view:feature`.
    #[error("feature reference `{reference}` must be written view:feature")]
    BadReference {
        /// The reference as written.
        reference: String,
    },
    /// The same feature asked for twice in one request.
    #[error("feature `{reference}` is requested twice")]
    DuplicateFeature {
        /// The reference asked for twice, as written.
        reference: String,
    },
    /// A request that names no feature.
    #[error("no features requested")]
    NoFeatures,
}

impl Error {
    /// Whether the error says that something named does not exist (a view, feature or
    /// service), as opposed to a request that is malformed.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::UnknownView { .. } | Error::UnknownFeature { .. } | Error::UnknownService { .. }
        )
    }

    /// Whether the error is the request's (or the repository file's) to fix.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Error::Request(_)
                | Error::Config { .. }
                | Error::BadTime { .. }
                | Error::NotATimeColumn { .. }
                | Error::UnknownView { .. }
                | Error::UnknownFeature { .. }
                | Error::UnknownService { .. }
                | Error::BadReference { .. }
                | Error::DuplicateFeature { .. }
                | Error::NoFeatures
        )
    }
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
