//! The key forms over plain HTTP: update writes only what changed, and bad input comes
//! back on the page naming the field.

use super::security::Session;
use crate::common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer};

crate::both_backends!(update_writes_what_changed);

fn text(reply: &crate::http_client::Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

async fn update_writes_what_changed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let reply = s
        .post(
            "/ui/keys",
            &[
                ("service_name", "svc"),
                ("description", "first"),
                ("remaining", "10"),
            ],
            true,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", text(&reply));
    let form = |description: &'static str, remaining: &'static str, ttl: &'static str| {
        [
            ("service_name", "svc"),
            ("description", description),
            ("scopes", "b a"),
            ("metadata", "team=x"),
            ("rate_limit_requests", ""),
            ("rate_limit_window_seconds", ""),
            ("remaining", remaining),
            ("ttl_seconds", ttl),
            ("enabled", "true"),
        ]
    };
    let reply = s
        .post("/ui/key/update", &form("second", "10", ""), true)
        .await;
    assert_eq!(reply.status, 303, "{}", text(&reply));
    assert_eq!(
        reply.headers["location"],
        "/ui/key?service_name=svc&done=updated"
    );
    let page = text(&s.get("/ui/key?service_name=svc&done=updated").await);
    for shown in ["second", "team", "Saved."] {
        assert!(page.contains(shown), "{shown}");
    }
    assert!(page.contains("<code class=\"scope\">a</code>"), "{page}");
    // The same values again: nothing to write.
    let reply = s
        .post("/ui/key/update", &form("second", "10", ""), true)
        .await;
    assert_eq!(
        reply.headers["location"],
        "/ui/key?service_name=svc&done=unchanged"
    );
    // A TTL and a refill.
    let reply = s
        .post("/ui/key/update", &form("second", "50", "3600"), true)
        .await;
    assert_eq!(reply.status, 303);
    let page = text(&s.get("/ui/key?service_name=svc").await);
    assert!(page.contains("<dd>50</dd>"), "{page}");
    assert!(!page.contains("<dd>never</dd><dt>Last used"), "{page}");
    // Bad input: the page again, naming the field.
    let mut bad = form("second", "lots", "");
    bad[4].1 = "5";
    let reply = s.post("/ui/key/update", &bad, true).await;
    assert_eq!(reply.status, 422);
    assert!(text(&reply).contains("rate_limit"), "{}", text(&reply));
    let reply = s
        .post("/ui/keys", &[("service_name", "bad name!")], true)
        .await;
    assert_eq!(reply.status, 422);
    assert!(text(&reply).contains("service_name"));
    // A search for a prefix that could not start a name.
    let reply = s.get("/ui/keys?prefix=%2A").await;
    assert_eq!(reply.status, 422);
    assert!(text(&reply).contains("prefix"));
}
