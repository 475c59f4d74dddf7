//! Years of operation: the sweeper deletes expired audit events, logins and secrets
//! (and nothing a call still needs), a login's refresh chain ends at its maximum
//! lifetime, and the database stops growing once retention is reached.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use kms::{
    config::{Config, MasterKeySource, Retention},
    domain::token::SigningAlgorithm,
    http::http_get,
    proto::kms::v1::{self as pb, audit_client::AuditClient},
    store::{
        SWEEP_LOCK,
        entities::{
            api_key, api_key_secret, audit_event, issued_secret_digest, refresh_token, session,
        },
    },
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter,
};
use tonic::Code;

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestDb, TestServer, assert_status, authed},
};

both_backends!(
    old_audit_events_go_and_newer_ones_stay,
    swept_secrets_stay_burned,
    ended_logins_go_and_live_ones_keep_working,
    refresh_ends_at_the_maximum_lifetime,
    an_upgraded_database_gets_session_ends_and_is_swept,
    growth_stays_flat_once_retention_is_reached,
);

/// Sweeps every second; `audit` seconds of audit trail (0 keeps it all).
fn sweeping(config: &mut Config, audit: u64) {
    config.retention = Retention {
        audit_events: (audit > 0).then(|| Duration::from_secs(audit)),
        sweep_interval: Duration::from_secs(1),
        ..Retention::default()
    };
}

