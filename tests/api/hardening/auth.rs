//! Authentication hardening: concurrency is not a failed login, registration closed
//! by default, usernames unique without regard to case, burned API key secrets,
//! strict JWT headers, and the expiry VerifyKey reports during a rotation's grace.

use std::sync::{Arc, Mutex};

use kms::{
    crypto::digest,
    domain::{audit, token::Claims},
    migrations::{
        Migrator,
        m20261201_000006_usernames_fold_case::{PLAIN_INDEX, UNIQUE_INDEX},
    },
    proto::kms::v1::{self as pb, audit_client::AuditClient},
    store::{
        Store, StoreError, StoreOptions,
        entities::{api_key, api_key_secret, issued_secret_digest, user},
    },
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ConnectionTrait, Database, DatabaseConnection, EntityTrait, Statement,
};
use sea_orm_migration::MigratorTrait;
use serde_json::json;
use tonic::Code;

use crate::{
    both_backends,
    common::{
        ADMIN, ADMIN_PASSWORD, Backend, JWT_SECRET, TestDb, TestServer, assert_status, authed, now,
    },
    http_client::Http,
    process::Cluster,
};

both_backends!(
    concurrent_correct_logins_of_one_user_all_succeed,
    concurrent_correct_logins_from_one_address_all_succeed,
    concurrent_wrong_passwords_get_no_more_checks_than_the_allowance,
    registration_is_closed_without_dev_and_open_with_it,
    usernames_are_unique_without_regard_to_case,
    the_case_migration_reports_existing_collisions_instead_of_failing,
    a_revoked_secret_is_never_imported_again,
    a_rotated_out_secret_is_never_imported_again,
    the_secret_ledger_starts_with_the_secrets_stored_before,
    critical_headers_and_future_iat_are_refused_on_every_path,
    verify_key_reports_when_a_secret_in_grace_stops_verifying,
);

/// The default allowance: `KMS_LOGIN_MAX_FAILURES`.
const MAX_FAILURES: usize = 5;

fn password_of(username: &str) -> String {
    format!("{username}-password-123")
}

async fn register(server: &TestServer, username: &str) {
    server
        .auth()
        .register(pb::RegisterRequest {
            username: username.into(),
            password: password_of(username),
            roles: vec![],
        })
        .await
        .unwrap();
}

