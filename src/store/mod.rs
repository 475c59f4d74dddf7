//! Persistence: SeaORM entities and the queries over them. The only module that knows
//! SQL exists; it knows nothing of requests or domain rules.

mod audit;
mod audit_coalesce;
mod backup;
mod changes;
pub mod entities;
mod error;
mod key_policy;
mod keyring;
mod keys;
mod login_guards;
mod sealed;
mod seed;
mod sessions;
mod signing_keys;
mod sweep;
mod users;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;

pub use audit::{AuditFilter, AuditRecord, StoredAuditEvent, audit_batch_len};
pub use backup::sqlite_file;
pub use changes::{Change, ChangeFeed, ChangeSender, Heard};
pub use error::StoreError;
pub use key_policy::{KeyUpdate, LeaseAsk, Spend, StoredPolicy};
pub use keyring::{
    DataKeyInsert, MasterRewrap, NewDataKey, Resealed, SealedBy, SealedKind, SealedValue,
    StoredDataKey,
};
pub use keys::{CreateConflict, KeyWithSecret, NewKey, NewSecret, Rotation};
pub use login_guards::GuardRow;
pub use sealed::{SealedSample, SealedSamples};
pub use sessions::{NewRefreshToken, RefreshAudit, RefreshOutcome, SessionState};
pub use signing_keys::{NewSigningKey, StoredSigningKey};
pub use sweep::{Batch, SWEEP_LOCK, Sweep, SweptRows};
pub use users::{AdminGuarded, StoredUser, UserRecord};

use crate::migrations::Migrator;

/// How long a query waits for a pool connection, or SQLite for a lock, before the
/// call fails with UNAVAILABLE instead of hanging (at most: a server with a shorter
/// call deadline waits less, see `Store::connect_within`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Any two `kms` processes migrating one PostgreSQL database take turns on this
/// advisory lock (an arbitrary constant: "kms" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b_6d_73;

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

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// For the change feed's own connections (PostgreSQL only).
    pg_url: Option<std::sync::Arc<str>>,
    /// The database file (SQLite only).
    sqlite_file: Option<std::path::PathBuf>,
    /// The longest any query waits for a connection or a lock.
    wait: Duration,
    /// Refusals counted but not yet written, shared by every clone.
    refusals: std::sync::Arc<audit_coalesce::Refusals>,
}

