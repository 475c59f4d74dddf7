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
