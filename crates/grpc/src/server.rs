//! The gRPC server: `quiver.v1` Online, Registry and Training services, gRPC health and
//! server reflection, over one repository.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quiver_app::access::RegistryAccess;
use quiver_app::jobs::Jobs;
use quiver_app::paths::Confinement;
use quiver_app::serving::Serving;
use quiver_core::Repo;
use quiver_core::store::OnlineStore;

use arrow_flight::flight_service_server::FlightServiceServer;

use crate::flight::FlightSvc;
use crate::online::OnlineSvc;
use crate::proto::online_service_server::OnlineServiceServer;
use crate::proto::registry_service_server::RegistryServiceServer;
use crate::proto::training_service_server::TrainingServiceServer;
use crate::registry::RegistrySvc;
use crate::status::GrpcError;
use crate::training::TrainingSvc;

/// Largest request accepted (4 MiB): a lookup is a few hundred entities, not a bulk load.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest model registration accepted (256 MiB): it carries the artifact.
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;

/// Largest Flight message accepted (64 MiB): one record batch of an uploaded spine.
pub const MAX_FLIGHT_MESSAGE_BYTES: usize = 64 << 20;

/// How a server is set up beyond its repository and store.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Folders besides the repository's where requests may read spines and write outputs.
    pub data_roots: Vec<std::path::PathBuf>,
}

/// Serve on `listener` until `shutdown` resolves, then drain in-flight requests.
pub async fn serve(
    repo: Repo,
    store: Arc<dyn OnlineStore>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    serve_with(repo, store, listener, ServeOptions::default(), shutdown).await
}

/// [`serve`] with options.
pub async fn serve_with(
    repo: Repo,
    store: Arc<dyn OnlineStore>,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    let paths = Confinement::new(&repo.dir, &options.data_roots)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OnlineServiceServer<OnlineSvc>>()
        .await;
    health_reporter
        .set_serving::<RegistryServiceServer<RegistrySvc>>()
        .await;
    health_reporter
        .set_serving::<TrainingServiceServer<TrainingSvc>>()
        .await;
    health_reporter
        .set_serving::<FlightServiceServer<FlightSvc>>()
        .await;
    // Reflection in both versions: grpcio's Python reflection client, older grpcurl, Postman
    // and evans speak v1alpha; newer tools speak v1.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| quiver_app::Error::Internal(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| quiver_app::Error::Internal(e.to_string()))?;
    // The registry is opened by one call at a time, registry calls and training jobs alike.
    let access = RegistryAccess::new(repo.clone());
    let jobs = Arc::new(Jobs::new(repo.clone(), access.lock(), paths));
    // Flight shares the port: one address serves lookups, the registry and training sets.
    let flight = FlightServiceServer::new(FlightSvc::new(
        repo.clone(),
        Arc::clone(&jobs),
        access.clone(),
    ))
    .max_decoding_message_size(MAX_FLIGHT_MESSAGE_BYTES);
    let registry = RegistryServiceServer::new(RegistrySvc::new(access))
        .max_decoding_message_size(MAX_ARTIFACT_BYTES);
    let training = TrainingServiceServer::new(TrainingSvc::new(jobs));
    let online = OnlineServiceServer::new(OnlineSvc::new(Arc::new(Serving::new(repo, store))))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    tonic::transport::Server::builder()
        // Caps a request's time when the client sets no deadline; client deadlines
        // (grpc-timeout) are honoured as well.
        .timeout(Duration::from_secs(30))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(online)
        .add_service(registry)
        .add_service(training)
        .add_service(flight)
        .serve_with_incoming_shutdown(
            // Small responses must not wait for Nagle's algorithm (a 40 ms delayed-ACK stall).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
