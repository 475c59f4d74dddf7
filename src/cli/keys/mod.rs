//! `kms keys create|get|list|update|rotate|revoke|verify`: the Keys service.

mod args;

use std::collections::HashMap;

pub use args::KeysArgs;
use args::{KeysCommand, VerifyArgs};

use super::{
    PageArgs,
    error::{CliError, EXIT_NOT_VALID},
    output::{Output, Style, note},
    prompt,
    session::Session,
};
use crate::proto::kms::v1 as pb;

pub async fn run(args: KeysArgs, out: &Output) -> Result<(), CliError> {
    let mut s = Session::open(&args.client).await?;
    match args.command {
        KeysCommand::Create(a) => {
            let api_key = if a.import {
                Some(read_key("the secret to import").await?)
            } else {
                None
            };
            let request = a.request(api_key.as_ref().map(|k| k.as_str().to_owned()));
            let key = s
                .call(async |mut c| c.keys.create_key(request.clone()).await)
                .await?;
            out.emit(&key, |o| show_key(o, &key))
        }
        KeysCommand::Get(a) => {
            let request = pb::GetKeyRequest {
                service_name: a.service_name,
            };
            let key = s
                .call(async |mut c| c.keys.get_key(request.clone()).await)
                .await?;
            out.emit(&key, |o| show_key(o, &key))
        }
        KeysCommand::List(page) => list(&mut s, out, page).await,
        KeysCommand::Update(a) => {
            let request = a.request();
            let key = s
                .call(async |mut c| c.keys.update_key(request.clone()).await)
                .await?;
            out.emit(&key, |o| show_key(o, &key))
        }
        KeysCommand::Rotate(a) => {
            let request = pb::RotateKeyRequest {
                service_name: a.service_name,
                grace_period_seconds: a.grace,
            };
            let key = s
                .call(async |mut c| c.keys.rotate_key(request.clone()).await)
                .await?;
            out.emit(&key, |o| show_key(o, &key))
        }
        KeysCommand::Revoke(a) => {
            let request = pb::RevokeKeyRequest {
                service_name: a.service_name.clone(),
            };
            s.call(async |mut c| c.keys.revoke_key(request.clone()).await)
                .await?;
            if out.json() {
                super::output::print("{}\n")
            } else {
                note(&format!("key {} revoked", a.service_name));
                Ok(())
            }
        }
        KeysCommand::Verify(a) => verify(&mut s, out, a).await,
    }
}

async fn list(s: &mut Session, out: &Output, page: PageArgs) -> Result<(), CliError> {
    let (keys, next_page_token) = page
        .fetch(s, async |s, page_size, page_token| {
            let request = pb::ListKeysRequest {
                page_size,
                page_token,
            };
            let answer = s
                .call(async |mut c| c.keys.list_keys(request.clone()).await)
                .await?;
            Ok((answer.keys, answer.next_page_token))
        })
        .await?;
    let all = pb::ListKeysResponse {
        keys,
        next_page_token,
    };
    out.emit(&all, |o| {
        let rows: Vec<Vec<(String, Style)>> = all
            .keys
            .iter()
            .map(|k| {
                vec![
                    (k.service_name.clone(), Style::Plain),
                    (k.key_prefix.clone(), Style::Dim),
                    enabled(k.enabled),
                    (list_or(&k.scopes, "-"), Style::Plain),
                    (remaining(k.remaining), Style::Plain),
                    (o.ago(k.expires_at.as_ref(), "never"), Style::Plain),
                    (o.ago(k.last_used_at.as_ref(), "never"), Style::Plain),
                    (o.ago(k.created_at.as_ref(), "-"), Style::Plain),
                ]
            })
            .collect();
        o.table(
            &[
                "SERVICE",
                "PREFIX",
                "ENABLED",
                "SCOPES",
                "REMAINING",
                "EXPIRES",
                "LAST USED",
                "CREATED",
            ],
            &rows,
        )
    })?;
    super::note_more(out, "keys", &all.next_page_token);
    Ok(())
}

