//! The REST API of the original HTTP key service, for its clients to keep working
//! unchanged: the same paths, JSON fields and status codes. Thin handlers over the
//! same domain services the gRPC API uses, so every rule applies alike to both.

use std::time::Instant;

use axum::{
    Extension, Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, Span, field::Empty};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::{
    HttpState,
    error::{ApiError, ErrorBody},
    extract::{Authenticated, JsonBody, MaybeAuthenticated, MaybeJsonBody, ServiceName, required},
};
use crate::{
    domain::audit::{self, RequestMeta},
    domain::{
        Error,
        keys::{ApiKeyView, CreateKey},
        users::NewUser,
    },
    net::{ClientAddr, request_id},
    telemetry::traces,
};

/// The original service's wording, which its clients compare.
const REGISTERED: &str = "User registered successfully.";
const USERNAME_TAKEN: &str = "Username already registered.";
const BAD_LOGIN: &str = "Incorrect username or password.";
/// OAuth2's token type, lower-case as the original service sent it.
const TOKEN_TYPE: &str = "bearer";

pub fn router(max_request_bytes: usize) -> Router<HttpState> {
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/keys", post(create_key))
        .route("/keys/{service_name}", get(get_key).delete(delete_key))
        .route("/keys/{service_name}/rotate", post(rotate_key))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(middleware::from_fn(log_request))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(required = true, value_type = String, example = "alice")]
    username: Option<String>,
    /// At least KMS_PASSWORD_MIN_LENGTH (12 by default) bytes.
    #[schema(required = true, value_type = String, format = Password)]
    password: Option<String>,
    /// Comma-separated roles, e.g. `"admin,user"`. Missing or empty means `user`;
    /// anything else needs an admin bearer token.
    #[schema(required = false, value_type = String, example = "user")]
    roles: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(required = true, value_type = String, example = "alice")]
    username: Option<String>,
    #[schema(required = true, value_type = String, format = Password)]
    password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateKeyRequest {
    #[schema(required = true, value_type = String, example = "billing")]
    service_name: Option<String>,
    /// An existing secret to import (32..256 printable ASCII characters, no spaces).
    /// Left out, a new key is generated.
    #[schema(required = false, value_type = String)]
    api_key: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RotateRequest {
    /// How long the previous secret keeps verifying, 0 (the default) to 2592000.
    #[schema(required = false, value_type = i64, minimum = 0, maximum = 2_592_000)]
    grace_period_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT; send it as `Authorization: Bearer <access_token>`, on this API or on gRPC.
    access_token: String,
    #[schema(example = "bearer")]
    token_type: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    service_name: String,
    api_key: String,
}

impl From<ApiKeyView> for KeyResponse {
    fn from(view: ApiKeyView) -> Self {
        Self {
            service_name: view.service_name,
            api_key: view.api_key,
        }
    }
}

/// Register a user.
#[utoipa::path(
    post, path = "/register", tag = "auth",
    request_body = RegisterRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = Message),
        (status = 400, description = "Username already registered.", body = ErrorBody),
        (status = 401, description = "A bearer token was sent and is invalid", body = ErrorBody),
        (status = 403, description = "Roles other than `user` asked for without an admin token, or registration is closed", body = ErrorBody),
        (status = 422, description = "Invalid body or field", body = ErrorBody),
        (status = 503, description = "The server is at its capacity (retry after `Retry-After` seconds), or the database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, when at capacity"))),
        (status = 504, description = "Not answered within KMS_REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
    )
)]
pub(super) async fn register(
    State(state): State<HttpState>,
    MaybeAuthenticated(caller): MaybeAuthenticated,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let new = NewUser {
        username: required("username", body.username)?,
        password: Zeroizing::new(required("password", body.password)?),
        roles: split_roles(body.roles.as_deref()),
    };
    state
        .auth
        .register(caller.as_deref(), new)
        .await
        .map_err(|e| match e {
            Error::AlreadyExists(_) => ApiError::from(e).with_detail(USERNAME_TAKEN),
            other => other.into(),
        })?;
    let message = REGISTERED.to_owned();
    Ok((StatusCode::CREATED, Json(Message { message })))
}

/// `"admin, user"` -> `["admin", "user"]`; empty items are dropped, so `""` asks for
/// no role in particular (the domain then grants `user`).
fn split_roles(roles: Option<&str>) -> Vec<String> {
    roles
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Log in for an access token.
#[utoipa::path(
    post, path = "/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Incorrect username or password.", body = ErrorBody),
        (status = 422, description = "Invalid body or missing field", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this username or address; the password was not checked",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "The server is at its capacity (retry after `Retry-After` seconds), or the database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, when at capacity"))),
        (status = 504, description = "Not answered within KMS_REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
    )
)]
pub(super) async fn login(
    State(state): State<HttpState>,
    // The client as the listener decided it: the TCP peer, or whom a trusted proxy
    // forwarded for (`net::client_addr`). Optional: a router served without the
    // listener (in tests) throttles by username only.
    client: Option<Extension<ClientAddr>>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let username = required("username", body.username)?;
    let password = Zeroizing::new(required("password", body.password)?);
    let client = client.map(|Extension(ClientAddr(ip))| ip);
    // This API has no refresh endpoint: the login issues an access token only.
    let result = state
        .auth
        .login_access_only(&username, password, client)
        .await;
    state.metrics.login_answered(&result, false);
    let issued = result.map_err(|e| match e {
        // The original service refused every bad login alike; a username or password
        // that could never be valid is just another wrong one.
        Error::Unauthenticated(_) | Error::InvalidArgument { .. } => {
            ApiError::from(Error::Unauthenticated(BAD_LOGIN))
        }
        other => other.into(),
    })?;
    Ok(Json(TokenResponse {
        access_token: issued.token,
        token_type: TOKEN_TYPE.to_owned(),
    }))
}

