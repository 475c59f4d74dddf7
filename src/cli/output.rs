//! Where answers go: stdout, as proto3 JSON (`--output json`, the .proto field names)
//! or for people (aligned tables, relative times, colour only on a terminal and never
//! with `NO_COLOR`). Messages for people go to stderr, never mixed with the data.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::{error::CliError, time};
use crate::proto::kms::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and fields for people.
    Text,
    /// proto3 JSON with the .proto field names; `audit watch` prints one object a line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is unset or empty.
    Auto,
    Always,
    Never,
}

/// Whether to colour: `--color auto` colours a terminal unless NO_COLOR is set
/// (<https://no-color.org>: any non-empty value).
pub fn use_color(choice: ColorChoice, stdout_is_terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stdout_is_terminal && no_color.is_none_or(str::is_empty),
    }
}

/// A message type of kms.v1 with its full name, to find its descriptor.
pub trait ProtoName: prost::Message {
    const NAME: &'static str;
}

macro_rules! proto_names {
    ($($t:ident),* $(,)?) => {$(
        impl ProtoName for pb::$t {
            const NAME: &'static str = concat!("kms.v1.", stringify!($t));
        }
    )*};
}

proto_names!(
    ApiKey,
    ListKeysResponse,
    VerifyKeyResponse,
    User,
    ListUsersResponse,
    RegisterResponse,
    DeleteUserResponse,
    ChangePasswordResponse,
    AuditEvent,
    ListAuditEventsResponse,
    KeyringStatus,
    RewrapSecretsResponse,
    RotateSigningKeyResponse,
    LogoutResponse,
);

/// Styles of the text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    Good,
    Bad,
    Dim,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub format: OutputFormat,
    color: bool,
    now: DateTime<Utc>,
}

impl Output {
    pub fn new(format: OutputFormat, color: ColorChoice) -> Self {
        let no_color = std::env::var("NO_COLOR").ok();
        Self {
            format,
            color: use_color(color, std::io::stdout().is_terminal(), no_color.as_deref()),
            now: Utc::now(),
        }
    }

    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// `message` as JSON, or `text` for people.
    pub fn emit<M: ProtoName>(
        &self,
        message: &M,
        text: impl FnOnce(&Self) -> String,
    ) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Json => print(&(to_json(message, true)? + "\n")),
            OutputFormat::Text => print(&text(self)),
        }
    }

    /// One line of a stream: compact JSON, or `text`.
    pub fn emit_line<M: ProtoName>(
        &self,
        message: &M,
        text: impl FnOnce(&Self) -> String,
    ) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Json => print(&(to_json(message, false)? + "\n")),
            OutputFormat::Text => print(&text(self)),
        }
    }

    /// `text` with its control characters escaped (see `printable`), in colour.
    pub fn paint(&self, text: &str, style: Style) -> String {
        let text = printable(text);
        let code = match style {
            Style::Plain => return text.into_owned(),
            Style::Bold => "1",
            Style::Good => "32",
            Style::Bad => "31",
            Style::Dim => "2",
        };
        if self.color && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.into_owned()
        }
    }

    /// "3 days ago (2026-11-29 10:00:00 UTC)", or `unset` when there is no time.
    pub fn when(&self, t: Option<&prost_types::Timestamp>, unset: &str) -> String {
        match t.and_then(time::from_timestamp) {
            Some(t) => format!(
                "{} ({})",
                time::relative(self.now, t),
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => unset.to_owned(),
        }
    }

    /// Only the relative time, for table cells.
    pub fn ago(&self, t: Option<&prost_types::Timestamp>, unset: &str) -> String {
        t.and_then(time::from_timestamp)
            .map_or_else(|| unset.to_owned(), |t| time::relative(self.now, t))
    }

    /// Aligned columns with a bold header; the width ignores the colour codes.
    pub fn table(&self, headers: &[&str], rows: &[Vec<(String, Style)>]) -> String {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, (cell, _)) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(printable(cell).chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<(String, Style)> = headers
            .iter()
            .map(|h| ((*h).to_owned(), Style::Bold))
            .collect();
        for row in std::iter::once(&header).chain(rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (cell, style)) in row.iter().enumerate() {
                line.push_str(&self.paint(cell, *style));
                if i < last {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(printable(cell).chars().count());
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// `name  value` lines with the names aligned.
    pub fn fields(&self, rows: &[(&str, String, Style)]) -> String {
        let width = rows.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(name, value, style)| {
                let pad = " ".repeat(width - name.len() + 2);
                format!(
                    "{}{pad}{}\n",
                    self.paint(name, Style::Bold),
                    self.paint(value, *style)
                )
            })
            .collect()
    }
}

/// Text from the server as it may go to a terminal: control characters (ESC, CR,
/// a newline inside a value, ...) escaped as `\u{1b}`, `\r`, `\n`, so that a key's
/// metadata or an error message cannot move the cursor, recolour or overwrite what the
/// terminal shows.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// proto3 JSON of `message`: the .proto field names, fields at their default value
/// included (message fields and `optional` ones only when set).
pub fn to_json<M: ProtoName>(message: &M, pretty: bool) -> Result<String, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::other(format!("cannot print JSON: {e}"));
    let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).map_err(|e| failed(&e))?;
    let descriptor = pool
        .get_message_by_name(M::NAME)
        .ok_or_else(|| failed(&M::NAME))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| failed(&e))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut bytes = Vec::new();
    if pretty {
        let mut ser = serde_json::Serializer::pretty(&mut bytes);
        dynamic
            .serialize_with_options(&mut ser, &options)
            .map_err(|e| failed(&e))?;
    } else {
        let mut ser = serde_json::Serializer::new(&mut bytes);
        dynamic
            .serialize_with_options(&mut ser, &options)
            .map_err(|e| failed(&e))?;
    }
    String::from_utf8(bytes).map_err(|e| failed(&e))
}

