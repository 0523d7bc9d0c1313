//! `quiver.v1.RegistryService`: register, list, get, select and lineage over gRPC, so a
//! training job in any language can register its own models.
//!
//! The registry is a sled database that one process may hold at a time, and the CLI uses it
//! too; so the service opens it per call (serialized in this process) and releases it at once,
//! rather than holding it for the server's lifetime.

use std::sync::Arc;

use quiver_core::Repo;
use quiver_offline::EngineOptions;
use quiver_registry::ModelVersion;
use quiver_registry::select::{Best, Limit};
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::models::Registration;
use crate::proto::registry_service_server::RegistryService;
use crate::proto::{self, MetricValue, ModelVersionInfo};
use crate::{Error, Result};

/// The service over one repository's registry.
pub struct Registry {
    repo: Arc<Repo>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Registry {
    /// `lock` serializes every use of the registry in this process (training jobs too).
    pub fn new(repo: Repo, lock: Arc<tokio::sync::Mutex<()>>) -> Self {
        Registry {
            repo: Arc::new(repo),
            lock,
        }
    }

    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Catalog) -> Result<T>,
    ) -> std::result::Result<T, Status> {
        let _held = self.lock.lock().await;
        let repo = self.repo.as_ref().clone();
        let cat =
            tokio::task::spawn_blocking(move || Catalog::open(repo, EngineOptions::default()))
                .await
                .map_err(|e| Status::from(Error::Internal(e.to_string())))?
                .map_err(Status::from)?;
        f(&cat).await.map_err(Status::from)
    }
}

fn info(m: &ModelVersion) -> ModelVersionInfo {
    ModelVersionInfo {
        name: m.name.clone(),
        version: m.version,
        artifact_hash: m.artifact.hash.to_string(),
        artifact_bytes: m.artifact.bytes,
        dataset: m.dataset.to_string(),
        params: m.params.clone().into_iter().collect(),
        metrics: m
            .metrics
            .iter()
            .map(|x| MetricValue {
                name: x.name.clone(),
                eval_dataset: x.eval.to_string(),
                value: x.value,
            })
            .collect(),
        costs: m.costs.clone().into_iter().collect(),
        parent: m.parent.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        tags: m.tags.clone().into_iter().collect(),
        created_micros: m.created_micros,
        features: m
            .features
            .iter()
            .map(|f| format!("{}@{}:{}", f.view, f.view_version, f.feature))
            .collect(),
    }
}

