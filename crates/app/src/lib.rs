//! Quiver's service layer: composes the offline engine and the online store, which never
//! depend on each other, and serves them over gRPC (package `quiver.v1`).
//!
//! - [`online`]: `materialize` (offline join → online store) and lookups with Feast-style
//!   statuses;
//! - [`grpc`]: `OnlineService.GetOnlineFeatures`, gRPC health and server reflection, with
//!   errors mapped to gRPC status codes in one place ([`Error`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = quiver_core::Repo::load("sample-data")?;
//! let store = std::sync::Arc::new(quiver_online::SledStore::open(&repo.online_store)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6566").await?;
//! quiver_server::grpc::serve(repo, store, listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod codec;
mod error;
pub mod grpc;
pub mod grpc_registry;
pub mod grpc_training;
pub mod models;
pub mod online;
pub mod paths;
pub mod sql;
pub mod training;

pub use error::{Error, Result};

/// The generated protobuf and gRPC code of `proto/quiver/v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("quiver.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/quiver_descriptor.bin"));
}
