//! The HTTP side, on its own listener: `GET /health` for load balancers, `GET /metrics`
//! for Prometheus, the original HTTP key service's REST API (`rest`), its OpenAPI
//! document (`GET /openapi.json`) and the web console (`ui`, at `/ui/`).

mod budget;
mod error;
mod extract;
mod openapi;
mod rest;
pub mod ui;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::IntoResponse,
    routing::get,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use error::ApiError;

use crate::{
    domain::{
        audit::AuditLog, auth::AuthService, keyring::Keyring, keys::KeyService,
        sessions::Authenticator, users::UserAdmin,
    },
    health::DbHealth,
    store::Store,
    telemetry::Metrics,
};

#[derive(Clone)]
pub struct HttpState {
    pub health: DbHealth,
    pub metrics: Metrics,
    pub store: Store,
    /// The services behind gRPC too: the REST API applies exactly their rules.
    pub auth: AuthService,
    pub keys: KeyService,
    /// The console's admin pages call these, as the Users, Audit and Keyring RPCs do.
    pub users: UserAdmin,
    pub audit: AuditLog,
    /// Also seals the console's session cookies.
    pub keyring: Keyring,
    pub ui: ui::UiSettings,
    /// Checks bearer tokens (signature and login), as the gRPC auth layer does.
    pub authenticator: Arc<Authenticator>,
    /// Largest accepted request body (KMS_MAX_REQUEST_BYTES, as for gRPC messages).
    pub max_request_bytes: usize,
    /// Longest a request may take, its body included (KMS_REQUEST_TIMEOUT_SECONDS).
    pub request_timeout: std::time::Duration,
    /// The server's call budgets, shared with gRPC.
    pub budgets: crate::net::Budgets,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    #[schema(example = "healthy")]
    status: &'static str,
}

pub fn router(state: HttpState) -> Router {
    let deadline = state.request_timeout;
    let budgets = state.budgets.clone();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi::document))
        .merge(rest::router(state.max_request_bytes))
        .merge(ui::router(&state).layer(middleware::from_fn(rest::log_request)))
        .fallback(|| async { ApiError::unknown_path() })
        .method_not_allowed_fallback(|uri: axum::http::Uri| async move {
            if ui::is_console_path(uri.path()) {
                ui::method_not_allowed()
            } else {
                ApiError::method_not_allowed().into_response()
            }
        })
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            budget::within(deadline, req, next)
        }))
        // Outermost: a request over its budget is refused before anything else.
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            budget::admit(budgets.clone(), req, next)
        }))
        .with_state(state)
}

/// Only the probes' endpoints, for the plaintext listener beside a TLS HTTP port
/// (`KMS_PROBE_ADDR`): nothing on it takes or returns a secret.
pub fn probe_router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::unknown_path() })
        .with_state(state)
}

/// The public keys that verify access tokens (RFC 7517): a gateway validates KMS
/// tokens locally from these, with any JWT library and no secret. Empty with HS256.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "The JSON Web Key Set; `keys` is empty with HS256", body = serde_json::Value))
)]
async fn jwks(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.authenticator.tokens().jwks()),
    )
}

/// Whether the database answers.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database is unreachable", body = Health),
    )
)]
async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_serving() {
        (StatusCode::OK, Json(Health { status: "healthy" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unhealthy",
            }),
        )
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Gauges that are cheaper to read than to track live.
    if state.health.is_serving()
        && let Ok(n) = state.store.count_live_keys().await
    {
        state
            .metrics
            .keys_active
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    match state.metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A one-shot `GET http://addr{path}` (HTTP/1.1): status and body. For `kms healthcheck`
/// (container HEALTHCHECKs have no curl) and for tests.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
