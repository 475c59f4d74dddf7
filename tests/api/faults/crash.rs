//! `kill -9` during a stream of CreateKey and RotateKey calls: after a
//! restart on the same database every acknowledged call is there with the secret it
//! returned, and no key is half written. On SQLite (WAL, synchronous=FULL) and on
//! PostgreSQL.
//!
//! Several clients each create keys of their own and rotate them, one call at a time,
//! so each key has a plain history: acknowledged calls, then at most one call without
//! an answer (in flight when the server died), which may or may not have committed.
//! After the restart, for each key:
//! - no acknowledged call, only an unanswered create: the key is absent, or complete
//!   (it has a current secret that verifies);
//! - otherwise the current secret is the last acknowledged one, or, only when an
//!   unanswered rotation was in flight, a secret no call returned (that rotation
//!   committed);
//! - every acknowledged secret verifies exactly as the calls after it say: the current
//!   one does, one rotated out with a grace period does, one rotated out without does
//!   not.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kms::proto::kms::v1::{self as pb, keys_client::KeysClient};
use tonic::transport::Channel;

use super::create;
use crate::{
    both_backends,
    common::{Backend, authed},
    process::Cluster,
};

both_backends!(kill_9_loses_no_acknowledged_key);

const CLIENTS: usize = 6;
/// Traffic runs this long, plus a random part of `KILL_JITTER`, before the kill.
const KILL_AFTER: Duration = Duration::from_millis(300);
const KILL_JITTER_MS: u64 = 500;
const GRACE_SECONDS: i64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    /// A rotation with this grace period for the secret it replaces.
    Rotate(i64),
}

/// One key's history as the client saw it.
#[derive(Debug, Default)]
struct History {
    /// Answered calls in order, with the secret each returned.
    acked: Vec<(Op, String)>,
    /// The call that got no answer: the server died under it.
    in_flight: Option<Op>,
}

