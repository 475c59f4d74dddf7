//! The audit trail. Changes insert their row inside their own transaction (through
//! `insert_audit`); events that change nothing (a read) are appended on their own, and
//! refusals anyone can repeat at will are coalesced first (`audit_coalesce`).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{Store, StoreError, entities::audit_event};

pub use audit_event::Model as StoredAuditEvent;

/// One event, as the domain describes it. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub outcome: &'static str,
    pub client_addr: Option<String>,
    pub request_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// At most `max` characters, control characters replaced by U+FFFD: a recorded value
/// can come from a client (the prefix of a presented key), and PostgreSQL text cannot
/// hold NUL, nor should a log viewer meet escape sequences.
fn clip(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// The largest power of two not above `n` (1 for 0).
fn largest_power_of_two_within(n: usize) -> usize {
    1 << n.max(1).ilog2()
}

/// How many of `queued` events a writer should hand to `audit_many` at once: the
/// largest power of two, which goes in as one statement (one round trip, its own
/// commit) in one of a few prepared shapes.
pub fn audit_batch_len(queued: usize) -> usize {
    largest_power_of_two_within(queued).min(queued)
}

fn active(record: AuditRecord) -> audit_event::ActiveModel {
    active_counted(record, 1)
}

/// The row for `count` identical events (see `audit_coalesce`).
pub(super) fn active_counted(record: AuditRecord, count: i64) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        id: NotSet,
        at: Set(record.at),
        actor: Set(clip(&record.actor, 64)),
        action: Set(record.action.to_owned()),
        target: Set(clip(&record.target, 128)),
        outcome: Set(record.outcome.to_owned()),
        client_addr: Set(record.client_addr.map(|a| clip(&a, 64))),
        request_id: Set(clip(&record.request_id, 64)),
        count: Set(count),
    }
}

pub(super) async fn insert_audit(
    db: &impl ConnectionTrait,
    record: AuditRecord,
) -> Result<(), StoreError> {
    audit_event::Entity::insert(active(record)).exec(db).await?;
    Ok(())
}

impl Store {
    /// Appends an event that changes nothing else.
    pub async fn audit(&self, record: AuditRecord) -> Result<(), StoreError> {
        insert_audit(&self.db, record).await
    }

    /// Counts a refusal that anyone can cause at will, from `source` (the client
    /// address, grouped as the caller sees fit). Never waits: the first of a burst is
    /// written at once in the background, its repeats as one row with their count
    /// (see `audit_coalesce` for the bounds).
    pub fn audit_refusal(&self, record: AuditRecord, source: String) {
        self.refusals.add(&self.db, record, source);
    }

    /// Appends several such events in one statement, all or none. A writer that
    /// appends batches all the time keeps to `audit_batch_len` sizes, so that each
    /// pooled connection prepares a few statement shapes instead of one per count.
    pub async fn audit_many(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        audit_event::Entity::insert_many(records.into_iter().map(active))
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Up to `limit` events with ids above `after`, oldest first (the audit stream).
    pub async fn audit_after(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        Ok(audit_event::Entity::find()
            .filter(audit_event::Column::Id.gt(after))
            .order_by_asc(audit_event::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Up to `limit` events with ids strictly between `after` and `before`, oldest
    /// first (rows that committed after a higher id did).
    pub async fn audit_between(
        &self,
        after: i64,
        before: i64,
        limit: u64,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        Ok(audit_event::Entity::find()
            .filter(audit_event::Column::Id.gt(after))
            .filter(audit_event::Column::Id.lt(before))
            .order_by_asc(audit_event::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The highest event id, 0 for none.
    pub async fn max_audit_id(&self) -> Result<i64, StoreError> {
        let max: Option<Option<i64>> = audit_event::Entity::find()
            .select_only()
            .column_as(audit_event::Column::Id.max(), "max")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(max.flatten().unwrap_or(0))
    }

    /// Newest first, strictly before the event `before_id` when paging.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        before_id: Option<i64>,
        limit: u64,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        let mut query = audit_event::Entity::find();
        if let Some(actor) = &filter.actor {
            query = query.filter(audit_event::Column::Actor.eq(actor.as_str()));
        }
        if let Some(action) = &filter.action {
            query = query.filter(audit_event::Column::Action.eq(action.as_str()));
        }
        if let Some(target) = &filter.target {
            query = query.filter(audit_event::Column::Target.eq(target.as_str()));
        }
        if let Some(since) = filter.since {
            query = query.filter(audit_event::Column::At.gte(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(audit_event::Column::At.lt(until));
        }
        if let Some(before) = before_id {
            query = query.filter(audit_event::Column::Id.lt(before));
        }
        Ok(query
            .order_by_desc(audit_event::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::{clip, largest_power_of_two_within};

    #[test]
    fn batches_split_into_power_of_two_statements() {
        let sizes = |mut n: usize| {
            let mut out = Vec::new();
            while n > 0 {
                let chunk = largest_power_of_two_within(n);
                out.push(chunk);
                n -= chunk;
            }
            out
        };
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(37), [32, 4, 1]);
        assert_eq!(sizes(256), [256]);
        assert_eq!(sizes(255).len(), 8);
        assert_eq!(largest_power_of_two_within(0), 1);
        assert_eq!(super::audit_batch_len(0), 0);
        assert_eq!(super::audit_batch_len(37), 32);
        assert_eq!(super::audit_batch_len(256), 256);
    }

    #[test]
    fn recorded_text_is_clipped_and_has_no_control_characters() {
        assert_eq!(clip("kms_abc", 64), "kms_abc");
        assert_eq!(clip("ab\0c\u{1b}[", 4), "ab\u{fffd}c");
        assert_eq!(clip("é\u{202e}\u{85}", 8), "é\u{202e}\u{fffd}");
    }
}
