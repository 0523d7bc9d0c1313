//! What every gRPC request goes through before its service (Flight's included): the caller's
//! token and the role its method needs, a bound on requests in flight, a deadline that has
//! already passed, and the request's count and latency in the metrics. Health and reflection
//! stay open. A refusal is a gRPC status, never a dropped connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use quiver_app::auth::{Principal, Role, Tokens};
use quiver_app::metrics::Metrics;
use tonic::body::Body;

use crate::GrpcError;

/// What the guard enforces.
pub struct Guard {
    /// The tokens callers must present; `None`: authentication is off (every caller is
    /// [`Principal::anonymous`]).
    pub tokens: Option<Arc<Tokens>>,
    /// Requests answered at once; more are refused with RESOURCE_EXHAUSTED.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The most requests in flight (for the refusal's message).
    pub max_in_flight: usize,
    /// Where requests are counted.
    pub metrics: Arc<Metrics>,
    /// The bound on lookup, push and job messages (for the refusal's message).
    pub max_message_bytes: usize,
}

/// The role a gRPC method needs, and its name for metrics and messages; `None`: open to
/// anyone (health, reflection).
pub fn method_role(path: &str) -> (Option<Role>, &'static str) {
    use Role::*;
    let known: &[(&str, Option<Role>, &'static str)] = &[
        (
            "/quiver.v1.OnlineService/GetOnlineFeatures",
            Some(Reader),
            "OnlineService/GetOnlineFeatures",
        ),
        (
            "/quiver.v1.OnlineService/Push",
            Some(Writer),
            "OnlineService/Push",
        ),
        (
            "/quiver.v1.RegistryService/RegisterModel",
            Some(Admin),
            "RegistryService/RegisterModel",
        ),
        (
            "/quiver.v1.RegistryService/ListModels",
            Some(Reader),
            "RegistryService/ListModels",
        ),
        (
            "/quiver.v1.RegistryService/GetModel",
            Some(Reader),
            "RegistryService/GetModel",
        ),
        (
            "/quiver.v1.RegistryService/SelectBest",
            Some(Reader),
            "RegistryService/SelectBest",
        ),
        (
            "/quiver.v1.RegistryService/Lineage",
            Some(Reader),
            "RegistryService/Lineage",
        ),
        (
            "/quiver.v1.TrainingService/StartTrainingSet",
            Some(Writer),
            "TrainingService/StartTrainingSet",
        ),
        (
            "/quiver.v1.TrainingService/GetJob",
            Some(Reader),
            "TrainingService/GetJob",
        ),
        (
            "/quiver.v1.TrainingService/ListJobs",
            Some(Reader),
            "TrainingService/ListJobs",
        ),
        // Flight: a training set (DoGet/GetFlightInfo of get_historical_features) needs
        // writer, checked by the service, which sees the command.
        (
            "/arrow.flight.protocol.FlightService/DoPut",
            Some(Writer),
            "FlightService/DoPut",
        ),
        (
            "/arrow.flight.protocol.FlightService/DoGet",
            Some(Reader),
            "FlightService/DoGet",
        ),
        (
            "/arrow.flight.protocol.FlightService/GetFlightInfo",
            Some(Reader),
            "FlightService/GetFlightInfo",
        ),
        (
            "/arrow.flight.protocol.FlightService/ListFlights",
            Some(Reader),
            "FlightService/ListFlights",
        ),
    ];
    if let Some((_, role, name)) = known.iter().find(|(p, _, _)| *p == path) {
        return (*role, name);
    }
    if path.starts_with("/grpc.health.v1.Health/") {
        return (None, "Health");
    }
    if path.starts_with("/grpc.reflection.") {
        return (None, "ServerReflection");
    }
    if path.starts_with("/arrow.flight.protocol.FlightService/") {
        return (Some(Reader), "FlightService/other");
    }
    // Unknown methods still need a token: whether a method exists is not for anyone to probe.
    (Some(Reader), "other")
}

/// Whether a request's `grpc-timeout` is zero: its deadline passed before it arrived.
fn expired(req: &http::Request<Body>) -> bool {
    req.headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 1 && v[..v.len() - 1].bytes().all(|b| b == b'0'))
}

impl Guard {
    /// Who is calling `method`, and whether they may; the refusal as a status.
    fn admit(
        &self,
        req: &http::Request<Body>,
        needed: Role,
        method: &str,
    ) -> Result<Principal, tonic::Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Principal::anonymous());
        };
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let who = tokens.verify(header).map_err(GrpcError::from)?;
        who.require(needed, method).map_err(GrpcError::from)?;
        Ok(who)
    }
}

/// The layer that puts [`GuardService`] in front of a server's services.
#[derive(Clone)]
pub struct GuardLayer(pub Arc<Guard>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            guard: Arc::clone(&self.0),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

fn refuse(status: tonic::Status) -> http::Response<Body> {
    status.into_http()
}

/// tonic refuses a message over its size bound with OUT_OF_RANGE; gRPC's own servers (and
/// what clients in other languages expect) say RESOURCE_EXHAUSTED, so it is said that way,
/// naming the bound of `method`'s service: the flag's for lookups, pushes and jobs, fixed
/// ones for model registrations and Flight messages.
fn too_large(resp: http::Response<Body>, method: &str, flag: usize) -> http::Response<Body> {
    let is = |name: &str, f: &dyn Fn(&str) -> bool| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(f)
    };
    if is("grpc-status", &|v| v == "11") && is("grpc-message", &|v| v.contains("too%20large")) {
        let bound = if method.starts_with("RegistryService/") {
            format!(
                "{} bytes, the limit of a model registration",
                crate::limits::MAX_ARTIFACT_BYTES
            )
        } else if method.starts_with("FlightService/") {
            format!(
                "{} bytes, the limit of one Flight message",
                crate::limits::MAX_FLIGHT_MESSAGE_BYTES
            )
        } else {
            format!("{flag} bytes, the server's limit (quiver serve --max-message-bytes)")
        };
        return refuse(tonic::Status::resource_exhausted(format!(
            "the request is larger than {bound}"
        )));
    }
    resp
}

