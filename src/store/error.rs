use sea_orm::{DbErr, RuntimeErr, SqlErr};

/// A store failure, classified for the domain: conflicts are answers, unavailability
/// is retryable, the rest is a bug or corruption (logged, never shown to clients).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated")]
    Conflict,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database error: {0}")]
    Other(String),
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(_)) = err.sql_err() {
            return Self::Conflict;
        }
        let unavailable = match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                is_transient(e)
            }
            _ => false,
        };
        if unavailable {
            Self::Unavailable(err.to_string())
        } else {
            Self::Other(err.to_string())
        }
    }
}

fn is_transient(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|code| {
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) and their extended codes
            // after the busy timeout. PostgreSQL: class 08 (connection exception),
            // 53 (insufficient resources), 57P0x (server shutting down), 40001/40P01
            // (serialization failure, deadlock): all worth a retry by the client.
            // (The SQLite test only on SQLite: a numeric SQLSTATE such as 22021, a NUL
            // in a string, would pass it.)
            let code = code.as_ref();
            let sqlite = db
                .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                .is_some();
            (sqlite
                && code
                    .parse::<u32>()
                    .is_ok_and(|c| c & 0xff == 5 || c & 0xff == 6))
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}
