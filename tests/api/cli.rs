//! The `kms` binary itself: dev mode, refusal without secrets, migrate, user create,
//! `.env`, and no secret in any line it prints.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use kms::proto::kms::v1::{self as pb, auth_client::AuthClient, keys_client::KeysClient};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::common::authed;

const KMS: &str = env!("CARGO_BIN_EXE_kms");

/// A `kms` process with every line it prints collected.
struct Running {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(KMS);
    // A clean environment: nothing from the developer's or CI's KMS_* variables.
    cmd.env_clear()
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "trace")
        // Tests run in parallel: never the fixed default HTTP port.
        .env("KMS_HTTP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            output.lock().unwrap().push(line);
        }
    });
}

impl Running {
    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command(dir, args, env).spawn().expect("kms starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), output.clone());
        collect(child.stderr.take().unwrap(), output.clone());
        Self { child, output }
    }

    fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Waits for a printed line containing `needle` and returns it.
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..300 {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no line with {needle:?} in:\n{}", self.lines().join("\n"));
    }

    /// The HTTP listener's address, from its log line.
    async fn http_addr(&self) -> std::net::SocketAddr {
        let line = self.wait_for("HTTP listening").await;
        line.rsplit("addr=").next().unwrap().trim().parse().unwrap()
    }

    async fn channel(&self) -> Channel {
        let line = self.wait_for("gRPC listening").await;
        // Plain text ends `addr=IP:PORT`; JSON lines carry `"addr":"IP:PORT"`.
        let addr = if line.starts_with('{') {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            event["fields"]["addr"].as_str().unwrap().to_owned()
        } else {
            line.rsplit("addr=").next().unwrap().trim().to_owned()
        };
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// SIGTERM, then the exit status and everything printed.
    async fn terminate(mut self) -> (bool, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("kms exits after SIGTERM")
            .unwrap();
        // Let the readers drain the pipes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.success(), self.lines())
    }
}

async fn login(auth: &mut AuthClient<Channel>, username: &str, password: &str) -> String {
    auth.login(pb::LoginRequest {
        username: username.into(),
        password: password.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_runs_a_full_flow_without_logging_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::spawn(
        dir.path(),
        &["serve", "--dev"],
        &[("KMS_GRPC_ADDR", "127.0.0.1:0")],
    );
    let channel = server.channel().await;
    let banner = server.wait_for("password: ").await;
    let admin_password = banner
        .rsplit("password: ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert!(admin_password.len() >= 20);
    server.wait_for("DEVELOPMENT MODE").await;

    let mut auth = AuthClient::new(channel.clone());
    let mut keys = KeysClient::new(channel);
    let admin_token = login(&mut auth, "admin", &admin_password).await;
    let user_password = "user-password-that-must-not-leak";
    auth.register(pb::RegisterRequest {
        username: "peer".into(),
        password: user_password.into(),
        roles: vec![],
    })
    .await
    .unwrap();
    let user_token = login(&mut auth, "peer", user_password).await;
    let wrong_password = "wrong-password-that-must-not-leak";
    assert!(
        auth.login(pb::LoginRequest {
            username: "peer".into(),
            password: wrong_password.into(),
        })
        .await
        .is_err()
    );
    // A rejected registration carries a password too.
    let short_password = "short-pw";
    assert!(
        auth.register(pb::RegisterRequest {
            username: "x".into(),
            password: short_password.into(),
            roles: vec![],
        })
        .await
        .is_err()
    );
    let imported = "imported-secret-that-must-not-leak-0123";
    let created = keys
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "billing".into(),
                api_key: None,
                description: "d".into(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    keys.create_key(authed(
        pb::CreateKeyRequest {
            service_name: "legacy".into(),
            api_key: Some(imported.into()),
            description: String::new(),
            ttl_seconds: 0,
            ..Default::default()
        },
        &admin_token,
    ))
    .await
    .unwrap();
    keys.get_key(authed(
        pb::GetKeyRequest {
            service_name: "billing".into(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let rotated = keys
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "billing".into(),
                grace_period_seconds: 60,
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    for key in [
        &created.api_key,
        &rotated.api_key,
        &imported.to_owned(),
        &"kms_bogus".to_owned(),
    ] {
        keys.verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: key.clone(),
                ..Default::default()
            },
            &user_token,
        ))
        .await
        .unwrap();
    }
    auth.validate_token(pb::ValidateTokenRequest {
        token: user_token.clone(),
    })
    .await
    .unwrap();
    keys.list_keys(authed(
        pb::ListKeysRequest {
            page_size: 0,
            page_token: String::new(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    keys.revoke_key(authed(
        pb::RevokeKeyRequest {
            service_name: "billing".into(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    // A denied call with a token.
    assert!(
        keys.get_key(authed(
            pb::GetKeyRequest {
                service_name: "legacy".into()
            },
            &user_token
        ))
        .await
        .is_err()
    );

    let master_key = std::fs::read_to_string(dir.path().join("kms-data/master.key")).unwrap();
    let (clean_exit, lines) = server.terminate().await;
    assert!(
        clean_exit,
        "SIGTERM should stop the server cleanly:\n{}",
        lines.join("\n")
    );
    let all = lines.join("\n");
    assert!(
        all.contains("login failed"),
        "the flow should have been logged at trace level:\n{all}"
    );
    let secrets = [
        user_password,
        wrong_password,
        short_password,
        imported,
        &created.api_key,
        &rotated.api_key,
        &admin_token,
        &user_token,
        master_key.trim(),
    ];
    for secret in secrets {
        assert!(
            !all.contains(secret),
            "a secret reached the output: {secret:.12}..."
        );
    }
    // The one-time admin password is printed exactly once, in the banner.
    assert_eq!(all.matches(admin_password.as_str()).count(), 1);
    // Token signatures and key bodies, in part, must not show either.
    let signature = admin_token.rsplit('.').next().unwrap();
    assert!(!all.contains(signature));
    assert!(!all.contains(&created.api_key[12..30]));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["master.key", "kms.db"] {
            let mode = std::fs::metadata(dir.path().join("kms-data").join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    // The operator rotates the token signing key while the server is down.
    let out = command(dir.path(), &["signing-key", "rotate", "--dev"], &[])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new_kid = stdout
        .split_whitespace()
        .nth(3)
        .expect("prints the new kid")
        .trim_end_matches(';')
        .to_owned();

    // A restart reuses the secrets and the signing keys, and does not create or print
    // another admin password.
    let again = Running::spawn(
        dir.path(),
        &["serve", "--dev"],
        &[("KMS_GRPC_ADDR", "127.0.0.1:0")],
    );
    let mut auth = AuthClient::new(again.channel().await);
    let fresh = login(&mut auth, "admin", &admin_password).await;
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid,
        Some(new_kid)
    );
    // A token signed before the rotation (and the restart) is still good.
    let v = auth
        .validate_token(pb::ValidateTokenRequest {
            token: admin_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    let (_, lines) = again.terminate().await;
    assert!(!lines.iter().any(|l| l.contains("password: ")), "{lines:?}");
}

#[tokio::test]
async fn serve_without_secrets_refuses_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &["serve"], &[]).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["KMS_MASTER_KEY", "KMS_JWT_SECRET", "--dev"] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
    // Nothing was created.
    assert!(!dir.path().join("kms-data").exists());

    let out = command(
        dir.path(),
        &["serve"],
        &[
            ("KMS_MASTER_KEY", "dG9vLXNob3J0"),
            ("KMS_JWT_SECRET", &"j".repeat(32)),
        ],
    )
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KMS_MASTER_KEY must be base64 of exactly 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("dG9vLXNob3J0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_user_create_and_configured_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("prod.db").display());
    let db = [("KMS_DATABASE_URL", db_url.as_str())];

    let out = command(dir.path(), &["migrate"], &db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ops_password = "ops-password-from-stdin";
    let mut create = command(
        dir.path(),
        &[
            "user",
            "create",
            "--username",
            "ops",
            "--role",
            "admin",
            "--role",
            "ops",
        ],
        &db,
    )
    .spawn()
    .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = create.stdin.take().unwrap();
        stdin
            .write_all(format!("{ops_password}\n").as_bytes())
            .await
            .unwrap();
    }
    let out = create.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(ops_password));
    // The same name again is refused.
    let mut again = command(dir.path(), &["user", "create", "--username", "ops"], &db)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        again
            .stdin
            .take()
            .unwrap()
            .write_all(b"another-password-1\n")
            .await
            .unwrap();
    }
    assert!(!again.wait_with_output().await.unwrap().status.success());

    // Secrets from a .env file in the working directory; the environment wins over it.
    let master = STANDARD.encode([42u8; 32]);
    std::fs::write(
        dir.path().join(".env"),
        format!("KMS_MASTER_KEY={master}\nKMS_JWT_SECRET=dotenv-secret-dotenv-secret-dotenv-secret\nKMS_GRPC_ADDR=127.0.0.1:1\n"),
    )
    .unwrap();
    let server = Running::spawn(
        dir.path(),
        &["serve"],
        &[
            db[0],
            ("KMS_GRPC_ADDR", "127.0.0.1:0"),
            ("KMS_TYPO_VARIABLE", "x"),
        ],
    );
    let channel = server.channel().await;
    server.wait_for("KMS_TYPO_VARIABLE").await;
    let mut auth = AuthClient::new(channel.clone());
    let token = login(&mut auth, "ops", ops_password).await;
    let v = auth
        .validate_token(pb::ValidateTokenRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.roles, vec!["admin", "ops"]);
    KeysClient::new(channel)
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "svc".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let (clean_exit, lines) = server.terminate().await;
    assert!(clean_exit, "{}", lines.join("\n"));
    assert!(!lines.iter().any(|l| l.contains("DEVELOPMENT MODE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_admin_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
    let master = STANDARD.encode([7u8; 32]);
    let env = [
        ("KMS_DATABASE_URL", db_url.as_str()),
        ("KMS_GRPC_ADDR", "127.0.0.1:0"),
        ("KMS_MASTER_KEY", master.as_str()),
        (
            "KMS_JWT_SECRET",
            "bootstrap-test-secret-bootstrap-test-secret",
        ),
        ("KMS_BOOTSTRAP_ADMIN_USERNAME", "boss"),
        ("KMS_BOOTSTRAP_ADMIN_PASSWORD", "boss-password-from-env"),
    ];
    let server = Running::spawn(dir.path(), &["serve"], &env);
    let mut auth = AuthClient::new(server.channel().await);
    let token = login(&mut auth, "boss", "boss-password-from-env").await;
    let v = auth
        .validate_token(pb::ValidateTokenRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(v.roles.contains(&"admin".to_owned()));
    let (_, lines) = server.terminate().await;
    let all = lines.join("\n");
    assert!(!all.contains("boss-password-from-env"));
    assert!(
        !all.contains("password: "),
        "a configured password is not printed"
    );
}

/// The two ways tonic's client reports a call the server never processed, which a
/// gRPC client retries transparently (grpc-go does): CANCELLED when hyper never wrote
/// the request because the connection closed first, and INTERNAL for a stream the
/// server's graceful GOAWAY (NO_ERROR) refused, i.e. one above its last-stream-id
/// (RFC 9113 section 6.8: such streams were not processed). Only exactly these are
/// excused; any other failure is a call the server dropped.
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return status.code() == tonic::Code::Internal
                && h2.is_go_away()
                && h2.is_remote()
                && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return status.code() == tonic::Code::Cancelled;
        }
        source = err.source();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_of_calls_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::spawn(
        dir.path(),
        &["serve", "--dev"],
        &[("KMS_GRPC_ADDR", "127.0.0.1:0"), ("RUST_LOG", "info")],
    );
    let channel = server.channel().await;
    let banner = server.wait_for("password: ").await;
    let password = banner
        .rsplit("password: ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let token = login(&mut AuthClient::new(channel.clone()), "admin", &password).await;
    let key = KeysClient::new(channel.clone())
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "busy".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;

    // Four clients call VerifyKey back to back until two seconds after SIGTERM.
    let until = Arc::new(Mutex::new(None::<std::time::Instant>));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (mut keys, token, key, until) = (
                KeysClient::new(channel.clone()),
                token.clone(),
                key.clone(),
                until.clone(),
            );
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0u32, Vec::new());
                loop {
                    if until
                        .lock()
                        .unwrap()
                        .is_some_and(|t| std::time::Instant::now() > t)
                    {
                        return (ok, failures);
                    }
                    match keys
                        .verify_key(authed(
                            pb::VerifyKeyRequest {
                                api_key: key.clone(),
                                ..Default::default()
                            },
                            &token,
                        ))
                        .await
                    {
                        Ok(r) => {
                            assert!(r.into_inner().valid);
                            ok += 1;
                        }
                        Err(status) => {
                            if !never_sent(&status) {
                                eprintln!("call failed during shutdown: {status:?}");
                                failures.push(status.code());
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    *until.lock().unwrap() = Some(std::time::Instant::now() + Duration::from_secs(2));
    let (clean_exit, lines) = server.terminate().await;
    assert!(clean_exit, "{}", lines.join("\n"));
    let mut total_ok = 0;
    for client in clients {
        let (ok, failures) = client.await.unwrap();
        total_ok += ok;
        for code in failures {
            assert_eq!(
                code,
                tonic::Code::Unavailable,
                "only UNAVAILABLE once the listener closed"
            );
        }
    }
    assert!(total_ok > 0, "calls succeeded before the signal");
    assert!(lines.iter().any(|l| l.contains("shutdown requested")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_method_code_latency_subject_and_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::spawn(
        dir.path(),
        &["serve", "--dev"],
        &[
            ("KMS_GRPC_ADDR", "127.0.0.1:0"),
            ("RUST_LOG", "info"),
            ("KMS_LOG_FORMAT", "json"),
        ],
    );
    let channel = server.channel().await;
    let banner = server.wait_for("password: ").await;
    let password = banner
        .rsplit("password: ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let token = login(&mut AuthClient::new(channel.clone()), "admin", &password).await;
    let mut list = authed(
        pb::ListKeysRequest {
            page_size: 0,
            page_token: String::new(),
        },
        &token,
    );
    list.metadata_mut()
        .insert("x-request-id", "log-test.1".parse().unwrap());
    KeysClient::new(channel).list_keys(list).await.unwrap();
    server.wait_for("ListKeys").await;
    let (_, lines) = server.terminate().await;
    let mut found = false;
    for line in lines.iter().filter(|l| l.starts_with('{')) {
        let event: serde_json::Value = serde_json::from_str(line).expect("every log line is JSON");
        if event["span"]["method"] == "/kms.v1.Keys/ListKeys"
            && event["fields"]["message"] == "call finished"
        {
            assert_eq!(event["fields"]["code"], "OK");
            assert!(event["fields"]["latency_ms"].is_number());
            assert_eq!(event["span"]["subject"], "admin");
            assert_eq!(event["span"]["request_id"], "log-test.1");
            assert_eq!(event["spans"][0], event["span"]);
            found = true;
        }
    }
    assert!(found, "no call record in:\n{}", lines.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_calls_that_never_end() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Running::spawn(
        dir.path(),
        &["serve", "--dev"],
        &[
            ("KMS_GRPC_ADDR", "127.0.0.1:0"),
            ("RUST_LOG", "info"),
            ("KMS_SHUTDOWN_GRACE_SECONDS", "1"),
        ],
    );
    // A health Watch stream lasts as long as the client wants it to.
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let started = std::time::Instant::now();
    let (clean_exit, lines) = server.terminate().await;
    assert!(clean_exit, "{}", lines.join("\n"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the grace period bounds shutdown"
    );
    assert!(
        lines.iter().any(|l| l.contains("grace period over")),
        "{}",
        lines.join("\n")
    );
    // The watcher was told the server stopped serving before it went away.
    let mut saw_not_serving = false;
    while let Ok(Some(update)) = watch.message().await {
        saw_not_serving |= update.status() == ServingStatus::NotServing;
    }
    assert!(saw_not_serving);
}

/// The original HTTP service's `.env` starts the KMS unchanged: its SQLAlchemy
/// DATABASE_URL, SECRET_KEY (the HS256 secret, and the source of the derived master
/// key), ALGORITHM and ACCESS_TOKEN_EXPIRE_MINUTES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_services_env_file_starts_the_server() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::json;

    use crate::http_client::Http;

    let dir = tempfile::tempdir().unwrap();
    let secret_key = "3f9a1c0e7b5d4a8f9e2c6b1d0a7f5e3c9b8d2a4f6e1c0b7a5d3f9e8c2b4a6d1f";
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# the original service\nDATABASE_URL=sqlite:///./kms.db\nSECRET_KEY=\"{secret_key}\"\nALGORITHM=HS256\nACCESS_TOKEN_EXPIRE_MINUTES=30\n"
        ),
    )
    .unwrap();
    // The operator adds only a first admin, and opens registration as the original
    // service had it (README, migration section); every other setting comes from the
    // .env.
    let env = [
        ("KMS_GRPC_ADDR", "127.0.0.1:0"),
        ("KMS_BOOTSTRAP_ADMIN_USERNAME", "boss"),
        ("KMS_BOOTSTRAP_ADMIN_PASSWORD", "boss-password-123"),
        ("KMS_ALLOW_REGISTRATION", "true"),
    ];
    let server = Running::spawn(dir.path(), &["serve"], &env);
    let http = Http::new(server.http_addr().await);
    server.wait_for("derived from SECRET_KEY").await;

    let reply = http
        .post("/register")
        .json(json!({"username": "alice", "password": "alice-password-1", "roles": "user"}))
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let token = http.login("alice", "alice-password-1").await;
    // HS256 under SECRET_KEY, as before, so a gateway holding it can still check tokens;
    // 30 minutes from ACCESS_TOKEN_EXPIRE_MINUTES.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["kms"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &DecodingKey::from_secret(secret_key.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1800
    );
    // sqlite:///./kms.db is ./kms.db, relative to the working directory.
    assert!(dir.path().join("kms.db").exists());

    let admin = http.login("boss", "boss-password-123").await;
    let created = http
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "kept"}))
        .send()
        .await;
    assert_eq!(created.status, 201);
    let (clean_exit, lines) = server.terminate().await;
    assert!(clean_exit, "{}", lines.join("\n"));
    assert!(
        !lines.join("\n").contains(secret_key),
        "SECRET_KEY was logged"
    );

    // The derived master key is the same at the next start: the stored secret opens.
    let again = Running::spawn(dir.path(), &["serve"], &env);
    let http = Http::new(again.http_addr().await);
    let admin = http.login("boss", "boss-password-123").await;
    let reply = http.get("/keys/kept").bearer(&admin).send().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), created.json());
    again.terminate().await;
}
