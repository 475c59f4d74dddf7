//! WatchAuditEvents: replay after an id, then live events (a second replica's too)
//! within 1 s; a reader that stops reading is ended with RESOURCE_EXHAUSTED and
//! resumes from its last id without a gap.

use std::time::{Duration, Instant};

use kms::{
    proto::kms::v1::{self as pb, audit_client::AuditClient, users_client::UsersClient},
    store::{AuditRecord, Store, StoreOptions},
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming, transport::Channel};

use crate::{
    both_backends,
    common::{Backend, TestServer, authed},
};

fn watch_request(after_id: i64, token: &str) -> tonic::Request<pb::WatchAuditEventsRequest> {
    authed(pb::WatchAuditEventsRequest { after_id }, token)
}

async fn watch(channel: &Channel, token: &str, after_id: i64) -> Streaming<pb::AuditEvent> {
    AuditClient::new(channel.clone())
        .watch_audit_events(watch_request(after_id, token))
        .await
        .unwrap()
        .into_inner()
}

/// The next event, within `limit`.
async fn next_within(stream: &mut Streaming<pb::AuditEvent>, limit: Duration) -> pb::AuditEvent {
    tokio::time::timeout(limit, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no audit event within {limit:?}"))
        .expect("the stream goes on")
        .expect("an event, not an error")
}

/// Events until one with `action` and `target`, within `limit` in all.
async fn until(
    stream: &mut Streaming<pb::AuditEvent>,
    action: &str,
    target: &str,
    limit: Duration,
) -> (pb::AuditEvent, Duration) {
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        let event = next_within(stream, left).await;
        if event.action == action && event.target == target {
            return (event, started.elapsed());
        }
    }
}

async fn create_key(server: &TestServer, token: &str, name: &str) {
    server
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: name.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
}

both_backends!(
    replay_then_live_events_in_id_order,
    a_reader_that_stops_reading_is_ended_and_resumes_without_a_gap,
    the_stream_is_for_admins,
    a_watch_ends_when_its_login_or_admin_role_does
);

async fn replay_then_live_events_in_id_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    for i in 0..5 {
        create_key(&server, &admin, &format!("before-{i}")).await;
    }
    // Replay from the start: the stored events, in id order.
    let mut stream = watch(&server.channel, &admin, 0).await;
    let (fifth, _) = until(
        &mut stream,
        "key_create",
        "before-4",
        Duration::from_secs(5),
    )
    .await;
    // Then live ones, within a second of their call.
    create_key(&server, &admin, "live").await;
    let (live, took) = until(&mut stream, "key_create", "live", Duration::from_secs(3)).await;
    assert!(live.id > fifth.id);
    assert!(took < Duration::from_secs(1), "live event after {took:?}");
    eprintln!(
        "audit stream: a live event arrived {} ms after its call",
        took.as_millis()
    );

    // After an id: only what follows it, first the oldest.
    let mut resumed = watch(&server.channel, &admin, fifth.id).await;
    let mut ids = Vec::new();
    loop {
        let event = next_within(&mut resumed, Duration::from_secs(5)).await;
        ids.push(event.id);
        if event.target == "live" {
            assert_eq!(event.id, live.id);
            break;
        }
    }
    assert!(ids[0] > fifth.id, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    server.stop().await;
}

