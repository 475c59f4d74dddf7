//! Hostile input (issue 6): property tests over every request message of the four
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
//! `PROPTEST_CASES` sets the number of cases per property (default 48) and
//! `PROPTEST_RNG_SEED` replays a run: a failure prints its seed. Nothing is persisted.

use std::{collections::BTreeMap, fmt::Debug, future::Future, sync::Arc, time::Instant};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use bytes::{Buf, BufMut};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kms::{
    crypto::sealing::Sealer,
    domain::{
        signing::SigningKeys,
        token::{SigningAlgorithm, SigningKeyMaterial},
    },
    proto::kms::v1::{
        self as pb, audit_client::AuditClient, auth_client::AuthClient, keys_client::KeysClient,
        users_client::UsersClient,
    },
    store::{Store, StoreOptions, entities},
};
use proptest::{
    prelude::*,
    sample::{Index, select},
    test_runner::{Config as PropConfig, RngSeed, TestCaseError, TestCaseResult, TestRunner},
};
use prost::Message;
use sea_orm::{ColumnTrait, Database, DatabaseConnection, EntityTrait, QueryFilter};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{AsciiMetadataValue, MetadataMap},
    transport::Channel,
};

use crate::{
    both_backends,
    common::{ADMIN, Backend, JWT_SECRET, TestServer, authed, now},
};

// ---------------------------------------------------------------------------------
// The driver: proptest on a blocking thread, one server.

const DEFAULT_CASES: u32 = 48;
/// `KMS_MAX_REQUEST_BYTES` of the test servers (the default).
const MAX_REQUEST: usize = 64 * 1024;

fn run_seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(kms::crypto::random::bytes::<8>().unwrap()))
}

fn prop_config(seed: u64) -> PropConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    PropConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 200,
        max_shrink_time: 20_000,
        ..PropConfig::default()
    }
}

/// Runs `test` over inputs from `strategy` on a blocking thread, where each case may
/// `block_on` calls to the server. Panics with the seed that replays the failure.
async fn check<S, F>(name: &str, strategy: impl FnOnce() -> S + Send + 'static, test: F)
where
    S: Strategy,
    F: Fn(S::Value) -> TestCaseResult + Send + 'static,
{
    let seed = run_seed();
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(prop_config(seed));
        runner.run(&strategy(), test).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    if let Err(e) = outcome {
        panic!("{name} failed (replay with PROPTEST_RNG_SEED={seed}): {e}");
    }
    eprintln!("{name}: passed in {:?} (seed {seed})", started.elapsed());
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
/// rows with a count (issue 18, point 3), so the rows' counts, not the rows.
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

// ---------------------------------------------------------------------------------
// The oracle.

#[derive(Debug, Clone)]
enum Expect {
    /// One of these codes (`Code::Ok` for success).
    Codes(Vec<Code>),
    /// INVALID_ARGUMENT whose message names one of these fields.
    Invalid(Vec<&'static str>),
    /// INVALID_ARGUMENT, whatever the message (a message that does not decode).
    Malformed,
}

fn codes(codes: &[Code]) -> Expect {
    Expect::Codes(codes.to_vec())
}

/// Collects the fields an input breaks.
struct Rules(Vec<&'static str>);

impl Rules {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn check(mut self, ok: bool, field: &'static str) -> Self {
        if !ok {
            self.0.push(field);
        }
        self
    }

    /// INVALID_ARGUMENT naming one of the broken fields, or `otherwise`.
    fn or(self, otherwise: Expect) -> Expect {
        if self.0.is_empty() {
            otherwise
        } else {
            Expect::Invalid(self.0)
        }
    }
}

/// A message over the size limit is OUT_OF_RANGE before anything else is looked at.
fn sized(message: &impl Message, expect: Expect) -> Expect {
    if message.encoded_len() > MAX_REQUEST {
        codes(&[Code::OutOfRange])
    } else {
        expect
    }
}

/// Codes a client must never see for its input.
const FORBIDDEN: &[Code] = &[
    Code::Internal,
    Code::Unknown,
    Code::Unavailable,
    Code::DataLoss,
    Code::Cancelled,
    Code::Unimplemented,
    Code::DeadlineExceeded,
    Code::Aborted,
];

/// Text that must never reach a client.
const LEAKS: &[&str] = &[
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "sqlx",
    "database error",
    "panicked",
    "stack backtrace",
];

fn short(value: &impl Debug) -> String {
    let text = format!("{value:?}");
    if text.len() <= 800 {
        return text;
    }
    let mut head = 400;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - 300;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} ...({} bytes)... {}",
        &text[..head],
        text.len(),
        &text[tail..]
    )
}

fn judge<T: Debug>(what: &str, result: &Result<T, Status>, expect: &Expect) -> TestCaseResult {
    if let Err(status) = result {
        prop_assert!(
            !FORBIDDEN.contains(&status.code()),
            "{what}: forbidden status {:?}: {}",
            status.code(),
            short(&status.message())
        );
        for leak in LEAKS {
            prop_assert!(
                !status.message().contains(leak),
                "{what}: the message leaks {leak:?}: {}",
                short(&status.message())
            );
        }
    }
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    match expect {
        Expect::Codes(allowed) => prop_assert!(
            allowed.contains(&code),
            "{what}: expected one of {allowed:?}, got {}",
            short(result)
        ),
        Expect::Invalid(fields) => {
            prop_assert_eq!(
                code,
                Code::InvalidArgument,
                "{}: expected INVALID_ARGUMENT naming {:?}, got {}",
                what,
                fields,
                short(result)
            );
            if let Err(status) = result {
                prop_assert!(
                    fields.iter().any(|f| status.message().contains(f)),
                    "{what}: the message {:?} names none of {fields:?}",
                    short(&status.message())
                );
            }
        }
        Expect::Malformed => prop_assert_eq!(
            code,
            Code::InvalidArgument,
            "{}: expected INVALID_ARGUMENT, got {}",
            what,
            short(result)
        ),
    }
    Ok(())
}

/// One case: the call, judged, and the tables compared when it was rejected.
async fn case<T: Debug>(
    ctx: &Ctx,
    what: &str,
    expect: &Expect,
    call: impl Future<Output = Result<T, Status>>,
) -> TestCaseResult {
    let before = snapshot(&ctx.db).await;
    let result = call.await;
    judge(what, &result, expect)?;
    if result.is_err() {
        unchanged(what, &before, &snapshot(&ctx.db).await)?;
    }
    Ok(())
}

/// A property over one request message: `expect` is the oracle, `call` makes the call
/// (and may assert on the response).
async fn fuzz<S, Fut, T>(
    ctx: &Shared,
    name: &'static str,
    strategy: impl FnOnce() -> S + Send + 'static,
    expect: impl Fn(&S::Value) -> Expect + Send + 'static,
    call: impl Fn(Shared, S::Value) -> Fut + Send + 'static,
) where
    S: Strategy,
    S::Value: Clone,
    Fut: Future<Output = Result<T, Status>>,
    T: Debug,
{
    let ctx2 = ctx.clone();
    check(name, strategy, move |input| {
        let expect = expect(&input);
        let what = format!("{name}({})", short(&input));
        let ctx = ctx2.clone();
        ctx2.rt
            .block_on(async { case(&ctx, &what, &expect, call(ctx.clone(), input)).await })
    })
    .await;
    ctx.still_serving().await;
}

// ---------------------------------------------------------------------------------
// The rules of API.md, written again here so that the server is checked against the
// contract rather than against itself.

fn chars_ok(s: &str, max: usize, allowed: impl Fn(char) -> bool) -> bool {
    let n = s.chars().count();
    (1..=max).contains(&n) && s.chars().all(allowed)
}

fn service_name_ok(s: &str) -> bool {
    chars_ok(s, 64, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
}

fn username_ok(s: &str) -> bool {
    chars_ok(s, 64, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
    })
}

fn role_ok(s: &str) -> bool {
    chars_ok(s, 32, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
    })
}

fn password_ok(s: &str) -> bool {
    (12..=1024).contains(&s.len())
}

/// Descriptions: at most 1024 characters, no control characters but newline and tab
/// (PostgreSQL text cannot hold NUL; the rest would make logs lie).
fn description_ok(s: &str) -> bool {
    s.chars().count() <= 1024 && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// An imported secret: 32..256 printable ASCII characters without spaces; one that
/// claims the `kms_` format must carry its checksum.
fn imported_key_ok(s: &str) -> bool {
    (32..=256).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_graphic())
        && (!s.starts_with("kms_") || kms::domain::api_key::checksum_ok(s))
}

/// The page token format is the server's own (opaque to clients): base64url of `v1:`
/// and the last name of the page. The oracle knows it, to tell a well-formed token
/// (OK) from a malformed one (INVALID_ARGUMENT).
fn page_token_ok(token: &str, last_ok: impl Fn(&str) -> bool) -> bool {
    if token.is_empty() {
        return true;
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("v1:").map(&last_ok))
        .unwrap_or(false)
}

/// The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z.
fn timestamp_ok(t: &Option<prost_types::Timestamp>) -> bool {
    t.as_ref().is_none_or(|t| {
        (-62_135_596_800..=253_402_300_799).contains(&t.seconds)
            && (0..1_000_000_000).contains(&t.nanos)
    })
}

fn filter_ok(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

// ---------------------------------------------------------------------------------
// Hostile values.

/// Pieces of nasty text: NUL and other control characters, bidi overrides, zero-width
/// and combining characters, noncharacters and U+FFFD, characters next to the
/// surrogate range, lookalikes of overlong encodings and of ASCII, case-folding
/// traps, SQL, templates and paths.
const NASTY: &[&str] = &[
    "\0",
    "\0\0\0",
    "\u{1}",
    "\u{7}",
    "\u{8}",
    "\t",
    "\n",
    "\r\n",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{85}",
    "\u{9b}",
    "\u{a0}",
    "\u{200b}",
    "\u{200d}",
    "\u{200e}",
    "\u{200f}",
    "\u{202e}",
    "\u{2066}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffd}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{fdd0}",
    "\u{d7ff}",
    "\u{e000}",
    "\u{10ffff}",
    "e\u{301}",
    "\u{301}",
    "\u{1f600}",
    "\u{1f469}\u{200d}\u{1f4bb}",
    "\u{c0}\u{af}",
    "\u{e0}\u{80}\u{af}",
    "\u{ff0f}",
    "\u{2215}",
    "\u{2024}",
    "\u{ff0e}",
    "\u{ff41}",
    "\u{130}",
    "\u{131}",
    "\u{17f}",
    "\u{212a}",
    "\u{391}",
    " ",
    "'",
    "\"",
    "`",
    "\\",
    "/",
    "../",
    "%",
    "%00",
    "_",
    "*",
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "<script>",
    "kms_",
    "kmsr_",
    "Bearer ",
    "v1:",
    "admin",
    "root",
];

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(NASTY).prop_map(str::to_owned),
        4 => "[A-Za-z0-9._@-]{0,8}",
        2 => any::<char>().prop_map(String::from),
        1 => proptest::char::range('\0', '\u{1f}').prop_map(String::from),
    ]
}

