//! Conversions between domain values and protobuf messages.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{domain::keys::ApiKeyView, proto::kms::v1 as pb};

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
