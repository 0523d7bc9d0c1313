//! Conversion between the protobuf messages of `quiver.v1` and the app's types and Arrow:
//! values, entity columns, pushed columns, feature selections and jobs.

use std::sync::Arc;

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

/// The pushed columns as a batch of the source's schema: every source column must be given,
/// with one value per row of the type the column holds.
pub fn push_batch(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    columns: &std::collections::HashMap<String, proto::RepeatedValue>,
) -> Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::DataType;
    for name in columns.keys() {
        if schema.field_with_name(name).is_err() {
            return Err(Error::Invalid(format!(
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
            .ok_or_else(|| Error::Invalid(format!("columns.{name}: missing")))?
            .val;
        match rows {
            None => rows = Some(values.len()),
            Some(n) if n != values.len() => {
                return Err(Error::Invalid(format!(
                    "columns.{name}: {} values, other columns have {n}",
                    values.len()
                )));
            }
            _ => {}
        }
        let bad =
            |i: usize, want: &str| Error::Invalid(format!("columns.{name}[{i}]: expected {want}"));
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
            return Err(Error::Invalid(format!(
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
            .map_err(|e| Error::Invalid(format!("columns.{name}: {e}")))?
        };
        arrays.push(array);
    }
    datafusion::arrow::array::RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| Error::Invalid(format!("columns: {e}")))
}
