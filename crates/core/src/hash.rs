//! Content hashes of tables (DESIGN §5): a 256-bit name for what a table holds, whatever files,
//! row groups or physical types hold it.
//!
//! Each row is encoded canonically (values by logical class, not physical type: every integer
//! width is one integer, every string type one string, timestamps as UTC microseconds) and
//! hashed with BLAKE3; the table's hash is BLAKE3 over the canonical schema, the row count and
//! the sum of the row hashes modulo 2²⁵⁶ (a multiset hash, Clarke et al. 2003). The sum makes
//! the hash independent of how rows are split into files and batches, lets an append extend
//! the previous version's hash without reading it again, and lets partitions be hashed in
//! parallel. Row order does not enter the hash: two tables with the same rows in another order
//! hash alike; `reproduce` compares rows in order when it needs to say where they differ.
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Int32Array, Int64Array, RecordBatch};
//! use arrow_schema::{DataType, Field, Schema};
//! use quiver_core::hash::TableHasher;
//! let b32 = RecordBatch::try_new(
//!     Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
//!     vec![Arc::new(Int32Array::from(vec![1, 2, 3]))],
//! ).unwrap();
//! let b64 = RecordBatch::try_new(
//!     Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
//!     vec![Arc::new(Int64Array::from(vec![3, 1, 2]))],
//! ).unwrap();
//! let mut a = TableHasher::new(&b32.schema()).unwrap();
//! a.update(&b32).unwrap();
//! let mut b = TableHasher::new(&b64.schema()).unwrap();
//! b.update(&b64.slice(0, 1)).unwrap();
//! b.update(&b64.slice(1, 2)).unwrap();
//! assert_eq!(a.finish(), b.finish());
//! ```

use std::fmt;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use serde::{Deserialize, Serialize};

use crate::time::MICROS_PER_DAY;
use crate::{Error, Result};

/// A 256-bit content hash, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

impl std::str::FromStr for ContentHash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Request(format!("bad content hash {s:?}: expected 64 hex digits"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ContentHash(out))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The logical class of a column: what the hash (and a schema comparison) sees of its type.
pub fn type_class(dt: &DataType) -> Option<String> {
    Some(match dt {
        DataType::Boolean => "bool".into(),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "int".into(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "float".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp".into(),
        DataType::Timestamp(_, None) => "timestamp_ntz".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Dictionary(_, v) => return type_class(v),
        DataType::Null => "null".into(),
        _ => return None,
    })
}

/// The running state of a table hash: the row count and the sum of the row hashes. It is
/// small and can be stored, so that an append extends it (see [`TableHasher::resume`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashState {
    /// Number of rows hashed.
    pub rows: u64,
    /// Sum of the row hashes mod 2²⁵⁶, little-endian 64-bit limbs.
    pub sum: [u64; 4],
}

impl HashState {
    fn add_row(&mut self, h: &[u8; 32]) {
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let x = u64::from_le_bytes(h[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
            let s = *limb as u128 + x as u128 + carry;
            *limb = s as u64;
            carry = s >> 64;
        }
        self.rows += 1;
    }

    /// The state of the union of two disjoint sets of rows.
    pub fn merge(&mut self, other: &HashState) {
        let mut carry = 0u128;
        for (a, b) in self.sum.iter_mut().zip(other.sum) {
            let s = *a as u128 + b as u128 + carry;
            *a = s as u64;
            carry = s >> 64;
        }
        self.rows += other.rows;
    }
}

/// Hashes a table batch by batch.
#[derive(Clone)]
pub struct TableHasher {
    schema: Vec<(String, String)>,
    state: HashState,
    buf: Vec<u8>,
}

impl TableHasher {
    /// A hasher for tables of this schema; a column of a type Quiver cannot hash is an error
    /// naming it.
    pub fn new(schema: &Schema) -> Result<TableHasher> {
        Self::resume(schema, HashState::default())
    }

    /// Continue from the state of a table's earlier version (an append adds its rows).
    pub fn resume(schema: &Schema, state: HashState) -> Result<TableHasher> {
        let schema = canonical_schema(schema)?;
        Ok(TableHasher {
            schema,
            state,
            buf: Vec::with_capacity(256),
        })
    }

    /// The canonical schema: (column, class) in column order.
    pub fn schema(&self) -> &[(String, String)] {
        &self.schema
    }

    /// Add the rows of a batch, which must have the hasher's columns in order.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_columns() != self.schema.len() {
            return Err(Error::Request(format!(
                "table hash: a batch has {} columns, the table {}",
                batch.num_columns(),
                self.schema.len()
            )));
        }
        let cols: Vec<Col<'_>> = batch
            .columns()
            .iter()
            .zip(&self.schema)
            .map(|(a, (name, _))| Col::new(a.as_ref(), name))
            .collect::<Result<_>>()?;
        for row in 0..batch.num_rows() {
            self.buf.clear();
            for c in &cols {
                c.encode(row, &mut self.buf);
            }
            let h = blake3::hash(&self.buf);
            self.state.add_row(h.as_bytes());
        }
        Ok(())
    }

    /// The hash of each row of a batch (not added to the state): to compare tables row by row.
    pub fn row_hashes(&mut self, batch: &RecordBatch) -> Result<Vec<[u8; 32]>> {
        let cols: Vec<Col<'_>> = batch
            .columns()
            .iter()
            .zip(&self.schema)
            .map(|(a, (name, _))| Col::new(a.as_ref(), name))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            self.buf.clear();
            for c in &cols {
                c.encode(row, &mut self.buf);
            }
            out.push(*blake3::hash(&self.buf).as_bytes());
        }
        Ok(out)
    }

    /// The state so far, to store beside the hash.
    pub fn state(&self) -> HashState {
        self.state
    }

    /// Add the rows another hasher of the same schema has seen, such as a partition hashed in
    /// parallel.
    pub fn merge(&mut self, other: &TableHasher) {
        self.state.merge(&other.state);
    }

    /// The hash of the rows added so far.
    pub fn finish(&self) -> ContentHash {
        finish(&self.schema, &self.state)
    }
}