/// A small xorshift generator: the test needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed: [u8; 8] = kms::crypto::random::bytes().unwrap();
        Self(u64::from_le_bytes(seed) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Client {
    histories: BTreeMap<String, History>,
    /// An error answered before the server was killed: a failure of the test.
    early_error: Option<tonic::Status>,
}

/// Creates and rotates keys named `c{client}-{n}` one call at a time until a call fails
/// (the server is gone).
async fn client(channel: Channel, admin: String, client: usize, killed: Arc<AtomicBool>) -> Client {
    let mut keys = KeysClient::new(channel);
    let mut rng = Rng::new();
    let mut histories: BTreeMap<String, History> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    for n in 0.. {
        let (name, op) = if names.is_empty() || rng.below(2) == 0 {
            (format!("c{client}-{n}"), Op::Create)
        } else {
            let name = names[rng.below(names.len() as u64) as usize].clone();
            let grace = if rng.below(2) == 0 { 0 } else { GRACE_SECONDS };
            (name, Op::Rotate(grace))
        };
        let history = histories.entry(name.clone()).or_default();
        history.in_flight = Some(op);
        let answer = match op {
            Op::Create => keys.create_key(authed(create(&name), &admin)).await,
            Op::Rotate(grace) => {
                keys.rotate_key(authed(
                    pb::RotateKeyRequest {
                        service_name: name.clone(),
                        grace_period_seconds: grace,
                    },
                    &admin,
                ))
                .await
            }
        };
        match answer {
            Ok(key) => {
                history.in_flight = None;
                history.acked.push((op, key.into_inner().api_key));
                if op == Op::Create {
                    names.push(name);
                }
            }
            Err(status) => {
                let early_error = (!killed.load(Ordering::SeqCst)).then_some(status);
                return Client {
                    histories,
                    early_error,
                };
            }
        }
    }
    unreachable!()
}

async fn verify(keys: &mut KeysClient<Channel>, admin: &str, secret: &str) -> bool {
    keys.verify_key(authed(
        pb::VerifyKeyRequest {
            api_key: secret.into(),
            ..Default::default()
        },
        admin,
    ))
    .await
    .unwrap()
    .into_inner()
    .valid
}

async fn kill_9_loses_no_acknowledged_key(backend: Backend) {
    let cluster = Cluster::new(&backend, &[]).await;
    let server = cluster.start("kms").await;
    let admin = server.admin_token().await;
    let killed = Arc::new(AtomicBool::new(false));
    let mut channels = Vec::new();
    for _ in 0..2 {
        channels.push(server.new_channel().await);
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                channels[i % channels.len()].clone(),
                admin.clone(),
                i,
                killed.clone(),
            ))
        })
        .collect();
    let traffic = KILL_AFTER + Duration::from_millis(Rng::new().below(KILL_JITTER_MS));
    tokio::time::sleep(traffic).await;
    killed.store(true, Ordering::SeqCst);
    server.kill9().await;
    let mut histories = BTreeMap::new();
    for client in clients {
        let client = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("every client notices the dead server")
            .unwrap();
        if let Some(status) = client.early_error {
            panic!("a call failed before the kill: {status:?}");
        }
        histories.extend(client.histories);
    }

    let started = Instant::now();
    let server = cluster.start("kms").await;
    let restart = started.elapsed();
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let (mut acked, mut found) = (0usize, 0usize);
    let (mut in_flight, mut in_flight_committed) = (0usize, 0usize);
    let mut problems = Vec::new();
    let mut expected_names = BTreeSet::new();
    for (name, history) in &histories {
        acked += history.acked.len();
        in_flight += usize::from(history.in_flight.is_some());
        let current = keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: name.clone(),
                },
                &admin,
            ))
            .await;
        let current = match current {
            Ok(key) => Some(key.into_inner().api_key),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("GetKey {name} after the restart: {s:?}"),
        };
        let Some((_, last)) = history.acked.last() else {
            // Only an unanswered create: absent, or complete.
            if let Some(secret) = &current {
                in_flight_committed += 1;
                expected_names.insert(name.clone());
                if !verify(&mut keys, &admin, secret).await {
                    problems.push(format!(
                        "{name}: unacknowledged create stored a secret that does not verify"
                    ));
                }
            }
            continue;
        };
        expected_names.insert(name.clone());
        let Some(current) = current else {
            problems.push(format!("{name}: acknowledged key is missing"));
            continue;
        };
        // Did the unanswered rotation, if any, commit?
        let rotated_after = match history.in_flight {
            Some(Op::Rotate(grace)) if current != *last => {
                if history.acked.iter().any(|(_, s)| *s == current) {
                    problems.push(format!(
                        "{name}: current secret is an older acknowledged one"
                    ));
                    continue;
                }
                in_flight_committed += 1;
                if !verify(&mut keys, &admin, &current).await {
                    problems.push(format!(
                        "{name}: the secret of a committed in-flight rotation does not verify"
                    ));
                }
                Some(grace)
            }
            _ if current != *last => {
                problems.push(format!(
                    "{name}: current secret is not the last acknowledged one"
                ));
                continue;
            }
            _ => None,
        };
        for (i, (_, secret)) in history.acked.iter().enumerate() {
            // Valid unless the next rotation (acknowledged or committed in flight)
            // ended it without a grace period.
            let next = history
                .acked
                .get(i + 1)
                .map(|(op, _)| match op {
                    Op::Rotate(grace) => *grace,
                    Op::Create => unreachable!("a create after a create of one name"),
                })
                .or(rotated_after);
            let expected = next.is_none_or(|grace| grace > 0);
            if verify(&mut keys, &admin, secret).await == expected {
                found += 1;
            } else {
                problems.push(format!(
                    "{name}: acknowledged secret #{i} should verify {expected}, does not"
                ));
            }
        }
    }

    // Nothing half written: the live keys are exactly the expected ones, each with
    // exactly one current secret.
    let mut listed = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = keys
            .list_keys(authed(
                pb::ListKeysRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.keys.into_iter().map(|k| k.service_name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, expected_names, "ListKeys after the restart");
    {
        use kms::store::entities::{api_key, api_key_secret};
        use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
        let db = Database::connect(cluster.db_url()).await.unwrap();
        let live = api_key::Entity::find()
            .filter(api_key::Column::RevokedAt.is_null())
            .all(&db)
            .await
            .unwrap();
        let current = api_key_secret::Entity::find()
            .filter(api_key_secret::Column::RetiresAt.is_null())
            .all(&db)
            .await
            .unwrap();
        db.close().await.unwrap();
        let live_names: BTreeSet<_> = live.iter().map(|k| k.service_name.clone()).collect();
        assert_eq!(
            live_names, expected_names,
            "live key rows after the restart"
        );
        for key in &live {
            let n = current.iter().filter(|s| s.api_key_id == key.id).count();
            if n != 1 {
                problems.push(format!("{}: {n} current secrets stored", key.service_name));
            }
        }
    }

    let label = match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres(_) => "PostgreSQL",
    };
    let creates = histories
        .values()
        .flat_map(|h| &h.acked)
        .filter(|(op, _)| *op == Op::Create)
        .count();
    eprintln!(
        "crash ({label}): kill -9 after {} ms of traffic from {CLIENTS} clients: acknowledged {acked} \
         ({creates} CreateKey, {} RotateKey), found {found}; {in_flight} calls in flight at the kill, \
         {in_flight_committed} of them committed; {} live keys; restart took {} ms",
        traffic.as_millis(),
        acked - creates,
        expected_names.len(),
        restart.as_millis(),
    );
    assert!(problems.is_empty(), "after kill -9: {problems:#?}");
    assert_eq!(found, acked, "acknowledged {acked}, found {found}");
    assert!(
        acked > CLIENTS,
        "the stream ran before the kill: {acked} calls acknowledged"
    );
}
