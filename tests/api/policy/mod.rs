//! Keys that carry policy (API.md, "Keys that carry policy"): scopes, metadata,
//! enabled, rate limits, credits and last_used_at, through the real gRPC surface.

use kms::proto::kms::v1 as pb;
use prost_types::FieldMask;
use tonic::{Status, transport::Channel};

use crate::common::{TestServer, authed};

mod credits;
mod crud;
mod ext_authz;
mod rate;
mod replicas;
mod verify;

pub fn create(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        ..Default::default()
    }
}

pub fn limit(requests: i64, window_seconds: i64) -> Option<pb::RateLimit> {
    Some(pb::RateLimit {
        requests,
        window_seconds,
    })
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub async fn create_key(
    server: &TestServer,
    token: &str,
    req: pb::CreateKeyRequest,
) -> Result<pb::ApiKey, Status> {
    server
        .keys()
        .create_key(authed(req, token))
        .await
        .map(tonic::Response::into_inner)
}

/// UpdateKey with `paths` in the mask and the fields `edit` sets.
pub async fn update(
    channel: &Channel,
    token: &str,
    name: &str,
    paths: &[&str],
    edit: impl FnOnce(&mut pb::UpdateKeyRequest),
) -> Result<pb::ApiKey, Status> {
    let mut req = pb::UpdateKeyRequest {
        service_name: name.into(),
        update_mask: Some(FieldMask {
            paths: strings(paths),
        }),
        ..Default::default()
    };
    edit(&mut req);
    pb::keys_client::KeysClient::new(channel.clone())
        .update_key(authed(req, token))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn verify_with(
    channel: &Channel,
    token: &str,
    api_key: &str,
    required_scopes: &[&str],
    cost: Option<i64>,
) -> pb::VerifyKeyResponse {
    pb::keys_client::KeysClient::new(channel.clone())
        .verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: api_key.into(),
                required_scopes: strings(required_scopes),
                cost,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

pub fn code(r: &pb::VerifyKeyResponse) -> pb::VerifyCode {
    pb::VerifyCode::try_from(r.code).unwrap()
}

/// Awaits spawned calls in order.
pub async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
