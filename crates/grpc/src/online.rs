//! `quiver.v1.OnlineService`: lookups and pushes, over [`Serving`].

use std::sync::Arc;

use quiver_app::serving::Serving;
use tonic::{Request, Response, Status};

use crate::GrpcError;
use crate::convert;
use crate::guard::{audited, caller};
use crate::proto::{self, online_service_server::OnlineService};

/// The service over a served repository.
pub struct OnlineSvc {
    serving: Arc<Serving>,
}

impl OnlineSvc {
    /// The service over `serving`.
    pub fn new(serving: Arc<Serving>) -> Self {
        OnlineSvc { serving }
    }

    async fn lookup(
        &self,
        req: proto::GetOnlineFeaturesRequest,
    ) -> Result<proto::GetOnlineFeaturesResponse, GrpcError> {
        let refs = convert::features_of(req.kind)?.resolve(self.serving.repo())?;
        let entities = convert::entity_rows(&req.entities)?;
        let values = self.serving.lookup(&refs, &entities, req.at_micros).await?;
        let names = quiver_app::serving::feature_names(&refs, req.full_feature_names);
        let results = (0..refs.len())
            .map(|j| proto::FeatureVector {
                values: values
                    .iter()
                    .map(|row| convert::to_value(&row[j].value))
                    .collect(),
                statuses: values
                    .iter()
                    .map(|row| convert::status(row[j].status) as i32)
                    .collect(),
                event_timestamps_micros: values
                    .iter()
                    .map(|row| row[j].event_time.unwrap_or(0))
                    .collect(),
            })
            .collect();
        Ok(proto::GetOnlineFeaturesResponse {
            metadata: Some(proto::GetOnlineFeaturesResponseMetadata {
                feature_names: Some(proto::FeatureNames { val: names }),
            }),
            results,
        })
    }

    async fn push_rows(&self, req: proto::PushRequest) -> Result<proto::PushResponse, GrpcError> {
        let schema = self.serving.push_schema(&req.feature_view).await?;
        let batch = convert::push_batch(&schema, &req.columns)?;
        let origin = format!("push to {}", req.feature_view);
        let pushed = self
            .serving
            .push(
                &req.feature_view,
                batch,
                req.to_offline,
                req.at_micros,
                &origin,
            )
            .await?;
        Ok(proto::PushResponse {
            rows: pushed.rows as u64,
            entities: pushed.entities as u64,
        })
    }
}

#[tonic::async_trait]
impl OnlineService for OnlineSvc {
    async fn get_online_features(
        &self,
        request: Request<proto::GetOnlineFeaturesRequest>,
    ) -> Result<Response<proto::GetOnlineFeaturesResponse>, Status> {
        Ok(Response::new(self.lookup(request.into_inner()).await?))
    }

    async fn push(
        &self,
        request: Request<proto::PushRequest>,
    ) -> Result<Response<proto::PushResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let view = req.feature_view.clone();
        let pushed = self.push_rows(req).await.map_err(Status::from);
        audited(
            self.serving.auditor(),
            &who,
            "grpc",
            "OnlineService/Push",
            &view,
            &pushed,
        );
        Ok(Response::new(pushed?))
    }
}