/// Writes to stdout. A reader that went away (`kms audit watch | head`) ends the
/// command quietly.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError {
            message: String::new(),
            exit: super::error::EXIT_OTHER,
        }),
        Err(e) => Err(CliError::other(format!("cannot write to stdout: {e}"))),
    }
}

/// A message for people, on stderr.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(ColorChoice::Auto, true, None));
        assert!(use_color(ColorChoice::Auto, true, Some("")));
        assert!(!use_color(ColorChoice::Auto, true, Some("1")));
        assert!(!use_color(ColorChoice::Auto, false, None));
        assert!(use_color(ColorChoice::Always, false, Some("1")));
        assert!(!use_color(ColorChoice::Never, true, None));
    }

    #[test]
    fn json_uses_proto_field_names_and_every_name_resolves() {
        let key = pb::ApiKey {
            service_name: "billing".into(),
            key_prefix: "kms_abc".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            remaining: Some(0),
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_str(&to_json(&key, false).unwrap()).unwrap();
        assert_eq!(json["service_name"], "billing");
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["remaining"], "0");
        assert_eq!(json["enabled"], false);
        assert!(json.get("expires_at").is_none() && json.get("rate_limit").is_none());
        to_json(&pb::ListKeysResponse::default(), true).unwrap();
        to_json(&pb::VerifyKeyResponse::default(), true).unwrap();
        to_json(&pb::User::default(), true).unwrap();
        to_json(&pb::ListUsersResponse::default(), true).unwrap();
        to_json(&pb::RegisterResponse::default(), true).unwrap();
        to_json(&pb::DeleteUserResponse::default(), true).unwrap();
        to_json(&pb::ChangePasswordResponse::default(), true).unwrap();
        to_json(&pb::AuditEvent::default(), true).unwrap();
        to_json(&pb::ListAuditEventsResponse::default(), true).unwrap();
        to_json(&pb::KeyringStatus::default(), true).unwrap();
        to_json(&pb::RewrapSecretsResponse::default(), true).unwrap();
        to_json(&pb::RotateSigningKeyResponse::default(), true).unwrap();
        to_json(&pb::LogoutResponse::default(), true).unwrap();
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("plain text: ü"), "plain text: ü");
        assert_eq!(
            printable("v\x1b[5mblink\rOVER\n"),
            "v\\u{1b}[5mblink\\rOVER\\n"
        );
        let out = Output::new(OutputFormat::Text, ColorChoice::Never);
        let table = out.table(&["K"], &[vec![("a\x1b]0;x\x07".into(), Style::Plain)]]);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        let fields = out.fields(&[("k", "a\rb".into(), Style::Plain)]);
        assert!(!fields.contains('\r'));
    }

    #[test]
    fn tables_align_without_counting_colour() {
        let out = Output {
            format: OutputFormat::Text,
            color: true,
            now: Utc::now(),
        };
        let table = out.table(
            &["NAME", "STATE"],
            &[
                vec![("a".into(), Style::Good), ("on".into(), Style::Plain)],
                vec![("longer".into(), Style::Plain), ("off".into(), Style::Bad)],
            ],
        );
        let plain: String = strip(&table);
        assert_eq!(plain, "NAME    STATE\na       on\nlonger  off\n");
        assert!(table.contains("\x1b[32ma\x1b[0m"));
    }

    fn strip(s: &str) -> String {
        let mut out = String::new();
        let mut in_escape = false;
        for c in s.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    }
}
