//! Overload: a burst far beyond capacity is answered RESOURCE_EXHAUSTED or
//! UNAVAILABLE (or served), memory stays bounded, and service is normal again when the
//! burst ends. Against a `kms serve` process, so that its memory can be read from
//! /proc.

use std::time::{Duration, Instant};

use kms::proto::kms::v1::{self as pb, auth_client::AuthClient, keys_client::KeysClient};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use super::create;
use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, authed},
    process::{Cluster, KmsProcess, health},
};

both_backends!(burst_beyond_capacity_is_shed_and_service_recovers);

/// Calls served at once by the server under test.
const MAX_CONCURRENT: &str = "16";
/// Calls in one burst, all started at once, over `CONNECTIONS` HTTP/2 connections.
const BURST: usize = 2_000;
const CONNECTIONS: usize = 10;
/// Bursts in a row: memory must not grow from one to the next without bound.
const BURSTS: usize = 3;
/// Peak resident memory allowed (a debug build, which is larger than a release one).
/// The design's own budget is far lower: about 70 MiB at rest, plus 19 MiB per argon2
/// hash running (at most one per core). Server bug found by this test: glibc keeps the
/// 19 MiB argon2 buffers after each hash (its dynamic mmap threshold moves up after the
/// first one is freed), so the peak climbs burst after burst, past 200 MiB by the
/// second; with `MALLOC_MMAP_THRESHOLD_=131072` in the server's environment it stays
/// under 80 MiB.
const MAX_PEAK_RSS_KIB: u64 = 200 * 1024;

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    exhausted: usize,
    unavailable: usize,
    other: Vec<String>,
}

async fn burst(server: &KmsProcess, admin: &str, secret: &str, round: usize) -> (Tally, Duration) {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(server.new_channel().await);
    }
    let started = Instant::now();
    let calls: Vec<_> = (0..BURST)
        .map(|i| {
            let channel = channels[i % CONNECTIONS].clone();
            let (admin, secret) = (admin.to_owned(), secret.to_owned());
            tokio::spawn(async move {
                let mut keys = KeysClient::new(channel.clone());
                // Mostly cheap reads, some writes, some logins (an argon2 hash each).
                let call = async {
                    match i % 10 {
                        0 => AuthClient::new(channel)
                            .login(pb::LoginRequest {
                                username: ADMIN.into(),
                                password: ADMIN_PASSWORD.into(),
                            })
                            .await
                            .map(|_| ()),
                        1 => keys
                            .create_key(authed(create(&format!("burst-{round}-{i}")), &admin))
                            .await
                            .map(|_| ()),
                        _ => keys
                            .verify_key(authed(
                                pb::VerifyKeyRequest {
                                    api_key: secret.clone(),
                                    ..Default::default()
                                },
                                &admin,
                            ))
                            .await
                            .map(|r| assert!(r.into_inner().valid)),
                    }
                };
                tokio::time::timeout(Duration::from_secs(60), call).await
            })
        })
        .collect();
    let mut tally = Tally::default();
    for call in calls {
        match call.await.unwrap() {
            Ok(Ok(())) => tally.ok += 1,
            Ok(Err(s)) if s.code() == Code::ResourceExhausted => {
                // A refusal still names the call, for the client's logs and ours.
                assert!(s.metadata().get("x-request-id").is_some(), "{s:?}");
                tally.exhausted += 1;
            }
            Ok(Err(s)) if s.code() == Code::Unavailable => tally.unavailable += 1,
            Ok(Err(s)) => tally.other.push(format!("{s:?}")),
            Err(_) => tally.other.push("no answer within 60 s".into()),
        }
    }
    (tally, started.elapsed())
}

async fn burst_beyond_capacity_is_shed_and_service_recovers(backend: Backend) {
    let cluster = Cluster::new(&backend, &[("KMS_MAX_CONCURRENT_REQUESTS", MAX_CONCURRENT)]).await;
    let server = cluster.start("kms").await;
    let admin = server.admin_token().await;
    let secret = server
        .keys()
        .create_key(authed(create("steady"), &admin))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let (rss_before, _) = server.memory_kib();
    let label = match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres(_) => "PostgreSQL",
    };

    let mut peak = 0;
    for round in 0..BURSTS {
        let (tally, took) = burst(&server, &admin, &secret, round).await;
        let (rss, peak_so_far) = server.memory_kib();
        peak = peak_so_far;
        eprintln!(
            "overload ({label}): burst {round}: {BURST} calls at once over {CONNECTIONS} connections, \
             limit {MAX_CONCURRENT}: {} OK, {} RESOURCE_EXHAUSTED, {} UNAVAILABLE in {} ms; \
             RSS {} MiB before the bursts, {} MiB after this one, peak {} MiB",
            tally.ok,
            tally.exhausted,
            tally.unavailable,
            took.as_millis(),
            rss_before / 1024,
            rss / 1024,
            peak / 1024,
        );
        assert!(
            tally.other.is_empty(),
            "answers other than OK, RESOURCE_EXHAUSTED, UNAVAILABLE: {} of them, e.g. {:?}",
            tally.other.len(),
            &tally.other[..tally.other.len().min(5)]
        );
        assert!(tally.exhausted > 0, "the burst never went past the limit");
        assert!(tally.ok > 0, "nothing was served during the burst");
    }

    // The burst is over: normal service, one call at a time.
    assert_eq!(
        health(&server.channel(), "").await,
        Some(ServingStatus::Serving)
    );
    let (status, _) = kms::http::http_get(server.http_addr(), "/health")
        .await
        .unwrap();
    assert_eq!(status, 200, "HTTP /health after the burst");
    let mut keys = server.keys();
    for i in 0..20 {
        let valid = keys
            .verify_key(authed(
                pb::VerifyKeyRequest {
                    api_key: secret.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_or_else(|s| panic!("VerifyKey {i} after the burst: {s:?}"))
            .into_inner()
            .valid;
        assert!(valid);
    }
    keys.create_key(authed(create("after-the-burst"), &admin))
        .await
        .unwrap();
    server.admin_token().await;

    // Last, so that a failure here comes after every other check has passed.
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "memory is not bounded: peak RSS {} MiB, over {} MiB, after {BURSTS} bursts",
        peak / 1024,
        MAX_PEAK_RSS_KIB / 1024
    );
}
