//! Conversions between domain values and protobuf messages.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{
    domain::{
        keys::ApiKeyView,
        policy::{RateLimit, VerifyCode},
    },
    proto::kms::v1 as pb,
};

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // subsec_nanos is < 1e9 (leap seconds aside), so it always fits an i32.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(999_999_999),
    }
}

pub fn api_key(view: ApiKeyView) -> pb::ApiKey {
    pb::ApiKey {
        service_name: view.service_name,
        api_key: view.api_key,
        key_prefix: view.key_prefix,
        description: view.description,
        created_at: Some(timestamp(view.created_at)),
        updated_at: Some(timestamp(view.updated_at)),
        expires_at: view.expires_at.map(timestamp),
        scopes: view.scopes,
        metadata: view.metadata.into_iter().collect(),
        enabled: view.enabled,
        rate_limit: view.rate_limit.map(|l| pb::RateLimit {
            requests: l.requests,
            window_seconds: l.window_seconds,
        }),
        remaining: view.remaining,
        last_used_at: view.last_used_at.map(timestamp),
    }
}

pub fn rate_limit(limit: pb::RateLimit) -> RateLimit {
    RateLimit {
        requests: limit.requests,
        window_seconds: limit.window_seconds,
    }
}

pub fn verify_code(code: VerifyCode) -> pb::VerifyCode {
    match code {
        VerifyCode::Valid => pb::VerifyCode::Valid,
        VerifyCode::NotFound => pb::VerifyCode::NotFound,
        VerifyCode::Expired => pb::VerifyCode::Expired,
        VerifyCode::Disabled => pb::VerifyCode::Disabled,
        VerifyCode::InsufficientScope => pb::VerifyCode::InsufficientScope,
        VerifyCode::RateLimited => pb::VerifyCode::RateLimited,
        VerifyCode::UsageExceeded => pb::VerifyCode::UsageExceeded,
    }
}

/// A JWK as protobuf; `jsonwebtoken`'s JSON form is the reference, so read it from there.
pub fn jwk(key: &jsonwebtoken::jwk::Jwk) -> pb::Jwk {
    let json = serde_json::to_value(key).unwrap_or_default();
    let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
    pb::Jwk {
        kty: field("kty"),
        r#use: field("use"),
        alg: field("alg"),
        kid: field("kid"),
        crv: field("crv"),
        x: field("x"),
        n: field("n"),
        e: field("e"),
    }
}
