//! Assembles the server: store, services, the auth layer, limits and shutdown.

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use zeroize::Zeroizing;

use crate::{
    config::Config,
    crypto::{password::PasswordHasherPool, random, sealing::Sealer},
    domain::{
        self,
        auth::{AuthService, AuthSettings},
        keys::KeyService,
        token::TokenAuthority,
    },
    grpc::{AuthApi, AuthLayer, KeysApi},
    proto::kms::v1::{auth_server::AuthServer, keys_server::KeysServer},
    store::{Store, redact_url},
};

/// Largest request message accepted. KMS requests are small; a bigger one is an error
/// or an attack, refused before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Length of a generated bootstrap admin password (base62, about 143 bits).
const BOOTSTRAP_PASSWORD_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(String),
    #[error("bootstrap admin: {0}")]
    Bootstrap(String),
    #[error("server: {0}")]
    Serve(String),
}

/// The bootstrap admin created at this start, with its password if it was generated
/// (to be shown once, by the caller, outside the logs).
pub struct CreatedAdmin {
    pub username: String,
    pub generated_password: Option<Zeroizing<String>>,
}

/// A migrated, bootstrapped server ready to accept connections.
pub struct App {
    store: Store,
    auth: AuthService,
    keys: KeyService,
    tokens: Arc<TokenAuthority>,
    pub created_admin: Option<CreatedAdmin>,
}

impl App {
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        let store = Store::connect(&config.database)
            .await
            .map_err(|e| StartError::Database(e.to_string()))?;
        store
            .migrate()
            .await
            .map_err(|e| StartError::Database(format!("migration failed: {e}")))?;
        tracing::info!(database = %redact_url(&config.database.url), "database ready");

        let tokens = Arc::new(TokenAuthority::hs256(
            config.jwt_secret.expose(),
            &config.jwt_issuer,
            &config.jwt_audience,
            config.access_token_ttl_seconds,
        ));
        let hasher = PasswordHasherPool::new(config.password_hash_concurrency)
            .await
            .map_err(|e| StartError::Bootstrap(e.to_string()))?;
        let auth = AuthService::new(
            store.clone(),
            hasher,
            tokens.clone(),
            AuthSettings {
                allow_registration: config.allow_registration,
                password_min_bytes: config.password_min_length,
            },
        );
        let keys = KeyService::new(store.clone(), Sealer::new(&config.master_key));

        let created_admin = match &config.bootstrap_admin {
            Some(admin) => bootstrap(&auth, admin).await?,
            None => None,
        };
        Ok(Self {
            store,
            auth,
            keys,
            tokens,
            created_admin,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves on `listener` until `shutdown` completes, then lets in-flight calls
    /// finish and closes the database pool.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let auth =
            AuthServer::new(AuthApi::new(self.auth)).max_decoding_message_size(MAX_REQUEST_BYTES);
        let keys =
            KeysServer::new(KeysApi::new(self.keys)).max_decoding_message_size(MAX_REQUEST_BYTES);
        tonic::transport::Server::builder()
            .layer(AuthLayer::new(self.tokens))
            .add_service(auth)
            .add_service(keys)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(|e| StartError::Serve(e.to_string()))?;
        if let Err(e) = self.store.close().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
        Ok(())
    }
}

async fn bootstrap(
    auth: &AuthService,
    admin: &crate::config::BootstrapAdmin,
) -> Result<Option<CreatedAdmin>, StartError> {
    let (password, generated) = match &admin.password {
        Some(p) => (p.clone(), None),
        None => {
            let p = Zeroizing::new(
                random::base62(BOOTSTRAP_PASSWORD_LEN)
                    .map_err(|e| StartError::Bootstrap(e.to_string()))?,
            );
            (p.clone(), Some(p))
        }
    };
    match auth.ensure_admin(&admin.username, password).await {
        Ok(true) => {
            tracing::info!(username = %admin.username, "bootstrap admin created");
            Ok(Some(CreatedAdmin {
                username: admin.username.clone(),
                generated_password: generated,
            }))
        }
        Ok(false) => Ok(None),
        Err(domain::Error::AlreadyExists(_)) => {
            tracing::warn!(username = %admin.username, "bootstrap admin not created: a non-admin user has that name");
            Ok(None)
        }
        Err(e) => Err(StartError::Bootstrap(e.to_string())),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight calls");
}
