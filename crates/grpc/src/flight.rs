//! Arrow Flight on the gRPC port: training sets and recorded datasets as Arrow streams, in the
//! shape of Feast's offline server so its idea is familiar.
//!
//! A command is a JSON `FlightDescriptor` command:
//!
//! - `{"api": "get_historical_features", "features": [...] | "feature_service": "...",
//!   "full_feature_names": false, "source_versions": [...], "as_of": ..., "register": ...}`:
//!   the client sends the spine with `DoPut` on that descriptor (or names a recorded spine with
//!   `"spine": "labels@2"`), then `GetFlightInfo` gives the ticket (the command itself) and
//!   `DoGet` builds the training set and streams it;
//! - `{"api": "get_dataset", "name": "train@3"}`: a recorded dataset version.
//!
//! `ListFlights` lists every recorded dataset version, each with its `get_dataset` ticket and
//! its registry record as JSON `app_metadata`.
//!
//! A build runs inside the `DoGet` stream, so a client that goes away drops it and stops the
//! join; the training set is sent in slices gathered as they go, and its last message carries
//! as `app_metadata` JSON `{"rows", "columns", "registered", "plan"}`.
//! Uploaded spines are held until their `DoGet` (at most [`UPLOAD_TTL`], within
//! [`MAX_HELD_BYTES`] for all of them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
    flight_descriptor::DescriptorType,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use quiver_app::access::RegistryAccess;
use quiver_app::audit::{Auditor, Entry};
use quiver_app::auth::{Principal, Role};
use quiver_app::catalog::{Rows, recordable};
use quiver_app::jobs::{JobRequest, Jobs};
use quiver_app::serving::Features;
use quiver_app::training::Uploaded;
use quiver_app::{Error, Result};
use quiver_core::Repo;
use quiver_offline::table::Columns;
use serde::Deserialize;
use tonic::{Request, Response, Status, Streaming};

use crate::GrpcError;
use crate::guard::caller;

/// Bytes of uploaded spines held at once, all clients together (2 GiB).
pub const MAX_HELD_BYTES: usize = 2 << 30;
/// How long an uploaded spine waits for its `DoGet`.
pub const UPLOAD_TTL: Duration = Duration::from_secs(15 * 60);
/// Rows per slice gathered and sent; the encoder cuts each into messages of at most
/// [`MAX_MESSAGE_BYTES`].
const SLICE_ROWS: usize = 64 * 1024;
/// Largest message sent: under the 4 MiB that gRPC clients (tonic, grpc-java, grpc-go)
/// receive by default. On W1, 3.5 MiB messages fetched in 1.00x `quiver join`'s time, 2 MiB
/// ones (the encoder's default) in 1.13x, 1.5 MiB ones in 1.5x (benches/flight_w1.py).
const MAX_MESSAGE_BYTES: usize = 3_670_016;

/// A Flight command, as JSON.
#[derive(Debug, Deserialize)]
#[serde(tag = "api", rename_all = "snake_case")]
enum Command {
    GetHistoricalFeatures(Box<Historical>),
    GetDataset(DatasetCommand),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetCommand {
    /// `NAME` (its latest version) or `NAME@VERSION`.
    name: String,
}

/// A training-set request; every field but the features is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Historical {
    features: Option<Vec<String>>,
    feature_service: Option<String>,
    #[serde(default)]
    full_feature_names: bool,
    /// A recorded spine `NAME[@VERSION]` (or a file the server's paths allow) instead of an
    /// uploaded one.
    spine: Option<String>,
    spine_timestamp: Option<String>,
    /// The dataset an uploaded spine is recorded as when registering (default
    /// `REGISTER_spine`).
    spine_name: Option<String>,
    #[serde(default)]
    source_versions: Vec<String>,
    as_of: Option<AsOf>,
    register: Option<String>,
    /// What a client adds to make each command unique (Feast's clients do); not used.
    #[serde(default)]
    #[allow(dead_code)]
    command_id: Option<serde_json::Value>,
}

/// Time travel: microseconds since the epoch, or an instant as `quiver join --as-of` takes it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AsOf {
    Micros(i64),
    Text(String),
}

