//! The `kms` command line, in two groups (`kms --help` shows them apart):
//!
//! - server and operator commands, which run where the server runs and open its
//!   database: `serve`, `migrate`, `backup`, `user create` (the recovery path),
//!   `signing-key rotate`, `master-key rewrap`, and `healthcheck` (HTTP `/health`);
//! - client commands (`kms::cli`), an admin client of a running server over gRPC:
//!   `login`, `logout`, `keys ...`, `users ...`, `audit list|watch`, `keyring ...`, and
//!   `completions`. They run apart from the server's runtime and telemetry and end
//!   with the exit statuses listed in `kms --help`.

use std::{io::Read, process::ExitCode, time::Duration};

use kms::{
    config::{
        BackupArgs, Command, DatabaseArgs, HealthcheckArgs, MasterKeyCommand, MasterKeyRewrapArgs,
        SigningKeyCommand, UserCommand, UserCreateArgs, unknown_env_vars,
    },
    crypto::password::PasswordHasherPool,
    domain::keyring::Keyring,
    domain::signing::SigningKeys,
    domain::token::SigningAlgorithm,
    domain::users::{NewUser, UserCreator},
    server::{App, Listeners, shutdown_signal},
    store::{Store, redact_url},
    telemetry,
};
use zeroize::Zeroizing;

fn main() -> ExitCode {
    // `.env` fills only variables the environment lacks; a missing file is fine.
    let dotenv = dotenvy::dotenv();
    let cli = kms::cli::help::parse();
    let command = match cli.command {
        // A client of a server: no telemetry pipeline, a runtime of its own.
        Command::Client(client) => return kms::cli::main(*client),
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter's channel lives on it.
    let telemetry = {
        let _runtime = runtime.enter();
        telemetry::init()
    };
    if let Err(e) = dotenv
        && !e.not_found()
    {
        tracing::warn!(error = %e, ".env could not be read");
    }
    for name in unknown_env_vars() {
        tracing::warn!(variable = %name, "unknown KMS_* environment variable ignored");
    }
    let result = runtime.block_on(run(command));
    // While the runtime still runs: the last spans go out on its channel.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kms: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Backup(args) => backup(args).await,
        Command::Healthcheck(args) => healthcheck(args).await,
        Command::SigningKey(SigningKeyCommand::Rotate(args)) => rotate_signing_key(*args).await,
        Command::User(UserCommand::Create(args)) => create_user(args).await,
        Command::MasterKey(MasterKeyCommand::Rewrap(args)) => rewrap_master_key(*args).await,
        Command::Client(_) => Err("a client command reached the server's dispatch".into()),
    }
}

async fn serve(args: kms::config::ServeArgs) -> Result<(), String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    if config.dev {
        tracing::warn!(
            "DEVELOPMENT MODE: secrets are generated and kept in plain files under the data folder, and a bootstrap admin is created. Never use --dev in production."
        );
    }
    let app = App::build(&config).await.map_err(|e| e.to_string())?;
    if let Some(admin) = &app.created_admin
        && let Some(password) = &admin.generated_password
    {
        // Shown once, on stdout and not through the log pipeline: it is never stored
        // in plain text anywhere.
        println!(
            "\n  Bootstrap admin created.\n    username: {}\n    password: {}\n  This password is shown only once. Log in with it and keep it safe.\n",
            admin.username,
            password.as_str()
        );
    }
    let grpc = bind(config.grpc_addr).await?;
    let http = bind(config.http_addr).await?;
    let tls = if config.tls.is_some() {
        "TLS"
    } else {
        "plaintext"
    };
    tracing::info!(transport = tls, addr = %local_addr(&grpc)?, "gRPC listening");
    tracing::info!(transport = tls, addr = %local_addr(&http)?, "HTTP listening (REST API, /health, /metrics, /openapi.json)");
    let probe = match config.probe_addr {
        Some(addr) => {
            let probe = bind(addr).await?;
            tracing::info!(addr = %local_addr(&probe)?, "probe listening (plaintext /health and /metrics only)");
            Some(probe)
        }
        None => None,
    };
    let listeners = Listeners {
        grpc,
        http: Some(http),
        probe,
    };
    app.serve(listeners, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn local_addr(listener: &tokio::net::TcpListener) -> Result<std::net::SocketAddr, String> {
    listener.local_addr().map_err(|e| e.to_string())
}

async fn healthcheck(args: HealthcheckArgs) -> Result<(), String> {
    // With TLS on the HTTP port, the plaintext probe listener is the one to ask.
    let mut addr = args.probe_addr.unwrap_or(args.http_addr);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let answer = tokio::time::timeout(Duration::from_secs(3), kms::http::http_get(addr, "/health"))
        .await
        .map_err(|_| format!("no answer from {addr} within 3 s"))??;
    match answer {
        (200, _) => Ok(()),
        (status, body) => Err(format!("unhealthy: HTTP {status} {}", body.trim())),
    }
}

async fn rotate_signing_key(args: kms::config::ServeArgs) -> Result<(), String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    if config.jwt_algorithm == SigningAlgorithm::Hs256 {
        return Err(
            "KMS_JWT_ALGORITHM=HS256 has no signing keys: rotate KMS_JWT_SECRET instead".into(),
        );
    }
    let store = Store::connect(&config.database)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let keyring = open_keyring(&config, &store).await?;
    let signing = SigningKeys::new(
        store,
        keyring,
        config.jwt_algorithm,
        config.access_token_ttl_seconds,
    );
    signing.load_or_create().await.map_err(|e| e.to_string())?;
    let kid = signing
        .rotate_stored("operator")
        .await
        .map_err(|e| e.to_string())?;
    println!("new signing key {kid}; running servers switch to it within 5 s");
    Ok(())
}

