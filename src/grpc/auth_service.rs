//! `kms.v1.Auth`.

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{
    auth_layer::{caller, optional_caller},
    convert::{self, timestamp},
};
use crate::{
    domain::{
        Error as DomainError,
        auth::{AuthService, LoginTokens},
        token::TOKEN_TYPE,
        users::NewUser,
    },
    proto::kms::v1::{self as pb, auth_server::Auth},
    telemetry::Metrics,
};

fn login_response(issued: LoginTokens) -> pb::LoginResponse {
    pb::LoginResponse {
        access_token: issued.access.token,
        token_type: TOKEN_TYPE.to_owned(),
        expires_in: issued.access.expires_in,
        refresh_token: issued.refresh_token,
        refresh_expires_in: issued.refresh_expires_in,
    }
}

pub struct AuthApi {
    service: AuthService,
    metrics: Metrics,
}

impl AuthApi {
    pub fn new(service: AuthService, metrics: Metrics) -> Self {
        Self { service, metrics }
    }
}

#[tonic::async_trait]
impl Auth for AuthApi {
    async fn register(
        &self,
        mut request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = optional_caller(&mut request);
        let req = request.into_inner();
        let user = self
            .service
            .register(
                caller.as_deref(),
                NewUser {
                    username: req.username,
                    password: Zeroizing::new(req.password),
                    roles: req.roles,
                },
            )
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            username: user.username,
            roles: user.roles,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        // The TCP peer, never a forwarded-for header: any client could forge that to
        // escape its address's throttle.
        let client = super::client_ip(&request);
        let req = request.into_inner();
        let result = self
            .service
            .login(&req.username, Zeroizing::new(req.password), client)
            .await;
        self.metrics.login_answered(&result, true);
        Ok(Response::new(login_response(result?)))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let token = request.into_inner().token;
        let response = match self.service.validate_token(&token).await? {
            Some(claims) => pb::ValidateTokenResponse {
                valid: true,
                subject: claims.sub.clone(),
                roles: claims.roles.clone(),
                expires_at: chrono::DateTime::from_timestamp(claims.exp, 0).map(timestamp),
            },
            None => pb::ValidateTokenResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let issued = self
            .service
            .refresh(&request.get_ref().refresh_token)
            .await?;
        self.metrics.tokens_renewed();
        Ok(Response::new(login_response(issued)))
    }

    async fn logout(
        &self,
        mut request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = caller(&mut request)?;
        self.service.logout(&caller).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let set = self.service.jwks();
        let jwks_json = serde_json::to_string(&set)
            .map_err(|e| Status::from(DomainError::Internal(format!("JWKS encoding: {e}"))))?;
        let keys = set.keys.iter().map(convert::jwk).collect();
        Ok(Response::new(pb::GetJwksResponse { keys, jwks_json }))
    }

    async fn rotate_signing_key(
        &self,
        mut request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let caller = caller(&mut request)?;
        let kid = self.service.rotate_signing_key(&caller).await?;
        Ok(Response::new(pb::RotateSigningKeyResponse { kid }))
    }
}