/// Nasty pieces and plain ones, glued together.
fn mixed() -> impl Strategy<Value = String> {
    proptest::collection::vec(atom(), 0..10).prop_map(|parts| parts.concat())
}

/// Long runs of one unit: around every length limit, and far past them (but mostly
/// under the message size limit; the oracle expects OUT_OF_RANGE above it).
fn huge() -> impl Strategy<Value = String> {
    const UNITS: &[&str] = &[
        "a",
        "Z",
        "\u{e9}",
        "\0",
        "\u{1f600}",
        "e\u{301}",
        "kms_",
        " ",
    ];
    const LENS: &[usize] = &[
        11, 12, 13, 31, 32, 33, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4096, 16_000,
    ];
    (select(UNITS), select(LENS)).prop_map(|(unit, n)| unit.repeat(n))
}

/// A valid value with something nasty inserted somewhere.
fn near(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (valid, atom(), any::<Index>()).prop_map(|(s, bad, at)| {
        let chars: Vec<char> = s.chars().collect();
        let at = at.index(chars.len() + 1);
        let mut out: String = chars[..at].iter().collect();
        out.push_str(&bad);
        out.extend(&chars[at..]);
        out
    })
}

/// Valid values (a share of the cases must reach the database) and hostile ones.
fn hostile<S>(valid: impl Fn() -> S) -> impl Strategy<Value = String>
where
    S: Strategy<Value = String> + 'static,
{
    prop_oneof![
        3 => valid(),
        4 => mixed(),
        1 => huge(),
        1 => any::<String>(),
        2 => near(valid()),
    ]
}

fn valid_service_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "svc-a", "svc.b", "Z_9", "nope", "a", "new-key", "..", "-", "_"
            ][..]
        )
        .prop_map(str::to_owned),
        "[A-Za-z0-9._-]{1,64}",
    ]
}

/// Usernames, never the admin's own (a case must not take the admin role away from
/// the token the other cases use).
fn valid_username() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["alice", "bob", "nobody", "x@y.z", "carol", "@"][..]).prop_map(str::to_owned),
        "[A-Za-z0-9._@-]{1,64}",
    ]
}

fn not_admin(s: &String) -> bool {
    s != ADMIN
}

fn valid_role() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["user", "admin", "auditor", "ops_team-2"][..]).prop_map(str::to_owned),
        "[a-z0-9_-]{1,32}",
    ]
}

fn valid_password() -> impl Strategy<Value = String> {
    "[ -~]{12,40}"
}

fn roles() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(hostile(valid_role), 0..4)
}

fn wild_i64(edges: &'static [i64]) -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => select(edges),
        2 => any::<i64>(),
        1 => -5i64..5,
    ]
}

const TTL_EDGES: &[i64] = &[
    0,
    -1,
    1,
    3600,
    kms::domain::validate::TTL_MAX_SECONDS,
    kms::domain::validate::TTL_MAX_SECONDS + 1,
    i64::MAX,
    i64::MIN,
    i64::MAX / 1000,
];

const GRACE_EDGES: &[i64] = &[0, -1, 1, 2_592_000, 2_592_001, i64::MAX, i64::MIN];

fn page_size() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => select(&[i32::MIN, -1, 0, 1, 2, 1000, 1001, i32::MAX][..]),
        2 => any::<i32>(),
        1 => -3i32..60,
    ]
}

/// Page tokens: well-formed ones naming valid and hostile rows, other versions,
/// bytes that are not UTF-8, truncations, and text that is not base64url at all.
fn page_token(valid_last: fn() -> BoxedStrategy<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        3 => valid_last().prop_map(|last| URL_SAFE_NO_PAD.encode(format!("v1:{last}"))),
        2 => hostile(valid_last).prop_map(|last| URL_SAFE_NO_PAD.encode(format!("v1:{last}"))),
        1 => (select(&["v2:", "", "V1:", "v1", " v1:", "v1:v1:"][..]), valid_last())
            .prop_map(|(v, last)| URL_SAFE_NO_PAD.encode(format!("{v}{last}"))),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        1 => (valid_last(), any::<Index>()).prop_map(|(last, cut)| {
            let t = URL_SAFE_NO_PAD.encode(format!("v1:{last}"));
            t[..cut.index(t.len() + 1)].to_owned()
        }),
        1 => valid_last().prop_map(|last| STANDARD.encode(format!("v1:{last}"))),
        2 => mixed(),
    ]
}

fn boxed_service_name() -> BoxedStrategy<String> {
    valid_service_name().boxed()
}

fn boxed_username() -> BoxedStrategy<String> {
    valid_username().boxed()
}

