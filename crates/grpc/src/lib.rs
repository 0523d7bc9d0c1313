//! Quiver over gRPC (package `quiver.v1`): the protos and their generated code, conversion
//! between messages and the app's types, thin service implementations over `quiver-app`, the
//! server and a client. Errors become statuses in one place ([`status`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = quiver_core::Repo::load("sample-data")?;
//! let store = quiver_online::open(&repo).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6566").await?;
//! quiver_grpc::server::serve(repo, store, listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod codec;
pub mod convert;
pub mod flight;
pub mod guard;
pub mod limits;
pub mod online;
pub mod registry;
pub mod server;
pub mod status;
pub mod training;

pub use status::GrpcError;

/// Make ring rustls' process-wide crypto provider, which tonic's TLS uses: when more than
/// one provider is compiled into the process (the graph brings aws-lc-rs as well), rustls
/// cannot choose and would panic at the first handshake.
pub fn use_ring_for_tls() {
    // Fails only when a provider is already installed, which is as good.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// The generated protobuf and gRPC code of `proto/quiver/v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("quiver.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/quiver_descriptor.bin"));
}

/// A PEM file for TLS (server or client), naming the flag and file when it cannot be read.
pub(crate) fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|e| {
        GrpcError::App(quiver_app::Error::Invalid(format!(
            "{what} {}: {e}",
            path.display()
        )))
    })
}
