//! The gRPC server: `quiver.v1.OnlineService`, `quiver.v1.RegistryService`, gRPC health and
//! server reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quiver_core::store::{KeyValue, OnlineStore, Scalar};
use quiver_core::{FeatureRef, Repo};
use tonic::{Request, Response, Status};

use crate::online::{self, Status as ValueStatus};
use crate::proto::online_service_server::{OnlineService, OnlineServiceServer};
use crate::proto::registry_service_server::RegistryServiceServer;
use crate::proto::training_service_server::TrainingServiceServer;
use crate::proto::{self, get_online_features_request::Kind, value::Val};
use crate::{Error, Result};

/// Largest request accepted (4 MiB): a lookup is a few hundred entities, not a bulk load.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest model registration accepted (256 MiB): it carries the artifact.
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;

/// `OnlineService` over a repository and an online store.
pub struct Online {
    repo: Arc<Repo>,
    store: Arc<dyn OnlineStore>,
    /// Serializes pushes: each reads the source's earlier online-only pushes, computes and
    /// writes; two at once would each write values without the other's rows.
    writer: tokio::sync::Mutex<()>,
}

impl Online {
    pub fn new(repo: Repo, store: Arc<dyn OnlineStore>) -> Self {
        Online {
            repo: Arc::new(repo),
            store,
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn lookup(
        &self,
        req: proto::GetOnlineFeaturesRequest,
    ) -> Result<proto::GetOnlineFeaturesResponse> {
        let refs: Vec<FeatureRef> = match req.kind {
            Some(Kind::FeatureService(name)) => self.repo.service(&name)?,
            Some(Kind::Features(list)) => feature_refs(&self.repo, &list.val)?,
            None => {
                return Err(Error::InvalidArgument(
                    "kind: give `features` or `feature_service`".into(),
                ));
            }
        };
        let entities = entity_rows(&req.entities)?;
        let at = req.at_micros.unwrap_or_else(now_micros);
        let values = online::get(&self.repo, self.store.as_ref(), &refs, &entities, at).map_err(
            |e| match e {
                quiver_core::Error::Request(m) => Error::InvalidArgument(format!("entities: {m}")),
                other => Error::Internal(other.to_string()),
            },
        )?;
        let pairs: Vec<(&str, &str)> = refs
            .iter()
            .map(|r| (r.view.as_str(), r.feature.as_str()))
            .collect();
        let names = if req.full_feature_names {
            pairs.iter().map(|(v, f)| format!("{v}__{f}")).collect()
        } else {
            quiver_core::semantics::output_names(&pairs, false, &[])
        };
        let results = (0..refs.len())
            .map(|j| proto::FeatureVector {
                values: values.iter().map(|row| to_value(&row[j].value)).collect(),
                statuses: values
                    .iter()
                    .map(|row| status(row[j].status) as i32)
                    .collect(),
                event_timestamps_micros: values
                    .iter()
                    .map(|row| row[j].event_time.unwrap_or(0))
                    .collect(),
            })
            .collect();
        Ok(proto::GetOnlineFeaturesResponse {
            metadata: Some(proto::GetOnlineFeaturesResponseMetadata {
                feature_names: Some(proto::FeatureNames { val: names }),
            }),
            results,
        })
    }
}

/// The current time in microseconds since the epoch, UTC: the default lookup time.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn status(s: ValueStatus) -> proto::FieldStatus {
    match s {
        ValueStatus::Present => proto::FieldStatus::Present,
        ValueStatus::NotFound => proto::FieldStatus::NotFound,
        ValueStatus::Expired => proto::FieldStatus::Expired,
    }
}

/// A protobuf value as a scalar (no value set is null).
pub fn scalar_of(v: &proto::Value) -> Scalar {
    match v.val.clone() {
        None => Scalar::Null,
        Some(Val::Int64Val(i)) => Scalar::Int(i),
        Some(Val::DoubleVal(f)) => Scalar::Float(f),
        Some(Val::StringVal(s)) => Scalar::Str(s),
        Some(Val::BoolVal(b)) => Scalar::Bool(b),
        Some(Val::UnixTimestampMicrosVal(t)) => Scalar::Time(t),
    }
}

fn to_value(s: &Scalar) -> proto::Value {
    let val = match s {
        Scalar::Null => None,
        Scalar::Bool(b) => Some(Val::BoolVal(*b)),
        Scalar::Int(i) => Some(Val::Int64Val(*i)),
        Scalar::Float(f) => Some(Val::DoubleVal(*f)),
        Scalar::Str(s) => Some(Val::StringVal(s.clone())),
        Scalar::Time(t) => Some(Val::UnixTimestampMicrosVal(*t)),
    };
    proto::Value { val }
}

/// Entity rows from columns (join key -> values), checking that every column has a value per row.
fn entity_rows(
    columns: &std::collections::HashMap<String, proto::RepeatedValue>,
) -> Result<Vec<Vec<(String, KeyValue)>>> {
    let mut names: Vec<&String> = columns.keys().collect();
    names.sort();
    let Some(first) = names.first().copied() else {
        return Err(Error::InvalidArgument(
            "entities: give at least one join key column".into(),
        ));
    };
    let n = columns[first].val.len();
    let mut rows = vec![Vec::with_capacity(names.len()); n];
    for name in &names {
        let col = &columns[*name].val;
        if col.len() != n {
            return Err(Error::InvalidArgument(format!(
                "entities: column `{name}` has {} values, `{first}` has {n}",
                col.len()
            )));
        }
        for (i, v) in col.iter().enumerate() {
            let kv = match &v.val {
                Some(Val::Int64Val(x)) => KeyValue::Int(*x),
                Some(Val::StringVal(s)) => KeyValue::Str(s.clone()),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "entities.{name}[{i}]: a join key value must be int64_val or string_val"
                    )));
                }
            };
            rows[i].push(((*name).clone(), kv));
        }
    }
    Ok(rows)
}

