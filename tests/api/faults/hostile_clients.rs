//! Hostile clients: what a caller without credentials can hold open must not take the
//! capacity that real calls need. Idle streams, silent connections, trickled request
//! heads, bodies that never complete, connection floods and a full descriptor table.
//! Each bound is set short here; the defaults are in README "Hostile clients".

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use kms::proto::kms::v1::{self as pb, keys_client::KeysClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    common::{Backend, TestServer, authed},
    process::{Cluster, health},
};

/// A TCP connection from `source` (any 127.0.0.0/8 address works on Linux loopback),
/// so that a test can be several peers at once.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the server closes the connection; returns how long that took and what
/// it sent. Panics if it is still open after `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + bound).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {bound:?}"),
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the server closes the connection within a short while (whatever it sends
/// first, such as its HTTP/2 SETTINGS).
async fn refused_at_once(stream: &mut TcpStream) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_are_closed_within_their_bounds() {
    let handshake = Duration::from_secs(1);
    let idle = Duration::from_secs(2);
    let deadline = Duration::from_secs(3);
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.connections.handshake_timeout = handshake;
        c.limits.connections.idle_timeout = idle;
        c.limits.request_timeout = deadline;
    })
    .await;
    let slack = Duration::from_secs(2);

    // A connection that sends nothing, on either port.
    for addr in [server.addr, server.http_addr] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (took, _) = closed_within(&mut silent, handshake + slack).await;
        eprintln!("silent TCP connection to {addr} closed after {took:?}");
        assert!(took >= handshake - Duration::from_millis(100), "{took:?}");
    }

    // The HTTP/2 preface and SETTINGS, then silence.
    let mut preface = TcpStream::connect(server.addr).await.unwrap();
    preface.write_all(HTTP2_PREFACE).await.unwrap();
    let (took, _) = closed_within(&mut preface, handshake + slack).await;
    eprintln!("HTTP/2 preface then silence: closed after {took:?}");

    // An HTTP/1 request head trickled a line at a time, never finished.
    let mut trickle = TcpStream::connect(server.http_addr).await.unwrap();
    let (mut reader, mut writer) = trickle.split();
    let writing = async {
        let _ = writer
            .write_all(b"GET /health HTTP/1.1\r\nHost: kms\r\n")
            .await;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer
                .write_all(format!("X-Pad-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let reading = async {
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(handshake + slack, reader.read(&mut buf)).await {
                Err(_) => panic!("trickled head still open after {:?}", started.elapsed()),
                Ok(Ok(0) | Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
            }
        }
    };
    let took = tokio::select! {
        took = reading => took,
        () = writing => panic!("the writer stopped first"),
    };
    eprintln!("trickled HTTP/1 head: closed after {took:?}");
    assert!(took < handshake + slack, "{took:?}");

    // A REST body that never completes: 408 at the deadline, then closed.
    let mut body = TcpStream::connect(server.http_addr).await.unwrap();
    body.write_all(
        b"POST /login HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
    )
    .await
    .unwrap();
    let (took, answer) = closed_within(&mut body, deadline + slack).await;
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("unfinished REST body: answered and closed after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took >= deadline - Duration::from_millis(100), "{took:?}");

    // An HTTP/1 keep-alive connection that made one request, then went quiet: its
    // next request head is due within the handshake bound.
    let mut quiet = TcpStream::connect(server.http_addr).await.unwrap();
    quiet
        .write_all(b"GET /health HTTP/1.1\r\nHost: kms\r\n\r\n")
        .await
        .unwrap();
    let (took, answer) = closed_within(&mut quiet, handshake + slack).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    eprintln!("quiet HTTP/1 keep-alive connection closed after {took:?}");

    // An HTTP/2 connection that made a call, then went quiet: closed at the idle bound.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut ready = client.ready().await.unwrap();
    let (response, mut send) = ready
        .send_request(
            grpc_request(server.addr, "/grpc.health.v1.Health/Check", None),
            false,
        )
        .unwrap();
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    while body.data().await.is_some() {}
    let quiet_since = Instant::now();
    tokio::time::timeout(idle + slack, connection)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap()
        .ok();
    let took = quiet_since.elapsed();
    eprintln!("idle HTTP/2 connection closed after {took:?}");
    assert!(took >= idle - Duration::from_millis(200), "{took:?}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_a_greedy_peer_and_keep_probes_answering() {
    const TOTAL: usize = 16;
    const PER_PEER: usize = 4;
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.connections.max_connections = TOTAL;
        c.limits.connections.max_connections_per_peer = PER_PEER;
        // Long enough that nothing here closes for being silent.
        c.limits.connections.handshake_timeout = Duration::from_secs(60);
    })
    .await;

    // One peer: its share, then refused at once.
    let mut greedy = Vec::new();
    for _ in 0..PER_PEER {
        greedy.push(connect_from("127.0.0.2", server.addr).await);
    }
    let mut extra = connect_from("127.0.0.2", server.addr).await;
    assert!(refused_at_once(&mut extra).await, "past the per-peer cap");
    for conn in &mut greedy {
        assert!(!refused_at_once(conn).await, "within the per-peer cap");
    }

    // Many peers, silent, past the total: the longest idle make room.
    let mut crowd = Vec::new();
    for peer in 3..3 + 2 * TOTAL / PER_PEER {
        for _ in 0..PER_PEER {
            crowd.push(connect_from(&format!("127.0.0.{peer}"), server.addr).await);
        }
    }
    // A probe from another address still gets in, on both ports.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(&channel, "").await, Some(ServingStatus::Serving));
    let (status, _) = kms::http::http_get(server.http_addr, "/health")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut closed = 0;
    for conn in greedy.iter_mut().chain(crowd.iter_mut()) {
        if refused_at_once(conn).await {
            closed += 1;
        }
    }
    let opened = greedy.len() + crowd.len();
    eprintln!("{opened} silent connections against a cap of {TOTAL}: {closed} closed to make room");
    assert!(opened - closed <= TOTAL, "{closed} of {opened} closed");
    server.stop().await;
}

/// A raw HTTP/2 client from `source`, and its open streams.
async fn h2_client(source: &str, addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = connect_from(source, addr).await;
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn grpc_request(addr: SocketAddr, path: &str, token: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(()).unwrap()
}

/// Opens a stream that sends its headers and nothing else. Returns the response
/// stream when the server took the call, or the refusal's gRPC status.
async fn open_silent_call(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
) -> (Result<h2::RecvStream, i32>, h2::SendStream<bytes::Bytes>) {
    let mut ready = client.clone().ready().await.unwrap();
    let (response, send) = ready.send_request(request, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the server answers the headers")
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    match status {
        Some(code) => (Err(code), send),
        None => (Ok(response.into_body()), send),
    }
}

/// Idle streams must not hold the API's places: once, about 1,030 idle reflection
/// streams over a dozen connections took every slot of the concurrency limit, and
/// VerifyKey, Login and Check got RESOURCE_EXHAUSTED while health said SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reflection_streams_do_not_starve_the_api() {
    const MAX_STREAMS: usize = 64;
    const PER_PEER: usize = 16;
    const CONNECTIONS: usize = 12;
    const STREAMS_PER_CONNECTION: usize = 90;
    let stream_idle = Duration::from_secs(3);
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.connections.max_streams = MAX_STREAMS;
        c.limits.connections.max_streams_per_peer = PER_PEER;
        c.limits.connections.stream_idle_timeout = stream_idle;
    })
    .await;
    let admin = server.admin_token().await;
    let created = server
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "payments".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let user = server.user_token("watcher").await;

    let started = Instant::now();
    let mut open = Vec::new();
    let mut refused = 0;
    for connection in 0..CONNECTIONS {
        let source = format!("127.0.0.{}", 2 + connection);
        let mut client = h2_client(&source, server.addr).await;
        for i in 0..STREAMS_PER_CONNECTION {
            let path = if i % 2 == 0 {
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            } else {
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            };
            match open_silent_call(&mut client, grpc_request(server.addr, path, None)).await {
                (Ok(body), send) => open.push((body, send)),
                (Err(code), _) => {
                    assert_eq!(code, Code::ResourceExhausted as i32);
                    refused += 1;
                }
            }
        }
    }
    eprintln!(
        "{} idle reflection streams asked for: {} open, {refused} refused RESOURCE_EXHAUSTED",
        CONNECTIONS * STREAMS_PER_CONNECTION,
        open.len()
    );
    assert!(open.len() <= MAX_STREAMS, "{} open", open.len());
    assert!(!open.is_empty());
    assert!(
        started.elapsed() < stream_idle,
        "the setup must finish first"
    );

    // The API is untouched: VerifyKey, Login and health all answer.
    let verified = KeysClient::new(server.channel.clone())
        .verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: created.api_key.clone(),
                ..Default::default()
            },
            &user,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid);
    server.login("watcher", "watcher-password-123").await;
    assert_eq!(
        health(&server.channel, "").await,
        Some(ServingStatus::Serving)
    );

    // The idle streams are ended by the server.
    let ends = open.into_iter().map(|(mut body, send)| async move {
        let started = Instant::now();
        while let Some(data) = body.data().await {
            if data.is_err() {
                break;
            }
        }
        drop(send);
        started.elapsed()
    });
    let waits = tokio::time::timeout(stream_idle + Duration::from_secs(5), futures_join_all(ends))
        .await
        .expect("every idle stream is ended");
    let longest = waits.into_iter().max().unwrap_or_default();
    eprintln!("idle streams ended by the server; the last after {longest:?} more");
    server.stop().await;
}

