//! Configuration: defaults, then `.env` and `KMS_*` environment variables, then flags
//! (clap resolves flag > environment > default; `.env` only fills variables the
//! environment lacks). Secrets are held in wrappers whose `Debug` prints nothing.
//! The original HTTP service's variable names are fallbacks for some of these
//! (`legacy`): a `KMS_*` name or flag wins over them, a default loses.
//!
//! This file holds the command line and `resolve_with`, which assembles the pieces:
//! `secrets` (master key, JWT secret, bootstrap admin), `dev` (the files `--dev`
//! writes; nothing else writes), `tls`, `limits` (with `connections`), and
//! `known_env` (the `KMS_*` names, read from the command line's `env` attributes).

mod connections;
mod dev;
mod known_env;
mod legacy;
mod limits;
mod retention;
mod secrets;
mod tls;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};

use crate::{
    domain::{sweeper::SweepSettings, throttle::ThrottleSettings, token::SigningAlgorithm},
    net::TrustedProxies,
    store::StoreOptions,
};

pub use connections::{ConnectionArgs, ConnectionLimits};
pub use known_env::{known_env_vars, unknown_env_vars};
pub use legacy::{LegacyEnv, translate_database_url};
pub use limits::Limits;
pub use retention::Retention;
pub use secrets::{BootstrapAdmin, JwtSecret, MasterKeySource, Pin};
pub use tls::TlsFiles;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://kms-data/kms.db?mode=rwc";
const DEFAULT_ACCESS_TOKEN_TTL_SECONDS: i64 = 3600;

#[derive(Debug, Parser)]
#[command(name = "kms", version, about = "A gRPC key-management server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (applies pending migrations first).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Write a consistent copy of a SQLite database while servers run (PostgreSQL:
    /// use pg_dump). The master key is not in it: back that up apart.
    Backup(BackupArgs),
    /// Exit 0 when the server's HTTP `/health` answers 200 (for container HEALTHCHECKs).
    Healthcheck(HealthcheckArgs),
    /// Manage token signing keys (takes the same configuration as `serve`).
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
    /// Manage users directly in the database (operator recovery path).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the master key that wraps the keyring (takes the same configuration as
    /// `serve`, whose master key is the current one).
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
    /// The client commands (src/cli), which talk to a running server over gRPC.
    #[command(flatten)]
    Client(Box<crate::cli::ClientCommand>),
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Re-wrap the keyring under a new master key, in one transaction. Running servers
    /// keep serving; each needs the new master key at its next start.
    Rewrap(Box<MasterKeyRewrapArgs>),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("new_master_key").required(true).args(["new_master_key_file", "new_pkcs11_key_label"])))]
pub struct MasterKeyRewrapArgs {
    /// A file holding the new master key: base64 of 32 random bytes (e.g. `openssl rand
    /// -base64 32`).
    #[arg(long)]
    pub new_master_key_file: Option<PathBuf>,
    /// The label of an AES-256 key in the PKCS#11 token named by
    /// KMS_MASTER_KEY_PKCS11_MODULE and KMS_MASTER_KEY_PKCS11_TOKEN_LABEL.
    #[arg(long)]
    pub new_pkcs11_key_label: Option<String>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The file to write (mode 0600); it must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The server's HTTP listener (a 0.0.0.0 address is asked on 127.0.0.1).
    #[arg(long, env = "KMS_HTTP_ADDR", default_value = "127.0.0.1:8003")]
    pub http_addr: SocketAddr,
    /// The server's plaintext probe listener; asked instead of KMS_HTTP_ADDR when set.
    #[arg(long, env = "KMS_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Sign new tokens with a new key; the old one verifies until its tokens expire.
    Rotate(Box<ServeArgs>),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create(UserCreateArgs),
}

const POSTGRES_MAX_CONNECTIONS: u32 = 16;
/// Each SQLite connection is a thread with its own page and statement caches: more
/// than a few only cost memory and context switches.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://PATH?mode=rwc or postgres://USER@HOST/DB [default:
    /// DATABASE_URL of the original service, else sqlite://kms-data/kms.db?mode=rwc].
    #[arg(long, env = "KMS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections [default: 16 on PostgreSQL, 4 on
    /// SQLite, which has one writer and whose readers need no more on few cores].
    #[arg(long, env = "KMS_DATABASE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: Option<u32>,
}

