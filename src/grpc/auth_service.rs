//! `kms.v1.Auth`.

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::convert::timestamp;
use crate::{
    domain::{
        Caller, Error as DomainError,
        auth::{AuthService, NewUser},
        token::TOKEN_TYPE,
    },
    proto::kms::v1::{self as pb, auth_server::Auth},
    telemetry::Metrics,
};

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
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        let user = self
            .service
            .register(
                caller.as_ref(),
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
        let req = request.into_inner();
        let result = self
            .service
            .login(&req.username, Zeroizing::new(req.password))
            .await;
        self.metrics.login(match &result {
            Ok(_) => "success",
            Err(DomainError::Unauthenticated(_)) => "failure",
            Err(DomainError::InvalidArgument { .. }) => "invalid",
            Err(_) => "error",
        });
        let issued = result?;
        self.metrics.token_issued("access");
        Ok(Response::new(pb::LoginResponse {
            access_token: issued.token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: issued.expires_in,
        }))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let token = request.into_inner().token;
        let response = match self.service.validate_token(&token) {
            Some(claims) => pb::ValidateTokenResponse {
                valid: true,
                subject: claims.sub,
                roles: claims.roles,
                expires_at: chrono::DateTime::from_timestamp(claims.exp, 0).map(timestamp),
            },
            None => pb::ValidateTokenResponse::default(),
        };
        Ok(Response::new(response))
    }
}