fn parse_command(bytes: &[u8]) -> Result<Command> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::Invalid(format!(
            "command: not a Quiver Flight command ({e}); send JSON with \"api\": \
             \"get_historical_features\" or \"get_dataset\""
        ))
    })
}

impl Historical {
    fn features(&self) -> Result<Features> {
        match (&self.features, &self.feature_service) {
            (Some(list), None) => Ok(Features::List(list.clone())),
            (None, Some(name)) => Ok(Features::Service(name.clone())),
            (Some(_), Some(_)) => Err(Error::Invalid(
                "features: give `features` or `feature_service`, not both".into(),
            )),
            (None, None) => Err(Error::Invalid(
                "features: give `features` or `feature_service`".into(),
            )),
        }
    }

    fn as_of(&self) -> Result<Option<i64>> {
        match &self.as_of {
            None => Ok(None),
            Some(AsOf::Micros(us)) => Ok(Some(*us)),
            Some(AsOf::Text(t)) => quiver_core::time::parse_instant(t)
                .map(Some)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "as_of: {t:?} is not an instant (2025-12-01T00:00:00Z, or microseconds)"
                    ))
                }),
        }
    }

    fn job(&self) -> Result<JobRequest> {
        Ok(JobRequest {
            features: Some(self.features()?),
            spine: self.spine.clone().unwrap_or_default(),
            spine_timestamp: self.spine_timestamp.clone(),
            full_names: self.full_feature_names,
            out: None,
            overwrite: false,
            register: self.register.clone(),
            pins: self.source_versions.clone(),
            as_of: self.as_of()?,
        })
    }

    fn spine_name(&self) -> String {
        match (&self.spine_name, &self.register) {
            (Some(n), _) => n.clone(),
            (None, Some(r)) => format!("{r}_spine"),
            (None, None) => "flight_spine".into(),
        }
    }
}

/// An uploaded spine waiting for its `DoGet`.
struct Upload {
    rows: Rows,
    bytes: usize,
    at: Instant,
    from: String,
}

/// The spines clients uploaded, by command, within a byte budget.
#[derive(Default)]
struct Uploads {
    held: Mutex<HashMap<Vec<u8>, Upload>>,
    bytes: AtomicUsize,
}

impl Uploads {
    /// Reserve `n` more bytes, or say which limit refuses them.
    fn reserve(&self, n: usize) -> Result<()> {
        self.expire();
        let before = self.bytes.fetch_add(n, Ordering::SeqCst);
        if before + n > MAX_HELD_BYTES {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::Exhausted(format!(
                "spine: the server holds {} MiB of uploaded spines, its limit is {} MiB; \
                 fetch or drop earlier uploads, or send a smaller spine",
                before >> 20,
                MAX_HELD_BYTES >> 20
            )));
        }
        Ok(())
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::SeqCst);
    }

    fn expire(&self) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        let old: Vec<Vec<u8>> = held
            .iter()
            .filter(|(_, u)| u.at.elapsed() > UPLOAD_TTL)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            if let Some(u) = held.remove(&k) {
                self.release(u.bytes);
            }
        }
    }

    /// Hold `u` under `key`, replacing (and releasing) an earlier upload of the same command.
    fn put(&self, key: Vec<u8>, u: Upload) -> Result<()> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| Error::Internal("uploads lock".into()))?;
        if let Some(old) = held.insert(key, u) {
            self.release(old.bytes);
        }
        Ok(())
    }

    fn rows(&self, key: &[u8]) -> Option<usize> {
        let held = self.held.lock().ok()?;
        held.get(key)
            .map(|u| u.rows.batches.iter().map(|b| b.num_rows()).sum())
    }

    fn take(&self, key: &[u8]) -> Option<Upload> {
        let u = self.held.lock().ok()?.remove(key)?;
        self.release(u.bytes);
        Some(u)
    }
}

/// The Flight service over one repository.
pub struct FlightSvc {
    repo: Arc<Repo>,
    jobs: Arc<Jobs>,
    access: RegistryAccess,
    uploads: Arc<Uploads>,
    auditor: Auditor,
}

