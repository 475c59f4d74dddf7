//! envoy.service.auth.v3.Authorization/Check, called as Envoy's ext_authz filter would:
//! no KMS token on the call itself, the client's HTTP headers inside the CheckRequest.

use std::{collections::HashMap, time::Duration};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpResponse},
    pb::envoy::service::auth::v3::{
        AttributeContext,
        attribute_context::{HttpRequest, Request},
        authorization_client::AuthorizationClient,
    },
};
use kms::proto::kms::v1 as pb;
use tonic::transport::Channel;

use crate::{
    both_backends,
    common::{Backend, JWT_SECRET, TestServer, alg_none_token, authed, claims, now, sign},
};

both_backends!(
    a_valid_token_is_allowed_with_subject_and_roles,
    a_valid_api_key_is_allowed_and_stripped,
    bad_credentials_are_denied_with_401,
    revoked_rotated_and_expired_keys_are_denied,
    spoofed_identity_headers_never_pass,
    a_token_decides_when_both_headers_are_sent,
);

/// What Envoy sends for `GET /orders` with these (lower-case) request headers.
pub fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    host: "orders.internal".into(),
                    scheme: "http".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

pub fn client(channel: Channel) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(channel)
}

async fn check(server: &TestServer, headers: &[(&str, &str)]) -> CheckResponse {
    check_raw(server, check_request(headers)).await
}

async fn check_raw(server: &TestServer, request: CheckRequest) -> CheckResponse {
    client(server.channel.clone())
        .check(request)
        .await
        .unwrap_or_else(|s| panic!("Check must answer, not fail: {s:?}"))
        .into_inner()
}

/// An allowed answer: the headers set for the upstream (all must overwrite) and the
/// headers removed.
struct Allowed {
    set: HashMap<String, String>,
    removed: Vec<String>,
}

#[track_caller]
fn allowed(response: &CheckResponse) -> Allowed {
    let status = response.status.as_ref().expect("a status");
    assert_eq!(status.code, 0, "expected OK: {response:?}");
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an OkHttpResponse: {response:?}");
    };
    let mut set = HashMap::new();
    for option in &ok.headers {
        assert_eq!(
            option.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "{option:?}"
        );
        let header = option.header.as_ref().expect("a header");
        assert!(
            set.insert(header.key.clone(), header.value.clone())
                .is_none(),
            "set twice: {}",
            header.key
        );
    }
    for key in set.keys() {
        assert!(
            !ok.headers_to_remove.contains(key),
            "set and removed: {key}"
        );
    }
    Allowed {
        set,
        removed: ok.headers_to_remove.clone(),
    }
}

#[track_caller]
fn assert_denied(response: &CheckResponse, what: &str) {
    let status = response.status.as_ref().expect("a status");
    assert_eq!(
        status.code,
        tonic::Code::Unauthenticated as i32,
        "{what}: {response:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("{what}: expected a DeniedHttpResponse: {response:?}");
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401), "{what}");
    let challenge = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no www-authenticate: {denied:?}"));
    assert!(
        challenge.value.starts_with(r#"Bearer realm="kms""#),
        "{what}: {challenge:?}"
    );
}

async fn create_key(server: &TestServer, admin: &str, name: &str, ttl: i64) -> String {
    server
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: name.into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: ttl,
                ..Default::default()
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key
}

async fn a_valid_token_is_allowed_with_subject_and_roles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user_token("alice").await;
    let ok = allowed(&check(&server, &[("authorization", &format!("Bearer {alice}"))]).await);
    assert_eq!(
        ok.set.get("x-kms-subject").map(String::as_str),
        Some("alice")
    );
    assert_eq!(ok.set.get("x-kms-roles").map(String::as_str), Some("user"));
    assert!(!ok.set.contains_key("x-kms-service"));
    assert!(ok.removed.contains(&"x-kms-service".to_owned()));
    assert!(ok.removed.contains(&"x-api-key".to_owned()));

    // The scheme is case-insensitive; roles are comma-joined.
    let admin = server.admin_token().await;
    let ok = allowed(&check(&server, &[("authorization", &format!("bearer {admin}"))]).await);
    assert_eq!(
        ok.set.get("x-kms-subject").map(String::as_str),
        Some("root")
    );
    assert_eq!(
        ok.set.get("x-kms-roles").map(String::as_str),
        Some("admin,user")
    );
    server.stop().await;
}

async fn a_valid_api_key_is_allowed_and_stripped(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let key = create_key(&server, &admin, "billing", 0).await;
    let ok = allowed(&check(&server, &[("x-api-key", &key)]).await);
    assert_eq!(
        ok.set.get("x-kms-service").map(String::as_str),
        Some("billing")
    );
    assert_eq!(ok.set.len(), 1, "{:?}", ok.set);
    for stripped in ["x-api-key", "x-kms-subject", "x-kms-roles"] {
        assert!(ok.removed.contains(&stripped.to_owned()), "{stripped}");
    }
    // The secret itself appears nowhere in the answer.
    assert!(ok.set.values().all(|v| !v.contains(&key)));
    server.stop().await;
}

