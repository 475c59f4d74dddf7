//! The `kms` command line: `serve`, `migrate`, `user create`, `signing-key rotate` and
//! `healthcheck`.

use std::{io::Read, process::ExitCode, time::Duration};

use clap::Parser;
use kms::{
    config::{
        Cli, Command, DatabaseArgs, HealthcheckArgs, SigningKeyCommand, UserCommand,
        UserCreateArgs, unknown_env_vars,
    },
    crypto::password::PasswordHasherPool,
    crypto::sealing::Sealer,
    domain::signing::SigningKeys,
    domain::token::SigningAlgorithm,
    domain::users::{NewUser, UserCreator},
    server::{App, Listeners, shutdown_signal},
    store::Store,
    telemetry,
};
use zeroize::Zeroizing;

fn main() -> ExitCode {
    // `.env` fills only variables the environment lacks; a missing file is fine.
    let dotenv = dotenvy::dotenv();
    let cli = Cli::parse();
    telemetry::init();
    if let Err(e) = dotenv
        && !e.not_found()
    {
        tracing::warn!(error = %e, ".env could not be read");
    }
    for name in unknown_env_vars() {
        tracing::warn!(variable = %name, "unknown KMS_* environment variable ignored");
    }
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
    let result = runtime.block_on(run(cli.command));
    telemetry::flush();
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
        Command::Healthcheck(args) => healthcheck(args).await,
        Command::SigningKey(SigningKeyCommand::Rotate(args)) => rotate_signing_key(*args).await,
        Command::User(UserCommand::Create(args)) => create_user(args).await,
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
    let sealer = Sealer::new(&config.master_key);
    kms::domain::master_key::check(&store, &sealer)
        .await
        .map_err(|e| e.to_string())?;
    let signing = SigningKeys::new(
        store,
        sealer,
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

async fn migrate(args: DatabaseArgs) -> Result<(), String> {
    let store = Store::connect(&args.store_options())
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    println!("migrations applied");
    Ok(())
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
