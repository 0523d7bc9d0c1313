//! The registry as a server uses it. The registry is a sled database that one process may
//! hold at a time, and the CLI uses it too; so a server opens it per call (serialized in its
//! process, training jobs included) and releases it at once, rather than holding it for its
//! lifetime.

use std::sync::Arc;

use quiver_core::Repo;
use quiver_offline::EngineOptions;

use crate::catalog::Catalog;
use crate::{Error, Result};

/// Serialized access to one repository's registry.
#[derive(Clone)]
pub struct RegistryAccess {
    repo: Arc<Repo>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl RegistryAccess {
    /// Access to `repo`'s registry, one call at a time.
    pub fn new(repo: Repo) -> Self {
        RegistryAccess {
            repo: Arc::new(repo),
            lock: Default::default(),
        }
    }

    /// The lock every use of the registry in this process holds (give it to
    /// [`crate::jobs::Jobs`]).
    pub fn lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.lock)
    }

    /// The tokens recorded in the registry (for a server's [`crate::auth::Tokens`]); opens
    /// the registry alone, not a catalog.
    pub async fn tokens(&self) -> Result<Vec<quiver_registry::TokenRecord>> {
        let _held = self.lock.lock().await;
        let path = self.repo.registry.clone();
        tokio::task::spawn_blocking(move || Ok(quiver_registry::Registry::open(&path)?.tokens()?))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Run `f` with the registry open, holding the lock.
    pub async fn with<T>(&self, f: impl AsyncFnOnce(&Catalog) -> Result<T>) -> Result<T> {
        let _held = self.lock.lock().await;
        let repo = self.repo.as_ref().clone();
        let cat =
            tokio::task::spawn_blocking(move || Catalog::open(repo, EngineOptions::default()))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
        f(&cat).await
    }
}