async fn rewrap_master_key(args: MasterKeyRewrapArgs) -> Result<(), String> {
    if args.serve.dev {
        return Err("master-key rewrap does not take --dev: give the current master key with KMS_MASTER_KEY_FILE (under --dev it is kms-data/master.key)".into());
    }
    let (config, new) = args.resolve().map_err(|e| e.to_string())?;
    let new = new.open().map_err(|e| format!("new master key: {e}"))?;
    let store = Store::connect(&config.database)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let keyring = open_keyring(&config, &store).await?;
    let old = keyring.master_key_id().to_owned();
    let (keys, moved) = keyring
        .rewrap_master(&new, "operator")
        .await
        .map_err(|e| e.to_string())?;
    let moved = if moved > 0 {
        format!("; {moved} secrets of the previous release moved under the keyring")
    } else {
        String::new()
    };
    println!(
        "keyring re-wrapped: {keys} data keys, master key {old} -> {}{moved}. Running servers keep serving; start them with the new master key from now on: the old one opens nothing in this database.",
        new.id()
    );
    Ok(())
}

/// The keyring of an offline command, opened with the configured master key.
async fn open_keyring(config: &kms::config::Config, store: &Store) -> Result<Keyring, String> {
    let master = config.open_master_key().map_err(|e| e.to_string())?;
    Keyring::unlock(store.clone(), master, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())
}

async fn migrate(args: DatabaseArgs) -> Result<(), String> {
    let store = Store::connect(&args.store_options())
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    println!("migrations applied");
    Ok(())
}

/// What every backup's operator must read: the copy is useless without the master key
/// and the master key is not in it.
const MASTER_KEY_NOTE: &str = "The master key is NOT in the backup: API key secrets and signing keys in it are sealed under the master key, so back the master key (KMS_MASTER_KEY / KMS_MASTER_KEY_FILE, or the PKCS#11 token) up apart, and keep the two in different places.";

async fn backup(args: BackupArgs) -> Result<(), String> {
    let options = args.database.store_options();
    let Some(file) = kms::store::sqlite_file(&options.url) else {
        let schema = search_path(&options.url)
            .map(|s| format!(" --schema={s}"))
            .unwrap_or_default();
        eprintln!(
            "kms backup copies SQLite databases only. For PostgreSQL use pg_dump, which takes a consistent snapshot while servers run (the password from ~/.pgpass or PGPASSWORD, not the command line):\n\n  pg_dump --format=custom{schema} --file=kms.dump '{url}'\n\nKMS_DATABASE_URL may select a schema (options=-c search_path=NAME): dump only that schema (--schema=NAME), and restore it into a database that the restored servers reach with the same search_path. Restore with the servers stopped: pg_restore --no-owner --dbname=URL kms.dump into an empty database.\n\n{MASTER_KEY_NOTE}",
            url = redact_url(&options.url),
        );
        return Err("not a SQLite database: use pg_dump (see above)".into());
    };
    // Connecting would create a missing file (mode=rwc): an empty backup of nothing.
    if !file.exists() {
        return Err(format!("no database at {}", file.display()));
    }
    let store = Store::connect(&options).await.map_err(|e| e.to_string())?;
    let written = store.backup_sqlite(&args.out).await;
    if let Err(e) = store.close().await {
        tracing::warn!(error = %e, "closing the database failed");
    }
    let bytes = written.map_err(|e| format!("backup failed: {e}"))?;
    println!(
        "backup of {} written to {} ({bytes} bytes, mode 0600)",
        file.display(),
        args.out.display()
    );
    eprintln!("{MASTER_KEY_NOTE}");
    Ok(())
}

/// The schema a PostgreSQL URL selects with `options=-c search_path=NAME`, if any.
fn search_path(url: &str) -> Option<String> {
    let decoded = url
        .replace("%20", " ")
        .replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%2C", ",")
        .replace("%2c", ",");
    let (_, rest) = decoded.split_once("search_path=")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

async fn create_user(args: UserCreateArgs) -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let input = Zeroizing::new(input);
    let password = Zeroizing::new(input.lines().next().unwrap_or_default().to_owned());

    let store = Store::connect(&args.database.store_options())
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let hasher = PasswordHasherPool::new(1)
        .await
        .map_err(|e| e.to_string())?;
    let password_min_bytes = usize::try_from(args.password_min_length)
        .map_err(|_| "KMS_PASSWORD_MIN_LENGTH is out of range".to_owned())?;
    let user = UserCreator::new(store, hasher, password_min_bytes)
        .create_by_operator(NewUser {
            username: args.username,
            password,
            roles: args.roles,
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "user '{}' created with roles {}",
        user.username,
        user.roles.join(",")
    );
    Ok(())
}
