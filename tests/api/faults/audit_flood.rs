//! A flood of refusals that anyone can cause (Login for a made-up user, bad VerifyKeys
//! from a registered user) writes a bounded number of audit rows, not one per call;
//! the first of the burst is recorded at once, and the rows' counts add up to every
//! refusal the server saw.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kms::proto::kms::v1::{self as pb, audit_client::AuditClient};
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, authed, hex_id},
    http_client::Http,
};

both_backends!(
    a_login_flood_for_a_made_up_user_writes_a_bounded_number_of_rows,
    a_verify_key_flood_writes_a_bounded_number_of_rows,
);

const CALLS: usize = 2_000;
/// Calls in flight at once: well under the concurrency limit, so that every call
/// reaches the handler and is a refusal the server records.
const WORKERS: usize = 32;
/// How long the first refusal of a burst may take to be on record (it is written at
/// once, in the background; its window lasts 10 s).
const FIRST_ROW_WITHIN: Duration = Duration::from_secs(2);
/// Repeats are written when their 10 s window ends (checked every second).
const ALL_COUNTED_WITHIN: Duration = Duration::from_secs(25);

/// Every row matching the filter (at most 1,000: the bound is far below).
async fn rows(
    server: &TestServer,
    admin: &str,
    filter: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    let page = AuditClient::new(server.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1_000,
                ..filter
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty(), "more than 1,000 rows");
    page.events
}

fn counted(rows: &[pb::AuditEvent]) -> i64 {
    rows.iter().map(|e| e.count).sum()
}

/// Runs `call(i)` for i in 0..CALLS on `WORKERS` tasks; the time it took.
async fn flood<F, Fut>(call: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (call, next) = (call.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CALLS {
                        return;
                    }
                    call(i).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    started.elapsed()
}

/// Polls until `rows` of the filter count `expected` events; the rows and the wait.
async fn until_counted(
    server: &TestServer,
    admin: &str,
    filter: &pb::ListAuditEventsRequest,
    expected: i64,
) -> (Vec<pb::AuditEvent>, Duration) {
    let started = Instant::now();
    loop {
        let found = rows(server, admin, filter.clone()).await;
        if counted(&found) >= expected {
            return (found, started.elapsed());
        }
        assert!(
            started.elapsed() < ALL_COUNTED_WITHIN,
            "after {ALL_COUNTED_WITHIN:?} the rows count {} of {expected} events",
            counted(&found)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls until some row matches; how long it took.
async fn until_first(
    server: &TestServer,
    admin: &str,
    filter: &pb::ListAuditEventsRequest,
) -> Duration {
    let started = Instant::now();
    while rows(server, admin, filter.clone()).await.is_empty() {
        assert!(
            started.elapsed() < FIRST_ROW_WITHIN,
            "no row within {FIRST_ROW_WITHIN:?} for {filter:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// A Prometheus counter's value from the server's /metrics.
async fn metric(server: &TestServer, line_start: &str) -> i64 {
    let body = Http::new(server.http_addr)
        .get("/metrics")
        .send()
        .await
        .body;
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn a_login_flood_for_a_made_up_user_writes_a_bounded_number_of_rows(backend: Backend) {
    let label = format!("{backend:?}").to_lowercase();
    let label = label.split('(').next().unwrap().to_owned();
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let ghost = format!("ghost-{}", hex_id());

    // The first refusal is on record at once, not at the end of its window.
    let every = pb::ListAuditEventsRequest {
        target: ghost.clone(),
        ..Default::default()
    };
    let probe = server
        .auth()
        .login(pb::LoginRequest {
            username: ghost.clone(),
            password: "not-the-password".into(),
        })
        .await;
    assert_eq!(probe.unwrap_err().code(), Code::Unauthenticated);
    let first = until_first(&server, &admin, &every).await;

    let auth = server.auth();
    let who = ghost.clone();
    let elapsed = flood(move |_| {
        let (mut auth, who) = (auth.clone(), who.clone());
        async move {
            let answer = auth
                .login(pb::LoginRequest {
                    username: who,
                    password: "not-the-password".into(),
                })
                .await;
            let code = answer.map(|_| Code::Ok).unwrap_or_else(|s| s.code());
            assert!(
                matches!(code, Code::Unauthenticated | Code::ResourceExhausted),
                "{code:?}"
            );
        }
    })
    .await;

    // What the server saw, by its own counters: each is one refusal to record.
    let refused = metric(&server, r#"kms_login_attempts_total{outcome="throttled"}"#).await
        + metric(&server, r#"kms_login_attempts_total{outcome="failure"}"#).await;
    assert!(
        refused > CALLS as i64,
        "only {refused} of 1 + {CALLS} logins were refused"
    );
    let (found, waited) = until_counted(&server, &admin, &every, refused).await;
    assert_eq!(counted(&found), refused, "{found:#?}");
    // Per kind (login/failure, login_throttled/denied): one row at once and one with
    // the count per 10 s window; the flood spans at most a few windows.
    assert!(found.len() <= 12, "{} rows: {found:#?}", found.len());
    assert!(found.iter().all(|e| e.client_address == "127.0.0.1"));
    eprintln!(
        "audit flood ({label}): 1 + {CALLS} Login for a made-up user (the flood took {elapsed:.1?}): {refused} refused, {} audit rows (counts sum {}); the first refusal on record {first:.1?} after its answer, all counted {waited:.1?} after the flood",
        found.len(),
        counted(&found)
    );
    server.stop().await;
}

async fn a_verify_key_flood_writes_a_bounded_number_of_rows(backend: Backend) {
    let label = format!("{backend:?}").to_lowercase();
    let label = label.split('(').next().unwrap().to_owned();
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let user = format!("prober-{}", &hex_id()[..8]);
    let token = server.user_token(&user).await;

    let filter = pb::ListAuditEventsRequest {
        actor: user.clone(),
        action: "key_verify".into(),
        ..Default::default()
    };
    let probe = server
        .keys()
        .verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: "kms_probe".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    assert!(!probe.into_inner().valid);
    let first = until_first(&server, &admin, &filter).await;

    let keys = server.keys();
    let elapsed = flood(move |i| {
        let (mut keys, token) = (keys.clone(), token.clone());
        // Half one key over and over, half a different key each time (an attacker
        // varying the target to escape the coalescing).
        let api_key = if i % 2 == 0 {
            "not-a-key-0000-xxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_owned()
        } else {
            format!("{i:08}-not-a-key-xxxxxxxxxxxxxxxxxxxxxxx")
        };
        async move {
            let answer = keys
                .verify_key(authed(
                    pb::VerifyKeyRequest {
                        api_key,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(!answer.valid);
        }
    })
    .await;

    let refused = CALLS as i64 + 1;
    let (found, waited) = until_counted(&server, &admin, &filter, refused).await;
    assert_eq!(counted(&found), refused, "{found:#?}");
    // Per 10 s window: 10 kinds at once, the repeats of the one key, and one row for
    // every other key (target "*").
    assert!(found.len() <= 44, "{} rows: {found:#?}", found.len());
    assert!(
        found.iter().any(|e| e.target == "*" && e.count > 1),
        "{found:#?}"
    );
    eprintln!(
        "audit flood ({label}): 1 + {CALLS} bad VerifyKey from one user (the flood took {elapsed:.1?}): {} audit rows (counts sum {}); the first on record {first:.1?} after its answer, all counted {waited:.1?} after the flood",
        found.len(),
        counted(&found)
    );
    server.stop().await;
}
