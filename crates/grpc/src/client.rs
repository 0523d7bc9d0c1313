//! A client of a running `quiver serve`, for the CLI's `--addr`.

use quiver_app::online::Value;
use quiver_core::FeatureRef;
use quiver_core::store::{KeyValue, Scalar};

use crate::convert;
use crate::proto::online_service_client::OnlineServiceClient;
use crate::proto::{self, get_online_features_request::Kind, value::Val};
use crate::status::GrpcError;

/// Ask a running server (`host:port` or a URL) for features: the same values a local lookup
/// returns.
pub async fn remote_get(
    addr: &str,
    refs: &[FeatureRef],
    entities: &[Vec<(String, KeyValue)>],
    at: i64,
) -> Result<Vec<Vec<Value>>, GrpcError> {
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