impl DatabaseArgs {
    pub fn store_options(&self) -> StoreOptions {
        self.store_options_with(&LegacyEnv::from_process())
    }

    pub fn store_options_with(&self, legacy: &LegacyEnv) -> StoreOptions {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => legacy
                .database_url()
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
        };
        let default_max = if url.starts_with("sqlite:") {
            SQLITE_MAX_CONNECTIONS
        } else {
            POSTGRES_MAX_CONNECTIONS
        };
        StoreOptions {
            url,
            max_connections: self.database_max_connections.unwrap_or(default_max),
        }
    }
}

#[derive(Debug, Args)]
pub struct UserCreateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long)]
    pub username: String,
    /// A role to grant; repeat for several. Without any: `user`.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Shortest accepted password, in bytes.
    #[arg(long, env = "KMS_PASSWORD_MIN_LENGTH", default_value_t = 12, value_parser = clap::value_parser!(u64).range(8..=1024))]
    pub password_min_length: u64,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Development mode: generate the master key and JWT secret under the data folder
    /// and create a bootstrap admin with a random password. Not for production.
    #[arg(long)]
    pub dev: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address of the gRPC listener.
    #[arg(long, env = "KMS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Base64 of the 32-byte master key that seals API key secrets.
    #[arg(long, env = "KMS_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// A file holding the base64 master key (instead of KMS_MASTER_KEY).
    #[arg(long, env = "KMS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// The PKCS#11 module (a .so) of the token that holds the master key, instead of
    /// KMS_MASTER_KEY. The token's user PIN comes from KMS_MASTER_KEY_PKCS11_PIN_FILE
    /// or the variable KMS_MASTER_KEY_PKCS11_PIN (never from the command line).
    #[arg(long, env = "KMS_MASTER_KEY_PKCS11_MODULE")]
    pub master_key_pkcs11_module: Option<PathBuf>,
    /// The label of the token that holds the master key.
    #[arg(long, env = "KMS_MASTER_KEY_PKCS11_TOKEN_LABEL")]
    pub master_key_pkcs11_token_label: Option<String>,
    /// A file holding the token's user PIN.
    #[arg(long, env = "KMS_MASTER_KEY_PKCS11_PIN_FILE")]
    pub master_key_pkcs11_pin_file: Option<PathBuf>,
    /// The label of the AES-256 secret key object that is the master key (made with
    /// e.g. `pkcs11-tool --keygen --key-type AES:32 --sensitive --private --label ...`).
    #[arg(long, env = "KMS_MASTER_KEY_PKCS11_KEY_LABEL")]
    pub master_key_pkcs11_key_label: Option<String>,
    /// KMS_MASTER_KEY_PKCS11_PIN, read from the environment only.
    #[arg(skip = secrets::Pin::from_env())]
    pub master_key_pkcs11_pin: Option<secrets::Pin>,
    /// The HS256 secret that signs access tokens (at least 32 bytes).
    #[arg(long, env = "KMS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the JWT secret (instead of KMS_JWT_SECRET); surrounding
    /// whitespace is ignored.
    #[arg(long, env = "KMS_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Token signing: EdDSA or RS256 (keys generated by the KMS, kept sealed in the
    /// database, published as JWKS) or HS256 (the shared KMS_JWT_SECRET) [default:
    /// EdDSA; HS256 when the original service's SECRET_KEY or ALGORITHM is set].
    #[arg(long, env = "KMS_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<SigningAlgorithm>,
    /// Lifetime of access tokens, in seconds [default: 3600, or the original service's
    /// ACCESS_TOKEN_EXPIRE_MINUTES].
    #[arg(long, env = "KMS_ACCESS_TOKEN_TTL_SECONDS", value_parser = clap::value_parser!(i64).range(1..=31_536_000))]
    pub access_token_ttl_seconds: Option<i64>,
    /// Lifetime of a refresh token, in seconds (each refresh issues a new one).
    #[arg(long, env = "KMS_REFRESH_TOKEN_TTL_SECONDS", default_value_t = 1_209_600, value_parser = clap::value_parser!(i64).range(60..=31_536_000))]
    pub refresh_token_ttl_seconds: i64,
    /// How long after Login its refresh chain ends: Refresh is refused after that, and
    /// no refresh token outlives it (may be shorter than the refresh token lifetime).
    #[arg(long, env = "KMS_SESSION_MAX_LIFETIME_SECONDS", default_value_t = retention::DEFAULT_SESSION_MAX_LIFETIME_SECONDS, value_parser = clap::value_parser!(i64).range(1..=315_360_000))]
    pub session_max_lifetime_seconds: i64,
    /// How long audit events are kept before the sweeper deletes them; 0 keeps them all.
    #[arg(long, env = "KMS_AUDIT_RETENTION_SECONDS", default_value_t = SweepSettings::DEFAULT_AUDIT_RETENTION.as_secs(), value_parser = clap::value_parser!(u64).range(0..=3_153_600_000))]
    pub audit_retention_seconds: u64,
    /// The pause between two passes of the sweeper, which deletes expired audit
    /// events, logins and secrets.
    #[arg(long, env = "KMS_SWEEP_INTERVAL_SECONDS", default_value_t = SweepSettings::DEFAULT_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sweep_interval_seconds: u64,
    #[arg(long, env = "KMS_JWT_ISSUER", default_value = "kms")]
    pub jwt_issuer: String,
    #[arg(long, env = "KMS_JWT_AUDIENCE", default_value = "kms")]
    pub jwt_audience: String,
    /// Whether anyone may Register without an admin token [default: false; true with
    /// --dev]. Open registration hands anyone who reaches Register a valid token,
    /// which ext_authz routes without required roles admit.
    #[arg(long, env = "KMS_ALLOW_REGISTRATION", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allow_registration: Option<bool>,
    /// At start, when no admin exists and both are set, this admin is created.
    #[arg(long, env = "KMS_BOOTSTRAP_ADMIN_USERNAME")]
    pub bootstrap_admin_username: Option<String>,
    #[arg(long, env = "KMS_BOOTSTRAP_ADMIN_PASSWORD", hide_env_values = true)]
    pub bootstrap_admin_password: Option<String>,
    /// Shortest accepted password, in bytes.
    #[arg(long, env = "KMS_PASSWORD_MIN_LENGTH", default_value_t = 12, value_parser = clap::value_parser!(u64).range(8..=1024))]
    pub password_min_length: u64,
    /// Where --dev keeps its generated secrets.
    #[arg(long, env = "KMS_DATA_DIR", default_value = "kms-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP listener: the REST API, `/health`, `/metrics`, the JWKS.
    #[arg(long, env = "KMS_HTTP_ADDR", default_value = "127.0.0.1:8003")]
    pub http_addr: SocketAddr,
    /// PEM certificate chain: serve gRPC and the HTTP listener over TLS (with KMS_TLS_KEY).
    #[arg(long, env = "KMS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "KMS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "KMS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// After SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[arg(long, env = "KMS_SHUTDOWN_GRACE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_seconds: u64,
    /// How precisely a key's last_used_at is kept: it is written at most this often.
    #[arg(long, env = "KMS_LAST_USED_RESOLUTION_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub last_used_resolution_seconds: u64,
    /// Largest accepted request message, in bytes.
    #[arg(long, env = "KMS_MAX_REQUEST_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_request_bytes: u64,
    /// Longest a unary call may run before it is answered DEADLINE_EXCEEDED.
    #[arg(long, env = "KMS_REQUEST_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_seconds: u64,
    /// Serve Envoy's ext_authz Check on the gRPC port. It needs no KMS token (the
    /// sidecar asks about the requests it sees), so it tells whoever can reach the
    /// port whether a key or token is valid: turn it off where no mesh uses it, or
    /// restrict the port with mTLS (KMS_TLS_CLIENT_CA) or network policy.
    #[arg(long, env = "KMS_EXT_AUTHZ", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ext_authz: bool,
    /// Serve the web console at `/ui/` on the HTTP listener (false: `/ui/` is 404).
    #[arg(long, env = "KMS_UI", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ui: bool,
    /// Calls served at once; more are answered RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "KMS_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,
    /// Failed logins of one username within the window before it is locked out (a
    /// client address may fail four times as often).
    #[arg(long, env = "KMS_LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub login_max_failures: u32,
    /// Failed logins are forgotten after this long without a failure or lockout.
    #[arg(long, env = "KMS_LOGIN_FAILURE_WINDOW_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_failure_window_seconds: u64,
    /// The first lockout; every further failure doubles it.
    #[arg(long, env = "KMS_LOGIN_LOCKOUT_BASE_SECONDS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_lockout_base_seconds: u64,
    /// The longest lockout.
    #[arg(long, env = "KMS_LOGIN_LOCKOUT_MAX_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_lockout_max_seconds: u64,
    /// A plaintext listener carrying only `/health` and `/metrics`, for probes and
    /// Prometheus when TLS (and mutual TLS) guards the HTTP port. Unset: none.
    #[arg(long, env = "KMS_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// Comma-separated CIDRs of proxies whose `x-forwarded-for` is believed (the
    /// rightmost hop outside them is the client, for the login throttle and audit
    /// rows). Empty: none; every client is its TCP peer.
    #[arg(long, env = "KMS_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Longest a login waits while its username's or address's remaining attempts
    /// are all being checked; then RESOURCE_EXHAUSTED, not counted as a failure.
    #[arg(long, env = "KMS_LOGIN_WAIT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub login_wait_seconds: u64,
}