fn code_of(resp: &http::Response<Body>) -> &'static str {
    // Errors come as trailers-only responses, their status in the headers; a success's status
    // follows in the trailers.
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

impl<S> tower::Service<http::Request<Body>> for GuardService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The ready service answers this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let started = Instant::now();
            let (needed, method) = method_role(req.uri().path());
            let Some(needed) = needed else {
                return inner.call(req).await;
            };
            let done = |resp: http::Response<Body>| {
                guard.metrics.request(
                    "grpc",
                    method,
                    code_of(&resp),
                    started.elapsed().as_secs_f64(),
                );
                resp
            };
            let who = match guard.admit(&req, needed, method) {
                Ok(w) => w,
                Err(status) => return Ok(done(refuse(status))),
            };
            if expired(&req) {
                return Ok(done(refuse(tonic::Status::deadline_exceeded(
                    "the request's deadline passed before it arrived",
                ))));
            }
            let Ok(_permit) = Arc::clone(&guard.permits).try_acquire_owned() else {
                return Ok(done(refuse(tonic::Status::resource_exhausted(format!(
                    "the server is answering {} requests, its limit \
                     (quiver serve --max-in-flight); retry later",
                    guard.max_in_flight
                )))));
            };
            // A span per request: its method and caller (the token's name), for the logs.
            let span =
                tracing::debug_span!("request", transport = "grpc", method, caller = %who.name);
            req.extensions_mut().insert(who);
            let in_flight = quiver_app::metrics::Raised::new(&guard.metrics.in_flight);
            let resp = tracing::Instrument::instrument(inner.call(req), span.clone()).await;
            drop(in_flight);
            resp.map(|r| {
                let r = done(too_large(r, method, guard.max_message_bytes));
                span.in_scope(|| {
                    tracing::debug!(
                        code = code_of(&r),
                        seconds = started.elapsed().as_secs_f64(),
                        "answered"
                    )
                });
                r
            })
        })
    }
}

/// Record a write in the audit log: `outcome` is the status the client gets.
pub fn audited<T>(
    auditor: &quiver_app::audit::Auditor,
    who: &Principal,
    transport: &str,
    method: &str,
    target: &str,
    outcome: &Result<T, tonic::Status>,
) {
    let e = quiver_app::audit::Entry {
        who: &who.name,
        transport,
        method,
        target,
    };
    match outcome {
        Ok(_) => auditor.record::<()>(&e, &Ok(())),
        Err(s) => auditor.record_failure(&e, &format!("{:?}", s.code()), s.message()),
    }
}

/// The caller of a request, as the guard admitted it; [`Principal::anonymous`] when the
/// service runs without the guard (tests of a service alone).
pub fn caller<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    /// A request whose deadline passed, or too many at once, never reaches the service.
    #[tokio::test]
    async fn refused_requests_are_not_computed() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let service = tower::service_fn(move |_req: http::Request<Body>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(http::Response::new(Body::default())) }
        });
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let guarded = GuardLayer(Arc::new(Guard {
            tokens: None,
            permits: Arc::clone(&permits),
            max_in_flight: 1,
            metrics: Arc::new(Metrics::new()),
            max_message_bytes: 1 << 20,
        }))
        .layer(service);
        let request = |timeout: &'static str| {
            http::Request::builder()
                .uri("/quiver.v1.OnlineService/GetOnlineFeatures")
                .header("grpc-timeout", timeout)
                .body(Body::default())
                .unwrap()
        };
        let status = |r: &http::Response<Body>| {
            r.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string())
        };
        let late = guarded.clone().oneshot(request("0n")).await.unwrap();
        assert_eq!(status(&late).as_deref(), Some("4"), "DEADLINE_EXCEEDED");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        // every permit taken: RESOURCE_EXHAUSTED, not computed
        let held = permits.clone().try_acquire_owned().unwrap();
        let busy = guarded.clone().oneshot(request("1S")).await.unwrap();
        assert_eq!(status(&busy).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(held);
        let ok = guarded.oneshot(request("1S")).await.unwrap();
        assert_eq!(status(&ok), None);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn every_quiver_method_has_a_role_and_health_is_open() {
        assert_eq!(method_role("/grpc.health.v1.Health/Check").0, None);
        assert_eq!(
            method_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").0,
            None
        );
        assert_eq!(
            method_role("/quiver.v1.OnlineService/Push").0,
            Some(Role::Writer)
        );
        assert_eq!(
            method_role("/quiver.v1.RegistryService/RegisterModel").0,
            Some(Role::Admin)
        );
        assert_eq!(method_role("/x.Y/Z"), (Some(Role::Reader), "other"));
        let mut req = http::Request::new(Body::default());
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("0m"));
        assert!(expired(&req));
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("10m"));
        assert!(!expired(&req));
    }
}
