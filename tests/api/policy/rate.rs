//! One server's rate limit: never more than `requests` VALID answers in any span of
//! `window_seconds`, and `reset_at` says when one more passes.

use std::time::{Duration, Instant};

use kms::proto::kms::v1::{self as pb, VerifyCode};

use super::{code, create, create_key, limit, verify_with};
use crate::{
    both_backends,
    common::{Backend, TestServer},
};

both_backends!(a_server_gives_at_most_requests_in_any_window);

async fn a_server_gives_at_most_requests_in_any_window(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            rate_limit: limit(5, 1),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Each VALID answer as (sent, received): the server decided somewhere in between.
    let mut passed: Vec<(Duration, Duration)> = Vec::new();
    let mut resets_ok = true;
    while started.elapsed() < Duration::from_millis(3500) {
        let burst = (0..4).map(|_| {
            let (ch, admin, k) = (server.channel.clone(), admin.clone(), key.api_key.clone());
            tokio::spawn(async move {
                let sent = started.elapsed();
                let answer = verify_with(&ch, &admin, &k, &[], None).await;
                (sent, started.elapsed(), answer)
            })
        });
        for (sent, received, answer) in super::join_all(burst.collect()).await {
            match code(&answer) {
                VerifyCode::Valid => passed.push((sent, received)),
                VerifyCode::RateLimited => {
                    let status = answer.rate_limit.unwrap();
                    resets_ok &= status.remaining == 0 && status.reset_at.is_some();
                }
                other => panic!("{other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(resets_ok);
    // Six VALID answers whose calls all ran inside one window would break the limit.
    passed.sort();
    for six in passed.windows(6) {
        let last_received = six.iter().map(|p| p.1).max().unwrap();
        assert!(
            last_received - six[0].0 >= Duration::from_secs(1),
            "6 VALID within one window: {six:?}"
        );
    }
    assert!(
        passed.len() >= 10,
        "the limit lets requests through each window: {}",
        passed.len()
    );
    server.stop().await;
}