/// Everything `serve` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: StoreOptions,
    pub grpc_addr: SocketAddr,
    pub master_key: MasterKeySource,
    /// How access tokens are signed.
    pub jwt_algorithm: SigningAlgorithm,
    /// The HS256 secret; required when `jwt_algorithm` is HS256, unused otherwise.
    pub jwt_secret: Option<JwtSecret>,
    pub access_token_ttl_seconds: i64,
    pub refresh_token_ttl_seconds: i64,
    /// Audit retention, session lifetime and the sweeper's interval.
    pub retention: Retention,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub allow_registration: bool,
    pub password_min_length: usize,
    pub bootstrap_admin: Option<BootstrapAdmin>,
    /// Concurrent argon2 computations at most (each holds 19 MiB while it runs).
    pub password_hash_concurrency: usize,
    pub dev: bool,
    pub http_addr: SocketAddr,
    /// The plaintext `/health` + `/metrics` listener, if any.
    pub probe_addr: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// Proxies whose `x-forwarded-for` names the client (KMS_TRUSTED_PROXIES).
    pub trusted_proxies: TrustedProxies,
    pub limits: Limits,
    /// Serve `envoy.service.auth.v3.Authorization/Check`.
    pub ext_authz: bool,
    /// Serve the web console at `/ui/` (KMS_UI).
    pub ui: bool,
    /// Failed-login throttling per username and per client address.
    pub login_throttle: ThrottleSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ServeArgs {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        self.resolve_with(&LegacyEnv::from_process())
    }

    /// `resolve` with the original service's variables given, for tests. Reads files
    /// but writes none, except under `--dev` (`dev.rs`).
    pub fn resolve_with(self, legacy: &LegacyEnv) -> Result<Config, ConfigError> {
        let pkcs11 = self.pkcs11_settings()?;
        let mut master_key = match pkcs11 {
            Some(_) => None,
            None => self.given_master_key(legacy)?,
        };
        let mut jwt_secret = self.given_jwt_secret(legacy)?;
        let bootstrap_admin = self.bootstrap_admin()?;
        let jwt_algorithm = match self.jwt_algorithm {
            Some(algorithm) => algorithm,
            None => legacy.jwt_algorithm()?.unwrap_or(SigningAlgorithm::EdDsa),
        };
        let access_token_ttl_seconds = match self.access_token_ttl_seconds {
            Some(seconds) => seconds,
            None => legacy
                .access_token_ttl_seconds()?
                .unwrap_or(DEFAULT_ACCESS_TOKEN_TTL_SECONDS),
        };
        let hs256 = jwt_algorithm == SigningAlgorithm::Hs256;
        if self.dev {
            // A master key in a token needs nothing generated for it.
            let slot = pkcs11.is_none().then_some(&mut master_key);
            dev::fill_in_secrets(&self.data_dir, slot, &mut jwt_secret, hs256)?;
        }
        let master_key = match pkcs11 {
            Some(settings) => {
                secrets::require_jwt_secret(jwt_secret.as_ref(), hs256)?;
                MasterKeySource::Pkcs11(settings)
            }
            None => MasterKeySource::Key(secrets::require(master_key, jwt_secret.as_ref(), hs256)?),
        };
        let tls = self.tls_files()?;
        let limits = self.limits()?;
        let password_min_length = usize::try_from(self.password_min_length)
            .map_err(|_| ConfigError("KMS_PASSWORD_MIN_LENGTH is out of range".into()))?;
        let login_throttle = self.login_throttle()?;
        let trusted_proxies = TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError(format!("KMS_TRUSTED_PROXIES: {e}")))?;
        Ok(Config {
            database: self.database.store_options_with(legacy),
            grpc_addr: self.grpc_addr,
            master_key,
            jwt_algorithm,
            jwt_secret,
            access_token_ttl_seconds,
            refresh_token_ttl_seconds: self.refresh_token_ttl_seconds,
            retention: self.retention(),
            jwt_issuer: self.jwt_issuer,
            jwt_audience: self.jwt_audience,
            // Closed unless asked for; `--dev` opens it for the quick tour.
            allow_registration: self.allow_registration.unwrap_or(self.dev),
            password_min_length,
            bootstrap_admin,
            password_hash_concurrency: default_hash_concurrency(),
            dev: self.dev,
            http_addr: self.http_addr,
            probe_addr: self.probe_addr,
            tls,
            trusted_proxies,
            limits,
            ext_authz: self.ext_authz,
            ui: self.ui,
            login_throttle,
        })
    }
}

