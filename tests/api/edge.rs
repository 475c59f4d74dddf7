//! Operating at the edge: the REST API under the same budgets and deadline as gRPC,
//! REST logins without refresh tokens, trusted proxies on both transports, and
//! `kms backup` while a server writes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kms::{
    proto::kms::v1::{self as pb, audit_client::AuditClient},
    store::entities::{refresh_token, session},
};
use sea_orm::{Database, EntityTrait, PaginatorTrait};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, authed},
    http_client::Http,
    process::Cluster,
};

both_backends!(
    rest_over_the_cap_is_refused_at_once,
    rest_calls_past_the_deadline_are_answered_504,
    rest_login_stores_no_refresh_token,
    trusted_proxies_name_the_client,
    untrusted_peers_cannot_name_the_client,
    backup_while_a_server_writes,
);

/// A REST request whose head and the first bytes of its body are sent, the rest never:
/// it holds its budget slot until the deadline. Answers (time to the answer, the
/// answer's head and body).
async fn slow_post(addr: SocketAddr, token: String) -> (Duration, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /keys HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"serv"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    (started.elapsed(), answer)
}

/// One HTTP/1.1 answer: its head and its `content-length` body.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        if n == 0 {
            return String::from_utf8_lossy(&buf).into_owned();
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn detail(answer: &str) -> String {
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(value.as_object().unwrap().len(), 1, "{body}");
    value["detail"].as_str().unwrap().to_owned()
}

/// Ten slow REST requests against a cap of two: two hold their slots until the
/// deadline (408: their bodies never came), eight are refused at once with 503 and
/// `Retry-After`. gRPC draws on the same budget meanwhile, and both answer afterwards.
async fn rest_over_the_cap_is_refused_at_once(backend: Backend) {
    let deadline = Duration::from_secs(3);
    let server = TestServer::start_with(backend, |c| {
        c.limits.max_concurrent_requests = 2;
        c.limits.request_timeout = deadline;
    })
    .await;
    let admin = server.admin_token().await;
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(slow_post(server.http_addr, admin.clone())))
        .collect();
    // While the two holders hold: gRPC calls of the same budget are refused too.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let err = server
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "during".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let (mut refused, mut held) = (Vec::new(), Vec::new());
    for call in calls {
        let (took, answer) = call.await.unwrap();
        let status = answer.split(' ').nth(1).unwrap_or_default().to_owned();
        match status.as_str() {
            "503" => {
                assert_eq!(header(&answer, "retry-after"), Some("1"), "{answer}");
                assert!(detail(&answer).contains("limit"), "{answer}");
                refused.push(took);
            }
            "408" => {
                assert!(took >= deadline - Duration::from_millis(200), "{took:?}");
                held.push(took);
            }
            _ => panic!("unexpected answer after {took:?}: {answer}"),
        }
    }
    eprintln!("refused {refused:?}; held {held:?}");
    assert_eq!((refused.len(), held.len()), (8, 2));
    // At once: long before the deadline, whatever the machine's load.
    assert!(
        refused.iter().all(|t| *t < Duration::from_secs(1)),
        "{refused:?}"
    );
    // None hangs: the holders end at their deadline.
    assert!(held.iter().all(|t| *t < deadline + Duration::from_secs(2)));

    // The slots came back: both transports serve again.
    let http = Http::new(server.http_addr);
    let reply = http
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "after"}))
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "after".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    server.stop().await;
}

