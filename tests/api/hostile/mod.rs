//! Hostile input: property tests over every request message of the four
//! services, garbage and forged bearer tokens, raw protobuf bytes, oversized messages
//! and metadata.
//!
//! The oracle is API.md: every answer is OK or the status code the contract gives for
//! that input (INVALID_ARGUMENT naming the field, NOT_FOUND, ALREADY_EXISTS,
//! UNAUTHENTICATED, PERMISSION_DENIED, ...), computed from the input where the rule is
//! simple; never INTERNAL, UNKNOWN, UNAVAILABLE or a dropped call. A rejected call leaves
//! every table but the audit trail as it was (failed logins and failed VerifyKey calls
//! are audited, by design).
//!
//! One server per backend per test: the cases run one after another against it, driven
//! by proptest's `TestRunner` on a blocking thread, each call through `Handle::block_on`.
//! `PROPTEST_CASES` sets the number of cases per property (default 48 against a server,
//! 2,000 for a parser called directly) and `PROPTEST_RNG_SEED` replays a run: a failure
//! prints its seed. Nothing is persisted.
//!
//! Here: the driver, the test server and the database invariant. Beside it: `oracle`
//! (the expected answers and the rules of API.md) and `values` (hostile strategies),
//! then one file per group of properties: `fields` (every field of every message),
//! `raw_messages` (undecodable bytes), `authorization` (the header), `forged_tokens`,
//! `sizes`, and `parsers` (the token, API key, bearer and page-token parsers, without a
//! server).

mod authorization;
mod fields;
mod forged_tokens;
mod oracle;
mod parsers;
pub(crate) mod raw_messages;
mod sizes;
mod values;

use std::{collections::BTreeMap, fmt::Debug, sync::Arc, time::Instant};

use kms::{
    proto::kms::v1::{
        self as pb, audit_client::AuditClient, auth_client::AuthClient, keys_client::KeysClient,
        users_client::UsersClient,
    },
    store::entities,
};
use proptest::{
    prelude::*,
    test_runner::{Config as PropConfig, RngSeed, TestCaseError, TestCaseResult, TestRunner},
};
use sea_orm::{ColumnTrait, Database, DatabaseConnection, EntityTrait, QueryFilter};
use tonic::transport::Channel;

use crate::common::{Backend, TestServer, authed};

// ---------------------------------------------------------------------------------
// The driver: proptest on a blocking thread, one server.

/// Cases per property against a server: each case is a few calls.
const SERVER_CASES: u32 = 48;
/// Cases per property of a parser called directly: each takes microseconds.
const PARSER_CASES: u32 = 2_000;
/// `KMS_MAX_REQUEST_BYTES` of the test servers (the default).
const MAX_REQUEST: usize = 64 * 1024;

fn run_seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(kms::crypto::random::bytes::<8>().unwrap()))
}

fn prop_config(seed: u64, default_cases: u32) -> PropConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    PropConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 200,
        max_shrink_time: 20_000,
        ..PropConfig::default()
    }
}

/// Runs `test` over inputs from `strategy`: `default_cases` of them unless
/// `PROPTEST_CASES` says otherwise. Panics with the seed that replays the failure.
fn run<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: &S,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    let seed = run_seed();
    let started = Instant::now();
    let mut runner = TestRunner::new(prop_config(seed, default_cases));
    if let Err(e) = runner.run(strategy, test) {
        panic!("{name} failed (replay with PROPTEST_RNG_SEED={seed}): {e}");
    }
    eprintln!("{name}: passed in {:?} (seed {seed})", started.elapsed());
}

