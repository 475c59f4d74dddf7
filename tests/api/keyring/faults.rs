//! kill -9 in the middle of RewrapSecrets: nothing is unreadable after the restart,
//! and the rewrap carries on where it stopped. Also measures the rewrap rate and the
//! calls served while it runs (printed; `.ci/run` shows them with --nocapture).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kms::proto::kms::v1::{self as pb, keys_client::KeysClient};

use super::{all_open, create, current, keyring, rotate, sealed_under, status};
use crate::{
    both_backends,
    common::{Backend, authed},
    process::Cluster,
};

/// Enough values for a rewrap to take a while on a debug build.
const KEYS: usize = 2_000;

both_backends!(kill_9_during_a_rewrap_leaves_every_key_readable);

async fn kill_9_during_a_rewrap_leaves_every_key_readable(backend: Backend) {
    let cluster = Cluster::new(&backend, &[]).await;
    let a = cluster.start("a").await;
    let admin = a.admin_token().await;
    let secrets = make_keys(&a.channel(), &admin).await;
    let rotated = rotate(&a.channel(), &admin).await;
    let new_key = current(&rotated).id.clone();

    // Start a rewrap, and kill the server as soon as it has stored its first batch.
    let call = {
        let (channel, admin) = (a.new_channel().await, admin.clone());
        tokio::spawn(async move {
            keyring(&channel)
                .rewrap_secrets(authed(pb::RewrapSecretsRequest {}, &admin))
                .await
        })
    };
    let watch = a.new_channel().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sealed_under(&status(&watch, &admin).await, &new_key) == 0 {
        assert!(
            Instant::now() < deadline,
            "the rewrap stored nothing in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill9().await;
    let cut = call.await.unwrap();
    assert!(cut.is_err(), "the rewrap finished before the kill: {cut:?}");

    let b = cluster.start("a").await;
    let admin = b.admin_token().await;
    let after_kill = sealed_under(&status(&b.channel(), &admin).await, &new_key);
    eprintln!("keyring: kill -9 after {after_kill} of {KEYS} values were rewrapped");
    assert!(after_kill > 0 && after_kill < KEYS as i64, "{after_kill}");
    all_open(&b.channel(), &admin, &secrets).await;

    // The rest, while other calls go on; each call of the reader is timed.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (channel, admin, stop) = (b.new_channel().await, admin.clone(), stop.clone());
        let sample: Vec<String> = secrets.values().take(50).cloned().collect();
        tokio::spawn(async move {
            let mut keys = KeysClient::new(channel);
            let (mut calls, mut failed, mut slowest) = (0_u64, 0_u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let secret = &sample[calls as usize % sample.len()];
                let t = Instant::now();
                let ok = keys
                    .verify_key(authed(
                        pb::VerifyKeyRequest {
                            api_key: secret.clone(),
                            ..Default::default()
                        },
                        &admin,
                    ))
                    .await
                    .is_ok_and(|r| r.into_inner().valid);
                slowest = slowest.max(t.elapsed());
                calls += 1;
                failed += u64::from(!ok);
            }
            (calls, failed, slowest)
        })
    };
    let started = Instant::now();
    let (mut rewrapped, mut calls) = (0, 0);
    loop {
        let done = keyring(&b.channel())
            .rewrap_secrets(authed(pb::RewrapSecretsRequest {}, &admin))
            .await
            .unwrap()
            .into_inner();
        rewrapped += done.rewrapped;
        calls += 1;
        if done.remaining == 0 {
            break;
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (served, failed, slowest) = reader.await.unwrap();
    eprintln!(
        "keyring: rewrapped {rewrapped} values in {} ms over {calls} call(s): {:.0} values/s (debug build); meanwhile {served} VerifyKey calls, {failed} failed, slowest {} ms",
        took.as_millis(),
        rewrapped as f64 / took.as_secs_f64(),
        slowest.as_millis()
    );
    assert_eq!(
        rewrapped,
        KEYS as i64 - after_kill,
        "each value rewrapped once"
    );
    assert_eq!(failed, 0, "calls failed during the rewrap");
    assert!(served > 0);
    let done = status(&b.channel(), &admin).await;
    assert_eq!(sealed_under(&done, &new_key), KEYS as i64);
    assert_eq!(sealed_under(&done, "dk-1"), 0);
    all_open(&b.channel(), &admin, &secrets).await;
}

/// `KEYS` keys, made 16 at a time; their secrets by name.
async fn make_keys(channel: &tonic::transport::Channel, admin: &str) -> BTreeMap<String, String> {
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (channel, admin) = (channel.clone(), admin.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut keys = KeysClient::new(channel);
            let mut made = Vec::new();
            for i in (worker..KEYS).step_by(16) {
                let name = format!("key-{i:05}");
                let key = keys
                    .create_key(authed(create(&name, None), &admin))
                    .await
                    .unwrap()
                    .into_inner();
                made.push((name, key.api_key));
            }
            made
        }));
    }
    let mut secrets = BTreeMap::new();
    for task in tasks {
        secrets.extend(task.await.unwrap());
    }
    secrets
}