/// Logins queued behind one password hasher outlast a short deadline: answered 504
/// with the JSON error body (their bodies had all arrived), none later than the
/// deadline allows; the server serves afterwards.
async fn rest_calls_past_the_deadline_are_answered_504(backend: Backend) {
    let deadline = Duration::from_millis(300);
    let server = TestServer::start_with(backend, |c| {
        c.limits.request_timeout = deadline;
        c.password_hash_concurrency = 1;
    })
    .await;
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let http = Http::new(server.http_addr);
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = http
                    .post("/login")
                    .json(json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
                    .send()
                    .await;
                (started.elapsed(), reply)
            })
        })
        .collect();
    let (mut ok, mut late, mut unavailable) = (0, 0, 0);
    for call in calls {
        let (took, reply) = call.await.unwrap();
        assert!(took < deadline + Duration::from_secs(2), "{took:?}");
        match reply.status {
            200 => ok += 1,
            504 => {
                reply.expect(504, "longer than the server allows");
                late += 1;
            }
            // The database's own waits end before the deadline (a crowded pool).
            503 => unavailable += 1,
            _ => panic!("{reply:?}"),
        }
    }
    eprintln!("ok {ok}, 504 {late}, 503 {unavailable}");
    assert!(late >= 1, "no call outlasted a {deadline:?} deadline");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = Http::new(server.http_addr).get("/health").send().await;
    assert_eq!(reply.status, 200);
    server.stop().await;
}

async fn count_rows(db_url: &str) -> (u64, u64) {
    let db = Database::connect(db_url).await.unwrap();
    let sessions = session::Entity::find().count(&db).await.unwrap();
    let refresh = refresh_token::Entity::find().count(&db).await.unwrap();
    db.close().await.unwrap();
    (sessions, refresh)
}

/// The audit events of `action` on `target`, newest first, once there are at least
/// `want` (refusals are written a moment after the call answers), or after 5 s.
async fn audit_events(
    server: &TestServer,
    admin: &str,
    action: &str,
    target: &str,
    want: usize,
) -> Vec<pb::AuditEvent> {
    let since = Instant::now();
    loop {
        let events = AuditClient::new(server.channel.clone())
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    action: action.into(),
                    target: target.into(),
                    page_size: 1000,
                    ..Default::default()
                },
                admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        if events.len() >= want || since.elapsed() > Duration::from_secs(5) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// REST /login opens a session (its token can be logged out) but stores no refresh
/// token, which it could never hand out; gRPC Login stores both. Audit alike.
async fn rest_login_stores_no_refresh_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = Http::new(server.http_addr);
    let admin = server.admin_token().await;
    let logins_before = audit_events(&server, &admin, "login", ADMIN, 0).await.len();
    let before = count_rows(server.db_url()).await;

    let token = http.login(ADMIN, ADMIN_PASSWORD).await;
    let after_rest = count_rows(server.db_url()).await;
    assert_eq!(
        after_rest,
        (before.0 + 1, before.1),
        "sessions, refresh tokens"
    );
    let logins = audit_events(&server, &admin, "login", ADMIN, logins_before + 1).await;
    assert_eq!(logins.len(), logins_before + 1);
    assert_eq!(logins[0].outcome, "success");

    // The token works, and its session ends with Logout like any other.
    let reply = http.get("/keys/nothing").bearer(&token).send().await;
    assert_eq!(reply.status, 404, "{reply:?}");
    server
        .auth()
        .logout(authed(pb::LogoutRequest {}, &token))
        .await
        .unwrap();
    let reply = http.get("/keys/nothing").bearer(&token).send().await;
    assert_eq!(reply.status, 401, "{reply:?}");

    server.admin_token().await;
    let after_grpc = count_rows(server.db_url()).await;
    assert_eq!(after_grpc, (before.0 + 2, before.1 + 1));
    server.stop().await;
}

