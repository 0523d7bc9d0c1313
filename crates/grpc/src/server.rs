//! The gRPC server: `quiver.v1` Online, Registry and Training services, gRPC health and
//! server reflection, over one repository.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quiver_app::access::RegistryAccess;
use quiver_app::audit::Auditor;
use quiver_app::auth::Tokens;
use quiver_app::jobs::{JobLimits, Jobs};
use quiver_app::metrics::Metrics;
use quiver_app::paths::Confinement;
use quiver_app::serving::Serving;
use quiver_core::Repo;
use quiver_core::store::OnlineStore;

use arrow_flight::flight_service_server::FlightServiceServer;

use crate::flight::FlightSvc;
use crate::guard::{Guard, GuardLayer};
use crate::online::OnlineSvc;
use crate::proto::online_service_server::OnlineServiceServer;
use crate::proto::registry_service_server::RegistryServiceServer;
use crate::proto::training_service_server::TrainingServiceServer;
use crate::registry::RegistrySvc;
use crate::status::GrpcError;
use crate::training::TrainingSvc;

pub use crate::limits::{
    MAX_ARTIFACT_BYTES, MAX_FLIGHT_MESSAGE_BYTES, MAX_IN_FLIGHT, MAX_REQUEST_BYTES,
};

/// How a server is set up beyond its repository and store.
#[derive(Clone)]
pub struct ServeOptions {
    /// Folders besides the repository's where requests may read spines and write outputs.
    pub data_roots: Vec<std::path::PathBuf>,
    /// The tokens callers must present (reloaded when `quiver tokens` changes them); `None`:
    /// authentication is off.
    pub tokens: Option<Arc<Tokens>>,
    /// Where writes are logged.
    pub auditor: Auditor,
    /// Where requests and work are counted.
    pub metrics: Arc<Metrics>,
    /// Requests answered at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Entities one lookup may ask for.
    pub max_entities: usize,
    /// Largest lookup, push or job request message (0: [`MAX_REQUEST_BYTES`]); larger ones are
    /// refused (RESOURCE_EXHAUSTED) before they are decoded. Model registrations and Flight
    /// uploads have their own bounds ([`MAX_ARTIFACT_BYTES`], [`MAX_FLIGHT_MESSAGE_BYTES`]).
    pub max_message_bytes: usize,
    /// Training-set builds at once and waiting.
    pub jobs: JobLimits,
    /// How long requests in flight may take to finish once shutdown is asked for.
    pub shutdown_grace: Duration,
    /// TLS: the server's certificate and key, and the CA of client certificates when clients
    /// must present one.
    pub tls: Option<TlsFiles>,
}

/// PEM files of a TLS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: std::path::PathBuf,
    /// The server's private key.
    pub key: std::path::PathBuf,
    /// The CA that signs client certificates (mutual TLS), if clients must present one.
    pub client_ca: Option<std::path::PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            data_roots: Vec::new(),
            tokens: None,
            auditor: Auditor::default(),
            metrics: Arc::new(Metrics::new()),
            max_in_flight: MAX_IN_FLIGHT,
            max_entities: quiver_app::serving::MAX_ENTITIES,
            max_message_bytes: MAX_REQUEST_BYTES,
            jobs: JobLimits::default(),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
        }
    }
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
    let serving = Arc::new(Serving::new(repo, store).with(
        options.max_entities,
        Arc::clone(&options.metrics),
        options.auditor.clone(),
    ));
    serve_on(serving, listener, options, shutdown).await
}

/// [`serve_with`] over a [`Serving`] shared with other transports (HTTP) of the process.
pub async fn serve_on(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    let repo = serving.repo().clone();
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
    let jobs = Arc::new(
        Jobs::new(repo.clone(), access.lock(), paths)
            .limited(options.jobs, Arc::clone(&options.metrics)),
    );
    let auditor = options.auditor.clone();
    // Flight shares the port: one address serves lookups, the registry and training sets.
    let flight = FlightServiceServer::new(FlightSvc::new(
        repo.clone(),
        Arc::clone(&jobs),
        access.clone(),
        auditor.clone(),
    ))
    .max_decoding_message_size(MAX_FLIGHT_MESSAGE_BYTES);
    let registry = RegistryServiceServer::new(RegistrySvc::new(access.clone(), auditor.clone()))
        .max_decoding_message_size(MAX_ARTIFACT_BYTES);
    let max_message = match options.max_message_bytes {
        0 => MAX_REQUEST_BYTES,
        n => n,
    };
    let training = TrainingServiceServer::new(TrainingSvc::new(jobs, auditor))
        .max_decoding_message_size(max_message);
    let online =
        OnlineServiceServer::new(OnlineSvc::new(serving)).max_decoding_message_size(max_message);
    // Tokens made or revoked by `quiver tokens` take effect without a restart.
    let reload = options.tokens.clone().map(|tokens| {
        let access = access.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(quiver_app::auth::RELOAD_EVERY).await;
                if tokens.changed()
                    && let Ok(records) = access.tokens().await
                {
                    tokens.reload(records);
                }
            }
        })
    });
    let guard = GuardLayer(Arc::new(Guard {
        tokens: options.tokens.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(options.max_in_flight.max(1))),
        max_in_flight: options.max_in_flight.max(1),
        metrics: Arc::clone(&options.metrics),
        max_message_bytes: max_message,
    }));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        crate::use_ring_for_tls();
        let mut config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(
                crate::read_pem(&tls.cert, "--tls-cert")?,
                crate::read_pem(&tls.key, "--tls-key")?,
            ),
        );
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(
                crate::read_pem(ca, "--tls-client-ca")?,
            ));
        }
        builder = builder.tls_config(config)?;
    }
    // Once shutdown is asked for, requests in flight have `shutdown_grace` to finish.
    let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = asked_tx.send(());
    };
    let server = builder
        // Caps a request's time when the client sets no deadline; client deadlines
        // (grpc-timeout) are honoured as well.
        .timeout(Duration::from_secs(30))
        .layer(guard)
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
        );
    let grace = options.shutdown_grace;
    let served = tokio::select! {
        r = server => r.map_err(GrpcError::from),
        _ = async {
            let _ = asked_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            eprintln!(
                "quiver serve: requests still in flight after {:.0} s; stopping anyway",
                grace.as_secs_f64()
            );
            Ok(())
        }
    };
    if let Some(r) = reload {
        r.abort();
    }
    served
}
