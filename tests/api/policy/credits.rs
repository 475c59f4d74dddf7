//! Credits are exact under concurrency, on two servers sharing one database.

use kms::proto::kms::v1::{self as pb, VerifyCode};

use super::{code, create, create_key, verify_with};
use crate::{
    both_backends,
    common::{Backend, TestServer},
};

both_backends!(concurrent_verifies_never_spend_more_credits_than_there_are);

async fn concurrent_verifies_never_spend_more_credits_than_there_are(backend: Backend) {
    let server = TestServer::start(backend.clone()).await;
    // PostgreSQL: two servers on one database. SQLite serves one process per file.
    let replica = match backend {
        Backend::Postgres(_) => Some(server.replica().await),
        Backend::Sqlite => None,
    };
    let admin = server.admin_token().await;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            remaining: Some(20),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let channels = [
        server.channel.clone(),
        replica
            .as_ref()
            .map_or(server.channel.clone(), |r| r.channel.clone()),
    ];
    let calls = (0..50).map(|i| {
        let channel = channels[i % 2].clone();
        let (admin, k) = (admin.clone(), key.api_key.clone());
        tokio::spawn(async move { verify_with(&channel, &admin, &k, &[], None).await })
    });
    let answers: Vec<pb::VerifyKeyResponse> = super::join_all(calls.collect()).await;
    let valid = answers
        .iter()
        .filter(|a| code(a) == VerifyCode::Valid)
        .count();
    let exceeded = answers
        .iter()
        .filter(|a| code(a) == VerifyCode::UsageExceeded)
        .count();
    assert_eq!((valid, exceeded), (20, 30));
    let mut left: Vec<i64> = answers
        .iter()
        .filter(|a| a.valid)
        .filter_map(|a| a.remaining)
        .collect();
    left.sort_unstable();
    assert_eq!(left, (0..20).collect::<Vec<_>>(), "each credit spent once");
    if let Some(replica) = replica {
        replica.stop().await;
    }
    server.stop().await;
}

/// A measurement, not a check: VerifyKey calls/s for a key with credits (one
/// conditional UPDATE per VALID answer) beside one without (the cached path). Run with
/// `cargo test --test api -- --ignored credits_path --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints calls/s"]
async fn credits_path_calls_per_second() {
    let mut backends = vec![Backend::Sqlite];
    backends.extend(Backend::postgres());
    for backend in backends {
        let name = if matches!(backend, Backend::Sqlite) {
            "SQLite"
        } else {
            "PostgreSQL"
        };
        let server = TestServer::start(backend).await;
        let admin = server.admin_token().await;
        for (label, remaining) in [("no credits", None), ("credits", Some(1_000_000_000_000))] {
            let key = create_key(
                &server,
                &admin,
                pb::CreateKeyRequest {
                    remaining,
                    ..create(label.replace(' ', "-").as_str())
                },
            )
            .await
            .unwrap();
            let started = std::time::Instant::now();
            let clients = (0..16).map(|_| {
                let (ch, admin, k) = (server.channel.clone(), admin.clone(), key.api_key.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while started.elapsed() < std::time::Duration::from_secs(5) {
                        assert!(verify_with(&ch, &admin, &k, &[], None).await.valid);
                        n += 1;
                    }
                    n
                })
            });
            let calls: u64 = super::join_all(clients.collect()).await.into_iter().sum();
            eprintln!(
                "{name}, {label}: {:.0} VerifyKey calls/s (16 in flight)",
                calls as f64 / 5.0
            );
        }
        server.stop().await;
    }
}
