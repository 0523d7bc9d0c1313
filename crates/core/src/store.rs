//! The online store contract (DESIGN §6): per feature view and entity key, one stored value,
//! read with one point lookup. Implementations live in other crates (`quiver-online` has the
//! embedded sled store); the server and the CLI drive them through this trait.

use crate::Result;

/// A key value of an entity, as the online path compares them: integers of any width as
/// Int64 and strings as UTF-8 — the same matching rule as the offline join
/// ([`crate::semantics::key_join_type`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    Int(i64),
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

/// Where the online values of feature views live.
///
/// Values are opaque bytes to the store; their first byte is the format version of whoever
/// wrote them. A write of several rows is atomic: after a crash, either all of them are there
/// or none, and everything a successful `write` returned for survives.
pub trait OnlineStore: Send + Sync {
    /// Write rows of one view, and optionally move the view's watermark, atomically and durably.
    fn write(&self, view: &str, rows: &[(Vec<u8>, Vec<u8>)], watermark: Option<i64>) -> Result<()>;

    /// The stored value of one entity of a view: one point read.
    fn get(&self, view: &str, entity: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Several entities of a view, in the order asked.
    fn get_many(&self, view: &str, entities: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        entities.iter().map(|e| self.get(view, e)).collect()
    }

    /// Up to when the view has been materialized (microseconds), if ever.
    fn watermark(&self, view: &str) -> Result<Option<i64>>;

    /// Delete every value of a view (a changed definition invalidates them).
    fn clear(&self, view: &str) -> Result<()>;
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