fn required(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::InvalidArgument(format!("{field}: required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl RegistryService for Registry {
    async fn register_model(
        &self,
        request: Request<proto::RegisterModelRequest>,
    ) -> std::result::Result<Response<ModelVersionInfo>, Status> {
        let r = request.into_inner();
        self.with(async |cat| {
            required("name", &r.name)?;
            required("dataset", &r.dataset)?;
            if r.artifact.is_empty() {
                return Err(Error::InvalidArgument(
                    "artifact: required (the model's bytes)".into(),
                ));
            }
            let mut costs = Vec::new();
            for (k, v) in &r.costs {
                if !v.is_finite() {
                    return Err(Error::InvalidArgument(format!(
                        "costs[{k}]: must be finite"
                    )));
                }
                costs.push((k.clone(), *v));
            }
            let reg = Registration {
                name: r.name.clone(),
                dataset: r.dataset.clone(),
                params: r.params.clone().into_iter().collect(),
                metrics: r
                    .metrics
                    .iter()
                    .map(|m| (m.name.clone(), m.eval_dataset.clone(), m.value))
                    .collect(),
                costs,
                parent: r.parent.clone(),
                seed: r.seed,
                tags: r.tags.clone().into_iter().collect(),
                code: r
                    .code_commit
                    .clone()
                    .map(|commit| quiver_registry::CodeVersion {
                        commit,
                        dirty: r.code_dirty,
                    }),
                ..Default::default()
            };
            let name = if r.artifact_name.is_empty() {
                "grpc".to_string()
            } else {
                r.artifact_name.clone()
            };
            Ok(info(&cat.register_bytes(&reg, &r.artifact, &name).await?))
        })
        .await
        .map(Response::new)
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> std::result::Result<Response<proto::ListModelsResponse>, Status> {
        let name = request.into_inner().name;
        self.with(async |cat| {
            let models = if name.is_empty() {
                let mut v = Vec::new();
                for n in cat.registry.model_names()? {
                    v.push(cat.registry.model(&n)?);
                }
                v
            } else {
                let all = cat.registry.model_versions(&name)?;
                if all.is_empty() {
                    cat.registry.model(&name)?;
                }
                all
            };
            Ok(proto::ListModelsResponse {
                models: models.iter().map(info).collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> std::result::Result<Response<ModelVersionInfo>, Status> {
        let model = request.into_inner().model;
        self.with(async |cat| {
            required("model", &model)?;
            Ok(info(&cat.registry.model(&model)?))
        })
        .await
        .map(Response::new)
    }

    async fn select_best(
        &self,
        request: Request<proto::SelectBestRequest>,
    ) -> std::result::Result<Response<proto::SelectBestResponse>, Status> {
        let r = request.into_inner();
        self.with(async |cat| {
            required("metric", &r.metric)?;
            required("on", &r.on)?;
            let (eval, v) = quiver_registry::parse_ref(&r.on)?;
            let eval = cat.registry.dataset_version(&eval, v)?.reference();
            let mut limits = Vec::new();
            for (cost, max) in &r.max {
                if !max.is_finite() {
                    return Err(Error::InvalidArgument(format!(
                        "max[{cost}]: must be finite"
                    )));
                }
                limits.push(Limit {
                    cost: cost.clone(),
                    max: *max,
                });
            }
            limits.sort_by(|a, b| a.cost.cmp(&b.cost));
            let all = cat.registry.all_model_versions()?;
            let cands: Vec<ModelVersion> = if r.r#where.trim().is_empty() {
                all
            } else {
                let keep = crate::sql::filter_models(cat, &r.r#where).await?;
                all.into_iter()
                    .filter(|m| keep.contains(&(m.name.clone(), m.version)))
                    .collect()
            };
            Ok(
                match quiver_registry::select::best(&cands, &r.metric, &eval, &limits, r.minimize) {
                    Best::Found { model, metric } => {
                        let m = cat.registry.model(&model.to_string())?;
                        proto::SelectBestResponse {
                            found: true,
                            model: Some(info(&m)),
                            metric,
                            ..Default::default()
                        }
                    }
                    Best::NoneFits { closest, .. } => {
                        let (closest, violations) =
                            closest.map(|(r, v)| (r.to_string(), v)).unwrap_or_default();
                        proto::SelectBestResponse {
                            found: false,
                            closest,
                            violations,
                            ..Default::default()
                        }
                    }
                },
            )
        })
        .await
        .map(Response::new)
    }

    async fn lineage(
        &self,
        request: Request<proto::LineageRequest>,
    ) -> std::result::Result<Response<proto::LineageResponse>, Status> {
        let r = request.into_inner();
        self.with(async |cat| {
            required("artifact", &r.artifact)?;
            let start = cat.artifact(&r.artifact)?;
            let (up, down) = match (r.upstream, r.downstream) {
                (false, false) => (true, true),
                x => x,
            };
            let mut edges = Vec::new();
            for (dir, on) in [(true, up), (false, down)] {
                if !on {
                    continue;
                }
                for (depth, e) in cat.registry.walk(&start, dir)? {
                    edges.push(proto::LineageEdge {
                        from: e.from.to_string(),
                        to: e.to.to_string(),
                        operation: e.op,
                        depth: depth as u32,
                        upstream: dir,
                    });
                }
            }
            Ok(proto::LineageResponse { edges })
        })
        .await
        .map(Response::new)
    }
}
