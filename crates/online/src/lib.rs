//! Quiver's online stores: the latest feature values per (feature view, entity), behind
//! [`quiver_core::store::OnlineStore`].
//!
//! - [`SledStore`], embedded (the default): one process opens it; see [`sled`](mod@sled).
//! - [`RedisStore`], shared: a Redis server or a Redis Cluster that any number of `quiver
//!   serve` replicas and materialization jobs use at once; see [`redis`](mod@redis) and
//!   `docs/adr/0007-shared-online-store.md`.
//!
//! [`open`] picks the one `quiver.yaml` names.
//!
//! ```
//! use quiver_core::store::{encode_entity_key, KeyValue, OnlineStore};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = quiver_online::SledStore::open(dir.path()).unwrap();
//! let user = encode_entity_key(&[KeyValue::Int(42)]);
//! store.write("user_profile", &[(user.clone(), b"\x01...".to_vec())], Some(1_000)).await.unwrap();
//! assert_eq!(store.get("user_profile", &user).await.unwrap().as_deref(), Some(&b"\x01..."[..]));
//! assert_eq!(store.watermark("user_profile").await.unwrap(), Some(1_000));
//! # });
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use quiver_core::config::OnlineStoreConfig;
use quiver_core::store::OnlineStore;

pub mod redis;
pub mod sled;
#[cfg(feature = "test-support")]
pub mod testing;

pub use crate::redis::RedisStore;
pub use crate::sled::{BUCKETS, STORE_FORMAT, SledStore};

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in an online store, each naming the store (a folder or server
/// addresses, never a password).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled itself failed (I/O, corruption or an aborted transaction).
    #[error("online store {}: {source}", path.display())]
    Sled {
        /// The store's folder.
        path: PathBuf,
        /// The underlying sled error.
        source: ::sled::Error,
    },
    /// Another process has the store open: sled lets one process at a time hold it.
    #[error("online store {}: another process holds it open (a running `quiver serve`?); stop that process, ask the server instead with --addr HOST:PORT, or share a Redis online store between processes", path.display())]
    Locked {
        /// The store's folder.
        path: PathBuf,
    },
    /// The store holds data of another layout version than this build writes.
    #[error(
        "online store {store}: format version {found} is not supported (this build reads {expected}); {remedy}"
    )]
    Format {
        /// The store's folder or server.
        store: String,
        /// The format version recorded in the store.
        found: String,
        /// The version this build reads.
        expected: String,
        /// What the operator can do.
        remedy: &'static str,
    },
    /// A bucket value could not be decoded, so its entities cannot be read.
    #[error("online store {}: bucket {bucket} of view `{view}` is damaged", path.display())]
    Damaged {
        /// The store's folder.
        path: PathBuf,
        /// The feature view whose tree holds the bucket.
        view: String,
        /// The number of the damaged bucket.
        bucket: u32,
    },
    /// A push was computed against a source's pushes that have changed since.
    #[error(
        "online store {store}: another push to source `{pushed_to}` was stored while this one was computed"
    )]
    Conflict {
        /// The store's folder or server.
        store: String,
        /// The source pushed to.
        pushed_to: String,
    },
    /// The Redis server (or cluster) cannot be reached now; lookups and writes fail until it
    /// is back, then recover without a restart.
    #[error("online store {store}: unavailable: {message}")]
    Unavailable {
        /// The server addresses.
        store: String,
        /// What failed (connection refused, timed out, cluster down, ...).
        message: String,
    },
    /// Redis answered with an error, or the configuration cannot work.
    #[error("online store {store}: {message}")]
    Redis {
        /// The server addresses.
        store: String,
        /// Redis's error, or what is wrong.
        message: String,
    },
}

impl From<Error> for quiver_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable { .. } => quiver_core::Error::Unavailable(e.to_string()),
            Error::Conflict { .. } => quiver_core::Error::Conflict(e.to_string()),
            e => quiver_core::Error::Store(e.to_string()),
        }
    }
}

/// Open the online store `repo`'s `quiver.yaml` names: a sled folder, a Redis server or a
/// Redis Cluster. A shared store is reached before this returns, so a wrong address fails
/// here, naming it.
pub async fn open(repo: &quiver_core::Repo) -> Result<Arc<dyn OnlineStore>> {
    Ok(match &repo.online_store {
        OnlineStoreConfig::Sled { path } => Arc::new(SledStore::open(path)?),
        OnlineStoreConfig::Redis { .. } | OnlineStoreConfig::RedisCluster { .. } => Arc::new(
            RedisStore::open(&repo.online_store, crate::redis::Layout::of_repo(repo)).await?,
        ),
    })
}
