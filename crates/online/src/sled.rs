//! The embedded store, on sled.
//!
//! [`SledStore`]: one sled tree per feature view, whose entries are *buckets*: the entities
//! whose key hashes to the same one of [`BUCKETS`] buckets, kept sorted by key in one value,
//! so a lookup is one point read and a binary search. sled's cost is per entry, not per byte,
//! so a million entities written as sixteen thousand buckets go in several times faster than
//! as a million entries (see `docs/adr/0002-online-store.md`). A `meta` tree holds the store's
//! format version, each view's materialization watermark and each source's push count.
//! Writes are atomic (a sled batch, or a transaction when the watermark moves with them) and
//! flushed before they return, so what was acknowledged survives a crash. Writes run on
//! tokio's blocking pool (a flush waits for the disk); reads run inline (they are served
//! from sled's page cache in microseconds).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use quiver_core::store::{OnlineStore, PushLog, ViewRows};
use sled::Transactional;

use crate::{Error, Result};

/// The layout version of the store itself (trees, buckets and meta keys), checked on open.
pub const STORE_FORMAT: u8 = 2;
/// Buckets per feature view (2¹⁴): about 60 entities per bucket at a million entities.
pub const BUCKETS: u32 = 1 << 14;
const FORMAT_KEY: &[u8] = b"format";

/// How long an open waits for another handle's file lock: long enough for a handle just
/// dropped by this process or a short-lived one (sled releases it from a background thread),
/// short enough that a lock held by a running server is reported promptly.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The embedded online store. Cloning gives another handle on the same open store.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    /// Writes read, merge and rewrite buckets: one writer at a time.
    writer: std::sync::Mutex<()>,
    /// sled has no snapshots: a reader of several buckets holds this shared while a writer
    /// holds it alone only to apply a write, so a read of many entities sees every write
    /// whole or not at all.
    visible: std::sync::RwLock<()>,
}

/// An (encoded entity key, value) pair.
type Row = (Vec<u8>, Vec<u8>);

/// The bucket of an encoded entity key (FNV-1a, top bits).
fn bucket_of(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the low bits up: FNV's top bits are weak for short keys.
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    (h >> (64 - BUCKETS.trailing_zeros())) as u32
}

/// A bucket value: `u32` entry count, then per entry (sorted by key) `u32` key length, `u32`
/// value length, key, value — all little-endian.
fn encode_bucket(entries: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// The entries of a bucket value, in key order; `None` when it is damaged.
fn decode_bucket(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let n = u32_at(0)?;
    let mut out = Vec::with_capacity(n);
    let mut at = 4;
    for _ in 0..n {
        let (kl, vl) = (u32_at(at)?, u32_at(at + 4)?);
        let k = bytes.get(at + 8..at + 8 + kl)?;
        let v = bytes.get(at + 8 + kl..at + 8 + kl + vl)?;
        out.push((k, v));
        at += 8 + kl + vl;
    }
    (at == bytes.len()).then_some(out)
}

fn view_tree(view: &str) -> String {
    format!("fv/{view}")
}

/// Rows pushed to a source for the online store alone, keyed by arrival (big-endian ids).
fn pushed_tree(source: &str) -> String {
    format!("pushed/{source}")
}

fn watermark_key(view: &str) -> Vec<u8> {
    format!("watermark/{view}").into_bytes()
}

fn pushes_key(source: &str) -> Vec<u8> {
    format!("pushes/{source}").into_bytes()
}

impl SledStore {
    /// Open (or create) the store in a folder.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore> {
        let path = path.as_ref().to_path_buf();
        let err = |source| Error::Sled {
            path: path.clone(),
            source,
        };
        // sled releases its file lock from a background thread after a handle is dropped;
        // a reopen right after (or another short-lived process) waits for it, boundedly.
        let started = std::time::Instant::now();
        let db = loop {
            match sled::Config::new().path(&path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("lock") => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(Error::Locked { path });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(err(e)),
            }
        };
        let meta = db.open_tree("meta").map_err(err)?;
        match meta.get(FORMAT_KEY).map_err(err)? {
            None => {
                meta.insert(FORMAT_KEY, &[STORE_FORMAT]).map_err(err)?;
                db.flush().map_err(err)?;
            }
            Some(v) if v.as_ref() == [STORE_FORMAT] => {}
            Some(v) => {
                return Err(Error::Format {
                    store: path.display().to_string(),
                    found: v.first().copied().unwrap_or(0).to_string(),
                    expected: STORE_FORMAT.to_string(),
                    remedy: "delete the folder and materialize again",
                });
            }
        }
        Ok(SledStore {
            inner: Arc::new(Inner {
                path,
                db,
                meta,
                writer: std::sync::Mutex::new(()),
                visible: std::sync::RwLock::new(()),
            }),
        })
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run a write on the blocking pool: sled's flush waits for the disk.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> quiver_core::Result<T> {
        let inner = self.inner.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt
                .spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| quiver_core::Error::Store(format!("online store write: {e}")))?
                .map_err(Into::into),
            // Outside a runtime nothing else waits on this thread.
            Err(_) => f(&inner).map_err(Into::into),
        }
    }
}

