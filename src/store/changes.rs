//! Change announcements between replicas. A transaction that changes something other
//! replicas may hold in a cache announces it with PostgreSQL's NOTIFY, which is
//! delivered exactly when, and only if, the transaction commits, in commit order. Every
//! replica LISTENs. SQLite serves one process: there, announcing is a no-op.

use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DbBackend, Statement,
    sqlx::postgres::{PgListener, PgPool, PgPoolOptions},
};

use super::{Store, StoreError};

/// The one channel every replica listens on.
const CHANNEL: &str = "kms_changes";

/// Something other replicas may have cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key's secrets or state changed (rotation, revocation).
    Key(String),
    /// A login ended (logout, refresh token reuse).
    Session(String),
    /// A user's roles, password or existence changed.
    User(String),
    /// The token signing keys changed.
    SigningKeys,
    /// A data key was added to the keyring, or the keyring re-wrapped.
    Keyring,
    /// A replica's heartbeat: proves the channel delivers (see `domain::cluster`).
    Beat { replica: String, sent_ms: u64 },
}

impl Change {
    pub fn encode(&self) -> String {
        match self {
            Self::Key(name) => format!("k:{name}"),
            Self::Session(sid) => format!("s:{sid}"),
            Self::User(name) => format!("u:{name}"),
            Self::SigningKeys => "j:".to_owned(),
            Self::Keyring => "d:".to_owned(),
            Self::Beat { replica, sent_ms } => format!("b:{replica}:{sent_ms}"),
        }
    }

    /// `None` for a payload this version does not know (a newer replica's).
    pub fn decode(payload: &str) -> Option<Self> {
        let (kind, rest) = payload.split_once(':')?;
        Some(match kind {
            "k" => Self::Key(rest.to_owned()),
            "s" => Self::Session(rest.to_owned()),
            "u" => Self::User(rest.to_owned()),
            "j" => Self::SigningKeys,
            "d" => Self::Keyring,
            "b" => {
                let (replica, sent) = rest.rsplit_once(':')?;
                Self::Beat {
                    replica: replica.to_owned(),
                    sent_ms: sent.parse().ok()?,
                }
            }
            _ => return None,
        })
    }
}

/// Announces a change from inside the transaction that makes it.
pub(super) async fn announce(db: &impl ConnectionTrait, change: Change) -> Result<(), StoreError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), change.encode().into()],
    ))
    .await?;
    Ok(())
}

/// How long connecting the listener's own connections may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A replica's ear on the channel, with a connection of its own for heartbeats, so
/// that neither waits behind the request pool.
pub struct ChangeFeed {
    listener: PgListener,
    beats: PgPool,
}

/// What the feed heard.
#[derive(Debug)]
pub enum Heard {
    Change(Change),
    /// The connection dropped and was re-established: anything sent in between is lost.
    Reconnected,
    /// A payload this version does not know (a newer replica's).
    Unknown,
}

impl ChangeFeed {
    /// `None` on SQLite, where there are no other replicas to hear.
    pub async fn connect(store: &Store) -> Result<Option<Self>, StoreError> {
        let Some(url) = store.postgres_url() else {
            return Ok(None);
        };
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy(url)
            .map_err(|e| StoreError::Unavailable(redacted(&e, url)))?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(redacted(&e, url)))?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| StoreError::Unavailable(redacted(&e, url)))?;
        Ok(Some(Self {
            listener,
            beats: pool,
        }))
    }

    /// The next thing heard. Errors mean the connection is down and could not be
    /// re-established yet; call again (after a pause) to retry.
    pub async fn next(&mut self) -> Result<Heard, StoreError> {
        match self.listener.try_recv().await {
            Ok(Some(notification)) => {
                Ok(Change::decode(notification.payload()).map_or(Heard::Unknown, Heard::Change))
            }
            Ok(None) => Ok(Heard::Reconnected),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Sends on the feed's own connection (heartbeats), from another task.
    pub fn sender(&self) -> ChangeSender {
        ChangeSender(self.beats.clone())
    }
}

#[derive(Clone)]
pub struct ChangeSender(PgPool);

impl ChangeSender {
    /// Sends at once, outside any transaction.
    pub async fn send(&self, change: &Change) -> Result<(), StoreError> {
        sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(change.encode())
            .execute(&self.0)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

fn redacted(err: &sea_orm::sqlx::Error, url: &str) -> String {
    err.to_string().replace(url, &super::redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn payloads_round_trip() {
        for change in [
            Change::Key("billing.api-v2".into()),
            Change::Session("c2lk".into()),
            Change::User("alice@example.com".into()),
            Change::SigningKeys,
            Change::Beat {
                replica: "0a1b".into(),
                sent_ms: 12345,
            },
        ] {
            assert_eq!(Change::decode(&change.encode()), Some(change));
        }
        assert_eq!(Change::decode("x:whatever"), None);
        assert_eq!(Change::decode("nonsense"), None);
        assert_eq!(Change::decode("b:r:notanumber"), None);
    }
}
