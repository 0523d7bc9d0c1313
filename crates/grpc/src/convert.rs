//! Conversion between the protobuf messages of `quiver.v1` and the app's types and Arrow:
//! values, entity columns, pushed columns, feature selections and jobs.

use quiver_app::jobs::{Job, JobState};
use quiver_app::online::Status as ValueStatus;
use quiver_app::serving::Features;
use quiver_app::{Error, Result};
use quiver_core::store::{KeyValue, Scalar};

use crate::proto::{self, value::Val};

/// The features a request's `kind` names.
pub fn features_of(kind: Option<proto::get_online_features_request::Kind>) -> Result<Features> {
    use proto::get_online_features_request::Kind;
    match kind {
        Some(Kind::FeatureService(name)) => Ok(Features::Service(name)),
        Some(Kind::Features(list)) => Ok(Features::List(list.val)),
        None => Err(Error::Invalid(
            "kind: give `features` or `feature_service`".into(),
        )),
    }
}

/// A value's status in a response.
pub fn status(s: ValueStatus) -> proto::FieldStatus {
    match s {
        ValueStatus::Present => proto::FieldStatus::Present,
        ValueStatus::NotFound => proto::FieldStatus::NotFound,
        ValueStatus::Expired => proto::FieldStatus::Expired,
    }
}

/// A response's status as the app's (unknown codes read as not found).
pub fn value_status(code: Option<i32>) -> ValueStatus {
    match code.and_then(|s| proto::FieldStatus::try_from(s).ok()) {
        Some(proto::FieldStatus::Present) => ValueStatus::Present,
        Some(proto::FieldStatus::Expired) => ValueStatus::Expired,
        _ => ValueStatus::NotFound,
    }
}

/// A job as its message.
pub fn job(j: Job) -> proto::Job {
    let state = match j.state {
        JobState::Running => proto::JobState::Running,
        JobState::Succeeded => proto::JobState::Succeeded,
        JobState::Failed => proto::JobState::Failed,
    };
    proto::Job {
        id: j.id,
        state: state as i32,
        out: j.out,
        started_micros: j.started_micros,
        seconds: j.seconds,
        rows: j.rows,
        columns: j.columns,
        registered: j.registered,
        plan: j.plan,
        error: j.error,
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

/// A scalar as a protobuf value (null leaves no value set).
pub fn to_value(s: &Scalar) -> proto::Value {
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
pub fn entity_rows(
    columns: &std::collections::HashMap<String, proto::RepeatedValue>,
) -> Result<Vec<Vec<(String, KeyValue)>>> {
    let mut names: Vec<&String> = columns.keys().collect();
    names.sort();
    let Some(first) = names.first().copied() else {
        return Err(Error::Invalid(
            "entities: give at least one join key column".into(),
        ));
    };
    let n = columns[first].val.len();
    let mut rows = vec![Vec::with_capacity(names.len()); n];
    for name in &names {
        let col = &columns[*name].val;
        if col.len() != n {
            return Err(Error::Invalid(format!(
                "entities: column `{name}` has {} values, `{first}` has {n}",
                col.len()
            )));
        }
        for (i, v) in col.iter().enumerate() {
            let kv = match &v.val {
                Some(Val::Int64Val(x)) => KeyValue::Int(*x),
                Some(Val::StringVal(s)) => KeyValue::Str(s.clone()),
                _ => {
                    return Err(Error::Invalid(format!(
                        "entities.{name}[{i}]: a join key value must be int64_val or string_val"
                    )));
                }
            };
            rows[i].push(((*name).clone(), kv));
        }
    }
    Ok(rows)
}

/// The rows of a push as a batch of the source's `schema` (see
/// [`quiver_app::serving::push_batch`] for the rules and the messages).
pub fn push_batch(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    columns: &std::collections::HashMap<String, proto::RepeatedValue>,
) -> Result<datafusion::arrow::array::RecordBatch> {
    let columns: std::collections::HashMap<String, Vec<Scalar>> = columns
        .iter()
        .map(|(k, v)| (k.clone(), v.val.iter().map(scalar_of).collect()))
        .collect();
    quiver_app::serving::push_batch(schema, &columns)
}