/// One argon2 job per core keeps the cores busy without queuing memory behind them.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use base64::{Engine, engine::general_purpose::STANDARD};

    use super::{
        dev::{JWT_SECRET_FILE, MASTER_KEY_FILE},
        *,
    };

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["kms", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_secrets_serve_refuses_and_says_what_is_missing() {
        let mut a = args(&[]);
        a.master_key = None;
        a.master_key_file = None;
        a.jwt_secret = None;
        a.jwt_secret_file = None;
        let err = a.resolve().unwrap_err().to_string();
        assert!(
            err.contains("KMS_MASTER_KEY") && err.contains("KMS_JWT_SECRET"),
            "{err}"
        );
        assert!(err.contains("--dev"));
    }

    #[test]
    fn bad_master_key_is_named_not_echoed() {
        let mut a = args(&["--master-key", "c2hvcnQ=", "--jwt-secret", &"j".repeat(32)]);
        a.master_key_file = None;
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("KMS_MASTER_KEY must be base64 of exactly 32 bytes"));
        assert!(!err.contains("c2hvcnQ="));
    }

    #[test]
    fn short_jwt_secret_is_refused() {
        let key = STANDARD.encode([1u8; 32]);
        let mut a = args(&["--master-key", &key, "--jwt-secret", "short"]);
        a.master_key_file = None;
        assert!(
            a.resolve()
                .unwrap_err()
                .to_string()
                .contains("at least 32 bytes")
        );
    }

    #[test]
    fn dev_generates_private_secret_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kms-data");
        let data_s = data.to_str().unwrap();
        let mut a = args(&["--dev", "--data-dir", data_s]);
        a.master_key = None;
        a.master_key_file = None;
        a.jwt_secret = None;
        a.jwt_secret_file = None;
        a.bootstrap_admin_password = None;
        let first = a.resolve().unwrap();
        assert!(first.bootstrap_admin.as_ref().unwrap().password.is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut b = args(&["--dev", "--data-dir", data_s]);
        b.master_key = None;
        b.master_key_file = None;
        b.jwt_secret = None;
        b.jwt_secret_file = None;
        let second = b.resolve().unwrap();
        assert_eq!(
            first.master_key.key().unwrap().expose(),
            second.master_key.key().unwrap().expose()
        );
        // EdDSA by default: no JWT secret file is made or needed.
        assert!(first.jwt_secret.is_none() && !data.join(JWT_SECRET_FILE).exists());

        // With HS256, dev mode generates the shared secret too, once, owner-only.
        let hs256 = || {
            let mut c = args(&["--dev", "--data-dir", data_s, "--jwt-algorithm", "HS256"]);
            c.master_key = None;
            c.master_key_file = None;
            c.jwt_secret = None;
            c.jwt_secret_file = None;
            c.resolve().unwrap()
        };
        let (one, two) = (hs256(), hs256());
        assert_eq!(
            one.jwt_secret.as_ref().unwrap().expose(),
            two.jwt_secret.as_ref().unwrap().expose()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(JWT_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn only_hs256_needs_the_jwt_secret() {
        let key = STANDARD.encode([3u8; 32]);
        let mut a = args(&["--master-key", &key]);
        a.master_key_file = None;
        a.jwt_secret = None;
        a.jwt_secret_file = None;
        assert_eq!(a.resolve().unwrap().jwt_algorithm, SigningAlgorithm::EdDsa);
        let mut b = args(&["--master-key", &key, "--jwt-algorithm", "HS256"]);
        b.master_key_file = None;
        b.jwt_secret = None;
        b.jwt_secret_file = None;
        let err = b.resolve().unwrap_err().to_string();
        assert!(err.contains("KMS_JWT_SECRET"), "{err}");
        assert!(Cli::try_parse_from(["kms", "serve", "--jwt-algorithm", "RS256"]).is_ok());
        assert!(Cli::try_parse_from(["kms", "serve", "--jwt-algorithm", "none"]).is_err());
    }

    #[test]
    fn login_throttle_settings() {
        let key = STANDARD.encode([5u8; 32]);
        let mut a = args(&["--master-key", &key]);
        a.master_key_file = None;
        let throttle = a.resolve().unwrap().login_throttle;
        assert_eq!(throttle, ThrottleSettings::default());
        assert_eq!(
            (
                throttle.max_failures,
                throttle.failure_window.as_secs(),
                throttle.lockout_base.as_secs(),
                throttle.lockout_max.as_secs()
            ),
            (5, 300, 1, 900)
        );
        let mut b = args(&[
            "--master-key",
            &key,
            "--login-lockout-base-seconds",
            "60",
            "--login-lockout-max-seconds",
            "30",
        ]);
        b.master_key_file = None;
        let err = b.resolve().unwrap_err().to_string();
        assert!(err.contains("KMS_LOGIN_LOCKOUT_MAX_SECONDS"), "{err}");
        assert!(Cli::try_parse_from(["kms", "serve", "--login-max-failures", "0"]).is_err());
    }

    #[test]
    fn trusted_proxies_are_checked_at_start() {
        let key = STANDARD.encode([6u8; 32]);
        let resolved = |list: &str| {
            let mut a = args(&["--master-key", &key, "--trusted-proxies", list]);
            a.master_key_file = None;
            a.resolve()
        };
        let config = resolved("10.0.0.0/8, fd00::/8").unwrap();
        assert_eq!(config.trusted_proxies.to_string(), "10.0.0.0/8,fd00::/8");
        assert!(resolved("").unwrap().trusted_proxies.is_empty());
        let err = resolved("10.0.0.0/8,10.0.0.0/40").unwrap_err().to_string();
        assert!(err.starts_with("KMS_TRUSTED_PROXIES: "), "{err}");
        assert!(err.contains("10.0.0.0/40"), "{err}");
    }

    #[test]
    fn registration_is_closed_by_default_and_open_with_dev() {
        let key = STANDARD.encode([7u8; 32]);
        let resolved = |extra: &[&str]| {
            let mut argv = vec!["--master-key", key.as_str()];
            argv.extend_from_slice(extra);
            let mut a = args(&argv);
            a.master_key_file = None;
            if !extra.contains(&"--allow-registration") {
                // Whatever the test's own environment says.
                a.allow_registration = None;
            }
            a.resolve().unwrap().allow_registration
        };
        assert!(!resolved(&[]));
        assert!(resolved(&["--dev"]));
        assert!(resolved(&["--allow-registration", "true"]));
        assert!(!resolved(&["--dev", "--allow-registration", "off"]));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let key = STANDARD.encode([9u8; 32]);
        let secret = "s".repeat(40);
        let mut a = args(&["--master-key", &key, "--jwt-secret", &secret]);
        a.master_key_file = None;
        a.bootstrap_admin_username = Some("root".into());
        a.bootstrap_admin_password = Some("hunter2hunter2".into());
        let cfg = a.resolve().unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains(&secret) && !dbg.contains(&key) && !dbg.contains("hunter2"),
            "{dbg}"
        );
    }
}
