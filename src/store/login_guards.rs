//! The login throttle's per-username counters shared by PostgreSQL replicas. Each
//! change reads the row under a row lock, lets the domain decide, and writes the
//! result in the same short transaction, so replicas never count past each other.

use sea_orm::{
    ActiveValue::Set, EntityTrait, QuerySelect, TransactionTrait, sea_query::OnConflict,
};

use super::{Store, StoreError, entities::login_guard};

pub use login_guard::Model as GuardRow;

/// The row of a name with nothing to remember (as inserted to be locked).
fn empty(username: &str) -> GuardRow {
    GuardRow {
        username: username.to_owned(),
        failures: 0,
        last_failure: None,
        locked_until: None,
        pending: 0,
        pending_until: None,
    }
}

impl Store {
    /// Reads the row of `username` (locked until commit), and stores what `decide`
    /// makes of it: `None` deletes the row.
    pub async fn update_login_guard<T>(
        &self,
        username: &str,
        decide: impl FnOnce(Option<GuardRow>) -> (Option<GuardRow>, T),
    ) -> Result<T, StoreError> {
        let txn = self.db.begin().await?;
        // A row to lock even for a name never seen: two replicas' first attempts
        // then take turns instead of both inserting.
        login_guard::Entity::insert(login_guard::ActiveModel {
            username: Set(username.to_owned()),
            failures: Set(0),
            last_failure: Set(None),
            locked_until: Set(None),
            pending: Set(0),
            pending_until: Set(None),
        })
        .on_conflict(
            OnConflict::column(login_guard::Column::Username)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let row = login_guard::Entity::find_by_id(username.to_owned())
            .lock_exclusive()
            .one(&txn)
            .await?
            .filter(|row| *row != empty(username));
        let (next, answer) = decide(row);
        match next {
            Some(next) => {
                login_guard::Entity::update(login_guard::ActiveModel {
                    username: Set(username.to_owned()),
                    failures: Set(next.failures),
                    last_failure: Set(next.last_failure),
                    locked_until: Set(next.locked_until),
                    pending: Set(next.pending),
                    pending_until: Set(next.pending_until),
                })
                .exec(&txn)
                .await?;
            }
            None => {
                login_guard::Entity::delete_by_id(username.to_owned())
                    .exec(&txn)
                    .await?;
            }
        }
        txn.commit().await?;
        Ok(answer)
    }
}
