//! The routes over [`Serving`], and the server.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quiver_app::audit::Entry;
use quiver_app::auth::{Principal, Role, Tokens};
use quiver_app::online::Range;
use quiver_app::serving::{Features, Serving};

use crate::HttpError;
use crate::feast::{self, parse};

/// Largest body taken by default (16 MiB): lookups are small; pushes carry rows.
pub const MAX_BODY: usize = 16 << 20;

/// Who may call, how many at once, over what: the HTTP server's side of DESIGN §12.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// The tokens callers must present; `None`: authentication is off.
    pub tokens: Option<Arc<Tokens>>,
    /// Requests answered at once (0: the default, 512); more get 429.
    pub max_in_flight: usize,
    /// Largest request body (0: the default, [`MAX_BODY`]); larger ones get 413.
    pub max_body_bytes: usize,
    /// The server's certificate and key (PEM files), and the CA of client certificates when
    /// clients must present one.
    pub tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
}

/// The feature server's routes over `serving`, open to anyone (tests, embedding).
pub fn router(serving: Arc<Serving>) -> Router {
    router_with(serving, &HttpOptions::default())
}

/// The routes over `serving`, behind the token check, the bound on requests in flight and
/// the request metrics of `options`.
pub fn router_with(serving: Arc<Serving>, options: &HttpOptions) -> Router {
    let max = match options.max_in_flight {
        0 => 512,
        n => n,
    };
    let max_body = match options.max_body_bytes {
        0 => MAX_BODY,
        n => n,
    };
    let guard = Arc::new(Guard {
        max_body,
        tokens: options.tokens.clone(),
        metrics: Arc::clone(serving.metrics()),
        permits: Arc::new(tokio::sync::Semaphore::new(max)),
        max_in_flight: max,
    });
    Router::new()
        .route("/health", get(health))
        .route("/get-online-features", post(get_online_features))
        .route("/push", post(push))
        .route("/write-to-online-store", post(write_to_online_store))
        .route("/materialize", post(materialize))
        .route("/materialize-incremental", post(materialize_incremental))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(guard, guarded))
        .with_state(serving)
}

/// Serve the routes on `listener` until `shutdown` resolves, then finish the requests in
/// flight.
pub async fn serve(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(serving, listener, HttpOptions::default(), shutdown).await
}