async fn a_reader_that_stops_reading_is_ended_and_resumes_without_a_gap(backend: Backend) {
    const FLOOD: usize = 20_000;
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    // A client with small HTTP/2 windows, so that not reading pushes back on the server.
    let slow = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut stream = watch(&slow, &admin, 0).await;
    // Past the replay (which reads at the reader's pace, so never falls behind): a
    // live event through, then a moment for the replay's last, empty page.
    create_key(&server, &admin, "marker").await;
    let (first, _) = until(&mut stream, "key_create", "marker", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Many events at once, written straight into the table, while the reader reads
    // nothing.
    let store = Store::connect(&StoreOptions {
        url: server.db_url().to_owned(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let record = |i: usize| AuditRecord {
        at: chrono::Utc::now(),
        actor: "flood".into(),
        action: "key_get",
        target: format!("flood-{i}"),
        outcome: "success",
        client_addr: None,
        request_id: format!("flood-{i}"),
    };
    for chunk in (0..FLOOD).collect::<Vec<_>>().chunks(500) {
        store
            .audit_many(chunk.iter().map(|&i| record(i)).collect())
            .await
            .unwrap();
    }
    // Let the server's follower read all of it, past every buffer.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut last = first.id;
    let mut received = 1;
    let mut flood_seen = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(event))) => {
                assert!(
                    event.id > last,
                    "ids go up: {} after {last} ({} {})",
                    event.id,
                    event.action,
                    event.target
                );
                last = event.id;
                received += 1;
                if event.actor == "flood" {
                    flood_seen.push(event.target);
                }
            }
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stream ended without a status after {received} events"),
            Err(_) => panic!("the stream neither went on nor ended after {received} events"),
        }
    };
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("after_id"), "{end:?}");
    eprintln!(
        "audit stream: a reader that stopped reading got {received} of {FLOOD}+ events, then RESOURCE_EXHAUSTED"
    );
    assert!(
        received < FLOOD,
        "the server buffered everything for a reader that did not read"
    );

    // Resuming from the last id received loses nothing.
    let mut resumed = watch(&server.channel, &admin, last).await;
    while flood_seen.len() < FLOOD {
        let event = next_within(&mut resumed, Duration::from_secs(10)).await;
        assert!(event.id > last);
        last = event.id;
        if event.actor == "flood" {
            flood_seen.push(event.target);
        }
    }
    // Together with what the slow reader got before it was ended: every flood event,
    // once, in order.
    let expected: Vec<String> = (0..FLOOD).map(|i| format!("flood-{i}")).collect();
    assert_eq!(flood_seen, expected);
    store.close().await.unwrap();
    server.stop().await;
}

async fn the_stream_is_for_admins(backend: Backend) {
    let server = TestServer::start(backend).await;
    let user = server.user_token("watcher").await;
    let admin = server.admin_token().await;
    let mut client = AuditClient::new(server.channel.clone());
    let denied = client
        .watch_audit_events(watch_request(0, &user))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let anonymous = client
        .watch_audit_events(pb::WatchAuditEventsRequest { after_id: 0 })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let negative = client
        .watch_audit_events(watch_request(-1, &admin))
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(negative.message().contains("after_id"));
    server.stop().await;
}

/// A second replica's events reach a watcher of the first within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn another_replicas_events_arrive_within_a_second() {
    let a = TestServer::start(Backend::postgres()).await;
    let b = a.replica().await;
    let admin = a.admin_token().await;
    let mut stream = watch(&a.channel, &admin, 0).await;
    let started = Instant::now();
    create_key(&b, &admin, "on-b").await;
    until(&mut stream, "key_create", "on-b", Duration::from_secs(3)).await;
    let took = started.elapsed();
    eprintln!(
        "audit stream: replica b's event reached a watcher of a in {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    b.stop().await;
    a.stop().await;
}

/// The end of a watch, within `limit`: the error it ends with (skipping events).
async fn end_within(stream: &mut Streaming<pb::AuditEvent>, limit: Duration) -> tonic::Status {
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => panic!("the watch was still open after {limit:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => return status,
            Ok(None) => panic!("the watch ended without a status"),
        }
    }
}

/// A watch is authorised while it streams, not only when it opens: losing the admin
/// role, logging out or the token expiring ends it within about a second, and nothing
/// committed afterwards reaches it.
async fn a_watch_ends_when_its_login_or_admin_role_does(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let password = "second-admin-password";
    server
        .auth()
        .register(authed(
            pb::RegisterRequest {
                username: "ops".into(),
                password: password.into(),
                roles: vec!["admin".into()],
            },
            &admin,
        ))
        .await
        .unwrap();

    // Demoted while watching.
    let ops = server.login("ops", password).await;
    let mut stream = watch(&server.channel, &ops, 0).await;
    until(&mut stream, "register", "ops", Duration::from_secs(3)).await;
    UsersClient::new(server.channel.clone())
        .set_roles(authed(
            pb::SetRolesRequest {
                username: "ops".into(),
                roles: vec!["user".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    let ended = end_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        matches!(ended.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{ended:?}"
    );
    create_key(&server, &admin, "after-demotion").await;
    assert!(stream.next().await.is_none(), "nothing after the end");

    // Logged out while watching (an admin's own stream).
    let second = server.admin_token().await;
    let mut stream = watch(&server.channel, &second, 0).await;
    until(
        &mut stream,
        "key_create",
        "after-demotion",
        Duration::from_secs(3),
    )
    .await;
    server
        .auth()
        .logout(authed(pb::LogoutRequest {}, &second))
        .await
        .unwrap();
    let ended = end_within(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    server.stop().await;
}
