//! The online store contract (DESIGN §6): per feature view and entity key, one stored value,
//! read with one point lookup. Implementations live in other crates (`quiver-online` has the
//! embedded sled store); the server and the CLI drive them through this trait.

use crate::Result;

/// A key value of an entity, as the online path compares them: integers of any width as
/// Int64 and strings as UTF-8 — the same matching rule as the offline join
/// ([`crate::semantics::key_join_type`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// An integer key of any width, as i64.
    Int(i64),
    /// A string key.
    Str(String),
}

const TAG_INT: u8 = 1;
const TAG_STR: u8 = 2;

/// Encode an entity key (one value per join key, in the entity's order) as bytes that sort
/// like the values: a tag byte, then big-endian i64 with the sign bit flipped, or the string's
/// length (u32, big-endian) and its bytes.
pub fn encode_entity_key(values: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for v in values {
        match v {
            KeyValue::Int(i) => {
                out.push(TAG_INT);
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
            }
            KeyValue::Str(s) => {
                out.push(TAG_STR);
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    out
}

/// Decode what [`encode_entity_key`] wrote; `None` for bytes it did not write.
pub fn decode_entity_key(mut bytes: &[u8]) -> Option<Vec<KeyValue>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        match tag {
            TAG_INT if rest.len() >= 8 => {
                let (b, r) = rest.split_at(8);
                let u = u64::from_be_bytes(b.try_into().ok()?);
                out.push(KeyValue::Int((u ^ (1 << 63)) as i64));
                bytes = r;
            }
            TAG_STR if rest.len() >= 4 => {
                let (l, r) = rest.split_at(4);
                let n = u32::from_be_bytes(l.try_into().ok()?) as usize;
                if r.len() < n {
                    return None;
                }
                let (s, r) = r.split_at(n);
                out.push(KeyValue::Str(String::from_utf8(s.to_vec()).ok()?));
                bytes = r;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The rows (encoded entity key, value) to write to one feature view.
pub type ViewRows = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// What [`OnlineStore::pushed`] returns for a source: the batches pushed for the online
/// store alone, oldest first, and how many pushes the store has taken for the source in all
/// (logged or not) — the version a later [`OnlineStore::push`] is computed against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushLog {
    /// The logged batches, oldest first.
    pub batches: Vec<Vec<u8>>,
    /// Pushes stored for the source so far.
    pub pushes: u64,
}

/// Where the online values of feature views live.
///
/// Values are opaque bytes to the store; their first byte is the format version of whoever
/// wrote them. A write of several rows is atomic: a reader sees all of it or none, after a
/// crash either all of it is there or none, and everything a successful `write` returned for
/// survives (as far as the backend's own durability goes: sled flushes; Redis keeps what its
/// `appendfsync` keeps).
///
/// The methods are async: a shared store answers over the network, and callers are gRPC
/// handlers on the runtime's threads, which a blocking call would stall.
#[async_trait::async_trait]
pub trait OnlineStore: Send + Sync {
    /// Write rows of one view, and optionally move the view's watermark, atomically and durably.
    async fn write(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        watermark: Option<i64>,
    ) -> Result<()>;

    /// The stored value of one entity of a view: one point read.
    async fn get(&self, view: &str, entity: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Several entities of a view, in the order asked, read together (one snapshot: a
    /// write is seen by all of them or none).
    async fn get_many(&self, view: &str, entities: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Up to when the view has been materialized (microseconds), if ever.
    async fn watermark(&self, view: &str) -> Result<Option<i64>>;

    /// Delete every value of a view (a changed definition invalidates them).
    async fn clear(&self, view: &str) -> Result<()>;

    /// The rows pushed to a source for the online store alone (not appended to its offline
    /// table), oldest first, each as the encoded batch given to [`OnlineStore::push`], and the
    /// source's push count. Every later online computation of the source's views reads them
    /// after the source's own rows, so a push is not lost when the next one, or a
    /// materialization, recomputes an entity.
    async fn pushed(&self, source: &str) -> Result<PushLog>;

    /// Store a push: the recomputed rows of each view of the source and, when the rows went to
    /// the online store alone, the pushed batch among the source's [`OnlineStore::pushed`]
    /// rows — atomically and durably (a crash leaves all of it or none). `after` is the push
    /// count the rows were computed against: if another push was stored since (another
    /// process shares the store), nothing is written and the result is
    /// [`crate::Error::Conflict`], so the caller computes again.
    async fn push(
        &self,
        source: &str,
        batch: Option<&[u8]>,
        views: &[ViewRows],
        after: u64,
    ) -> Result<()>;

    /// Order rows the way this store writes them fastest, so that a large write split into
    /// consecutive chunks touches each storage page once (a bucketed store sorts by bucket).
    fn order_for_write(&self, _rows: &mut [(Vec<u8>, Vec<u8>)]) {}

    /// Rows per write call a materialization should use: a store that holds a lock or
    /// blocks readers while it applies a write wants smaller ones.
    fn write_chunk(&self) -> usize {
        20_000
    }

    /// The store's size in bytes (on disk, or in a server's memory), for metrics; `None`
    /// where the backend cannot tell cheaply.
    async fn size_bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// How many entities of `view` are stored, for metrics; `None` where counting would
    /// mean reading them all.
    async fn entities(&self, _view: &str) -> Result<Option<u64>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_like_values() {
        let keys = [
            vec![KeyValue::Int(-5)],
            vec![KeyValue::Int(-1)],
            vec![KeyValue::Int(0)],
            vec![KeyValue::Int(7)],
            vec![KeyValue::Int(i64::MAX)],
        ];
        let enc: Vec<Vec<u8>> = keys.iter().map(|k| encode_entity_key(k)).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        for (k, e) in keys.iter().zip(&enc) {
            assert_eq!(decode_entity_key(e).as_ref(), Some(k));
        }
        let composite = vec![KeyValue::Int(1), KeyValue::Str("de".into())];
        assert_eq!(
            decode_entity_key(&encode_entity_key(&composite)),
            Some(composite)
        );
        assert_eq!(decode_entity_key(&[9, 1, 2]), None);
        assert_eq!(decode_entity_key(&[TAG_STR, 0, 0, 0, 5, b'a']), None);
    }
}

/// A feature value as the online path stores and serves it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// No value: a null in the source, or no event in the window or ttl.
    Null,
    /// A boolean value.
    Bool(bool),
    /// An integer value.
    Int(i64),
    /// A floating-point value.
    Float(f64),
    /// A string value.
    Str(String),
    /// An instant in microseconds since the epoch, UTC.
    Time(i64),
}

/// The stored value of one (feature view, entity): the view's features as of `as_of`, in the
/// view's definition order, and the event time of the entity's latest event at or before
/// `as_of` (latest-value features are served with their ttl checked against it at read time).
///
/// `steps[j]` carries feature `j`'s values at later lookup times: `(t, v)` means "from `t` on
/// (until its next step), feature `j` is `v`". Window aggregates move as events leave (or,
/// with an offset, enter) their windows; the steps are the join's values at exactly those
/// instants (`Window::presence`), kept per feature and only where the feature moves, so a
/// lookup at any time after `as_of` returns what the offline join returns for it, over the
/// events known at `as_of`. `steps` is empty, or has one list per value.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    /// The lookup time the values were computed for (a materialization or push), in microseconds.
    pub as_of: i64,
    /// The event time of the entity's latest event at or before `as_of`, if any.
    pub event_time: Option<i64>,
    /// The features' values as of `as_of`, in the view's definition order.
    pub values: Vec<Scalar>,
    /// Per feature, the `(time, value)` steps after `as_of` where its value changes; empty, or one
    /// list per value.
    pub steps: Vec<Vec<(i64, Scalar)>>,
}

/// Format version of [`FeatureRow`] bytes (1 had no steps; it is still read).
pub const ROW_FORMAT: u8 = 2;

impl FeatureRow {
    /// The values a lookup at `at` sees: each feature's last step at or before `at`, else its
    /// value as of `as_of` (also for lookups before it: the store keeps no earlier values).
    pub fn values_at(&self, at: i64) -> Vec<Scalar> {
        self.values
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let steps = self.steps.get(j).map_or(&[][..], |s| &s[..]);
                match steps.partition_point(|(t, _)| *t <= at) {
                    0 => v.clone(),
                    k => steps[k - 1].1.clone(),
                }
            })
            .collect()
    }

    /// `[format][as_of i64][has event_time u8][event_time i64]?[n u32]` then per value a tag
    /// byte and its bytes (little-endian numbers, u32 length + UTF-8 for strings); then
    /// `[stepped u8]` and, when it is 1, per feature `[m u32]`, its m step times (i64), the
    /// end offset of each step's value (u32) and the values — so a lookup decodes one value
    /// per feature, found by binary search ([`FeatureRow::decode_at`]). A row without steps
    /// (every latest-value view) costs one byte more than in format 1.
    pub fn encode(&self) -> Vec<u8> {
        let stepped: usize = self.steps.iter().map(|s| s.len()).sum();
        let mut out = Vec::with_capacity(36 + self.values.len() * 13 + stepped * 21);
        out.push(ROW_FORMAT);
        out.extend_from_slice(&self.as_of.to_le_bytes());
        match self.event_time {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_le_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        encode_values(&mut out, &self.values);
        let stepped = self.steps.iter().any(|s| !s.is_empty());
        out.push(stepped as u8);
        if !stepped {
            return out;
        }
        let mut block = Vec::new();
        for j in 0..self.values.len() {
            let steps = self.steps.get(j).map_or(&[][..], |s| &s[..]);
            out.extend_from_slice(&(steps.len() as u32).to_le_bytes());
            for (t, _) in steps {
                out.extend_from_slice(&t.to_le_bytes());
            }
            block.clear();
            for (_, v) in steps {
                encode_values(&mut block, std::slice::from_ref(v));
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            }
            out.extend_from_slice(&block);
        }
        out
    }

    /// Decode [`FeatureRow::encode`]'s bytes; an error names what is wrong with them.
    pub fn decode(bytes: &[u8]) -> Result<FeatureRow> {
        Self::decode_steps(bytes, None)
    }

    /// Decode only what a lookup at `at` sees: `values` are [`FeatureRow::values_at`]`(at)`
    /// and `steps` is empty. One value per feature is decoded, whatever the steps stored.
    pub fn decode_at(bytes: &[u8], at: i64) -> Result<FeatureRow> {
        Self::decode_steps(bytes, Some(at))
    }

    fn decode_steps(bytes: &[u8], at: Option<i64>) -> Result<FeatureRow> {
        let bad = |what: &str| crate::Error::Store(format!("stored feature row: {what}"));
        let mut r = Reader(bytes);
        let format = r.u8().ok_or_else(|| bad("empty"))?;
        if format != ROW_FORMAT && format != 1 {
            return Err(bad(&format!(
                "format version {format} is not supported (this build reads 1 and {ROW_FORMAT})"
            )));
        }
        let as_of = r.i64().ok_or_else(|| bad("truncated"))?;
        let event_time = match r.u8().ok_or_else(|| bad("truncated"))? {
            0 => None,
            _ => Some(r.i64().ok_or_else(|| bad("truncated"))?),
        };
        let n = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let mut values = decode_values(&mut r, n).map_err(&bad)?;
        let mut steps = Vec::new();
        let stepped = format >= 2 && r.u8().ok_or_else(|| bad("truncated"))? != 0;
        if stepped {
            for value in values.iter_mut() {
                let m = r.u32().ok_or_else(|| bad("truncated"))? as usize;
                let times = r
                    .take(m.saturating_mul(8))
                    .ok_or_else(|| bad("truncated"))?;
                let ends = r
                    .take(m.saturating_mul(4))
                    .ok_or_else(|| bad("truncated"))?;
                let time =
                    |i: usize| i64::from_le_bytes(times[8 * i..8 * i + 8].try_into().unwrap());
                let end = |i: usize| {
                    u32::from_le_bytes(ends[4 * i..4 * i + 4].try_into().unwrap()) as usize
                };
                let block = r
                    .take(if m == 0 { 0 } else { end(m - 1) })
                    .ok_or_else(|| bad("truncated"))?;
                let one = |i: usize| -> Result<Scalar> {
                    let from = if i == 0 { 0 } else { end(i - 1) };
                    let b = block.get(from..end(i)).ok_or_else(|| bad("truncated"))?;
                    let mut v = decode_values(&mut Reader(b), 1).map_err(&bad)?;
                    Ok(v.pop().unwrap_or(Scalar::Null))
                };
                match at {
                    None => {
                        let mut list = Vec::with_capacity(m.min(4096));
                        for i in 0..m {
                            list.push((time(i), one(i)?));
                        }
                        steps.push(list);
                    }
                    Some(at) => {
                        // the number of steps at or before `at` (times ascend)
                        let (mut lo, mut hi) = (0, m);
                        while lo < hi {
                            let mid = (lo + hi) / 2;
                            if time(mid) <= at {
                                lo = mid + 1;
                            } else {
                                hi = mid;
                            }
                        }
                        if lo > 0 {
                            *value = one(lo - 1)?;
                        }
                    }
                }
            }
        }
        Ok(FeatureRow {
            as_of,
            event_time,
            values,
            steps,
        })
    }
}

fn encode_values(out: &mut Vec<u8>, values: &[Scalar]) {
    for v in values {
        match v {
            Scalar::Null => out.push(0),
            Scalar::Bool(b) => out.extend_from_slice(&[1, *b as u8]),
            Scalar::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Scalar::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Scalar::Str(s) => {
                out.push(4);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Scalar::Time(t) => {
                out.push(5);
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
    }
}

fn decode_values(r: &mut Reader<'_>, n: usize) -> std::result::Result<Vec<Scalar>, &'static str> {
    let mut values = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let v = match r.u8().ok_or("truncated")? {
            0 => Scalar::Null,
            1 => Scalar::Bool(r.u8().ok_or("truncated")? != 0),
            2 => Scalar::Int(r.i64().ok_or("truncated")?),
            3 => Scalar::Float(f64::from_bits(r.i64().ok_or("truncated")? as u64)),
            4 => {
                let len = r.u32().ok_or("truncated")? as usize;
                let s = r.take(len).ok_or("truncated")?;
                Scalar::Str(String::from_utf8(s.to_vec()).map_err(|_| "invalid UTF-8")?)
            }
            5 => Scalar::Time(r.i64().ok_or("truncated")?),
            _ => return Err("unknown value tag"),
        };
        values.push(v);
    }
    Ok(values)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_reject_garbage() {
        let row = FeatureRow {
            as_of: 42,
            event_time: Some(-7),
            values: vec![
                Scalar::Null,
                Scalar::Bool(true),
                Scalar::Int(i64::MIN),
                Scalar::Float(0.1),
                Scalar::Str("é".into()),
                Scalar::Time(5),
            ],
            steps: vec![],
        };
        let framed = row.clone();
        assert_eq!(FeatureRow::decode(&framed.encode()).unwrap(), framed);
        let mut stepped = framed.clone();
        stepped.steps = vec![Vec::new(); stepped.values.len()];
        stepped.steps[2] = vec![(50, Scalar::Int(3)), (60, Scalar::Null)];
        stepped.steps[4] = vec![(55, Scalar::Str("ü".into()))];
        assert_eq!(FeatureRow::decode(&stepped.encode()).unwrap(), stepped);
        let at = |t: i64| stepped.values_at(t);
        assert_eq!(at(49), stepped.values);
        assert_eq!(at(50)[2], Scalar::Int(3));
        assert_eq!(at(54)[4], Scalar::Str("é".into()));
        assert_eq!(at(55)[4], Scalar::Str("ü".into()));
        assert_eq!(at(i64::MAX)[2], Scalar::Null);
        assert_eq!(at(i64::MAX)[3], Scalar::Float(0.1));
        let bytes = stepped.encode();
        for t in [i64::MIN, 49, 50, 54, 55, 59, 60, i64::MAX] {
            let one = FeatureRow::decode_at(&bytes, t).unwrap();
            assert_eq!(one.values, stepped.values_at(t), "at {t}");
            assert!(one.steps.is_empty());
        }
        // format 1 (no steps) is still read
        let mut v1 = framed.encode();
        v1[0] = 1;
        v1.truncate(v1.len() - 1);
        assert_eq!(FeatureRow::decode(&v1).unwrap(), framed);
        let none = FeatureRow {
            as_of: 1,
            event_time: None,
            values: vec![],
            steps: vec![],
        };
        assert_eq!(FeatureRow::decode(&none.encode()).unwrap(), none);
        let mut bytes = stepped.encode();
        bytes.truncate(bytes.len() - 3);
        assert!(
            FeatureRow::decode(&bytes)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        let e = FeatureRow::decode(&[9]).unwrap_err().to_string();
        assert!(e.contains("format version 9 is not supported"), "{e}");
    }
}

impl Scalar {
    /// One column's values as scalars: booleans, integers, floats, strings, and times (as
    /// UTC microseconds); any other type cannot be served online and is an error naming it.
    pub fn column(array: &dyn arrow_array::Array, name: &str) -> Result<Vec<Scalar>> {
        use arrow_array::cast::AsArray;
        use arrow_schema::DataType;
        let n = array.len();
        let valid = |i: usize| array.is_valid(i);
        Ok(match array.data_type() {
            DataType::Null => vec![Scalar::Null; n],
            DataType::Boolean => {
                let a = array.as_boolean();
                (0..n)
                    .map(|i| {
                        if valid(i) {
                            Scalar::Bool(a.value(i))
                        } else {
                            Scalar::Null
                        }
                    })
                    .collect()
            }
            dt if dt.is_integer() => {
                let opts = arrow_cast_free_i64(array, name)?;
                opts.into_iter()
                    .map(|v| v.map_or(Scalar::Null, Scalar::Int))
                    .collect()
            }
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                let f = floats(array);
                f.into_iter()
                    .map(|v| v.map_or(Scalar::Null, Scalar::Float))
                    .collect()
            }
            DataType::Utf8 => strings(array.as_string::<i32>().iter()),
            DataType::LargeUtf8 => strings(array.as_string::<i64>().iter()),
            DataType::Utf8View => strings(array.as_string_view().iter()),
            dt if crate::time::is_typed_time(dt) => crate::time::to_micros(array, name, 0)?
                .iter()
                .map(|v| v.map_or(Scalar::Null, Scalar::Time))
                .collect(),
            other => {
                return Err(crate::Error::Request(format!(
                    "column `{name}` is {other}; the online store serves booleans, numbers, strings and times"
                )));
            }
        })
    }

    /// JSON text of the value (for `--json` output).
    pub fn to_json(&self) -> String {
        match self {
            Scalar::Null => "null".into(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) if f.is_finite() => format!("{f:?}"),
            Scalar::Float(f) => format!("\"{f}\""),
            Scalar::Str(s) => json_string(s),
            Scalar::Time(t) => json_string(&crate::time::format_instant(*t)),
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Null => write!(f, "null"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{s}"),
            Scalar::Time(t) => write!(f, "{}", crate::time::format_instant(*t)),
        }
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn strings<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<Scalar> {
    it.map(|v| v.map_or(Scalar::Null, |s| Scalar::Str(s.to_string())))
        .collect()
}

fn floats(array: &dyn arrow_array::Array) -> Vec<Option<f64>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float16Type, Float32Type, Float64Type};
    use arrow_schema::DataType;
    match array.data_type() {
        DataType::Float16 => array
            .as_primitive::<Float16Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        DataType::Float32 => array
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        _ => array.as_primitive::<Float64Type>().iter().collect(),
    }
}

fn arrow_cast_free_i64(array: &dyn arrow_array::Array, name: &str) -> Result<Vec<Option<i64>>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType;
    macro_rules! conv {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|x| x as i64))
                .collect()
        };
    }
    Ok(match array.data_type() {
        DataType::Int8 => conv!(Int8Type),
        DataType::Int16 => conv!(Int16Type),
        DataType::Int32 => conv!(Int32Type),
        DataType::Int64 => conv!(Int64Type),
        DataType::UInt8 => conv!(UInt8Type),
        DataType::UInt16 => conv!(UInt16Type),
        DataType::UInt32 => conv!(UInt32Type),
        DataType::UInt64 => array
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| {
                v.map(|x| {
                    i64::try_from(x).map_err(|_| {
                        crate::Error::Request(format!(
                            "column `{name}`: UInt64 value {x} does not fit in Int64"
                        ))
                    })
                })
                .transpose()
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(crate::Error::Request(format!(
                "column `{name}` is {other}, not an integer"
            )));
        }
    })
}

/// The entity keys of a batch's key columns, row by row (`None` where a key is null).
pub fn entity_keys(
    columns: &[&dyn arrow_array::Array],
    names: &[String],
) -> Result<Vec<Option<Vec<KeyValue>>>> {
    let n = columns.first().map_or(0, |c| c.len());
    let mut per_col = Vec::new();
    for (c, name) in columns.iter().zip(names) {
        per_col.push(Scalar::column(*c, name)?);
    }
    (0..n)
        .map(|i| {
            per_col
                .iter()
                .zip(names)
                .map(|(col, name)| match &col[i] {
                    Scalar::Null => Ok(None),
                    Scalar::Int(v) => Ok(Some(KeyValue::Int(*v))),
                    Scalar::Str(s) => Ok(Some(KeyValue::Str(s.clone()))),
                    other => Err(crate::Error::Request(format!(
                        "key column `{name}` holds {other:?}; online keys must be integers or strings"
                    ))),
                })
                .collect::<Result<Option<Vec<_>>>>()
        })
        .collect()
}