/// A gRPC Login with `x-forwarded-for` metadata.
async fn grpc_login(server: &TestServer, username: &str, password: &str, xff: &str) -> Code {
    let mut request = Request::new(pb::LoginRequest {
        username: username.into(),
        password: password.into(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    match server.auth().login(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn rest_login(server: &TestServer, username: &str, password: &str, xff: &str) -> u16 {
    Http::new(server.http_addr)
        .post("/login")
        .header("x-forwarded-for", xff)
        .json(json!({"username": username, "password": password}))
        .send()
        .await
        .status
}

/// One failure per username, so that only the address counter can lock.
async fn fail_logins_from(server: &TestServer, xff: &str, count: usize, tag: &str) {
    for i in 0..count {
        let user = format!("nobody-{tag}-{i}");
        if i % 2 == 0 {
            assert_eq!(
                rest_login(server, &user, "wrong-password-1", xff).await,
                401
            );
        } else {
            let code = grpc_login(server, &user, "wrong-password-1", xff).await;
            assert_eq!(code, Code::Unauthenticated);
        }
    }
}

fn throttle_tweak(c: &mut kms::config::Config) {
    // One failure per username, four per address; lockouts that outlast the test.
    c.login_throttle.max_failures = 1;
    c.login_throttle.lockout_base = Duration::from_secs(120);
    c.login_throttle.lockout_max = Duration::from_secs(120);
}

/// With 127.0.0.0/8 trusted, `x-forwarded-for` names the client on both transports:
/// in audit rows and for the per-address login throttle, so clients behind one proxy
/// count apart. A hop the client wrote itself, even a trusted-looking one, is not
/// believed.
async fn trusted_proxies_name_the_client(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        throttle_tweak(c);
        c.trusted_proxies = kms::net::TrustedProxies::parse("127.0.0.0/8").unwrap();
    })
    .await;
    let admin = server.admin_token().await;

    // Audit rows carry the forwarded client, from either transport.
    assert_eq!(
        rest_login(&server, "rest-client", "wrong-password-1", "198.51.100.9").await,
        401
    );
    assert_eq!(
        grpc_login(&server, "grpc-client", "wrong-password-1", "198.51.100.10").await,
        Code::Unauthenticated
    );
    // The client wrote a trusted-looking hop first; the proxy appended the real one.
    assert_eq!(
        rest_login(
            &server,
            "spoofer",
            "wrong-password-1",
            "127.0.0.9, 198.51.100.11"
        )
        .await,
        401
    );
    // Behind two proxies: the inner one (trusted) is skipped.
    assert_eq!(
        grpc_login(
            &server,
            "two-hops",
            "wrong-password-1",
            "10.1.1.1, 198.51.100.12, 127.0.0.3"
        )
        .await,
        Code::Unauthenticated
    );
    for (target, client) in [
        ("rest-client", "198.51.100.9"),
        ("grpc-client", "198.51.100.10"),
        ("spoofer", "198.51.100.11"),
        ("two-hops", "198.51.100.12"),
    ] {
        let events = audit_events(&server, &admin, "login", target, 1).await;
        assert_eq!(events.len(), 1, "{target}: {events:?}");
        assert_eq!(events[0].client_address, client, "{target}");
    }

    // Client A fails four times (the per-address cap): A is locked on both
    // transports, even for the right password; client B behind the same proxy is not.
    let (a, b) = ("203.0.113.7", "203.0.113.8");
    fail_logins_from(&server, a, 4, "a").await;
    assert_eq!(rest_login(&server, ADMIN, ADMIN_PASSWORD, a).await, 429);
    assert_eq!(
        grpc_login(&server, ADMIN, ADMIN_PASSWORD, a).await,
        Code::ResourceExhausted
    );
    assert_eq!(rest_login(&server, ADMIN, ADMIN_PASSWORD, b).await, 200);
    assert_eq!(
        grpc_login(&server, ADMIN, ADMIN_PASSWORD, b).await,
        Code::Ok
    );
    // Writing A's address left of one's own does not borrow A's lockout, nor escape
    // one's own: the rightmost untrusted hop decides.
    assert_eq!(
        rest_login(&server, ADMIN, ADMIN_PASSWORD, &format!("{b}, {a}")).await,
        429
    );
    assert_eq!(
        rest_login(&server, ADMIN, ADMIN_PASSWORD, &format!("{a}, {b}")).await,
        200
    );
    let throttled = audit_events(&server, &admin, "login_throttled", ADMIN, 1).await;
    assert!(
        !throttled.is_empty() && throttled.iter().all(|e| e.client_address == a),
        "{throttled:?}"
    );
    server.stop().await;
}

/// Without trusted proxies (the default) the header is ignored: the audit row names
/// the TCP peer, and every "client" behind it shares one per-address allowance.
async fn untrusted_peers_cannot_name_the_client(backend: Backend) {
    let server = TestServer::start_with(backend, throttle_tweak).await;
    let admin = server.admin_token().await;
    assert_eq!(
        grpc_login(&server, "forger", "wrong-password-1", "198.51.100.9").await,
        Code::Unauthenticated
    );
    let events = audit_events(&server, &admin, "login", "forger", 1).await;
    assert_eq!(events[0].client_address, "127.0.0.1");

    // With the forger's, four failures from one peer: the per-address cap.
    fail_logins_from(&server, "203.0.113.7", 2, "a").await;
    // The fourth failure comes "from" another client: the same peer all the same.
    assert_eq!(
        rest_login(&server, "nobody-b", "wrong-password-1", "203.0.113.8").await,
        401
    );
    assert_eq!(
        rest_login(&server, ADMIN, ADMIN_PASSWORD, "203.0.113.99").await,
        429
    );
    assert_eq!(
        grpc_login(&server, ADMIN, ADMIN_PASSWORD, "198.51.100.1").await,
        Code::ResourceExhausted
    );
    server.stop().await;
}

/// `kms backup` while a server acknowledges CreateKey calls: a second server on the
/// copy, with the same master key, finds every key acknowledged before the backup
/// started. The copy is owner-only, is never written over, and the command needs no
/// master key and says so. PostgreSQL: refused with pg_dump's instructions.
async fn backup_while_a_server_writes(backend: Backend) {
    let mut cluster = Cluster::new(&backend, &[]).await;
    let out = cluster.dir().join("backups").join("kms-backup.db");
    let out_arg = out.to_str().unwrap().to_owned();
    if let Backend::Postgres(_) = backend {
        let output = cluster.run(&["backup", "--out", &out_arg]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("pg_dump"), "{stderr}");
        // The test database is a schema picked by search_path: named in the advice.
        assert!(stderr.contains("--schema=t_"), "{stderr}");
        assert!(
            stderr.contains("master key is NOT in the backup"),
            "{stderr}"
        );
        assert!(!out.exists());
        return;
    }
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let server = cluster.start("origin").await;
    let admin = server.admin_token().await;
    let acked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (mut keys, admin) = (server.keys(), admin.clone());
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("svc-{w}-{i}");
                    keys.create_key(authed(
                        pb::CreateKeyRequest {
                            service_name: name.clone(),
                            ..Default::default()
                        },
                        &admin,
                    ))
                    .await
                    .unwrap();
                    acked.lock().unwrap().push((Instant::now(), name));
                    i += 1;
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The backup needs no master key.
    let master_key = cluster.env_var("KMS_MASTER_KEY").unwrap();
    cluster.set_env("KMS_MASTER_KEY", None);
    let started = Instant::now();
    let output = cluster.run(&["backup", "--out", &out_arg]).await;
    let took = started.elapsed();
    let during = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at > started)
        .count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&out_arg), "{stdout}");
    assert!(
        stderr.contains("master key is NOT in the backup"),
        "{stderr}"
    );
    eprintln!("backup took {took:?}; {during} keys were acknowledged while it ran");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    // Never over an existing file.
    let again = cluster.run(&["backup", "--out", &out_arg]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let before: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at < started)
        .map(|(_, name)| name.clone())
        .collect();
    let total = acked.lock().unwrap().len();
    // A second server on the copy, with the same master key.
    cluster.set_env("KMS_MASTER_KEY", Some(&master_key));
    cluster.set_env(
        "KMS_DATABASE_URL",
        Some(&format!("sqlite://{}?mode=rw", out.display())),
    );
    let restored = cluster.start("restored").await;
    let admin = restored.admin_token().await;
    let mut keys = restored.keys();
    for name in &before {
        let key = keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: name.clone(),
                },
                &admin,
            ))
            .await
            .unwrap_or_else(|s| panic!("{name} acknowledged before the backup: {s:?}"))
            .into_inner();
        assert!(key.api_key.starts_with("kms_"));
    }
    let listed = keys
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 1000,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .keys
        .len();
    eprintln!(
        "{} keys acknowledged before the backup, {listed} in it, {total} in all",
        before.len()
    );
    assert!(listed >= before.len() && listed <= total);
    drop(server);
}