/// Polls `check` until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metric(server: &TestServer, table: &str) -> u64 {
    let (status, text) = http_get(server.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let series = format!("kms_sweeper_deleted_rows_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The sweeper's counter for `table` reaches `at_least` (it is added to after each
/// batch commits, a moment after the rows are gone).
async fn counted(server: &TestServer, table: &str, at_least: u64) {
    eventually(Duration::from_secs(5), table, || async {
        metric(server, table).await >= at_least
    })
    .await;
}

fn import(name: &str, secret: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        api_key: Some(secret.into()),
        ..Default::default()
    }
}

async fn audit_actions(server: &TestServer, token: &str, target: &str) -> Vec<String> {
    AuditClient::new(server.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                target: target.into(),
                page_size: 1000,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn old_audit_events_go_and_newer_ones_stay(backend: Backend) {
    let server = TestServer::start_with(backend, |c| sweeping(c, 2)).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    keys.create_key(authed(import("old-one", &"o".repeat(40)), &admin))
        .await
        .unwrap();
    assert_eq!(
        audit_actions(&server, &admin, "old-one").await,
        ["key_create"]
    );
    // Older than the retention, swept within a pass or two.
    eventually(
        Duration::from_secs(10),
        "the old event is swept",
        || async { audit_actions(&server, &admin, "old-one").await.is_empty() },
    )
    .await;
    keys.create_key(authed(import("new-one", &"n".repeat(40)), &admin))
        .await
        .unwrap();
    // Younger than the retention: kept.
    assert_eq!(
        audit_actions(&server, &admin, "new-one").await,
        ["key_create"]
    );
    counted(&server, "audit_events", 1).await;
    // The key itself is no audit event: it stays.
    keys.get_key(authed(
        pb::GetKeyRequest {
            service_name: "old-one".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    server.stop().await;
}

async fn secret_rows(db: &DatabaseConnection) -> u64 {
    api_key_secret::Entity::find().count(db).await.unwrap()
}

/// A revoked key's secret and a rotated-out one past its grace are deleted, but their
/// digests stay in the ledger: importing either again is refused and neither verifies.
async fn swept_secrets_stay_burned(backend: Backend) {
    let server = TestServer::start_with(backend, |c| sweeping(c, 0)).await;
    let db = Database::connect(server.db_url()).await.unwrap();
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let (revoked, rotated) = (
        "revoked-secret-0123456789-abcdefghij",
        "rotated-secret-0123456789-abcdefghij",
    );
    keys.create_key(authed(import("gone", revoked), &admin))
        .await
        .unwrap();
    keys.revoke_key(authed(
        pb::RevokeKeyRequest {
            service_name: "gone".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    keys.create_key(authed(import("turning", rotated), &admin))
        .await
        .unwrap();
    let current = keys
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "turning".into(),
                grace_period_seconds: 1,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    // In its grace: two secrets of "turning".
    assert!(server.key_verifies(&admin, rotated).await);
    assert_eq!(secret_rows(&db).await, 2);
    eventually(
        Duration::from_secs(10),
        "the retired secret is swept",
        || async { secret_rows(&db).await == 1 },
    )
    .await;
    counted(&server, "api_key_secrets", 1).await;
    // Every secret ever issued keeps its digest.
    assert_eq!(
        issued_secret_digest::Entity::find()
            .count(&db)
            .await
            .unwrap(),
        3
    );
    for (name, secret) in [("again-1", revoked), ("again-2", rotated)] {
        assert_status(
            keys.create_key(authed(import(name, secret), &admin)).await,
            Code::AlreadyExists,
            "issued before",
        );
        assert!(!server.key_verifies(&admin, secret).await);
    }
    // The live key is untouched.
    assert!(server.key_verifies(&admin, &current).await);
    let got = keys
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "turning".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.api_key, current);
    db.close().await.unwrap();
    server.stop().await;
}

/// PostgreSQL: while another replica's batch holds the sweep lock, this replica's
/// sweeper deletes nothing and leaves it the pass; once the lock is free it sweeps.
/// (Advisory locks are per database, so the other tests' servers, each in a schema of
/// the same database, may yield a pass to this one meanwhile: they try again a second
/// later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn one_replica_sweeps_at_a_time_on_postgres() {
    use sea_orm::sqlx::{Connection, PgConnection};
    let server = TestServer::start_with(Backend::postgres(), |c| sweeping(c, 1)).await;
    let mut other_replica = PgConnection::connect(server.db_url()).await.unwrap();
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut other_replica)
        .await
        .unwrap();
    let admin = server.admin_token().await;
    server
        .keys()
        .create_key(authed(import("held", &"h".repeat(40)), &admin))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(audit_actions(&server, &admin, "held").await, ["key_create"]);
    assert_eq!(metric(&server, "audit_events").await, 0);
    sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut other_replica)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "swept once the lock is free",
        || async { audit_actions(&server, &admin, "held").await.is_empty() },
    )
    .await;
    counted(&server, "audit_events", 1).await;
    other_replica.close().await.unwrap();
    server.stop().await;
}

/// The login (`sid` claim) behind an access token.
fn sid(access: &str) -> String {
    let payload = access.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}

async fn login(server: &TestServer) -> pb::LoginResponse {
    server
        .auth()
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn refresh(server: &TestServer, token: &str) -> Result<pb::LoginResponse, tonic::Status> {
    server
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn session_rows(db: &DatabaseConnection, sid: &str) -> (u64, u64) {
    let sessions = session::Entity::find_by_id(sid.to_owned())
        .count(db)
        .await
        .unwrap();
    let tokens = refresh_token::Entity::find()
        .filter(refresh_token::Column::SessionId.eq(sid))
        .count(db)
        .await
        .unwrap();
    (sessions, tokens)
}

async fn works(server: &TestServer, access: &str) -> bool {
    server
        .keys()
        .list_keys(authed(pb::ListKeysRequest::default(), access))
        .await
        .is_ok()
}

/// Access tokens live 2 s and logins 6 s. A logged-out login goes (its session and
/// refresh tokens) one access-token lifetime after the logout, while a live login,
/// refreshed meanwhile, keeps working; it goes too once its lifetime has ended and its
/// last access token expired.
async fn ended_logins_go_and_live_ones_keep_working(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        sweeping(c, 0);
        c.access_token_ttl_seconds = 2;
        c.retention.session_max_lifetime_seconds = 6;
    })
    .await;
    let db = Database::connect(server.db_url()).await.unwrap();
    let started = Instant::now();
    let ended = login(&server).await;
    server
        .auth()
        .logout(authed(pb::LogoutRequest::default(), &ended.access_token))
        .await
        .unwrap();
    let ended_sid = sid(&ended.access_token);
    let mut live = login(&server).await;
    let live_sid = sid(&live.access_token);
    assert_eq!(session_rows(&db, &ended_sid).await, (1, 1));

    // Refresh the live login every half second until the ended one is swept.
    let mut refreshes = 0;
    while session_rows(&db, &ended_sid).await != (0, 0) {
        assert!(
            started.elapsed() < Duration::from_millis(5500),
            "the logged-out login was not swept while the live one lived"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        live = refresh(&server, &live.refresh_token).await.unwrap();
        refreshes += 1;
        assert!(works(&server, &live.access_token).await);
    }
    // Kept: the session and its tokens (the current one, and the spent ones, kept for
    // reuse detection until they expire).
    let (sessions, tokens) = session_rows(&db, &live_sid).await;
    assert_eq!((sessions, tokens), (1, 1 + refreshes));
    assert!(works(&server, &live.access_token).await);
    counted(&server, "sessions", 1).await;
    counted(&server, "refresh_tokens", 1).await;

    // After its lifetime and one access-token lifetime more, the live login goes too.
    eventually(
        Duration::from_secs(12),
        "the ended login is swept",
        || async { session_rows(&db, &live_sid).await == (0, 0) },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(8));
    assert_status(
        refresh(&server, &live.refresh_token).await,
        Code::Unauthenticated,
        "refresh token",
    );
    assert!(!works(&server, &live.access_token).await);
    db.close().await.unwrap();
    server.stop().await;
}

/// KMS_SESSION_MAX_LIFETIME_SECONDS=2: Refresh works before, is refused after, and no
/// refresh token is stored (or announced) to live past it.
async fn refresh_ends_at_the_maximum_lifetime(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.retention.session_max_lifetime_seconds = 2;
    })
    .await;
    let db = Database::connect(server.db_url()).await.unwrap();
    let first = login(&server).await;
    assert!(
        first.refresh_expires_in <= 2,
        "{}",
        first.refresh_expires_in
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = refresh(&server, &first.refresh_token).await.unwrap();
    assert!(
        second.refresh_expires_in <= 1,
        "{}",
        second.refresh_expires_in
    );
    assert!(works(&server, &second.access_token).await);

    let sid = sid(&first.access_token);
    let session = session::Entity::find_by_id(sid.clone())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    let end = session.max_expires_at.unwrap();
    assert_eq!((end - session.created_at).num_seconds(), 2);
    let tokens = refresh_token::Entity::find()
        .filter(refresh_token::Column::SessionId.eq(sid.as_str()))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(tokens.len(), 2);
    for token in &tokens {
        assert!(token.expires_at <= end, "{token:?} outlives {end}");
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_status(
        refresh(&server, &second.refresh_token).await,
        Code::Unauthenticated,
        "KMS_SESSION_MAX_LIFETIME_SECONDS",
    );
    // A spent token after the end is just over, not reuse: nothing is revoked.
    assert_status(
        refresh(&server, &first.refresh_token).await,
        Code::Unauthenticated,
        "maximum lifetime",
    );
    let session = session::Entity::find_by_id(sid)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(session.revoked_at.is_none());
    // Access tokens live their own lifetime (an hour here): the login still works
    // for calls, it just cannot be refreshed.
    assert!(works(&server, &second.access_token).await);
    db.close().await.unwrap();
    server.stop().await;
}

/// The first release's database: every existing session ends 30 days after its login,
/// and the sweeper deletes its old audit events.
async fn an_upgraded_database_gets_session_ends_and_is_swept(backend: Backend) {
    let db = TestDb::new(&backend).await;
    db.load_release1_fixture().await;
    let mut config = crate::common::test_config(&db.url);
    config.master_key = MasterKeySource::Key(crate::keyring::fixture_master_key());
    // The fixture signs with EdDSA: its private key is one of the sealed values.
    config.jwt_algorithm = SigningAlgorithm::EdDsa;
    sweeping(&mut config, 1);
    let server = TestServer::start_on(db, config).await;
    let conn = Database::connect(server.db_url()).await.unwrap();
    let sessions = session::Entity::find().all(&conn).await.unwrap();
    assert!(!sessions.is_empty(), "the fixture has logins");
    for s in &sessions {
        let end = s.max_expires_at.expect("filled by the migration");
        let lifetime = end - s.created_at;
        assert!(
            (lifetime - chrono::Duration::seconds(2_592_000))
                .num_milliseconds()
                .abs()
                < 2,
            "{s:?}"
        );
    }
    let before = audit_event::Entity::find().count(&conn).await.unwrap();
    assert!(before > 0);
    // The fixture's events are older than a second.
    eventually(Duration::from_secs(10), "old events are swept", || async {
        metric(&server, "audit_events").await >= before
    })
    .await;
    // Logins still work on the migrated database, and get the configured end.
    let fresh = server
        .auth()
        .login(pb::LoginRequest {
            username: crate::keyring::FIXTURE_ADMIN.into(),
            password: crate::keyring::FIXTURE_ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = session::Entity::find_by_id(sid(&fresh.access_token))
        .one(&conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.max_expires_at.unwrap() - s.created_at).num_seconds(),
        2_592_000
    );
    conn.close().await.unwrap();
    server.stop().await;
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    audit_events: u64,
    sessions: u64,
    refresh_tokens: u64,
    api_key_secrets: u64,
    api_keys: u64,
    digests: u64,
}

async fn counts(db: &DatabaseConnection) -> Counts {
    Counts {
        audit_events: audit_event::Entity::find().count(db).await.unwrap(),
        sessions: session::Entity::find().count(db).await.unwrap(),
        refresh_tokens: refresh_token::Entity::find().count(db).await.unwrap(),
        api_key_secrets: api_key_secret::Entity::find().count(db).await.unwrap(),
        api_keys: api_key::Entity::find().count(db).await.unwrap(),
        digests: issued_secret_digest::Entity::find()
            .count(db)
            .await
            .unwrap(),
    }
}

/// SQLite: pages in use after a checkpoint (file pages minus free ones), and the file
/// size. `None` on PostgreSQL.
async fn sqlite_pages(
    db: &DatabaseConnection,
    path: Option<&std::path::Path>,
) -> Option<(i64, u64)> {
    let path = path?;
    db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .unwrap();
    let pragma = |name: &'static str| async move {
        db.query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            format!("PRAGMA {name}"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
    };
    let used = pragma("page_count").await - pragma("freelist_count").await;
    Some((used, std::fs::metadata(path).unwrap().len()))
}

/// A steady mix of calls (a key created and revoked, GetKey, a failed VerifyKey, a
/// login) with 2 s of audit trail, 2 s access tokens and 2 s logins, over 15 sweep
/// periods. The tables the sweeper keeps (audit events, sessions, refresh tokens,
/// secrets) level off once retention is reached; what is kept forever by design (key
/// tombstones and the digest ledger, one row per key created) grows with the creates.
/// Run with `--nocapture` for the figures.
async fn growth_stays_flat_once_retention_is_reached(backend: Backend) {
    const PERIODS: u32 = 15;
    const CALLS_PER_PERIOD: u32 = 5;
    let test_db = TestDb::new(&backend).await;
    let path = test_db.sqlite_path();
    let mut config = crate::common::test_config(&test_db.url);
    sweeping(&mut config, 2);
    // Whole seconds: a 2 s token lives at least 1 s, long enough for its four calls.
    config.access_token_ttl_seconds = 2;
    config.retention.session_max_lifetime_seconds = 2;
    let server = TestServer::start_on(test_db, config).await;
    let db = Database::connect(server.db_url()).await.unwrap();
    let mut keys = server.keys();
    let mut created = 0u32;
    let mut figures = Vec::new();
    for period in 1..=PERIODS {
        let started = Instant::now();
        for _ in 0..CALLS_PER_PERIOD {
            let admin = login(&server).await.access_token;
            let name = format!("growth-{created}");
            created += 1;
            keys.create_key(authed(
                pb::CreateKeyRequest {
                    service_name: name.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap();
            keys.get_key(authed(
                pb::GetKeyRequest {
                    service_name: name.clone(),
                },
                &admin,
            ))
            .await
            .unwrap();
            assert!(
                !server
                    .key_verifies(&admin, "kms_not_a_key_at_all_0123456789")
                    .await
            );
            keys.revoke_key(authed(pb::RevokeKeyRequest { service_name: name }, &admin))
                .await
                .unwrap();
        }
        if let Some(left) = Duration::from_secs(1).checked_sub(started.elapsed()) {
            tokio::time::sleep(left).await;
        }
        let c = counts(&db).await;
        let pages = sqlite_pages(&db, path.as_deref()).await;
        println!(
            "growth {backend:?} period {period:2}: audit_events {:4} sessions {:3} refresh_tokens {:3} \
             api_key_secrets {:2} | kept forever: api_keys {:3} digests {:3}{}",
            c.audit_events,
            c.sessions,
            c.refresh_tokens,
            c.api_key_secrets,
            c.api_keys,
            c.digests,
            pages.map_or(String::new(), |(used, bytes)| format!(
                " | sqlite pages in use {used} file {bytes} B"
            )),
            backend = match backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres(_) => "postgres",
            },
        );
        figures.push((c, pages));
    }
    // Retention (2 s), or a login's lifetime and an access token (4 s), plus two
    // passes: from period 6 on, each table holds a few seconds of traffic.
    let settled = figures[5].0;
    let last = figures[figures.len() - 1].0;
    let per_period = u64::from(CALLS_PER_PERIOD);
    for (name, at_settle, at_end) in [
        ("audit_events", settled.audit_events, last.audit_events),
        ("sessions", settled.sessions, last.sessions),
        (
            "refresh_tokens",
            settled.refresh_tokens,
            last.refresh_tokens,
        ),
    ] {
        // Generous: flat means the end is not far above the settled level, while
        // unswept growth would add 6 more periods of rows.
        assert!(
            at_end <= at_settle * 2 + 4 * per_period,
            "{name} grew from {at_settle} to {at_end} after retention was reached"
        );
    }
    assert!(last.sessions <= 8 * per_period, "{last:?}");
    assert!(last.api_key_secrets <= 1, "{last:?}");
    assert_eq!(last.digests, u64::from(created));
    if let (Some((settled_pages, _)), Some((last_pages, _))) =
        (figures[5].1, figures[figures.len() - 1].1)
    {
        assert!(
            last_pages <= settled_pages * 2,
            "SQLite pages in use grew from {settled_pages} to {last_pages}"
        );
    }
    db.close().await.unwrap();
    server.stop().await;
}
