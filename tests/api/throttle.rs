//! Login throttling through the real APIs: lockouts per username and per client
//! address, exponential backoff, and the retry delay in gRPC metadata and HTTP 429.

use std::time::Duration;

use kms::{
    domain::throttle::{ADDRESS_FAILURE_FACTOR, ThrottleSettings},
    proto::kms::v1::{self as pb, users_client::UsersClient},
};
use serde_json::json;
use tonic::{Code, Status};

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, authed},
    http_client::Http,
};

both_backends!(
    failures_lock_the_username_without_checking_the_password,
    the_lockout_doubles_with_each_further_failure,
    unknown_usernames_are_throttled_alike,
    one_address_is_throttled_across_usernames,
    rest_login_answers_429_with_retry_after,
    wrong_old_passwords_count_as_failed_logins,
);

const MAX_FAILURES: u32 = 3;
const PASSWORD: &str = "alice-password-1";

/// Small numbers so that lockouts end within the test: 3 failures, then 1 s, 2 s, ...
async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |config| {
        config.login_throttle = ThrottleSettings {
            max_failures: MAX_FAILURES,
            failure_window: Duration::from_secs(60),
            lockout_base: Duration::from_secs(1),
            lockout_max: Duration::from_secs(8),
            ..ThrottleSettings::default()
        };
    })
    .await
}

async fn register(server: &TestServer, username: &str) {
    server
        .auth()
        .register(pb::RegisterRequest {
            username: username.into(),
            password: PASSWORD.into(),
            roles: vec![],
        })
        .await
        .unwrap();
}

async fn login(server: &TestServer, username: &str, password: &str) -> Result<(), Status> {
    server
        .auth()
        .login(pb::LoginRequest {
            username: username.into(),
            password: password.into(),
        })
        .await
        .map(drop)
}

async fn fail(server: &TestServer, username: &str) {
    let err = login(server, username, "wrong-password-x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

/// Asserts RESOURCE_EXHAUSTED with the delay in both the metadata and the message;
/// returns the delay.
#[track_caller]
fn throttled(result: Result<(), Status>) -> Duration {
    let status = result.expect_err("the login should be throttled");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let secs: u64 = status
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        status.message(),
        format!("too many failed logins; retry in {secs} s")
    );
    Duration::from_secs(secs)
}

async fn metrics(server: &TestServer) -> String {
    let reply = Http::new(server.http_addr).get("/metrics").send().await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body).unwrap()
}

