//! Envoy ext_authz per route, from `context_extensions`, with the crate's generated
//! client: 401/403/429, `retry-after`, `ratelimit-*`, `x-kms-scopes` upstream.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use kms::proto::kms::v1 as pb;

use super::{create, create_key, limit, strings, update};
use crate::{
    both_backends,
    common::{Backend, TestServer},
    ext_authz::{check_request, client},
};

both_backends!(routes_enforce_scopes_roles_and_limits);

fn on_route(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let mut request = check_request(headers);
    if let Some(attributes) = request.attributes.as_mut() {
        attributes.context_extensions = extensions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }
    request
}

/// (HTTP status, headers to the client, headers set upstream).
fn outcome(response: &CheckResponse) -> (u16, HashMap<String, String>, HashMap<String, String>) {
    let pairs = |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            (200, pairs(&ok.response_headers_to_add), pairs(&ok.headers))
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let code = denied.status.as_ref().map_or(0, |s| s.code);
            (
                u16::try_from(code).unwrap(),
                pairs(&denied.headers),
                HashMap::new(),
            )
        }
        other => panic!("no HTTP response: {other:?}"),
    }
}

async fn routes_enforce_scopes_roles_and_limits(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let user = server.user_token("dora").await;
    let mut envoy = client(server.channel.clone());
    let mut check = async |headers: &[(&str, &str)], ext: &[(&str, &str)]| {
        outcome(
            &envoy
                .check(on_route(headers, ext))
                .await
                .unwrap()
                .into_inner(),
        )
    };
    let scoped = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            scopes: strings(&["orders:*", "read"]),
            rate_limit: limit(2, 3600),
            ..create("orders")
        },
    )
    .await
    .unwrap();
    let plain = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            remaining: Some(1),
            ..create("plain")
        },
    )
    .await
    .unwrap();
    let orders = [("kms_required_scopes", "orders:read read")];
    let admins = [("kms_required_roles", "admin")];
    let bearer = |t: &str| format!("Bearer {t}");

    // A key with the scopes: allowed, scopes upstream, limit headers to the client.
    let (status, to_client, upstream) = check(&[("x-api-key", &scoped.api_key)], &orders).await;
    assert_eq!(status, 200);
    assert_eq!(upstream["x-kms-scopes"], "orders:* read");
    assert_eq!(upstream["x-kms-service"], "orders");
    assert_eq!(to_client["ratelimit-limit"], "2");
    assert_eq!(to_client["ratelimit-remaining"], "1");
    // Without a scope the route requires: 403, nothing spent.
    let (status, ..) = check(&[("x-api-key", &plain.api_key)], &orders).await;
    assert_eq!(status, 403);
    // A token on a route that names only scopes: 403; a key on a roles-only route too.
    assert_eq!(
        check(&[("authorization", &bearer(&admin))], &orders)
            .await
            .0,
        403
    );
    assert_eq!(
        check(&[("x-api-key", &scoped.api_key)], &admins).await.0,
        403
    );
    // Roles.
    let (status, _, upstream) = check(&[("authorization", &bearer(&admin))], &admins).await;
    assert_eq!(status, 200);
    assert!(!upstream.contains_key("x-kms-scopes"));
    assert_eq!(
        check(&[("authorization", &bearer(&user))], &admins).await.0,
        403
    );
    // A route naming nothing takes both, as before.
    assert_eq!(
        check(&[("authorization", &bearer(&user))], &[]).await.0,
        200
    );

    // The second request uses the limit up; the third is 429 with retry-after.
    assert_eq!(
        check(&[("x-api-key", &scoped.api_key)], &orders).await.0,
        200
    );
    let (status, to_client, _) = check(&[("x-api-key", &scoped.api_key)], &orders).await;
    assert_eq!(status, 429);
    let retry: i64 = to_client["retry-after"].parse().unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(to_client["ratelimit-remaining"], "0");
    assert_eq!(to_client["ratelimit-limit"], "2");

    // Credits: the one credit passes, then 429 without retry-after.
    assert_eq!(check(&[("x-api-key", &plain.api_key)], &[]).await.0, 200);
    let (status, to_client, _) = check(&[("x-api-key", &plain.api_key)], &[]).await;
    assert_eq!(status, 429);
    assert!(!to_client.contains_key("retry-after"));

    // Disabled: 401, as for an unknown key.
    update(&server.channel, &admin, "orders", &["enabled"], |r| {
        r.enabled = false
    })
    .await
    .unwrap();
    let (status, to_client, _) = check(&[("x-api-key", &scoped.api_key)], &orders).await;
    assert_eq!(status, 401);
    assert!(to_client.contains_key("www-authenticate"));
    server.stop().await;
}
