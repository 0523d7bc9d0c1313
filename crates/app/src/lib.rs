//! Quiver's use cases, with no transport in them: they compose the offline engine, the online
//! store, the registry and the trainer (which never depend on each other), and every front end
//! (the gRPC server in `quiver-grpc`, the CLI) calls them rather than doing their work.
//!
//! - [`catalog`]: versioned datasets (ingest, append, spines, training sets, reproduce);
//! - [`training`]: building a training set, the one implementation behind `quiver join`;
//!   [`jobs`] runs builds in the background for a server;
//! - [`online`]: materialization and lookups; [`serving`] adds what a long-lived server needs
//!   (pushes one at a time);
//! - [`models`], [`lineage`], [`sql`]: models, lineage and impact, SQL over the registry;
//! - [`access`]: the registry opened per call by a server; [`paths`]: where requests over
//!   the network may read and write; [`auth`]: tokens and roles; [`audit`]: the log of
//!   writes.
//!
//! Errors are [`Error`], classified by [`ErrorKind`] for the transports to map.

pub mod access;
pub mod audit;
pub mod auth;
pub mod catalog;
mod error;
pub mod jobs;
pub mod lineage;
pub mod metrics;
pub mod models;
pub mod online;
pub mod paths;
pub mod serving;
pub mod sql;
pub mod training;

pub use error::{Error, ErrorKind, Result, truncated};
