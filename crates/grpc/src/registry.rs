//! `quiver.v1.RegistryService`: register, list, get, select and lineage over gRPC, so a
//! training job in any language can register its own models. Each call opens the registry
//! through [`RegistryAccess`].

use quiver_app::access::RegistryAccess;
use quiver_app::audit::Auditor;
use quiver_app::models::Registration;
use quiver_app::{Error, Result};
use quiver_registry::ModelVersion;
use quiver_registry::select::{Best, Limit};
use tonic::{Request, Response, Status};

use crate::GrpcError;
use crate::guard::{audited, caller};

use crate::proto::registry_service_server::RegistryService;
use crate::proto::{self, MetricValue, ModelVersionInfo};

/// The service over one repository's registry.
pub struct RegistrySvc {
    access: RegistryAccess,
    auditor: Auditor,
}

impl RegistrySvc {
    /// The service over `access` (shared with the training jobs), logging registrations to
    /// `auditor`.
    pub fn new(access: RegistryAccess, auditor: Auditor) -> Self {
        RegistrySvc { access, auditor }
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
        features: m.features.iter().map(|f| f.to_string()).collect(),
    }
}

fn required(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::Invalid(format!("{field}: required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl RegistryService for RegistrySvc {
    async fn register_model(
        &self,
        request: Request<proto::RegisterModelRequest>,
    ) -> std::result::Result<Response<ModelVersionInfo>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let registered = self
            .access
            .with(async |cat| {
                required("name", &r.name)?;
                required("dataset", &r.dataset)?;
                if r.artifact.is_empty() {
                    return Err(Error::Invalid(
                        "artifact: required (the model's bytes)".into(),
                    ));
                }
                let mut costs = Vec::new();
                for (k, v) in &r.costs {
                    if !v.is_finite() {
                        return Err(Error::Invalid(format!("costs[{k}]: must be finite")));
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
            .map_err(|e| Status::from(GrpcError::from(e)));
        let target = match &registered {
            Ok(m) => format!("{}@{}", m.name, m.version),
            Err(_) => r.name.clone(),
        };
        audited(
            &self.auditor,
            &who,
            "grpc",
            "RegistryService/RegisterModel",
            &target,
            &registered,
        );
        registered.map(Response::new)
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> std::result::Result<Response<proto::ListModelsResponse>, Status> {
        let name = request.into_inner().name;
        self.access
            .with(async |cat| {
                let models = quiver_app::models::list_models(cat, &name)?;
                Ok(proto::ListModelsResponse {
                    models: models.iter().map(info).collect(),
                })
            })
            .await
            .map(Response::new)
            .map_err(|e| Status::from(GrpcError::from(e)))
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> std::result::Result<Response<ModelVersionInfo>, Status> {
        let model = request.into_inner().model;
        self.access
            .with(async |cat| {
                required("model", &model)?;
                Ok(info(&cat.registry.model(&model)?))
            })
            .await
            .map(Response::new)
            .map_err(|e| Status::from(GrpcError::from(e)))
    }

    async fn select_best(
        &self,
        request: Request<proto::SelectBestRequest>,
    ) -> std::result::Result<Response<proto::SelectBestResponse>, Status> {
        let r = request.into_inner();
        self.access
            .with(async |cat| {
                required("metric", &r.metric)?;
                required("on", &r.on)?;
                let eval = quiver_app::models::eval_ref(cat, &r.on)?;
                let mut limits = Vec::new();
                for (cost, max) in &r.max {
                    if !max.is_finite() {
                        return Err(Error::Invalid(format!("max[{cost}]: must be finite")));
                    }
                    limits.push(Limit {
                        cost: cost.clone(),
                        max: *max,
                    });
                }
                limits.sort_by(|a, b| a.cost.cmp(&b.cost));
                let cands = quiver_app::models::candidates(cat, Some(&r.r#where)).await?;
                Ok(
                    match quiver_registry::select::best(
                        &cands, &r.metric, &eval, &limits, r.minimize,
                    ) {
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
            .map_err(|e| Status::from(GrpcError::from(e)))
    }

    async fn lineage(
        &self,
        request: Request<proto::LineageRequest>,
    ) -> std::result::Result<Response<proto::LineageResponse>, Status> {
        let r = request.into_inner();
        self.access
            .with(async |cat| {
                required("artifact", &r.artifact)?;
                let l = quiver_app::lineage::lineage(cat, &r.artifact, r.upstream, r.downstream)?;
                let edges = [(true, l.upstream), (false, l.downstream)]
                    .into_iter()
                    .flat_map(|(dir, edges)| {
                        edges
                            .into_iter()
                            .flatten()
                            .map(move |(depth, e)| proto::LineageEdge {
                                from: e.from.to_string(),
                                to: e.to.to_string(),
                                operation: e.op,
                                depth: depth as u32,
                                upstream: dir,
                            })
                    })
                    .collect();
                Ok(proto::LineageResponse { edges })
            })
            .await
            .map(Response::new)
            .map_err(|e| Status::from(GrpcError::from(e)))
    }
}