async fn bad_credentials_are_denied_with_401(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let _ = create_key(&server, &admin, "billing", 0).await;

    let expired = sign(&claims("root", &["admin"], now() - 7200, 3600), JWT_SECRET);
    let foreign = sign(
        &claims("root", &["admin"], now(), 3600),
        b"another-secret-another-secret-another",
    );
    let unsigned = alg_none_token(&claims("root", &["admin"], now(), 3600));
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no credentials", vec![("cookie", "session=1".into())]),
        (
            "garbage token",
            vec![("authorization", bearer("not-a-jwt"))],
        ),
        ("empty bearer", vec![("authorization", "Bearer ".into())]),
        (
            "other scheme",
            vec![("authorization", format!("Basic {admin}"))],
        ),
        ("bare token", vec![("authorization", admin.clone())]),
        ("expired token", vec![("authorization", bearer(&expired))]),
        ("foreign token", vec![("authorization", bearer(&foreign))]),
        ("alg none", vec![("authorization", bearer(&unsigned))]),
        (
            "two tokens joined by Envoy",
            vec![("authorization", format!("Bearer {admin},Bearer {admin}"))],
        ),
        (
            "unknown key",
            vec![(
                "x-api-key",
                "an-unknown-key-an-unknown-key-0123456789".into(),
            )],
        ),
        (
            "kms key with bad checksum",
            vec![(
                "x-api-key",
                "kms_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            )],
        ),
        ("empty key", vec![("x-api-key", String::new())]),
        ("oversized key", vec![("x-api-key", "k".repeat(10_000))]),
    ];
    for (what, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_denied(&check(&server, &headers).await, what);
    }
    // No HTTP attributes at all (a TCP-level check, or an empty request).
    assert_denied(
        &check_raw(&server, CheckRequest::default()).await,
        "empty CheckRequest",
    );
    server.stop().await;
}

async fn revoked_rotated_and_expired_keys_are_denied(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let old = create_key(&server, &admin, "orders", 0).await;
    let short = create_key(&server, &admin, "short-lived", 1).await;
    allowed(&check(&server, &[("x-api-key", &old)]).await);
    allowed(&check(&server, &[("x-api-key", &short)]).await);

    // Rotated out with no grace: the old secret stops at once, the new one works.
    let new = keys
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "orders".into(),
                grace_period_seconds: 0,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert_denied(&check(&server, &[("x-api-key", &old)]).await, "rotated out");
    let ok = allowed(&check(&server, &[("x-api-key", &new)]).await);
    assert_eq!(
        ok.set.get("x-kms-service").map(String::as_str),
        Some("orders")
    );

    keys.revoke_key(authed(
        pb::RevokeKeyRequest {
            service_name: "orders".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    assert_denied(&check(&server, &[("x-api-key", &new)]).await, "revoked");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_denied(&check(&server, &[("x-api-key", &short)]).await, "expired");
    server.stop().await;
}

async fn spoofed_identity_headers_never_pass(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let alice = server.user_token("alice").await;
    let key = create_key(&server, &admin, "billing", 0).await;
    let spoofs = [
        ("x-kms-subject", "root"),
        ("x-kms-roles", "admin"),
        ("x-kms-service", "payments"),
    ];

    let bearer = format!("Bearer {alice}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend(spoofs);
    let ok = allowed(&check(&server, &headers).await);
    assert_eq!(
        ok.set.get("x-kms-subject").map(String::as_str),
        Some("alice")
    );
    assert_eq!(ok.set.get("x-kms-roles").map(String::as_str), Some("user"));
    assert!(ok.removed.contains(&"x-kms-service".to_owned()));

    let mut headers = vec![("x-api-key", key.as_str())];
    headers.extend(spoofs);
    let ok = allowed(&check(&server, &headers).await);
    assert_eq!(
        ok.set.get("x-kms-service").map(String::as_str),
        Some("billing")
    );
    assert!(ok.removed.contains(&"x-kms-subject".to_owned()));
    assert!(ok.removed.contains(&"x-kms-roles".to_owned()));

    // Spoofed headers alone are no credential.
    assert_denied(&check(&server, &spoofs).await, "spoofed headers only");
    server.stop().await;
}

async fn a_token_decides_when_both_headers_are_sent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let alice = server.user_token("alice").await;
    let key = create_key(&server, &admin, "billing", 0).await;

    // A valid token wins; the key is not used but still stripped.
    let bearer = format!("Bearer {alice}");
    for presented in [key.as_str(), "not-a-key"] {
        let ok = allowed(
            &check(
                &server,
                &[("authorization", bearer.as_str()), ("x-api-key", presented)],
            )
            .await,
        );
        assert_eq!(
            ok.set.get("x-kms-subject").map(String::as_str),
            Some("alice")
        );
        assert!(!ok.set.contains_key("x-kms-service"));
        assert!(ok.removed.contains(&"x-api-key".to_owned()));
    }
    // A bad token is refused even beside a valid key: no silent fallback.
    assert_denied(
        &check(
            &server,
            &[
                ("authorization", "Bearer junk"),
                ("x-api-key", key.as_str()),
            ],
        )
        .await,
        "bad token with a good key",
    );
    server.stop().await;
}
