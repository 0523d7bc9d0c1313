//! A Ballista scheduler and executor with Quiver's codec registered: `quiver scheduler` and
//! `quiver executor`, and the in-process cluster of the tests. Both are Ballista's own
//! servers; this module only hands them the codec, the session settings Quiver's jobs carry
//! and the object stores Quiver's scans read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::ExecutorRegistration;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::scheduler::{
    ExecutorOperatingSystemSpecification, ExecutorSpecification,
};
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_core::{BALLISTA_PROTOCOL_VERSION, ConfigProducer, RuntimeProducer};
use ballista_executor::executor::Executor;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::metrics::LoggingMetricsCollector;
use ballista_scheduler::SessionBuilder;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileMetadataEntry, FileMetadataCache,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use object_store::path::Path as ObjectPath;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::codec::QuiverCodec;
use crate::error::{Error, Result};
use crate::settings::StorageOptions;

/// The session settings every process of a cluster starts from: Ballista's, plus Quiver's
/// storage options (a job's settings are applied on top, and a setting no process knows is
/// refused).
fn config_producer() -> ConfigProducer {
    Arc::new(|| SessionConfig::new_with_ballista().with_option_extension(StorageOptions::default()))
}

/// The object stores of a job's session: Quiver's (`s3://` by the job's storage settings
/// and this process's credentials) and the local file system.
fn object_stores(config: &SessionConfig) -> Arc<quiver_offline::objects::Registry> {
    if let Some(storage) = config.options().extensions.get::<StorageOptions>() {
        quiver_offline::objects::configure(&storage.storage());
    }
    Arc::new(quiver_offline::objects::Registry::default())
}

/// A scheduler's session for a job: Ballista's, whose runtime reaches the job's object stores
/// (the plan names `s3://` files, and the scheduler rebuilds it before cutting it in stages).
fn session_builder() -> SessionBuilder {
    Arc::new(|config: SessionConfig| {
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(object_stores(&config))
            .build_arc()?;
        Ok(SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
            .build())
    })
}

/// A running scheduler.
#[derive(Debug)]
pub struct SchedulerHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: Option<JoinHandle<Result<()>>>,
}

