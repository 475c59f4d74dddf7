//! Persistence: SeaORM entities and the queries over them. The only module that knows
//! SQL exists; it knows nothing of requests or domain rules.

mod audit;
pub mod entities;
mod error;
mod keys;
mod seed;
mod sessions;
mod signing_keys;
mod users;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;

pub use audit::{AuditFilter, AuditRecord, StoredAuditEvent};
pub use error::StoreError;
pub use keys::{CreateConflict, KeyWithSecret, NewKey, NewSecret, Rotation};
pub use sessions::{NewRefreshToken, RefreshAudit, RefreshOutcome, SessionState};
pub use signing_keys::{NewSigningKey, StoredSigningKey};
pub use users::{AdminGuarded, StoredUser, UserRecord};

use crate::migrations::Migrator;

/// How long a query waits for a pool connection, or SQLite for a lock, before the
/// call fails with UNAVAILABLE instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The URL without its password (`postgres://user:secret@host` -> `postgres://user:***@host`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let url = options.url.as_str();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(StoreError::Config(
                "KMS_DATABASE_URL must start with sqlite:// or postgres://".into(),
            ));
        }
        if url.starts_with("sqlite:") {
            create_sqlite_parent_dir(url)?;
        }
        let mut opts = ConnectOptions::new(url);
        opts.max_connections(options.max_connections)
            .min_connections(1)
            .connect_timeout(ACQUIRE_TIMEOUT)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Statement logging would print digests, sealed secrets and password
            // hashes at debug level: off, always.
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    // FULL: an acknowledged key survives power loss, not just a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true)
            });
        // Driver errors may quote the URL, password and all: never pass that on.
        let db = Database::connect(opts).await.map_err(|e| {
            let message = e.to_string().replace(url, &redact_url(url));
            match StoreError::from(e) {
                StoreError::Unavailable(_) if message.contains("cannot be parsed") => {
                    StoreError::Config(message)
                }
                StoreError::Unavailable(_) => StoreError::Unavailable(message),
                _ => StoreError::Other(message),
            }
        })?;
        if url.starts_with("sqlite:") {
            restrict_sqlite_files(url);
        }
        Ok(Self { db })
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None).await.map_err(StoreError::from)
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::from)
    }

    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await.map_err(StoreError::from)
    }
}

/// The database holds password hashes and sealed secrets: owner-only, like the key
/// files. Best effort (a read-only mount may refuse); SQLite gives later -wal and -shm
/// files the database file's mode.
fn restrict_sqlite_files(url: &str) {
    #[cfg(unix)]
    if let Ok(opts) = url.parse::<SqliteConnectOptions>() {
        use std::os::unix::fs::PermissionsExt;
        let db = opts.get_filename().to_path_buf();
        let mut paths = vec![db.clone()];
        for suffix in ["-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            paths.push(p.into());
        }
        for path in paths.iter().filter(|p| p.exists()) {
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot restrict database file permissions");
            }
        }
    }
}

/// SQLite creates the file (`mode=rwc`) but not its folder.
fn create_sqlite_parent_dir(url: &str) -> Result<(), StoreError> {
    let opts: SqliteConnectOptions = url
        .parse()
        .map_err(|_| StoreError::Config("KMS_DATABASE_URL is not a valid SQLite URL".into()))?;
    if let Some(parent) = opts.get_filename().parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Store, StoreError, StoreOptions, redact_url};

    #[tokio::test]
    async fn connection_errors_never_carry_the_password() {
        for url in [
            "postgres://kms:SECRETPW@[bad/x",
            "postgres://kms:SECRETPW@127.0.0.1:1/kms",
            "mysql://kms:SECRETPW@h/x",
        ] {
            let options = StoreOptions {
                url: url.into(),
                max_connections: 1,
            };
            let err = Store::connect(&options).await.unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("SECRETPW"), "{text}");
            if url.starts_with("mysql") {
                assert!(matches!(err, StoreError::Config(_)));
            }
        }
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://kms:s3cret@db:5432/kms"),
            "postgres://kms:***@db:5432/kms"
        );
        assert_eq!(redact_url("postgres://kms@db/kms"), "postgres://kms@db/kms");
        assert_eq!(
            redact_url("postgres://kms:p%40ss@db/kms"),
            "postgres://kms:***@db/kms"
        );
        assert_eq!(
            redact_url("sqlite://kms-data/kms.db?mode=rwc"),
            "sqlite://kms-data/kms.db?mode=rwc"
        );
    }
}