/// [`serve`] with options: tokens, limits, TLS.
pub async fn serve_with(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    options: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router_with(serving, &options);
    match &options.tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((cert, key, client_ca)) => {
            let config = crate::tls::server_config(cert, key, client_ca.as_deref())?;
            let listener = crate::tls::TlsListener::new(listener, config)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Prometheus metrics of `serving` on `listener` (`GET /metrics`), until `shutdown`.
pub async fn serve_metrics(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(serving);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(serving): S) -> Response {
    serving.observe_store().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        serving.metrics().render(),
    )
        .into_response()
}

struct Guard {
    tokens: Option<Arc<Tokens>>,
    metrics: Arc<quiver_app::metrics::Metrics>,
    permits: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
    /// The longest body taken, for the refusal's message.
    max_body: usize,
}

/// The role a route needs (`None`: open) and its name for metrics and messages.
fn route_role(path: &str) -> (Option<Role>, &'static str) {
    match path {
        "/health" => (None, "/health"),
        "/get-online-features" => (Some(Role::Reader), "/get-online-features"),
        "/push" => (Some(Role::Writer), "/push"),
        "/write-to-online-store" => (Some(Role::Writer), "/write-to-online-store"),
        "/materialize" => (Some(Role::Writer), "/materialize"),
        "/materialize-incremental" => (Some(Role::Writer), "/materialize-incremental"),
        // Unknown routes still need a token: what exists is not for anyone to probe.
        _ => (Some(Role::Reader), "other"),
    }
}

async fn guarded(
    State(guard): State<Arc<Guard>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let (needed, route) = route_role(req.uri().path());
    let Some(needed) = needed else {
        return next.run(req).await;
    };
    let done = |resp: Response| {
        guard.metrics.request(
            "http",
            route,
            resp.status().as_str(),
            started.elapsed().as_secs_f64(),
        );
        resp
    };
    let who = match &guard.tokens {
        None => Principal::anonymous(),
        Some(tokens) => {
            let header = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or(""));
            match tokens
                .verify(header)
                .and_then(|who| who.require(needed, route).map(|_| who))
            {
                Ok(who) => who,
                Err(e) => return done(HttpError::App(e).into_response()),
            }
        }
    };
    let Ok(_permit) = Arc::clone(&guard.permits).try_acquire_owned() else {
        return done(
            HttpError::App(quiver_app::Error::Exhausted(format!(
                "the server is answering {} requests, its limit (quiver serve --max-in-flight); \
                 retry later",
                guard.max_in_flight
            )))
            .into_response(),
        );
    };
    let span =
        tracing::debug_span!("request", transport = "http", method = route, caller = %who.name);
    req.extensions_mut().insert(who);
    let in_flight = quiver_app::metrics::Raised::new(&guard.metrics.in_flight);
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    drop(in_flight);
    // axum's own refusal of a long body is plain text; say it as every other error is said,
    // naming the flag.
    let resp = match resp.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            HttpError::TooLarge(guard.max_body).into_response()
        }
        _ => resp,
    };
    let resp = done(resp);
    span.in_scope(|| {
        tracing::debug!(
            code = resp.status().as_u16(),
            seconds = started.elapsed().as_secs_f64(),
            "answered"
        )
    });
    resp
}

/// Record a write in the audit log with the outcome the client gets.
fn audited<T>(
    serving: &Serving,
    who: &Principal,
    route: &str,
    target: &str,
    outcome: &Result<T, HttpError>,
) {
    let e = Entry {
        who: &who.name,
        transport: "http",
        method: route,
        target,
    };
    match outcome {
        Ok(_) => serving.auditor().record::<()>(&e, &Ok(())),
        Err(HttpError::App(err)) => {
            serving
                .auditor()
                .record_failure(&e, &format!("{:?}", err.kind()), &err.to_string())
        }
        Err(HttpError::Body(m)) => serving.auditor().record_failure(&e, "Invalid", m),
        Err(too_large @ HttpError::TooLarge(_)) => {
            serving
                .auditor()
                .record_failure(&e, "ResourceExhausted", &too_large.to_string())
        }
    }
}

type S = State<Arc<Serving>>;
type W = Extension<Principal>;

async fn health() -> StatusCode {
    StatusCode::OK
}