#[tonic::async_trait]
impl OnlineService for Online {
    async fn get_online_features(
        &self,
        request: Request<proto::GetOnlineFeaturesRequest>,
    ) -> Result<Response<proto::GetOnlineFeaturesResponse>, Status> {
        Ok(Response::new(self.lookup(request.into_inner())?))
    }

    async fn push(
        &self,
        request: Request<proto::PushRequest>,
    ) -> Result<Response<proto::PushResponse>, Status> {
        Ok(Response::new(self.push_rows(request.into_inner()).await?))
    }
}

impl Online {
    async fn push_rows(&self, req: proto::PushRequest) -> Result<proto::PushResponse> {
        let repo = self.repo.as_ref();
        let def = repo.views.get(&req.feature_view).ok_or_else(|| {
            Error::NotFound(format!(
                "feature_view: unknown feature view `{}`",
                req.feature_view
            ))
        })?;
        let source = &repo.sources[&def.source];
        let opts = quiver_offline::EngineOptions::default();
        let ctx = quiver_offline::session(&opts)?;
        let table = quiver_offline::source::source_table(&ctx, &repo.offline_store, source).await?;
        let batch = push_batch(&table.schema(), &req.columns)?;
        let rows = batch.num_rows();
        let _one_push = self.writer.lock().await;
        if req.to_offline {
            let cat = crate::catalog::Catalog::open(repo.clone(), opts.clone())?;
            cat.append(
                &def.source,
                vec![("push".into(), batch.schema(), vec![batch.clone()])],
                quiver_registry::Operation::Ingest {
                    files: vec![format!("push to {}", req.feature_view)],
                },
            )
            .await?;
        }
        let pushed = online::push(
            repo,
            self.store.as_ref(),
            &req.feature_view,
            batch,
            req.to_offline,
            req.at_micros.unwrap_or_else(now_micros),
            opts,
        )
        .await?;
        Ok(proto::PushResponse {
            rows: rows as u64,
            entities: pushed.entities as u64,
        })
    }
}

/// The pushed columns as a batch of the source's schema: every source column must be given,
/// with one value per row of the type the column holds.
fn push_batch(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    columns: &std::collections::HashMap<String, proto::RepeatedValue>,
) -> Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::DataType;
    for name in columns.keys() {
        if schema.field_with_name(name).is_err() {
            return Err(Error::InvalidArgument(format!(
                "columns.{name}: not a column of the source"
            )));
        }
    }
    let mut rows: Option<usize> = None;
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for f in schema.fields() {
        let name = f.name();
        let values = &columns
            .get(name)
            .ok_or_else(|| Error::InvalidArgument(format!("columns.{name}: missing")))?
            .val;
        match rows {
            None => rows = Some(values.len()),
            Some(n) if n != values.len() => {
                return Err(Error::InvalidArgument(format!(
                    "columns.{name}: {} values, other columns have {n}",
                    values.len()
                )));
            }
            _ => {}
        }
        let bad = |i: usize, want: &str| {
            Error::InvalidArgument(format!("columns.{name}[{i}]: expected {want}"))
        };
        let dt = f.data_type();
        let array: ArrayRef = if dt.is_integer() {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match &v.val {
                    None => Ok(None),
                    Some(Val::Int64Val(x)) => Ok(Some(*x)),
                    _ => Err(bad(i, "an integer")),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(Int64Array::from(v))
        } else if dt.is_floating() {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match &v.val {
                    None => Ok(None),
                    Some(Val::DoubleVal(x)) => Ok(Some(*x)),
                    Some(Val::Int64Val(x)) => Ok(Some(*x as f64)),
                    _ => Err(bad(i, "a number")),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(Float64Array::from(v))
        } else if matches!(dt, DataType::Boolean) {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match &v.val {
                    None => Ok(None),
                    Some(Val::BoolVal(x)) => Ok(Some(*x)),
                    _ => Err(bad(i, "a bool")),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(BooleanArray::from(v))
        } else if matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match &v.val {
                    None => Ok(None),
                    Some(Val::StringVal(x)) => Ok(Some(x.clone())),
                    _ => Err(bad(i, "a string")),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(StringArray::from(v))
        } else if quiver_core::time::is_typed_time(dt) {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, v)| match &v.val {
                    None => Ok(None),
                    Some(Val::UnixTimestampMicrosVal(x)) => Ok(Some(*x)),
                    Some(Val::StringVal(s)) => quiver_core::time::parse_instant(s)
                        .map(Some)
                        .ok_or_else(|| bad(i, "an RFC 3339 time")),
                    _ => Err(bad(i, "a timestamp")),
                })
                .collect::<Result<Vec<_>>>()?;
            let tz = match dt {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone_opt(tz))
        } else {
            return Err(Error::InvalidArgument(format!(
                "columns.{name}: pushing a column of type {dt} is not supported"
            )));
        };
        let array = if array.data_type() == dt {
            array
        } else {
            datafusion::arrow::compute::cast_with_options(
                &array,
                dt,
                &datafusion::arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
            .map_err(|e| Error::InvalidArgument(format!("columns.{name}: {e}")))?
        };
        arrays.push(array);
    }
    datafusion::arrow::array::RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| Error::InvalidArgument(format!("columns: {e}")))
}