fn boxed_audit_id() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        select(&["0", "-1", "+5", "007", "9223372036854775808", "1e3", " 1"][..])
            .prop_map(str::to_owned),
    ]
    .boxed()
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let seconds = prop_oneof![
        3 => select(&[
            0,
            -1,
            -62_135_596_800,
            -62_135_596_801,
            253_402_300_799,
            253_402_300_800,
            8_210_298_412_799,
            8_210_298_412_800,
            -8_334_632_851_200,
            -8_334_632_851_201,
            i64::MIN,
            i64::MAX,
            1_800_000_000,
        ][..]),
        2 => any::<i64>(),
    ];
    let nanos = prop_oneof![
        3 => Just(0),
        1 => select(&[-1, 999_999_999, 1_000_000_000, i32::MIN, i32::MAX][..]),
        1 => any::<i32>(),
    ];
    proptest::option::of(
        (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

/// Mutations of a good token or key: truncation, a replaced, inserted or deleted
/// character, swapped or repeated segments.
fn mutated(good: String) -> impl Strategy<Value = String> {
    let edit = (
        0u8..7,
        any::<Index>(),
        any::<Index>(),
        select(&b"Aa0_-.=+/ \0"[..]),
    );
    proptest::collection::vec(edit, 1..4).prop_map(move |edits| {
        let mut s = good.clone().into_bytes();
        for (op, i, j, byte) in edits {
            let at = i.index(s.len() + 1);
            match op {
                0 => s.truncate(at),
                1 if at < s.len() => s[at] = if s[at] == byte { b'x' } else { byte },
                2 => s.insert(at, byte),
                3 if at < s.len() => {
                    s.remove(at);
                }
                4 => {
                    let text = String::from_utf8_lossy(&s).into_owned();
                    let mut parts: Vec<&str> = text.split('.').collect();
                    let n = parts.len();
                    parts.swap(i.index(n), j.index(n));
                    s = parts.join(".").into_bytes();
                }
                5 => {
                    let text = String::from_utf8_lossy(&s).into_owned();
                    let parts: Vec<&str> = text.split('.').collect();
                    let part = parts[i.index(parts.len())];
                    s = format!("{text}.{part}").into_bytes();
                }
                _ => s.extend_from_slice(b".."),
            }
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

// ---------------------------------------------------------------------------------
// The field properties, one test per service.

async fn start(backend: Backend) -> (TestServer, Shared) {
    let server = TestServer::start_with(backend, |c| {
        // Hostile logins must be judged, not throttled.
        c.login_throttle.max_failures = 100_000;
    })
    .await;
    let ctx = Ctx::start(&server).await;
    (server, ctx)
}

both_backends!(
    hostile_auth_fields,
    hostile_keys_fields,
    hostile_users_fields,
    hostile_audit_fields
);

async fn hostile_auth_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;

    fuzz(
        &ctx,
        "Register",
        || {
            (
                hostile(|| valid_username().prop_filter("admin", not_admin)),
                hostile(valid_password),
                roles(),
                any::<bool>(),
            )
                .prop_map(|(username, password, roles, as_admin)| {
                    (
                        pb::RegisterRequest {
                            username,
                            password,
                            roles,
                        },
                        as_admin,
                    )
                })
        },
        |(req, as_admin)| {
            let others = !as_admin && req.roles.iter().any(|r| r != "user");
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .check(password_ok(&req.password), "password")
                    .check(req.roles.iter().all(|r| role_ok(r)), "roles")
                    .or(if others {
                        codes(&[Code::PermissionDenied])
                    } else {
                        codes(&[Code::Ok, Code::AlreadyExists])
                    }),
            )
        },
        |ctx, (req, as_admin)| async move {
            let request = if as_admin {
                authed(req, &ctx.admin)
            } else {
                Request::new(req)
            };
            ctx.auth().register(request).await
        },
    )
    .await;

    fuzz(
        &ctx,
        "Login",
        || {
            (hostile(valid_username), hostile(valid_password))
                .prop_map(|(username, password)| pb::LoginRequest { username, password })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .check((1..=1024).contains(&req.password.len()), "password")
                    .or(codes(&[Code::Unauthenticated])),
            )
        },
        |ctx, req| async move { ctx.auth().login(req).await },
    )
    .await;

    let admin = ctx.admin.clone();
    fuzz(
        &ctx,
        "ValidateToken",
        move || {
            prop_oneof![
                2 => hostile(|| "[A-Za-z0-9_-]{10,40}\\.[A-Za-z0-9_-]{10,80}\\.[A-Za-z0-9_-]{0,43}"),
                2 => mutated(admin),
                1 => proptest::collection::vec(any::<u8>(), 0..200)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ]
            .prop_map(|token| pb::ValidateTokenRequest { token })
        },
        |req| sized(req, codes(&[Code::Ok])),
        |ctx, req| async move {
            let valid = req.token == ctx.admin;
            let answer = ctx.auth().validate_token(req).await?.into_inner();
            assert_eq!(answer.valid, valid, "{answer:?}");
            if !valid {
                assert_eq!(answer, pb::ValidateTokenResponse::default());
            }
            Ok::<_, Status>(answer)
        },
    )
    .await;

    fuzz(
        &ctx,
        "Refresh",
        || {
            prop_oneof![
                3 => hostile(|| "kmsr_[A-Za-z0-9]{43}"),
                1 => Just(String::new()),
            ]
            .prop_map(|refresh_token| pb::RefreshRequest { refresh_token })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(!req.refresh_token.is_empty(), "refresh_token")
                    .or(codes(&[Code::Unauthenticated])),
            )
        },
        |ctx, req| async move { ctx.auth().refresh(req).await },
    )
    .await;

    server.stop().await;
}

async fn hostile_keys_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;

    fuzz(
        &ctx,
        "CreateKey",
        || {
            let api_key = prop_oneof![
                2 => Just(None),
                2 => hostile(|| "[!-~]{32,80}").prop_map(Some),
                1 => "[A-Za-z0-9]{43}".prop_map(|body| {
                    // A well-formed KMS key, checksum and all, or with a typo.
                    let key = kms::domain::api_key::generate().unwrap();
                    Some(format!("kms_{body}{}", &key[47..]))
                }),
                1 => Just(Some(kms::domain::api_key::generate().unwrap())),
            ];
            (
                hostile(valid_service_name),
                api_key,
                hostile(|| "[ -~]{0,40}"),
                wild_i64(TTL_EDGES),
            )
                .prop_map(|(service_name, api_key, description, ttl_seconds)| {
                    pb::CreateKeyRequest {
                        service_name,
                        api_key,
                        description,
                        ttl_seconds,
                        ..Default::default()
                    }
                })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .check(description_ok(&req.description), "description")
                    .check(
                        (0..=kms::domain::validate::TTL_MAX_SECONDS).contains(&req.ttl_seconds),
                        "ttl_seconds",
                    )
                    .check(
                        req.api_key.as_deref().is_none_or(imported_key_ok),
                        "api_key",
                    )
                    .or(codes(&[Code::Ok, Code::AlreadyExists])),
            )
        },
        |ctx, req| async move {
            let key = ctx
                .keys()
                .create_key(authed(req.clone(), &ctx.admin))
                .await?
                .into_inner();
            assert_eq!(key.service_name, req.service_name);
            if let Some(imported) = &req.api_key {
                assert_eq!(&key.api_key, imported);
            }
            Ok::<_, Status>(())
        },
    )
    .await;

    fuzz(
        &ctx,
        "GetKey",
        || hostile(valid_service_name).prop_map(|service_name| pb::GetKeyRequest { service_name }),
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.keys().get_key(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "ListKeys",
        || {
            (page_size(), page_token(boxed_service_name)).prop_map(|(page_size, page_token)| {
                pb::ListKeysRequest {
                    page_size,
                    page_token,
                }
            })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(req.page_size >= 0, "page_size")
                    .check(
                        page_token_ok(&req.page_token, service_name_ok),
                        "page_token",
                    )
                    .or(codes(&[Code::Ok])),
            )
        },
        |ctx, req| async move {
            let page = ctx
                .keys()
                .list_keys(authed(req.clone(), &ctx.admin))
                .await?
                .into_inner();
            let size = match req.page_size {
                0 => 50,
                n => n.min(1000) as usize,
            };
            assert!(page.keys.len() <= size);
            assert!(page.keys.iter().all(|k| k.api_key.is_empty()), "no secrets");
            Ok::<_, Status>(())
        },
    )
    .await;

    let secrets = ctx.secrets.clone();
    let audited_before = audit_count(&ctx.db, "key_verify").await;
    let failed = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let failed_in_cases = failed.clone();
    fuzz(
        &ctx,
        "VerifyKey",
        move || {
            prop_oneof![
                3 => hostile(|| "[!-~]{32,60}"),
                3 => select(secrets).prop_flat_map(mutated),
                1 => Just(kms::domain::api_key::generate().unwrap()),
                1 => Just(String::new()),
                1 => "[!-~]{257,300}",
            ]
            .prop_map(|api_key| pb::VerifyKeyRequest {
                api_key,
                ..Default::default()
            })
        },
        |req| sized(req, codes(&[Code::Ok])),
        move |ctx, req| {
            let failed = failed_in_cases.clone();
            async move {
                let answer = ctx
                    .keys()
                    .verify_key(authed(req.clone(), &ctx.admin))
                    .await?
                    .into_inner();
                assert_eq!(
                    answer.valid,
                    ctx.secrets.contains(&req.api_key),
                    "{answer:?}"
                );
                if !answer.valid {
                    let not_found = pb::VerifyKeyResponse {
                        code: pb::VerifyCode::NotFound.into(),
                        ..Default::default()
                    };
                    assert_eq!(answer, not_found);
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<_, Status>(answer)
            }
        },
    )
    .await;
    // Every failed verification is in the audit trail, whatever it held: the first of
    // each kind at once, repeats with their count when their 10 s window ends.
    let expected = audited_before + failed.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let recorded = audit_count(&ctx.db, "key_verify").await;
        if recorded == expected {
            break;
        }
        assert!(
            recorded < expected && Instant::now() < deadline,
            "failed VerifyKeys must be audited: {recorded} recorded, {expected} expected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    fuzz(
        &ctx,
        "RotateKey",
        || {
            (hostile(valid_service_name), wild_i64(GRACE_EDGES)).prop_map(
                |(service_name, grace_period_seconds)| pb::RotateKeyRequest {
                    service_name,
                    grace_period_seconds,
                },
            )
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .check(
                        (0..=30 * 24 * 3600).contains(&req.grace_period_seconds),
                        "grace_period_seconds",
                    )
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.keys().rotate_key(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "RevokeKey",
        || {
            hostile(valid_service_name)
                .prop_map(|service_name| pb::RevokeKeyRequest { service_name })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(service_name_ok(&req.service_name), "service_name")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.keys().revoke_key(authed(req, &ctx.admin)).await },
    )
    .await;

    server.stop().await;
}

async fn hostile_users_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let target = || hostile(valid_username).prop_filter("admin", not_admin);

    fuzz(
        &ctx,
        "ListUsers",
        || {
            (page_size(), page_token(boxed_username)).prop_map(|(page_size, page_token)| {
                pb::ListUsersRequest {
                    page_size,
                    page_token,
                }
            })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(req.page_size >= 0, "page_size")
                    .check(page_token_ok(&req.page_token, username_ok), "page_token")
                    .or(codes(&[Code::Ok])),
            )
        },
        |ctx, req| async move { ctx.users().list_users(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "GetUser",
        move || target().prop_map(|username| pb::GetUserRequest { username }),
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.users().get_user(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "SetRoles",
        move || {
            (target(), roles())
                .prop_map(|(username, roles)| pb::SetRolesRequest { username, roles })
        },
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .check(
                        !req.roles.is_empty() && req.roles.iter().all(|r| role_ok(r)),
                        "roles",
                    )
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.users().set_roles(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "ChangePassword",
        move || {
            (
                prop_oneof![3 => target(), 1 => Just(String::new()), 1 => Just(ADMIN.to_owned())],
                prop_oneof![3 => hostile(valid_password), 1 => Just(String::new())],
                hostile(valid_password),
            )
                .prop_map(|(username, old_password, new_password)| {
                    pb::ChangePasswordRequest {
                        username,
                        old_password,
                        new_password,
                    }
                })
        },
        |req| {
            let own = req.username.is_empty() || req.username == ADMIN;
            let old_ok = !own || (1..=1024).contains(&req.old_password.len());
            sized(
                req,
                Rules::new()
                    .check(
                        req.username.is_empty() || username_ok(&req.username),
                        "username",
                    )
                    .check(password_ok(&req.new_password), "new_password")
                    .check(old_ok, "old_password")
                    .or(if own {
                        // The admin's password is never guessed: it does not match.
                        codes(&[Code::PermissionDenied])
                    } else {
                        codes(&[Code::Ok, Code::NotFound])
                    }),
            )
        },
        |ctx, req| async move { ctx.users().change_password(authed(req, &ctx.admin)).await },
    )
    .await;

    fuzz(
        &ctx,
        "DeleteUser",
        move || target().prop_map(|username| pb::DeleteUserRequest { username }),
        |req| {
            sized(
                req,
                Rules::new()
                    .check(username_ok(&req.username), "username")
                    .or(codes(&[Code::Ok, Code::NotFound])),
            )
        },
        |ctx, req| async move { ctx.users().delete_user(authed(req, &ctx.admin)).await },
    )
    .await;

    server.stop().await;
}

async fn hostile_audit_fields(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let filter = || {
        prop_oneof![
            2 => Just(String::new()),
            1 => select(&["login", "key_verify", "root", "anonymous", "failure"][..])
                .prop_map(str::to_owned),
            3 => hostile(|| "[a-z_]{1,20}"),
        ]
    };
    fuzz(
        &ctx,
        "ListAuditEvents",
        move || {
            (
                (filter(), filter(), filter()),
                timestamp(),
                timestamp(),
                page_size(),
                page_token(boxed_audit_id),
            )
                .prop_map(
                    |((actor, action, target), since, until, page_size, page_token)| {
                        pb::ListAuditEventsRequest {
                            actor,
                            action,
                            target,
                            since,
                            until,
                            page_size,
                            page_token,
                        }
                    },
                )
        },
        |req| {
            let ordered = match (&req.since, &req.until) {
                (Some(s), Some(u)) if timestamp_ok(&req.since) && timestamp_ok(&req.until) => {
                    (s.seconds, s.nanos) <= (u.seconds, u.nanos)
                }
                _ => true,
            };
            sized(
                req,
                Rules::new()
                    .check(filter_ok(&req.actor), "actor")
                    .check(filter_ok(&req.action), "action")
                    .check(filter_ok(&req.target), "target")
                    .check(timestamp_ok(&req.since), "since")
                    .check(timestamp_ok(&req.until), "until")
                    .check(ordered, "since")
                    .check(req.page_size >= 0, "page_size")
                    .check(
                        page_token_ok(&req.page_token, |id| id.parse::<i64>().is_ok()),
                        "page_token",
                    )
                    .or(codes(&[Code::Ok])),
            )
        },
        |ctx, req| async move { ctx.audit().list_audit_events(authed(req, &ctx.admin)).await },
    )
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------
// Every method, its message as raw bytes: random, not UTF-8 where a string belongs,
// truncated, wrong wire types, unknown fields, and mutated valid encodings.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Register,
    Login,
    ValidateToken,
    Refresh,
    Logout,
    GetJwks,
    RotateSigningKey,
    CreateKey,
    GetKey,
    ListKeys,
    RotateKey,
    RevokeKey,
    VerifyKey,
    ListUsers,
    GetUser,
    SetRoles,
    DeleteUser,
    ChangePassword,
    ListAuditEvents,
}

const METHODS: &[Method] = &[
    Method::Register,
    Method::Login,
    Method::ValidateToken,
    Method::Refresh,
    Method::Logout,
    Method::GetJwks,
    Method::RotateSigningKey,
    Method::CreateKey,
    Method::GetKey,
    Method::ListKeys,
    Method::RotateKey,
    Method::RevokeKey,
    Method::VerifyKey,
    Method::ListUsers,
    Method::GetUser,
    Method::SetRoles,
    Method::DeleteUser,
    Method::ChangePassword,
    Method::ListAuditEvents,
];

impl Method {
    fn path(self) -> &'static str {
        match self {
            Self::Register => "/kms.v1.Auth/Register",
            Self::Login => "/kms.v1.Auth/Login",
            Self::ValidateToken => "/kms.v1.Auth/ValidateToken",
            Self::Refresh => "/kms.v1.Auth/Refresh",
            Self::Logout => "/kms.v1.Auth/Logout",
            Self::GetJwks => "/kms.v1.Auth/GetJwks",
            Self::RotateSigningKey => "/kms.v1.Auth/RotateSigningKey",
            Self::CreateKey => "/kms.v1.Keys/CreateKey",
            Self::GetKey => "/kms.v1.Keys/GetKey",
            Self::ListKeys => "/kms.v1.Keys/ListKeys",
            Self::RotateKey => "/kms.v1.Keys/RotateKey",
            Self::RevokeKey => "/kms.v1.Keys/RevokeKey",
            Self::VerifyKey => "/kms.v1.Keys/VerifyKey",
            Self::ListUsers => "/kms.v1.Users/ListUsers",
            Self::GetUser => "/kms.v1.Users/GetUser",
            Self::SetRoles => "/kms.v1.Users/SetRoles",
            Self::DeleteUser => "/kms.v1.Users/DeleteUser",
            Self::ChangePassword => "/kms.v1.Users/ChangePassword",
            Self::ListAuditEvents => "/kms.v1.Audit/ListAuditEvents",
        }
    }

    /// Whether prost can decode `bytes` as this method's request.
    fn decodes(self, bytes: &[u8]) -> bool {
        fn ok<M: Message + Default>(bytes: &[u8]) -> bool {
            M::decode(bytes).is_ok()
        }
        match self {
            Self::Register => ok::<pb::RegisterRequest>(bytes),
            Self::Login => ok::<pb::LoginRequest>(bytes),
            Self::ValidateToken => ok::<pb::ValidateTokenRequest>(bytes),
            Self::Refresh => ok::<pb::RefreshRequest>(bytes),
            Self::Logout => ok::<pb::LogoutRequest>(bytes),
            Self::GetJwks => ok::<pb::GetJwksRequest>(bytes),
            Self::RotateSigningKey => ok::<pb::RotateSigningKeyRequest>(bytes),
            Self::CreateKey => ok::<pb::CreateKeyRequest>(bytes),
            Self::GetKey => ok::<pb::GetKeyRequest>(bytes),
            Self::ListKeys => ok::<pb::ListKeysRequest>(bytes),
            Self::RotateKey => ok::<pb::RotateKeyRequest>(bytes),
            Self::RevokeKey => ok::<pb::RevokeKeyRequest>(bytes),
            Self::VerifyKey => ok::<pb::VerifyKeyRequest>(bytes),
            Self::ListUsers => ok::<pb::ListUsersRequest>(bytes),
            Self::GetUser => ok::<pb::GetUserRequest>(bytes),
            Self::SetRoles => ok::<pb::SetRolesRequest>(bytes),
            Self::DeleteUser => ok::<pb::DeleteUserRequest>(bytes),
            Self::ChangePassword => ok::<pb::ChangePasswordRequest>(bytes),
            Self::ListAuditEvents => ok::<pb::ListAuditEventsRequest>(bytes),
        }
    }

    /// A harmless, valid encoding of the request, to mutate.
    fn sample(self) -> Vec<u8> {
        match self {
            Self::Register => pb::RegisterRequest {
                username: "raw-user".into(),
                password: "raw-password-123".into(),
                roles: vec!["user".into()],
            }
            .encode_to_vec(),
            Self::Login => pb::LoginRequest {
                username: "nobody".into(),
                password: "wrong-password".into(),
            }
            .encode_to_vec(),
            Self::ValidateToken => pb::ValidateTokenRequest {
                token: "a.b.c".into(),
            }
            .encode_to_vec(),
            Self::Refresh => pb::RefreshRequest {
                refresh_token: "kmsr_x".into(),
            }
            .encode_to_vec(),
            Self::Logout | Self::GetJwks | Self::RotateSigningKey => Vec::new(),
            Self::CreateKey => pb::CreateKeyRequest {
                service_name: "raw-key".into(),
                api_key: Some("k".repeat(40)),
                description: "raw".into(),
                ttl_seconds: 60,
                ..Default::default()
            }
            .encode_to_vec(),
            Self::GetKey => pb::GetKeyRequest {
                service_name: "svc-a".into(),
            }
            .encode_to_vec(),
            Self::ListKeys => pb::ListKeysRequest {
                page_size: 2,
                page_token: URL_SAFE_NO_PAD.encode("v1:svc-a"),
            }
            .encode_to_vec(),
            Self::RotateKey => pb::RotateKeyRequest {
                service_name: "nope".into(),
                grace_period_seconds: 5,
            }
            .encode_to_vec(),
            Self::RevokeKey => pb::RevokeKeyRequest {
                service_name: "nope".into(),
            }
            .encode_to_vec(),
            Self::VerifyKey => pb::VerifyKeyRequest {
                api_key: "kms_nope".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            Self::ListUsers => pb::ListUsersRequest {
                page_size: 2,
                page_token: String::new(),
            }
            .encode_to_vec(),
            Self::GetUser => pb::GetUserRequest {
                username: "nobody".into(),
            }
            .encode_to_vec(),
            Self::SetRoles => pb::SetRolesRequest {
                username: "nobody".into(),
                roles: vec!["user".into()],
            }
            .encode_to_vec(),
            Self::DeleteUser => pb::DeleteUserRequest {
                username: "nobody".into(),
            }
            .encode_to_vec(),
            Self::ChangePassword => pb::ChangePasswordRequest {
                username: "nobody".into(),
                old_password: String::new(),
                new_password: "new-password-123".into(),
            }
            .encode_to_vec(),
            Self::ListAuditEvents => pb::ListAuditEventsRequest {
                actor: "root".into(),
                since: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                page_size: 3,
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    /// Methods anyone may call (any token sent is ignored).
    fn public(self) -> bool {
        matches!(
            self,
            Self::Login | Self::ValidateToken | Self::Refresh | Self::GetJwks
        )
    }
}

/// Sends raw bytes as a request message, and reads the answer as raw bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(
    channel: &Channel,
    path: &'static str,
    request: Request<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Raw request bodies: random bytes, and encodings that are wrong in one place.
fn raw_body(method: Method) -> impl Strategy<Value = Vec<u8>> {
    let sample = method.sample();
    let field = 1u64..9;
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        // A string field holding bytes that are not UTF-8.
        2 => (field.clone(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(f, junk)| {
            let mut b = Vec::new();
            varint(f << 3 | 2, &mut b);
            varint(junk.len() as u64 + 2, &mut b);
            b.extend_from_slice(&[0xff, 0xfe]);
            b.extend_from_slice(&junk);
            b
        }),
        // A length that runs past the end.
        1 => (field.clone(), 1u64..100_000).prop_map(|(f, len)| {
            let mut b = Vec::new();
            varint(f << 3 | 2, &mut b);
            varint(len, &mut b);
            b.extend_from_slice(b"abc");
            b
        }),
        // A varint that never ends, or is eleven bytes long.
        1 => field.clone().prop_map(|f| {
            let mut b = Vec::new();
            varint(f << 3, &mut b);
            b.extend_from_slice(&[0xff; 11]);
            b
        }),
        // Each wire type on each field, and fields and wire types that do not exist.
        2 => (0u64..40, 0u64..8, proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(f, wire, rest)| {
            let mut b = Vec::new();
            varint(f << 3 | wire, &mut b);
            b.extend_from_slice(&rest);
            b
        }),
        // Unknown fields around a valid message (they must be skipped).
        1 => Just(sample.clone()).prop_map(|mut b| {
            b.extend_from_slice(&[0xf8, 0x07, 0x01, 0xfa, 0x07, 0x01, b'x']);
            b
        }),
        3 => (Just(sample), proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..4)).prop_map(|(mut b, edits)| {
            for (at, byte, op) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 => b.truncate(i),
                    1 if i < b.len() => b[i] ^= byte | 1,
                    _ => b.insert(i, byte),
                }
            }
            b
        }),
    ]
}

both_backends!(hostile_raw_messages);

async fn hostile_raw_messages(backend: Backend) {
    let (server, ctx) = start(backend).await;
    // Logout ends the login of its token: it gets a login of its own.
    let carol = server.user_token("carol").await;
    let ctx2 = ctx.clone();
    check(
        "raw messages",
        || select(METHODS).prop_flat_map(|m| (Just(m), raw_body(m))),
        move |(method, body)| {
            let ctx = ctx2.clone();
            let token = if method == Method::Logout {
                carol.clone()
            } else {
                ctx.admin.clone()
            };
            let expect = if !method.decodes(&body) {
                if method == Method::Logout {
                    // Once one Logout went through, carol's token is refused first.
                    codes(&[Code::InvalidArgument, Code::Unauthenticated])
                } else {
                    Expect::Malformed
                }
            } else {
                // Any answer the contract allows for some input of this method.
                codes(&[
                    Code::Ok,
                    Code::InvalidArgument,
                    Code::NotFound,
                    Code::AlreadyExists,
                    Code::PermissionDenied,
                    Code::Unauthenticated,
                    Code::FailedPrecondition,
                ])
            };
            let what = format!("{method:?} raw {}", short(&body));
            ctx2.rt.block_on(async {
                let request = authed(body, &token);
                case(
                    &ctx,
                    &what,
                    &expect,
                    raw_call(&ctx.channel, method.path(), request),
                )
                .await
            })
        },
    )
    .await;
    ctx.still_serving().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------
// The authorization header: garbage, truncated and mutated tokens, other schemes,
// missing spaces, two headers, bytes outside ASCII, against every method.

#[derive(Debug, Clone)]
enum Credentials {
    None,
    One(Vec<u8>),
    Two(Vec<u8>, Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Admin,
    User,
    Refused,
}

/// What the header says, read by RFC 6750 (`Bearer`, case-insensitive, then one or
/// more spaces, then the token).
fn caller_of(credentials: &Credentials, admin: &str, user: &str) -> Caller {
    let value = match credentials {
        Credentials::None => return Caller::Anonymous,
        Credentials::Two(..) => return Caller::Refused,
        Credentials::One(value) => value,
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return Caller::Refused;
    };
    if !text
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Caller::Refused;
    }
    let Some((scheme, token)) = text.split_once(' ') else {
        return Caller::Refused;
    };
    let token = token.trim_matches([' ', '\t']);
    if !scheme.eq_ignore_ascii_case("bearer") {
        Caller::Refused
    } else if token == admin {
        Caller::Admin
    } else if token == user {
        Caller::User
    } else {
        Caller::Refused
    }
}

fn credentials(admin: String, user: String) -> impl Strategy<Value = Credentials> {
    let token = move || {
        prop_oneof![
            3 => Just(admin.clone()),
            1 => Just(user.clone()),
            3 => mutated(admin.clone()),
            1 => "[!-~]{0,200}",
            1 => Just(String::new()),
            1 => Just(format!("{admin} extra")),
            1 => Just(format!("{admin},")),
        ]
    };
    let scheme = select(
        &[
            "Bearer", "bearer", "BEARER", "Basic", "Token", "Bearer:", "", "JWT", "Bearer,",
        ][..],
    );
    let sep = select(&[" ", "  ", "\t", "", " \t", "="][..]);
    let trail = select(&["", " ", "\t"][..]);
    let one = move || {
        (scheme.clone(), sep.clone(), token(), trail.clone()).prop_map(
            |(scheme, sep, token, trail)| format!("{scheme}{sep}{token}{trail}").into_bytes(),
        )
    };
    prop_oneof![
        1 => Just(Credentials::None),
        6 => one().prop_map(Credentials::One),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Credentials::One),
        1 => proptest::collection::vec(128u8..=255, 1..50).prop_map(move |junk| {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(&junk);
            Credentials::One(v)
        }),
        1 => (one(), one()).prop_map(|(a, b)| Credentials::Two(a, b)),
    ]
}

/// A harmless call of each method, with the metadata given.
async fn call_with(ctx: &Ctx, method: Method, meta: MetadataMap) -> Result<(), Status> {
    fn req<T>(meta: MetadataMap, message: T) -> Request<T> {
        Request::from_parts(meta, Default::default(), message)
    }
    let (mut auth, mut keys, mut users, mut audit) =
        (ctx.auth(), ctx.keys(), ctx.users(), ctx.audit());
    match method {
        Method::Register => auth
            .register(req(meta, pb::RegisterRequest::default()))
            .await
            .map(drop),
        Method::Login => auth
            .login(req(
                meta,
                pb::LoginRequest {
                    username: "nobody".into(),
                    password: "wrong".into(),
                },
            ))
            .await
            .map(drop),
        Method::ValidateToken => auth
            .validate_token(req(meta, pb::ValidateTokenRequest::default()))
            .await
            .map(drop),
        Method::Refresh => auth
            .refresh(req(meta, pb::RefreshRequest::default()))
            .await
            .map(drop),
        Method::Logout => auth.logout(req(meta, pb::LogoutRequest {})).await.map(drop),
        Method::GetJwks => auth
            .get_jwks(req(meta, pb::GetJwksRequest {}))
            .await
            .map(drop),
        Method::RotateSigningKey => auth
            .rotate_signing_key(req(meta, pb::RotateSigningKeyRequest {}))
            .await
            .map(drop),
        Method::CreateKey => keys
            .create_key(req(
                meta,
                pb::CreateKeyRequest {
                    service_name: "header-key".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Method::GetKey => keys
            .get_key(req(
                meta,
                pb::GetKeyRequest {
                    service_name: "svc-a".into(),
                },
            ))
            .await
            .map(drop),
        Method::ListKeys => keys
            .list_keys(req(meta, pb::ListKeysRequest::default()))
            .await
            .map(drop),
        Method::RotateKey => keys
            .rotate_key(req(
                meta,
                pb::RotateKeyRequest {
                    service_name: "nope".into(),
                    grace_period_seconds: 0,
                },
            ))
            .await
            .map(drop),
        Method::RevokeKey => keys
            .revoke_key(req(
                meta,
                pb::RevokeKeyRequest {
                    service_name: "nope".into(),
                },
            ))
            .await
            .map(drop),
        Method::VerifyKey => keys
            .verify_key(req(
                meta,
                pb::VerifyKeyRequest {
                    api_key: "kms_nope".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Method::ListUsers => users
            .list_users(req(meta, pb::ListUsersRequest::default()))
            .await
            .map(drop),
        Method::GetUser => users
            .get_user(req(
                meta,
                pb::GetUserRequest {
                    username: "nobody".into(),
                },
            ))
            .await
            .map(drop),
        Method::SetRoles => users
            .set_roles(req(
                meta,
                pb::SetRolesRequest {
                    username: "nobody".into(),
                    roles: vec!["user".into()],
                },
            ))
            .await
            .map(drop),
        Method::DeleteUser => users
            .delete_user(req(
                meta,
                pb::DeleteUserRequest {
                    username: "nobody".into(),
                },
            ))
            .await
            .map(drop),
        Method::ChangePassword => users
            .change_password(req(
                meta,
                pb::ChangePasswordRequest {
                    username: "nobody".into(),
                    old_password: String::new(),
                    new_password: "new-password-123".into(),
                },
            ))
            .await
            .map(drop),
        Method::ListAuditEvents => audit
            .list_audit_events(req(meta, pb::ListAuditEventsRequest::default()))
            .await
            .map(drop),
    }
}

/// The answer of each harmless call for each kind of caller.
fn expected_for(method: Method, caller: Caller) -> Expect {
    use Code::*;
    if method.public() {
        return codes(&[match method {
            Method::Login => Unauthenticated,
            Method::Refresh => InvalidArgument,
            _ => Ok,
        }]);
    }
    match (method, caller) {
        (Method::Register, Caller::Refused) => codes(&[Unauthenticated]),
        (Method::Register, _) => Expect::Invalid(vec!["username"]),
        (_, Caller::Anonymous | Caller::Refused) => codes(&[Unauthenticated]),
        (Method::VerifyKey, _) => codes(&[Ok]),
        (_, Caller::User) => codes(&[PermissionDenied]),
        (Method::RotateSigningKey, _) => codes(&[FailedPrecondition]),
        (Method::CreateKey, _) => codes(&[Ok, AlreadyExists]),
        (Method::GetKey | Method::ListKeys | Method::ListUsers | Method::ListAuditEvents, _) => {
            codes(&[Ok])
        }
        _ => codes(&[NotFound]),
    }
}

both_backends!(hostile_authorization_metadata);

async fn hostile_authorization_metadata(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let ctx2 = ctx.clone();
    let (admin, user) = (ctx.admin.clone(), ctx.user.clone());
    check(
        "authorization metadata",
        move || (select(METHODS), credentials(admin, user)),
        move |(method, creds)| {
            let ctx = ctx2.clone();
            let caller = caller_of(&creds, &ctx.admin, &ctx.user);
            // A valid token would end its own login.
            prop_assume!(
                !(method == Method::Logout && matches!(caller, Caller::Admin | Caller::User))
            );
            let mut meta = MetadataMap::new();
            let values: Vec<&Vec<u8>> = match &creds {
                Credentials::None => vec![],
                Credentials::One(a) => vec![a],
                Credentials::Two(a, b) => vec![a, b],
            };
            for value in values {
                // Bytes no HTTP header may carry (control characters) cannot be sent.
                let Ok(value) = AsciiMetadataValue::try_from(value.as_slice()) else {
                    return Err(TestCaseError::reject("not a header value"));
                };
                meta.append("authorization", value);
            }
            let expect = expected_for(method, caller);
            let what = format!("{method:?} with {caller:?} {}", short(&creds));
            ctx2.rt
                .block_on(async { case(&ctx, &what, &expect, call_with(&ctx, method, meta)).await })
        },
    )
    .await;
    ctx.still_serving().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------
// Forged access tokens against each signing algorithm: `alg: none`, HMAC keyed with
// the public key, unknown and misleading `kid`s, a real token with another `alg`,
// keys embedded in the header (`jwk`, `jku`, `x5u`, `x5c`), and the real key signing
// claims that are expired, not yet valid, for another issuer or audience, or for no
// live login.

both_backends!(
    forged_tokens_eddsa,
    forged_tokens_rs256,
    forged_tokens_hs256
);

async fn forged_tokens_eddsa(backend: Backend) {
    forged_tokens(backend, SigningAlgorithm::EdDsa).await;
}

async fn forged_tokens_rs256(backend: Backend) {
    forged_tokens(backend, SigningAlgorithm::Rs256).await;
}

async fn forged_tokens_hs256(backend: Backend) {
    forged_tokens(backend, SigningAlgorithm::Hs256).await;
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token from a header and claims given as JSON, signed by `sign` (or unsigned).
fn token_of(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: Option<(&EncodingKey, Algorithm)>,
) -> String {
    let input = format!(
        "{}.{}",
        b64(serde_json::to_vec(header).unwrap()),
        b64(serde_json::to_vec(claims).unwrap())
    );
    let signature = match sign {
        Some((key, alg)) => jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{input}.{signature}")
}

/// DER: a tag, a length and the content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Every form of the server's public key a confused verifier might use as an HMAC
/// secret: raw bytes, DER (SPKI, PKCS#1), PEM with and without the final newline, the
/// base64url text, the JWK and the whole JWKS.
fn public_key_forms(jwk: &pb::Jwk, jwks_json: &str) -> Vec<(String, Vec<u8>)> {
    let mut forms = Vec::new();
    let key_json = serde_json::from_str::<serde_json::Value>(jwks_json).unwrap()["keys"][0].clone();
    forms.push(("jwk json".into(), serde_json::to_vec(&key_json).unwrap()));
    forms.push(("jwks json".into(), jwks_json.as_bytes().to_vec()));
    let (spki, pkcs1) = if jwk.kty == "OKP" {
        let x = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
        forms.push(("raw x".into(), x.clone()));
        forms.push(("x text".into(), jwk.x.as_bytes().to_vec()));
        let mut spki = hex_bytes("302a300506032b6570032100");
        spki.extend_from_slice(&x);
        (spki, None)
    } else {
        let n = URL_SAFE_NO_PAD.decode(&jwk.n).unwrap();
        let e = URL_SAFE_NO_PAD.decode(&jwk.e).unwrap();
        forms.push(("raw n".into(), n.clone()));
        forms.push(("n text".into(), jwk.n.as_bytes().to_vec()));
        let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
        let algorithm = hex_bytes("300d06092a864886f70d0101010500");
        let mut bits = vec![0u8];
        bits.extend_from_slice(&pkcs1);
        let spki = der(0x30, &[algorithm, der(0x03, &bits)].concat());
        (spki, Some(pkcs1))
    };
    let spki_pem = pem("PUBLIC KEY", &spki);
    forms.push(("spki pem".into(), spki_pem.clone().into_bytes()));
    forms.push((
        "spki pem, no newline".into(),
        spki_pem.trim_end().as_bytes().to_vec(),
    ));
    forms.push(("spki der".into(), spki));
    if let Some(pkcs1) = pkcs1 {
        forms.push((
            "pkcs1 pem".into(),
            pem("RSA PUBLIC KEY", &pkcs1).into_bytes(),
        ));
        forms.push(("pkcs1 der".into(), pkcs1));
    }
    forms
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The server's own signing key, opened from its database with its master key, as a
/// stolen-but-for-the-claims key: what it signs carries the real `kid`.
async fn server_key(
    server: &TestServer,
    algorithm: SigningAlgorithm,
) -> (EncodingKey, Option<String>) {
    if algorithm == SigningAlgorithm::Hs256 {
        return (EncodingKey::from_secret(JWT_SECRET), None);
    }
    let store = Store::connect(&StoreOptions {
        url: server.db_url().to_owned(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let keys: Vec<SigningKeyMaterial> = SigningKeys::new(
        store,
        Sealer::new(&server.config().master_key),
        algorithm,
        3600,
    )
    .load()
    .await
    .unwrap();
    let current = keys.iter().find(|k| k.current).unwrap();
    let key = match algorithm {
        SigningAlgorithm::Rs256 => EncodingKey::from_rsa_der(&current.private_pkcs8),
        _ => EncodingKey::from_ed_der(&current.private_pkcs8),
    };
    (key, Some(current.kid.clone()))
}

/// A key of the forger's own, of the given algorithm, with its public JWK.
fn own_key(algorithm: Algorithm) -> (EncodingKey, jsonwebtoken::jwk::Jwk) {
    let key = match algorithm {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_der(&kms::crypto::signing::generate_rsa_pkcs1().unwrap())
        }
        _ => EncodingKey::from_ed_der(&kms::crypto::signing::generate_ed25519_pkcs8().unwrap()),
    };
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, algorithm).unwrap();
    (key, jwk)
}

/// Whether a presented token is refused everywhere: introspection says invalid, a
/// protected call and an admin-only registration are UNAUTHENTICATED.
async fn refused(ctx: &Ctx, label: &str, token: &str) -> TestCaseResult {
    let what = format!("forged token ({label}) {}", short(&token));
    let answer = ctx
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: token.to_owned(),
        })
        .await;
    judge(&what, &answer, &codes(&[Code::Ok]))?;
    prop_assert_eq!(
        answer.unwrap().into_inner(),
        pb::ValidateTokenResponse::default(),
        "{}",
        what
    );
    let Ok(header) = AsciiMetadataValue::try_from(format!("Bearer {token}")) else {
        return Ok(());
    };
    let mut meta = MetadataMap::new();
    meta.insert("authorization", header);
    let create = ctx
        .keys()
        .create_key(Request::from_parts(
            meta.clone(),
            Default::default(),
            pb::CreateKeyRequest {
                service_name: "forged-key".into(),
                ..Default::default()
            },
        ))
        .await;
    judge(&what, &create, &codes(&[Code::Unauthenticated]))?;
    let register = ctx
        .auth()
        .register(Request::from_parts(
            meta,
            Default::default(),
            pb::RegisterRequest {
                username: "forged-admin".into(),
                password: "forged-password-1".into(),
                roles: vec!["admin".into()],
            },
        ))
        .await;
    judge(&what, &register, &codes(&[Code::Unauthenticated]))
}

async fn forged_tokens(backend: Backend, algorithm: SigningAlgorithm) {
    let server = TestServer::start_with(backend, |c| {
        c.jwt_algorithm = algorithm;
        if algorithm != SigningAlgorithm::Hs256 {
            c.jwt_secret = None;
        }
    })
    .await;
    let ctx = Ctx::start(&server).await;
    let real = ctx.admin.clone();
    let parts: Vec<&str> = real.split('.').collect();
    let real_header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let real_claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let alg = algorithm.jose();
    let (key, kid) = server_key(&server, algorithm).await;
    let sign_real = |claims: &serde_json::Value| {
        let mut header = Header::new(alg);
        header.kid.clone_from(&kid);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    };

    // The forging works: the real key re-signing the real claims makes a valid token.
    let control = sign_real(&real_claims);
    assert!(
        ctx.auth()
            .validate_token(pb::ValidateTokenRequest { token: control })
            .await
            .unwrap()
            .into_inner()
            .valid,
        "the re-signed real claims must verify"
    );

    let mut forged: Vec<(String, String)> = Vec::new();
    let kid_json = serde_json::json!(kid);

    // alg none, in every spelling, with and without the real kid.
    for none in ["none", "None", "NONE", "nOnE"] {
        add(
            &mut forged,
            &real_claims,
            &format!("alg {none}"),
            serde_json::json!({"alg": none, "typ": "JWT"}),
            None,
        );
        add(
            &mut forged,
            &real_claims,
            &format!("alg {none} with kid"),
            serde_json::json!({"alg": none, "kid": kid_json}),
            None,
        );
    }
    forged.push((
        "alg none, real signature".into(),
        format!(
            "{}.{}.{}",
            b64(serde_json::to_vec(&serde_json::json!({"alg": "none"})).unwrap()),
            parts[1],
            parts[2]
        ),
    ));
    // The real token with its header's alg changed (signature kept).
    for other in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "EdDSA", "ED25519",
        "eddsa", "hs256", "",
    ] {
        if other == alg_name(alg) {
            continue;
        }
        let mut header = real_header.clone();
        header["alg"] = serde_json::json!(other);
        forged.push((
            format!("alg changed to {other:?}"),
            format!(
                "{}.{}.{}",
                b64(serde_json::to_vec(&header).unwrap()),
                parts[1],
                parts[2]
            ),
        ));
    }
    // HMAC keyed with the public key, in every form.
    let jwks = ctx
        .auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut secrets: Vec<(String, Vec<u8>)> = match jwks.keys.first() {
        Some(jwk) => public_key_forms(jwk, &jwks.jwks_json),
        None => vec![
            ("secret + newline".into(), [JWT_SECRET, b"\n"].concat()),
            (
                "half the secret".into(),
                JWT_SECRET[..JWT_SECRET.len() / 2].to_vec(),
            ),
            ("empty secret".into(), Vec::new()),
        ],
    };
    secrets.push((
        "jwks json of the server".into(),
        jwks.jwks_json.into_bytes(),
    ));
    for (form, secret) in &secrets {
        let hmac = EncodingKey::from_secret(secret);
        for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            add(
                &mut forged,
                &real_claims,
                &format!("{hs:?} keyed with {form}, real kid"),
                serde_json::json!({"alg": alg_name(hs), "kid": kid_json}),
                Some((&hmac, hs)),
            );
            add(
                &mut forged,
                &real_claims,
                &format!("{hs:?} keyed with {form}, no kid"),
                serde_json::json!({"alg": alg_name(hs)}),
                Some((&hmac, hs)),
            );
        }
    }
    // Keys of the forger's own: unknown and misleading kids, the real kid with another
    // algorithm, and keys embedded in the header.
    let (own_ed, own_ed_jwk) = own_key(Algorithm::EdDSA);
    let (own_rsa, own_rsa_jwk) = own_key(Algorithm::RS256);
    let real_kid = kid.clone().unwrap_or_default();
    for (own, own_alg, own_jwk) in [
        (&own_ed, Algorithm::EdDSA, &own_ed_jwk),
        (&own_rsa, Algorithm::RS256, &own_rsa_jwk),
    ] {
        let name = alg_name(own_alg);
        for bad_kid in [
            serde_json::json!("not-a-kms-key"),
            serde_json::json!(""),
            serde_json::json!("\0"),
            serde_json::json!("../../../../etc/passwd"),
            serde_json::json!("' OR '1'='1"),
            serde_json::json!(real_kid.to_uppercase()),
            serde_json::json!(format!("{real_kid} ")),
            serde_json::json!(real_kid),
            serde_json::json!(["array", "kid"]),
            serde_json::json!(42),
            serde_json::json!(null),
        ] {
            add(
                &mut forged,
                &real_claims,
                &format!("own {name} key, kid {bad_kid}"),
                serde_json::json!({"alg": name, "kid": bad_kid}),
                Some((own, own_alg)),
            );
        }
        add(
            &mut forged,
            &real_claims,
            &format!("own {name} key, no kid"),
            serde_json::json!({"alg": name}),
            Some((own, own_alg)),
        );
        let own_jwk = serde_json::to_value(own_jwk).unwrap();
        for extra in [
            serde_json::json!({"jwk": own_jwk}),
            serde_json::json!({"jwk": own_jwk, "kid": real_kid}),
            serde_json::json!({"jku": "http://127.0.0.1:1/jwks.json", "kid": "own"}),
            serde_json::json!({"jku": "http://127.0.0.1:1/jwks.json", "kid": real_kid}),
            serde_json::json!({"x5u": "http://127.0.0.1:1/cert.pem", "kid": real_kid}),
            serde_json::json!({"x5c": [STANDARD.encode(b"not a certificate")], "kid": real_kid}),
            serde_json::json!({"crit": ["exp"], "kid": real_kid}),
        ] {
            let mut header = extra.clone();
            header["alg"] = serde_json::json!(name);
            add(
                &mut forged,
                &real_claims,
                &format!("own {name} key, header {extra}"),
                header,
                Some((own, own_alg)),
            );
        }
    }
    // The real key, signing claims that must not pass.
    let t = now();
    let mut claim_edits: Vec<(&str, serde_json::Value)> = vec![
        (
            "expired",
            serde_json::json!({"iat": t - 7200, "nbf": t - 7200, "exp": t - 10}),
        ),
        ("not yet valid", serde_json::json!({"nbf": t + 600})),
        ("issued in the future", serde_json::json!({"iat": t + 600})),
        ("other issuer", serde_json::json!({"iss": "other"})),
        ("empty issuer", serde_json::json!({"iss": ""})),
        ("other audience", serde_json::json!({"aud": "other"})),
        ("audience list", serde_json::json!({"aud": ["other"]})),
        ("another user's name", serde_json::json!({"sub": "alice"})),
        ("empty subject", serde_json::json!({"sub": ""})),
        ("NUL subject", serde_json::json!({"sub": "root\0"})),
        ("unknown login", serde_json::json!({"sid": "no-such-login"})),
        ("empty login", serde_json::json!({"sid": ""})),
        ("NUL login", serde_json::json!({"sid": "\0"})),
        ("long login", serde_json::json!({"sid": "s".repeat(3000)})),
        ("old token version", serde_json::json!({"ver": -1})),
        ("newer token version", serde_json::json!({"ver": 1})),
        (
            "exp as text",
            serde_json::json!({"exp": (t + 600).to_string()}),
        ),
        ("exp far too large", serde_json::json!({"exp": 1e30})),
        ("exp negative", serde_json::json!({"exp": -1})),
        ("roles as text", serde_json::json!({"roles": "admin"})),
    ];
    for missing in ["exp", "nbf", "iss", "aud", "sub", "sid", "ver", "roles"] {
        claim_edits.push((missing, serde_json::json!({ missing: null })));
    }
    for (label, edit) in claim_edits {
        let mut claims = real_claims.clone();
        for (field, value) in edit.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value.clone();
            }
        }
        forged.push((format!("real key, {label}"), sign_real(&claims)));
    }
    for (label, claims) in [
        ("claims an array", serde_json::json!([real_claims.clone()])),
        ("claims null", serde_json::Value::Null),
        ("claims a number", serde_json::json!(1)),
    ] {
        forged.push((format!("real key, {label}"), sign_real(&claims)));
    }
    // The real key with a critical header extension (RFC 7515 section 4.1.11).
    for crit in [vec!["exp".to_owned()], vec![]] {
        let mut header = Header::new(alg);
        header.kid.clone_from(&kid);
        header.crit = Some(crit.clone());
        let token = jsonwebtoken::encode(&header, &real_claims, &key).unwrap();
        forged.push((format!("real key, crit {crit:?}"), token));
    }
    // The real token, reshaped.
    forged.push(("two segments".into(), format!("{}.{}", parts[0], parts[1])));
    forged.push(("four segments".into(), format!("{real}.{}", parts[2])));
    forged.push(("padded signature".into(), format!("{real}=")));
    forged.push((
        "standard base64".into(),
        [parts[0], parts[1], parts[2]]
            .map(|p| STANDARD.encode(URL_SAFE_NO_PAD.decode(p).unwrap()))
            .join("."),
    ));
    forged.push(("space inside".into(), real.replacen('.', ". ", 1)));
    forged.push((
        "header and claims swapped".into(),
        format!("{}.{}.{}", parts[1], parts[0], parts[2]),
    ));

    let before = snapshot(&ctx.db).await;
    let ctx2 = ctx.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        for (label, token) in &forged {
            ctx2.rt
                .block_on(refused(&ctx2, label, token))
                .map_err(|e| e.to_string())?;
        }
        Ok::<usize, String>(forged.len())
    })
    .await
    .unwrap();
    match outcome {
        Ok(n) => eprintln!("{}: {n} forged tokens refused", alg_name(alg)),
        Err(e) => panic!("{e}"),
    }
    unchanged("forged tokens", &before, &snapshot(&ctx.db).await).unwrap();

    // Claims at random, signed with the real key: valid exactly when they name the
    // admin's live login, its token version, the issuer and audience, and the current
    // time is within nbf..exp.
    let sid = real_claims["sid"].as_str().unwrap().to_owned();
    let ver = real_claims["ver"].as_i64().unwrap();
    let key = Arc::new(key);
    let ctx2 = ctx.clone();
    let sid2 = sid.clone();
    check(
        "signed random claims",
        move || {
            let t = now();
            (
                prop_oneof![3 => Just(ADMIN.to_owned()), 1 => hostile(valid_username)],
                prop_oneof![3 => Just(sid2), 1 => hostile(|| "[A-Za-z0-9_-]{22}")],
                prop_oneof![3 => Just(ver), 1 => any::<i64>()],
                prop_oneof![3 => Just("kms".to_owned()), 1 => hostile(|| "kms|KMS|kms |")],
                prop_oneof![3 => Just("kms".to_owned()), 1 => hostile(|| "kms|KMS|kms |")],
                select(vec![t + 3600, t - 3600, 0, -1, i64::MAX]),
                select(vec![t - 3600, t + 3600, 0]),
                roles(),
            )
        },
        move |(sub, sid_claim, ver_claim, iss, aud, exp, nbf, roles)| {
            let t = now();
            let claims = serde_json::json!({
                "sub": sub, "roles": roles, "iat": t - 3600, "nbf": nbf, "exp": exp,
                "iss": iss, "aud": aud, "jti": "j", "sid": sid_claim, "ver": ver_claim,
            });
            let valid = sub == ADMIN
                && sid_claim == sid
                && ver_claim == ver
                && iss == "kms"
                && aud == "kms"
                && exp > t
                && nbf <= t;
            let mut header = Header::new(alg);
            header.kid.clone_from(&kid);
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            // Tokens over 8 KiB are refused unread (the KMS issues a few hundred bytes).
            let valid = valid && token.len() <= 8 * 1024;
            let what = format!("signed claims {}", short(&claims));
            let ctx = ctx2.clone();
            ctx2.rt.block_on(async {
                let request = pb::ValidateTokenRequest {
                    token: token.clone(),
                };
                let expect = sized(&request, codes(&[Code::Ok]));
                let answer = ctx.auth().validate_token(request).await;
                judge(&what, &answer, &expect)?;
                let Ok(answer) = answer else {
                    return Ok(());
                };
                prop_assert_eq!(answer.into_inner().valid, valid, "{}", what);
                if token.len() > 15_000 {
                    // Over HTTP/2's 16 KiB of headers (see hostile_sizes): never sent.
                    return Ok(());
                }
                let expect = match (valid, roles.iter().any(|r| r == "admin")) {
                    (false, _) => codes(&[Code::Unauthenticated]),
                    (true, true) => codes(&[Code::Ok]),
                    (true, false) => codes(&[Code::PermissionDenied]),
                };
                case(
                    &ctx,
                    &what,
                    &expect,
                    ctx.keys()
                        .list_keys(authed(pb::ListKeysRequest::default(), &token)),
                )
                .await
            })
        },
    )
    .await;
    ctx.still_serving().await;
    server.stop().await;
}

fn add(
    forged: &mut Vec<(String, String)>,
    claims: &serde_json::Value,
    label: &str,
    header: serde_json::Value,
    sign: Option<(&EncodingKey, Algorithm)>,
) {
    forged.push((label.to_owned(), token_of(&header, claims, sign)));
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------
// Size limits: messages at and over KMS_MAX_REQUEST_BYTES for each service, and
// oversized metadata.

both_backends!(hostile_sizes);

/// A string that makes a message with it as its only field exactly `total` bytes long
/// (tag, three-byte length, content).
fn filler(total: usize) -> String {
    "a".repeat(total - 4)
}

async fn hostile_sizes(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let admin = ctx.admin.clone();
    for (total, expect) in [
        (MAX_REQUEST, None),
        (MAX_REQUEST + 1, Some(Code::OutOfRange)),
        (MAX_REQUEST * 4, Some(Code::OutOfRange)),
    ] {
        let s = filler(total);
        let token = pb::ValidateTokenRequest { token: s.clone() };
        assert_eq!(token.encoded_len(), total);
        let result = ctx.auth().validate_token(token).await;
        judge(
            "ValidateToken",
            &result,
            &expect.map_or(codes(&[Code::Ok]), |c| codes(&[c])),
        )
        .unwrap();
        let result = ctx
            .keys()
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: s.clone(),
                },
                &admin,
            ))
            .await;
        let at_limit = Expect::Invalid(vec!["service_name"]);
        judge("GetKey", &result, &expect.map_or(at_limit, |c| codes(&[c]))).unwrap();
        let result = ctx
            .users()
            .get_user(authed(
                pb::GetUserRequest {
                    username: s.clone(),
                },
                &admin,
            ))
            .await;
        let at_limit = Expect::Invalid(vec!["username"]);
        judge(
            "GetUser",
            &result,
            &expect.map_or(at_limit, |c| codes(&[c])),
        )
        .unwrap();
        let result = ctx
            .audit()
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    actor: s.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await;
        judge(
            "ListAuditEvents",
            &result,
            &expect.map_or(codes(&[Code::Ok]), |c| codes(&[c])),
        )
        .unwrap();
    }

    // Ten thousand roles, all the same: one role.
    let set = ctx
        .users()
        .set_roles(authed(
            pb::SetRolesRequest {
                username: "bob".into(),
                roles: vec!["user".into(); 10_000],
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.roles, ["user"]);

    // Metadata. The server takes at most 16 KiB of headers per call (hyper's default
    // SETTINGS_MAX_HEADER_LIST_SIZE). Under that, a garbage bearer token is the KMS's to
    // judge: UNAUTHENTICATED. Over it, HTTP/2 refuses the call before any of the KMS
    // sees it. A header block far over the limit (100 KB) makes the server close that
    // connection (GOAWAY ENHANCE_YOUR_CALM "header_list_way_too_large"): the call fails
    // RESOURCE_EXHAUSTED, a call sent on that connection at the same moment may fail
    // CANCELLED ("connection closed"), and the client reconnects. A 20 KB block of 1000
    // headers gets HTTP 431, which gRPC clients report as UNKNOWN ("mapped from HTTP
    // status code 431"). Either way nothing is stored, and other connections and the
    // server go on as before.
    let bearer = |token: &str| -> AsciiMetadataValue { format!("Bearer {token}").parse().unwrap() };
    let before = snapshot(&ctx.db).await;
    let mut meta = MetadataMap::new();
    meta.insert("authorization", bearer(&"a".repeat(15_000)));
    let result = ctx
        .keys()
        .create_key(Request::from_parts(
            meta,
            Default::default(),
            pb::CreateKeyRequest::default(),
        ))
        .await;
    judge(
        "15 KB authorization",
        &result,
        &codes(&[Code::Unauthenticated]),
    )
    .unwrap();
    let huge = |name: &'static str, value: String| {
        let mut m = MetadataMap::new();
        m.insert("authorization", bearer(&admin));
        m.insert(name, value.parse().unwrap());
        m
    };
    let cases: Vec<(&str, MetadataMap)> = vec![
        ("100 KB authorization", {
            let mut m = MetadataMap::new();
            m.insert("authorization", bearer(&"a".repeat(100_000)));
            m
        }),
        ("100 KB other header", huge("x-junk", "j".repeat(100_000))),
        (
            "100 KB request id",
            huge("x-request-id", "r".repeat(100_000)),
        ),
        ("1000 headers", {
            let mut m = MetadataMap::new();
            m.insert("authorization", bearer(&admin));
            for i in 0..1000 {
                m.append("x-many", format!("value-{i}").parse().unwrap());
            }
            m
        }),
    ];
    for (label, meta) in cases {
        // A connection of its own: HTTP/2 may close it (see above).
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let result = KeysClient::new(channel.clone())
            .create_key(Request::from_parts(
                meta,
                Default::default(),
                pb::CreateKeyRequest {
                    service_name: "by-huge-headers".into(),
                    ..Default::default()
                },
            ))
            .await;
        let status = result.expect_err(label);
        let go_away = std::error::Error::source(&status)
            .is_some_and(|e| format!("{e:?}").contains("header_list_way_too_large"));
        assert!(
            (status.code() == Code::ResourceExhausted && go_away)
                || (status.code() == Code::Unknown && status.message().contains("431")),
            "{label}: {status:?}"
        );
        // The client reconnects: a call racing the GOAWAY may fail CANCELLED first.
        let mut attempts = 0;
        while let Err(status) = KeysClient::new(channel.clone())
            .list_keys(authed(pb::ListKeysRequest::default(), &admin))
            .await
        {
            attempts += 1;
            assert!(
                status.code() == Code::Cancelled && attempts < 5,
                "{label}: after it, {status:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Other connections are unaffected.
        ctx.still_serving().await;
    }
    unchanged("oversized metadata", &before, &snapshot(&ctx.db).await).unwrap();

    // Request ids that are not sane are replaced, whatever they were.
    for sent in [
        "x".repeat(10_000),
        "a b".into(),
        "\u{e9}t\u{e9}".into(),
        String::new(),
    ] {
        let mut meta = MetadataMap::new();
        meta.insert("authorization", format!("Bearer {admin}").parse().unwrap());
        if let Ok(value) = AsciiMetadataValue::try_from(sent.as_bytes()) {
            meta.insert("x-request-id", value);
        }
        let response = ctx
            .keys()
            .list_keys(Request::from_parts(
                meta,
                Default::default(),
                pb::ListKeysRequest::default(),
            ))
            .await
            .unwrap();
        let id = response
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        assert!((1..=64).contains(&id.len()) && id != sent, "{id:?}");
    }
    ctx.still_serving().await;
    server.stop().await;
}
