//! The field properties, one test per service.

use std::{sync::Arc, time::Instant};

use kms::proto::kms::v1 as pb;
use proptest::{prelude::*, sample::select};
use tonic::{Code, Request, Status};

use crate::{
    both_backends,
    common::{ADMIN, Backend, authed},
};

use super::{oracle::*, values::*, *};

both_backends!(
    hostile_auth_fields,
    hostile_keys_fields,
    hostile_users_fields,
    hostile_audit_fields
);

async fn hostile_auth_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;

    fuzz(
        &ctx,
        "Register",
        || {
            (
                hostile(|| valid_username().prop_filter("admin", not_admin)),
                hostile(valid_password),
                roles(),
                any::<bool>(),
            )
                .prop_map(|(username, password, roles, as_admin)| {
                    (
                        pb::RegisterRequest {
                            username,
                            password,
                            roles,
                        },
                        as_admin,
                    )
                })
        },
        |(req, as_admin)| {
            let others = !as_admin && req.roles.iter().any(|r| r != "user");
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .check(password_ok(&req.password), "password")
                    .check(req.roles.iter().all(|r| role_ok(r)), "roles")
                    .or(if others {
                        codes(&[Code::PermissionDenied])
                    } else {
                        codes(&[Code::Ok, Code::AlreadyExists])
                    }),
            )
        },
        |ctx, (req, as_admin)| async move {
            let request = if as_admin {
                authed(req, &ctx.admin)
            } else {
                Request::new(req)
            };
            ctx.auth().register(request).await
        },
    )
    .await;

    fuzz(
        &ctx,
        "Login",
        || {
            (hostile(valid_username), hostile(valid_password))
                .prop_map(|(username, password)| pb::LoginRequest { username, password })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .check((1..=1024).contains(&req.password.len()), "password")
                    .or(codes(&[Code::Unauthenticated])),
            )
        },
        |ctx, req| async move { ctx.auth().login(req).await },
    )
    .await;

    let admin = ctx.admin.clone();
    fuzz(
        &ctx,
        "ValidateToken",
        move || {
            prop_oneof![
                2 => hostile(|| "[A-Za-z0-9_-]{10,40}\\.[A-Za-z0-9_-]{10,80}\\.[A-Za-z0-9_-]{0,43}"),
                2 => mutated(admin),
                1 => proptest::collection::vec(any::<u8>(), 0..200)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ]
            .prop_map(|token| pb::ValidateTokenRequest { token })
        },
        |req| sized(req, codes(&[Code::Ok])),
        |ctx, req| async move {
            let valid = req.token == ctx.admin;
            let answer = ctx.auth().validate_token(req).await?.into_inner();
            assert_eq!(answer.valid, valid, "{answer:?}");
            if !valid {
                assert_eq!(answer, pb::ValidateTokenResponse::default());
            }
            Ok::<_, Status>(answer)
        },
    )
    .await;

    fuzz(
        &ctx,
        "Refresh",
        || {
            prop_oneof![
                3 => hostile(|| "kmsr_[A-Za-z0-9]{43}"),
                1 => Just(String::new()),
            ]
            .prop_map(|refresh_token| pb::RefreshRequest { refresh_token })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(!req.refresh_token.is_empty(), "refresh_token")
                    .or(codes(&[Code::Unauthenticated])),
            )
        },
        |ctx, req| async move { ctx.auth().refresh(req).await },
    )
    .await;

    server.stop().await;
}

