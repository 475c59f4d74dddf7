//! kms.v1.Users: admin user management and password changes.

use kms::proto::kms::v1::{self as pb, users_client::UsersClient};
use tonic::{Code, transport::Channel};

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, assert_status, authed},
};

fn users(server: &TestServer) -> UsersClient<Channel> {
    UsersClient::new(server.channel.clone())
}

async fn register(server: &TestServer, admin: &str, name: &str, roles: &[&str]) -> String {
    let password = format!("{name}-password-123");
    server
        .auth()
        .register(authed(
            pb::RegisterRequest {
                username: name.into(),
                password: password.clone(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            },
            admin,
        ))
        .await
        .unwrap();
    password
}

async fn works(server: &TestServer, token: &str) -> bool {
    server
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .valid
}

fn set_roles(name: &str, roles: &[&str]) -> pb::SetRolesRequest {
    pb::SetRolesRequest {
        username: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

both_backends!(
    admins_list_and_read_users,
    role_changes_take_effect_and_invalidate_tokens,
    the_last_admin_stays,
    deleting_a_user_ends_their_tokens,
    password_changes_invalidate_tokens,
);

async fn admins_list_and_read_users(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    for name in ["carol", "alice", "bob", "Zed"] {
        register(&server, &admin, name, &["user"]).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = users(&server)
            .list_users(authed(
                pb::ListUsersRequest {
                    page_size: 2,
                    page_token: token,
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["Zed", "alice", "bob", "carol", ADMIN]);

    let alice = users(&server)
        .get_user(authed(
            pb::GetUserRequest {
                username: "alice".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.roles, ["user"]);
    assert!(alice.created_at.is_some() && alice.updated_at.is_some());
    assert_status(
        users(&server)
            .get_user(authed(
                pb::GetUserRequest {
                    username: "nobody".into(),
                },
                &admin,
            ))
            .await,
        Code::NotFound,
        "nobody",
    );
    assert_status(
        users(&server)
            .get_user(authed(
                pb::GetUserRequest {
                    username: "bad name".into(),
                },
                &admin,
            ))
            .await,
        Code::InvalidArgument,
        "username",
    );
    assert_status(
        users(&server)
            .list_users(authed(
                pb::ListUsersRequest {
                    page_size: 1,
                    page_token: "junk".into(),
                },
                &admin,
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    let user = server.user_token("plain").await;
    assert_status(
        users(&server)
            .list_users(authed(pb::ListUsersRequest::default(), &user))
            .await,
        Code::PermissionDenied,
        "admin",
    );
    assert_status(
        users(&server)
            .get_user(pb::GetUserRequest {
                username: "alice".into(),
            })
            .await,
        Code::Unauthenticated,
        "",
    );
    server.stop().await;
}

async fn role_changes_take_effect_and_invalidate_tokens(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let password = register(&server, &admin, "dana", &["user"]).await;
    let before = server.login("dana", &password).await;
    assert!(works(&server, &before).await);

    let refresh = server
        .auth()
        .login(pb::LoginRequest {
            username: "dana".into(),
            password: password.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .refresh_token;
    let updated = users(&server)
        .set_roles(authed(set_roles("dana", &["ops", "admin", "ops"]), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.roles, ["admin", "ops"]);
    assert!(
        !works(&server, &before).await,
        "a token with the old roles must stop working"
    );
    assert_status(
        server
            .auth()
            .refresh(pb::RefreshRequest {
                refresh_token: refresh,
            })
            .await,
        Code::Unauthenticated,
        "",
    );
    let after = server.login("dana", &password).await;
    let v = server
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: after.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.roles, ["admin", "ops"]);
    // dana is an admin now.
    users(&server)
        .list_users(authed(pb::ListUsersRequest::default(), &after))
        .await
        .unwrap();

    for (roles, field) in [
        (&[][..], "roles"),
        (&["Bad"][..], "roles"),
        (&[""][..], "roles"),
    ] {
        assert_status(
            users(&server)
                .set_roles(authed(set_roles("dana", roles), &admin))
                .await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        users(&server)
            .set_roles(authed(set_roles("ghost", &["user"]), &admin))
            .await,
        Code::NotFound,
        "ghost",
    );
    let plain = server.user_token("plain").await;
    assert_status(
        users(&server)
            .set_roles(authed(set_roles("plain", &["admin"]), &plain))
            .await,
        Code::PermissionDenied,
        "admin",
    );
    server.stop().await;
}

async fn the_last_admin_stays(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    assert_status(
        users(&server)
            .set_roles(authed(set_roles(ADMIN, &["user"]), &admin))
            .await,
        Code::FailedPrecondition,
        "last admin",
    );
    assert_status(
        users(&server)
            .delete_user(authed(
                pb::DeleteUserRequest {
                    username: ADMIN.into(),
                },
                &admin,
            ))
            .await,
        Code::FailedPrecondition,
        "last admin",
    );
    assert!(
        works(&server, &admin).await,
        "a refused change changes nothing"
    );

    // Two admins demoting each other at once: exactly one succeeds.
    let second_password = register(&server, &admin, "second", &["admin"]).await;
    let second = server.login("second", &second_password).await;
    let a = {
        let mut client = users(&server);
        let token = admin.clone();
        tokio::spawn(async move {
            client
                .set_roles(authed(set_roles("second", &["user"]), &token))
                .await
        })
    };
    let b = {
        let mut client = users(&server);
        let token = second.clone();
        tokio::spawn(async move {
            client
                .set_roles(authed(set_roles(ADMIN, &["user"]), &token))
                .await
        })
    };
    let outcomes = [a.await.unwrap(), b.await.unwrap()];
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    for o in &outcomes {
        if let Err(s) = o {
            assert!(
                matches!(s.code(), Code::FailedPrecondition | Code::Unauthenticated),
                "{s:?}"
            );
        }
    }
    assert_eq!(ok, 1, "{outcomes:?}");
    // Someone is still an admin.
    let fresh = match server
        .auth()
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
    {
        Ok(r) => r.into_inner().access_token,
        Err(s) => panic!("{s:?}"),
    };
    let second_fresh = server.login("second", &second_password).await;
    let admins = [fresh, second_fresh].into_iter().filter(|t| {
        let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(t)
            .unwrap()
            .claims;
        claims["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "admin")
    });
    assert_eq!(admins.count(), 1);
    server.stop().await;
}

async fn deleting_a_user_ends_their_tokens(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let password = register(&server, &admin, "erin", &["user"]).await;
    let token = server.login("erin", &password).await;
    users(&server)
        .delete_user(authed(
            pb::DeleteUserRequest {
                username: "erin".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert!(!works(&server, &token).await);
    assert_status(
        server
            .auth()
            .login(pb::LoginRequest {
                username: "erin".into(),
                password: password.clone(),
            })
            .await,
        Code::Unauthenticated,
        "",
    );
    assert_status(
        users(&server)
            .delete_user(authed(
                pb::DeleteUserRequest {
                    username: "erin".into(),
                },
                &admin,
            ))
            .await,
        Code::NotFound,
        "erin",
    );
    // The name can be registered again.
    register(&server, &admin, "erin", &["user"]).await;
    server.stop().await;
}

async fn password_changes_invalidate_tokens(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let password = register(&server, &admin, "fred", &["user"]).await;
    let token = server.login("fred", &password).await;
    let other_session = server.login("fred", &password).await;
    let change = |username: &str, old: &str, new: &str| pb::ChangePasswordRequest {
        username: username.into(),
        old_password: old.into(),
        new_password: new.into(),
    };
    assert_status(
        users(&server)
            .change_password(authed(
                change("", "wrong-password-0", "fred-new-password-1"),
                &token,
            ))
            .await,
        Code::PermissionDenied,
        "old_password",
    );
    assert_status(
        users(&server)
            .change_password(authed(change("", &password, "short"), &token))
            .await,
        Code::InvalidArgument,
        "new_password",
    );
    assert_status(
        users(&server)
            .change_password(authed(change("", "", "fred-new-password-1"), &token))
            .await,
        Code::InvalidArgument,
        "old_password",
    );
    assert!(
        works(&server, &token).await,
        "refused changes change nothing"
    );
    users(&server)
        .change_password(authed(change("", &password, "fred-new-password-1"), &token))
        .await
        .unwrap();
    assert!(!works(&server, &token).await);
    assert!(
        !works(&server, &other_session).await,
        "every session of the user ends"
    );
    assert_status(
        server
            .auth()
            .login(pb::LoginRequest {
                username: "fred".into(),
                password: password.clone(),
            })
            .await,
        Code::Unauthenticated,
        "",
    );
    let token = server.login("fred", "fred-new-password-1").await;

    // Another user's password: admins only, no old password needed.
    let plain = server.user_token("plain").await;
    assert_status(
        users(&server)
            .change_password(authed(change("fred", "", "hijacked-password-1"), &plain))
            .await,
        Code::PermissionDenied,
        "admin",
    );
    let session = server
        .auth()
        .login(pb::LoginRequest {
            username: "fred".into(),
            password: "fred-new-password-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    users(&server)
        .change_password(authed(change("fred", "", "reset-by-admin-123"), &admin))
        .await
        .unwrap();
    assert!(!works(&server, &token).await);
    // The refresh tokens of earlier logins die with them.
    assert_status(
        server
            .auth()
            .refresh(pb::RefreshRequest {
                refresh_token: session.refresh_token,
            })
            .await,
        Code::Unauthenticated,
        "",
    );
    server.login("fred", "reset-by-admin-123").await;
    assert_status(
        users(&server)
            .change_password(authed(change("ghost", "", "reset-by-admin-123"), &admin))
            .await,
        Code::NotFound,
        "ghost",
    );
    server.stop().await;
}

/// Roles travel in every access token (and in the console's cookie): at most 32 per
/// user, in Register and SetRoles alike, refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_has_at_most_32_roles() {
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_token().await;
    let names: Vec<String> = (0..33).map(|i| format!("role-{i}")).collect();
    let many: Vec<&str> = names.iter().map(String::as_str).collect();
    register(&server, &admin, "thirty-two", &many[..32]).await;
    let refused = server
        .auth()
        .register(authed(
            pb::RegisterRequest {
                username: "thirty-three".into(),
                password: "thirty-three-password".into(),
                roles: names.clone(),
            },
            &admin,
        ))
        .await;
    assert_status(refused, Code::InvalidArgument, "roles");
    let refused = users(&server)
        .set_roles(authed(set_roles("thirty-two", &many), &admin))
        .await;
    assert_status(refused, Code::InvalidArgument, "roles");
    server.stop().await;
}
