//! The oracle: what each answer may be, judged against API.md, and the driver of one
//! case against the server.

use std::{fmt::Debug, future::Future};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proptest::{prelude::*, test_runner::TestCaseResult};
use prost::Message;
use tonic::{Code, Status};

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Expect {
    /// One of these codes (`Code::Ok` for success).
    Codes(Vec<Code>),
    /// INVALID_ARGUMENT whose message names one of these fields.
    Invalid(Vec<&'static str>),
    /// INVALID_ARGUMENT, whatever the message (a message that does not decode).
    Malformed,
}

pub(super) fn codes(codes: &[Code]) -> Expect {
    Expect::Codes(codes.to_vec())
}

/// Collects the fields an input breaks.
pub(super) struct Rules(Vec<&'static str>);

impl Rules {
    pub(super) fn new() -> Self {
        Self(Vec::new())
    }

    pub(super) fn check(mut self, ok: bool, field: &'static str) -> Self {
        if !ok {
            self.0.push(field);
        }
        self
    }

    /// INVALID_ARGUMENT naming one of the broken fields, or `otherwise`.
    pub(super) fn or(self, otherwise: Expect) -> Expect {
        if self.0.is_empty() {
            otherwise
        } else {
            Expect::Invalid(self.0)
        }
    }
}

/// A message over the size limit is OUT_OF_RANGE before anything else is looked at.
pub(super) fn sized(message: &impl Message, expect: Expect) -> Expect {
    if message.encoded_len() > MAX_REQUEST {
        codes(&[Code::OutOfRange])
    } else {
        expect
    }
}

/// Codes a client must never see for its input.
pub(super) const FORBIDDEN: &[Code] = &[
    Code::Internal,
    Code::Unknown,
    Code::Unavailable,
    Code::DataLoss,
    Code::Cancelled,
    Code::Unimplemented,
    Code::DeadlineExceeded,
    Code::Aborted,
];

/// Text that must never reach a client.
pub(super) const LEAKS: &[&str] = &[
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "sqlx",
    "database error",
    "panicked",
    "stack backtrace",
];

pub(super) fn short(value: &impl Debug) -> String {
    let text = format!("{value:?}");
    if text.len() <= 800 {
        return text;
    }
    let mut head = 400;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - 300;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} ...({} bytes)... {}",
        &text[..head],
        text.len(),
        &text[tail..]
    )
}

pub(super) fn judge<T: Debug>(
    what: &str,
    result: &Result<T, Status>,
    expect: &Expect,
) -> TestCaseResult {
    if let Err(status) = result {
        prop_assert!(
            !FORBIDDEN.contains(&status.code()),
            "{what}: forbidden status {:?}: {}",
            status.code(),
            short(&status.message())
        );
        for leak in LEAKS {
            prop_assert!(
                !status.message().contains(leak),
                "{what}: the message leaks {leak:?}: {}",
                short(&status.message())
            );
        }
    }
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    match expect {
        Expect::Codes(allowed) => prop_assert!(
            allowed.contains(&code),
            "{what}: expected one of {allowed:?}, got {}",
            short(result)
        ),
        Expect::Invalid(fields) => {
            prop_assert_eq!(
                code,
                Code::InvalidArgument,
                "{}: expected INVALID_ARGUMENT naming {:?}, got {}",
                what,
                fields,
                short(result)
            );
            if let Err(status) = result {
                prop_assert!(
                    fields.iter().any(|f| status.message().contains(f)),
                    "{what}: the message {:?} names none of {fields:?}",
                    short(&status.message())
                );
            }
        }
        Expect::Malformed => prop_assert_eq!(
            code,
            Code::InvalidArgument,
            "{}: expected INVALID_ARGUMENT, got {}",
            what,
            short(result)
        ),
    }
    Ok(())
}

/// One case: the call, judged, and the tables compared when it was rejected.
pub(super) async fn case<T: Debug>(
    ctx: &Ctx,
    what: &str,
    expect: &Expect,
    call: impl Future<Output = Result<T, Status>>,
) -> TestCaseResult {
    let before = snapshot(&ctx.db).await;
    let result = call.await;
    judge(what, &result, expect)?;
    if result.is_err() {
        unchanged(what, &before, &snapshot(&ctx.db).await)?;
    }
    Ok(())
}

/// A property over one request message: `expect` is the oracle, `call` makes the call
/// (and may assert on the response).
pub(super) async fn fuzz<S, Fut, T>(
    ctx: &Shared,
    name: &'static str,
    strategy: impl FnOnce() -> S + Send + 'static,
    expect: impl Fn(&S::Value) -> Expect + Send + 'static,
    call: impl Fn(Shared, S::Value) -> Fut + Send + 'static,
) where
    S: Strategy,
    S::Value: Clone,
    Fut: Future<Output = Result<T, Status>>,
    T: Debug,
{
    let ctx2 = ctx.clone();
    check(name, strategy, move |input| {
        let expect = expect(&input);
        let what = format!("{name}({})", short(&input));
        let ctx = ctx2.clone();
        ctx2.rt
            .block_on(async { case(&ctx, &what, &expect, call(ctx.clone(), input)).await })
    })
    .await;
    ctx.still_serving().await;
}

// ---------------------------------------------------------------------------------
// The rules of API.md, written again here so that the server is checked against the
// contract rather than against itself.

pub(super) fn chars_ok(s: &str, max: usize, allowed: impl Fn(char) -> bool) -> bool {
    let n = s.chars().count();
    (1..=max).contains(&n) && s.chars().all(allowed)
}

pub(super) fn service_name_ok(s: &str) -> bool {
    chars_ok(s, 64, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
}

pub(super) fn username_ok(s: &str) -> bool {
    chars_ok(s, 64, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
    })
}

pub(super) fn role_ok(s: &str) -> bool {
    chars_ok(s, 32, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
    })
}

pub(super) fn password_ok(s: &str) -> bool {
    (12..=1024).contains(&s.len())
}

/// Descriptions: at most 1024 characters, no control characters but newline and tab
/// (PostgreSQL text cannot hold NUL; the rest would make logs lie).
pub(super) fn description_ok(s: &str) -> bool {
    s.chars().count() <= 1024 && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// An imported secret: 32..256 printable ASCII characters without spaces; one that
/// claims the `kms_` format must carry its checksum.
pub(super) fn imported_key_ok(s: &str) -> bool {
    (32..=256).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_graphic())
        && (!s.starts_with("kms_") || kms::domain::api_key::checksum_ok(s))
}

/// The page token format is the server's own (opaque to clients): base64url of `v1:`
/// and the last name of the page. The oracle knows it, to tell a well-formed token
/// (OK) from a malformed one (INVALID_ARGUMENT).
pub(super) fn page_token_ok(token: &str, last_ok: impl Fn(&str) -> bool) -> bool {
    if token.is_empty() {
        return true;
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("v1:").map(&last_ok))
        .unwrap_or(false)
}

/// The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z.
pub(super) fn timestamp_ok(t: &Option<prost_types::Timestamp>) -> bool {
    t.as_ref().is_none_or(|t| {
        (-62_135_596_800..=253_402_300_799).contains(&t.seconds)
            && (0..1_000_000_000).contains(&t.nanos)
    })
}

pub(super) fn filter_ok(s: &str) -> bool {
    !s.chars().any(char::is_control)
}
