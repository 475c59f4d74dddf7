//! `kms.v1.Keys`.

use tonic::{Request, Response, Status};

use super::{
    auth_layer::caller,
    convert::{api_key, rate_limit, timestamp, verify_code},
};
use crate::{
    domain::{
        keys::{CreateKey, KeyService, UpdateKey},
        policy::VerifyOptions,
    },
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
        mut request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&mut request)?;
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
                    scopes: req.scopes,
                    metadata: req.metadata.into_iter().collect(),
                    rate_limit: req.rate_limit.map(rate_limit),
                    remaining: req.remaining,
                },
            )
            .await?;
        Ok(Response::new(api_key(created)))
    }

    async fn get_key(
        &self,
        mut request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&mut request)?;
        let key = self
            .service
            .get(&caller, &request.get_ref().service_name)
            .await?;
        Ok(Response::new(api_key(key)))
    }

    async fn list_keys(
        &self,
        mut request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = caller(&mut request)?;
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
        mut request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&mut request)?;
        let req = request.get_ref();
        let key = self
            .service
            .rotate(&caller, &req.service_name, req.grace_period_seconds)
            .await?;
        Ok(Response::new(api_key(key)))
    }

    async fn revoke_key(
        &self,
        mut request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&mut request)?;
        self.service
            .revoke(&caller, &request.get_ref().service_name)
            .await?;
        Ok(Response::new(()))
    }

    async fn verify_key(
        &self,
        mut request: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        let caller = caller(&mut request)?;
        let req = request.into_inner();
        let options = VerifyOptions {
            required_scopes: req.required_scopes,
            cost: req.cost,
        };
        let verified = self.service.verify(&caller, &req.api_key, &options).await?;
        self.metrics.verification(verified.valid());
        let mut response = pb::VerifyKeyResponse {
            valid: verified.valid(),
            code: verify_code(verified.code).into(),
            remaining: verified.remaining,
            rate_limit: verified.rate_limit.map(|s| pb::RateLimitStatus {
                limit: s.limit,
                remaining: s.remaining,
                reset_at: Some(timestamp(s.reset_at)),
            }),
            ..Default::default()
        };
        if let Some(key) = verified.key {
            response.service_name = key.service_name;
            response.expires_at = key.expires_at.map(timestamp);
            response.scopes = key.scopes.to_vec();
            response.metadata = key
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        Ok(Response::new(response))
    }

    async fn update_key(
        &self,
        mut request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&mut request)?;
        let req = request.into_inner();
        let update = UpdateKey {
            service_name: req.service_name,
            paths: req.update_mask.map(|m| m.paths).unwrap_or_default(),
            description: req.description,
            scopes: req.scopes,
            metadata: req.metadata.into_iter().collect(),
            enabled: req.enabled,
            rate_limit: req.rate_limit.map(rate_limit),
            remaining: req.remaining,
            ttl_seconds: req.ttl_seconds,
        };
        let key = self.service.update(&caller, update).await?;
        Ok(Response::new(api_key(key)))
    }
}
