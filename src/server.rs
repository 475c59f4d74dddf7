//! Assembles the server: store, signing keys, services, the bootstrap admin, the layers
//! (observe, auth), the listeners with their limits, and shutdown.

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use zeroize::Zeroizing;

use crate::{
    config::{Config, Limits, TlsFiles},
    crypto::{password::PasswordHasherPool, random},
    domain::{
        self,
        audit::AuditLog,
        audit_watch::AuditTail,
        auth::{AuthService, AuthSettings},
        cluster::Caches,
        keyring::Keyring,
        keys::KeyService,
        sessions::Authenticator,
        signing::SigningKeys,
        sweeper::Sweeper,
        throttle::LoginThrottle,
        token::{SigningAlgorithm, TokenAuthority},
        users::{UserAdmin, UserCreator},
    },
    grpc::{
        AuditApi, AuthApi, AuthLayer, Dispatch, ExtAuthz, KeyringApi, KeysApi, ObserveLayer,
        UsersApi,
    },
    health::DbHealth,
    http::HttpState,
    net::{self, ConnSettings, ConnectionLimiter, Protocols, Timeouts, TrustedProxies},
    proto::{
        FILE_DESCRIPTOR_SET,
        kms::v1::{
            audit_server::AuditServer, auth_server::AuthServer, keyring_server::KeyringServer,
            keys_server::KeysServer, users_server::UsersServer,
        },
    },
    store::{ServerLock, Store, redact_url},
    telemetry::Metrics,
};

/// Length of a generated bootstrap admin password (base62, about 143 bits).
const BOOTSTRAP_PASSWORD_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(String),
    /// Token signing or password hashing could not be set up.
    #[error("{0}")]
    Setup(String),
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
    caches: Arc<Caches>,
    _single_server: Option<ServerLock>,
    auth: AuthService,
    keys: KeyService,
    keyring: Keyring,
    users: UserAdmin,
    tokens: Arc<TokenAuthority>,
    metrics: Metrics,
    tls: Option<TlsFiles>,
    trusted_proxies: TrustedProxies,
    limits: Limits,
    ext_authz: bool,
    /// Serve the web console (KMS_UI).
    ui: bool,
    sweeper: Sweeper,
    pub created_admin: Option<CreatedAdmin>,
}

impl App {
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        // Calls give up at their deadline: database waits must end before it.
        let store = Store::connect_within(&config.database, config.limits.request_timeout * 3 / 4)
            .await
            .map_err(|e| StartError::Database(e.to_string()))?;
        let single_server = store
            .lock_single_server()
            .map_err(|e| StartError::Database(e.to_string()))?;
        store
            .migrate()
            .await
            .map_err(|e| StartError::Database(format!("migration failed: {e}")))?;
        tracing::info!(database = %redact_url(&config.database.url), "database ready");

        let master = config
            .open_master_key()
            .map_err(|e| StartError::Setup(e.to_string()))?;
        // One RewrapSecrets call works for at most half the call deadline.
        let keyring = Keyring::unlock(store.clone(), master, config.limits.request_timeout / 2)
            .await
            .map_err(|e| StartError::Setup(e.to_string()))?;
        let (tokens, signing) = token_authority(config, &store, &keyring).await?;
        let hasher = PasswordHasherPool::new(config.password_hash_concurrency)
            .await
            .map_err(|e| StartError::Setup(format!("password hashing: {e}")))?;
        let caches = Arc::new(Caches::for_store(&store));
        let authenticator = Arc::new(
            Authenticator::new(tokens.clone(), store.clone(), caches.clone())
                .with_signing_keys(signing.clone()),
        );
        // One set of counters: a password guessed through ChangePassword and through
        // Login is the same guessing.
        let throttle = LoginThrottle::for_store(config.login_throttle.clone(), &store);
        let auth = AuthService::new(
            store.clone(),
            hasher.clone(),
            authenticator.clone(),
            signing,
            throttle.clone(),
            AuthSettings {
                allow_registration: config.allow_registration,
                password_min_bytes: config.password_min_length,
                refresh_token_ttl_seconds: config.refresh_token_ttl_seconds,
                session_max_lifetime_seconds: config.retention.session_max_lifetime_seconds,
            },
        );
        let keys = KeyService::new(
            store.clone(),
            keyring.clone(),
            caches.clone(),
            config.limits.last_used_resolution,
        );
        let users = UserAdmin::new(
            store.clone(),
            hasher.clone(),
            authenticator,
            config.password_min_length,
            throttle,
        );

