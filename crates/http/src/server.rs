//! The routes over [`Serving`], and the server.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quiver_app::online::Range;
use quiver_app::serving::{Features, Serving};

use crate::HttpError;
use crate::feast::{self, parse};

/// Largest body taken (16 MiB): lookups are small; pushes carry rows.
const MAX_BODY: usize = 16 << 20;

/// The feature server's routes over `serving`.
pub fn router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/get-online-features", post(get_online_features))
        .route("/push", post(push))
        .route("/write-to-online-store", post(write_to_online_store))
        .route("/materialize", post(materialize))
        .route("/materialize-incremental", post(materialize_incremental))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(serving)
}

/// Serve the routes on `listener` until `shutdown` resolves, then finish the requests in
/// flight.
pub async fn serve(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(serving))
        .with_graceful_shutdown(shutdown)
        .await
}

type S = State<Arc<Serving>>;

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

async fn push(State(serving): S, body: Bytes) -> Result<StatusCode, HttpError> {
    let req: feast::PushRequest = parse(&body)?;
    let view = view_of(&serving, &req.push_source_name)?;
    push_df(&serving, &view, &req.df, &req.to).await?;
    Ok(StatusCode::OK)
}

async fn write_to_online_store(State(serving): S, body: Bytes) -> Result<Response, HttpError> {
    let req: feast::WriteToOnlineStoreRequest = parse(&body)?;
    if !serving.repo().views.contains_key(&req.feature_view_name) {
        return Err(HttpError::App(quiver_app::Error::NotFound(format!(
            "feature_view_name: unknown feature view `{}`",
            req.feature_view_name
        ))));
    }
    push_df(&serving, &req.feature_view_name, &req.df, "online").await?;
    Ok(json(&serde_json::Value::Null))
}

async fn materialize(State(serving): S, body: Bytes) -> Result<Response, HttpError> {
    let req: feast::MaterializeRequest = parse(&body)?;
    let end = match &req.end_ts {
        Some(t) => feast::instant(t, "end_ts")?,
        None => quiver_core::time::now_micros(),
    };
    let range = match &req.start_ts {
        Some(t) => Range::Since(feast::instant(t, "start_ts")?),
        None => Range::All,
    };
    serving
        .materialize(&req.feature_views.unwrap_or_default(), range, end)
        .await?;
    Ok(json(&serde_json::Value::Null))
}

async fn materialize_incremental(State(serving): S, body: Bytes) -> Result<Response, HttpError> {
    let req: feast::MaterializeIncrementalRequest = parse(&body)?;
    let end = feast::instant(&req.end_ts, "end_ts")?;
    serving
        .materialize(
            &req.feature_views.unwrap_or_default(),
            Range::Incremental,
            end,
        )
        .await?;
    Ok(json(&serde_json::Value::Null))
}
