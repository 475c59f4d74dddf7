//! The live audit view's event stream over plain HTTP: the security headers, the
//! replay, a new event (committed on another replica, on PostgreSQL), and resuming with
//! `Last-Event-ID`. The browser side is in `flow`; the 403 for non-admins in
//! `security`.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use kms::proto::kms::v1 as pb;
use serde_json::Value;

use super::security::Session;
use crate::common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer};

crate::both_backends!(the_stream_sends_new_events_from_any_replica);

/// Reads server-sent events off a response body.
struct Events {
    body: Incoming,
    buffer: String,
}

impl Events {
    /// The next `audit` event's data, within 10 s.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut kind = "";
                    let mut id = "";
                    let mut data = "";
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event: ") {
                            kind = v;
                        } else if let Some(v) = line.strip_prefix("id: ") {
                            id = v;
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = v;
                        }
                    }
                    if kind == "audit" {
                        let event: Value = serde_json::from_str(data).unwrap();
                        assert_eq!(event["id"].to_string(), id, "the SSE id is the row's");
                        return event;
                    }
                    continue;
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream is open")
                    .unwrap();
                if let Ok(bytes) = frame.into_data() {
                    self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
                }
            }
        })
        .await
        .expect("an audit event within 10 s")
    }

    /// Reads until the server ends the stream; panics if it is still open after `limit`.
    async fn ends_within(&mut self, limit: Duration) {
        tokio::time::timeout(limit, async {
            while let Some(frame) = self.body.frame().await {
                if frame.is_err() {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the stream was still open after {limit:?}"));
    }

    /// The next `audit` event that `wanted` accepts.
    async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let event = self.next().await;
            if wanted(&event) {
                return event;
            }
        }
    }
}

async fn open(s: &Session, last_event_id: Option<&str>) -> Events {
    let mut call = s
        .http
        .get("/ui/audit/live/events?after=0")
        .header("cookie", &s.cookie);
    if let Some(id) = last_event_id {
        call = call.header("last-event-id", id);
    }
    let response = call.open().await;
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    Events {
        body: response.into_body(),
        buffer: String::new(),
    }
}

async fn failed_login(server: &TestServer, username: &str) {
    server
        .auth()
        .login(pb::LoginRequest {
            username: username.into(),
            password: "not-the-password".into(),
        })
        .await
        .unwrap_err();
}

fn is_failed_login_of(event: &Value, username: &str) -> bool {
    event["action"] == "login" && event["outcome"] == "failure" && event["target"] == username
}

async fn the_stream_sends_new_events_from_any_replica(backend: Backend) {
    let on_postgres = matches!(backend, Backend::Postgres(_));
    let server = TestServer::start(backend).await;
    // SQLite serves one server; on PostgreSQL the event commits on another replica.
    let replica = if on_postgres {
        Some(server.replica().await)
    } else {
        None
    };
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;

    let page = s.get("/ui/audit/live").await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains("data-live=\"/ui/audit/live/events?after="),
        "{html}"
    );
    assert!(html.contains("href=\"/ui/audit/live\""), "the refresh link");

    // The replay from after=0 holds the console sign-in.
    let mut events = open(&s, None).await;
    let first = events.next().await;
    assert_eq!(first["id"], 1, "from the first row");
    events
        .until(|e| e["action"] == "login" && e["actor"] == ADMIN)
        .await;

    // A failed login (on the other replica, on PostgreSQL) comes live.
    failed_login(replica.as_ref().unwrap_or(&server), "mallory").await;
    let seen = events.until(|e| is_failed_login_of(e, "mallory")).await;
    assert!(seen["at"].as_str().unwrap().ends_with(" UTC"));

    // A reconnect resumes after the browser's Last-Event-ID: nothing older again.
    let last = seen["id"].to_string();
    let mut resumed = open(&s, Some(&last)).await;
    failed_login(&server, "trudy").await;
    let next = resumed.next().await;
    assert!(next["id"].as_i64().unwrap() > seen["id"].as_i64().unwrap());
    assert!(is_failed_login_of(&next, "trudy"), "{next}");
    if let Some(replica) = replica {
        replica.stop().await;
    }
}

/// The stream checks its session's token again every second (as the gRPC watch does):
/// demoted from admin, the viewer's stream ends within a couple of seconds rather than
/// at the end of its 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_ends_when_the_admin_role_does() {
    use kms::proto::kms::v1::users_client::UsersClient;
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_token().await;
    server
        .auth()
        .register(crate::common::authed(
            pb::RegisterRequest {
                username: "watcher".into(),
                password: "watcher-password".into(),
                roles: vec!["admin".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    let s = Session::sign_in(&server, "watcher", "watcher-password").await;
    let mut events = open(&s, None).await;
    events.next().await;
    UsersClient::new(server.channel.clone())
        .set_roles(crate::common::authed(
            pb::SetRolesRequest {
                username: "watcher".into(),
                roles: vec!["user".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    events.ends_within(Duration::from_secs(4)).await;
    server.stop().await;
}