/// Held by the one server a SQLite database may have; released when dropped.
///
/// Drop it only after the pool is closed. It holds a descriptor of the database file,
/// and closing any descriptor of a file releases every POSIX (`fcntl`) lock the process
/// holds on that file: SQLite's own locks, taken through its connections' descriptors.
/// Closed while the pool still works, the other connections would go on believing they
/// hold locks that another process could then take.
#[derive(Debug)]
pub struct ServerLock {
    /// `flock` on `<database>.lock` (of the canonical path): what earlier releases
    /// take, so that one of them started on the same file still conflicts.
    _lock_file: std::fs::File,
    /// `flock` on the database file itself, whatever path (symlink, hard link) it was
    /// opened by. On Linux `flock` locks are independent of the `fcntl` locks SQLite
    /// uses, so the two do not interfere.
    _db_file: std::fs::File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        Self::connect_within(options, ACQUIRE_TIMEOUT).await
    }

    /// `connect`, waiting at most `wait` for a connection or a lock in any later query
    /// (capped at 5 s): a server whose calls have a deadline must answer UNAVAILABLE
    /// before it, not DEADLINE_EXCEEDED.
    pub async fn connect_within(
        options: &StoreOptions,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        let wait = wait.clamp(Duration::from_millis(100), ACQUIRE_TIMEOUT);
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
        if url.starts_with("sqlite:") {
            // A SQLite connection is a file handle of this process: no server or proxy
            // can have dropped it, and the ping before each checkout cost every query
            // an extra round trip to the connection's thread.
            opts.test_before_acquire(false);
        }
        opts.max_connections(options.max_connections)
            .min_connections(1)
            .connect_timeout(wait)
            .acquire_timeout(wait)
            // Statement logging would print digests, sealed secrets and password
            // hashes at debug level: off, always.
            .sqlx_logging(false)
            // Statement spans (traces) carry the operation, never the SQL text.
            .record_stmt_in_spans(false)
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    // FULL: an acknowledged key survives power loss, not just a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT.min(wait))
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
        let (pg_url, sqlite_file) = if url.starts_with("sqlite:") {
            restrict_sqlite_files(url);
            let file = url
                .parse::<SqliteConnectOptions>()
                .ok()
                .map(|o| o.get_filename().to_path_buf())
                .filter(|f| !f.as_os_str().is_empty() && f.as_os_str() != ":memory:");
            (None, file)
        } else {
            (Some(url.into()), None)
        };
        Ok(Self {
            db,
            pg_url,
            sqlite_file,
            wait,
            refusals: audit_coalesce::Refusals::new(audit_coalesce::Limits::DEFAULT),
        })
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    fn postgres_url(&self) -> Option<&str> {
        self.pg_url.as_deref()
    }

    /// The longest a query waits for a connection or a lock before it fails as
    /// unavailable: the bound for anyone waiting on the database indirectly.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Whether other processes may share this database (PostgreSQL: replicas).
    pub fn is_shared(&self) -> bool {
        self.pg_url.is_some()
    }

    /// A SQLite database serves one server: its caches see every change only because
    /// every change passes through it. Takes an exclusive lock on the database file
    /// itself and on `<file>.lock` for as long as the returned guard lives (see
    /// `ServerLock` for when to drop it); `Config` error if another server holds either,
    /// whichever path (a symlink, a hard link) it opened the file by. `None` for
    /// PostgreSQL, which any number of replicas share.
    pub fn lock_single_server(&self) -> Result<Option<ServerLock>, StoreError> {
        let Some(db_file) = &self.sqlite_file else {
            return Ok(None);
        };
        let real = std::fs::canonicalize(db_file).map_err(|e| {
            StoreError::Config(format!("cannot resolve {}: {e}", db_file.display()))
        })?;
        let in_use = || {
            let shown = if real == *db_file {
                db_file.display().to_string()
            } else {
                format!("{} (that is {})", db_file.display(), real.display())
            };
            StoreError::Config(format!(
                "another kms server is using {shown}: SQLite serves exactly one server; use PostgreSQL to run several replicas"
            ))
        };
        let try_lock = |file: &std::fs::File, path: &std::path::Path| match file.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => Err(in_use()),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Config(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        };
        // The lock file first: a second server on the same path (or a symlink to it)
        // is refused without ever opening a descriptor of the database file, whose
        // closing would release this process's SQLite locks (see `ServerLock`).
        let mut lock_path = real.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let lock_file = options
            .open(&lock_path)
            .map_err(|e| StoreError::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        // One left by an earlier release may be world-readable. Nothing is in it, but
        // nothing of the database's should be: best effort, like the database's mode.
        restrict(&lock_path);
        try_lock(&lock_file, &lock_path)?;
        // Then the file itself: the only name two hard links share.
        let db = std::fs::File::open(&real)
            .map_err(|e| StoreError::Config(format!("cannot open {}: {e}", real.display())))?;
        try_lock(&db, &real)?;
        Ok(Some(ServerLock {
            _lock_file: lock_file,
            _db_file: db,
        }))
    }

    /// Applies pending migrations. On PostgreSQL, replicas starting together take
    /// turns (an advisory lock held on a connection of its own), so each sees the
    /// others' work instead of racing them into a unique violation.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if !self.is_shared() {
            return Migrator::up(&self.db, None).await.map_err(StoreError::from);
        }
        let pool = self.db.get_postgres_connection_pool();
        let mut turn = pool
            .acquire()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *turn)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let migrated = Migrator::up(&self.db, None).await.map_err(StoreError::from);
        // Closing the session would release the lock too; say so explicitly.
        let unlocked = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *turn)
            .await;
        if unlocked.is_err() {
            turn.close_on_drop();
        }
        migrated
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::from)
    }

    /// Writes the refusals still being counted, then closes the pool.
    pub async fn close(self) -> Result<(), StoreError> {
        self.refusals.close(&self.db, self.wait).await;
        self.db.close().await.map_err(StoreError::from)
    }
}

/// The database holds password hashes and sealed secrets: owner-only, like the key
/// files. Best effort (a read-only mount may refuse); SQLite gives later -wal and -shm
/// files the database file's mode.
fn restrict_sqlite_files(url: &str) {
    #[cfg(unix)]
    if let Ok(opts) = url.parse::<SqliteConnectOptions>() {
        let db = opts.get_filename().to_path_buf();
        let mut paths = vec![db.clone()];
        for suffix in ["-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            paths.push(p.into());
        }
        for path in paths.iter().filter(|p| p.exists()) {
            restrict(path);
        }
    }
}

/// Mode 0600 unless it is already, with a warning when that fails.
fn restrict(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
        if !private
            && let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot restrict database file permissions");
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
        // Owner-only when we create it: it will hold the database and its WAL.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(parent)
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
