//! CreateKey, UpdateKey, GetKey and ListKeys with the policy fields; validation that
//! names the field and writes nothing; the audit record; the migration on keys of the
//! first release.

use std::time::{Duration, Instant};

use kms::{
    migrations::Migrator,
    proto::kms::v1 as pb,
    store::{StoredPolicy, entities::api_key},
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    Database, EntityTrait,
};
use sea_orm_migration::MigratorTrait;
use tonic::Code;

use super::{create, create_key, limit, strings, update, verify_with};
use crate::{
    both_backends,
    common::{Backend, TestDb, TestServer, assert_status, authed},
};

both_backends!(
    create_get_and_list_show_the_policy,
    bad_fields_are_invalid_argument_naming_the_field_and_write_nothing,
    update_changes_only_masked_fields_and_is_audited,
    update_is_honoured_on_a_replica_within_a_second,
    the_migration_keeps_first_release_keys_open,
);

async fn create_get_and_list_show_the_policy(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let created = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            scopes: strings(&["b:read", "a:*", "b:read"]),
            metadata: [("team".to_owned(), "billing".to_owned())].into(),
            rate_limit: limit(10, 60),
            remaining: Some(100),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    assert_eq!(
        created.scopes,
        strings(&["a:*", "b:read"]),
        "sorted, unique"
    );
    assert!(created.enabled, "new keys are enabled");
    assert_eq!(created.remaining, Some(100));
    assert_eq!(created.rate_limit, limit(10, 60));
    assert_eq!(created.metadata["team"], "billing");
    assert!(created.last_used_at.is_none());

    let got = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "svc".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.scopes, created.scopes);
    assert_eq!(got.metadata, created.metadata);
    assert_eq!(
        (got.enabled, got.remaining, got.rate_limit),
        (true, Some(100), limit(10, 60))
    );

    let plain = create_key(&server, &admin, create("plain")).await.unwrap();
    assert!(plain.scopes.is_empty() && plain.metadata.is_empty() && plain.enabled);
    assert_eq!((plain.rate_limit, plain.remaining), (None, None));

    let listed = server
        .keys()
        .list_keys(authed(pb::ListKeysRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].scopes, created.scopes);
    assert_eq!(listed[1].remaining, Some(100));
    assert!(listed[1].api_key.is_empty());
    server.stop().await;
}