/// Create a key for a service (admin).
#[utoipa::path(
    post, path = "/keys", tag = "keys",
    request_body = CreateKeyRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; the only time a generated key is shown besides GET", body = KeyResponse),
        (status = 400, description = "A key for this service, or this secret, already exists", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role", body = ErrorBody),
        (status = 422, description = "Invalid body or field", body = ErrorBody),
        (status = 503, description = "The server is at its capacity (retry after `Retry-After` seconds), or the database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, when at capacity"))),
        (status = 504, description = "Not answered within KMS_REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
    )
)]
pub(super) async fn create_key(
    State(state): State<HttpState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> Result<(StatusCode, Json<KeyResponse>), ApiError> {
    let request = CreateKey {
        service_name: required("service_name", body.service_name)?,
        api_key: body.api_key,
        description: String::new(),
        ttl_seconds: 0,
        ..CreateKey::default()
    };
    let created = state.keys.create(&caller, request).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Read a service's current key (admin).
#[utoipa::path(
    get, path = "/keys/{service_name}", tag = "keys",
    params(("service_name" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The current key", body = KeyResponse),
        (status = 401, description = "Missing, malformed or invalid bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role", body = ErrorBody),
        (status = 404, description = "No key for this service", body = ErrorBody),
        (status = 422, description = "Invalid service name", body = ErrorBody),
        (status = 503, description = "The server is at its capacity (retry after `Retry-After` seconds), or the database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, when at capacity"))),
        (status = 504, description = "Not answered within KMS_REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
    )
)]
pub(super) async fn get_key(
    State(state): State<HttpState>,
    Authenticated(caller): Authenticated,
    ServiceName(service_name): ServiceName,
) -> Result<Json<KeyResponse>, ApiError> {
    let key = state.keys.get(&caller, &service_name).await?;
    Ok(Json(key.into()))
}

/// Revoke a service's key: every secret of it stops verifying (admin).
#[utoipa::path(
    delete, path = "/keys/{service_name}", tag = "keys",
    params(("service_name" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing, malformed or invalid bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role", body = ErrorBody),
        (status = 404, description = "No key for this service", body = ErrorBody),
        (status = 422, description = "Invalid service name", body = ErrorBody),
        (status = 503, description = "The server is at its capacity (retry after `Retry-After` seconds), or the database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, when at capacity"))),
        (status = 504, description = "Not answered within KMS_REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
    )
)]
pub(super) async fn delete_key(
    State(state): State<HttpState>,
    Authenticated(caller): Authenticated,
    ServiceName(service_name): ServiceName,
) -> Result<StatusCode, ApiError> {
    state.keys.revoke(&caller, &service_name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a service's key with a new one (admin). The old one stops verifying at
/// once, as in the original service, unless a grace period is given.
#[utoipa::path(
    post, path = "/keys/{service_name}/rotate", tag = "keys",
    params(("service_name" = String, Path)),
    request_body(content = Option<RotateRequest>, description = "Optional"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new key", body = KeyResponse),
        (status = 401, description = "Missing, malformed or invalid bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role", body = ErrorBody),
        (status = 404, description = "No key for this service", body = ErrorBody),
        (status = 422, description = "Invalid body or field", body = ErrorBody),
        (status = 503, description = "The server is at its capacity (retry after `Retry-After` seconds), or the database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, when at capacity"))),
        (status = 504, description = "Not answered within KMS_REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
    )
)]
pub(super) async fn rotate_key(
    State(state): State<HttpState>,
    Authenticated(caller): Authenticated,
    ServiceName(service_name): ServiceName,
    MaybeJsonBody(body): MaybeJsonBody<RotateRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    let grace = body.unwrap_or_default().grace_period_seconds.unwrap_or(0);
    let key = state.keys.rotate(&caller, &service_name, grace).await?;
    Ok(Json(key.into()))
}

/// One line per REST request: the route template (never the raw path, whose service
/// name is client input), the status, the latency and the request id. Nothing of headers or bodies,
/// which carry passwords, tokens and keys.
pub(super) async fn log_request(
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let started = Instant::now();
    // The request id and client address stamp this request's audit rows, as on gRPC.
    let meta = RequestMeta {
        request_id: request_id::of(request.headers()),
        client_addr: crate::net::client_addr(&request),
    };
    let id_header = request_id::value(&meta.request_id);
    let logged_id = meta.request_id.clone();
    let route = route.as_ref().map_or("unknown", MatchedPath::as_str);
    // A server span only when traces are exported: otherwise the log stays as it was.
    let span = if traces::enabled() {
        let span = tracing::info_span!(
            "http",
            otel.name = Empty,
            otel.kind = Empty,
            trace_id = Empty
        );
        traces::http_request(&span, &method, route, request.headers());
        span
    } else {
        Span::none()
    };
    let mut response = audit::scope(meta, next.run(request))
        .instrument(span.clone())
        .await;
    if let Some(id) = id_header {
        response.headers_mut().insert(request_id::HEADER, id);
    }
    traces::http_finished(&span, response.status());
    let _in_span = span.enter();
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.status().is_server_error() {
        tracing::warn!(%method, route, status, latency_ms, request_id = %logged_id, "HTTP request failed");
    } else {
        tracing::info!(%method, route, status, latency_ms, request_id = %logged_id, "HTTP request finished");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_a_comma_separated_string() {
        assert_eq!(split_roles(None), Vec::<String>::new());
        assert_eq!(split_roles(Some("")), Vec::<String>::new());
        assert_eq!(split_roles(Some("admin, user,")), vec!["admin", "user"]);
        assert_eq!(split_roles(Some("user")), vec!["user"]);
    }
}