/// Logs in with every (username, password) at once; the answers in order.
async fn logins_at_once(
    server: &TestServer,
    attempts: Vec<(String, String)>,
) -> Vec<Result<(), tonic::Status>> {
    let calls: Vec<_> = attempts
        .into_iter()
        .map(|(username, password)| {
            let mut auth = server.auth();
            tokio::spawn(async move {
                auth.login(pb::LoginRequest { username, password })
                    .await
                    .map(drop)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

async fn audited(server: &TestServer, action: &str) -> usize {
    let admin = server.admin_token().await;
    AuditClient::new(server.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                action: action.into(),
                page_size: 1000,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .len()
}

#[track_caller]
fn all_ok(answers: &[Result<(), tonic::Status>]) {
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
}

async fn concurrent_correct_logins_of_one_user_all_succeed(backend: Backend) {
    let server = TestServer::start(backend).await;
    register(&server, "alice").await;
    // Twice the allowance: each waits for a place, none is taken for a failure.
    let attempts = (0..2 * MAX_FAILURES)
        .map(|_| ("alice".to_owned(), password_of("alice")))
        .collect();
    all_ok(&logins_at_once(&server, attempts).await);
    assert_eq!(audited(&server, "login_throttled").await, 0);
    server.stop().await;
}

async fn concurrent_correct_logins_from_one_address_all_succeed(backend: Backend) {
    let server = TestServer::start(backend).await;
    // More users than the address's allowance (4 x 5), all from 127.0.0.1: an office
    // behind one NAT at nine in the morning.
    let users: Vec<String> = (0..30).map(|n| format!("staff{n}")).collect();
    for user in &users {
        register(&server, user).await;
    }
    let attempts = users.iter().map(|u| (u.clone(), password_of(u))).collect();
    all_ok(&logins_at_once(&server, attempts).await);
    assert_eq!(audited(&server, "login_throttled").await, 0);
    server.stop().await;
}

async fn concurrent_wrong_passwords_get_no_more_checks_than_the_allowance(backend: Backend) {
    let server = TestServer::start(backend).await;
    register(&server, "alice").await;
    let attempts = (0..3 * MAX_FAILURES)
        .map(|_| ("alice".to_owned(), "wrong-password-x".to_owned()))
        .collect();
    let answers = logins_at_once(&server, attempts).await;
    let checked = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    let locked = answers
        .iter()
        .filter(|a| {
            matches!(a, Err(s) if s.code() == Code::ResourceExhausted
                && s.message().starts_with("too many failed logins"))
        })
        .count();
    // Exactly the allowance of password checks; everyone else waited and then met
    // the lockout.
    assert_eq!(
        (checked, locked),
        (MAX_FAILURES, 2 * MAX_FAILURES),
        "{answers:?}"
    );
    // The admin, from the same address, is not locked (the address allows 4 x 5).
    server.login(ADMIN, ADMIN_PASSWORD).await;
    server.stop().await;
}

/// `kms serve` without `--dev` and without KMS_ALLOW_REGISTRATION: closed, and the
/// refusal names the setting that opens it (gRPC and REST). With `--dev`: open.
async fn registration_is_closed_without_dev_and_open_with_it(backend: Backend) {
    let cluster = Cluster::new(&backend, &[]).await;
    let register = || pb::RegisterRequest {
        username: "walk-in".into(),
        password: password_of("walk-in"),
        roles: vec![],
    };
    let closed = cluster.start("closed").await;
    assert_status(
        closed.auth().register(register()).await,
        Code::PermissionDenied,
        "KMS_ALLOW_REGISTRATION",
    );
    Http::new(closed.http_addr())
        .post("/register")
        .json(json!({"username": "walk-in", "password": password_of("walk-in")}))
        .send()
        .await
        .expect(403, "KMS_ALLOW_REGISTRATION");
    // An admin still may.
    let admin = closed.admin_token().await;
    closed
        .auth()
        .register(authed(register(), &admin))
        .await
        .unwrap();
    closed.kill9().await;

    let dev = cluster.start_with_args("dev", &["--dev"]).await;
    let mut anyone = register();
    anyone.username = "dev-walk-in".into();
    dev.auth().register(anyone).await.unwrap();
    dev.kill9().await;
}

async fn usernames_are_unique_without_regard_to_case(backend: Backend) {
    let server = TestServer::start(backend).await;
    register(&server, "admin-like").await;
    for variant in ["Admin-Like", "ADMIN-LIKE", "admin-LIKE"] {
        assert_status(
            server
                .auth()
                .register(pb::RegisterRequest {
                    username: variant.into(),
                    password: password_of(variant),
                    roles: vec![],
                })
                .await,
            Code::AlreadyExists,
            "username",
        );
    }
    // The bootstrap admin is `root`: `Root` is taken too, by an admin's call as well.
    let admin = server.admin_token().await;
    assert_status(
        server
            .auth()
            .register(authed(
                pb::RegisterRequest {
                    username: "Root".into(),
                    password: password_of("Root"),
                    roles: vec!["admin".into()],
                },
                &admin,
            ))
            .await,
        Code::AlreadyExists,
        "username",
    );
    // REST keeps the original service's answer for a taken name.
    Http::new(server.http_addr)
        .post("/register")
        .json(json!({"username": "ADMIN-like", "password": password_of("x")}))
        .send()
        .await
        .expect(400, "Username already registered.");
    // Login matches the stored name exactly: another spelling is an unknown user.
    let wrong_case = server
        .auth()
        .login(pb::LoginRequest {
            username: "Admin-Like".into(),
            password: password_of("admin-like"),
        })
        .await;
    assert_status(wrong_case, Code::Unauthenticated, "incorrect");
    server.login("admin-like", &password_of("admin-like")).await;
    // Without earlier collisions the database holds the rule itself.
    let db = Database::connect(server.db_url()).await.unwrap();
    assert!(index_names(&db).await.iter().any(|i| i == UNIQUE_INDEX));
    db.close().await.unwrap();
    server.stop().await;
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn index_names(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'users'"
        }
        _ => {
            "SELECT indexname AS name FROM pg_indexes WHERE tablename = 'users' \
              AND schemaname = current_schema()"
        }
    };
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "name").unwrap())
        .collect()
}

/// A database of the previous release already holding `Admin` beside `admin`: the new
/// migration runs, names them in a warning, makes a plain index, and the server still
/// refuses a third spelling.
async fn the_case_migration_reports_existing_collisions_instead_of_failing(backend: Backend) {
    let test_db = TestDb::new(&backend).await;
    let db = Database::connect(test_db.url.as_str()).await.unwrap();
    previous_release(&db).await;
    let now = chrono::Utc::now();
    for username in ["admin", "Admin", "bob"] {
        user::Entity::insert(user::ActiveModel {
            id: NotSet,
            username: Set(username.into()),
            password_hash: Set("$argon2id$not-a-real-hash".into()),
            token_version: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec(&db)
        .await
        .unwrap();
    }

    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .finish();
    {
        let _guard = tracing::subscriber::set_default(subscriber);
        Migrator::up(&db, None).await.unwrap();
    }
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("differ only in case"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(
        warning.contains("\"admin\"") && warning.contains("\"Admin\"") && !warning.contains("bob"),
        "{warning}"
    );
    assert!(!warning.contains("argon2"), "no hash in the log: {warning}");
    let indexes = index_names(&db).await;
    assert!(
        indexes.iter().any(|i| i == PLAIN_INDEX) && !indexes.iter().any(|i| i == UNIQUE_INDEX),
        "{indexes:?}"
    );
    db.close().await.unwrap();

    // The rule holds in code where the index cannot hold it.
    let store = Store::connect(&StoreOptions {
        url: test_db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let refused = store
        .create_user(
            "ADMIN",
            "$argon2id$not-a-real-hash".into(),
            &["user".into()],
            chrono::Utc::now(),
            audit::event(
                "operator",
                audit::action::REGISTER,
                "ADMIN",
                audit::outcome::SUCCESS,
            ),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict)), "{refused:?}");
    store
        .create_user(
            "carol",
            "$argon2id$not-a-real-hash".into(),
            &["user".into()],
            chrono::Utc::now(),
            audit::event(
                "operator",
                audit::action::REGISTER,
                "carol",
                audit::outcome::SUCCESS,
            ),
        )
        .await
        .unwrap();
}

/// Migrates a fresh database as the first release left it: every step before the
/// hardening ones.
async fn previous_release(db: &DatabaseConnection) {
    let first_new = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261201_000006_usernames_fold_case")
        .unwrap();
    Migrator::up(db, Some(u32::try_from(first_new).unwrap()))
        .await
        .unwrap();
}

fn import(name: &str, secret: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        api_key: Some(secret.into()),
        description: String::new(),
        ttl_seconds: 0,
        ..Default::default()
    }
}

async fn verify(server: &TestServer, token: &str, secret: &str) -> pb::VerifyKeyResponse {
    server
        .keys()
        .verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: secret.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// CreateKey refuses a burned secret: ALREADY_EXISTS naming `api_key`, never echoing
/// the secret.
#[track_caller]
fn burned(result: Result<tonic::Response<pb::ApiKey>, tonic::Status>, secret: &str) {
    let status = result.expect_err("a burned secret must not be imported");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(
        status.message().starts_with("api_key: ")
            && status
                .message()
                .contains("issued before and cannot be reused"),
        "{status:?}"
    );
    assert!(!status.message().contains(secret), "the secret was echoed");
}

async fn a_revoked_secret_is_never_imported_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let secret = "leaked-then-revoked-secret-0123456789";
    keys.create_key(authed(import("billing", secret), &admin))
        .await
        .unwrap();
    assert!(verify(&server, &admin, secret).await.valid);
    keys.revoke_key(authed(
        pb::RevokeKeyRequest {
            service_name: "billing".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    // Whoever holds the leaked secret cannot bring it back, under another name or
    // under the same one.
    burned(
        keys.create_key(authed(import("billing-2", secret), &admin))
            .await,
        secret,
    );
    burned(
        keys.create_key(authed(import("billing", secret), &admin))
            .await,
        secret,
    );
    let answer = verify(&server, &admin, secret).await;
    assert!(
        !answer.valid && answer.service_name.is_empty(),
        "{answer:?}"
    );
    // REST imports follow the same rule: 400, as for any duplicate.
    let reply = Http::new(server.http_addr)
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "billing-3", "api_key": secret}))
        .send()
        .await;
    reply.expect(400, "issued before");
    assert!(!reply.detail().contains(secret));
    assert!(!verify(&server, &admin, secret).await.valid);
    // The name itself is free again, with a new secret.
    keys.create_key(authed(
        import("billing", "a-fresh-secret-for-billing-000000"),
        &admin,
    ))
    .await
    .unwrap();
    server.stop().await;
}

async fn a_rotated_out_secret_is_never_imported_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let old = keys
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
        .into_inner()
        .api_key;
    keys.rotate_key(authed(
        pb::RotateKeyRequest {
            service_name: "payments".into(),
            grace_period_seconds: 0,
        },
        &admin,
    ))
    .await
    .unwrap();
    assert!(!verify(&server, &admin, &old).await.valid);
    burned(
        keys.create_key(authed(import("payments-copy", &old), &admin))
            .await,
        &old,
    );
    assert!(!verify(&server, &admin, &old).await.valid);
    server.stop().await;
}

/// The ledger of issued secrets starts with every secret a first-release database
/// holds, so those are burned when they leave service too.
async fn the_secret_ledger_starts_with_the_secrets_stored_before(backend: Backend) {
    let test_db = TestDb::new(&backend).await;
    let db = Database::connect(test_db.url.as_str()).await.unwrap();
    previous_release(&db).await;
    let now = chrono::Utc::now();
    let key = api_key::Entity::insert(api_key::ActiveModel {
        id: NotSet,
        service_name: Set("legacy".into()),
        description: Set(String::new()),
        ttl_seconds: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        expires_at: Set(None),
        revoked_at: Set(None),
        ..Default::default()
    })
    // Only the id back: this schema has none of the later columns.
    .exec(&db)
    .await
    .unwrap()
    .last_insert_id;
    let stored = digest::sha256(b"a-first-release-secret-0123456789").to_vec();
    api_key_secret::Entity::insert(api_key_secret::ActiveModel {
        id: NotSet,
        api_key_id: Set(key),
        digest: Set(stored.clone()),
        sealed: Set(vec![0; 40]),
        key_prefix: Set("a-first".into()),
        created_at: Set(now),
        retires_at: Set(None),
        // A later column.
        data_key_id: NotSet,
    })
    .exec(&db)
    .await
    .unwrap();
    Migrator::up(&db, None).await.unwrap();
    let ledger: Vec<Vec<u8>> = issued_secret_digest::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.digest)
        .collect();
    assert_eq!(ledger, [stored]);
    db.close().await.unwrap();
}

/// A real login's token re-signed with the server's HS256 secret: valid in every
/// respect (live login, current token version) but the edit.
fn resigned(token: &str, edit: impl FnOnce(&mut jsonwebtoken::Header, &mut Claims)) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token.split('.').nth(1).unwrap();
    let mut claims: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    edit(&mut header, &mut claims);
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap()
}

async fn critical_headers_and_future_iat_are_refused_on_every_path(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let validate = |token: String| {
        let mut auth = server.auth();
        async move {
            auth.validate_token(pb::ValidateTokenRequest { token })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let list_keys = |token: String| {
        let mut keys = server.keys();
        async move {
            keys.list_keys(authed(
                pb::ListKeysRequest {
                    page_size: 0,
                    page_token: String::new(),
                },
                &token,
            ))
            .await
            .map(drop)
        }
    };
    // The control: re-signing alone changes nothing.
    let same = resigned(&admin, |_, _| {});
    assert!(validate(same.clone()).await.valid);
    list_keys(same).await.unwrap();

    let forged = [
        (
            "crit",
            resigned(&admin, |h, _| h.crit = Some(vec!["exp".into()])),
        ),
        (
            "iat in the future",
            resigned(&admin, |_, c| c.iat = now() + 600),
        ),
    ];
    for (what, token) in forged {
        let answer = validate(token.clone()).await;
        assert!(
            !answer.valid && answer.subject.is_empty(),
            "{what}: {answer:?}"
        );
        assert_status(list_keys(token.clone()).await, Code::Unauthenticated, "");
        Http::new(server.http_addr)
            .get("/keys/anything")
            .bearer(&token)
            .send()
            .await
            .expect(401, "");
    }
    server.stop().await;
}

/// VerifyKey's `expires_at` in seconds; `None` when unset ("never").
async fn verified_until(server: &TestServer, token: &str, secret: &str) -> Option<i64> {
    let answer = verify(server, token, secret).await;
    assert!(answer.valid, "{answer:?}");
    answer.expires_at.map(|t| t.seconds)
}

#[track_caller]
fn about(actual: Option<i64>, expected: i64) {
    let actual = actual.expect("expires_at must be set");
    assert!(
        (actual - expected).abs() <= 2,
        "{actual} is not about {expected}"
    );
}

async fn verify_key_reports_when_a_secret_in_grace_stops_verifying(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let create = |name: &str, ttl_seconds| {
        authed(
            pb::CreateKeyRequest {
                service_name: name.into(),
                api_key: None,
                description: String::new(),
                ttl_seconds,
                ..Default::default()
            },
            &admin,
        )
    };
    let rotate = |name: &str, grace_period_seconds| {
        authed(
            pb::RotateKeyRequest {
                service_name: name.into(),
                grace_period_seconds,
            },
            &admin,
        )
    };

    // A key that never expires: the old secret stops at the end of its grace, not
    // "never"; the new one never stops.
    let old = keys
        .create_key(create("forever", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified_until(&server, &admin, &old.api_key).await, None);
    let rotated_at = now();
    let new = keys
        .rotate_key(rotate("forever", 3600))
        .await
        .unwrap()
        .into_inner();
    // Twice: the first answer comes from the database, the second from the cache.
    for _ in 0..2 {
        about(
            verified_until(&server, &admin, &old.api_key).await,
            rotated_at + 3600,
        );
        assert_eq!(verified_until(&server, &admin, &new.api_key).await, None);
    }

    // A key with a TTL: the old secret stops at the expiry it was issued under (before
    // the grace would end), not at the renewed expiry of the key.
    let created_at = now();
    let old = keys
        .create_key(create("leased", 600))
        .await
        .unwrap()
        .into_inner();
    let rotated_at = now();
    let new = keys
        .rotate_key(rotate("leased", 3600))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        about(
            verified_until(&server, &admin, &old.api_key).await,
            created_at + 600,
        );
        about(
            verified_until(&server, &admin, &new.api_key).await,
            rotated_at + 600,
        );
    }

    // A short grace inside the TTL: the end of the grace.
    let rotated_again = now();
    let newest = keys
        .rotate_key(rotate("leased", 60))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        about(
            verified_until(&server, &admin, &new.api_key).await,
            rotated_again + 60,
        );
        about(
            verified_until(&server, &admin, &newest.api_key).await,
            rotated_again + 600,
        );
    }
    server.stop().await;
}