async fn hostile_keys_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;

    fuzz(
        &ctx,
        "CreateKey",
        || {
            let api_key = prop_oneof![
                2 => Just(None),
                2 => hostile(|| "[!-~]{32,80}").prop_map(Some),
                1 => "[A-Za-z0-9]{43}".prop_map(|body| {
                    // A well-formed KMS key, checksum and all, or with a typo.
                    let key = kms::domain::api_key::generate().unwrap();
                    Some(format!("kms_{body}{}", &key[47..]))
                }),
                1 => Just(Some(kms::domain::api_key::generate().unwrap())),
            ];
            (
                hostile(valid_service_name),
                api_key,
                hostile(|| "[ -~]{0,40}"),
                wild_i64(TTL_EDGES),
            )
                .prop_map(|(service_name, api_key, description, ttl_seconds)| {
                    pb::CreateKeyRequest {
                        service_name,
                        api_key,
                        description,
                        ttl_seconds,
                        ..Default::default()
                    }
                })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .check(description_ok(&req.description), "description")
                    .check(
                        (0..=kms::domain::validate::TTL_MAX_SECONDS).contains(&req.ttl_seconds),
                        "ttl_seconds",
                    )
                    .check(
                        req.api_key.as_deref().is_none_or(imported_key_ok),
                        "api_key",
                    )
                    .or(codes(&[Code::Ok, Code::AlreadyExists])),
            )
        },
        |ctx, req| async move {
            let key = ctx
                .keys()
                .create_key(authed(req.clone(), &ctx.admin))
                .await?
                .into_inner();
            assert_eq!(key.service_name, req.service_name);
            if let Some(imported) = &req.api_key {
                assert_eq!(&key.api_key, imported);
            }
            Ok::<_, Status>(())
        },
    )
    .await;

    fuzz(
        &ctx,
        "GetKey",
        || hostile(valid_service_name).prop_map(|service_name| pb::GetKeyRequest { service_name }),
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.keys().get_key(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "ListKeys",
        || {
            (page_size(), page_token(boxed_service_name)).prop_map(|(page_size, page_token)| {
                pb::ListKeysRequest {
                    page_size,
                    page_token,
                }
            })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(req.page_size >= 0, "page_size")
                    .check(
                        page_token_ok(&req.page_token, service_name_ok),
                        "page_token",
                    )
                    .or(codes(&[Code::Ok])),
            )
        },
        |ctx, req| async move {
            let page = ctx
                .keys()
                .list_keys(authed(req.clone(), &ctx.admin))
                .await?
                .into_inner();
            let size = match req.page_size {
                0 => 50,
                n => n.min(1000) as usize,
            };
            assert!(page.keys.len() <= size);
            assert!(page.keys.iter().all(|k| k.api_key.is_empty()), "no secrets");
            Ok::<_, Status>(())
        },
    )
    .await;

    let secrets = ctx.secrets.clone();
    let audited_before = audit_count(&ctx.db, "key_verify").await;
    let failed = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let failed_in_cases = failed.clone();
    fuzz(
        &ctx,
        "VerifyKey",
        move || {
            prop_oneof![
                3 => hostile(|| "[!-~]{32,60}"),
                3 => select(secrets).prop_flat_map(mutated),
                1 => Just(kms::domain::api_key::generate().unwrap()),
                1 => Just(String::new()),
                1 => "[!-~]{257,300}",
            ]
            .prop_map(|api_key| pb::VerifyKeyRequest {
                api_key,
                ..Default::default()
            })
        },
        |req| sized(req, codes(&[Code::Ok])),
        move |ctx, req| {
            let failed = failed_in_cases.clone();
            async move {
                let answer = ctx
                    .keys()
                    .verify_key(authed(req.clone(), &ctx.admin))
                    .await?
                    .into_inner();
                assert_eq!(
                    answer.valid,
                    ctx.secrets.contains(&req.api_key),
                    "{answer:?}"
                );
                if !answer.valid {
                    let not_found = pb::VerifyKeyResponse {
                        code: pb::VerifyCode::NotFound.into(),
                        ..Default::default()
                    };
                    assert_eq!(answer, not_found);
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<_, Status>(answer)
            }
        },
    )
    .await;
    // Every failed verification is in the audit trail, whatever it held: the first of
    // each kind at once, repeats with their count when their 10 s window ends.
    let expected = audited_before + failed.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let recorded = audit_count(&ctx.db, "key_verify").await;
        if recorded == expected {
            break;
        }
        assert!(
            recorded < expected && Instant::now() < deadline,
            "failed VerifyKeys must be audited: {recorded} recorded, {expected} expected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    fuzz(
        &ctx,
        "RotateKey",
        || {
            (hostile(valid_service_name), wild_i64(GRACE_EDGES)).prop_map(
                |(service_name, grace_period_seconds)| pb::RotateKeyRequest {
                    service_name,
                    grace_period_seconds,
                },
            )
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .check(
                        (0..=30 * 24 * 3600).contains(&req.grace_period_seconds),
                        "grace_period_seconds",
                    )
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.keys().rotate_key(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "RevokeKey",
        || {
            hostile(valid_service_name)
                .prop_map(|service_name| pb::RevokeKeyRequest { service_name })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.keys().revoke_key(authed(req, &ctx.admin)).await },
    )
    .await;

    server.stop().await;
}

async fn hostile_users_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let target = || hostile(valid_username).prop_filter("admin", not_admin);

    fuzz(
        &ctx,
        "ListUsers",
        || {
            (page_size(), page_token(boxed_username)).prop_map(|(page_size, page_token)| {
                pb::ListUsersRequest {
                    page_size,
                    page_token,
                }
            })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(req.page_size >= 0, "page_size")
                    .check(page_token_ok(&req.page_token, username_ok), "page_token")
                    .or(codes(&[Code::Ok])),
            )
        },
        |ctx, req| async move { ctx.users().list_users(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "GetUser",
        move || target().prop_map(|username| pb::GetUserRequest { username }),
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.users().get_user(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "SetRoles",
        move || {
            (target(), roles())
                .prop_map(|(username, roles)| pb::SetRolesRequest { username, roles })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .check(
                        !req.roles.is_empty() && req.roles.iter().all(|r| role_ok(r)),
                        "roles",
                    )
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.users().set_roles(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "ChangePassword",
        move || {
            (
                prop_oneof![3 => target(), 1 => Just(String::new()), 1 => Just(ADMIN.to_owned())],
                prop_oneof![3 => hostile(valid_password), 1 => Just(String::new())],
                hostile(valid_password),
            )
                .prop_map(|(username, old_password, new_password)| {
                    pb::ChangePasswordRequest {
                        username,
                        old_password,
                        new_password,
                    }
                })
        },
        |req| {
            let own = req.username.is_empty() || req.username == ADMIN;
            let old_ok = !own || (1..=1024).contains(&req.old_password.len());
            sized(
                req,
                Rules::new()
                    .check(
                        req.username.is_empty() || username_ok(&req.username),
                        "username",
                    )
                    .check(password_ok(&req.new_password), "new_password")
                    .check(old_ok, "old_password")
                    .or(if own {
                        // The admin's password is never guessed: it does not match.
                        codes(&[Code::PermissionDenied])
                    } else {
                        codes(&[Code::Ok, Code::NotFound])
                    }),
            )
        },
        |ctx, req| async move { ctx.users().change_password(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "DeleteUser",
        move || target().prop_map(|username| pb::DeleteUserRequest { username }),
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.users().delete_user(authed(req, &ctx.admin)).await },
    )
    .await;

    server.stop().await;
}

async fn hostile_audit_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let filter = || {
        prop_oneof![
            2 => Just(String::new()),
            1 => select(&["login", "key_verify", "root", "anonymous", "failure"][..])
                .prop_map(str::to_owned),
            3 => hostile(|| "[a-z_]{1,20}"),
        ]
    };
    fuzz(
        &ctx,
        "ListAuditEvents",
        move || {
            (
                (filter(), filter(), filter()),
                timestamp(),
                timestamp(),
                page_size(),
                page_token(boxed_audit_id),
            )
                .prop_map(
                    |((actor, action, target), since, until, page_size, page_token)| {
                        pb::ListAuditEventsRequest {
                            actor,
                            action,
                            target,
                            since,
                            until,
                            page_size,
                            page_token,
                        }
                    },
                )
        },
        |req| {
            let ordered = match (&req.since, &req.until) {
                (Some(s), Some(u)) if timestamp_ok(&req.since) && timestamp_ok(&req.until) => {
                    (s.seconds, s.nanos) <= (u.seconds, u.nanos)
                }
                _ => true,
            };
            sized(
                req,
                Rules::new()
                    .check(filter_ok(&req.actor), "actor")
                    .check(filter_ok(&req.action), "action")
                    .check(filter_ok(&req.target), "target")
                    .check(timestamp_ok(&req.since), "since")
                    .check(timestamp_ok(&req.until), "until")
                    .check(ordered, "since")
                    .check(req.page_size >= 0, "page_size")
                    .check(
                        page_token_ok(&req.page_token, |id| id.parse::<i64>().is_ok()),
                        "page_token",
                    )
                    .or(codes(&[Code::Ok])),
            )
        },
        |ctx, req| async move { ctx.audit().list_audit_events(authed(req, &ctx.admin)).await },
    )
    .await;
    server.stop().await;
}
