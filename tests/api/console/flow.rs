//! The console's main flow in a real browser, serial steps in one session: sign in
//! (a wrong password first), create a key (its secret shown once), list, reveal,
//! rotate with a grace period, revoke with the typed confirmation, users, the
//! keyring, the audit log and its live view, sign out. With KMS_UI_SCREENSHOTS_DIR set, it saves the pages' screenshots.

use kms::proto::kms::v1 as pb;

use super::browser::Browser;
use crate::common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer};

crate::both_backends!(main_flow);

/// Waits up to 5 s for `check` to hold on the page shown.
async fn wait_for<F: std::future::Future<Output = bool>>(
    b: &Browser,
    what: &str,
    check: impl Fn() -> F,
) {
    for _ in 0..50 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 5 s on {}", b.path().await);
}

async fn main_flow(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let b = Browser::start(server.http_addr).await;

    // Sign in: /ui/ sends a visitor to the sign-in page.
    b.goto("/ui/").await;
    assert_eq!(b.path().await, "/ui/login");
    b.screenshot("sign-in").await;
    b.fill("#f-username", ADMIN).await;
    b.fill("#f-password", "not-the-password").await;
    b.click("button[type=submit].primary").await;
    assert!(
        b.text("[data-testid=error]")
            .await
            .contains("Incorrect username or password"),
    );
    b.fill("#f-password", ADMIN_PASSWORD).await;
    b.click("button[type=submit].primary").await;
    b.find("[data-testid=signed-in-as]").await;
    assert_eq!(b.path().await, "/ui/keys");

    // Create: the secret is in the answer to the POST, once.
    b.click("a[href='/ui/keys/new']").await;
    b.fill("#f-service_name", "billing").await;
    b.fill("#f-description", "Billing service").await;
    b.fill("#f-scopes", "billing:read billing:write").await;
    b.fill("#f-metadata", "team=payments").await;
    b.fill("#f-rate_limit_requests", "100").await;
    b.fill("#f-rate_limit_window_seconds", "60").await;
    b.click("button[type=submit].primary").await;
    let secret = b.text("[data-testid=secret]").await;
    assert!(secret.starts_with("kms_"), "{secret}");
    assert!(!b.path().await.contains(&secret));
    b.screenshot("create").await;
    assert!(server.key_verifies(&admin, &secret).await);
    b.click("a[href='/ui/key?service_name=billing']").await;
    assert_eq!(b.path().await, "/ui/key?service_name=billing");
    assert!(
        b.find_all("[data-testid=secret]").await.is_empty(),
        "the key's page does not show the secret"
    );
    assert!(!b.source().await.contains(&secret));

    // A second key, then the list.
    b.goto("/ui/keys/new").await;
    b.fill("#f-service_name", "reports").await;
    b.fill("#f-remaining", "0").await;
    b.click("button[type=submit].primary").await;
    b.find("[data-testid=secret]").await;
    b.goto("/ui/keys").await;
    let rows = b.find_all("[data-testid=key-row]").await;
    assert_eq!(rows.len(), 2);
    assert!(rows[0].text().await.unwrap().contains("billing"));
    assert!(rows[1].text().await.unwrap().contains("out of credits"));
    b.screenshot("keys").await;
    b.fill("#f-prefix", "rep").await;
    b.click("form.search button").await;
    let rows = b.find_all("[data-testid=key-row]").await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("reports"));

    // Reveal: GetKey's secret, audited.
    b.goto("/ui/key?service_name=billing").await;
    b.screenshot("key").await;
    b.click("[data-testid=reveal]").await;
    assert_eq!(b.text("[data-testid=secret]").await, secret);

    // Rotate with a grace period: both secrets verify.
    b.goto("/ui/key?service_name=billing").await;
    b.find("#f-grace option[value='3600']")
        .await
        .click()
        .await
        .unwrap();
    b.click("[data-testid=rotate]").await;
    let rotated = b.text("[data-testid=secret]").await;
    assert!(rotated.starts_with("kms_") && rotated != secret);
    assert!(server.key_verifies(&admin, &rotated).await);
    assert!(
        server.key_verifies(&admin, &secret).await,
        "in its grace period"
    );

    // Disable, then enable.
    b.goto("/ui/key?service_name=billing").await;
    b.click("[data-testid=toggle-enabled]").await;
    assert!(b.text("main").await.contains("disabled"));
    b.click("[data-testid=toggle-enabled]").await;
    assert!(b.text("main").await.contains("The key is enabled"));

    // Revoke: the button waits for the typed service name.
    let button = b.find("[data-testid=revoke]").await;
    assert!(!button.is_enabled().await.unwrap());
    b.fill("#f-confirm", "billin").await;
    assert!(!button.is_enabled().await.unwrap());
    b.fill("#f-confirm", "billing").await;
    assert!(button.is_enabled().await.unwrap());
    b.navigate_by(button).await;
    b.find("p.notice.ok").await;
    assert_eq!(b.path().await, "/ui/keys?done=revoked");
    assert_eq!(b.find_all("[data-testid=key-row]").await.len(), 1);
    assert!(!server.key_verifies(&admin, &rotated).await);

    // Users: register, set roles, delete.
    b.goto("/ui/users").await;
    b.fill("#f-username", "carol").await;
    b.fill("#f-password", "carol-password-123").await;
    b.fill("#f-roles", "user").await;
    b.click("form[action='/ui/users'] button").await;
    assert_eq!(b.path().await, "/ui/users?done=registered");
    assert_eq!(b.find_all("[data-testid=user-row]").await.len(), 2);
    b.screenshot("users").await;
    b.click("a[href='/ui/user?username=carol']").await;
    b.fill("#f-roles", "admin user").await;
    b.click("form[action='/ui/user/roles'] button").await;
    assert!(b.text("main").await.contains("Roles saved"));
    b.fill("#f-confirm", "carol").await;
    b.click("#delete-button").await;
    assert_eq!(b.path().await, "/ui/users?done=deleted");
    assert_eq!(b.find_all("[data-testid=user-row]").await.len(), 1);

    // Keyring: a new data key, re-sealing, and the signing key (HS256 here: refused
    // with the reason).
    b.goto("/ui/keyring").await;
    assert_eq!(b.find_all("[data-testid=data-key-row]").await.len(), 1);
    b.click("form[action='/ui/keyring/rotate'] button").await;
    assert_eq!(b.find_all("[data-testid=data-key-row]").await.len(), 2);
    b.click("form[action='/ui/keyring/rewrap'] button").await;
    assert!(b.text("p.notice.ok").await.contains("Re-sealed"));
    b.screenshot("keyring").await;
    b.click("form[action='/ui/keyring/signing-key'] button")
        .await;
    assert!(b.text("[data-testid=error]").await.contains("HS256"));

    // Audit, filtered: the reveal was recorded.
    b.goto("/ui/audit").await;
    b.screenshot("audit").await;
    b.goto("/ui/audit?action=key_get").await;
    assert!(
        b.text("main").await.contains("billing"),
        "the reveal is audited"
    );

    // Live: a failed login through gRPC appears without a reload.
    b.goto("/ui/audit").await;
    b.click("[data-testid=audit-live-link]").await;
    assert_eq!(b.path().await, "/ui/audit/live");
    let page = b.find("html").await;
    wait_for(&b, "the stream opens", || async {
        b.text("[data-testid=live-status]")
            .await
            .starts_with("Live")
    })
    .await;
    server
        .auth()
        .login(pb::LoginRequest {
            username: "mallory".into(),
            password: "not-the-password".into(),
        })
        .await
        .unwrap_err();
    wait_for(&b, "the failed login appears", || async {
        b.text("#audit-rows tr:first-child")
            .await
            .contains("mallory")
    })
    .await;
    assert!(page.tag_name().await.is_ok(), "the same page, not reloaded");
    b.screenshot("audit-live").await;

    // Sign out: back to the sign-in page, and the pages need a sign-in again.
    b.click(".who button").await;
    b.find("#f-username").await;
    b.goto("/ui/keys").await;
    assert!(b.path().await.starts_with("/ui/login"));
    b.close().await;
}
