//! A call's plain-text line, written straight into one buffer: the bytes
//! `tracing-subscriber`'s own text format (`fmt::format().with_target(false)`, no ANSI)
//! would write, with the call where its span would be, at about a third of the cost.
//!
//! The general formatter writes the line and `CallLine` then copies it around the
//! call; its timestamp goes through `core::fmt` digit by digit, and every field through
//! its visitor's escaping writer. Here the timestamp's date and time are formatted once
//! a second per thread, and the fields are written as that visitor writes them. Any
//! line this cannot write exactly (an error field with its sources, a message holding
//! a control character the formatter would escape, a `log.` field) is left to the
//! general formatter: `write` answers `false` and has written nothing.

use std::{
    cell::RefCell,
    fmt::{self, Write},
    time::SystemTime,
};

use chrono::{DateTime, Datelike, Timelike, Utc};
use tracing::{
    Event, Level,
    field::{Field, Visit},
};

use super::call::{self, CallLog};

/// Writes `event`'s line, as the call `call`, to `line` (cleared first). `false`: the
/// line is one for the general formatter.
pub fn write(line: &mut String, event: &Event<'_>, call: &CallLog) -> bool {
    line.clear();
    timestamp(line, SystemTime::now());
    line.push(' ');
    line.push_str(level(event.metadata().level()));
    line.push(' ');
    if call::write_text(line, call, false).is_err() {
        return false;
    }
    let mut fields = Fields {
        out: line,
        first: true,
        general: false,
    };
    event.record(&mut fields);
    if fields.general {
        return false;
    }
    line.push('\n');
    true
}

/// How the formatter writes a level without ANSI codes.
pub(super) fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// The date and time of one second, `YYYY-MM-DDTHH:MM:SS.`, as last formatted on this
/// thread.
struct Second {
    unix: i64,
    text: String,
}

thread_local! {
    static SECOND: RefCell<Second> = const {
        RefCell::new(Second { unix: i64::MIN, text: String::new() })
    };
}

/// `2026-12-02T16:00:00.123456Z`: the formatter's `SystemTime` (UTC, microseconds).
fn timestamp(out: &mut String, now: SystemTime) {
    let t = DateTime::<Utc>::from(now);
    let unix = t.timestamp();
    let cached = SECOND.try_with(|second| {
        let mut second = second.try_borrow_mut().ok()?;
        if second.unix != unix {
            second.text.clear();
            write_second(&mut second.text, t).ok()?;
            second.unix = unix;
        }
        out.push_str(&second.text);
        Some(())
    });
    if !matches!(cached, Ok(Some(()))) {
        let _ = write_second(out, t);
    }
    push_micros(out, t.timestamp_subsec_micros());
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` as the formatter writes it (years 0 to 9999; this clock's).
fn write_second(out: &mut impl Write, t: DateTime<Utc>) -> fmt::Result {
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Six digits, zero-padded.
fn push_micros(out: &mut String, micros: u32) {
    let mut digits = [b'0'; 6];
    let mut n = micros.min(999_999);
    for digit in digits.iter_mut().rev() {
        // A digit 0-9: always a valid char.
        *digit = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
    }
    for digit in digits {
        out.push(char::from(digit));
    }
}

/// The formatter's field visitor without ANSI codes: `message` first as it is, the
/// others `name=value` with `Debug`, one space between.
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
    /// A field this cannot write as the formatter would: leave the line to it.
    general: bool,
}

impl Fields<'_> {
    fn pad(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.out.push(' ');
        }
    }
}

/// The characters the formatter escapes in a message (its ANSI sanitising).
fn escaped_in_messages(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, _field: &Field, _value: &(dyn std::error::Error + 'static)) {
        self.general = true;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.general {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            self.general = true;
            return;
        }
        self.pad();
        let start = self.out.len();
        let written = match name {
            "message" => write!(self.out, "{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.out, "{name}={value:?}")
            }
        };
        let escaped = name == "message"
            && self
                .out
                .get(start..)
                .is_some_and(|m| m.chars().any(escaped_in_messages));
        if written.is_err() || escaped {
            self.general = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_the_formatter_s() {
        for (secs, nanos) in [
            (0, 0),
            (1_764_691_200, 5_000),
            (1_795_000_000, 999_999_999),
            (253_402_300_799, 123_456_789),
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
            let mut ours = String::new();
            timestamp(&mut ours, t);
            // Twice: the second from this thread's cache.
            timestamp(&mut ours, t);
            let expected = DateTime::<Utc>::from(t)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(ours, format!("{expected}{expected}"));
        }
    }

    #[test]
    fn a_timestamp_matches_the_formatter_s_own_clock() {
        use tracing_subscriber::fmt::{format::Writer, time::FormatTime};
        // The same second, read on both sides of the formatter's own reading.
        for _ in 0..3 {
            let before = SystemTime::now();
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            let mut ours = String::new();
            timestamp(&mut ours, before);
            if ours[..19] == theirs[..19] {
                assert_eq!(ours.len(), theirs.len());
                assert_eq!(&ours[19..20], ".");
                assert!(ours.ends_with('Z') && theirs.ends_with('Z'));
                return;
            }
        }
        panic!("three seconds changed under the test");
    }
}
