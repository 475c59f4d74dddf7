//! Refresh tokens, reuse detection and logout.

use kms::proto::kms::v1 as pb;
use tonic::Code;

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, assert_status, authed},
};

async fn login(server: &TestServer) -> pb::LoginResponse {
    server
        .auth()
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn refresh(server: &TestServer, token: &str) -> Result<pb::LoginResponse, tonic::Status> {
    server
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn accepted(server: &TestServer, access: &str) -> bool {
    let list = server
        .keys()
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 1,
                page_token: String::new(),
            },
            access,
        ))
        .await;
    let valid = server
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: access.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .valid;
    let ext = crate::ext_authz::client(server.channel.clone())
        .check(crate::ext_authz::check_request(&[(
            "authorization",
            &format!("Bearer {access}"),
        )]))
        .await
        .unwrap()
        .into_inner();
    let allowed = ext.status.is_some_and(|s| s.code == 0);
    match (list, valid, allowed) {
        (Ok(_), true, true) => true,
        (Err(s), false, false) if s.code() == Code::Unauthenticated => false,
        other => panic!("the API disagrees with itself about a token: {other:?}"),
    }
}

both_backends!(
    refresh_rotates_and_reuse_revokes_the_login,
    logout_revokes_the_login_everywhere,
    concurrent_refreshes_of_one_token_have_one_winner,
);

async fn refresh_rotates_and_reuse_revokes_the_login(backend: Backend) {
    let server = TestServer::start(backend).await;
    let first = login(&server).await;
    assert!(
        first.refresh_token.starts_with("kmsr_"),
        "{:.5}",
        first.refresh_token
    );
    assert!(first.refresh_token.len() >= 5 + 43);
    assert_eq!(first.refresh_expires_in, 1_209_600);

    let second = refresh(&server, &first.refresh_token).await.unwrap();
    assert_eq!(second.token_type, "Bearer");
    assert_ne!(second.access_token, first.access_token);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(accepted(&server, &second.access_token).await);
    assert!(
        accepted(&server, &first.access_token).await,
        "refresh does not end the login"
    );
    let third = refresh(&server, &second.refresh_token).await.unwrap();

    // The first refresh token again: reuse. The whole login is revoked.
    assert_status(
        refresh(&server, &first.refresh_token).await,
        Code::Unauthenticated,
        "already used",
    );
    for access in [
        &first.access_token,
        &second.access_token,
        &third.access_token,
    ] {
        assert!(!accepted(&server, access).await);
    }
    assert_status(
        refresh(&server, &third.refresh_token).await,
        Code::Unauthenticated,
        "",
    );

    // Another login of the same user is unaffected.
    let other = login(&server).await;
    assert!(accepted(&server, &other.access_token).await);

    assert_status(
        refresh(&server, "").await,
        Code::InvalidArgument,
        "refresh_token",
    );
    assert_status(
        refresh(&server, "kmsr_garbage").await,
        Code::Unauthenticated,
        "",
    );
    assert_status(
        refresh(&server, &"x".repeat(5000)).await,
        Code::Unauthenticated,
        "",
    );
    server.stop().await;
}

async fn logout_revokes_the_login_everywhere(backend: Backend) {
    let server = TestServer::start(backend).await;
    let session = login(&server).await;
    let other = login(&server).await;
    assert!(accepted(&server, &session.access_token).await);

    assert_status(
        server.auth().logout(pb::LogoutRequest {}).await,
        Code::Unauthenticated,
        "",
    );
    server
        .auth()
        .logout(authed(pb::LogoutRequest {}, &session.access_token))
        .await
        .unwrap();
    assert!(!accepted(&server, &session.access_token).await);
    assert_status(
        refresh(&server, &session.refresh_token).await,
        Code::Unauthenticated,
        "",
    );
    // Logging out twice: the token is already refused.
    assert_status(
        server
            .auth()
            .logout(authed(pb::LogoutRequest {}, &session.access_token))
            .await,
        Code::Unauthenticated,
        "",
    );
    assert!(
        accepted(&server, &other.access_token).await,
        "only that login ends"
    );
    server.stop().await;
}

async fn concurrent_refreshes_of_one_token_have_one_winner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let session = login(&server).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut auth = server.auth();
            let token = session.refresh_token.clone();
            tokio::spawn(async move {
                auth.refresh(pb::RefreshRequest {
                    refresh_token: token,
                })
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        }
    }
    assert_eq!(ok, 1, "exactly one exchange of a refresh token succeeds");
    server.stop().await;
}
