//! gRPC and REST refuse a bearer token with the same decision in the same words: both
//! read it through `bearer::caller` and answer through their one error map, so a
//! change to either refusal shows on both transports or on neither.

use std::time::Duration;

use kms::proto::kms::v1 as pb;
use serde_json::json;
use tonic::{Code, Request, metadata::MetadataValue};

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, authed},
    http_client::Http,
};

both_backends!(token_refusals_read_the_same_on_grpc_and_rest);

/// A request with these `authorization` values (none, one, or a repeat).
fn with_authorization<T>(message: T, values: &[&str]) -> Request<T> {
    let mut req = Request::new(message);
    for value in values {
        let value: MetadataValue<_> = value.parse().unwrap();
        req.metadata_mut().append("authorization", value);
    }
    req
}

async fn token_refusals_read_the_same_on_grpc_and_rest(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = Http::new(server.http_addr);
    let logged_out = server.login(ADMIN, ADMIN_PASSWORD).await;
    server
        .auth()
        .logout(authed(pb::LogoutRequest {}, &logged_out))
        .await
        .unwrap();
    let logged_out = format!("Bearer {logged_out}");

    let cases: [&[&str]; 6] = [
        &[],
        &["Basic cm9vdDpwdw=="],
        &["Bearer"],
        &["Bearer junk"],
        &[&logged_out],
        &["Bearer a", "Bearer b"],
    ];
    for values in cases {
        // A method that needs a token.
        let grpc = server
            .keys()
            .get_key(with_authorization(
                pb::GetKeyRequest {
                    service_name: "guarded".into(),
                },
                values,
            ))
            .await
            .unwrap_err();
        let mut call = http.get("/keys/guarded");
        for value in values {
            call = call.header("authorization", value);
        }
        let rest = call.send().await;
        assert_eq!(grpc.code(), Code::Unauthenticated, "{values:?}: {grpc:?}");
        assert_eq!(rest.status, 401, "{values:?}");
        assert_eq!(grpc.message(), rest.detail(), "{values:?}");
    }
    // Register takes a token optionally: one that is sent is checked alike.
    for values in &cases[1..] {
        let grpc = server
            .auth()
            .register(with_authorization(
                pb::RegisterRequest {
                    username: "newcomer".into(),
                    password: "newcomer-password-1".into(),
                    roles: vec![],
                },
                values,
            ))
            .await
            .unwrap_err();
        let mut call = http
            .post("/register")
            .json(json!({"username": "newcomer", "password": "newcomer-password-1"}));
        for value in *values {
            call = call.header("authorization", value);
        }
        let rest = call.send().await;
        assert_eq!(grpc.code(), Code::Unauthenticated, "{values:?}: {grpc:?}");
        assert_eq!(rest.status, 401, "{values:?}");
        assert_eq!(grpc.message(), rest.detail(), "{values:?}");
    }
    server.stop().await;
}

/// A token whose login cannot be checked (the database is gone) is UNAVAILABLE on
/// gRPC, 503 on REST and a gRPC error from ext_authz, all with the one message of
/// `domain::Error::Unavailable`. PostgreSQL only: it needs a database that can vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn an_uncheckable_token_reads_the_same_on_every_transport() {
    let base = crate::common::postgres_url();
    let (proxy, proxied, _) = crate::faults::Proxy::in_front_of(&base).await;
    let server = TestServer::start(Backend::Postgres(proxied)).await;
    let http = Http::new(server.http_addr);
    let admin = server.admin_token().await;
    proxy.cut().await;
    // Past the authenticator's 1 s cache of the login behind the token.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let grpc = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "any".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(grpc.code(), Code::Unavailable, "{grpc:?}");
    let rest = http.get("/keys/any").bearer(&admin).send().await;
    assert_eq!(rest.status, 503);
    assert_eq!(grpc.message(), rest.detail());
    let bearer = format!("Bearer {admin}");
    let envoy = crate::ext_authz::client(server.channel.clone())
        .check(crate::ext_authz::check_request(&[(
            "authorization",
            bearer.as_str(),
        )]))
        .await
        .unwrap_err();
    assert_eq!(envoy.code(), Code::Unavailable, "{envoy:?}");
    assert_eq!(envoy.message(), grpc.message());
    server.stop().await;
}
