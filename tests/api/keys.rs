//! kms.v1.Keys: every RPC, its rules and its error codes.

use std::time::Duration;

use kms::{domain::api_key as key_format, proto::kms::v1 as pb};
use tonic::Code;

use crate::{
    both_backends,
    common::{
        ADMIN, Backend, JWT_SECRET, TestServer, alg_none_token, assert_status, authed, claims, now,
        sign,
    },
};

fn create(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        api_key: None,
        description: String::new(),
        ttl_seconds: 0,
        ..Default::default()
    }
}

fn get(name: &str) -> pb::GetKeyRequest {
    pb::GetKeyRequest {
        service_name: name.into(),
    }
}

fn rotate(name: &str, grace: i64) -> pb::RotateKeyRequest {
    pb::RotateKeyRequest {
        service_name: name.into(),
        grace_period_seconds: grace,
    }
}

fn revoke(name: &str) -> pb::RevokeKeyRequest {
    pb::RevokeKeyRequest {
        service_name: name.into(),
    }
}

fn list(page_size: i32, page_token: &str) -> pb::ListKeysRequest {
    pb::ListKeysRequest {
        page_size,
        page_token: page_token.into(),
    }
}

fn verify(key: &str) -> pb::VerifyKeyRequest {
    pb::VerifyKeyRequest {
        api_key: key.into(),
        ..Default::default()
    }
}

fn wrap<T>(message: T, token: &Option<String>) -> tonic::Request<T> {
    match token {
        Some(t) => authed(message, t),
        None => tonic::Request::new(message),
    }
}

async fn verifies(server: &TestServer, token: &str, key: &str) -> pb::VerifyKeyResponse {
    server
        .keys()
        .verify_key(authed(verify(key), token))
        .await
        .unwrap_or_else(|s| panic!("VerifyKey must not fail: {s:?}"))
        .into_inner()
}

both_backends!(
    every_keys_call_needs_a_valid_token,
    admin_calls_need_exactly_admin,
    create_generates_and_get_returns_the_secret,
    create_imports_and_validates,
    create_rejects_duplicates_and_bad_names,
    ttl_expires_keys,
    list_pages_in_name_order,
    rotate_with_grace_then_without,
    revoke_stops_every_secret_and_frees_the_name,
    verify_never_fails_for_bad_keys,
    secrets_are_not_stored_in_plain_text,
);

async fn every_keys_call_needs_a_valid_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut keys = server.keys();
    let expired = sign(&claims(ADMIN, &["admin"], now() - 7200, 3600), JWT_SECRET);
    let other_secret = sign(
        &claims(ADMIN, &["admin"], now(), 3600),
        b"some-other-secret-some-other-secret-xx",
    );
    let none = alg_none_token(&claims(ADMIN, &["admin"], now(), 3600));
    for token in [
        None,
        Some(expired),
        Some(other_secret),
        Some(none),
        Some("junk".into()),
    ] {
        assert_status(
            keys.create_key(wrap(create("svc"), &token)).await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            keys.get_key(wrap(get("svc"), &token)).await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            keys.list_keys(wrap(list(0, ""), &token)).await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            keys.rotate_key(wrap(rotate("svc", 0), &token)).await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            keys.revoke_key(wrap(revoke("svc"), &token)).await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            keys.verify_key(wrap(verify("k"), &token)).await,
            Code::Unauthenticated,
            "",
        );
    }
    // Nothing was created by any of those.
    let admin = server.admin_token().await;
    assert_status(
        keys.get_key(authed(get("svc"), &admin)).await,
        Code::NotFound,
        "svc",
    );
    server.stop().await;
}

