//! Sessions (logins) and their refresh tokens.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::Expr,
};

use super::{
    AuditRecord, Store, StoreError, StoredUser,
    audit::insert_audit,
    changes::{Change, announce},
    entities::{refresh_token, session, user},
};

/// What every authenticated call checks about the login behind its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub username: String,
    pub token_version: i64,
    pub revoked: bool,
}

/// A refresh token ready to store: its digest only.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub digest: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

impl NewRefreshToken {
    /// No refresh token outlives the end of its login's chain.
    pub fn within(self, chain_end: DateTime<Utc>) -> Self {
        Self {
            expires_at: self.expires_at.min(chain_end),
            ..self
        }
    }
}

/// When a login's refresh chain ends: its `max_expires_at`, or, for a session that a
/// previous release inserted during a rolling upgrade (NULL), its login time plus
/// `unset_lifetime` (the configured maximum lifetime). The sweeper's SQL says the same
/// (`store::sweep`).
pub(super) fn chain_end(
    session: &session::Model,
    unset_lifetime: chrono::Duration,
) -> DateTime<Utc> {
    session
        .max_expires_at
        .unwrap_or_else(|| session.created_at + unset_lifetime)
}

/// The rows a refresh writes: one for an exchange, one for detected reuse. The store
/// names the user in whichever it writes.
#[derive(Debug, Clone)]
pub struct RefreshAudit {
    pub exchanged: AuditRecord,
    pub reused: AuditRecord,
}

impl AuditRecord {
    fn about(mut self, username: &str) -> Self {
        self.actor = username.to_owned();
        self.target = username.to_owned();
        self
    }
}

#[derive(Debug)]
pub enum RefreshOutcome {
    /// The token was current: it is spent now, and its successor stored.
    Exchanged {
        session_id: String,
        user: StoredUser,
        /// The successor's expiry, capped at the end of the chain.
        refresh_expires_at: DateTime<Utc>,
    },
    /// The login is older than its maximum lifetime: its chain has ended.
    LifetimeEnded,
    /// The token had been spent before: the whole session is now revoked.
    Reused {
        session_id: String,
        username: String,
    },
    /// Unknown, expired, or of a revoked session.
    Invalid,
}

async fn insert_refresh(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: NewRefreshToken,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        id: NotSet,
        session_id: Set(session_id.to_owned()),
        digest: Set(token.digest),
        created_at: Set(now),
        expires_at: Set(token.expires_at),
        spent_at: Set(None),
    })
    .exec(db)
    .await?;
    Ok(())
}

async fn revoke(
    db: &impl ConnectionTrait,
    session_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(Some(now)))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(done.rows_affected > 0)
}