async fn failures_lock_the_username_without_checking_the_password(backend: Backend) {
    let server = start(backend).await;
    register(&server, "alice").await;
    for _ in 0..MAX_FAILURES {
        fail(&server, "alice").await;
    }
    // The right password is refused too: the password is not even looked at.
    let wait = throttled(login(&server, "alice", PASSWORD).await);
    assert_eq!(wait, Duration::from_secs(1));
    // Another username from the same address is not affected.
    login(&server, ADMIN, ADMIN_PASSWORD).await.unwrap();

    tokio::time::sleep(wait).await;
    login(&server, "alice", PASSWORD).await.unwrap();
    // The success reset the username: a full allowance again, and then the base
    // lockout, not a doubled one.
    for _ in 0..MAX_FAILURES {
        fail(&server, "alice").await;
    }
    assert_eq!(
        throttled(login(&server, "alice", PASSWORD).await),
        Duration::from_secs(1)
    );

    let text = metrics(&server).await;
    for line in [
        r#"kms_login_attempts_total{outcome="throttled"} 2"#,
        r#"kms_login_attempts_total{outcome="failure"} 6"#,
        r#"kms_login_attempts_total{outcome="success"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    server.stop().await;
}

async fn the_lockout_doubles_with_each_further_failure(backend: Backend) {
    let server = start(backend).await;
    register(&server, "alice").await;
    for _ in 0..MAX_FAILURES {
        fail(&server, "alice").await;
    }
    let first = throttled(login(&server, "alice", PASSWORD).await);
    assert_eq!(first, Duration::from_secs(1));
    tokio::time::sleep(first).await;
    // Once the lockout ends, a single wrong guess locks the username again, for
    // twice as long.
    fail(&server, "alice").await;
    let second = throttled(login(&server, "alice", PASSWORD).await);
    assert_eq!(second, Duration::from_secs(2));
    server.stop().await;
}

async fn unknown_usernames_are_throttled_alike(backend: Backend) {
    let server = start(backend).await;
    for _ in 0..MAX_FAILURES {
        fail(&server, "nobody").await;
    }
    // Same answer as for an existing user: throttling tells nothing about existence.
    assert_eq!(
        throttled(login(&server, "nobody", "wrong-password-x").await),
        Duration::from_secs(1)
    );
    server.stop().await;
}

async fn one_address_is_throttled_across_usernames(backend: Backend) {
    let server = start(backend).await;
    // A spray: one wrong guess for each of many usernames, all from 127.0.0.1.
    for n in 0..MAX_FAILURES * ADDRESS_FAILURE_FACTOR {
        fail(&server, &format!("user{n}")).await;
    }
    // Now the address is locked: even the admin with the right password.
    throttled(login(&server, ADMIN, ADMIN_PASSWORD).await);
    throttled(login(&server, "someone-else", "wrong-password-x").await);
    server.stop().await;
}

async fn rest_login_answers_429_with_retry_after(backend: Backend) {
    let server = start(backend).await;
    register(&server, "alice").await;
    let http = Http::new(server.http_addr);
    let attempt = |password: &str| {
        http.post("/login")
            .json(json!({"username": "alice", "password": password}))
            .send()
    };
    for _ in 0..MAX_FAILURES {
        attempt("wrong-password-x")
            .await
            .expect(401, "Incorrect username or password.");
    }
    let reply = attempt(PASSWORD).await;
    reply.expect(429, "too many failed logins; retry in 1 s");
    assert_eq!(reply.headers["retry-after"], "1");
    // One set of counters behind both APIs.
    throttled(login(&server, "alice", PASSWORD).await);
    server.stop().await;
}

/// ChangePassword checks the old password: someone holding a stolen access token must
/// not get to guess it faster than through Login. The two share the counters.
async fn wrong_old_passwords_count_as_failed_logins(backend: Backend) {
    let server = start(backend).await;
    register(&server, "alice").await;
    let token = server.login("alice", PASSWORD).await;
    let change = |old: &str| {
        authed(
            pb::ChangePasswordRequest {
                username: String::new(),
                old_password: old.into(),
                new_password: "alice-new-password-2".into(),
            },
            &token,
        )
    };
    for _ in 0..MAX_FAILURES {
        let err = UsersClient::new(server.channel.clone())
            .change_password(change("wrong-password-x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // Locked out: the right old password is not even looked at, nor is a login's.
    let wait = throttled(
        UsersClient::new(server.channel.clone())
            .change_password(change(PASSWORD))
            .await
            .map(drop),
    );
    assert_eq!(wait, Duration::from_secs(1));
    throttled(login(&server, "alice", PASSWORD).await);
    // Once the lockout ends, the right old password works and the new one logs in.
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    UsersClient::new(server.channel.clone())
        .change_password(change(PASSWORD))
        .await
        .unwrap();
    login(&server, "alice", "alice-new-password-2")
        .await
        .unwrap();
    server.stop().await;
}

/// Two replica processes on one PostgreSQL database share the usernames' counters:
/// failures on either lock the name on both, within KMS_LOGIN_MAX_FAILURES + N - 1
/// wrong passwords even when guesses arrive on both at once, and correct logins on
/// both at once all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn replicas_share_one_allowance_per_username() {
    use crate::process::Cluster;
    use kms::proto::kms::v1::auth_client::AuthClient;

    let cluster = Cluster::new(&Backend::postgres(), &[("KMS_LOGIN_MAX_FAILURES", "3")]).await;
    let (a, b) = (cluster.start("a").await, cluster.start("b").await);
    let admin = a.admin_token().await;
    for name in ["seq-victim", "par-victim"] {
        a.auth()
            .register(authed(
                pb::RegisterRequest {
                    username: name.into(),
                    password: PASSWORD.into(),
                    roles: vec![],
                },
                &admin,
            ))
            .await
            .unwrap();
    }
    let attempt = |channel: tonic::transport::Channel, username: &str, password: &str| {
        let (username, password) = (username.to_owned(), password.to_owned());
        async move {
            AuthClient::new(channel)
                .login(pb::LoginRequest { username, password })
                .await
                .map(|_| ())
        }
    };

    // Correct logins on both replicas at once: every one passes.
    let correct: Vec<_> = (0..10)
        .map(|i| {
            let channel = if i % 2 == 0 { a.channel() } else { b.channel() };
            tokio::spawn(attempt(channel, ADMIN, ADMIN_PASSWORD))
        })
        .collect();
    for call in correct {
        call.await.unwrap().unwrap();
    }

    // One guess after another, alternating replicas: the fourth is refused on either.
    for i in 0..3 {
        let channel = if i % 2 == 0 { a.channel() } else { b.channel() };
        let refused = attempt(channel, "seq-victim", "wrong-password-1")
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "guess {i}: {refused:?}"
        );
    }
    for channel in [a.channel(), b.channel()] {
        let refused = attempt(channel.clone(), "seq-victim", "wrong-password-1")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        // Even the right password: the name is locked on every replica.
        let refused = attempt(channel, "seq-victim", PASSWORD).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    }

    // Guesses on both replicas at once: at most 3 + 2 - 1 reach a password check.
    let guesses: Vec<_> = (0..16)
        .map(|i| {
            let channel = if i % 2 == 0 { a.channel() } else { b.channel() };
            tokio::spawn(attempt(channel, "par-victim", "wrong-password-2"))
        })
        .collect();
    let mut checked = 0;
    for guess in guesses {
        match guess.await.unwrap() {
            Err(s) if s.code() == Code::Unauthenticated => checked += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {}
            other => panic!("{other:?}"),
        }
    }
    eprintln!(
        "throttle: 16 parallel guesses over 2 replicas, {checked} reached a password check (bound 4)"
    );
    assert!(
        (1..=4).contains(&checked),
        "{checked} wrong passwords checked"
    );
}
