//! The JSON shapes of Feast's feature server and their conversion to and from the app's
//! types. Field names, defaults and renderings follow Feast 0.66's `feature_server.py` and
//! `feature_server_utils.py`: snake_case keys, native JSON values (integers as numbers,
//! doubles always with a fraction or exponent), statuses by name, event times as RFC 3339
//! with `Z` (the epoch for none), join key columns first.

use std::collections::HashMap;

use indexmap::IndexMap;
use quiver_app::online::{Status, Value};
use quiver_core::store::{KeyValue, Scalar};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::HttpError;

/// `POST /get-online-features`.
#[derive(Debug, Deserialize)]
pub struct GetOnlineFeaturesRequest {
    /// Join key → one value per entity row, in the order given (kept in the response).
    pub entities: IndexMap<String, Vec<Json>>,
    /// A feature service instead of `features`.
    pub feature_service: Option<String>,
    /// `view:feature` references.
    #[serde(default)]
    pub features: Vec<String>,
    /// Name features `view__feature`.
    #[serde(default)]
    pub full_feature_names: bool,
}

/// `POST /push`.
#[derive(Debug, Deserialize)]
pub struct PushRequest {
    /// A source of the repository (or a feature view, standing for its source).
    pub push_source_name: String,
    /// The rows, column-major.
    pub df: HashMap<String, Vec<Json>>,
    /// `online` (default), `offline` or `online_and_offline`.
    #[serde(default = "online")]
    pub to: String,
}

fn online() -> String {
    "online".into()
}

/// `POST /write-to-online-store`.
#[derive(Debug, Deserialize)]
pub struct WriteToOnlineStoreRequest {
    /// The feature view written.
    pub feature_view_name: String,
    /// The rows, column-major.
    pub df: HashMap<String, Vec<Json>>,
}

/// `POST /materialize`.
#[derive(Debug, Deserialize)]
pub struct MaterializeRequest {
    /// Only entities with an event at or after this time.
    pub start_ts: Option<String>,
    /// The time to materialize as of; default now.
    pub end_ts: Option<String>,
    /// Views to materialize; default all.
    pub feature_views: Option<Vec<String>>,
}

/// `POST /materialize-incremental`.
#[derive(Debug, Deserialize)]
pub struct MaterializeIncrementalRequest {
    /// The time to materialize as of.
    pub end_ts: String,
    /// Views to materialize; default all.
    pub feature_views: Option<Vec<String>>,
}

/// A body as the JSON of `T`, whatever its content type; the error names the field.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        HttpError::Body(match path.as_str() {
            "." | "" | "?" => format!("body: {inner}"),
            p => format!("{p}: {inner}"),
        })
    })
}

/// A time field: RFC 3339 / ISO 8601 (naive = UTC), as Feast's server takes it.
pub fn instant(text: &str, field: &str) -> Result<i64, HttpError> {
    quiver_core::time::parse_instant(text)
        .ok_or_else(|| HttpError::Body(format!("{field}: cannot read `{text}` as a time")))
}

/// Entity rows from the request's columns: every column must have one value per row, each an
/// integer or a string.
pub fn entity_rows(
    entities: &IndexMap<String, Vec<Json>>,
) -> Result<Vec<Vec<(String, KeyValue)>>, HttpError> {
    let Some((first, col)) = entities.first() else {
        return Err(HttpError::Body(
            "entities: give at least one join key column".into(),
        ));
    };
    let n = col.len();
    let mut rows = vec![Vec::with_capacity(entities.len()); n];
    for (name, values) in entities {
        if values.len() != n {
            return Err(HttpError::Body(format!(
                "entities.{name}: {} values, `{first}` has {n}",
                values.len()
            )));
        }
        for (i, v) in values.iter().enumerate() {
            let kv = match v {
                Json::Number(x) if x.as_i64().is_some() => KeyValue::Int(x.as_i64().unwrap_or(0)),
                Json::String(s) => KeyValue::Str(s.clone()),
                other => {
                    return Err(HttpError::Body(format!(
                        "entities.{name}[{i}]: a join key value must be an integer or a string, not {other}"
                    )));
                }
            };
            rows[i].push((name.clone(), kv));
        }
    }
    Ok(rows)
}

/// Pushed columns as scalars: numbers, strings, booleans and nulls; anything else is refused
/// naming the cell.
pub fn columns(df: &HashMap<String, Vec<Json>>) -> Result<HashMap<String, Vec<Scalar>>, HttpError> {
    df.iter()
        .map(|(name, values)| {
            let col = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Json::Null => Ok(Scalar::Null),
                    Json::Bool(b) => Ok(Scalar::Bool(*b)),
                    Json::Number(x) => Ok(match x.as_i64() {
                        Some(i) => Scalar::Int(i),
                        None => Scalar::Float(x.as_f64().unwrap_or(f64::NAN)),
                    }),
                    Json::String(s) => Ok(Scalar::Str(s.clone())),
                    other => Err(HttpError::Body(format!(
                        "df.{name}[{i}]: expected a number, string, boolean or null, not {other}"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((name.clone(), col))
        })
        .collect()
}

/// A value as Feast renders it.
fn value(s: &Scalar) -> Json {
    match s {
        Scalar::Null => Json::Null,
        Scalar::Bool(b) => json!(b),
        Scalar::Int(i) => json!(i),
        // NaN and infinities have no JSON number: null, as Feast's renderer writes them.
        Scalar::Float(f) if !f.is_finite() => Json::Null,
        Scalar::Float(f) => json!(f),
        Scalar::Str(s) => json!(s),
        Scalar::Time(t) => json!(quiver_core::time::format_instant(*t)),
    }
}

/// A status by Feast's name: a present row whose value is null is `NULL_VALUE`.
fn status(v: &Value) -> &'static str {
    match v.status {
        Status::Present if v.value == Scalar::Null => "NULL_VALUE",
        Status::Present => "PRESENT",
        Status::NotFound => "NOT_FOUND",
        Status::Expired => "OUTSIDE_MAX_AGE",
    }
}

const EPOCH: &str = "1970-01-01T00:00:00Z";

/// The response of `get-online-features`: the join key columns (echoed, PRESENT, at the
/// epoch), then one column per feature named `names[j]`, from `values` (per entity row, one
/// value per feature).
pub fn response(
    entities: &IndexMap<String, Vec<Json>>,
    names: Vec<String>,
    values: &[Vec<Value>],
) -> Json {
    let mut feature_names: Vec<String> = entities.keys().cloned().collect();
    let mut results: Vec<Json> = entities
        .values()
        .map(|col| {
            json!({
                "values": col,
                "statuses": vec!["PRESENT"; col.len()],
                "event_timestamps": vec![EPOCH; col.len()],
            })
        })
        .collect();
    for (j, name) in names.into_iter().enumerate() {
        feature_names.push(name);
        results.push(json!({
            "values": values.iter().map(|row| value(&row[j].value)).collect::<Vec<_>>(),
            "statuses": values.iter().map(|row| status(&row[j])).collect::<Vec<_>>(),
            "event_timestamps": values
                .iter()
                .map(|row| row[j]
                    .event_time
                    .map_or_else(|| EPOCH.to_string(), quiver_core::time::format_instant))
                .collect::<Vec<_>>(),
        }));
    }
    json!({
        "metadata": { "feature_names": feature_names },
        "results": results,
        "status": true,
    })
}
