//! The test harness: a server per test, on SQLite or PostgreSQL.

pub mod softhsm;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kms::{
    config::{BootstrapAdmin, Config, JwtSecret, Limits, MasterKeySource, Retention},
    crypto::sealing::MasterKey,
    domain::{
        throttle::ThrottleSettings,
        token::{Claims, SigningAlgorithm},
    },
    proto::kms::v1::{self as pb, auth_client::AuthClient, keys_client::KeysClient},
    server::{App, Listeners},
    store::StoreOptions,
};
use sea_orm::{ConnectionTrait, Database};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, transport::Channel};
use zeroize::Zeroizing;

pub const JWT_SECRET: &[u8] = b"test-jwt-secret-test-jwt-secret-0123456789";
pub const ADMIN: &str = "root";
pub const ADMIN_PASSWORD: &str = "root-password-1234";

/// Runs a test body once per backend: `sqlite`, and `postgres`, which is ignored
/// unless asked for (`--include-ignored` or `--ignored`) because it needs
/// KMS_TEST_POSTGRES_URL. Plain `cargo test` thus reports it as ignored, never as a
/// pass that asserted nothing; run without the URL, it fails.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs KMS_TEST_POSTGRES_URL"]
            async fn postgres() {
                super::$name($crate::common::Backend::postgres()).await
            }
        }
    )*};
}

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL at KMS_TEST_POSTGRES_URL. Every test that calls this is marked
    /// `#[ignore = "needs KMS_TEST_POSTGRES_URL"]`: when it is run anyway without the
    /// URL, it fails here rather than pass without testing anything.
    pub fn postgres() -> Self {
        Self::Postgres(postgres_url())
    }
}

/// KMS_TEST_POSTGRES_URL; panics with what to do when it is not set.
pub fn postgres_url() -> String {
    match std::env::var("KMS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "KMS_TEST_POSTGRES_URL is not set, and this test runs on PostgreSQL: set it \
             (e.g. KMS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test) or leave \
             out the ignored tests (plain `cargo test` does)"
        ),
    }
}

/// A database of its own: a temporary SQLite file, or a fresh PostgreSQL schema
/// (dropped when the test ends).
pub struct TestDb {
    pub url: String,
    _dir: tempfile::TempDir,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: &Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display()),
                _dir: dir,
                pg_schema: None,
            },
            Backend::Postgres(base) => {
                let schema = format!("t_{}", hex_id());
                let db = Database::connect(base.as_str())
                    .await
                    .expect("PostgreSQL from KMS_TEST_POSTGRES_URL is unreachable");
                db.execute_unprepared(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .unwrap();
                db.close().await.unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                Self {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    _dir: dir,
                    pg_schema: Some((base.clone(), schema)),
                }
            }
        }
    }
}

impl TestDb {
    /// The SQLite file, on SQLite.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self.url
            .strip_prefix("sqlite://")
            .map(|rest| rest.split('?').next().unwrap_or(rest).into())
    }

    /// The base URL and the schema, on PostgreSQL.
    pub fn pg_schema(&self) -> Option<(&str, &str)> {
        self.pg_schema
            .as_ref()
            .map(|(base, schema)| (base.as_str(), schema.as_str()))
    }

    /// Fills this (empty) database with the first release's fixture
    /// (`tests/fixtures/README.md`): a copy of the SQLite file, or the PostgreSQL dump
    /// loaded into this test's schema.
    pub async fn load_release1_fixture(&self) {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        if let Some(path) = self.sqlite_path() {
            std::fs::copy(fixtures.join("release1.sqlite"), &path).unwrap();
            return;
        }
        let (base, schema) = self.pg_schema().unwrap();
        let dump = std::fs::read_to_string(fixtures.join("release1-postgres.sql")).unwrap();
        let sql = dump
            .lines()
            // The schema exists already: this test's own.
            .filter(|l| !l.starts_with("CREATE SCHEMA"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("fixture_release1", schema);
        let db = Database::connect(base).await.unwrap();
        db.execute_unprepared(&sql).await.unwrap();
        db.close().await.unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg_schema.take() {
            // Drop runs inside the test's runtime: clean up on a thread of our own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(db) = Database::connect(base.as_str()).await {
                        let _ = db
                            .execute_unprepared(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .await;
                        let _ = db.close().await;
                    }
                });
            })
            .join();
        }
    }
}