fn json(v: &serde_json::Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn get_online_features(State(serving): S, body: Bytes) -> Result<Response, HttpError> {
    let req: feast::GetOnlineFeaturesRequest = parse(&body)?;
    let features = match (req.feature_service, req.features.is_empty()) {
        (Some(name), _) => Features::Service(name),
        (None, false) => Features::List(req.features),
        (None, true) => {
            return Err(HttpError::Body(
                "features: give `features` or `feature_service`".into(),
            ));
        }
    };
    let refs = features.resolve(serving.repo())?;
    let rows = feast::entity_rows(&req.entities)?;
    let values = serving.lookup(&refs, &rows, None).await?;
    let names = quiver_app::serving::feature_names(&refs, req.full_feature_names);
    Ok(json(&feast::response(&req.entities, names, &values)))
}

/// The view a push names: a feature view, or a source standing for its first view (a push
/// recomputes every view of the source either way).
fn view_of(serving: &Serving, name: &str) -> Result<String, HttpError> {
    let repo = serving.repo();
    if repo.views.contains_key(name) {
        return Ok(name.to_string());
    }
    repo.views
        .values()
        .find(|v| v.source == name)
        .map(|v| v.name.clone())
        .ok_or_else(|| {
            HttpError::App(quiver_app::Error::NotFound(format!(
                "push_source_name: `{name}` is neither a source with feature views nor a feature view"
            )))
        })
}

async fn push_df(
    serving: &Serving,
    view: &str,
    df: &std::collections::HashMap<String, Vec<serde_json::Value>>,
    to: &str,
) -> Result<(), HttpError> {
    let schema = serving.push_schema(view).await?;
    let batch = quiver_app::serving::push_batch(&schema, &feast::columns(df)?)?;
    let origin = format!("http push to {view}");
    match to {
        "online" => serving.push(view, batch, false, None, &origin).await?,
        "online_and_offline" => serving.push(view, batch, true, None, &origin).await?,
        "offline" => {
            serving.append(view, batch, &origin).await?;
            return Ok(());
        }
        other => {
            return Err(HttpError::Body(format!(
                "to: `{other}` is not one of online, offline, online_and_offline"
            )));
        }
    };
    Ok(())
}

async fn push(State(serving): S, Extension(who): W, body: Bytes) -> Result<StatusCode, HttpError> {
    let req: feast::PushRequest = parse(&body)?;
    let target = req.push_source_name.clone();
    let pushed = async {
        let view = view_of(&serving, &req.push_source_name)?;
        push_df(&serving, &view, &req.df, &req.to).await
    }
    .await;
    audited(&serving, &who, "/push", &target, &pushed);
    pushed.map(|_| StatusCode::OK)
}

async fn write_to_online_store(
    State(serving): S,
    Extension(who): W,
    body: Bytes,
) -> Result<Response, HttpError> {
    let req: feast::WriteToOnlineStoreRequest = parse(&body)?;
    let written = async {
        if !serving.repo().views.contains_key(&req.feature_view_name) {
            return Err(HttpError::App(quiver_app::Error::NotFound(format!(
                "feature_view_name: unknown feature view `{}`",
                req.feature_view_name
            ))));
        }
        push_df(&serving, &req.feature_view_name, &req.df, "online").await
    }
    .await;
    audited(
        &serving,
        &who,
        "/write-to-online-store",
        &req.feature_view_name,
        &written,
    );
    written.map(|_| json(&serde_json::Value::Null))
}

fn views_target(views: &Option<Vec<String>>) -> String {
    match views {
        Some(v) if !v.is_empty() => v.join(","),
        _ => "*".into(),
    }
}

async fn materialize(
    State(serving): S,
    Extension(who): W,
    body: Bytes,
) -> Result<Response, HttpError> {
    let req: feast::MaterializeRequest = parse(&body)?;
    let target = views_target(&req.feature_views);
    let done = async {
        let end = match &req.end_ts {
            Some(t) => feast::instant(t, "end_ts")?,
            None => quiver_core::time::now_micros(),
        };
        let range = match &req.start_ts {
            Some(t) => Range::Since(feast::instant(t, "start_ts")?),
            None => Range::All,
        };
        Ok::<_, HttpError>(
            serving
                .materialize(&req.feature_views.clone().unwrap_or_default(), range, end)
                .await?,
        )
    }
    .await;
    audited(&serving, &who, "/materialize", &target, &done);
    done.map(|_| json(&serde_json::Value::Null))
}

async fn materialize_incremental(
    State(serving): S,
    Extension(who): W,
    body: Bytes,
) -> Result<Response, HttpError> {
    let req: feast::MaterializeIncrementalRequest = parse(&body)?;
    let target = views_target(&req.feature_views);
    let done = async {
        let end = feast::instant(&req.end_ts, "end_ts")?;
        Ok::<_, HttpError>(
            serving
                .materialize(
                    &req.feature_views.clone().unwrap_or_default(),
                    Range::Incremental,
                    end,
                )
                .await?,
        )
    }
    .await;
    audited(&serving, &who, "/materialize-incremental", &target, &done);
    done.map(|_| json(&serde_json::Value::Null))
}