/// Feature references `view:feature`, each checked against the repository.
pub fn feature_refs(repo: &Repo, refs: &[String]) -> Result<Vec<FeatureRef>> {
    Ok(repo.resolve_refs(refs)?)
}

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
) -> Result<()> {
    serve_with(repo, store, listener, ServeOptions::default(), shutdown).await
}

/// [`serve`] with options.
pub async fn serve_with(
    repo: Repo,
    store: Arc<dyn OnlineStore>,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let paths = crate::paths::Confinement::new(&repo.dir, &options.data_roots)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OnlineServiceServer<Online>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(e.to_string()))?;
    health_reporter
        .set_serving::<RegistryServiceServer<crate::grpc_registry::Registry>>()
        .await;
    health_reporter
        .set_serving::<TrainingServiceServer<crate::grpc_training::Training>>()
        .await;
    // The registry is opened by one call at a time, registry calls and training jobs alike.
    let registry_lock = Arc::new(tokio::sync::Mutex::new(()));
    let registry = RegistryServiceServer::new(crate::grpc_registry::Registry::new(
        repo.clone(),
        Arc::clone(&registry_lock),
    ))
    .max_decoding_message_size(MAX_ARTIFACT_BYTES);
    let training = TrainingServiceServer::new(crate::grpc_training::Training::new(
        repo.clone(),
        registry_lock,
        paths,
    ));
    let online = OnlineServiceServer::new(Online::new(repo, store))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    tonic::transport::Server::builder()
        // Caps a request's time when the client sets no deadline; client deadlines
        // (grpc-timeout) are honoured as well.
        .timeout(Duration::from_secs(30))
        .add_service(health)
        .add_service(reflection)
        .add_service(online)
        .add_service(registry)
        .add_service(training)
        .serve_with_incoming_shutdown(
            // Small responses must not wait for Nagle's algorithm (a 40 ms delayed-ACK stall).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Ask a running server (`host:port`) for features; the same values `online::get` returns.
pub async fn remote_get(
    addr: &str,
    refs: &[FeatureRef],
    entities: &[Vec<(String, KeyValue)>],
    at: i64,
) -> Result<Vec<Vec<online::Value>>> {
    use crate::proto::online_service_client::OnlineServiceClient;
    let url = if addr.starts_with("http") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut client = OnlineServiceClient::connect(url).await?;
    let mut columns: std::collections::HashMap<String, proto::RepeatedValue> = Default::default();
    for row in entities {
        for (k, v) in row {
            let val = match v {
                KeyValue::Int(i) => Val::Int64Val(*i),
                KeyValue::Str(s) => Val::StringVal(s.clone()),
            };
            columns
                .entry(k.clone())
                .or_default()
                .val
                .push(proto::Value { val: Some(val) });
        }
    }
    let req = proto::GetOnlineFeaturesRequest {
        kind: Some(Kind::Features(proto::FeatureList {
            val: refs.iter().map(|r| r.to_string()).collect(),
        })),
        entities: columns,
        full_feature_names: false,
        at_micros: Some(at),
    };
    let resp = client
        .get_online_features(req)
        .await
        .map_err(|s| Error::InvalidArgument(format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    let mut out = vec![Vec::with_capacity(refs.len()); entities.len()];
    for fv in resp.results {
        for (e, slot) in out.iter_mut().enumerate() {
            let value = fv.values.get(e).map(scalar_of).unwrap_or(Scalar::Null);
            let status = match fv
                .statuses
                .get(e)
                .copied()
                .and_then(|s| proto::FieldStatus::try_from(s).ok())
            {
                Some(proto::FieldStatus::Present) => ValueStatus::Present,
                Some(proto::FieldStatus::Expired) => ValueStatus::Expired,
                _ => ValueStatus::NotFound,
            };
            let event_time = fv
                .event_timestamps_micros
                .get(e)
                .copied()
                .filter(|t| *t != 0);
            slot.push(online::Value {
                value,
                status,
                event_time,
                as_of: None,
            });
        }
    }
    Ok(out)
}
