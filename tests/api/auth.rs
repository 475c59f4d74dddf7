//! kms.v1.Auth: Register, Login, ValidateToken.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kms::{domain::token::Claims, proto::kms::v1 as pb};
use tonic::Code;

use crate::{
    both_backends,
    common::{
        ADMIN, Backend, JWT_SECRET, TestServer, alg_none_token, assert_status, authed, claims, now,
        sign,
    },
};

fn register(username: &str, password: &str, roles: &[&str]) -> pb::RegisterRequest {
    pb::RegisterRequest {
        username: username.into(),
        password: password.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

both_backends!(
    self_registration_gets_exactly_user,
    admin_registration_grants_roles,
    registration_rules,
    registration_disabled,
    login_issues_complete_tokens,
    login_failures_look_alike,
    validate_token_introspects,
);

async fn self_registration_gets_exactly_user(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth();

    let out = auth
        .register(register("alice", "alice-password-1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (out.username.as_str(), out.roles),
        ("alice", vec!["user".to_owned()])
    );
    let out = auth
        .register(register("bob", "bob-password-123", &["user"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.roles, vec!["user"]);

    // Asking for admin (or any other role) without an admin token is denied.
    for roles in [&["admin"][..], &["user", "admin"], &["ops"]] {
        assert_status(
            auth.register(register("mallory", "mallory-password", roles))
                .await,
            Code::PermissionDenied,
            "roles",
        );
    }
    // Also with a valid non-admin token.
    let user = server.login("alice", "alice-password-1").await;
    assert_status(
        auth.register(authed(
            register("mallory", "mallory-password", &["admin"]),
            &user,
        ))
        .await,
        Code::PermissionDenied,
        "roles",
    );
    // A token that is sent must be valid.
    assert_status(
        auth.register(authed(
            register("mallory", "mallory-password", &[]),
            "garbage",
        ))
        .await,
        Code::Unauthenticated,
        "",
    );
    // Nothing was half-written: mallory does not exist.
    assert_status(
        auth.login(pb::LoginRequest {
            username: "mallory".into(),
            password: "mallory-password".into(),
        })
        .await,
        Code::Unauthenticated,
        "",
    );
    // Duplicate username.
    assert_status(
        auth.register(register("alice", "another-password-1", &[]))
            .await,
        Code::AlreadyExists,
        "username",
    );
    server.stop().await;
}

async fn admin_registration_grants_roles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut auth = server.auth();
    let out = auth
        .register(authed(
            register("ops", "ops-password-123", &["admin", "ops_team-2"]),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.roles, vec!["admin", "ops_team-2"]);
    let token = server.login("ops", "ops-password-123").await;
    let v = auth
        .validate_token(pb::ValidateTokenRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    assert_eq!(v.roles, vec!["admin", "ops_team-2"]);
    // Roles are still validated for admins.
    assert_status(
        auth.register(authed(register("x", "x-password-1234", &["Admin"]), &admin))
            .await,
        Code::InvalidArgument,
        "roles",
    );
    server.stop().await;
}

async fn registration_rules(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.password_min_length = 16).await;
    let mut auth = server.auth();
    let cases: &[(&str, &str, &[&str], &str)] = &[
        ("", "long-enough-password", &[], "username"),
        ("has space", "long-enough-password", &[], "username"),
        ("nul\0byte", "long-enough-password", &[], "username"),
        (&"u".repeat(65), "long-enough-password", &[], "username"),
        ("carol", "", &[], "password"),
        // 15 bytes: below the configured minimum of 16.
        ("carol", "fifteen-bytes-x", &[], "password"),
        ("carol", &"p".repeat(1025), &[], "password"),
        ("carol", "long-enough-password", &[""], "roles"),
        ("carol", "long-enough-password", &["UPPER"], "roles"),
        ("carol", "long-enough-password", &[&"r".repeat(33)], "roles"),
    ];
    for (username, password, roles, field) in cases {
        assert_status(
            auth.register(register(username, password, roles)).await,
            Code::InvalidArgument,
            field,
        );
    }
    // Boundaries that pass: 64-character username with every allowed symbol, 16 bytes.
    let name = format!("{}.-_@", "a".repeat(60));
    auth.register(register(&name, "sixteen-bytes-xx", &[]))
        .await
        .unwrap();
    server.stop().await;
}

async fn registration_disabled(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.allow_registration = false).await;
    let mut auth = server.auth();
    assert_status(
        auth.register(register("dave", "dave-password-12", &[]))
            .await,
        Code::PermissionDenied,
        "registration",
    );
    let admin = server.admin_token().await;
    auth.register(authed(register("dave", "dave-password-12", &[]), &admin))
        .await
        .unwrap();
    // A non-admin token does not open registration either.
    let dave = server.login("dave", "dave-password-12").await;
    assert_status(
        auth.register(authed(register("erin", "erin-password-12", &[]), &dave))
            .await,
        Code::PermissionDenied,
        "registration",
    );
    server.stop().await;
}

async fn login_issues_complete_tokens(backend: Backend) {
    let server = TestServer::start(backend).await;
    let out = server
        .auth()
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: crate::common::ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.token_type, "Bearer");
    assert_eq!(out.expires_in, 3600);

    // Any JWT library with the shared secret can check it; every claim is present.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["kms"]);
    validation.set_issuer(&["kms"]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub", "iat", "jti"]);
    let claims: Claims = jsonwebtoken::decode(
        &out.access_token,
        &DecodingKey::from_secret(JWT_SECRET),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.sub, ADMIN);
    assert_eq!(claims.roles, vec!["admin", "user"]);
    assert_eq!(claims.exp - claims.iat, 3600);
    assert!(claims.nbf <= now() && claims.iat <= now());
    assert!(!claims.jti.is_empty());
    let header = jsonwebtoken::decode_header(&out.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    server.stop().await;
}

async fn login_failures_look_alike(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth();
    let wrong_password = auth
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: "not-the-password".into(),
        })
        .await
        .unwrap_err();
    let unknown_user = auth
        .login(pb::LoginRequest {
            username: "nobody".into(),
            password: "not-the-password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(unknown_user.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.message(), unknown_user.message());
    assert!(!wrong_password.message().contains("not-the-password"));

    assert_status(
        auth.login(pb::LoginRequest {
            username: String::new(),
            password: "x".into(),
        })
        .await,
        Code::InvalidArgument,
        "username",
    );
    assert_status(
        auth.login(pb::LoginRequest {
            username: ADMIN.into(),
            password: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "password",
    );
    // Login ignores a stale token sent along.
    let mut req = tonic::Request::new(pb::LoginRequest {
        username: ADMIN.into(),
        password: crate::common::ADMIN_PASSWORD.into(),
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer expired.junk.token".parse().unwrap(),
    );
    auth.login(req).await.unwrap();
    server.stop().await;
}

async fn validate_token_introspects(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth();
    let token = server.admin_token().await;
    let v = auth
        .validate_token(pb::ValidateTokenRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    assert_eq!(v.subject, ADMIN);
    assert_eq!(v.roles, vec!["admin", "user"]);
    let exp = v.expires_at.unwrap().seconds;
    assert!((exp - now() - 3600).abs() <= 5);

    let expired = sign(&claims(ADMIN, &["admin"], now() - 7200, 3600), JWT_SECRET);
    let other_secret = sign(
        &claims(ADMIN, &["admin"], now(), 3600),
        b"some-other-secret-some-other-secret-xx",
    );
    let mut wrong_aud = claims(ADMIN, &["admin"], now(), 3600);
    wrong_aud.aud = "elsewhere".into();
    let wrong_aud = sign(&wrong_aud, JWT_SECRET);
    let none = alg_none_token(&claims(ADMIN, &["admin"], now(), 3600));
    for bad in [
        String::new(),
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        expired,
        other_secret,
        wrong_aud,
        none,
        "x".repeat(60_000),
    ] {
        let v = auth
            .validate_token(pb::ValidateTokenRequest { token: bad.clone() })
            .await
            .unwrap_or_else(|s| panic!("ValidateToken must not fail: {s:?}"))
            .into_inner();
        assert_eq!(v, pb::ValidateTokenResponse::default(), "token {bad:.40}");
    }
    server.stop().await;
}