async fn verify(s: &mut Session, out: &Output, a: VerifyArgs) -> Result<(), CliError> {
    let api_key = read_key("the API key").await?;
    let request = pb::VerifyKeyRequest {
        api_key: api_key.as_str().to_owned(),
        required_scopes: a.required_scopes,
        cost: a.cost,
    };
    let answer = s
        .call(async |mut c| c.keys.verify_key(request.clone()).await)
        .await?;
    let code = verify_code(answer.code);
    out.emit(&answer, |o| {
        let mut rows = vec![(
            "code",
            code.to_owned(),
            if answer.valid {
                Style::Good
            } else {
                Style::Bad
            },
        )];
        if !answer.service_name.is_empty() {
            rows.push(("service_name", answer.service_name.clone(), Style::Plain));
            rows.push(("scopes", list_or(&answer.scopes, "-"), Style::Plain));
            rows.push(("metadata", metadata(&answer.metadata), Style::Plain));
            rows.push((
                "expires",
                o.when(answer.expires_at.as_ref(), "never"),
                Style::Plain,
            ));
        }
        if answer.remaining.is_some() {
            rows.push(("remaining", remaining(answer.remaining), Style::Plain));
        }
        if let Some(limit) = &answer.rate_limit {
            rows.push((
                "rate_limit",
                if limit.remaining > 0 {
                    format!("{} of {} left", limit.remaining, limit.limit)
                } else {
                    format!(
                        "0 of {} left, the next one {}",
                        limit.limit,
                        o.ago(limit.reset_at.as_ref(), "now")
                    )
                },
                Style::Plain,
            ));
        }
        o.fields(&rows)
    })?;
    if answer.valid {
        Ok(())
    } else {
        Err(CliError {
            message: format!("the key is not valid: {code}"),
            exit: EXIT_NOT_VALID,
        })
    }
}

/// A key from standard input, or asked for without echo on a terminal.
async fn read_key(what: &str) -> Result<zeroize::Zeroizing<String>, CliError> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        prompt::ask_secret("API key").await
    } else {
        let mut lines = prompt::stdin_lines(1, what)?;
        Ok(lines.remove(0))
    }
}

/// VALID, NOT_FOUND, ...
pub fn verify_code(code: i32) -> &'static str {
    pb::VerifyCode::try_from(code)
        .unwrap_or(pb::VerifyCode::Unspecified)
        .as_str_name()
        .trim_start_matches("VERIFY_CODE_")
}

fn show_key(o: &Output, k: &pb::ApiKey) -> String {
    let mut rows = vec![("service_name", k.service_name.clone(), Style::Bold)];
    if !k.api_key.is_empty() {
        rows.push(("api_key", k.api_key.clone(), Style::Good));
    }
    rows.extend([
        ("key_prefix", k.key_prefix.clone(), Style::Dim),
        ("description", or_dash(&k.description), Style::Plain),
    ]);
    let (text, style) = enabled(k.enabled);
    rows.push(("enabled", text, style));
    rows.extend([
        ("scopes", list_or(&k.scopes, "-"), Style::Plain),
        ("metadata", metadata(&k.metadata), Style::Plain),
        (
            "rate_limit",
            k.rate_limit.map_or_else(
                || "none".to_owned(),
                |r| format!("{} per {}s", r.requests, r.window_seconds),
            ),
            Style::Plain,
        ),
        ("remaining", remaining(k.remaining), Style::Plain),
        ("created", o.when(k.created_at.as_ref(), "-"), Style::Plain),
        ("updated", o.when(k.updated_at.as_ref(), "-"), Style::Plain),
        (
            "expires",
            o.when(k.expires_at.as_ref(), "never"),
            Style::Plain,
        ),
        (
            "last_used",
            o.when(k.last_used_at.as_ref(), "never"),
            Style::Plain,
        ),
    ]);
    o.fields(&rows)
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn enabled(on: bool) -> (String, Style) {
    if on {
        ("yes".to_owned(), Style::Good)
    } else {
        ("no".to_owned(), Style::Bad)
    }
}

fn remaining(credits: Option<i64>) -> String {
    credits.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

pub fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

fn metadata(map: &HashMap<String, String>) -> String {
    let mut entries: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    entries.sort();
    list_or(&entries, "-")
}