/// `futures::future::join_all` without the crate: the streams end in any order.
async fn futures_join_all<F: std::future::Future<Output = Duration> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Duration> {
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    let mut out = Vec::new();
    while let Some(result) = set.join_next().await {
        out.push(result.unwrap());
    }
    out
}

/// Health must not say SERVING while the API refuses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_every_api_call_is_refused() {
    let deadline = Duration::from_secs(5);
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.max_concurrent_requests = 2;
        c.limits.request_timeout = deadline;
    })
    .await;
    let user = server.user_token("holder").await;
    // Two calls that send their headers and never their body hold both API slots
    // until their deadline.
    // One connection each; `ready()` after `send_request` returns once h2 has
    // written that stream's headers, so both calls are on their way.
    let mut held = Vec::new();
    for _ in 0..2 {
        let client = h2_client("127.0.0.2", server.addr).await;
        let mut ready = client.ready().await.unwrap();
        let (response, send) = ready
            .send_request(
                grpc_request(server.addr, "/kms.v1.Keys/VerifyKey", Some(&user)),
                false,
            )
            .unwrap();
        let client = ready.ready().await.unwrap();
        held.push((response, send, client));
    }
    // Let both reach the server before any call of ours competes for the slots.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut keys = KeysClient::new(server.channel.clone());
    let verify = pb::VerifyKeyRequest {
        api_key: "kms_x".into(),
        ..Default::default()
    };
    // The held calls' headers travel on their own connection: wait until they hold
    // both slots (a call of ours is refused) before counting.
    let filling = Instant::now();
    while keys.verify_key(authed(verify.clone(), &user)).await.is_ok() {
        if filling.elapsed() > Duration::from_secs(3) {
            let mut answers = Vec::new();
            for (response, _, _) in &mut held {
                answers.push(
                    tokio::time::timeout(Duration::from_millis(100), response)
                        .await
                        .map(|r| r.map(|r| r.headers().clone())),
                );
            }
            panic!("the held calls never took the slots: {answers:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_at = Instant::now();
    let mut saw_not_serving = false;
    while held_at.elapsed() < deadline - Duration::from_millis(500) {
        let err = keys
            .verify_key(authed(verify.clone(), &user))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        if health(&server.channel, "").await == Some(ServingStatus::NotServing) {
            saw_not_serving = true;
            let (status, _) = kms::http::http_get(server.http_addr, "/health")
                .await
                .unwrap();
            assert_eq!(status, 503);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_not_serving,
        "health said SERVING while every call was refused"
    );
    eprintln!("NOT_SERVING {:?} after the API filled", held_at.elapsed());

    // The held calls end at their deadline; health comes back by itself.
    let back = Instant::now();
    loop {
        if health(&server.channel, "").await == Some(ServingStatus::Serving) {
            break;
        }
        assert!(
            back.elapsed() < deadline + Duration::from_secs(5),
            "health stayed NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(held);
    server.stop().await;
}

/// With the descriptor limit nearly reached by a flood of silent connections, health
/// on both transports still answers, and the limit is logged, once and not per
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_under_a_small_descriptor_limit_keeps_health_answering() {
    let cluster = Cluster::new(&Backend::Sqlite, &[("KMS_HANDSHAKE_TIMEOUT_SECONDS", "60")]).await;
    // 256 descriptors: the server keeps a reserve and caps connections below it.
    let server = cluster.start_limited("flooded", 256).await;
    let mut flood = Vec::new();
    for i in 0..400 {
        let source = format!("127.0.0.{}", 2 + i % 50);
        let addr = if i % 2 == 0 {
            server.grpc_addr()
        } else {
            server.http_addr()
        };
        flood.push(connect_from(&source, addr).await);
    }
    let channel = server.new_channel().await;
    assert_eq!(health(&channel, "").await, Some(ServingStatus::Serving));
    let (status, _) = kms::http::http_get(server.http_addr(), "/health")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let log = server.log_text();
    let lines = log.matches("connection limit reached").count();
    eprintln!(
        "400 silent connections under RLIMIT_NOFILE 256: health answered; {lines} log line(s) about the limit"
    );
    assert!((1..=3).contains(&lines), "{lines} lines:\n{log}");
    drop(flood);
}