pub fn hex_id() -> String {
    let bytes: [u8; 8] = kms::crypto::random::bytes().unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn test_config(db_url: &str) -> Config {
    Config {
        database: StoreOptions {
            url: db_url.to_owned(),
            max_connections: 8,
        },
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        master_key: MasterKeySource::Key(MasterKey::generate().unwrap()),
        // The suite forges tokens (expired, other secret, alg none) with the shared
        // secret; EdDSA, the default, has tests of its own (tests/api/signing.rs).
        jwt_algorithm: SigningAlgorithm::Hs256,
        jwt_secret: Some(JwtSecret::new(JWT_SECRET.to_vec()).unwrap()),
        access_token_ttl_seconds: 3600,
        refresh_token_ttl_seconds: 1_209_600,
        retention: Retention::default(),
        jwt_issuer: "kms".into(),
        jwt_audience: "kms".into(),
        allow_registration: true,
        password_min_length: 12,
        bootstrap_admin: Some(BootstrapAdmin {
            username: ADMIN.into(),
            password: Some(Zeroizing::new(ADMIN_PASSWORD.into())),
        }),
        password_hash_concurrency: 2,
        dev: false,
        http_addr: "127.0.0.1:0".parse().unwrap(),
        probe_addr: None,
        tls: None,
        trusted_proxies: Default::default(),
        limits: Limits::default(),
        ext_authz: true,
        ui: true,
        login_throttle: ThrottleSettings::default(),
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    /// The plaintext /health + /metrics listener, when the config set `probe_addr`.
    pub probe_addr: Option<std::net::SocketAddr>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The database, owned by the first server on it (replicas borrow its URL); dropped
    /// with the server.
    _db: Option<TestDb>,
    db_url: String,
    config: Config,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_inner(backend, tweak, false).await
    }

    pub async fn start_with_tls(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_inner(backend, tweak, true).await
    }

    async fn start_inner(backend: Backend, tweak: impl FnOnce(&mut Config), tls: bool) -> Self {
        let db = TestDb::new(&backend).await;
        let mut config = test_config(&db.url);
        tweak(&mut config);
        Self::launch(config, Some(db), tls).await
    }

    /// A second server on the same database with the same secrets: a replica.
    pub async fn replica(&self) -> Self {
        let mut server = Self::launch(self.config.clone(), None, false).await;
        server.db_url = self.db_url.clone();
        server
    }

    /// A server on a database made beforehand (a fixture), with `config`.
    pub async fn start_on(db: TestDb, mut config: Config) -> Self {
        config.database.url = db.url.clone();
        Self::launch(config, Some(db), false).await
    }

    async fn launch(config: Config, db: Option<TestDb>, tls: bool) -> Self {
        let app = App::build(&config).await.expect("server builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        // A probe listener when the config asks for one (its port is chosen here).
        let probe = match config.probe_addr {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let probe_addr = probe.as_ref().map(|p| p.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = Listeners {
            grpc: listener,
            http: Some(http),
            probe,
        };
        let handle = tokio::spawn(async move {
            app.serve(listeners, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        // A TLS server gets a lazy plaintext channel: its tests build their own.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        let channel = if tls {
            channel.connect_lazy()
        } else {
            channel.connect().await.expect("server accepts connections")
        };
        Self {
            addr,
            http_addr,
            probe_addr,
            channel,
            shutdown: Some(tx),
            handle: Some(handle),
            db_url: config.database.url.clone(),
            _db: db,
            config,
        }
    }

    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// The configuration the server runs with (its master key, to open its signing keys).
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }

    pub fn keys(&self) -> KeysClient<Channel> {
        KeysClient::new(self.channel.clone())
    }

    /// Whether VerifyKey, called with `token`, finds `key` valid.
    pub async fn key_verifies(&self, token: &str, key: &str) -> bool {
        self.keys()
            .verify_key(authed(
                pb::VerifyKeyRequest {
                    api_key: key.into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .valid
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        self.auth()
            .login(pb::LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("login {username}: {s:?}"))
            .into_inner()
            .access_token
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN, ADMIN_PASSWORD).await
    }

    /// Registers a `user`-role account and returns its token.
    pub async fn user_token(&self, username: &str) -> String {
        let password = format!("{username}-password-123");
        self.auth()
            .register(pb::RegisterRequest {
                username: username.into(),
                password: password.clone(),
                roles: vec![],
            })
            .await
            .unwrap();
        self.login(username, &password).await
    }

    /// Stops this server and starts a new one on the same database and configuration
    /// (on SQLite, where no second server may share the file).
    pub async fn restart(mut self) -> Self {
        let db = self._db.take();
        let config = self.config.clone();
        self.stop().await;
        Self::launch(config, db, false).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims as the server would issue them, for forging tokens.
pub fn claims(sub: &str, roles: &[&str], iat: i64, ttl: i64) -> Claims {
    Claims {
        sub: sub.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        iat,
        nbf: iat,
        exp: iat + ttl,
        iss: "kms".into(),
        aud: "kms".into(),
        jti: hex_id(),
        // No such login: a forged token never has a live session behind it.
        sid: "forged".into(),
        ver: 0,
    }
}

pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// An unsigned token with `alg: none` claiming the given roles.
pub fn alg_none_token(claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{body}.")
}

/// Asserts a status code, and that the message mentions `needle` (a field name).
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    needle: &str,
) {
    match result {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "status: {s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} should mention {needle:?}",
                s.message()
            );
        }
    }
}
