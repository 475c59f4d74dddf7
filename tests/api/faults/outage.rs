//! A database outage: PostgreSQL behind a TCP proxy that is cut while calls
//! run. Calls fail fast with UNAVAILABLE (bounded by the call timeout, no hang), health
//! goes NOT_SERVING, and everything recovers by itself when the database returns.
//! PostgreSQL only: a SQLite file cannot go away in a meaningful way.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kms::{http::http_get, proto::kms::v1 as pb};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{Proxy, create, url_parts};
use crate::{
    common::{Backend, TestServer, authed, postgres_url},
    process::health,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn unreachable_database_answers_unavailable_then_recovers() {
    let base = postgres_url();
    let url: url_parts::Parts = url_parts::Parts::parse(&base);
    let proxy = Proxy::start(0, url.host_port.clone()).await;
    let proxied = url.with_host_port(&format!("127.0.0.1:{}", proxy.port));
    let server = TestServer::start(Backend::Postgres(proxied)).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    keys.create_key(authed(create("before"), &admin))
        .await
        .unwrap();

    let port = proxy.cut().await;
    let started = std::time::Instant::now();
    let err = keys
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "before".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().to_lowercase().contains("select"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed fast enough"
    );
    let err = server
        .auth()
        .login(pb::LoginRequest {
            username: crate::common::ADMIN.into(),
            password: crate::common::ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // ext_authz cannot check an API key either: a gRPC error for Envoy's
    // failure_mode_allow to decide, never an allow or a denial.
    let err = crate::ext_authz::client(server.channel.clone())
        .check(crate::ext_authz::check_request(&[(
            "x-api-key",
            "some-api-key-some-api-key-some-api-key",
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // The database returns on the same address: calls succeed again, no restart.
    let _proxy = Proxy::start(port, url.host_port.clone()).await;
    let mut recovered = false;
    for _ in 0..40 {
        if keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: "before".into(),
                },
                &admin,
            ))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the server did not recover after the database returned"
    );
    server.stop().await;
}

/// The server's call timeout in the outage test: longer than the database pool's
/// 5 s acquire timeout (src/store/mod.rs), so that a call waiting for a connection is
/// answered UNAVAILABLE by the pool before the server's own deadline would answer
/// DEADLINE_EXCEEDED. (With a shorter call timeout it is DEADLINE_EXCEEDED: see
/// `outage_with_a_short_call_timeout_answers_unavailable`.)
const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// Below the pool's acquire timeout.
const SHORT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the database stays away: past the pool's acquire timeout, so calls that
/// wait for a new connection run into it.
const OUTAGE: Duration = Duration::from_secs(7);
const LOAD_TASKS: usize = 4;

#[derive(Debug)]
struct Call {
    what: &'static str,
    /// Since the test's start.
    started: Duration,
    took: Duration,
    /// `None`: no answer within the call timeout plus 5 s (a hang).
    code: Option<Code>,
    message: String,
}

/// What the load clients share.
#[derive(Clone)]
struct Load {
    channel: tonic::transport::Channel,
    admin: String,
    /// A key's secret, for VerifyKey.
    secret: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
    call_timeout: Duration,
}

/// Keeps calling until `stop`, recording every answer.
async fn load(load: Load, task: usize) {
    let Load {
        channel,
        admin,
        secret,
        t0,
        stop,
        calls,
        call_timeout,
    } = load;
    let wait = call_timeout + Duration::from_secs(5);
    let mut keys = kms::proto::kms::v1::keys_client::KeysClient::new(channel);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = t0.elapsed();
        let at = Instant::now();
        let (what, call): (&'static str, _) = match n % 4 {
            0 => ("GetKey", {
                let f = keys.get_key(authed(
                    pb::GetKeyRequest {
                        service_name: "before".into(),
                    },
                    &admin,
                ));
                tokio::time::timeout(wait, async { f.await.map(|_| ()) }).await
            }),
            1 => ("VerifyKey", {
                let f = keys.verify_key(authed(
                    pb::VerifyKeyRequest {
                        api_key: secret.clone(),
                        ..Default::default()
                    },
                    &admin,
                ));
                tokio::time::timeout(wait, async { f.await.map(|_| ()) }).await
            }),
            2 => ("CreateKey", {
                let f = keys.create_key(authed(create(&format!("load-{task}-{n}")), &admin));
                tokio::time::timeout(wait, async { f.await.map(|_| ()) }).await
            }),
            _ => ("ListKeys", {
                let f = keys.list_keys(authed(
                    pb::ListKeysRequest {
                        page_size: 10,
                        page_token: String::new(),
                    },
                    &admin,
                ));
                tokio::time::timeout(wait, async { f.await.map(|_| ()) }).await
            }),
        };
        let (code, message) = match call {
            Ok(Ok(())) => (Some(Code::Ok), String::new()),
            Ok(Err(s)) => (Some(s.code()), s.message().to_owned()),
            Err(_) => (None, "no answer".into()),
        };
        calls.lock().unwrap().push(Call {
            what,
            started,
            took: at.elapsed(),
            code,
            message,
        });
        // A client that backs off a little, as gRPC clients do.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the health of "" and kms.v1.Keys until both are `want`; the time that took.
async fn health_becomes(
    channel: &tonic::transport::Channel,
    want: ServingStatus,
    since: Instant,
) -> Duration {
    let deadline = Duration::from_secs(20);
    loop {
        let overall = health(channel, "").await;
        let keys = health(channel, "kms.v1.Keys").await;
        if overall == Some(want) && keys == Some(want) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < deadline,
            "health is {overall:?}/{keys:?}, not {want:?}, {deadline:?} on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn outage_under_load_fails_fast_and_recovers() {
    outage_under_load(CALL_TIMEOUT).await;
}

/// A call deadline shorter than the pool's 5 s wait: the answer is still UNAVAILABLE,
/// before the deadline. (Found by this test: it used to be DEADLINE_EXCEEDED; the
/// server now waits for the database at most three quarters of the call timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn outage_with_a_short_call_timeout_answers_unavailable() {
    outage_under_load(SHORT_CALL_TIMEOUT).await;
}

async fn outage_under_load(call_timeout: Duration) {
    let base = postgres_url();
    let (proxy, proxied, upstream) = Proxy::in_front_of(&base).await;
    let server = TestServer::start_with(Backend::Postgres(proxied), |c| {
        c.limits.request_timeout = call_timeout;
    })
    .await;
    let admin = server.admin_token().await;
    let secret = server
        .keys()
        .create_key(authed(create("before"), &admin))
        .await
        .unwrap()
        .into_inner()
        .api_key;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let shared = Load {
        channel: server.channel.clone(),
        admin: admin.clone(),
        secret,
        t0,
        stop: stop.clone(),
        calls: calls.clone(),
        call_timeout,
    };
    let tasks: Vec<_> = (0..LOAD_TASKS)
        .map(|task| tokio::spawn(load(shared.clone(), task)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The database goes away. A call answered while the cut is under way may already
    // see it, so "before the outage" ends when the cut starts.
    let cut_started = t0.elapsed();
    let port = proxy.cut().await;
    let cut_at = t0.elapsed();
    let cut = Instant::now();
    let detected = health_becomes(&server.channel, ServingStatus::NotServing, cut).await;
    let (status, _) = http_get(server.http_addr, "/health").await.unwrap();
    assert_eq!(status, 503, "HTTP /health during the outage");
    tokio::time::sleep_until((cut + OUTAGE).into()).await;

    // It returns on the same address: no restart of the server.
    let _proxy = Proxy::start(port, upstream).await;
    let restored_at = t0.elapsed();
    let restored = Instant::now();
    let serving = health_becomes(&server.channel, ServingStatus::Serving, restored).await;
    let mut keys = server.keys();
    let first_ok = loop {
        let ok = keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: "before".into(),
                },
                &admin,
            ))
            .await
            .is_ok();
        if ok {
            break restored.elapsed();
        }
        assert!(
            restored.elapsed() < Duration::from_secs(20),
            "calls still fail 20 s after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recovered_at = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let calls = std::mem::take(&mut *calls.lock().unwrap());

    let hung: Vec<_> = calls.iter().filter(|c| c.code.is_none()).collect();
    assert!(hung.is_empty(), "calls without an answer: {hung:?}");
    let slow: Vec<_> = calls
        .iter()
        .filter(|c| c.took > call_timeout + Duration::from_secs(1))
        .collect();
    assert!(
        slow.is_empty(),
        "calls slower than the call timeout: {slow:?}"
    );
    let wrong: Vec<_> = calls
        .iter()
        .filter(|c| !matches!(c.code, Some(Code::Ok | Code::Unavailable)))
        .collect();
    assert!(
        wrong.is_empty(),
        "answers other than OK or UNAVAILABLE: {wrong:?}"
    );
    let leaky: Vec<_> = calls
        .iter()
        .filter(|c| {
            let m = c.message.to_lowercase();
            ["select", "insert", "sqlx", "postgres://"]
                .iter()
                .any(|w| m.contains(w))
        })
        .collect();
    assert!(leaky.is_empty(), "messages that show internals: {leaky:?}");
    let before: Vec<_> = calls
        .iter()
        .filter(|c| c.started + c.took < cut_started)
        .collect();
    let failed_before: Vec<_> = before.iter().filter(|c| c.code != Some(Code::Ok)).collect();
    assert!(
        !before.is_empty() && failed_before.is_empty(),
        "before the outage every call succeeds: {failed_before:?}"
    );
    let unavailable: Vec<_> = calls
        .iter()
        .filter(|c| c.code == Some(Code::Unavailable))
        .collect();
    assert!(!unavailable.is_empty(), "the outage was never noticed");
    let after: Vec<_> = calls.iter().filter(|c| c.started > recovered_at).collect();
    assert!(
        !after.is_empty() && after.iter().all(|c| c.code == Some(Code::Ok)),
        "after recovery every call succeeds: {:?}",
        after
            .iter()
            .filter(|c| c.code != Some(Code::Ok))
            .collect::<Vec<_>>()
    );
    let first_unavailable = unavailable
        .iter()
        .map(|c| (c.started + c.took).saturating_sub(cut_at))
        .min()
        .unwrap();
    let slowest_failure = unavailable.iter().map(|c| c.took).max().unwrap();
    let during = calls
        .iter()
        .filter(|c| c.started >= cut_at && c.started < restored_at)
        .count();
    eprintln!(
        "outage: {} calls by {LOAD_TASKS} clients ({} OK, {} UNAVAILABLE, {during} started during the {OUTAGE:?} outage); \
         first UNAVAILABLE {} ms after the cut, slowest UNAVAILABLE answer {} ms (call timeout {call_timeout:?}); \
         health NOT_SERVING {} ms after the cut; health SERVING {} ms and first successful call {} ms after the database returned",
        calls.len(),
        calls.iter().filter(|c| c.code == Some(Code::Ok)).count(),
        unavailable.len(),
        first_unavailable.as_millis(),
        slowest_failure.as_millis(),
        detected.as_millis(),
        serving.as_millis(),
        first_ok.as_millis(),
    );
    let kinds: std::collections::BTreeSet<_> = unavailable.iter().map(|c| c.what).collect();
    eprintln!("outage: UNAVAILABLE answers came from {kinds:?}");
    server.stop().await;
}
