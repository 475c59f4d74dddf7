//! The login kept between commands: silent refresh when the access token has expired
//! (and once more on an UNAUTHENTICATED answer), and logout, which ends the login on
//! the server too.

use std::time::Duration;

use kms::proto::kms::v1 as pb;
use tonic::Code;

use super::{Client, url};
use crate::common::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_tokens_are_refreshed_silently_and_logout_ends_the_login() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.access_token_ttl_seconds = 2).await;
    let admin = Client::new(url(&server));
    admin.login_admin().await;
    let first = admin.credentials();

    // Past the access token's lifetime, a command still works, with new tokens.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    admin.run(&["keys", "list"]).await.ok();
    let second = admin.credentials();
    assert_ne!(first["access_token"], second["access_token"]);
    assert_ne!(first["refresh_token"], second["refresh_token"]);

    // A token the client believes fresh but the server refuses: UNAUTHENTICATED,
    // refreshed, and the call tried once more.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(admin.credentials_path()).unwrap()).unwrap();
    file["servers"][url(&server).as_str()]["access_expires_at"] =
        serde_json::json!(chrono::Utc::now().timestamp() + 3_600);
    std::fs::write(admin.credentials_path(), file.to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    admin.run(&["users", "list"]).await.ok();
    assert_ne!(second["access_token"], admin.credentials()["access_token"]);

    // Two commands that find the token expired at once: one refreshes, the other
    // takes its tokens. Spending the single-use refresh token twice would have ended
    // the whole login (reuse detection).
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (a, b) = tokio::join!(admin.run(&["keys", "list"]), admin.run(&["users", "list"]));
    a.ok();
    b.ok();
    admin.run(&["keys", "list"]).await.ok();

    // A watch outlives its access token: the server ends the stream when the token
    // expires, and `audit watch` renews the login and watches on from its last id.
    let watch = admin.spawn(&["audit", "watch", "-o", "json"]);
    watch.wait_for("\"login\"").await;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    admin.run(&["keys", "create", "after-renewal"]).await.ok();
    watch.wait_for("after-renewal").await;
    assert_eq!(watch.interrupt().await, 0);
    let third = admin.credentials();

    // Logout: the local copy is gone and the refresh token is dead on the server.
    let refresh_token = third["refresh_token"].as_str().unwrap().to_owned();
    let out = admin.run(&["logout"]).await;
    assert!(out.stderr.contains("logged out"), "{out:?}");
    assert!(admin.credentials().is_null());
    admin.run(&["keys", "list"]).await.fails(3, &["kms login"]);
    let refused = server
        .auth()
        .refresh(pb::RefreshRequest { refresh_token })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // A second logout has nothing to do and says so.
    let again = admin.run(&["logout"]).await;
    assert!(again.stderr.contains("not logged in"), "{again:?}");
    server.stop().await;
}
