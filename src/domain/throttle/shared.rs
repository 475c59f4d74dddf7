//! The per-username counters replicas of one PostgreSQL database share, so that N
//! replicas do not give a guesser N allowances. The same rules as the in-memory
//! `state` (failures within the window, a lockout doubling from the limit, attempts
//! running using up what is left), decided here, purely, on the row the store locked.
//! Attempts admitted on any replica count in `pending` until settled; a replica that
//! dies holding some lets them lapse after `PENDING_TTL`.

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::{Refusal, ThrottleSettings, state::lockout};
use crate::store::GuardRow;

/// Longer than any login runs (its hash, within the call deadline).
const PENDING_TTL: ChronoDuration = ChronoDuration::seconds(60);

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    Failed,
    Succeeded,
    /// Neither (the call was cancelled, the store failed): counts for nothing.
    Released,
}

/// The key a username is counted under on every replica.
pub(super) fn key(username: &str) -> String {
    username.to_lowercase()
}

fn chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// The row with lapsed reservations and a quiet window's failures forgotten.
fn fresh(row: Option<GuardRow>, key: &str, now: DateTime<Utc>, s: &ThrottleSettings) -> GuardRow {
    let mut row = row.unwrap_or_else(|| GuardRow {
        username: key.to_owned(),
        failures: 0,
        last_failure: None,
        locked_until: None,
        pending: 0,
        pending_until: None,
    });
    if row.pending_until.is_none_or(|until| until <= now) {
        row.pending = 0;
        row.pending_until = None;
    }
    let quiet_from = match (row.last_failure, row.locked_until) {
        (Some(failed), Some(locked)) => Some(failed.max(locked)),
        (failed, locked) => failed.or(locked),
    };
    if quiet_from.is_some_and(|quiet| now - quiet >= chrono(s.failure_window)) {
        row.failures = 0;
        row.last_failure = None;
        row.locked_until = None;
    }
    row
}

/// `None` for a row with nothing to remember: it is deleted.
fn kept(row: GuardRow) -> Option<GuardRow> {
    (row.failures > 0 || row.pending > 0 || row.locked_until.is_some()).then_some(row)
}

/// Admits an attempt (reserving a place) or says why not.
pub(super) fn admit(
    row: Option<GuardRow>,
    key: &str,
    now: DateTime<Utc>,
    s: &ThrottleSettings,
) -> (Option<GuardRow>, Result<(), Refusal>) {
    let mut row = fresh(row, key, now, s);
    if let Some(until) = row.locked_until.filter(|until| *until > now) {
        let wait = (until - now).to_std().unwrap_or_default();
        return (kept(row), Err(Refusal::Locked(wait)));
    }
    let limit = i32::try_from(s.max_failures).unwrap_or(i32::MAX);
    // After a lockout, one attempt at a time: its failure locks the name again.
    let left = limit.saturating_sub(row.failures).max(1);
    if row.pending >= left {
        return (kept(row), Err(Refusal::Busy));
    }
    row.pending += 1;
    row.pending_until = Some(now + PENDING_TTL);
    (kept(row), Ok(()))
}

/// Settles an admitted attempt.
pub(super) fn settle(
    row: Option<GuardRow>,
    key: &str,
    now: DateTime<Utc>,
    s: &ThrottleSettings,
    how: Settled,
) -> Option<GuardRow> {
    let mut row = fresh(row, key, now, s);
    row.pending = (row.pending - 1).max(0);
    match how {
        Settled::Failed => {
            row.failures = row.failures.saturating_add(1);
            row.last_failure = Some(now);
            let limit = i32::try_from(s.max_failures).unwrap_or(i32::MAX);
            if let Ok(excess) = u32::try_from(row.failures - limit) {
                row.locked_until = Some(now + chrono(lockout(excess, s)));
            }
        }
        Settled::Succeeded => {
            row.failures = 0;
            row.last_failure = None;
            row.locked_until = None;
        }
        Settled::Released => {}
    }
    kept(row)
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures::settings, *};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    /// Runs `admit` and gives back the row and the answer.
    fn try_admit(row: &mut Option<GuardRow>, now: DateTime<Utc>) -> Result<(), Refusal> {
        let (next, answer) = admit(row.take(), "alice", now, &settings(3));
        *row = next;
        answer
    }

    fn end(row: &mut Option<GuardRow>, now: DateTime<Utc>, how: Settled) {
        *row = settle(row.take(), "alice", now, &settings(3), how);
    }

    #[test]
    fn attempts_running_anywhere_use_up_the_allowance_and_failures_lock() {
        let mut row = None;
        // Three places, whichever replicas take them.
        for _ in 0..3 {
            try_admit(&mut row, at(0)).unwrap();
        }
        assert_eq!(try_admit(&mut row, at(0)), Err(Refusal::Busy));
        for _ in 0..3 {
            end(&mut row, at(1), Settled::Failed);
        }
        assert_eq!(
            try_admit(&mut row, at(1)),
            Err(Refusal::Locked(std::time::Duration::from_secs(1)))
        );
        // After the lockout: one attempt at a time, and its failure doubles it.
        try_admit(&mut row, at(2)).unwrap();
        assert_eq!(try_admit(&mut row, at(2)), Err(Refusal::Busy));
        end(&mut row, at(2), Settled::Failed);
        assert_eq!(
            try_admit(&mut row, at(2)),
            Err(Refusal::Locked(std::time::Duration::from_secs(2)))
        );
    }

    #[test]
    fn success_forgets_and_the_row_goes() {
        let mut row = None;
        try_admit(&mut row, at(0)).unwrap();
        end(&mut row, at(0), Settled::Failed);
        try_admit(&mut row, at(0)).unwrap();
        end(&mut row, at(0), Settled::Succeeded);
        assert_eq!(row, None);
        try_admit(&mut row, at(0)).unwrap();
        end(&mut row, at(0), Settled::Released);
        assert_eq!(row, None);
    }

    #[test]
    fn a_dead_replicas_reservations_lapse_and_quiet_failures_are_forgotten() {
        let mut row = None;
        for _ in 0..3 {
            try_admit(&mut row, at(0)).unwrap();
        }
        assert_eq!(try_admit(&mut row, at(30)), Err(Refusal::Busy));
        try_admit(&mut row, at(61)).unwrap();
        end(&mut row, at(61), Settled::Failed);
        assert_eq!(row.as_ref().unwrap().failures, 1);
        // The window is 60 s in these settings.
        try_admit(&mut row, at(200)).unwrap();
        assert_eq!(row.as_ref().unwrap().failures, 0);
    }

    #[test]
    fn names_are_counted_without_regard_to_case() {
        assert_eq!(key("Alice"), key("alice"));
    }
}
