//! Who may do what on a server: bearer tokens mapped to roles (DESIGN §12).
//!
//! A token is `qvt_<id>_<secret>`: the id finds its record in the registry, which keeps only a
//! random salt and the BLAKE3 hash of salt and secret (the secret is 256 random bits, so a
//! fast hash is as strong as a slow one; nothing that reads the registry can make a token
//! from it). [`Tokens`] holds the records in memory for a server and reloads them when the
//! registry changes, so a token made or revoked by `quiver tokens` takes effect within
//! [`RELOAD_EVERY`] without a restart.
//!
//! Roles are ordered: `reader` (lookups, reading datasets, models and jobs) < `writer`
//! (pushes, materializations, training-set jobs) < `admin` (registry writes: models,
//! aliases; everything). Transports say which role each of their methods needs and call
//! [`Principal::require`]; with authentication off every caller is [`Principal::anonymous`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quiver_registry::{Registry, TokenRecord};
use rand::RngCore;

use crate::{Error, Result};

/// How often a server looks whether the registry changed (and then reloads tokens).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Lookups, reading datasets, models and jobs.
    Reader,
    /// And pushes, materializations, training-set jobs.
    Writer,
    /// And registry writes (models, aliases): everything.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(Error::Invalid(format!(
                "role: `{other}` is not a role; use reader, writer or admin"
            ))),
        }
    }
}

/// Who is calling, as a request carries it through a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`-` when authentication is off).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// The caller when authentication is off: may do everything.
    pub fn anonymous() -> Principal {
        Principal {
            name: "-".into(),
            role: Role::Admin,
        }
    }

    /// Refuse unless this caller has at least `needed` for `method`; the message names the
    /// role needed.
    pub fn require(&self, needed: Role, method: &str) -> Result<()> {
        if self.role >= needed {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "{method} needs role {} or above; token `{}` has role {}",
            needed.name(),
            self.name,
            self.role.name()
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(salt: &str, secret: &str) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    h.finalize()
}

/// Make a token for `name` with `role`, record its hash in `registry`; returns the token,
/// which exists nowhere else (show it once).
pub fn create(registry: &Registry, name: &str, role: Role) -> Result<(String, TokenRecord)> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::Invalid(format!(
            "name: {name:?}: use 1 to 64 letters, digits, `-`, `_` or `.`"
        )));
    }
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    rng.fill_bytes(&mut salt);
    let (id, secret, salt) = (hex(&id), hex(&secret), hex(&salt));
    let record = TokenRecord {
        name: name.to_string(),
        id: id.clone(),
        role: role.name().to_string(),
        hash: digest(&salt, &secret).to_hex().to_string(),
        salt,
        created_micros: quiver_core::time::now_micros(),
        revoked_micros: None,
    };
    registry.add_token(&record)?;
    Ok((format!("qvt_{id}_{secret}"), record))
}

/// The tokens a server accepts, kept in memory and reloaded when the registry changes.
pub struct Tokens {
    registry: PathBuf,
    by_id: RwLock<HashMap<String, (TokenRecord, Role)>>,
    /// The registry's token stamp at the last load.
    seen: RwLock<Option<String>>,
}

impl Tokens {
    /// The tokens of the registry at `registry` (its folder), loaded now.
    pub fn load(registry: PathBuf, records: Vec<TokenRecord>) -> Arc<Tokens> {
        let t = Arc::new(Tokens {
            seen: RwLock::new(Self::stamp(&registry)),
            registry,
            by_id: Default::default(),
        });
        t.set(records);
        t
    }

    fn stamp(registry: &std::path::Path) -> Option<String> {
        std::fs::read_to_string(registry.join(quiver_registry::TOKENS_STAMP)).ok()
    }

    fn set(&self, records: Vec<TokenRecord>) {
        let map = records
            .into_iter()
            .filter(|t| t.revoked_micros.is_none())
            .filter_map(|t| Role::parse(&t.role).ok().map(|r| (t.id.clone(), (t, r))))
            .collect();
        if let Ok(mut m) = self.by_id.write() {
            *m = map;
        }
    }

    /// Whether the registry changed since the last load (then [`Tokens::reload`] it).
    pub fn changed(&self) -> bool {
        let now = Self::stamp(&self.registry);
        self.seen.read().map(|s| *s != now).unwrap_or(true)
    }

    /// Replace the tokens with `records`, read from the registry now.
    pub fn reload(&self, records: Vec<TokenRecord>) {
        let now = Self::stamp(&self.registry);
        self.set(records);
        if let Ok(mut s) = self.seen.write() {
            *s = now;
        }
    }

    /// How many tokens are in use.
    pub fn len(&self) -> usize {
        self.by_id.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no token is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller a request's `Authorization` value names: `Bearer qvt_…`. A missing,
    /// malformed, unknown or revoked token is [`Error::Unauthenticated`].
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal> {
        let Some(value) = authorization else {
            return Err(Error::Unauthenticated(
                "no token: send `authorization: Bearer <token>` (quiver tokens create)".into(),
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated("authorization: expected `Bearer <token>`".into())
            })?
            .trim();
        let unknown = || Error::Unauthenticated("the token is unknown or revoked".into());
        let rest = token.strip_prefix("qvt_").ok_or_else(unknown)?;
        let (id, secret) = rest.split_once('_').ok_or_else(unknown)?;
        let map = self
            .by_id
            .read()
            .map_err(|_| Error::Internal("tokens lock".into()))?;
        let (record, role) = map.get(id).ok_or_else(unknown)?;
        // blake3::Hash compares in constant time.
        let expected = blake3::Hash::from_hex(&record.hash).map_err(|_| unknown())?;
        if digest(&record.salt, secret) != expected {
            return Err(unknown());
        }
        Ok(Principal {
            name: record.name.clone(),
            role: *role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_by_role_and_stop_when_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let (token, record) = create(&reg, "svc-a", Role::Writer).unwrap();
        assert!(token.starts_with("qvt_"));
        // only the hash is stored
        let stored = serde_json::to_string(&reg.tokens().unwrap()).unwrap();
        assert!(!stored.contains(token.rsplit('_').next().unwrap()));
        let tokens = Tokens::load(dir.path().to_path_buf(), reg.tokens().unwrap());
        let p = tokens.verify(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(
            p,
            Principal {
                name: "svc-a".into(),
                role: Role::Writer
            }
        );
        assert!(p.require(Role::Writer, "Push").is_ok());
        let e = p.require(Role::Admin, "RegisterModel").unwrap_err();
        assert!(e.to_string().contains("needs role admin"), "{e}");
        // wrong secret, wrong shape, none
        let forged = format!("Bearer qvt_{}_{}", record.id, "0".repeat(64));
        for bad in [
            Some(forged.as_str()),
            Some("Bearer nope"),
            Some(token.as_str()),
            None,
        ] {
            let e = tokens.verify(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Unauthenticated, "{bad:?}");
        }
        reg.revoke_token("svc-a", 1).unwrap();
        assert!(tokens.changed());
        tokens.reload(reg.tokens().unwrap());
        assert!(!tokens.changed());
        assert!(tokens.verify(Some(&format!("Bearer {token}"))).is_err());
        assert!(create(&reg, "bad name", Role::Reader).is_err());
    }
}
