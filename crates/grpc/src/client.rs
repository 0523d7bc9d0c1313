//! A client of a running `quiver serve`, for the CLI's `--addr`.

use quiver_app::online::Value;
use quiver_core::FeatureRef;
use quiver_core::store::{KeyValue, Scalar};

use crate::convert;
use crate::proto::online_service_client::OnlineServiceClient;
use crate::proto::{self, get_online_features_request::Kind, value::Val};
use crate::status::GrpcError;

/// How to reach a server: a bearer token, TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Sent as `authorization: Bearer …`.
    pub token: Option<String>,
    /// Speak TLS, trusting this CA (PEM file) for the server's certificate.
    pub tls_ca: Option<std::path::PathBuf>,
    /// The client's certificate and key (PEM files), for mutual TLS.
    pub tls_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A channel to a server (`host:port` or a URL), with TLS when `options` says so.
pub async fn channel(
    addr: &str,
    options: &ClientOptions,
) -> Result<tonic::transport::Channel, GrpcError> {
    let tls = options.tls_ca.is_some() || options.tls_identity.is_some();
    let url = match (addr.contains("://"), tls) {
        (true, _) => addr.to_string(),
        (false, true) => format!("https://{addr}"),
        (false, false) => format!("http://{addr}"),
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| GrpcError::App(quiver_app::Error::Invalid(format!("--addr {addr}: {e}"))))?;
    if tls {
        crate::use_ring_for_tls();
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &options.tls_ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(
                crate::read_pem(ca, "--tls-ca")?,
            ));
        }
        if let Some((cert, key)) = &options.tls_identity {
            config = config.identity(tonic::transport::Identity::from_pem(
                crate::read_pem(cert, "--tls-cert")?,
                crate::read_pem(key, "--tls-key")?,
            ));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint.connect().await?)
}

/// Ask a running server (`host:port` or a URL) for features: the same values a local lookup
/// returns.
pub async fn remote_get(
    addr: &str,
    options: &ClientOptions,
    refs: &[FeatureRef],
    entities: &[Vec<(String, KeyValue)>],
    at: i64,
) -> Result<Vec<Vec<Value>>, GrpcError> {
    let channel = channel(addr, options).await?;
    let token = match &options.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<tonic::metadata::MetadataValue<_>>()
                .map_err(|_| {
                    GrpcError::App(quiver_app::Error::Invalid(
                        "--token: not a valid header value".into(),
                    ))
                })?,
        ),
        None => None,
    };
    let mut client =
        OnlineServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(t) = &token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            Ok(req)
        });
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
    let resp = client.get_online_features(req).await?.into_inner();
    let mut out = vec![Vec::with_capacity(refs.len()); entities.len()];
    for fv in resp.results {
        for (e, slot) in out.iter_mut().enumerate() {
            slot.push(Value {
                value: fv
                    .values
                    .get(e)
                    .map(convert::scalar_of)
                    .unwrap_or(Scalar::Null),
                status: convert::value_status(fv.statuses.get(e).copied()),
                event_time: fv
                    .event_timestamps_micros
                    .get(e)
                    .copied()
                    .filter(|t| *t != 0),
                as_of: None,
            });
        }
    }
    Ok(out)
}