        let created_admin = match &config.bootstrap_admin {
            Some(admin) => {
                let creator = UserCreator::new(store.clone(), hasher, config.password_min_length);
                bootstrap(&creator, admin).await?
            }
            None => None,
        };
        let metrics = Metrics::new().map_err(|e| StartError::Serve(format!("metrics: {e}")))?;
        let sweeper = Sweeper::new(
            store.clone(),
            config.retention.sweep_settings(
                config.access_token_ttl_seconds,
                config.login_throttle.failure_window,
            ),
        );
        Ok(Self {
            store,
            caches,
            _single_server: single_server,
            auth,
            keys,
            keyring,
            users,
            tokens,
            metrics,
            tls: config.tls.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits.clone(),
            ext_authz: config.ext_authz,
            ui: config.ui,
            sweeper,
            created_admin,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` completes: then the listeners stop accepting, health
    /// turns NOT_SERVING, in-flight calls get `limits.shutdown_grace` to finish, and
    /// the database pool is closed.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let limits = self.limits.clone();
        let authenticator = self.auth.authenticator().clone();
        let max = limits.max_request_bytes;
        let (stop_tx, stop_rx) = watch::channel(false);

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let db_health = DbHealth::new(true);
        crate::health::report(&reporter, db_health.is_serving()).await;
        if let Some(signing) = self.auth.signing_keys() {
            tokio::spawn(refresh_signing_keys(
                signing.clone(),
                self.tokens.clone(),
                stop_rx.clone(),
            ));
        }
        // Deleting what has expired; stops with the listeners.
        let sweeper = {
            let metrics = self.metrics.clone();
            tokio::spawn(
                self.sweeper
                    .run(stop_rx.clone(), move |deleted| metrics.swept(deleted)),
            )
        };
        // Other replicas' changes: cache invalidation and signing key rotations.
        tokio::spawn(domain::cluster::follow(
            self.store.clone(),
            self.caches.clone(),
            self.auth
                .signing_keys()
                .map(|signing| (signing.clone(), self.tokens.clone())),
            self.keyring.clone(),
            stop_rx.clone(),
        ));
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Serve(format!("reflection: {e}")))?;
        // grpcurl releases still in wide use speak only v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartError::Serve(format!("reflection: {e}")))?;

        let auth = AuthServer::new(AuthApi::new(self.auth.clone(), self.metrics.clone()))
            .max_decoding_message_size(max);
        let keys = KeysServer::new(KeysApi::new(self.keys.clone(), self.metrics.clone()))
            .max_decoding_message_size(max);
        let users =
            UsersServer::new(UsersApi::new(self.users.clone())).max_decoding_message_size(max);
        // The audit stream's follower of the table, for as long as the server runs.
        let audit_tail = AuditTail::new(self.store.clone());
        tokio::spawn(audit_tail.clone().run(stop_rx.clone()));
        let audit_log = AuditLog::new(self.store.clone(), audit_tail);
        let audit = AuditServer::new(AuditApi::new(
            audit_log.clone(),
            self.auth.authenticator().clone(),
        ))
        .max_decoding_message_size(max);
        let keyring = KeyringServer::new(KeyringApi::new(self.keyring.clone()))
            .max_decoding_message_size(max);
        let ext_authz = self.ext_authz.then(|| {
            crate::grpc::ExtAuthzServer::new(ExtAuthz::new(
                self.auth.authenticator().clone(),
                self.keys.clone(),
                self.metrics.clone(),
            ))
            .max_decoding_message_size(max)
        });

        // One set of budgets for both listeners: a REST call and a gRPC call take
        // their slots from the same pools.
        let budgets = net::Budgets::new(&limits);
        let layers = tower::ServiceBuilder::new()
            .layer(ObserveLayer::new(
                self.metrics.clone(),
                budgets.clone(),
                limits.request_timeout,
                limits.connections.stream_idle_timeout,
            ))
            .layer(AuthLayer::new(self.auth.authenticator().clone()));
        // The services called most first: `Dispatch` compares names in this order.
        let mut routes = Dispatch::builder().add(keys).add(auth);
        if let Some(ext_authz) = ext_authz {
            routes = routes.add(ext_authz);
        }
        let routes = routes
            .add(health_service)
            .add(users)
            .add(audit)
            .add(keyring)
            .add(reflection_v1)
            .add(reflection_v1alpha);
        let grpc_service = layers.service(routes.build());

        // One TLS configuration for every port that carries secrets: the REST API
        // takes passwords and returns keys just as gRPC does.
        let (grpc_tls, http_tls) = match &self.tls {
            Some(files) => (
                Some(
                    net::server_config(files, &[b"h2"])
                        .map_err(|e| StartError::Serve(e.to_string()))?,
                ),
                Some(
                    net::server_config(files, &[b"h2", b"http/1.1"])
                        .map_err(|e| StartError::Serve(e.to_string()))?,
                ),
            ),
            None => (None, None),
        };
        let connections = &limits.connections;
        let limiter = ConnectionLimiter::new(
            net::limiter::fit_to_descriptors(connections.max_connections),
            connections.max_connections_per_peer,
        );
        tracing::info!(
            max_connections = limiter.max_total(),
            per_peer = connections.max_connections_per_peer,
            "connection limits"
        );
        let settings = ConnSettings {
            timeouts: Timeouts {
                handshake: connections.handshake_timeout,
                idle: connections.idle_timeout,
            },
            http2_max_streams: connections.http2_max_streams,
            trusted_proxies: self.trusted_proxies.clone(),
        };
        if !settings.trusted_proxies.is_empty() {
            tracing::info!(trusted_proxies = %settings.trusted_proxies, "x-forwarded-for is believed from these peers");
        }
        let grpc = net::serve(
            listeners.grpc,
            Protocols::Http2,
            grpc_tls,
            grpc_service,
            limiter.clone(),
            settings.clone(),
            stop_rx.clone(),
        );

        let http_state = HttpState {
            health: db_health.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            // The same services and token authority as gRPC: one set of rules.
            auth: self.auth,
            keys: self.keys,
            users: self.users,
            audit: audit_log,
            keyring: self.keyring.clone(),
            ui: crate::http::ui::UiSettings::new(self.ui, http_tls.is_some()),
            authenticator: authenticator.clone(),
            max_request_bytes: max,
            request_timeout: limits.request_timeout,
            budgets: budgets.clone(),
        };
        if self.ui && listeners.http.is_some() {
            tracing::info!("web console at /ui/ on the HTTP listener (KMS_UI=false turns it off)");
        }
        let probe = listeners.probe.map(|listener| {
            net::serve(
                listener,
                Protocols::Any,
                None,
                crate::http::probe_router(http_state.clone()),
                limiter.clone(),
                settings.clone(),
                stop_rx.clone(),
            )
        });
        let http = listeners.http.map(|listener| {
            net::serve(
                listener,
                Protocols::Any,
                http_tls,
                crate::http::router(http_state),
                limiter.clone(),
                settings,
                stop_rx.clone(),
            )
        });
        let monitor = tokio::spawn(crate::health::monitor(
            self.store.clone(),
            reporter,
            db_health.clone(),
            move || budgets.refusing_everything(),
            stop_rx.clone(),
        ));

        // The signal flips `stop`; everything above watches it.
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let grace = async {
            wait_for(stop_rx.clone()).await;
            tokio::time::sleep(limits.shutdown_grace).await;
        };
        let served = async {
            tokio::join!(
                grpc,
                async {
                    if let Some(http) = http {
                        http.await;
                    }
                },
                async {
                    if let Some(probe) = probe {
                        probe.await;
                    }
                },
            );
        };
        tokio::select! {
            () = served => {}
            ((), ()) = async { tokio::join!(signal, grace) } => {
                tracing::warn!(grace = ?limits.shutdown_grace, "shutdown grace period over; closing the remaining connections");
            }
        }
        let _ = monitor.await;
        // A batch in flight finishes (it is short); no new one starts.
        let _ = sweeper.await;
        if let Err(e) = self.store.close().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
        Ok(())
    }
}

/// The listeners a server runs on: gRPC, optionally the HTTP side, and optionally a
/// plaintext listener for `/health` and `/metrics` alone (`KMS_PROBE_ADDR`).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    pub probe: Option<TcpListener>,
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// How often signing keys are re-read, to pick up rotations made by other replicas
/// and drop keys whose tokens have all expired.
const SIGNING_KEY_REFRESH: std::time::Duration = crate::domain::signing::REFRESH_INTERVAL;

async fn token_authority(
    config: &Config,
    store: &Store,
    keyring: &Keyring,
) -> Result<(Arc<TokenAuthority>, Option<SigningKeys>), StartError> {
    let (issuer, audience, ttl) = (
        config.jwt_issuer.as_str(),
        config.jwt_audience.as_str(),
        config.access_token_ttl_seconds,
    );
    match config.jwt_algorithm {
        SigningAlgorithm::Hs256 => {
            let secret = config.jwt_secret.as_ref().ok_or_else(|| {
                StartError::Setup("KMS_JWT_ALGORITHM=HS256 needs KMS_JWT_SECRET".into())
            })?;
            let tokens = TokenAuthority::hs256(secret.expose(), issuer, audience, ttl);
            Ok((Arc::new(tokens), None))
        }
        SigningAlgorithm::EdDsa | SigningAlgorithm::Rs256 => {
            let signing =
                SigningKeys::new(store.clone(), keyring.clone(), config.jwt_algorithm, ttl);
            let keys = signing
                .load_or_create()
                .await
                .map_err(|e| StartError::Setup(format!("signing keys: {e:?}")))?;
            let tokens = TokenAuthority::asymmetric(&keys, issuer, audience, ttl)
                .map_err(|e| StartError::Setup(format!("signing keys: {e}")))?;
            Ok((Arc::new(tokens), Some(signing)))
        }
    }
}

async fn refresh_signing_keys(
    signing: SigningKeys,
    tokens: Arc<TokenAuthority>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(SIGNING_KEY_REFRESH) => {}
        }
        if let Err(e) = signing.refresh(&tokens).await {
            tracing::warn!(error = %e, "signing keys could not be refreshed");
        }
    }
}

async fn bootstrap(
    creator: &UserCreator,
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
    match creator.ensure_admin(&admin.username, password).await {
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
