//! Times for people ("3 days ago", "in 2 hours") and durations from them ("30d").
//! Pure functions: the clock is a parameter.

use chrono::{DateTime, TimeZone, Utc};

pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    Utc.timestamp_opt(t.seconds, nanos).single()
}

pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// "just now", "5 minutes ago", "in 2 hours", "3 days ago", rounded down to one unit.
pub fn relative(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let seconds = (t - now).num_seconds();
    let span = seconds.unsigned_abs();
    if span < 5 {
        return "just now".to_owned();
    }
    const UNITS: [(u64, &str); 6] = [
        (365 * 86_400, "year"),
        (30 * 86_400, "month"),
        (7 * 86_400, "week"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
    ];
    let (n, unit) = UNITS
        .iter()
        .find(|(size, _)| span >= *size)
        .map_or((span, "second"), |(size, name)| (span / size, *name));
    let plural = if n == 1 { "" } else { "s" };
    if seconds < 0 {
        format!("{n} {unit}{plural} ago")
    } else {
        format!("in {n} {unit}{plural}")
    }
}

/// Seconds from "90", "90s", "15m", "2h", "30d" or "1w".
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 2h, 30d or 1w"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h, d or w")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A point in time: RFC 3339 ("2026-12-01T10:00:00Z"), or a duration before now
/// ("2h" = two hours ago).
pub fn parse_time(now: DateTime<Utc>, text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let seconds = parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (2h)"
        )
    })?;
    chrono::TimeDelta::try_seconds(seconds)
        .and_then(|ago| now.checked_sub_signed(ago))
        .ok_or_else(|| format!("{text:?} is too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = Utc.timestamp_opt(1_000_000_000, 0).unwrap();
        let at = |s: i64| relative(now, now + chrono::Duration::seconds(s));
        assert_eq!(at(0), "just now");
        assert_eq!(at(-30), "30 seconds ago");
        assert_eq!(at(-60), "1 minute ago");
        assert_eq!(at(7_300), "in 2 hours");
        assert_eq!(at(-3 * 86_400 - 5), "3 days ago");
        assert_eq!(at(40 * 86_400), "in 1 month");
        assert_eq!(at(-800 * 86_400), "2 years ago");
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert_eq!(parse_duration("2h"), Ok(7_200));
        assert!(parse_duration("2y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5").is_err());
        let now = Utc.timestamp_opt(1_000_000_000, 0).unwrap();
        assert_eq!(
            parse_time(now, "1h").unwrap().timestamp(),
            1_000_000_000 - 3_600
        );
        assert_eq!(
            parse_time(now, "2001-09-09T01:46:40Z").unwrap().timestamp(),
            1_000_000_000
        );
        assert!(parse_time(now, "yesterday").is_err());
    }
}
