//! Instants: every timestamp is microseconds since the Unix epoch, UTC (DESIGN §3).
//!
//! Arrow timestamps of any unit (a zone is honoured because Arrow stores UTC epoch values
//! whatever the zone; no zone is read as UTC), Date32/Date64 (midnight UTC) and RFC 3339 /
//! ISO 8601 strings are all accepted. A value that cannot be read is an error naming the
//! column and row, never a silent null.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, Int64Array};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};

use crate::{Error, Result};

/// Microseconds in a day of 86 400 s (Arrow Date32 values count days).
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Whether a column of this type can be read as instants.
pub fn is_time_type(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

/// Whether a column is typed as time (not strings): what a spine's default timestamp column must be.
pub fn is_typed_time(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    )
}

/// Convert a time column to UTC microseconds. Nulls stay null; `first_row` is added to row
/// numbers in errors so callers reading in batches report the row of the whole table.
pub fn to_micros(array: &dyn Array, column: &str, first_row: usize) -> Result<Int64Array> {
    fn map<T: arrow_array::ArrowPrimitiveType>(
        a: &dyn Array,
        f: impl Fn(T::Native) -> i64,
    ) -> Int64Array {
        a.as_primitive::<T>()
            .unary::<_, arrow_array::types::Int64Type>(f)
    }
    Ok(match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            map::<TimestampSecondType>(array, |v| v.saturating_mul(1_000_000))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            map::<TimestampMillisecondType>(array, |v| v.saturating_mul(1_000))
        }
        // Already microseconds: reinterpret the buffer, no copy.
        DataType::Timestamp(TimeUnit::Microsecond, _) => array
            .as_primitive::<TimestampMicrosecondType>()
            .reinterpret_cast::<arrow_array::types::Int64Type>(),
        // Floor, not truncation: 1 ns before the epoch is in the microsecond before it.
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            map::<TimestampNanosecondType>(array, |v| v.div_euclid(1_000))
        }
        DataType::Date32 => map::<Date32Type>(array, |d| d as i64 * MICROS_PER_DAY),
        DataType::Date64 => map::<Date64Type>(array, |ms| ms.saturating_mul(1_000)),
        DataType::Utf8 => strings(array.as_string::<i32>().iter(), column, first_row)?,
        DataType::LargeUtf8 => strings(array.as_string::<i64>().iter(), column, first_row)?,
        DataType::Utf8View => strings(array.as_string_view().iter(), column, first_row)?,
        other => {
            return Err(Error::NotATimeColumn {
                column: column.to_string(),
                data_type: other.to_string(),
            });
        }
    })
}

fn strings<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
    column: &str,
    first_row: usize,
) -> Result<Int64Array> {
    values
        .enumerate()
        .map(|(i, v)| match v {
            None => Ok(None),
            Some(s) => parse_instant(s).map(Some).ok_or_else(|| Error::BadTime {
                column: column.to_string(),
                row: first_row + i,
                value: s.to_string(),
            }),
        })
        .collect()
}

/// Read one instant written as RFC 3339 / ISO 8601: with a zone offset or `Z`, naive (= UTC),
/// `T` or space between date and time, optional fraction, or a plain date (midnight UTC).
pub fn parse_instant(text: &str) -> Option<i64> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.timestamp_micros());
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

/// Format microseconds as RFC 3339 UTC, for messages and explain output.
pub fn format_instant(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{us}us"))
}

/// The current time in microseconds since the epoch, UTC: the one clock of the workspace
/// (default lookup and materialization times, registry timestamps).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Date32Array, StringArray, TimestampNanosecondArray, TimestampSecondArray};
    use std::sync::Arc;

    #[test]
    fn units_and_zones_become_utc_micros() {
        let s = TimestampSecondArray::from(vec![Some(1), None]).with_timezone("+05:00");
        assert_eq!(
            to_micros(&s, "t", 0).unwrap(),
            Int64Array::from(vec![Some(1_000_000), None])
        );
        let ns = TimestampNanosecondArray::from(vec![-1, 1_999]);
        assert_eq!(
            to_micros(&ns, "t", 0).unwrap(),
            Int64Array::from(vec![-1, 1])
        );
        let d = Date32Array::from(vec![1]);
        assert_eq!(to_micros(&d, "t", 0).unwrap().value(0), MICROS_PER_DAY);
    }

    #[test]
    fn strings_parse_with_and_without_zone() {
        let a = StringArray::from(vec![
            Some("1970-01-01T00:00:01Z"),
            Some("1970-01-01T01:00:01+01:00"),
            Some("1970-01-01 00:00:01"),
            Some("1970-01-02"),
            Some("1970-01-01T00:00:00.5"),
            None,
        ]);
        let m = to_micros(&a, "t", 0).unwrap();
        assert_eq!(
            m,
            Int64Array::from(vec![
                Some(1_000_000),
                Some(1_000_000),
                Some(1_000_000),
                Some(MICROS_PER_DAY),
                Some(500_000),
                None
            ])
        );
    }

    #[test]
    fn unreadable_time_names_column_and_row() {
        let a = StringArray::from(vec!["2024-01-01", "yesterday"]);
        let e = to_micros(&a, "purchase_date", 10).unwrap_err().to_string();
        assert!(e.contains("column `purchase_date`, row 11"), "{e}");
        assert!(e.contains("\"yesterday\""), "{e}");
        let i = arrow_array::Int64Array::from(vec![1]);
        let e = to_micros(&i, "ts", 0).unwrap_err().to_string();
        assert!(e.contains("column `ts` is Int64"), "{e}");
        let _ = Arc::new(i);
    }
}