/// `run` against a server: on a blocking thread, where each case may `block_on` calls.
async fn check<S, F>(name: &str, strategy: impl FnOnce() -> S + Send + 'static, test: F)
where
    S: Strategy,
    F: Fn(S::Value) -> TestCaseResult + Send + 'static,
{
    let name = name.to_owned();
    let outcome =
        tokio::task::spawn_blocking(move || run(&name, SERVER_CASES, &strategy(), test)).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A server with some keys and users to hit, and what the cases need to reach it.
struct Ctx {
    channel: Channel,
    db: DatabaseConnection,
    rt: tokio::runtime::Handle,
    admin: String,
    /// alice, role user.
    user: String,
    /// The secrets of the seeded keys.
    secrets: Vec<String>,
}

type Shared = Arc<Ctx>;

const SEEDED_KEYS: &[&str] = &["svc-a", "svc.b", "Z_9"];

impl Ctx {
    async fn start(server: &TestServer) -> Shared {
        let admin = server.admin_token().await;
        let user = server.user_token("alice").await;
        server
            .auth()
            .register(pb::RegisterRequest {
                username: "bob".into(),
                password: "bob-password-123".into(),
                roles: vec![],
            })
            .await
            .unwrap();
        let mut secrets = Vec::new();
        for name in SEEDED_KEYS {
            let key = server
                .keys()
                .create_key(authed(
                    pb::CreateKeyRequest {
                        service_name: (*name).into(),
                        api_key: None,
                        description: "seeded".into(),
                        ttl_seconds: 0,
                        ..Default::default()
                    },
                    &admin,
                ))
                .await
                .unwrap()
                .into_inner();
            secrets.push(key.api_key);
        }
        let db = Database::connect(server.db_url()).await.unwrap();
        Arc::new(Ctx {
            channel: server.channel.clone(),
            db,
            rt: tokio::runtime::Handle::current(),
            admin,
            user,
            secrets,
        })
    }

    fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }

    fn keys(&self) -> KeysClient<Channel> {
        KeysClient::new(self.channel.clone())
    }

    fn users(&self) -> UsersClient<Channel> {
        UsersClient::new(self.channel.clone())
    }

    fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone())
    }

    /// The server still answers, and the admin token still works.
    async fn still_serving(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, 1, "SERVING");
        self.keys()
            .list_keys(authed(pb::ListKeysRequest::default(), &self.admin))
            .await
            .expect("the admin token still works");
    }
}

async fn start(backend: Backend) -> (TestServer, Shared) {
    let server = TestServer::start_with(backend, |c| {
        // Hostile logins must be judged, not throttled.
        c.login_throttle.max_failures = 100_000;
    })
    .await;
    let ctx = Ctx::start(&server).await;
    (server, ctx)
}

// ---------------------------------------------------------------------------------
// The database invariant.

type Snapshot = BTreeMap<&'static str, Vec<String>>;

async fn rows<E>(db: &DatabaseConnection) -> Vec<String>
where
    E: EntityTrait,
    E::Model: Debug,
{
    let mut rows: Vec<String> = E::find()
        .all(db)
        .await
        .unwrap()
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    rows.sort();
    rows
}

/// Every table but `audit_events`, row by row.
async fn snapshot(db: &DatabaseConnection) -> Snapshot {
    use entities::{
        api_key, api_key_secret, issued_secret_digest, refresh_token, session, signing_key, user,
        user_role,
    };
    BTreeMap::from([
        ("users", rows::<user::Entity>(db).await),
        ("user_roles", rows::<user_role::Entity>(db).await),
        ("api_keys", rows::<api_key::Entity>(db).await),
        ("api_key_secrets", rows::<api_key_secret::Entity>(db).await),
        (
            "issued_secret_digests",
            rows::<issued_secret_digest::Entity>(db).await,
        ),
        ("signing_keys", rows::<signing_key::Entity>(db).await),
        ("sessions", rows::<session::Entity>(db).await),
        ("refresh_tokens", rows::<refresh_token::Entity>(db).await),
    ])
}

fn unchanged(what: &str, before: &Snapshot, after: &Snapshot) -> TestCaseResult {
    for (table, old) in before {
        let new = &after[table];
        if old != new {
            let added: Vec<_> = new.iter().filter(|r| !old.contains(r)).collect();
            let removed: Vec<_> = old.iter().filter(|r| !new.contains(r)).collect();
            return Err(TestCaseError::fail(format!(
                "{what}: a rejected call changed {table}: added {added:?}, removed {removed:?}"
            )));
        }
    }
    Ok(())
}

/// How many events of `action` the audit trail records: refusals are coalesced into
/// rows with a count (a flood of refusals must not grow the table), so the rows' counts, not the rows.
async fn audit_count(db: &DatabaseConnection, action: &str) -> i64 {
    entities::audit_event::Entity::find()
        .filter(entities::audit_event::Column::Action.eq(action))
        .all(db)
        .await
        .unwrap()
        .iter()
        .map(|e| e.count)
        .sum()
}
