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
    },
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
    /// A new login, with its first refresh token when it has one.
    pub async fn create_session(
        &self,
        session_id: &str,
        user_id: i64,
        refresh: Option<NewRefreshToken>,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        session::Entity::insert(session::ActiveModel {
            id: Set(session_id.to_owned()),
            user_id: Set(user_id),
            created_at: Set(now),
            revoked_at: Set(None),
        })
        .exec(&txn)
        .await?;
        if let Some(refresh) = refresh {
            insert_refresh(&txn, session_id, refresh, now).await?;
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

    /// Exchanges a refresh token for its successor, once. Presenting a spent token
    /// revokes its session (RFC 9700 section 4.14: refresh token reuse detection).
    pub async fn exchange_refresh_token(
        &self,
        digest: &[u8],
        successor: NewRefreshToken,
        now: DateTime<Utc>,
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
        let live =
            token.expires_at > now && session.as_ref().is_some_and(|s| s.revoked_at.is_none());
        let (Some(session), true) = (session, live) else {
            txn.commit().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let Some(found) = user::Entity::find_by_id(session.user_id).one(&txn).await? else {
            txn.commit().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let user = self.with_roles(found, &txn).await?;
        insert_refresh(&txn, &session.id, successor, now).await?;
        insert_audit(&txn, audit.exchanged.about(&user.username)).await?;
        txn.commit().await?;
        Ok(RefreshOutcome::Exchanged {
            session_id: session.id,
            user,
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
