//! The small HTTP side, on its own listener: `GET /health` for load balancers and
//! `GET /metrics` for Prometheus.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::{health::DbHealth, store::Store, telemetry::Metrics};

#[derive(Clone)]
pub struct HttpState {
    pub health: DbHealth,
    pub metrics: Metrics,
    pub store: Store,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

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
