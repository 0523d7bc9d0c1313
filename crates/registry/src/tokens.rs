//! Access tokens for a server: who they are for, their role, and only a salted hash of each
//! (the token itself is shown once, when made, and never stored). The registry keeps records;
//! making tokens and checking them is `quiver-app`'s.

use serde::{Deserialize, Serialize};

use crate::{Error, Registry, Result};

/// A token as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Who or what it is for (`svc-a`); unique among tokens not revoked.
    pub name: String,
    /// The public part of the token, which finds its record.
    pub id: String,
    /// `reader`, `writer` or `admin`.
    pub role: String,
    /// Random salt of the hash, hex.
    pub salt: String,
    /// BLAKE3 of the salt and the token's secret part, hex.
    pub hash: String,
    /// When it was made, microseconds since the epoch.
    pub created_micros: i64,
    /// When it was revoked, if it was.
    pub revoked_micros: Option<i64>,
}

/// The file a server watches to know the tokens changed: rewritten by every token change
/// (sled's own files say nothing reliable about when they last changed).
pub const TOKENS_STAMP: &str = "tokens.stamp";

impl Registry {
    fn stamp_tokens(&self) -> Result<()> {
        // the time of the change, to the nanosecond: every change writes a new stamp
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.path.join(TOKENS_STAMP);
        std::fs::write(&path, format!("{now}\n")).map_err(|e| Error::Corrupt {
            path: path.clone(),
            key: TOKENS_STAMP.into(),
            message: e.to_string(),
        })
    }

    /// Record a new token; refused when a token of the same name is in use.
    pub fn add_token(&self, t: &TokenRecord) -> Result<()> {
        if self
            .tokens()?
            .iter()
            .any(|x| x.name == t.name && x.revoked_micros.is_none())
        {
            return Err(Error::TokenExists {
                name: t.name.clone(),
            });
        }
        self.put_token(t)
    }

    /// Store `t` under its id, durably, and tell servers the tokens changed.
    fn put_token(&self, t: &TokenRecord) -> Result<()> {
        let v = serde_json::to_vec(t).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            key: t.id.clone(),
            message: e.to_string(),
        })?;
        self.tokens.insert(t.id.as_bytes(), v).map_err(self.err())?;
        self.flush()?;
        self.stamp_tokens()
    }

    /// Every token, revoked ones too, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut out: Vec<TokenRecord> = Vec::new();
        for kv in self.tokens.iter() {
            let (k, v) = kv.map_err(self.err())?;
            out.push(self.decode(&k, &v)?);
        }
        out.sort_by_key(|t| t.created_micros);
        Ok(out)
    }

    /// Revoke the token in use named `name`, at `at`; returns its record.
    pub fn revoke_token(&self, name: &str, at: i64) -> Result<TokenRecord> {
        let mut t = self
            .tokens()?
            .into_iter()
            .find(|t| t.name == name && t.revoked_micros.is_none())
            .ok_or_else(|| Error::UnknownToken {
                name: name.to_string(),
            })?;
        t.revoked_micros = Some(at);
        self.put_token(&t)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, id: &str, at: i64) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            id: id.into(),
            role: "reader".into(),
            salt: "00".into(),
            hash: "11".into(),
            created_micros: at,
            revoked_micros: None,
        }
    }

    #[test]
    fn names_are_unique_among_tokens_in_use_and_revocation_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.add_token(&token("svc-a", "a1", 1)).unwrap();
        let e = r.add_token(&token("svc-a", "a2", 2)).unwrap_err();
        assert!(e.to_string().contains("svc-a"), "{e}");
        let revoked = r.revoke_token("svc-a", 5).unwrap();
        assert_eq!(revoked.revoked_micros, Some(5));
        assert!(r.revoke_token("svc-a", 6).is_err());
        r.add_token(&token("svc-a", "a3", 7)).unwrap();
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        let all = r.tokens().unwrap();
        assert_eq!(
            all.iter()
                .map(|t| (t.id.as_str(), t.revoked_micros))
                .collect::<Vec<_>>(),
            [("a1", Some(5)), ("a3", None)]
        );
    }
}
