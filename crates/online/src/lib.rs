//! Quiver's online store: the latest feature values per (feature view, entity), on sled.
//!
//! [`SledStore`] implements [`quiver_core::store::OnlineStore`]: one sled tree per feature
//! view keyed by the encoded entity key, so a lookup is one point read; a `meta` tree holds the
//! store's format version and each view's materialization watermark. Writes are atomic (a
//! sled batch, or a transaction when the watermark moves with them) and flushed before they
//! return, so what was acknowledged survives a crash. See `docs/adr/0002-online-store.md`.
//!
//! ```
//! use quiver_core::store::{encode_entity_key, KeyValue, OnlineStore};
//! let dir = tempfile::tempdir().unwrap();
//! let store = quiver_online::SledStore::open(dir.path()).unwrap();
//! let user = encode_entity_key(&[KeyValue::Int(42)]);
//! store.write("user_profile", &[(user.clone(), b"\x01...".to_vec())], Some(1_000)).unwrap();
//! assert_eq!(store.get("user_profile", &user).unwrap().as_deref(), Some(&b"\x01..."[..]));
//! assert_eq!(store.watermark("user_profile").unwrap(), Some(1_000));
//! ```

use std::path::{Path, PathBuf};

use quiver_core::store::OnlineStore;
use sled::Transactional;

/// The layout version of the store itself (trees and meta keys), checked on open.
pub const STORE_FORMAT: u8 = 1;
const FORMAT_KEY: &[u8] = b"format";

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("online store {}: {source}", path.display())]
    Sled { path: PathBuf, source: sled::Error },
    #[error("online store {}: format version {found} is not supported (this build reads {STORE_FORMAT})", path.display())]
    Format { path: PathBuf, found: u8 },
}

impl From<Error> for quiver_core::Error {
    fn from(e: Error) -> Self {
        quiver_core::Error::Store(e.to_string())
    }
}

/// The embedded online store.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
}

fn view_tree(view: &str) -> String {
    format!("fv/{view}")
}

fn watermark_key(view: &str) -> Vec<u8> {
    format!("watermark/{view}").into_bytes()
}

impl SledStore {
    /// Open (or create) the store in a folder.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore> {
        let path = path.as_ref().to_path_buf();
        let err = |source| Error::Sled {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new().path(&path).open().map_err(err)?;
        let meta = db.open_tree("meta").map_err(err)?;
        match meta.get(FORMAT_KEY).map_err(err)? {
            None => {
                meta.insert(FORMAT_KEY, &[STORE_FORMAT]).map_err(err)?;
                db.flush().map_err(err)?;
            }
            Some(v) if v.as_ref() == [STORE_FORMAT] => {}
            Some(v) => {
                return Err(Error::Format {
                    path,
                    found: v.first().copied().unwrap_or(0),
                });
            }
        }
        Ok(SledStore { path, db, meta })
    }

    fn err(&self) -> impl Fn(sled::Error) -> Error + '_ {
        move |source| Error::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn tree(&self, view: &str) -> Result<sled::Tree> {
        self.db.open_tree(view_tree(view)).map_err(self.err())
    }

    fn write_rows(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        watermark: Option<i64>,
    ) -> Result<()> {
        let tree = self.tree(view)?;
        match watermark {
            None => {
                let mut batch = sled::Batch::default();
                for (k, v) in rows {
                    batch.insert(k.as_slice(), v.as_slice());
                }
                tree.apply_batch(batch).map_err(self.err())?;
            }
            Some(w) => {
                let wk = watermark_key(view);
                (&tree, &self.meta)
                    .transaction(|(t, m)| {
                        for (k, v) in rows {
                            t.insert(k.as_slice(), v.as_slice())?;
                        }
                        m.insert(wk.as_slice(), &w.to_be_bytes())?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| match e {
                        sled::transaction::TransactionError::Storage(s) => self.err()(s),
                        sled::transaction::TransactionError::Abort(()) => {
                            self.err()(sled::Error::Unsupported("transaction aborted".into()))
                        }
                    })?;
            }
        }
        // Acknowledged means durable.
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
}

impl OnlineStore for SledStore {
    fn write(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        watermark: Option<i64>,
    ) -> quiver_core::Result<()> {
        Ok(self.write_rows(view, rows, watermark)?)
    }

    fn get(&self, view: &str, entity: &[u8]) -> quiver_core::Result<Option<Vec<u8>>> {
        let tree = self.tree(view)?;
        Ok(tree.get(entity).map_err(self.err())?.map(|v| v.to_vec()))
    }

    fn get_many(
        &self,
        view: &str,
        entities: &[Vec<u8>],
    ) -> quiver_core::Result<Vec<Option<Vec<u8>>>> {
        let tree = self.tree(view)?;
        entities
            .iter()
            .map(|e| Ok(tree.get(e).map_err(self.err())?.map(|v| v.to_vec())))
            .collect()
    }

    fn watermark(&self, view: &str) -> quiver_core::Result<Option<i64>> {
        let v = self.meta.get(watermark_key(view)).map_err(self.err())?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    fn clear(&self, view: &str) -> quiver_core::Result<()> {
        self.tree(view)?.clear().map_err(self.err())?;
        self.meta.remove(watermark_key(view)).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
}