impl Inner {
    fn err(&self) -> impl Fn(sled::Error) -> Error + '_ {
        move |source| Error::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn tree(&self, view: &str) -> Result<sled::Tree> {
        self.db.open_tree(view_tree(view)).map_err(self.err())
    }

    fn damaged(&self, view: &str, bucket: u32) -> Error {
        Error::Damaged {
            path: self.path.clone(),
            view: view.to_string(),
            bucket,
        }
    }

    /// The value of one entity in a bucket read from the tree.
    fn find(&self, view: &str, tree: &sled::Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let b = bucket_of(key);
        let Some(bytes) = tree.get(b.to_be_bytes()).map_err(self.err())? else {
            return Ok(None);
        };
        let entries = decode_bucket(&bytes).ok_or_else(|| self.damaged(view, b))?;
        Ok(entries
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| entries[i].1.to_vec()))
    }

    /// The bucket entries that write `rows` into `tree`: each touched bucket merged with what
    /// it holds (later rows win). The caller holds the writer lock.
    fn merged_buckets(
        &self,
        view: &str,
        tree: &sled::Tree,
        rows: &[Row],
    ) -> Result<Vec<([u8; 4], Vec<u8>)>> {
        let mut buckets: std::collections::BTreeMap<u32, Vec<&Row>> = Default::default();
        for r in rows {
            buckets.entry(bucket_of(&r.0)).or_default().push(r);
        }
        let mut batch = Vec::with_capacity(buckets.len());
        for (b, new) in buckets {
            let mut entries: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
            if let Some(old) = tree.get(b.to_be_bytes()).map_err(self.err())? {
                for (k, v) in decode_bucket(&old).ok_or_else(|| self.damaged(view, b))? {
                    entries.insert(k.to_vec(), v.to_vec());
                }
            }
            for (k, v) in new {
                entries.insert(k.clone(), v.clone());
            }
            batch.push((b.to_be_bytes(), encode_bucket(&entries)));
        }
        Ok(batch)
    }

    fn write_rows(&self, view: &str, rows: &[Row], watermark: Option<i64>) -> Result<()> {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tree = self.tree(view)?;
        let batch = self.merged_buckets(view, &tree, rows)?;
        let _apply = self.visible.write().unwrap_or_else(|e| e.into_inner());
        match watermark {
            None => {
                let mut b = sled::Batch::default();
                for (k, v) in &batch {
                    b.insert(&k[..], v.as_slice());
                }
                tree.apply_batch(b).map_err(self.err())?;
            }
            Some(w) => {
                let wk = watermark_key(view);
                (&tree, &self.meta)
                    .transaction(|(t, m)| {
                        for (k, v) in &batch {
                            t.insert(&k[..], v.as_slice())?;
                        }
                        m.insert(wk.as_slice(), &w.to_be_bytes())?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| self.aborted(e))?;
            }
        }
        drop(_apply);
        // Acknowledged means durable.
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    fn aborted(&self, e: sled::transaction::TransactionError<()>) -> Error {
        match e {
            sled::transaction::TransactionError::Storage(s) => self.err()(s),
            sled::transaction::TransactionError::Abort(()) => {
                self.err()(sled::Error::Unsupported("transaction aborted".into()))
            }
        }
    }

    fn push_rows(
        &self,
        source: &str,
        pushed: Option<&[u8]>,
        views: &[ViewRows],
        after: u64,
    ) -> Result<()> {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let count = self.push_count(source)?;
        if count != after {
            return Err(Error::Conflict {
                store: self.path.display().to_string(),
                pushed_to: source.to_string(),
            });
        }
        // The log first, then one tree per view: all in one transaction with the count.
        let mut trees = vec![
            self.meta.clone(),
            self.db.open_tree(pushed_tree(source)).map_err(self.err())?,
        ];
        let mut writes = Vec::with_capacity(views.len());
        for (view, rows) in views {
            let tree = self.tree(view)?;
            writes.push(self.merged_buckets(view, &tree, rows)?);
            trees.push(tree);
        }
        // Arrival order: ids only grow, across restarts too.
        let id = self.db.generate_id().map_err(self.err())?.to_be_bytes();
        let key = pushes_key(source);
        let _apply = self.visible.write().unwrap_or_else(|e| e.into_inner());
        trees
            .as_slice()
            .transaction(|t| {
                t[0].insert(key.as_slice(), &(after + 1).to_be_bytes())?;
                if let Some(bytes) = pushed {
                    t[1].insert(&id[..], bytes)?;
                }
                for (tree, batch) in t[2..].iter().zip(&writes) {
                    for (k, v) in batch {
                        tree.insert(&k[..], v.as_slice())?;
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.aborted(e))?;
        drop(_apply);
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    fn push_count(&self, source: &str) -> Result<u64> {
        let v = self.meta.get(pushes_key(source)).map_err(self.err())?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn get_many(&self, view: &str, entities: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let tree = self.tree(view)?;
        let _snapshot = self.visible.read().unwrap_or_else(|e| e.into_inner());
        entities.iter().map(|e| self.find(view, &tree, e)).collect()
    }

    fn clear(&self, view: &str) -> Result<()> {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _apply = self.visible.write().unwrap_or_else(|e| e.into_inner());
        self.tree(view)?.clear().map_err(self.err())?;
        self.meta.remove(watermark_key(view)).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl OnlineStore for SledStore {
    async fn write(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        watermark: Option<i64>,
    ) -> quiver_core::Result<()> {
        let (view, rows) = (view.to_string(), rows.to_vec());
        self.blocking(move |s| s.write_rows(&view, &rows, watermark))
            .await
    }

    async fn get(&self, view: &str, entity: &[u8]) -> quiver_core::Result<Option<Vec<u8>>> {
        let tree = self.inner.tree(view)?;
        Ok(self.inner.find(view, &tree, entity)?)
    }

    async fn get_many(
        &self,
        view: &str,
        entities: &[Vec<u8>],
    ) -> quiver_core::Result<Vec<Option<Vec<u8>>>> {
        Ok(self.inner.get_many(view, entities)?)
    }

    async fn watermark(&self, view: &str) -> quiver_core::Result<Option<i64>> {
        let s = &self.inner;
        let v = s.meta.get(watermark_key(view)).map_err(s.err())?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    async fn pushed(&self, source: &str) -> quiver_core::Result<PushLog> {
        let s = &self.inner;
        // The count before the log, without the writer lock (a writer holds it through a
        // flush, which must not stall a runtime thread): a push that lands in between makes
        // the log newer than the count, so a push computed from them is refused and computed
        // again — never stored against a log that misses a batch.
        let pushes = s.push_count(source)?;
        let tree = s.db.open_tree(pushed_tree(source)).map_err(s.err())?;
        let batches = tree
            .iter()
            .values()
            .map(|v| Ok(v.map_err(s.err())?.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        Ok(PushLog { batches, pushes })
    }

    async fn push(
        &self,
        source: &str,
        batch: Option<&[u8]>,
        views: &[ViewRows],
        after: u64,
    ) -> quiver_core::Result<()> {
        let (source, batch, views) = (
            source.to_string(),
            batch.map(<[u8]>::to_vec),
            views.to_vec(),
        );
        self.blocking(move |s| s.push_rows(&source, batch.as_deref(), &views, after))
            .await
    }

    fn order_for_write(&self, rows: &mut [(Vec<u8>, Vec<u8>)]) {
        // Consecutive chunks then cover disjoint bucket ranges: each bucket is rewritten once.
        rows.sort_by_cached_key(|(k, _)| bucket_of(k));
    }

    async fn clear(&self, view: &str) -> quiver_core::Result<()> {
        let view = view.to_string();
        self.blocking(move |s| s.clear(&view)).await
    }

    async fn size_bytes(&self) -> quiver_core::Result<Option<u64>> {
        // sled sums its files' lengths: a directory listing, off the runtime's threads.
        self.blocking(|s| Ok(Some(s.db.size_on_disk().map_err(s.err())?)))
            .await
    }
}
