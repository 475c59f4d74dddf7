//! Races: many concurrent calls on one name give exactly one winner and the
//! specified code for everyone else, never INTERNAL or UNAVAILABLE.

use kms::proto::kms::v1 as pb;
use tonic::Code;

use super::create;
use crate::{
    both_backends,
    common::{Backend, TestServer, authed},
};

both_backends!(
    concurrent_creates_of_one_name_have_one_winner,
    concurrent_rotations_leave_one_current_secret,
    concurrent_registrations_make_one_account,
);

const CREATES: usize = 100;
const ROTATIONS: usize = 50;
const REGISTRATIONS: usize = 20;
/// Grace period of every concurrent rotation: each secret handed out stays valid.
const GRACE_SECONDS: i64 = 600;

/// Tallies the answers: (successes, other codes seen, in order).
fn tally<T>(results: Vec<Result<T, tonic::Status>>) -> (Vec<T>, Vec<tonic::Status>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for result in results {
        match result {
            Ok(v) => ok.push(v),
            Err(s) => failed.push(s),
        }
    }
    (ok, failed)
}

async fn concurrent_creates_of_one_name_have_one_winner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let calls: Vec<_> = (0..CREATES)
        .map(|_| {
            let mut keys = server.keys();
            let admin = admin.clone();
            tokio::spawn(async move { keys.create_key(authed(create("race"), &admin)).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let (ok, failed) = tally(results);
    let unexpected: Vec<_> = failed
        .iter()
        .filter(|s| s.code() != Code::AlreadyExists)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{CREATES} concurrent CreateKey: only OK or ALREADY_EXISTS, got {} others: {unexpected:?}",
        unexpected.len()
    );
    assert_eq!(ok.len(), 1, "exactly one CreateKey succeeds");
    // The winner's secret is the key's.
    let winner = ok[0].get_ref().api_key.clone();
    let current = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "race".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert_eq!(current, winner);
    server.stop().await;
}

async fn concurrent_rotations_leave_one_current_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let first = keys
        .create_key(authed(create("spin"), &admin))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let calls: Vec<_> = (0..ROTATIONS)
        .map(|_| {
            let mut keys = server.keys();
            let admin = admin.clone();
            tokio::spawn(async move {
                keys.rotate_key(authed(
                    pb::RotateKeyRequest {
                        service_name: "spin".into(),
                        grace_period_seconds: GRACE_SECONDS,
                    },
                    &admin,
                ))
                .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let (ok, failed) = tally(results);
    assert!(
        failed.is_empty(),
        "{ROTATIONS} concurrent RotateKey: every one succeeds, {} failed: {failed:?}",
        failed.len()
    );
    let returned: Vec<String> = ok.into_iter().map(|r| r.into_inner().api_key).collect();
    let current = keys
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "spin".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert!(
        returned.contains(&current),
        "the current secret is one that a rotation returned"
    );
    // Every secret handed out (and the first) is current or inside its grace period.
    for secret in returned.iter().chain([&first]) {
        let valid = keys
            .verify_key(authed(
                pb::VerifyKeyRequest {
                    api_key: secret.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .valid;
        assert!(valid, "a returned secret does not verify");
    }
    // Exactly one current secret is stored, and one row per secret handed out.
    use kms::store::entities::api_key_secret;
    use sea_orm::{ColumnTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
    let db = Database::connect(server.db_url()).await.unwrap();
    let current_rows = api_key_secret::Entity::find()
        .filter(api_key_secret::Column::RetiresAt.is_null())
        .count(&db)
        .await
        .unwrap();
    assert_eq!(current_rows, 1, "exactly one current secret");
    let all_rows = api_key_secret::Entity::find().count(&db).await.unwrap();
    assert_eq!(
        all_rows,
        ROTATIONS as u64 + 1,
        "one secret per rotation, plus the first"
    );
    db.close().await.unwrap();
    server.stop().await;
}

async fn concurrent_registrations_make_one_account(backend: Backend) {
    let server = TestServer::start(backend).await;
    let calls: Vec<_> = (0..REGISTRATIONS)
        .map(|i| {
            let mut auth = server.auth();
            tokio::spawn(async move {
                auth.register(pb::RegisterRequest {
                    username: "same".into(),
                    password: format!("password-number-{i}"),
                    roles: vec![],
                })
                .await
                .map(|_| i)
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let (ok, failed) = tally(results);
    let unexpected: Vec<_> = failed
        .iter()
        .filter(|s| s.code() != Code::AlreadyExists)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{REGISTRATIONS} concurrent Register: only OK or ALREADY_EXISTS, got {unexpected:?}"
    );
    assert_eq!(ok.len(), 1, "exactly one Register succeeds");
    // One account, with the winner's password.
    let admin = server.admin_token().await;
    let users = kms::proto::kms::v1::users_client::UsersClient::new(server.channel.clone())
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: 1000,
                page_token: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.iter().filter(|u| u.username == "same").count(), 1);
    server
        .login("same", &format!("password-number-{}", ok[0]))
        .await;
    server.stop().await;
}
