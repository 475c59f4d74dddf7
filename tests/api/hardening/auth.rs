//! Authentication hardening: concurrency is not a failed login, registration closed
//! by default, usernames unique without regard to case, burned API key secrets,
//! strict JWT headers, and the expiry VerifyKey reports during a rotation's grace.

use kms::proto::kms::v1::{self as pb, audit_client::AuditClient};
use serde_json::json;
use tonic::Code;

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, assert_status, authed},
    http_client::Http,
    process::Cluster,
};

both_backends!(
    concurrent_correct_logins_of_one_user_all_succeed,
    concurrent_correct_logins_from_one_address_all_succeed,
    concurrent_wrong_passwords_get_no_more_checks_than_the_allowance,
    registration_is_closed_without_dev_and_open_with_it,
);

/// The default allowance: `KMS_LOGIN_MAX_FAILURES`.
const MAX_FAILURES: usize = 5;

fn password_of(username: &str) -> String {
    format!("{username}-password-123")
}

async fn register(server: &TestServer, username: &str) {
    server
        .auth()
        .register(pb::RegisterRequest {
            username: username.into(),
            password: password_of(username),
            roles: vec![],
        })
        .await
        .unwrap();
}

/// Logs in with every (username, password) at once; the answers in order.
async fn logins_at_once(
    server: &TestServer,
    attempts: Vec<(String, String)>,
) -> Vec<Result<(), tonic::Status>> {
    let calls: Vec<_> = attempts
        .into_iter()
        .map(|(username, password)| {
            let mut auth = server.auth();
            tokio::spawn(async move {
                auth.login(pb::LoginRequest { username, password })
                    .await
                    .map(drop)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

async fn audited(server: &TestServer, action: &str) -> usize {
    let admin = server.admin_token().await;
    AuditClient::new(server.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                action: action.into(),
                page_size: 1000,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .len()
}

#[track_caller]
fn all_ok(answers: &[Result<(), tonic::Status>]) {
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
}

async fn concurrent_correct_logins_of_one_user_all_succeed(backend: Backend) {
    let server = TestServer::start(backend).await;
    register(&server, "alice").await;
    // Twice the allowance: each waits for a place, none is taken for a failure.
    let attempts = (0..2 * MAX_FAILURES)
        .map(|_| ("alice".to_owned(), password_of("alice")))
        .collect();
    all_ok(&logins_at_once(&server, attempts).await);
    assert_eq!(audited(&server, "login_throttled").await, 0);
    server.stop().await;
}

async fn concurrent_correct_logins_from_one_address_all_succeed(backend: Backend) {
    let server = TestServer::start(backend).await;
    // More users than the address's allowance (4 x 5), all from 127.0.0.1: an office
    // behind one NAT at nine in the morning.
    let users: Vec<String> = (0..30).map(|n| format!("staff{n}")).collect();
    for user in &users {
        register(&server, user).await;
    }
    let attempts = users.iter().map(|u| (u.clone(), password_of(u))).collect();
    all_ok(&logins_at_once(&server, attempts).await);
    assert_eq!(audited(&server, "login_throttled").await, 0);
    server.stop().await;
}

async fn concurrent_wrong_passwords_get_no_more_checks_than_the_allowance(backend: Backend) {
    let server = TestServer::start(backend).await;
    register(&server, "alice").await;
    let attempts = (0..3 * MAX_FAILURES)
        .map(|_| ("alice".to_owned(), "wrong-password-x".to_owned()))
        .collect();
    let answers = logins_at_once(&server, attempts).await;
    let checked = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    let locked = answers
        .iter()
        .filter(|a| {
            matches!(a, Err(s) if s.code() == Code::ResourceExhausted
                && s.message().starts_with("too many failed logins"))
        })
        .count();
    // Exactly the allowance of password checks; everyone else waited and then met
    // the lockout.
    assert_eq!(
        (checked, locked),
        (MAX_FAILURES, 2 * MAX_FAILURES),
        "{answers:?}"
    );
    // The admin, from the same address, is not locked (the address allows 4 x 5).
    server.login(ADMIN, ADMIN_PASSWORD).await;
    server.stop().await;
}

/// `kms serve` without `--dev` and without KMS_ALLOW_REGISTRATION: closed, and the
/// refusal names the setting that opens it (gRPC and REST). With `--dev`: open.
async fn registration_is_closed_without_dev_and_open_with_it(backend: Backend) {
    let cluster = Cluster::new(&backend, &[]).await;
    let register = || pb::RegisterRequest {
        username: "walk-in".into(),
        password: password_of("walk-in"),
        roles: vec![],
    };
    let closed = cluster.start("closed").await;
    assert_status(
        closed.auth().register(register()).await,
        Code::PermissionDenied,
        "KMS_ALLOW_REGISTRATION",
    );
    Http::new(closed.http_addr())
        .post("/register")
        .json(json!({"username": "walk-in", "password": password_of("walk-in")}))
        .send()
        .await
        .expect(403, "KMS_ALLOW_REGISTRATION");
    // An admin still may.
    let admin = closed.admin_token().await;
    closed
        .auth()
        .register(authed(register(), &admin))
        .await
        .unwrap();
    closed.kill9().await;

    let dev = cluster.start_with_args("dev", &["--dev"]).await;
    let mut anyone = register();
    anyone.username = "dev-walk-in".into();
    dev.auth().register(anyone).await.unwrap();
    dev.kill9().await;
}