impl FlightSvc {
    /// The service building training sets with `jobs` and reading datasets through `access`,
    /// logging training sets to `auditor`.
    pub fn new(repo: Repo, jobs: Arc<Jobs>, access: RegistryAccess, auditor: Auditor) -> Self {
        FlightSvc {
            repo: Arc::new(repo),
            jobs,
            access,
            uploads: Default::default(),
            auditor,
        }
    }

    /// The command of a descriptor: Quiver's commands are `CMD` descriptors.
    fn command_of(d: &FlightDescriptor) -> Result<Vec<u8>> {
        if d.r#type() != DescriptorType::Cmd {
            return Err(Error::Invalid(
                "descriptor: give a CMD descriptor holding a JSON command (PATH is not served)"
                    .into(),
            ));
        }
        Ok(d.cmd.to_vec())
    }

    /// Receive a spine for `command`, holding it within the byte budget.
    async fn receive(
        &self,
        command: Vec<u8>,
        first: FlightData,
        rest: Streaming<FlightData>,
        from: String,
    ) -> Result<(usize, usize)> {
        let data = stream::once(async { Ok(first) })
            .chain(rest.map_err(|s| FlightError::Tonic(Box::new(s))))
            .boxed();
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        let mut received: Vec<RecordBatch> = Vec::new();
        let mut bytes = 0usize;
        let got = async {
            while let Some(b) = batches.next().await {
                let b = b.map_err(|e| Error::Invalid(format!("spine: {e}")))?;
                let n = b.get_array_memory_size();
                self.uploads.reserve(n)?;
                bytes += n;
                received.push(b);
            }
            let schema = match (batches.schema(), received.first()) {
                (Some(s), _) => s.clone(),
                (None, Some(b)) => b.schema(),
                (None, None) => {
                    return Err(Error::Invalid("spine: the upload holds no schema".into()));
                }
            };
            recordable(schema, &received, "spine")
        }
        .await;
        let rows = match got {
            Ok(r) => r,
            Err(e) => {
                self.uploads.release(bytes);
                return Err(e);
            }
        };
        let n = rows.batches.iter().map(|b| b.num_rows()).sum();
        self.uploads.put(
            command,
            Upload {
                rows,
                bytes,
                at: Instant::now(),
                from,
            },
        )?;
        Ok((n, bytes))
    }

    /// The training set of `h`, streamed: built when the stream is first polled.
    fn historical(
        &self,
        command: &[u8],
        h: Box<Historical>,
        who: Principal,
    ) -> Result<FlightStream> {
        who.require(Role::Writer, "get_historical_features")?;
        let job = h.job()?;
        // Names are checked before the stream starts, so a wrong one is the call's status.
        if let Some(f) = &job.features {
            f.resolve(&self.repo)?;
        }
        let uploaded = self.uploads.take(command).map(|u| Uploaded {
            rows: u.rows,
            name: h.spine_name(),
            from: u.from,
        });
        if uploaded.is_none() && job.spine.is_empty() {
            return Err(Error::Precondition(
                "spine: no spine was uploaded for this command (DoPut on the same descriptor \
                 first; an upload is fetched once) and none is named"
                    .into(),
            ));
        }
        let jobs = Arc::clone(&self.jobs);
        let auditor = self.auditor.clone();
        let target = h.register.clone().unwrap_or_else(|| "-".into());
        let built = async move {
            let built = jobs.stream(job, uploaded).await;
            let e = Entry {
                who: &who.name,
                transport: "flight",
                method: "get_historical_features",
                target: &target,
            };
            auditor.record(&e, &built);
            built
        };
        Ok(stream::once(built)
            .flat_map(|built| match built {
                Err(e) => stream::once(async move { Err(status(e)) }).boxed(),
                Ok(s) => {
                    let summary = serde_json::json!({
                        "rows": s.built.rows,
                        "columns": s.built.columns,
                        "registered": s.built.registered,
                        "plan": s.built.plan,
                    });
                    table_stream(s.table.into(), Some(summary))
                }
            })
            .boxed())
    }

    async fn dataset(&self, name: &str) -> Result<FlightStream> {
        let (name, version) = quiver_registry::parse_ref(name)?;
        let rows = self
            .access
            .with(async |cat| {
                let v = cat.registry.dataset_version(&name, version)?;
                cat.read(&v).await
            })
            .await?;
        let table = datafusion::arrow::compute::concat_batches(&rows.schema, &rows.batches)?;
        Ok(table_stream(Arc::new(table), None))
    }
}

