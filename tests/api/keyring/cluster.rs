//! Replicas on one PostgreSQL database follow a data key rotation: the other replica
//! seals with the new key within 1 s, and opens what it sealed at once. (In the
//! reliability group of `.ci/run`: a timing bound.)

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{all_open, create, current, rotate, sealed_under, status};
use crate::common::{Backend, TestServer, authed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn a_rotation_reaches_the_other_replica_within_a_second() {
    let a = TestServer::start(Backend::postgres()).await;
    let b = a.replica().await;
    let admin = a.admin_token().await;
    // Both replicas listening to each other.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut secrets = BTreeMap::new();
    let made = b
        .keys()
        .create_key(authed(create("before", None), &admin))
        .await
        .unwrap()
        .into_inner();
    secrets.insert("before".to_owned(), made.api_key);

    let started = Instant::now();
    let rotated = rotate(&a.channel, &admin).await;
    let new_key = current(&rotated).id.clone();
    let mut made_on_b = 0;
    let reached = loop {
        let name = format!("after-{made_on_b}");
        let made = b
            .keys()
            .create_key(authed(create(&name, None), &admin))
            .await
            .unwrap()
            .into_inner();
        secrets.insert(name, made.api_key);
        made_on_b += 1;
        if sealed_under(&status(&a.channel, &admin).await, &new_key) > 0 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "replica b still seals with the old data key after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "keyring: replica b sealed with {new_key} {} ms after the rotation on a ({made_on_b} keys made on b meanwhile)",
        reached.as_millis()
    );
    assert!(
        reached < Duration::from_secs(1),
        "the other replica took {reached:?} to seal with the new data key"
    );
    // Each replica opens what the other sealed, old key and new.
    all_open(&a.channel, &admin, &secrets).await;
    all_open(&b.channel, &admin, &secrets).await;
    b.stop().await;
    a.stop().await;
}