async fn admin_calls_need_exactly_admin(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let created = keys
        .create_key(authed(create("svc"), &admin))
        .await
        .unwrap()
        .into_inner();

    let user = server.user_token("plainuser").await;
    // A real user whose roles merely look like admin.
    server
        .auth()
        .register(authed(
            pb::RegisterRequest {
                username: "eve".into(),
                password: "eve-password-1234".into(),
                roles: vec!["notadmin".into(), "admins".into(), "administrator".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    let notadmin = server.login("eve", "eve-password-1234").await;
    for token in [user.clone(), notadmin] {
        assert_status(
            keys.create_key(authed(create("svc2"), &token)).await,
            Code::PermissionDenied,
            "admin",
        );
        assert_status(
            keys.get_key(authed(get("svc"), &token)).await,
            Code::PermissionDenied,
            "admin",
        );
        assert_status(
            keys.list_keys(authed(list(0, ""), &token)).await,
            Code::PermissionDenied,
            "admin",
        );
        assert_status(
            keys.rotate_key(authed(rotate("svc", 0), &token)).await,
            Code::PermissionDenied,
            "admin",
        );
        assert_status(
            keys.revoke_key(authed(revoke("svc"), &token)).await,
            Code::PermissionDenied,
            "admin",
        );
        // VerifyKey is for any token.
        let v = verifies(&server, &token, &created.api_key).await;
        assert!(v.valid);
        assert_eq!(v.service_name, "svc");
    }
    // The key is untouched by the denied calls.
    let got = keys
        .get_key(authed(get("svc"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.api_key, created.api_key);
    server.stop().await;
}

async fn create_generates_and_get_returns_the_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let mut req = create("billing-api.v2_x");
    req.description = "billing service, production".into();
    let created = keys
        .create_key(authed(req, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.service_name, "billing-api.v2_x");
    assert_eq!(created.description, "billing service, production");
    let key = &created.api_key;
    assert!(key.starts_with("kms_"), "{key}");
    assert!(key.len() >= 4 + 43, "{key}");
    assert!(key[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(key_format::checksum_ok(key));
    assert_eq!(created.key_prefix, key[..12]);
    assert!(created.created_at.is_some() && created.updated_at.is_some());
    assert!(created.expires_at.is_none());

    let got = keys
        .get_key(authed(get("billing-api.v2_x"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let other = keys
        .create_key(authed(create("other"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.api_key, created.api_key);

    let v = verifies(&server, &admin, key).await;
    assert!(v.valid);
    assert_eq!(v.service_name, "billing-api.v2_x");
    assert!(v.expires_at.is_none());

    assert_status(
        keys.get_key(authed(get("unknown"), &admin)).await,
        Code::NotFound,
        "unknown",
    );
    assert_status(
        keys.get_key(authed(get("bad name"), &admin)).await,
        Code::InvalidArgument,
        "service_name",
    );
    server.stop().await;
}

async fn create_imports_and_validates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let legacy = "legacy-0123456789abcdefghijklmnopqrstuv~!";
    let mut req = create("legacy");
    req.api_key = Some(legacy.into());
    let created = keys
        .create_key(authed(req, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.api_key, legacy);
    // Imported keys show at most 8 characters (a quarter of the shortest import).
    assert_eq!(created.key_prefix, "legacy-0");
    assert!(verifies(&server, &admin, legacy).await.valid);

    let bad: &[String] = &[
        "k".repeat(31),
        "k".repeat(257),
        format!("{} {}", "k".repeat(20), "k".repeat(20)),
        format!("{}\n", "k".repeat(40)),
        format!("{}é", "k".repeat(40)),
        // Claims the KMS format but the checksum is wrong.
        format!("kms_{}", "A".repeat(49)),
    ];
    for (i, secret) in bad.iter().enumerate() {
        let mut req = create(&format!("imp{i}"));
        req.api_key = Some(secret.clone());
        assert_status(
            keys.create_key(authed(req, &admin)).await,
            Code::InvalidArgument,
            "api_key",
        );
        assert_status(
            keys.get_key(authed(get(&format!("imp{i}")), &admin)).await,
            Code::NotFound,
            "",
        );
    }
    // Exactly 32 and 256 characters are accepted.
    for (name, len) in [("min", 32), ("max", 256)] {
        let mut req = create(name);
        req.api_key = Some(format!("{name}-{}", "z".repeat(len - name.len() - 1)));
        keys.create_key(authed(req, &admin)).await.unwrap();
    }
    // The same secret cannot serve two services.
    let mut req = create("copycat");
    req.api_key = Some(legacy.into());
    assert_status(
        keys.create_key(authed(req, &admin)).await,
        Code::AlreadyExists,
        "api_key",
    );
    // An imported key in KMS format (taken from another KMS) keeps working.
    let exported = key_format::generate().unwrap();
    let mut req = create("migrated");
    req.api_key = Some(exported.clone());
    keys.create_key(authed(req, &admin)).await.unwrap();
    assert!(verifies(&server, &admin, &exported).await.valid);
    server.stop().await;
}

async fn create_rejects_duplicates_and_bad_names(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let first = keys
        .create_key(authed(create("dup"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        keys.create_key(authed(create("dup"), &admin)).await,
        Code::AlreadyExists,
        "dup",
    );
    // The original is unchanged.
    let got = keys
        .get_key(authed(get("dup"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.api_key, first.api_key);

    for name in [
        String::new(),
        "a".repeat(65),
        "has space".into(),
        "slash/x".into(),
        "nul\0".into(),
        "ü".into(),
    ] {
        assert_status(
            keys.create_key(authed(create(&name), &admin)).await,
            Code::InvalidArgument,
            "service_name",
        );
    }
    keys.create_key(authed(create(&"a".repeat(64)), &admin))
        .await
        .unwrap();

    let mut req = create("neg");
    req.ttl_seconds = -1;
    assert_status(
        keys.create_key(authed(req, &admin)).await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    let mut req = create("huge");
    req.ttl_seconds = i64::MAX;
    assert_status(
        keys.create_key(authed(req, &admin)).await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    let mut req = create("ctl");
    req.description = "bell\u{7}".into();
    assert_status(
        keys.create_key(authed(req, &admin)).await,
        Code::InvalidArgument,
        "description",
    );
    server.stop().await;
}

async fn ttl_expires_keys(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let mut req = create("short-lived");
    req.ttl_seconds = 2;
    let created = keys
        .create_key(authed(req, &admin))
        .await
        .unwrap()
        .into_inner();
    let expires = created.expires_at.unwrap().seconds;
    assert!((expires - now() - 2).abs() <= 2);
    let v = verifies(&server, &admin, &created.api_key).await;
    assert!(v.valid);
    assert_eq!(v.expires_at.unwrap().seconds, expires);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Second release: an expired key is EXPIRED, with the key's fields (API.md).
    let expired = verifies(&server, &admin, &created.api_key).await;
    assert!(!expired.valid);
    assert_eq!(expired.code, i32::from(pb::VerifyCode::Expired));
    assert_eq!(expired.service_name, "short-lived");
    // Still listed and readable, with its expiry, so admins can see why it fails.
    let got = keys
        .get_key(authed(get("short-lived"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.expires_at.unwrap().seconds, expires);
    // Rotation renews the lifetime from now.
    let rotated = keys
        .rotate_key(authed(rotate("short-lived", 0), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.expires_at.unwrap().seconds > expires);
    assert!(verifies(&server, &admin, &rotated.api_key).await.valid);
    server.stop().await;
}

async fn list_pages_in_name_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    // Byte order on both backends: uppercase before lowercase, '-' before letters.
    let names = ["delta", "alpha", "Echo", "charlie", "bravo", "golf", "b-x"];
    for name in names {
        keys.create_key(authed(create(name), &admin)).await.unwrap();
    }
    keys.revoke_key(authed(revoke("golf"), &admin))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = keys
            .list_keys(authed(list(2, &token), &admin))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.keys.len() <= 2);
        for k in &page.keys {
            assert!(k.api_key.is_empty(), "ListKeys must not return secrets");
            assert!(k.key_prefix.starts_with("kms_") && k.key_prefix.len() == 12);
            seen.push(k.service_name.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["Echo", "alpha", "b-x", "bravo", "charlie", "delta"]);
    assert_eq!(pages, 3);

    // page_size 0 means the default (50), larger is clamped: all here in one page.
    for size in [0, 5000] {
        let page = keys
            .list_keys(authed(list(size, ""), &admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.keys.len(), 6);
        assert!(page.next_page_token.is_empty());
    }
    assert_status(
        keys.list_keys(authed(list(-1, ""), &admin)).await,
        Code::InvalidArgument,
        "page_size",
    );
    for bad in ["not-a-token", "%%%", "djE6YmFkIG5hbWU"] {
        assert_status(
            keys.list_keys(authed(list(2, bad), &admin)).await,
            Code::InvalidArgument,
            "page_token",
        );
    }
    server.stop().await;
}

async fn rotate_with_grace_then_without(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let v1 = keys
        .create_key(authed(create("rot"), &admin))
        .await
        .unwrap()
        .into_inner();
    // Read first, so that the rotation below has a cached copy to invalidate.
    let got = keys
        .get_key(authed(get("rot"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.api_key, v1.api_key);

    let v2 = keys
        .rotate_key(authed(rotate("rot", 2), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(v2.api_key, v1.api_key);
    assert!(key_format::checksum_ok(&v2.api_key));
    assert_eq!(v2.key_prefix, v2.api_key[..12]);
    assert_eq!(v2.created_at, v1.created_at);
    // Both verify during the grace period; GetKey gives the new one.
    assert!(verifies(&server, &admin, &v1.api_key).await.valid);
    assert!(verifies(&server, &admin, &v2.api_key).await.valid);
    let got = keys
        .get_key(authed(get("rot"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.api_key, v2.api_key);
    // The list shows the new prefix.
    let page = keys
        .list_keys(authed(list(0, ""), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.keys[0].key_prefix, v2.key_prefix);

    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(!verifies(&server, &admin, &v1.api_key).await.valid);
    assert!(verifies(&server, &admin, &v2.api_key).await.valid);

    // Without grace the old secret is invalid at once.
    let v3 = keys
        .rotate_key(authed(rotate("rot", 0), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(!verifies(&server, &admin, &v2.api_key).await.valid);
    assert!(verifies(&server, &admin, &v3.api_key).await.valid);

    for grace in [-1, 30 * 24 * 3600 + 1, i64::MAX, i64::MIN] {
        assert_status(
            keys.rotate_key(authed(rotate("rot", grace), &admin)).await,
            Code::InvalidArgument,
            "grace_period_seconds",
        );
    }
    // 30 days exactly is allowed.
    keys.rotate_key(authed(rotate("rot", 30 * 24 * 3600), &admin))
        .await
        .unwrap();
    assert_status(
        keys.rotate_key(authed(rotate("nope", 0), &admin)).await,
        Code::NotFound,
        "nope",
    );
    server.stop().await;
}

async fn revoke_stops_every_secret_and_frees_the_name(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let v1 = keys
        .create_key(authed(create("rev"), &admin))
        .await
        .unwrap()
        .into_inner();
    let v2 = keys
        .rotate_key(authed(rotate("rev", 3600), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(verifies(&server, &admin, &v1.api_key).await.valid);
    // Read first, so that the revocation below has a cached copy to invalidate.
    let got = keys
        .get_key(authed(get("rev"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.api_key, v2.api_key);

    // RevokeKey answers with an empty message.
    let () = keys
        .revoke_key(authed(revoke("rev"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(!verifies(&server, &admin, &v1.api_key).await.valid);
    assert!(!verifies(&server, &admin, &v2.api_key).await.valid);
    assert_status(
        keys.get_key(authed(get("rev"), &admin)).await,
        Code::NotFound,
        "rev",
    );
    assert_status(
        keys.revoke_key(authed(revoke("rev"), &admin)).await,
        Code::NotFound,
        "rev",
    );
    assert_status(
        keys.rotate_key(authed(rotate("rev", 0), &admin)).await,
        Code::NotFound,
        "rev",
    );

    // The name is free again, with a new secret; the old ones stay dead.
    let v3 = keys
        .create_key(authed(create("rev"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(verifies(&server, &admin, &v3.api_key).await.valid);
    assert!(!verifies(&server, &admin, &v1.api_key).await.valid);
    assert!(!verifies(&server, &admin, &v2.api_key).await.valid);
    assert_status(
        keys.revoke_key(authed(revoke("unknown"), &admin)).await,
        Code::NotFound,
        "unknown",
    );
    server.stop().await;
}

async fn verify_never_fails_for_bad_keys(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let user = server.user_token("peer").await;
    let created = server
        .keys()
        .create_key(authed(create("svc"), &admin))
        .await
        .unwrap()
        .into_inner();
    let mut typo = created.api_key.clone().into_bytes();
    typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [
        String::new(),
        "kms_".into(),
        typo,
        key_format::generate().unwrap(),
        "k".repeat(300),
        "\0\u{1}garbage".into(),
        format!("{} ", created.api_key),
    ] {
        let v = verifies(&server, &user, &bad).await;
        // NOT_FOUND and nothing else (the code is the second release's addition).
        let not_found = pb::VerifyKeyResponse {
            code: pb::VerifyCode::NotFound.into(),
            ..Default::default()
        };
        assert_eq!(v, not_found, "{bad:?}");
    }
    assert!(verifies(&server, &user, &created.api_key).await.valid);
    server.stop().await;
}

async fn secrets_are_not_stored_in_plain_text(backend: Backend) {
    use kms::store::entities::{api_key, api_key_secret, user, user_role};
    use sea_orm::{Database, EntityTrait};
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let imported = "plain-text-would-be-a-leak-0123456789";
    let mut req = create("scan");
    req.api_key = Some(imported.into());
    server.keys().create_key(authed(req, &admin)).await.unwrap();
    let generated = server
        .keys()
        .create_key(authed(create("scan2"), &admin))
        .await
        .unwrap()
        .into_inner();
    // Read every row of every table back, blobs as text, and look for the secrets.
    let db = Database::connect(server.db_url()).await.unwrap();
    let mut dump = String::new();
    for u in user::Entity::find().all(&db).await.unwrap() {
        dump.push_str(&format!("{u:?}\n"));
    }
    for r in user_role::Entity::find().all(&db).await.unwrap() {
        dump.push_str(&format!("{r:?}\n"));
    }
    for k in api_key::Entity::find().all(&db).await.unwrap() {
        dump.push_str(&format!("{k:?}\n"));
    }
    for s in api_key_secret::Entity::find().all(&db).await.unwrap() {
        dump.push_str(&format!(
            "{} {} {}\n",
            s.key_prefix,
            String::from_utf8_lossy(&s.sealed),
            String::from_utf8_lossy(&s.digest)
        ));
    }
    db.close().await.unwrap();
    assert!(dump.contains("scan2"), "the dump should contain the rows");
    for secret in [
        imported,
        generated.api_key.as_str(),
        crate::common::ADMIN_PASSWORD,
    ] {
        assert!(!dump.contains(secret), "{secret} stored in plain text");
    }
    assert!(dump.contains("argon2id"));
    server.stop().await;
}

both_backends!(
    rotation_never_revives_or_stretches_an_expired_secret,
    a_spent_secret_is_never_imported_again
);

async fn rotation_never_revives_or_stretches_an_expired_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let with_ttl = |name: &str, ttl| {
        let mut req = create(name);
        req.ttl_seconds = ttl;
        req
    };
    let expired = keys
        .create_key(authed(with_ttl("expired", 1), &admin))
        .await
        .unwrap()
        .into_inner();
    let living = keys
        .create_key(authed(with_ttl("living", 4), &admin))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Rotating an expired key: a new secret, but the expired one stays dead.
    let renewed = keys
        .rotate_key(authed(rotate("expired", 3600), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(verifies(&server, &admin, &renewed.api_key).await.valid);
    assert!(!verifies(&server, &admin, &expired.api_key).await.valid);

    // Rotating a living key with a long grace: the old secret ends at the old expiry.
    let rotated = keys
        .rotate_key(authed(rotate("living", 3600), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(verifies(&server, &admin, &living.api_key).await.valid);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        !verifies(&server, &admin, &living.api_key).await.valid,
        "the grace outlived the TTL"
    );
    assert!(verifies(&server, &admin, &rotated.api_key).await.valid);
    server.stop().await;
}

/// A rotated-out secret is burned, in its grace period and after it: importing it again
/// under another name is refused, so a secret taken out of service (perhaps because it
/// leaked) never verifies again.
async fn a_spent_secret_is_never_imported_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let secret = "a-secret-that-moves-between-services-01";
    let mut req = create("first-home");
    req.api_key = Some(secret.into());
    keys.create_key(authed(req, &admin)).await.unwrap();
    keys.rotate_key(authed(rotate("first-home", 1), &admin))
        .await
        .unwrap();
    let mut req = create("second-home");
    req.api_key = Some(secret.into());
    // Still in its grace period: taken.
    assert_status(
        keys.create_key(authed(req.clone(), &admin)).await,
        Code::AlreadyExists,
        "api_key",
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Grace over: burned, not free.
    assert_status(
        keys.create_key(authed(req, &admin)).await,
        Code::AlreadyExists,
        "issued before",
    );
    assert!(!verifies(&server, &admin, secret).await.valid);
    server.stop().await;
}
