//! Online serving as a server runs it: lookups, and pushes one at a time. The rules of
//! [`crate::online`] hold for every caller; what this adds is what a long-lived process needs
//! (the store kept open, pushes serialized), so every transport and the CLI share it.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use quiver_core::store::{KeyValue, OnlineStore};
use quiver_core::{FeatureRef, Repo};
use quiver_offline::EngineOptions;

use crate::catalog::Catalog;
use crate::online::{self, Value};
use crate::{Error, Result};

/// Which features a request asks for.
#[derive(Debug, Clone)]
pub enum Features {
    /// A feature service of quiver.yaml.
    Service(String),
    /// Feature references, `view:feature`.
    List(Vec<String>),
}

impl Features {
    /// The references, each checked against the repository.
    pub fn resolve(&self, repo: &Repo) -> Result<Vec<FeatureRef>> {
        Ok(match self {
            Features::Service(name) => repo.service(name)?,
            Features::List(refs) => repo.resolve_refs(refs)?,
        })
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Rows pushed.
    pub rows: usize,
    /// Entities of the pushed view whose values were written.
    pub entities: usize,
    /// The source's new version, when the rows were appended to its managed table too.
    pub appended: Option<quiver_registry::DatasetVersion>,
}

/// A repository's online store, served.
pub struct Serving {
    repo: Arc<Repo>,
    store: Arc<dyn OnlineStore>,
    /// Serializes this process's pushes: each reads the source's earlier online-only pushes,
    /// computes and writes; two at once would each write values without the other's rows.
    /// (Pushes from other processes sharing the store are caught by the store's push count.)
    writer: tokio::sync::Mutex<()>,
}

impl Serving {
    /// Serve `repo` from `store`.
    pub fn new(repo: Repo, store: Arc<dyn OnlineStore>) -> Self {
        quiver_offline::objects::configure(&repo.storage);
        Serving {
            repo: Arc::new(repo),
            store,
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// The repository served.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Values of `refs` for `entities` at `at` (default now): per entity, one value per
    /// reference in order.
    pub async fn lookup(
        &self,
        refs: &[FeatureRef],
        entities: &[Vec<(String, KeyValue)>],
        at: Option<i64>,
    ) -> Result<Vec<Vec<Value>>> {
        let at = at.unwrap_or_else(quiver_core::time::now_micros);
        online::get(&self.repo, self.store.as_ref(), refs, entities, at)
            .await
            .map_err(|e| match e {
                Error::Core(quiver_core::Error::Request(m)) => {
                    Error::Invalid(format!("entities: {m}"))
                }
                Error::Core(c)
                    if !c.is_request()
                        && !c.is_not_found()
                        && !matches!(c, quiver_core::Error::Unavailable(_)) =>
                {
                    Error::Internal(c.to_string())
                }
                other => other,
            })
    }

    /// The schema a push to `view` must give: its source's columns.
    pub async fn push_schema(&self, view: &str) -> Result<SchemaRef> {
        let def = self.repo.views.get(view).ok_or_else(|| {
            Error::NotFound(format!("feature_view: unknown feature view `{view}`"))
        })?;
        let ctx = quiver_offline::session(&EngineOptions::default())?;
        let source = &self.repo.sources[&def.source];
        let table =
            quiver_offline::source::source_table(&ctx, &self.repo.offline_store, source).await?;
        Ok(table.schema())
    }

    /// Push `rows` of `view`'s source, computed as of `at` (default now); with `to_offline`
    /// they are first appended to the source's managed table, recorded as coming from
    /// `origin` (a file name, or the transport's).
    pub async fn push(
        &self,
        view: &str,
        rows: RecordBatch,
        to_offline: bool,
        at: Option<i64>,
        origin: &str,
    ) -> Result<Pushed> {
        let repo = self.repo.as_ref();
        let def = repo.views.get(view).ok_or_else(|| {
            Error::NotFound(format!("feature_view: unknown feature view `{view}`"))
        })?;
        let opts = EngineOptions::default();
        let _one_push = self.writer.lock().await;
        let appended = match to_offline {
            false => None,
            true => {
                let cat = Catalog::open(repo.clone(), opts.clone())?;
                Some(
                    cat.append(
                        &def.source,
                        vec![(origin.to_string(), rows.schema(), vec![rows.clone()])],
                        quiver_registry::Operation::Ingest {
                            files: vec![origin.to_string()],
                        },
                    )
                    .await?,
                )
            }
        };
        let n = rows.num_rows();
        let pushed = online::push(
            repo,
            self.store.as_ref(),
            view,
            rows,
            to_offline,
            at.unwrap_or_else(quiver_core::time::now_micros),
            opts,
        )
        .await?;
        Ok(Pushed {
            rows: n,
            entities: pushed.entities,
            appended,
        })
    }
}