type FlightStream = BoxStream<'static, std::result::Result<FlightData, Status>>;

fn status(e: Error) -> Status {
    GrpcError::from(e).into()
}

/// `table` sent slice by slice (each gathered when the client is ready for it), then, when
/// given, a message holding only `summary` as `app_metadata`.
fn table_stream(
    table: Arc<dyn Columns + Send>,
    summary: Option<serde_json::Value>,
) -> FlightStream {
    let n = table.num_rows();
    // An empty table still sends its schema (one empty slice).
    let starts: Vec<usize> = match n {
        0 => vec![0],
        _ => (0..n).step_by(SLICE_ROWS).collect(),
    };
    let slices = stream::iter(starts).map(move |off| {
        table
            .slice_batch(off, SLICE_ROWS.min(n - off))
            .map_err(|e| FlightError::Tonic(Box::new(status(e.into()))))
    });
    let data = FlightDataEncoderBuilder::new()
        .with_max_flight_data_size(MAX_MESSAGE_BYTES)
        .build(slices)
        .map_err(Status::from);
    match summary {
        Some(s) => on_last(data.boxed(), s.to_string().into()),
        None => data.boxed(),
    }
}

/// `data` with `metadata` as the `app_metadata` of its last message. (A message holding only
/// `app_metadata` would do, but Flight implementations disagree on its header: C++ sends
/// none, arrow-rs requires an IPC message of type NONE. Every client reads a batch's.)
fn on_last(data: FlightStream, metadata: bytes::Bytes) -> FlightStream {
    struct State {
        data: FlightStream,
        held: Option<FlightData>,
        metadata: Option<bytes::Bytes>,
    }
    let start = State {
        data,
        held: None,
        metadata: Some(metadata),
    };
    stream::unfold(start, |mut st| async move {
        loop {
            match st.data.next().await {
                Some(Ok(d)) => {
                    if let Some(h) = st.held.replace(d) {
                        return Some((Ok(h), st));
                    }
                }
                Some(Err(e)) => {
                    st.held = None;
                    st.metadata = None;
                    return Some((Err(e), st));
                }
                None => {
                    let mut last = st.held.take()?;
                    if let Some(m) = st.metadata.take() {
                        last.app_metadata = m;
                    }
                    return Some((Ok(last), st));
                }
            }
        }
    })
    .boxed()
}

fn client(addr: Option<SocketAddr>) -> String {
    match addr {
        Some(a) => format!("flight {a}"),
        None => "flight".into(),
    }
}

/// A dataset version as a flight: its ticket and its record.
fn dataset_flight(v: &quiver_registry::DatasetVersion) -> Result<FlightInfo> {
    let command =
        serde_json::json!({"api": "get_dataset", "name": v.reference().to_string()}).to_string();
    let record = serde_json::json!({
        "name": v.name,
        "version": v.version,
        "kind": v.kind.name(),
        "hash": v.hash.to_string(),
        "created_micros": v.created_micros,
        "operation": v.op.name(),
        "columns": v.schema.iter().map(|(c, _)| c).collect::<Vec<_>>(),
    });
    Ok(FlightInfo::new()
        .try_with_schema(&Schema::empty())?
        .with_descriptor(FlightDescriptor::new_cmd(command.clone()))
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(command)))
        .with_app_metadata(record.to_string()))
}

