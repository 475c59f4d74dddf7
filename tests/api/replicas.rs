//! Two servers on one database, in this process: whatever one replica caches, a change
//! made on the other reaches it (PostgreSQL notifications), and neither ever answers
//! from a cache that may have missed one.

use std::time::{Duration, Instant};

use kms::{proto::kms::v1 as pb, server::App};
use tonic::Code;

use crate::common::{Backend, TestDb, TestServer, authed, test_config};

/// PostgreSQL only: SQLite serves exactly one replica (a second server on the same
/// file is refused, see ops.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn changes_on_one_replica_reach_the_other_within_a_second() {
    propagation(Backend::postgres()).await;
}

fn verify(key: &str) -> pb::VerifyKeyRequest {
    pb::VerifyKeyRequest {
        api_key: key.into(),
        ..Default::default()
    }
}

const LIMIT: Duration = Duration::from_secs(1);

/// Polls until `server` refuses the key (or, with `key` None, the token itself); the
/// time it took. Fails after `LIMIT`.
async fn until_refused(
    server: &TestServer,
    token: &str,
    key: Option<&str>,
    what: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let answer = server
            .keys()
            .verify_key(authed(verify(key.unwrap_or("not-a-key")), token))
            .await;
        let refused = match (key, answer) {
            (Some(_), Ok(r)) => !r.into_inner().valid,
            (None, Err(s)) => s.code() == Code::Unauthenticated,
            (_, other) => {
                assert!(other.is_ok(), "{what}: {other:?}");
                false
            }
        };
        if refused {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: not seen within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The secret GetKey gives for "shared" (`None`: NOT_FOUND).
async fn current(server: &TestServer, token: &str) -> Option<String> {
    let answer = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "shared".into(),
            },
            token,
        ))
        .await;
    match answer {
        Ok(r) => Some(r.into_inner().api_key),
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("GetKey: {s:?}"),
    }
}

/// Polls GetKey on `server` until it gives `expected`; the time it took. Fails after
/// `LIMIT`.
async fn until(server: &TestServer, token: &str, expected: Option<&str>, what: &str) -> Duration {
    let started = Instant::now();
    while current(server, token).await.as_deref() != expected {
        assert!(
            started.elapsed() < LIMIT,
            "{what}: not seen within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// A second server on the same SQLite file is refused at start, with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serves_exactly_one_server() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let config = test_config(&db.url);
    let first = App::build(&config).await.expect("first server");
    let Err(refused) = App::build(&config).await else {
        panic!("a second server on one SQLite file must be refused");
    };
    let message = refused.to_string();
    assert!(
        message.contains("SQLite serves exactly one server"),
        "{message}"
    );
    // Once the first is gone, the file is free again.
    drop(first);
    assert!(App::build(&config).await.is_ok(), "the file is free again");
}

async fn propagation(backend: Backend) {
    let a = TestServer::start(backend).await;
    let b = a.replica().await;
    let admin = a.admin_token().await;

    let created = a
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "shared".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    // Verified and read on both, so both may hold it in their caches.
    for _ in 0..3 {
        assert!(a.key_verifies(&admin, &created.api_key).await);
        assert!(b.key_verifies(&admin, &created.api_key).await);
        assert_eq!(
            current(&a, &admin).await.as_deref(),
            Some(&*created.api_key)
        );
        assert_eq!(
            current(&b, &admin).await.as_deref(),
            Some(&*created.api_key)
        );
    }

    // Rotation without grace on B: the old secret dies on A too.
    let rotated = b
        .keys()
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "shared".into(),
                grace_period_seconds: 0,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !b.key_verifies(&admin, &created.api_key).await,
        "at once on B"
    );
    let took = until_refused(&a, &admin, Some(&created.api_key), "rotation on A").await;
    eprintln!("rotation reached the other replica in {took:?}");
    assert!(a.key_verifies(&admin, &rotated.api_key).await);
    let took = until(
        &a,
        &admin,
        Some(&rotated.api_key),
        "GetKey after rotation on A",
    )
    .await;
    eprintln!("GetKey on the other replica gave the rotated secret after {took:?}");

    // Revocation on A: B refuses the current secret.
    for _ in 0..3 {
        assert!(b.key_verifies(&admin, &rotated.api_key).await);
        assert_eq!(
            current(&b, &admin).await.as_deref(),
            Some(&*rotated.api_key)
        );
    }
    a.keys()
        .revoke_key(authed(
            pb::RevokeKeyRequest {
                service_name: "shared".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let took = until_refused(&b, &admin, Some(&rotated.api_key), "revocation on B").await;
    eprintln!("revocation reached the other replica in {took:?}");
    until(&b, &admin, None, "GetKey after revocation on B").await;

    // Logout on B: A refuses the token it has been accepting.
    let user = a.user_token("replicated").await;
    for _ in 0..3 {
        assert!(!a.key_verifies(&user, &rotated.api_key).await);
    }
    b.auth()
        .logout(authed(pb::LogoutRequest {}, &user))
        .await
        .unwrap();
    let took = until_refused(&a, &user, None, "logout on A").await;
    eprintln!("logout reached the other replica in {took:?}");

    b.stop().await;
    a.stop().await;
}

/// The fallback: a replica whose listening connection dies can miss a notification.
/// It must still refuse a key revoked meanwhile within a second (it stops trusting
/// its caches when its own heartbeats stop coming back, and empties them when it
/// reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn a_replica_that_loses_its_listener_still_honours_changes_within_a_second() {
    let a = TestServer::start(Backend::postgres()).await;
    let b = a.replica().await;
    let admin = a.admin_token().await;
    let created = a
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "deaf".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        assert!(b.key_verifies(&admin, &created.api_key).await);
    }
    // Every replica's listening connection, ours included, is killed by the database.
    let db = sea_orm::Database::connect(a.db_url()).await.unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query = 'LISTEN \"kms_changes\"' AND pid <> pg_backend_pid()",
    )
    .await
    .unwrap();
    db.close().await.unwrap();
    a.keys()
        .revoke_key(authed(
            pb::RevokeKeyRequest {
                service_name: "deaf".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let took = until_refused(&b, &admin, Some(&created.api_key), "revocation on B").await;
    eprintln!("revocation reached a replica whose listener was killed in {took:?}");
    b.stop().await;
    a.stop().await;
}