impl Store {
    /// A new login, with its first refresh token when it has one (capped at
    /// `max_expires_at`, the end of the login's refresh chain).
    pub async fn create_session(
        &self,
        session_id: &str,
        user_id: i64,
        refresh: Option<NewRefreshToken>,
        now: DateTime<Utc>,
        max_expires_at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        session::Entity::insert(session::ActiveModel {
            id: Set(session_id.to_owned()),
            user_id: Set(user_id),
            created_at: Set(now),
            max_expires_at: Set(Some(max_expires_at)),
            revoked_at: Set(None),
        })
        .exec(&txn)
        .await?;
        if let Some(refresh) = refresh {
            insert_refresh(&txn, session_id, refresh.within(max_expires_at), now).await?;
        }
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn session_state(
        &self,
        session_id: &str,
    ) -> Result<Option<SessionState>, StoreError> {
        // The id comes from a token's claims. One that no session can have (PostgreSQL
        // text cannot hold NUL, and the query would fail) is simply not found.
        if session_id.contains('\0') {
            return Ok(None);
        }
        let found = session::Entity::find_by_id(session_id.to_owned())
            .find_also_related(user::Entity)
            .one(&self.db)
            .await?;
        Ok(found.and_then(|(session, user)| {
            user.map(|user| SessionState {
                username: user.username,
                token_version: user.token_version,
                revoked: session.revoked_at.is_some(),
            })
        }))
    }

    /// Exchanges a refresh token for its successor, once; the successor expires no
    /// later than the chain's end. Presenting a spent token revokes its session (RFC
    /// 9700 section 4.14: refresh token reuse detection). After the chain's end every
    /// token of it is refused (`LifetimeEnded`), spent or not. `unset_lifetime`: see
    /// `chain_end`.
    pub async fn exchange_refresh_token(
        &self,
        digest: &[u8],
        successor: NewRefreshToken,
        now: DateTime<Utc>,
        unset_lifetime: chrono::Duration,
        audit: RefreshAudit,
    ) -> Result<RefreshOutcome, StoreError> {
        let txn = self.db.begin().await?;
        // Spending first takes the write lock: of two concurrent exchanges of one
        // token, exactly one spends it and the other sees reuse.
        let spent = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::SpentAt, Expr::value(Some(now)))
            .filter(refresh_token::Column::Digest.eq(digest.to_vec()))
            .filter(refresh_token::Column::SpentAt.is_null())
            .exec_with_returning(&txn)
            .await?;
        let Some(token) = spent.into_iter().next() else {
            let earlier = refresh_token::Entity::find()
                .filter(refresh_token::Column::Digest.eq(digest.to_vec()))
                .find_also_related(session::Entity)
                .one(&txn)
                .await?;
            let Some((token, Some(session))) = earlier else {
                return Ok(RefreshOutcome::Invalid);
            };
            if chain_end(&session, unset_lifetime) <= now {
                return Ok(RefreshOutcome::LifetimeEnded);
            }
            // An expired token presented again is just expired, not a sign of theft.
            if token.expires_at <= now {
                return Ok(RefreshOutcome::Invalid);
            }
            revoke(&txn, &token.session_id, now).await?;
            let username = user::Entity::find_by_id(session.user_id)
                .one(&txn)
                .await?
                .map(|u| u.username)
                .unwrap_or_default();
            insert_audit(&txn, audit.reused.about(&username)).await?;
            announce(&txn, Change::Session(token.session_id.clone())).await?;
            txn.commit().await?;
            return Ok(RefreshOutcome::Reused {
                session_id: token.session_id,
                username,
            });
        };
        let session = session::Entity::find_by_id(token.session_id.clone())
            .one(&txn)
            .await?;
        let Some(session) = session.filter(|s| s.revoked_at.is_none()) else {
            txn.commit().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let chain_end = chain_end(&session, unset_lifetime);
        if chain_end <= now {
            txn.commit().await?;
            return Ok(RefreshOutcome::LifetimeEnded);
        }
        if token.expires_at <= now {
            txn.commit().await?;
            return Ok(RefreshOutcome::Invalid);
        }
        let Some(found) = user::Entity::find_by_id(session.user_id).one(&txn).await? else {
            txn.commit().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let user = self.with_roles(found, &txn).await?;
        let successor = successor.within(chain_end);
        let refresh_expires_at = successor.expires_at;
        insert_refresh(&txn, &session.id, successor, now).await?;
        insert_audit(&txn, audit.exchanged.about(&user.username)).await?;
        txn.commit().await?;
        Ok(RefreshOutcome::Exchanged {
            session_id: session.id,
            user,
            refresh_expires_at,
        })
    }

    /// Logout: every token of the session is refused from now on.
    pub async fn revoke_session(
        &self,
        session_id: &str,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let revoked = revoke(&txn, session_id, now).await?;
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::Session(session_id.to_owned())).await?;
        txn.commit().await?;
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};

    use super::{NewRefreshToken, chain_end, session};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_refresh_token_never_outlives_its_chain() {
        let token = |expires_at| NewRefreshToken {
            digest: vec![1; 32],
            expires_at,
        };
        assert_eq!(token(at(500)).within(at(100)).expires_at, at(100));
        assert_eq!(token(at(50)).within(at(100)).expires_at, at(50));
        assert_eq!(token(at(100)).within(at(100)).digest, vec![1; 32]);
    }

    #[test]
    fn a_session_without_an_end_ends_its_lifetime_after_login() {
        let mut s = session::Model {
            id: "sid".into(),
            user_id: 1,
            created_at: at(1_000),
            max_expires_at: Some(at(3_000)),
            revoked_at: None,
        };
        assert_eq!(chain_end(&s, Duration::seconds(60)), at(3_000));
        s.max_expires_at = None;
        assert_eq!(chain_end(&s, Duration::seconds(60)), at(1_060));
    }
}