type Boxed<T> = Pin<Box<dyn futures::Stream<Item = std::result::Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl FlightService for FlightSvc {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake: not needed; call GetFlightInfo and DoGet directly",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let versions = self
            .access
            .with(async |cat| Ok(cat.registry.all_dataset_versions()?))
            .await
            .map_err(status)?;
        let infos: Vec<std::result::Result<FlightInfo, Status>> = versions
            .iter()
            .map(|v| dataset_flight(v).map_err(status))
            .collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let who = caller(&request);
        let d = request.into_inner();
        let command = Self::command_of(&d).map_err(status)?;
        let info = match parse_command(&command).map_err(status)? {
            Command::GetHistoricalFeatures(h) => {
                who.require(Role::Writer, "get_historical_features")
                    .and_then(|_| h.features())
                    .and_then(|f| f.resolve(&self.repo))
                    .map_err(status)?;
                // One output row per spine row: the size is known once the spine is.
                let rows = self.uploads.rows(&command);
                if rows.is_none() && h.spine.is_none() {
                    return Err(status(Error::Precondition(
                        "spine: no spine was uploaded for this command (DoPut on the same \
                         descriptor first) and none is named"
                            .into(),
                    )));
                }
                FlightInfo::new()
                    .try_with_schema(&Schema::empty())
                    .map_err(|e| status(e.into()))?
                    .with_descriptor(d)
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(command)))
                    .with_total_records(rows.map(|r| r as i64).unwrap_or(-1))
                    .with_ordered(true)
            }
            Command::GetDataset(c) => {
                let (name, version) =
                    quiver_registry::parse_ref(&c.name).map_err(|e| status(Error::from(e)))?;
                let v = self
                    .access
                    .with(async |cat| Ok(cat.registry.dataset_version(&name, version)?))
                    .await
                    .map_err(status)?;
                dataset_flight(&v).map_err(status)?.with_descriptor(d)
            }
        };
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info: call GetFlightInfo; the build runs in DoGet",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "get_schema: the schema comes first in DoGet's stream",
        ))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let who = caller(&request);
        let ticket = request.into_inner().ticket;
        let s = match parse_command(&ticket).map_err(status)? {
            Command::GetHistoricalFeatures(h) => self.historical(&ticket, h, who),
            Command::GetDataset(c) => self.dataset(&c.name).await,
        };
        Ok(Response::new(s.map_err(status)?))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let from = client(request.remote_addr());
        let mut data = request.into_inner();
        let first = data
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("DoPut: the stream is empty"))?;
        let d = first.flight_descriptor.clone().ok_or_else(|| {
            Status::invalid_argument("DoPut: the first message carries no descriptor")
        })?;
        let command = Self::command_of(&d).map_err(status)?;
        match parse_command(&command).map_err(status)? {
            Command::GetHistoricalFeatures(h) => {
                h.features()
                    .and_then(|f| f.resolve(&self.repo))
                    .map_err(status)?;
            }
            Command::GetDataset(_) => {
                return Err(status(Error::Invalid(
                    "DoPut: get_dataset takes no upload; call DoGet".into(),
                )));
            }
        }
        let (rows, bytes) = self
            .receive(command, first, data, from)
            .await
            .map_err(status)?;
        let done = serde_json::json!({"rows": rows, "bytes": bytes}).to_string();
        Ok(Response::new(
            stream::once(async move {
                Ok(PutResult {
                    app_metadata: done.into(),
                })
            })
            .boxed(),
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "do_exchange: DoPut the spine, then DoGet",
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented(format!(
            "do_action: no action `{}`; this server has none",
            quiver_app::truncated(&request.into_inner().r#type, 200)
        )))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(stream::empty().boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_field_that_is_wrong() {
        let bad = |j: &str| parse_command(j.as_bytes()).unwrap_err().to_string();
        assert!(bad(r#"{"api":"get_historical_features","featurs":["a:b"]}"#).contains("featurs"));
        assert!(bad(r#"{"api":"get_model"}"#).contains("get_model"));
        assert!(bad("not json").contains("not a Quiver Flight command"));
        let Command::GetHistoricalFeatures(h) = parse_command(
            br#"{"api":"get_historical_features","features":["v:f"],"command_id":"x","as_of":"2025-12-01T00:00:00Z"}"#,
        )
        .unwrap() else {
            panic!("a historical command")
        };
        assert_eq!(h.as_of().unwrap(), Some(1_764_547_200_000_000));
        let both = Historical {
            feature_service: Some("s".into()),
            ..*h
        };
        assert!(
            both.features()
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
    }
}