impl SchedulerHandle {
    /// Wait until the server stops (it does not, unless it fails).
    pub async fn wait(mut self) -> Result<()> {
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|e| Error::Ballista(format!("scheduler task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Start a Ballista scheduler with Quiver's codec on `listener` (bind it to port 0 for a free
/// one). Executors poll it for tasks; clients submit physical plans to it.
pub async fn scheduler(listener: TcpListener) -> Result<SchedulerHandle> {
    let addr = listener.local_addr().map_err(|source| Error::Io {
        what: "scheduler address".into(),
        source,
    })?;
    // Executors poll for tasks (pull), so an executor needs no port of its own but Flight's.
    let mut config = SchedulerConfig::default()
        .with_hostname(addr.ip().to_string())
        .with_port(addr.port())
        .with_scheduler_policy(ballista_core::config::TaskSchedulingPolicy::PullStaged);
    config.bind_host = addr.ip().to_string();
    config.override_physical_codec = Some(Arc::new(QuiverCodec::default()));
    config.override_config_producer = Some(config_producer());
    config.override_session_builder = Some(session_builder());
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let server =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
    let task = tokio::spawn(async move {
        start_grpc_service_with_listener(listener, server)
            .await
            .map_err(Error::from)
    });
    Ok(SchedulerHandle {
        addr,
        task: Some(task),
    })
}

/// How an executor starts.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's `HOST:PORT`.
    pub scheduler: String,
    /// Where the executor serves its shuffle output (Arrow Flight); port 0 picks a free one.
    pub bind: SocketAddr,
    /// The host name other processes reach it by; default the bound IP address.
    pub external_host: Option<String>,
    /// Tasks run at once; default the core count.
    pub concurrent_tasks: usize,
    /// Where shuffle files are written; default a temporary folder removed at exit.
    pub work_dir: Option<PathBuf>,
    /// How long to keep trying to reach the scheduler at start.
    pub connect_timeout: Duration,
}

impl ExecutorOptions {
    /// An executor of the scheduler at `scheduler` (`HOST:PORT`), on a free loopback port.
    pub fn new(scheduler: impl Into<String>) -> ExecutorOptions {
        ExecutorOptions {
            scheduler: scheduler.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            external_host: None,
            concurrent_tasks: std::thread::available_parallelism().map_or(2, |n| n.get()),
            work_dir: None,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// A running executor; dropping it stops it.
#[derive(Debug)]
pub struct ExecutorHandle {
    /// The address its Flight service listens on.
    pub addr: SocketAddr,
    /// Its id at the scheduler.
    pub id: String,
    tasks: Vec<JoinHandle<()>>,
    _work_dir: Option<tempfile::TempDir>,
}

impl ExecutorHandle {
    /// Wait until the executor stops (it does not, unless its poll loop fails).
    pub async fn wait(mut self) -> Result<()> {
        let tasks = std::mem::take(&mut self.tasks);
        for t in tasks {
            t.await
                .map_err(|e| Error::Ballista(format!("executor task: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for ExecutorHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start a Ballista executor with Quiver's codec: it registers with the scheduler, polls it
/// for tasks, and serves its shuffle output over Arrow Flight.
pub async fn executor(opts: ExecutorOptions) -> Result<ExecutorHandle> {
    let listener = TcpListener::bind(opts.bind)
        .await
        .map_err(|source| Error::Io {
            what: format!("executor: bind {}", opts.bind),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        what: "executor address".into(),
        source,
    })?;
    let (work_dir, temp) = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|source| Error::Io {
                what: format!("executor work folder {}", d.display()),
                source,
            })?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("quiver-executor-")
                .tempdir()
                .map_err(|source| Error::Io {
                    what: "executor work folder".into(),
                    source,
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let work = work_dir.to_string_lossy().into_owned();
    let scheduler = connect(&opts.scheduler, opts.connect_timeout).await?;
    let id = format!("quiver-{}-{}", std::process::id(), addr.port());
    let host = opts
        .external_host
        .clone()
        .unwrap_or_else(|| addr.ip().to_string());
    let meta = ExecutorRegistration {
        id: id.clone(),
        host: Some(host),
        port: addr.port() as u32,
        // Unused: executors poll the scheduler; nothing calls them but Flight.
        grpc_port: 0,
        specification: Some(
            ExecutorSpecification::default()
                .with_vcores(opts.concurrent_tasks as u32)
                .into(),
        ),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: BALLISTA_PROTOCOL_VERSION,
    };
    let temp_path = work.clone();
    // Footers read by one job serve the next ones (a join runs a job per feature view, and
    // each reads the same files' footers): one cache for every task's runtime.
    let footers: Arc<FileMetadataCache> = Arc::new(DefaultCache::<
        ObjectPath,
        CachedFileMetadataEntry,
    >::new(64 << 20));
    // Every task's runtime answers `s3://` with Quiver's stores, set from the job's storage
    // options (the client's `storage.s3`) and this process's credentials.
    let runtime: RuntimeProducer = Arc::new(move |config: &SessionConfig| {
        let env = RuntimeEnvBuilder::new()
            .with_object_store_registry(object_stores(config))
            .with_temp_file_path(temp_path.clone())
            .with_cache_manager(
                CacheManagerConfig::default().with_file_metadata_cache(Some(Arc::clone(&footers))),
            )
            .build()?;
        Ok(Arc::new(env))
    });
    let executor = Arc::new(Executor::with_default_execution_engine(
        meta,
        &work,
        runtime,
        config_producer(),
        Arc::new(BallistaFunctionRegistry::default()),
        Arc::new(LoggingMetricsCollector::default()),
        opts.concurrent_tasks.max(1),
    ));
    let max = config_producer()().ballista_grpc_client_max_message_size();
    let flight = FlightServiceServer::new(BallistaFlightService::new(work.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let serve = tokio::spawn(async move {
        let served = create_grpc_server(&GrpcServerConfig::default())
            .add_service(flight)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            eprintln!("executor: Flight service stopped: {e}");
        }
    });
    let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
        Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
        Arc::new(QuiverCodec::default()),
    );
    let poll = tokio::spawn(async move {
        let polled = ballista_executor::execution_loop::poll_loop(
            scheduler,
            executor,
            codec,
            None,
            None,
            ballista_executor::health::ExecutorHealth::new(),
        )
        .await;
        if let Err(e) = polled {
            eprintln!("executor: poll loop stopped: {e}");
        }
    });
    Ok(ExecutorHandle {
        addr,
        id,
        tasks: vec![poll, serve],
        _work_dir: temp,
    })
}

/// A client of the scheduler at `HOST:PORT`, retried until `timeout` (an executor may start
/// before its scheduler).
async fn connect(
    scheduler: &str,
    timeout: Duration,
) -> Result<SchedulerGrpcClient<tonic::transport::Channel>> {
    let url = format!("http://{scheduler}");
    let start = std::time::Instant::now();
    loop {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(c) => {
                let max = config_producer()().ballista_grpc_client_max_message_size();
                return Ok(c
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max));
            }
            Err(e) if start.elapsed() >= timeout => {
                return Err(Error::Scheduler {
                    endpoint: scheduler.to_string(),
                    message: format!("not reachable after {} s: {e}", timeout.as_secs()),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