async fn bad_fields_are_invalid_argument_naming_the_field_and_write_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let cases: Vec<(pb::CreateKeyRequest, &str)> = vec![
        (
            pb::CreateKeyRequest {
                scopes: strings(&["a b"]),
                ..create("x")
            },
            "scopes",
        ),
        (
            pb::CreateKeyRequest {
                scopes: strings(&["a*b"]),
                ..create("x")
            },
            "scopes",
        ),
        (
            pb::CreateKeyRequest {
                scopes: strings(&[""]),
                ..create("x")
            },
            "scopes",
        ),
        (
            pb::CreateKeyRequest {
                scopes: (0..65).map(|i| format!("s{i}")).collect(),
                ..create("x")
            },
            "scopes",
        ),
        (
            pb::CreateKeyRequest {
                metadata: [("bad key".into(), String::new())].into(),
                ..create("x")
            },
            "metadata",
        ),
        (
            pb::CreateKeyRequest {
                metadata: [("k".into(), "v".repeat(1025))].into(),
                ..create("x")
            },
            "metadata",
        ),
        (
            pb::CreateKeyRequest {
                metadata: (0..33).map(|i| (format!("k{i}"), String::new())).collect(),
                ..create("x")
            },
            "metadata",
        ),
        (
            pb::CreateKeyRequest {
                rate_limit: limit(0, 60),
                ..create("x")
            },
            "rate_limit.requests",
        ),
        (
            pb::CreateKeyRequest {
                rate_limit: limit(1_000_000_001, 60),
                ..create("x")
            },
            "rate_limit.requests",
        ),
        (
            pb::CreateKeyRequest {
                rate_limit: limit(1, 0),
                ..create("x")
            },
            "rate_limit.window_seconds",
        ),
        (
            pb::CreateKeyRequest {
                rate_limit: limit(1, 86_401),
                ..create("x")
            },
            "rate_limit.window_seconds",
        ),
        (
            pb::CreateKeyRequest {
                remaining: Some(-1),
                ..create("x")
            },
            "remaining",
        ),
        (
            pb::CreateKeyRequest {
                remaining: Some(1_000_000_000_001),
                ..create("x")
            },
            "remaining",
        ),
    ];
    for (req, field) in cases {
        assert_status(
            create_key(&server, &admin, req).await,
            Code::InvalidArgument,
            field,
        );
    }
    let none = server
        .keys()
        .list_keys(authed(pb::ListKeysRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(none.is_empty(), "nothing half-written: {none:?}");

    let key = create_key(&server, &admin, create("svc")).await.unwrap();
    let ch = &server.channel;
    assert_status(
        update(ch, &admin, "svc", &[], |_| {}).await,
        Code::InvalidArgument,
        "update_mask",
    );
    assert_status(
        update(ch, &admin, "svc", &["nope"], |_| {}).await,
        Code::InvalidArgument,
        "nope",
    );
    assert_status(
        update(ch, &admin, "svc", &["api_key"], |_| {}).await,
        Code::InvalidArgument,
        "update_mask",
    );
    // A good field beside a bad one: neither is written.
    let both = update(ch, &admin, "svc", &["description", "scopes"], |r| {
        r.description = "changed".into();
        r.scopes = strings(&["bad scope"]);
    })
    .await;
    assert_status(both, Code::InvalidArgument, "scopes");
    assert_status(
        update(ch, &admin, "svc", &["rate_limit"], |r| {
            r.rate_limit = limit(5, 0)
        })
        .await,
        Code::InvalidArgument,
        "rate_limit.window_seconds",
    );
    assert_status(
        update(ch, &admin, "svc", &["remaining"], |r| {
            r.remaining = Some(-5)
        })
        .await,
        Code::InvalidArgument,
        "remaining",
    );
    assert_status(
        update(ch, &admin, "svc", &["ttl_seconds"], |r| r.ttl_seconds = -1).await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    assert_status(
        update(ch, &admin, "nobody", &["enabled"], |_| {}).await,
        Code::NotFound,
        "nobody",
    );
    assert_status(
        update(ch, &admin, "bad name!", &["enabled"], |_| {}).await,
        Code::InvalidArgument,
        "service_name",
    );
    let user = server.user_token("carol").await;
    assert_status(
        update(ch, &user, "svc", &["enabled"], |_| {}).await,
        Code::PermissionDenied,
        "",
    );
    let after = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "svc".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.description, key.description);
    assert!(after.scopes.is_empty() && after.enabled);

    // VerifyKey's own fields.
    let mut keys = server.keys();
    for (req, field) in [
        (
            pb::VerifyKeyRequest {
                required_scopes: strings(&["a:*"]),
                ..Default::default()
            },
            "required_scopes",
        ),
        (
            pb::VerifyKeyRequest {
                required_scopes: strings(&["a b"]),
                ..Default::default()
            },
            "required_scopes",
        ),
        (
            pb::VerifyKeyRequest {
                required_scopes: (0..65).map(|i| format!("s{i}")).collect(),
                ..Default::default()
            },
            "required_scopes",
        ),
        (
            pb::VerifyKeyRequest {
                cost: Some(-1),
                ..Default::default()
            },
            "cost",
        ),
        (
            pb::VerifyKeyRequest {
                cost: Some(1_000_001),
                ..Default::default()
            },
            "cost",
        ),
    ] {
        let req = pb::VerifyKeyRequest {
            api_key: key.api_key.clone(),
            ..req
        };
        assert_status(
            keys.verify_key(authed(req, &admin)).await,
            Code::InvalidArgument,
            field,
        );
    }
    server.stop().await;
}

async fn update_changes_only_masked_fields_and_is_audited(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let created = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            description: "first".into(),
            scopes: strings(&["a"]),
            rate_limit: limit(5, 10),
            remaining: Some(3),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let ch = &server.channel;
    // Fields outside the mask are ignored, whatever they hold.
    let updated = update(ch, &admin, "svc", &["scopes", "metadata"], |r| {
        r.scopes = strings(&["x:*", "x:*"]);
        r.metadata = [("env".into(), "prod".into())].into();
        r.description = "ignored".into();
        r.remaining = Some(99);
    })
    .await
    .unwrap();
    assert!(
        updated.api_key.is_empty(),
        "no secret in UpdateKey's answer"
    );
    assert_eq!(updated.scopes, strings(&["x:*"]));
    assert_eq!(updated.metadata["env"], "prod");
    assert_eq!(updated.description, "first");
    assert_eq!(updated.remaining, Some(3));
    assert_eq!(updated.rate_limit, limit(5, 10));

    // Masked and unset: the limit and the credits go.
    let cleared = update(
        ch,
        &admin,
        "svc",
        &["rate_limit", "remaining", "enabled"],
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (cleared.rate_limit, cleared.remaining, cleared.enabled),
        (None, None, false)
    );

    let refilled = update(
        ch,
        &admin,
        "svc",
        &["remaining", "enabled", "description", "ttl_seconds"],
        |r| {
            r.remaining = Some(50);
            r.enabled = true;
            r.description = "second".into();
            r.ttl_seconds = 3600;
        },
    )
    .await
    .unwrap();
    assert_eq!((refilled.remaining, refilled.enabled), (Some(50), true));
    assert_eq!(refilled.description, "second");
    let expires = refilled.expires_at.unwrap().seconds - crate::common::now();
    assert!((3590..=3600).contains(&expires), "{expires}");
    let never = update(ch, &admin, "svc", &["ttl_seconds"], |r| r.ttl_seconds = 0)
        .await
        .unwrap();
    assert!(never.expires_at.is_none());
    let verified = verify_with(ch, &admin, &created.api_key, &["x:y"], None).await;
    assert!(verified.valid);
    assert_eq!(verified.remaining, Some(49));

    let trail = pb::audit_client::AuditClient::new(server.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                action: "key_update".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(trail.len(), 4, "{trail:?}");
    assert!(
        trail
            .iter()
            .all(|e| e.target == "svc" && e.outcome == "success")
    );
    server.stop().await;
}

async fn update_is_honoured_on_a_replica_within_a_second(backend: Backend) {
    let server = TestServer::start(backend.clone()).await;
    if matches!(backend, Backend::Sqlite) {
        // One replica per SQLite file: nothing to follow.
        server.stop().await;
        return;
    }
    let replica = server.replica().await;
    let admin = server.admin_token().await;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            scopes: strings(&["a"]),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    // Warm the replica's cache with the old policy (and wait for its feed to be trusted).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !verify_with(&replica.channel, &admin, &key.api_key, &["a"], None)
        .await
        .valid
    {
        assert!(Instant::now() < deadline, "replica never verified the key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        verify_with(&replica.channel, &admin, &key.api_key, &["a"], None)
            .await
            .valid
    );
    update(&server.channel, &admin, "svc", &["enabled"], |r| {
        r.enabled = false
    })
    .await
    .unwrap();
    let changed = Instant::now();
    loop {
        let answer = verify_with(&replica.channel, &admin, &key.api_key, &["a"], None).await;
        if super::code(&answer) == pb::VerifyCode::Disabled {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "update not honoured within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.stop().await;
    server.stop().await;
}

async fn the_migration_keeps_first_release_keys_open(backend: Backend) {
    let test_db = TestDb::new(&backend).await;
    let db = Database::connect(test_db.url.as_str()).await.unwrap();
    let mine = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261217_000001_key_policy")
        .unwrap();
    Migrator::up(&db, Some(u32::try_from(mine).unwrap()))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    for name in ["old-a", "old-b"] {
        api_key::Entity::insert(api_key::ActiveModel {
            id: NotSet,
            service_name: Set(name.into()),
            description: Set("from the first release".into()),
            ttl_seconds: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            expires_at: Set(None),
            revoked_at: Set(None),
            ..Default::default()
        })
        // Only the id back: this schema has none of the new columns yet.
        .exec(&db)
        .await
        .unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    let keys = api_key::Entity::find().all(&db).await.unwrap();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        assert_eq!(StoredPolicy::of(key), StoredPolicy::open(), "{key:?}");
        assert!(key.last_used_at.is_none());
    }
    db.close().await.unwrap();
}
