//! `kms.v1.Keys`.

use tonic::{Request, Response, Status};

use super::{
    auth_layer::caller,
    convert::{api_key, timestamp},
};
use crate::{
    domain::keys::{CreateKey, KeyService},
    proto::kms::v1::{self as pb, keys_server::Keys},
    telemetry::Metrics,
};

pub struct KeysApi {
    service: KeyService,
    metrics: Metrics,
}

impl KeysApi {
    pub fn new(service: KeyService, metrics: Metrics) -> Self {
        Self { service, metrics }
    }
}

#[tonic::async_trait]
impl Keys for KeysApi {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let created = self
            .service
            .create(
                &caller,
                CreateKey {
                    service_name: req.service_name,
                    api_key: req.api_key,
                    description: req.description,
                    ttl_seconds: req.ttl_seconds,
                },
            )
            .await?;
        Ok(Response::new(api_key(created)))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&request)?;
        let key = self
            .service
            .get(&caller, &request.get_ref().service_name)
            .await?;
        Ok(Response::new(api_key(key)))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = self
            .service
            .list(&caller, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: page.keys.into_iter().map(api_key).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let key = self
            .service
            .rotate(&caller, &req.service_name, req.grace_period_seconds)
            .await?;
        Ok(Response::new(api_key(key)))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        self.service
            .revoke(&caller, &request.get_ref().service_name)
            .await?;
        Ok(Response::new(()))
    }

    async fn verify_key(
        &self,
        request: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        let caller = caller(&request)?;
        let verified = self
            .service
            .verify(&caller, &request.get_ref().api_key)
            .await?;
        self.metrics.verification(verified.is_some());
        let response = match verified {
            Some(found) => pb::VerifyKeyResponse {
                valid: true,
                service_name: found.service_name,
                expires_at: found.expires_at.map(timestamp),
            },
            None => pb::VerifyKeyResponse::default(),
        };
        Ok(Response::new(response))
    }
}
