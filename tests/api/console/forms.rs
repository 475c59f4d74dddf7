//! The key forms over plain HTTP: update writes only what changed, and bad input comes
//! back on the page naming the field.

use super::security::Session;
use crate::common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer};

crate::both_backends!(
    update_writes_what_changed,
    update_keeps_credits_spent_meanwhile
);

fn text(reply: &crate::http_client::Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The hidden `shown` field of a key page's update form, as a browser sends it.
fn shown_of(page: &str) -> String {
    let marker = "name=\"shown\" value=\"";
    let start = page.find(marker).expect("a shown field") + marker.len();
    page[start..][..page[start..].find('"').unwrap()]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Draws the key page of `svc`, then submits its update form with `fields`.
async fn submit(s: &mut Session, fields: &[(&str, &str)]) -> crate::http_client::Reply {
    let shown = shown_of(&text(&s.get("/ui/key?service_name=svc").await));
    let mut fields = fields.to_vec();
    fields.push(("shown", &shown));
    s.post("/ui/key/update", &fields, true).await
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
    let reply = submit(&mut s, &form("second", "10", "")).await;
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
    let reply = submit(&mut s, &form("second", "10", "")).await;
    assert_eq!(
        reply.headers["location"],
        "/ui/key?service_name=svc&done=unchanged"
    );
    // A TTL and a refill.
    let reply = submit(&mut s, &form("second", "50", "3600")).await;
    assert_eq!(reply.status, 303);
    let page = text(&s.get("/ui/key?service_name=svc").await);
    assert!(page.contains("<dd>50</dd>"), "{page}");
    assert!(!page.contains("<dd>never</dd><dt>Last used"), "{page}");
    // Bad input: the page again, naming the field.
    let mut bad = form("second", "lots", "");
    bad[4].1 = "5";
    let reply = submit(&mut s, &bad).await;
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

/// Credits spent between drawing the form and saving it stay spent: only the
/// description the user changed is written.
async fn update_keeps_credits_spent_meanwhile(backend: Backend) {
    use kms::proto::kms::v1 as pb;
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let created = [("service_name", "svc"), ("remaining", "10")];
    let reply = s.post("/ui/keys", &created, true).await;
    assert_eq!(reply.status, 201, "{}", text(&reply));
    let page = text(&reply);
    let marker = "data-testid=\"secret\">";
    let start = page.find(marker).unwrap() + marker.len();
    let secret = page[start..][..page[start..].find('<').unwrap()].to_owned();
    // The form is drawn with remaining = 10 ...
    let page = text(&s.get("/ui/key?service_name=svc").await);
    let shown = shown_of(&page);
    assert!(shown.contains("\"remaining\":\"10\""), "{shown}");
    // ... a credit is spent ...
    let verified = server
        .keys()
        .verify_key(crate::common::authed(
            pb::VerifyKeyRequest {
                api_key: secret,
                ..Default::default()
            },
            &server.admin_token().await,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.remaining, Some(9));
    // ... and the form comes back with only the description changed.
    let fields = [
        ("service_name", "svc"),
        ("description", "changed"),
        ("scopes", ""),
        ("metadata", ""),
        ("rate_limit_requests", ""),
        ("rate_limit_window_seconds", ""),
        ("remaining", "10"),
        ("ttl_seconds", ""),
        ("enabled", "true"),
        ("shown", &shown),
    ];
    let reply = s.post("/ui/key/update", &fields, true).await;
    assert_eq!(reply.status, 303, "{}", text(&reply));
    let page = text(&s.get("/ui/key?service_name=svc").await);
    assert!(page.contains("<dd>changed</dd>"), "{page}");
    assert!(page.contains("<dd>9</dd>"), "credits refilled: {page}");
}
