//! `materialize`, `push`, `serve` and `get`: the online store (DESIGN §6).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use quiver_app::online::{self, Range};
use quiver_app::serving::Serving;
use quiver_core::Repo;
use quiver_offline::{EngineOptions, source};

use super::args::{Select, instant_arg};
use crate::table;

/// Compute feature views as of a time and write them to the online store.
#[derive(clap::Args)]
pub struct Materialize {
    /// Feature views to materialize (default: all).
    views: Vec<String>,
    /// The time to materialize as of (RFC 3339); default: now.
    #[arg(long)]
    end: Option<String>,
    /// Only entities with an event at or after this time (RFC 3339).
    #[arg(long, conflicts_with = "incremental")]
    start: Option<String>,
    /// Continue from each view's watermark: only the entities whose values can have
    /// changed since the last materialization.
    #[arg(long)]
    incremental: bool,
}

impl Materialize {
    /// Materialize, with a spinner, and report each view's rows and rate.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let end = instant_arg(self.end.as_deref(), "--end")?;
        let range = match (self.start, self.incremental) {
            (Some(t), _) => Range::Since(instant_arg(Some(&t), "--start")?),
            (None, true) => Range::Incremental,
            (None, false) => Range::All,
        };
        let store = quiver_online::open(&repo).await?;
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        let done = online::materialize_range(
            &repo,
            store.as_ref(),
            &self.views,
            range,
            end,
            EngineOptions::default(),
            |v, n| bar.set_message(format!("{v}: {n} rows")),
        )
        .await;
        bar.finish_and_clear();
        for m in done? {
            println!(
                "{}: {} entity rows as of {} in {:.2} s ({:.0} rows/s)",
                m.view,
                m.rows,
                quiver_core::time::format_instant(end),
                m.seconds,
                m.rows as f64 / m.seconds.max(1e-9)
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Push rows of a view's source (a Parquet or CSV file) to the online store: the pushed
/// entities' values are computed again with them.
#[derive(clap::Args)]
pub struct Push {
    view: String,
    file: PathBuf,
    /// Also append the rows to the source's managed table.
    #[arg(long)]
    to_offline: bool,
    /// Compute the values as of this time (RFC 3339); default: now.
    #[arg(long)]
    at: Option<String>,
}

impl Push {
    /// Read the file and push it as a server would.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let at = instant_arg(self.at.as_deref(), "--at")?;
        let ctx = quiver_offline::session(&EngineOptions::default())?;
        let (schema, batches) = source::read_table(&ctx, &self.file).await?;
        let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        let store = quiver_online::open(&repo).await?;
        let serving = Serving::new(repo, store);
        let origin = self.file.display().to_string();
        let p = serving
            .push(&self.view, batch, self.to_offline, Some(at), &origin)
            .await?;
        if let Some(v) = &p.appended {
            println!("{}: {} rows in all", v.reference(), v.state.rows);
        }
        println!(
            "{}: {} rows pushed, {} entities updated",
            self.view, p.rows, p.entities
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Serve online lookups over gRPC (quiver.v1.OnlineService, health, reflection) and, with
/// --http, over HTTP as Feast's feature server does.
#[derive(clap::Args)]
pub struct Serve {
    #[arg(long, default_value = "127.0.0.1:6566")]
    addr: String,
    /// Also serve HTTP on this address, with the routes and JSON of Feast's feature server
    /// (POST /get-online-features, /push, /write-to-online-store, /materialize,
    /// /materialize-incremental; GET /health).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// A folder besides the repository where requests may read spines and write
    /// training sets (repeat for more); requests may use no other path.
    #[arg(long = "data-root", value_name = "DIR")]
    data_roots: Vec<PathBuf>,
    /// Require a token (`authorization: Bearer …`, from `quiver tokens create`) even on a
    /// loopback address. Off a loopback address tokens are always required, unless
    /// --insecure-no-auth.
    #[arg(long)]
    auth: bool,
    /// Serve a non-loopback address without tokens: anyone who reaches it may read, push,
    /// materialize and register.
    #[arg(long, conflicts_with = "auth")]
    insecure_no_auth: bool,
    /// Where every write is logged, one JSON line each (default REPO/.quiver/audit.log).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Requests answered at once, per protocol; more are refused (RESOURCE_EXHAUSTED, 429).
    #[arg(long, default_value_t = quiver_grpc::server::MAX_IN_FLIGHT)]
    max_in_flight: usize,
    /// Entities one lookup may ask for.
    #[arg(long, default_value_t = quiver_app::serving::MAX_ENTITIES)]
    max_entities: usize,
    /// Largest lookup, push or job request, in bytes (a gRPC message or an HTTP body);
    /// larger ones are refused (RESOURCE_EXHAUSTED, 413).
    #[arg(long, default_value_t = quiver_grpc::server::MAX_REQUEST_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_message_bytes: u64,
    /// Training-set builds (jobs and Flight) running at once.
    #[arg(long, default_value_t = 2)]
    max_builds: usize,
    /// Training-set builds waiting for a slot; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 16)]
    max_queued_builds: usize,
    /// Seconds requests in flight have to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// The server's TLS certificate chain (PEM): gRPC, Flight and HTTP then speak TLS.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Logs on stderr as `text` or as `json` (one object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// The most detailed logs: error, warn, info, debug (a line per request) or trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

/// Logs on stderr, as text or JSON lines, up to `level`.
fn init_logs(format: &str, level: tracing::Level) {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    // Fails only when a subscriber is already set, which then stays.
    let _ = match format {
        "json" => logs.json().try_init(),
        _ => logs.try_init(),
    };
}

/// Whether `addr` (host:port) is a loopback address, where a server may run without tokens.
fn loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

impl Serve {
    /// Serve until SIGINT or SIGTERM.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        init_logs(&self.log_format, self.log_level);
        let repo = Repo::load(repo)?;
        let store = quiver_online::open(&repo).await?;
        let listener = tokio::net::TcpListener::bind(&self.addr)
            .await
            .with_context(|| format!("cannot listen on {}", self.addr))?;
        let http_listener = match &self.http {
            None => None,
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
        };
        let open_to_network = !loopback(&listener.local_addr()?)
            || match &http_listener {
                Some(l) => !loopback(&l.local_addr()?),
                None => false,
            };
        let tokens = if self.auth || (open_to_network && !self.insecure_no_auth) {
            let registry = quiver_registry::Registry::open(&repo.registry)?;
            let records = registry.tokens()?;
            drop(registry);
            let t = quiver_app::auth::Tokens::load(repo.registry.clone(), records);
            if t.is_empty() {
                eprintln!(
                    "quiver: tokens are required and none exists yet: every call but health is refused until `quiver tokens create`"
                );
            }
            Some(t)
        } else {
            if open_to_network {
                eprintln!(
                    "quiver: WARNING: --insecure-no-auth: anyone who reaches this server may read, push, materialize and register"
                );
            }
            None
        };
        let audit_path = self
            .audit_log
            .clone()
            .unwrap_or_else(|| repo.dir.join(".quiver/audit.log"));
        let auditor =
            quiver_app::audit::Auditor::to(Arc::new(quiver_app::audit::Audit::open(&audit_path)?));
        let metrics = Arc::new(quiver_app::metrics::Metrics::new());
        let serving = Arc::new(Serving::new(repo.clone(), store.clone()).with(
            self.max_entities,
            Arc::clone(&metrics),
            auditor.clone(),
        ));
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(quiver_grpc::server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        let scheme = if tls.is_some() { " (TLS)" } else { "" };
        let auth = if tokens.is_some() {
            ", tokens required"
        } else {
            ""
        };
        eprintln!(
            "quiver: serving {}{scheme}{auth} on {}",
            repo.project,
            listener.local_addr()?
        );
        let mut side = Vec::new();
        if let Some(l) = http_listener {
            eprintln!(
                "quiver: serving {} over HTTP (Feast feature server){scheme} on {}",
                repo.project,
                l.local_addr()?
            );
            let options = quiver_http::server::HttpOptions {
                tokens: tokens.clone(),
                max_in_flight: self.max_in_flight,
                max_body_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
                tls: tls
                    .as_ref()
                    .map(|t| (t.cert.clone(), t.key.clone(), t.client_ca.clone())),
            };
            side.push(tokio::spawn(quiver_http::server::serve_with(
                Arc::clone(&serving),
                l,
                options,
                shutdown_signal(),
            )));
        }
        if let Some(addr) = &self.metrics_addr {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!("quiver: serving metrics on {}", l.local_addr()?);
            side.push(tokio::spawn(quiver_http::server::serve_metrics(
                Arc::clone(&serving),
                l,
                shutdown_signal(),
            )));
        }
        let options = quiver_grpc::server::ServeOptions {
            data_roots: self.data_roots,
            tokens,
            auditor,
            metrics,
            max_in_flight: self.max_in_flight,
            max_entities: self.max_entities,
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            jobs: quiver_app::jobs::JobLimits {
                running: self.max_builds,
                queued: self.max_queued_builds,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            tls,
        };
        quiver_grpc::server::serve_on(serving, listener, options, shutdown_signal()).await?;
        for h in side {
            // The side servers drain with the same signal, within the same grace.
            match tokio::time::timeout(Duration::from_secs(self.shutdown_grace), h).await {
                Ok(r) => r?.context("HTTP server")?,
                Err(_) => eprintln!("quiver: HTTP requests still in flight; stopping anyway"),
            }
        }
        eprintln!("quiver: stopped");
        Ok(ExitCode::SUCCESS)
    }
}

/// Look features up in the online store, or through a server with --addr.
#[derive(clap::Args)]
pub struct Get {
    /// A running `quiver serve` to ask instead of opening the store (host:port).
    #[arg(long)]
    addr: Option<String>,
    /// An entity as key=value (comma-separated for composite keys); repeat for more.
    #[arg(long = "entity", required = true)]
    entities: Vec<String>,
    #[command(flatten)]
    select: Select,
    /// Look up as of this time (RFC 3339; default now): ttl is checked against it.
    #[arg(long)]
    at: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// How a client reaches a server: its token and TLS.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// The bearer token to send (default $QUIVER_TOKEN).
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Speak TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The client's certificate (PEM), for a server that requires one.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The client's private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

impl ClientArgs {
    fn options(&self) -> quiver_grpc::client::ClientOptions {
        quiver_grpc::client::ClientOptions {
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        }
    }
}

impl Get {
    /// Look up and print a table (or JSON).
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let refs = self.select.resolve(&repo)?;
        let at = instant_arg(self.at.as_deref(), "--at")?;
        let ents = self
            .entities
            .iter()
            .map(|e| online::parse_entity(e))
            .collect::<Result<Vec<_>, _>>()?;
        let values = match &self.addr {
            Some(addr) => {
                quiver_grpc::client::remote_get(addr, &self.client.options(), &refs, &ents, at)
                    .await?
            }
            None => {
                let store = quiver_online::open(&repo).await?;
                online::get(&repo, store.as_ref(), &refs, &ents, at).await?
            }
        };
        print_values(&refs, &self.entities, &values, self.json);
        Ok(ExitCode::SUCCESS)
    }
}

/// Resolves on SIGINT or SIGTERM, for a graceful shutdown.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn print_values(
    refs: &[quiver_core::FeatureRef],
    entities: &[String],
    values: &[Vec<online::Value>],
    json: bool,
) {
    use quiver_core::store::json_string;
    if json {
        let rows: Vec<String> = entities
            .iter()
            .zip(values)
            .map(|(e, vals)| {
                let feats: Vec<String> = refs
                    .iter()
                    .zip(vals)
                    .map(|(r, v)| {
                        format!(
                            "{}: {{\"value\": {}, \"status\": \"{}\", \"event_time\": {}}}",
                            json_string(&r.to_string()),
                            v.value.to_json(),
                            v.status.name(),
                            v.event_time
                                .map(|t| json_string(&quiver_core::time::format_instant(t)))
                                .unwrap_or_else(|| "null".into())
                        )
                    })
                    .collect();
                format!(
                    "{{\"entity\": {}, \"features\": {{{}}}}}",
                    json_string(e),
                    feats.join(", ")
                )
            })
            .collect();
        println!("[{}]", rows.join(",\n "));
        return;
    }
    let mut table: Vec<Vec<String>> = vec![
        std::iter::once("entity".to_string())
            .chain(refs.iter().map(|r| r.to_string()))
            .collect(),
    ];
    for (e, vals) in entities.iter().zip(values) {
        let mut row = vec![e.clone()];
        for v in vals {
            row.push(match v.status {
                online::Status::Present => v.value.to_string(),
                s => s.name().to_string(),
            });
        }
        table.push(row);
    }
    table::print_table(table);
}
