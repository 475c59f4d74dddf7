//! What a client without a token gets for bytes that do not decode at ext_authz, and
//! for methods a service does not have.

use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost::Message;
use tonic::{Code, Request, Status, transport::Channel};

use crate::{
    both_backends,
    common::{Backend, TestServer},
    ext_authz::check_request,
    hostile::raw_messages::RawCodec,
};

both_backends!(
    ext_authz_answers_undecodable_requests_with_invalid_argument,
    unknown_methods_of_public_services_are_unimplemented,
);

async fn raw_call(channel: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_code(result: &Result<Vec<u8>, Status>, code: Code, what: &str) {
    match result {
        Ok(_) => panic!("{what}: expected {code:?}, got OK"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

async fn ext_authz_answers_undecodable_requests_with_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;

    // Not protobuf at all: a field number 0 and a length that runs past the end.
    let garbage = vec![0x02, 0xff, 0xff, 0xff, 0x0f, b'x'];
    assert!(CheckRequest::decode(garbage.as_slice()).is_err());
    let answer = raw_call(&server.channel, CHECK, garbage).await;
    assert_code(&answer, Code::InvalidArgument, "garbage bytes");

    // A well-formed CheckRequest whose header map holds a value that is not UTF-8:
    // encode a placeholder of the same length and swap the bytes in.
    let mut body = check_request(&[("x-api-key", "PLACEHOLDER")]).encode_to_vec();
    let at = body
        .windows(11)
        .position(|w| w == b"PLACEHOLDER")
        .expect("the placeholder is in the encoding");
    body[at..at + 11].copy_from_slice(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5");
    assert!(CheckRequest::decode(body.as_slice()).is_err());
    let answer = raw_call(&server.channel, CHECK, body).await;
    assert_code(&answer, Code::InvalidArgument, "a non-UTF-8 header value");
    let message = answer.unwrap_err().message().to_owned();
    assert!(!message.contains('\u{fffd}'), "{message}");

    // The same request with the placeholder itself still decodes and is answered.
    let fine = check_request(&[("x-api-key", "PLACEHOLDER")]).encode_to_vec();
    raw_call(&server.channel, CHECK, fine)
        .await
        .expect("a well-formed Check is answered");
    server.stop().await;
}

async fn unknown_methods_of_public_services_are_unimplemented(backend: Backend) {
    let server = TestServer::start(backend).await;
    for path in [
        "/grpc.health.v1.Health/Nope",
        "/grpc.reflection.v1.ServerReflection/Nope",
        "/grpc.reflection.v1alpha.ServerReflection/Nope",
        "/envoy.service.auth.v3.Authorization/Nope",
    ] {
        let answer = raw_call(&server.channel, path, Vec::new()).await;
        assert_code(&answer, Code::Unimplemented, path);
    }
    // kms.v1 stays fail-closed: without a token, an unknown method is UNAUTHENTICATED,
    // so that nobody learns which methods exist without one.
    for path in ["/kms.v1.Keys/Nope", "/kms.v1.Nope/Nope"] {
        let answer = raw_call(&server.channel, path, Vec::new()).await;
        assert_code(&answer, Code::Unauthenticated, path);
    }
    server.stop().await;
}

// ---- `kms` as a process: the one-server guard, the master key, the data folder ----

const KMS: &str = env!("CARGO_BIN_EXE_kms");

/// `kms <args>` in `dir` with a clean environment plus `env` (addresses on port 0).
fn kms(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(KMS);
    cmd.env_clear()
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .env("KMS_GRPC_ADDR", "127.0.0.1:0")
        .env("KMS_HTTP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a `kms` command that must fail within 60 s; its output (stdout and stderr).
async fn refused(mut cmd: tokio::process::Command, what: &str) -> String {
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 60 s, expected a refusal"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "{what}: expected a refusal, got success:\n{text}"
    );
    text
}

fn sqlite_path(url: &str) -> std::path::PathBuf {
    let path = url.strip_prefix("sqlite://").unwrap();
    path.split('?').next().unwrap().into()
}

fn master_key_b64() -> String {
    use base64::Engine;
    let key: [u8; 32] = kms::crypto::random::bytes().unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A second `kms serve` on another path to a running server's SQLite file (a symlink,
/// a hard link) is refused, as the same path always was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_link_to_the_sqlite_file_is_refused() {
    let cluster = crate::process::Cluster::new(&Backend::Sqlite, &[]).await;
    let first = cluster.start("first").await;
    let db = sqlite_path(cluster.db_url());
    let links = tempfile::tempdir().unwrap();
    let symlink = links.path().join("symlinked.db");
    std::os::unix::fs::symlink(&db, &symlink).unwrap();
    let hard = db.with_file_name("hard-linked.db");
    std::fs::hard_link(&db, &hard).unwrap();
    let secret = std::str::from_utf8(crate::common::JWT_SECRET).unwrap();
    let master = master_key_b64();
    for (what, path) in [
        ("symlink", &symlink),
        ("hard link", &hard),
        ("same path", &db),
    ] {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let env = [
            ("KMS_DATABASE_URL", url.as_str()),
            ("KMS_MASTER_KEY", master.as_str()),
            ("KMS_JWT_ALGORITHM", "HS256"),
            ("KMS_JWT_SECRET", secret),
        ];
        let text = refused(kms(links.path(), &["serve"], &env), what).await;
        assert!(
            text.contains("another kms server is using")
                && text.contains("SQLite serves exactly one server"),
            "{what}: {text}"
        );
        eprintln!("hardening: second server on a {what}: refused");
    }
    // The first server is unharmed: it still answers and writes.
    let admin = first.admin_token().await;
    first
        .keys()
        .create_key(crate::common::authed(
            kms::proto::kms::v1::CreateKeyRequest {
                service_name: "still-mine".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("the first server still writes");
}

/// Starts `kms <args>` (a server) with its output in `log`, and waits until it listens.
async fn serving(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> tokio::process::Child {
    let file = std::fs::File::create(log).unwrap();
    let mut child = kms(dir, args, env)
        .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(file))
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("gRPC listening") {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kms exited before listening ({status}):\n{text}");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "kms did not listen within 60 s:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `--dev` with a data folder that exists already, open to everyone (0755): the folder
/// is made 0700, and every file the server keeps in it is 0600, the lock file too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_makes_an_existing_data_folder_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kms-data");
    let log = dir.path().join("serve.log");
    // The first start generates the master key; the second is given it and so writes
    // no secret into the folder, which must be made private all the same.
    let mut master = String::new();
    for run in ["generated master key", "configured master key"] {
        let env: Vec<(&str, &str)> = if master.is_empty() {
            vec![]
        } else {
            vec![("KMS_MASTER_KEY", master.as_str())]
        };
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lock = data.join("kms.db.lock");
        if lock.exists() {
            std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mut server = serving(dir.path(), &["serve", "--dev"], &env, &log).await;
        assert_eq!(
            format!("{:o}", mode(&data)),
            "700",
            "{run}: the data folder"
        );
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            let m = mode(&path);
            assert_eq!(m & 0o077, 0, "{run}: {} is {m:o}", path.display());
        }
        for file in ["master.key", "kms.db", "kms.db.lock"] {
            assert_eq!(
                format!("{:o}", mode(&data.join(file))),
                "600",
                "{run}: {file}"
            );
        }
        server.kill().await.unwrap();
        eprintln!("hardening: --dev on a 0755 data folder ({run}): folder 0700, files 0600");
        master = std::fs::read_to_string(data.join("master.key")).unwrap();
    }
}

both_backends!(a_wrong_master_key_is_refused_at_start_and_by_the_cli);

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The gRPC address a server logged.
fn grpc_addr(log: &std::path::Path) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text.lines().find(|l| l.contains("gRPC listening")).unwrap();
    line.rsplit("addr=").next().unwrap().trim().parse().unwrap()
}

/// A server started with one master key stores sealed secrets; started again with
/// another key it refuses to start, saying that the configured master key does not
/// open them, with HS256 (an API key secret) and with EdDSA (a signing key). The right
/// key still starts; `kms signing-key rotate` with the wrong one gives the same
/// message, not "internal error".
/// The public id (`mk-...`) of a base64 master key.
fn master_id(b64: &str) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let bytes: [u8; 32] = STANDARD.decode(b64).unwrap().try_into().unwrap();
    kms::crypto::master::Master::software(&kms::crypto::sealing::MasterKey::from_bytes(bytes))
        .unwrap()
        .id()
        .to_owned()
}

async fn a_wrong_master_key_is_refused_at_start_and_by_the_cli(backend: Backend) {
    use crate::common::{ADMIN, ADMIN_PASSWORD, JWT_SECRET, TestDb, authed};
    use kms::proto::kms::v1::{self as pb, auth_client::AuthClient, keys_client::KeysClient};

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let (key_a, key_b) = (master_key_b64(), master_key_b64());
    let jwt_secret = std::str::from_utf8(JWT_SECRET).unwrap();
    for algorithm in ["HS256", "EdDSA"] {
        let db = TestDb::new(&backend).await;
        let env = |master: &str| {
            let mut env = vec![
                ("KMS_DATABASE_URL", db.url.clone()),
                ("KMS_JWT_ALGORITHM", algorithm.to_owned()),
                ("KMS_BOOTSTRAP_ADMIN_USERNAME", ADMIN.to_owned()),
                ("KMS_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
                ("KMS_MASTER_KEY", master.to_owned()),
            ];
            if algorithm == "HS256" {
                env.push(("KMS_JWT_SECRET", jwt_secret.to_owned()));
            }
            env
        };
        let (with_a, with_b) = (env(&key_a), env(&key_b));

        // Key A on an empty database: starts. With HS256, store an API key secret (the
        // only sealed value an HS256 server has); EdDSA stores its signing key.
        let mut server = serving(dir.path(), &["serve"], &refs(&with_a), &log).await;
        if algorithm == "HS256" {
            let channel = Channel::from_shared(format!("http://{}", grpc_addr(&log)))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let token = AuthClient::new(channel.clone())
                .login(pb::LoginRequest {
                    username: ADMIN.into(),
                    password: ADMIN_PASSWORD.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .access_token;
            KeysClient::new(channel)
                .create_key(authed(
                    pb::CreateKeyRequest {
                        service_name: "sealed-with-a".into(),
                        api_key: None,
                        description: String::new(),
                        ttl_seconds: 0,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap();
        }
        server.kill().await.unwrap();

        // Key B: refused, with the reason and the settings' names, and no key material.
        // Both master keys named by their public ids: the keyring's and the one given.
        let text = refused(kms(dir.path(), &["serve"], &refs(&with_b)), algorithm).await;
        let (id_a, id_b) = (master_id(&key_a), master_id(&key_b));
        for needle in [
            "the configured master key",
            "KMS_MASTER_KEY, KMS_MASTER_KEY_FILE",
            "does not open this database's keyring",
            &id_a,
            &id_b,
        ] {
            assert!(
                text.contains(needle),
                "{algorithm}: no {needle:?} in:\n{text}"
            );
        }
        assert!(!text.contains("internal error"), "{algorithm}: {text}");
        assert!(
            !text.contains(&key_a) && !text.contains(&key_b),
            "{algorithm}: a key in the output"
        );
        let said = text
            .lines()
            .find(|l| l.starts_with("kms:"))
            .unwrap_or_default();
        eprintln!("hardening: {algorithm} server started with another master key: {said}");

        // The right key still starts.
        let mut server = serving(dir.path(), &["serve"], &refs(&with_a), &log).await;
        server.kill().await.unwrap();

        if algorithm == "EdDSA" {
            let rotate = ["signing-key", "rotate"];
            let text = refused(kms(dir.path(), &rotate, &refs(&with_b)), "rotate").await;
            assert!(
                text.contains("does not open this database's keyring")
                    && !text.contains("internal error"),
                "signing-key rotate: {text}"
            );
            let out = kms(dir.path(), &rotate, &refs(&with_a))
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "rotate with the right key: {out:?}");
            eprintln!("hardening: kms signing-key rotate with another master key: refused");
        }
    }
}

both_backends!(the_audit_count_migration_keeps_earlier_rows);

/// `audit_events.count` arrives on a database of the previous release, full of rows:
/// each of them stands for one event.
async fn the_audit_count_migration_keeps_earlier_rows(backend: Backend) {
    use kms::{
        migrations::Migrator,
        store::{AuditFilter, Store, StoreOptions},
    };
    use sea_orm::{ConnectionTrait, Database};
    use sea_orm_migration::MigratorTrait;

    let db = crate::common::TestDb::new(&backend).await;
    let conn = Database::connect(db.url.as_str()).await.unwrap();
    // The five migrations of the first release, and rows written by it.
    Migrator::up(&conn, Some(5)).await.unwrap();
    for i in 0..50 {
        conn.execute_unprepared(&format!(
            "INSERT INTO audit_events (at, actor, action, target, outcome, client_addr, request_id) \
             VALUES ('2026-11-30T12:00:00Z', 'anonymous', 'login_throttled', 'ghost', 'denied', '192.0.2.1', 'r{i}')"
        ))
        .await
        .unwrap();
    }
    conn.close().await.unwrap();

    let store = Store::connect(&StoreOptions {
        url: db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let rows = store
        .list_audit(&AuditFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r.count == 1));
    store.close().await.unwrap();
}
