//! RotateDataKey and RewrapSecrets through gRPC, in process, on both databases.

use std::collections::BTreeMap;

use kms::{domain::token::SigningAlgorithm, proto::kms::v1 as pb};
use tonic::Code;

use super::{
    all_open, audit_events, create, current, keyring, rewrap_all, rotate, sealed_under, status,
};
use crate::{
    both_backends,
    common::{Backend, TestServer, authed},
};

both_backends!(
    rotate_then_rewrap_moves_every_value,
    keyring_calls_are_admin_only,
    no_secret_at_rest_under_the_keyring
);

async fn rotate_then_rewrap_moves_every_value(backend: Backend) {
    // EdDSA: the private signing key is a sealed value too.
    let server =
        TestServer::start_with(backend, |c| c.jwt_algorithm = SigningAlgorithm::EdDsa).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;

    let first = status(ch, &admin).await;
    assert!(
        first.master_key_id.starts_with("mk-") && first.master_key_id.len() == 19,
        "{first:?}"
    );
    assert_eq!(first.data_keys.len(), 1);
    assert_eq!(current(&first).id, "dk-1");
    assert_eq!(sealed_under(&first, "dk-1"), 1, "the signing key");

    let mut keys = server.keys();
    let mut secrets = BTreeMap::new();
    for i in 0..12 {
        let name = format!("k{i}");
        let made = keys
            .create_key(authed(create(&name, None), &admin))
            .await
            .unwrap()
            .into_inner();
        secrets.insert(name, made.api_key);
    }
    // A rotated key keeps its old secret through the grace period: two values.
    let old_k0 = secrets["k0"].clone();
    let rotated = keys
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "k0".into(),
                grace_period_seconds: 3600,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.insert("k0".into(), rotated.api_key);
    assert_eq!(sealed_under(&status(ch, &admin).await, "dk-1"), 14);

    let after = rotate(ch, &admin).await;
    assert_eq!(after.master_key_id, first.master_key_id);
    assert_eq!(after.data_keys.len(), 2);
    assert_eq!(current(&after).id, "dk-2");
    assert_eq!(
        sealed_under(&after, "dk-1"),
        14,
        "old values stay where they are"
    );
    assert_eq!(sealed_under(&after, "dk-2"), 0);

    // New values go under the new key at once; old ones keep opening.
    let made = keys
        .create_key(authed(create("after", None), &admin))
        .await
        .unwrap()
        .into_inner();
    secrets.insert("after".into(), made.api_key);
    assert_eq!(sealed_under(&status(ch, &admin).await, "dk-2"), 1);
    all_open(ch, &admin, &secrets).await;

    let done = keyring(ch)
        .rewrap_secrets(authed(pb::RewrapSecretsRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.rewrapped, done.remaining), (14, 0));
    let moved = status(ch, &admin).await;
    assert_eq!(sealed_under(&moved, "dk-1"), 0);
    assert_eq!(sealed_under(&moved, "dk-2"), 15);
    // Idempotent.
    assert_eq!(rewrap_all(ch, &admin).await, (0, 1));

    all_open(ch, &admin, &secrets).await;
    let old = keys
        .verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: old_k0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        old.valid,
        "the rotated-out secret, in its grace period: {old:?}"
    );

    for action in ["data_key_rotate", "secrets_rewrap"] {
        let events = audit_events(ch, &admin, action).await;
        assert!(!events.is_empty(), "{action} is audited");
        assert!(events.iter().all(|e| e.actor == crate::common::ADMIN));
    }

    // Started anew, the server opens the re-sealed signing key (it signs the login)
    // and the re-sealed secrets.
    let server = server.restart().await;
    let token = server.admin_token().await;
    all_open(&server.channel, &token, &secrets).await;
    server.stop().await;
}

async fn keyring_calls_are_admin_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let user = server.user_token("alice").await;
    let mut ring = keyring(&server.channel);
    let codes = [
        ring.get_keyring(authed(pb::GetKeyringRequest {}, &user))
            .await
            .unwrap_err()
            .code(),
        ring.rotate_data_key(authed(pb::RotateDataKeyRequest {}, &user))
            .await
            .unwrap_err()
            .code(),
        ring.rewrap_secrets(authed(pb::RewrapSecretsRequest {}, &user))
            .await
            .unwrap_err()
            .code(),
    ];
    assert_eq!(codes, [Code::PermissionDenied; 3]);
    let anonymous = ring
        .get_keyring(pb::GetKeyringRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // Nothing changed.
    let admin = server.admin_token().await;
    assert_eq!(status(&server.channel, &admin).await.data_keys.len(), 1);
    server.stop().await;
}

/// Every secret, the admin's password and the master key are absent from everything
/// stored, after a rotation and a rewrap: on SQLite the database files byte for byte
/// (WAL included), on PostgreSQL every row of every table as text.
async fn no_secret_at_rest_under_the_keyring(backend: Backend) {
    use kms::store::entities::{api_key_secret, data_key, signing_key};
    use sea_orm::{Database, EntityTrait};

    let server =
        TestServer::start_with(backend, |c| c.jwt_algorithm = SigningAlgorithm::EdDsa).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let imported = "plain-text-would-be-a-leak-keyring-0123456789";
    let mut keys = server.keys();
    keys.create_key(authed(create("imported", Some(imported)), &admin))
        .await
        .unwrap();
    let generated = keys
        .create_key(authed(create("generated", None), &admin))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    rotate(ch, &admin).await;
    let later = keys
        .create_key(authed(create("later", None), &admin))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    rewrap_all(ch, &admin).await;
    let master = server.config().master_key.key().unwrap().expose().to_vec();
    use base64::Engine;
    let master_b64 = base64::engine::general_purpose::STANDARD.encode(&master);

    let mut stored: Vec<u8> = Vec::new();
    if let Some(path) = server.db_url().strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap();
        for file in [path.to_owned(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                stored.extend(bytes);
            }
        }
    }
    let db = Database::connect(server.db_url()).await.unwrap();
    for s in api_key_secret::Entity::find().all(&db).await.unwrap() {
        stored.extend(format!("{s:?}").bytes());
        stored.extend(s.sealed);
    }
    for k in signing_key::Entity::find().all(&db).await.unwrap() {
        stored.extend(k.private_sealed);
    }
    for k in data_key::Entity::find().all(&db).await.unwrap() {
        stored.extend(format!("{k:?}").bytes());
        stored.extend(k.wrapped);
    }
    db.close().await.unwrap();
    assert!(stored.len() > 1000, "the scan read the data");
    let contains = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    for secret in [imported, &generated, &later, crate::common::ADMIN_PASSWORD] {
        assert!(
            !contains(secret.as_bytes()),
            "{secret} stored in plain text"
        );
    }
    assert!(!contains(&master), "the master key is stored");
    assert!(
        !contains(master_b64.as_bytes()),
        "the master key is stored (base64)"
    );
    server.stop().await;
}
