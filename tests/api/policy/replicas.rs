//! The rate limit across two `kms serve` processes on one PostgreSQL database: at
//! most `requests x 1.1 + 2` VALID answers in any span of the window, and at least
//! `requests` for clients asking for more.

use std::time::{Duration, Instant};

use kms::proto::kms::v1::{self as pb, VerifyCode};

use super::{code, create, limit, verify_with};
use crate::{
    common::{Backend, authed},
    process::Cluster,
};

const REQUESTS: i64 = 50;
const WINDOW: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn two_replicas_hold_the_rate_limit_within_the_bound() {
    let backend = Backend::postgres();
    let cluster = Cluster::new(&backend, &[]).await;
    let a = cluster.start("a").await;
    let b = cluster.start("b").await;
    let admin = a.admin_token().await;
    let key = a
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                rate_limit: limit(REQUESTS, 2),
                ..create("limited")
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let channels = [a.channel(), b.channel()];
    // Eight clients, four per replica, asking as fast as they can for 6 s.
    let clients = (0..8).map(|i| {
        let (channel, admin, k) = (channels[i % 2].clone(), admin.clone(), key.api_key.clone());
        tokio::spawn(async move {
            let mut valid = Vec::new();
            while started.elapsed() < Duration::from_secs(6) {
                let sent = started.elapsed();
                let answer = verify_with(&channel, &admin, &k, &[], None).await;
                match code(&answer) {
                    VerifyCode::Valid => valid.push((sent, started.elapsed())),
                    VerifyCode::RateLimited => {}
                    other => panic!("{other:?}"),
                }
            }
            valid
        })
    });
    let mut valid: Vec<(Duration, Duration)> = super::join_all(clients.collect())
        .await
        .into_iter()
        .flatten()
        .collect();
    valid.sort();
    // Definitely inside one window: the calls were sent and answered within it.
    let bound = usize::try_from(REQUESTS * 11 / 10 + 2).unwrap();
    let mut most_sure = 0;
    for (i, first) in valid.iter().enumerate() {
        let mut answered: Vec<Duration> = valid[i..].iter().map(|v| v.1).collect();
        answered.sort();
        let inside = answered
            .iter()
            .take_while(|t| **t < first.0 + WINDOW)
            .count();
        most_sure = most_sure.max(inside);
    }
    // As the clients saw it (answer times only): may count a little more than the server did.
    let answered: Vec<Duration> = {
        let mut v: Vec<Duration> = valid.iter().map(|v| v.1).collect();
        v.sort();
        v
    };
    let most_seen = (0..answered.len())
        .map(|i| {
            answered[i..]
                .iter()
                .take_while(|t| **t < answered[i] + WINDOW)
                .count()
        })
        .max()
        .unwrap_or(0);
    let first_window = answered.iter().filter(|t| **t < WINDOW).count();
    eprintln!(
        "two replicas, limit {REQUESTS}/{}s: {} VALID in 6 s; most in one window: {most_sure} \
         (sure), {most_seen} (answer times); first window: {first_window}; bound {bound}",
        WINDOW.as_secs(),
        valid.len()
    );
    assert!(most_sure <= bound, "{most_sure} > {bound}");
    assert!(
        first_window >= usize::try_from(REQUESTS).unwrap(),
        "{first_window} < {REQUESTS}"
    );
}
