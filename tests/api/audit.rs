//! kms.v1.Audit: security events, recorded with the change they describe.

use kms::proto::kms::v1::{self as pb, audit_client::AuditClient, users_client::UsersClient};
use tonic::Code;

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, assert_status, authed},
};

async fn events(
    server: &TestServer,
    admin: &str,
    filter: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    let mut all = Vec::new();
    let mut request = filter;
    loop {
        let page = AuditClient::new(server.channel.clone())
            .list_audit_events(authed(request.clone(), admin))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

fn has(events: &[pb::AuditEvent], actor: &str, action: &str, target: &str, outcome: &str) -> bool {
    events.iter().any(|e| {
        e.actor == actor && e.action == action && e.target == target && e.outcome == outcome
    })
}

both_backends!(
    security_events_are_recorded,
    audit_listing_filters_and_pages
);

async fn security_events_are_recorded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth();
    let mut keys = server.keys();
    let _ = auth
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: "wrong-password-1".into(),
        })
        .await;
    let mut login = tonic::Request::new(pb::LoginRequest {
        username: ADMIN.into(),
        password: ADMIN_PASSWORD.into(),
    });
    login
        .metadata_mut()
        .insert("x-request-id", "trace-me-42".parse().unwrap());
    let session = auth.login(login).await.unwrap();
    assert_eq!(
        session.metadata().get("x-request-id").unwrap(),
        "trace-me-42"
    );
    let session = session.into_inner();
    let admin = session.access_token.clone();

    let created = keys
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "audited".into(),
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
    // A refused duplicate records no creation.
    let _ = keys
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "audited".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    keys.get_key(authed(
        pb::GetKeyRequest {
            service_name: "audited".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    let rotated = keys
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "audited".into(),
                grace_period_seconds: 0,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    keys.verify_key(authed(
        pb::VerifyKeyRequest {
            api_key: created.api_key.clone(),
            ..Default::default()
        },
        &admin,
    ))
    .await
    .unwrap();
    keys.revoke_key(authed(
        pb::RevokeKeyRequest {
            service_name: "audited".into(),
        },
        &admin,
    ))
    .await
    .unwrap();

    let password = "gina-password-123";
    auth.register(pb::RegisterRequest {
        username: "gina".into(),
        password: password.into(),
        roles: vec![],
    })
    .await
    .unwrap();
    let mut users = UsersClient::new(server.channel.clone());
    users
        .set_roles(authed(
            pb::SetRolesRequest {
                username: "gina".into(),
                roles: vec!["ops".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    users
        .change_password(authed(
            pb::ChangePasswordRequest {
                username: "gina".into(),
                old_password: String::new(),
                new_password: "gina-new-password".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    users
        .delete_user(authed(
            pb::DeleteUserRequest {
                username: "gina".into(),
            },
            &admin,
        ))
        .await
        .unwrap();

    let refreshed = auth
        .refresh(pb::RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let _ = auth
        .refresh(pb::RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    let fresh = server.admin_token().await;
    auth.logout(authed(pb::LogoutRequest {}, &fresh))
        .await
        .unwrap();
    let reader = server.admin_token().await;

    let all = events(&server, &reader, pb::ListAuditEventsRequest::default()).await;
    let prefix = &created.api_key[..12];
    for (actor, action, target, outcome) in [
        ("anonymous", "login", ADMIN, "failure"),
        (ADMIN, "login", ADMIN, "success"),
        (ADMIN, "key_create", "audited", "success"),
        (ADMIN, "key_get", "audited", "success"),
        (ADMIN, "key_rotate", "audited", "success"),
        (ADMIN, "key_verify", prefix, "failure"),
        (ADMIN, "key_revoke", "audited", "success"),
        ("anonymous", "register", "gina", "success"),
        (ADMIN, "roles_set", "gina", "success"),
        (ADMIN, "password_change", "gina", "success"),
        (ADMIN, "user_delete", "gina", "success"),
        (ADMIN, "token_refresh", ADMIN, "success"),
        (ADMIN, "token_reuse_detected", ADMIN, "denied"),
        (ADMIN, "logout", ADMIN, "success"),
    ] {
        assert!(
            has(&all, actor, action, target, outcome),
            "missing {actor} {action} {target} {outcome} in {all:#?}"
        );
    }
    let creations = all.iter().filter(|e| e.action == "key_create").count();
    assert_eq!(creations, 1, "the refused duplicate recorded a creation");
    // Newest first; every row has a time, a request id and the client's address.
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    // (The bootstrap admin was created at start-up, outside any request.)
    assert!(has(&all, "operator", "register", ADMIN, "success"));
    for e in all.iter().filter(|e| e.actor != "operator") {
        assert!(e.time.is_some() && !e.request_id.is_empty(), "{e:?}");
        assert_eq!(e.client_address, "127.0.0.1", "{e:?}");
    }
    let traced: Vec<_> = all
        .iter()
        .filter(|e| e.request_id == "trace-me-42")
        .collect();
    assert_eq!(traced.len(), 1);
    assert_eq!(
        (traced[0].action.as_str(), traced[0].outcome.as_str()),
        ("login", "success")
    );
    // Never a secret.
    let text = format!("{all:?}");
    for secret in [
        ADMIN_PASSWORD,
        password,
        "gina-new-password",
        created.api_key.as_str(),
        rotated.api_key.as_str(),
        session.refresh_token.as_str(),
        refreshed.refresh_token.as_str(),
        admin.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "a secret is in the audit trail: {secret:.10}"
        );
    }
    server.stop().await;
}

async fn audit_listing_filters_and_pages(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    for name in ["f1", "f2", "f3"] {
        keys.create_key(authed(
            pb::CreateKeyRequest {
                service_name: name.into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    }
    let created = events(
        &server,
        &admin,
        pb::ListAuditEventsRequest {
            action: "key_create".into(),
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    let targets: Vec<_> = created.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["f3", "f2", "f1"], "newest first, across pages");
    let by_target = events(
        &server,
        &admin,
        pb::ListAuditEventsRequest {
            target: "f2".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_target.len(), 1);
    let by_actor = events(
        &server,
        &admin,
        pb::ListAuditEventsRequest {
            actor: "nobody".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(by_actor.is_empty());
    // A time range that ends before everything.
    let early = prost_types::Timestamp {
        seconds: 1_000_000_000,
        nanos: 0,
    };
    let none = events(
        &server,
        &admin,
        pb::ListAuditEventsRequest {
            until: Some(early),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let recent = events(
        &server,
        &admin,
        pb::ListAuditEventsRequest {
            since: Some(early),
            action: "key_create".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(recent.len(), 3);

    let mut client = AuditClient::new(server.channel.clone());
    assert_status(
        client
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    page_token: "junk".into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        client
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    since: Some(prost_types::Timestamp {
                        seconds: 2_000_000_000,
                        nanos: 0,
                    }),
                    until: Some(early),
                    ..Default::default()
                },
                &admin,
            ))
            .await,
        Code::InvalidArgument,
        "since",
    );
    let user = server.user_token("curious").await;
    assert_status(
        client
            .list_audit_events(authed(pb::ListAuditEventsRequest::default(), &user))
            .await,
        Code::PermissionDenied,
        "admin",
    );
    assert_status(
        client
            .list_audit_events(pb::ListAuditEventsRequest::default())
            .await,
        Code::Unauthenticated,
        "",
    );
    server.stop().await;
}

both_backends!(throttled_logins_and_signing_key_rotations_are_recorded);

async fn throttled_logins_and_signing_key_rotations_are_recorded(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.login_throttle.max_failures = 1;
        c.jwt_algorithm = kms::domain::token::SigningAlgorithm::EdDsa;
        c.jwt_secret = None;
    })
    .await;
    let admin = server.admin_token().await;
    for _ in 0..3 {
        let _ = server
            .auth()
            .login(pb::LoginRequest {
                username: "victim".into(),
                password: "guess-guess-guess".into(),
            })
            .await;
    }
    let kid = server
        .auth()
        .rotate_signing_key(authed(pb::RotateSigningKeyRequest {}, &admin))
        .await
        .unwrap()
        .into_inner()
        .kid;
    let all = events(&server, &admin, pb::ListAuditEventsRequest::default()).await;
    assert!(
        has(&all, "anonymous", "login_throttled", "victim", "denied"),
        "{all:#?}"
    );
    assert!(
        has(&all, ADMIN, "signing_key_rotate", &kid, "success"),
        "{all:#?}"
    );
    server.stop().await;
}