/// The hash of a table with this canonical schema and state.
pub fn finish(schema: &[(String, String)], state: &HashState) -> ContentHash {
    let mut h = blake3::Hasher::new();
    h.update(b"quiver/table/v1\0");
    h.update(&(schema.len() as u64).to_le_bytes());
    for (name, class) in schema {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(class.len() as u64).to_le_bytes());
        h.update(class.as_bytes());
    }
    h.update(&state.rows.to_le_bytes());
    for limb in state.sum {
        h.update(&limb.to_le_bytes());
    }
    ContentHash(*h.finalize().as_bytes())
}

/// The canonical schema of an Arrow schema, or an error naming the column Quiver cannot hash.
pub fn canonical_schema(schema: &Schema) -> Result<Vec<(String, String)>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            type_class(f.data_type())
                .map(|c| (f.name().clone(), c))
                .ok_or_else(|| {
                    Error::Request(format!(
                        "column `{}`: type {} is not supported in versioned tables",
                        f.name(),
                        f.data_type()
                    ))
                })
        })
        .collect()
}

/// BLAKE3 of bytes, for files and definitions.
pub fn hash_bytes(bytes: &[u8]) -> ContentHash {
    ContentHash(*blake3::hash(bytes).as_bytes())
}

/// A column viewed by class, decoded once per batch.
enum Col<'a> {
    Int(Vec<Option<i128>>),
    Float(Vec<Option<f64>>),
    Bool(&'a arrow_array::BooleanArray),
    Str(Vec<Option<&'a str>>),
    Bin(Vec<Option<&'a [u8]>>),
    /// Timestamps as UTC microseconds, dates as days.
    Time(u8, Vec<Option<i64>>),
    Null,
}

fn ints<T: ArrowPrimitiveType>(a: &dyn Array) -> Vec<Option<i128>>
where
    T::Native: Into<i128>,
{
    a.as_primitive::<T>()
        .iter()
        .map(|v| v.map(Into::into))
        .collect()
}

impl<'a> Col<'a> {
    fn new(a: &'a dyn Array, name: &str) -> Result<Col<'a>> {
        Ok(match a.data_type() {
            DataType::Null => Col::Null,
            DataType::Boolean => Col::Bool(a.as_boolean()),
            DataType::Int8 => Col::Int(ints::<Int8Type>(a)),
            DataType::Int16 => Col::Int(ints::<Int16Type>(a)),
            DataType::Int32 => Col::Int(ints::<Int32Type>(a)),
            DataType::Int64 => Col::Int(ints::<Int64Type>(a)),
            DataType::UInt8 => Col::Int(ints::<UInt8Type>(a)),
            DataType::UInt16 => Col::Int(ints::<UInt16Type>(a)),
            DataType::UInt32 => Col::Int(ints::<UInt32Type>(a)),
            DataType::UInt64 => Col::Int(ints::<UInt64Type>(a)),
            DataType::Decimal128(_, _) => Col::Int(ints::<Decimal128Type>(a)),
            DataType::Float16 => Col::Float(
                a.as_primitive::<Float16Type>()
                    .iter()
                    .map(|v| v.map(f64::from))
                    .collect(),
            ),
            DataType::Float32 => Col::Float(
                a.as_primitive::<Float32Type>()
                    .iter()
                    .map(|v| v.map(f64::from))
                    .collect(),
            ),
            DataType::Float64 => Col::Float(a.as_primitive::<Float64Type>().iter().collect()),
            DataType::Utf8 => Col::Str(a.as_string::<i32>().iter().collect()),
            DataType::LargeUtf8 => Col::Str(a.as_string::<i64>().iter().collect()),
            DataType::Utf8View => Col::Str(a.as_string_view().iter().collect()),
            DataType::Binary => Col::Bin(a.as_binary::<i32>().iter().collect()),
            DataType::LargeBinary => Col::Bin(a.as_binary::<i64>().iter().collect()),
            DataType::BinaryView => Col::Bin(a.as_binary_view().iter().collect()),
            DataType::Timestamp(_, _) => {
                let m = crate::time::to_micros(a, name, 0)?;
                Col::Time(b't', m.iter().collect())
            }
            DataType::Date32 => Col::Time(
                b'd',
                a.as_primitive::<Date32Type>()
                    .iter()
                    .map(|v| v.map(i64::from))
                    .collect(),
            ),
            DataType::Date64 => Col::Time(
                b'd',
                a.as_primitive::<Date64Type>()
                    .iter()
                    .map(|v| v.map(|ms| (ms * 1000).div_euclid(MICROS_PER_DAY)))
                    .collect(),
            ),
            DataType::Dictionary(_, _) => {
                return Err(Error::Request(format!(
                    "column `{name}`: dictionary columns must be cast to their value type before hashing"
                )));
            }
            other => {
                return Err(Error::Request(format!(
                    "column `{name}`: type {other} is not supported in versioned tables"
                )));
            }
        })
    }

    fn encode(&self, row: usize, out: &mut Vec<u8>) {
        match self {
            Col::Null => out.push(0),
            Col::Bool(a) => {
                if a.is_null(row) {
                    out.push(0)
                } else {
                    out.extend_from_slice(&[b'b', a.value(row) as u8])
                }
            }
            Col::Int(v) => match v[row] {
                None => out.push(0),
                Some(x) => {
                    out.push(b'i');
                    out.extend_from_slice(&x.to_le_bytes());
                }
            },
            Col::Float(v) => match v[row] {
                None => out.push(0),
                Some(x) => {
                    // One NaN, and -0 equal to 0, as comparisons see them.
                    let x = if x.is_nan() {
                        f64::NAN
                    } else if x == 0.0 {
                        0.0
                    } else {
                        x
                    };
                    out.push(b'f');
                    out.extend_from_slice(&x.to_bits().to_le_bytes());
                }
            },
            Col::Str(v) => match v[row] {
                None => out.push(0),
                Some(s) => {
                    out.push(b's');
                    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            },
            Col::Bin(v) => match v[row] {
                None => out.push(0),
                Some(s) => {
                    out.push(b'x');
                    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    out.extend_from_slice(s);
                }
            },
            Col::Time(tag, v) => match v[row] {
                None => out.push(0),
                Some(t) => {
                    out.push(*tag);
                    out.extend_from_slice(&t.to_le_bytes());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow_schema::Field;
    use std::sync::Arc;

    fn batch(cols: Vec<(&str, Arc<dyn Array>)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    fn hash(batches: &[RecordBatch]) -> ContentHash {
        let mut h = TableHasher::new(&batches[0].schema()).unwrap();
        for b in batches {
            h.update(b).unwrap();
        }
        h.finish()
    }

    #[test]
    fn layout_and_physical_type_do_not_matter_but_content_does() {
        let a = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a", "b", "c"]))),
            (
                "t",
                Arc::new(TimestampMillisecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
            ),
        ]);
        let b = batch(vec![
            (
                "k",
                Arc::new(arrow_array::LargeStringArray::from(vec!["a", "b", "c"])),
            ),
            (
                "t",
                Arc::new(
                    arrow_array::TimestampMicrosecondArray::from(vec![1000, 2000, 3000])
                        .with_timezone("Europe/Paris"),
                ),
            ),
        ]);
        assert_eq!(
            hash(std::slice::from_ref(&a)),
            hash(&[b.slice(0, 2), b.slice(2, 1)])
        );
        // One value changed, a column renamed, a row dropped or duplicated: all differ.
        let c = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a", "b", "d"]))),
            (
                "t",
                Arc::new(TimestampMillisecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
            ),
        ]);
        assert_ne!(hash(std::slice::from_ref(&a)), hash(&[c]));
        let renamed = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("key", DataType::Utf8, true),
                a.schema().field(1).clone(),
            ])),
            a.columns().to_vec(),
        )
        .unwrap();
        assert_ne!(hash(std::slice::from_ref(&a)), hash(&[renamed]));
        assert_ne!(hash(std::slice::from_ref(&a)), hash(&[a.slice(0, 2)]));
        assert_ne!(
            hash(std::slice::from_ref(&a)),
            hash(&[a.clone(), a.slice(0, 1)])
        );
    }

    #[test]
    fn null_is_not_zero_or_empty_and_states_merge() {
        let f = |v: Vec<Option<f64>>| batch(vec![("x", Arc::new(Float64Array::from(v)))]);
        assert_ne!(hash(&[f(vec![None])]), hash(&[f(vec![Some(0.0)])]));
        assert_eq!(hash(&[f(vec![Some(-0.0)])]), hash(&[f(vec![Some(0.0)])]));
        let s = |v: Vec<Option<&str>>| batch(vec![("x", Arc::new(StringArray::from(v)))]);
        assert_ne!(hash(&[s(vec![None])]), hash(&[s(vec![Some("")])]));
        // Two columns never blur into one: ("ab", "") vs ("a", "b").
        let two = |a: &str, b: &str| {
            batch(vec![
                ("x", Arc::new(StringArray::from(vec![a]))),
                ("y", Arc::new(StringArray::from(vec![b]))),
            ])
        };
        assert_ne!(hash(&[two("ab", "")]), hash(&[two("a", "b")]));
        let all = f(vec![Some(1.0), Some(2.0), None, Some(4.0)]);
        let mut left = TableHasher::new(&all.schema()).unwrap();
        left.update(&all.slice(0, 3)).unwrap();
        let mut right = TableHasher::resume(&all.schema(), HashState::default()).unwrap();
        right.update(&all.slice(3, 1)).unwrap();
        left.merge(&right);
        assert_eq!(left.finish(), hash(std::slice::from_ref(&all)));
        let resumed = {
            let mut h = TableHasher::new(&all.schema()).unwrap();
            h.update(&all.slice(0, 2)).unwrap();
            let mut g = TableHasher::resume(&all.schema(), h.state()).unwrap();
            g.update(&all.slice(2, 2)).unwrap();
            g.finish()
        };
        assert_eq!(resumed, hash(&[all]));
        let text = resumed.to_string();
        assert_eq!(text.parse::<ContentHash>().unwrap(), resumed);
    }
}
