//! `kms keys create|get|list|update|rotate|revoke|verify`: the Keys service.

use std::collections::HashMap;

use clap::{Args, Subcommand};

use super::{
    ClientOptions,
    error::{CliError, EXIT_NOT_VALID},
    output::{Output, Style, note},
    prompt,
    session::Session,
    time::parse_duration,
};
use crate::proto::kms::v1 as pb;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a service and print it with its secret.
    Create(CreateArgs),
    /// Print a key with its secret.
    Get(NameArg),
    /// List keys, ordered by service name (never with secrets).
    List(PageArgs),
    /// Change a key's description or policy: only what the flags name changes.
    Update(UpdateArgs),
    /// Give a key a new secret and print it; the old one keeps verifying for --grace.
    Rotate(RotateArgs),
    /// Revoke a key: none of its secrets verifies any more, and the name is free again.
    Revoke(NameArg),
    /// Check a key read from standard input (or asked for on the terminal); exit
    /// status 8 unless it is VALID.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The key's service name.
    pub service_name: String,
}

#[derive(Debug, Args)]
pub struct PageArgs {
    /// Items per page (the server's default: 50, at most 1000).
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    /// Start at this page (the token printed after a page).
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Fetch every page.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
}

/// Description and policy, shared by create and update.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What the key is for, for people.
    #[arg(long)]
    pub description: Option<String>,
    /// A scope the key grants (repeat for several; a trailing `*` grants every scope
    /// with that start).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// A metadata entry KEY=VALUE (repeat for several; stored in clear).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// At most REQUESTS valid verifications per WINDOW (seconds, or 90s, 15m, 1h, 1d).
    #[arg(long, value_name = "REQUESTS/WINDOW", value_parser = parse_rate_limit)]
    pub rate_limit: Option<pb::RateLimit>,
    /// Credits: each valid verification spends its cost; unset: unlimited.
    #[arg(long, allow_negative_numbers = true)]
    pub remaining: Option<i64>,
    /// Expire this long from now (90s, 15m, 2h, 30d, 1w; 0: never).
    #[arg(long, value_parser = parse_duration, conflicts_with = "ttl_seconds")]
    pub ttl: Option<i64>,
    /// Expire this many seconds from now (0: never).
    #[arg(long, allow_negative_numbers = true)]
    pub ttl_seconds: Option<i64>,
}

impl PolicyArgs {
    fn ttl(&self) -> Option<i64> {
        self.ttl.or(self.ttl_seconds)
    }

    fn metadata_map(&self) -> HashMap<String, String> {
        self.metadata.iter().cloned().collect()
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The service the key is for: 1..64 characters of A-Z a-z 0-9 . _ -
    pub service_name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Import an existing secret, read from standard input, instead of generating one.
    #[arg(long)]
    pub import: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The key's service name.
    pub service_name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Remove every scope.
    #[arg(long, conflicts_with = "scopes")]
    pub clear_scopes: bool,
    /// Remove every metadata entry.
    #[arg(long, conflicts_with = "metadata")]
    pub clear_metadata: bool,
    /// Let the key verify again.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Make the key verify as DISABLED until enabled again.
    #[arg(long)]
    pub disable: bool,
    /// Remove the rate limit.
    #[arg(long, conflicts_with = "rate_limit")]
    pub no_rate_limit: bool,
    /// Make the credits unlimited.
    #[arg(long, conflicts_with = "remaining")]
    pub unlimited: bool,
}

impl UpdateArgs {
    /// The request, its mask built from the flags given.
    fn request(&self) -> pb::UpdateKeyRequest {
        let p = &self.policy;
        let mut paths = Vec::new();
        let mut mark = |given: bool, path: &str| {
            if given {
                paths.push(path.to_owned());
            }
        };
        mark(p.description.is_some(), "description");
        mark(!p.scopes.is_empty() || self.clear_scopes, "scopes");
        mark(!p.metadata.is_empty() || self.clear_metadata, "metadata");
        mark(self.enable || self.disable, "enabled");
        mark(p.rate_limit.is_some() || self.no_rate_limit, "rate_limit");
        mark(p.remaining.is_some() || self.unlimited, "remaining");
        mark(p.ttl().is_some(), "ttl_seconds");
        pb::UpdateKeyRequest {
            service_name: self.service_name.clone(),
            update_mask: Some(prost_types::FieldMask { paths }),
            description: p.description.clone().unwrap_or_default(),
            scopes: p.scopes.clone(),
            metadata: p.metadata_map(),
            enabled: self.enable,
            rate_limit: p.rate_limit,
            remaining: p.remaining,
            ttl_seconds: p.ttl().unwrap_or(0),
        }
    }
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The key's service name.
    pub service_name: String,
    /// How long the old secret keeps verifying (0: not at all; 90s, 15m, 2h, 7d).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub grace: i64,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A scope the key must grant (repeat for several).
    #[arg(long = "scope", alias = "required-scope", value_name = "SCOPE")]
    pub required_scopes: Vec<String>,
    /// Credits a valid answer spends (default 1; 0 checks without spending).
    #[arg(long)]
    pub cost: Option<i64>,
}

fn parse_metadata(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

fn parse_rate_limit(text: &str) -> Result<pb::RateLimit, String> {
    let (requests, window) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected REQUESTS/WINDOW, e.g. 100/60 or 1000/1h"))?;
    Ok(pb::RateLimit {
        requests: requests
            .trim()
            .parse()
            .map_err(|_| format!("{requests:?} is not a number of requests"))?,
        window_seconds: parse_duration(window)?,
    })
}

pub async fn run(args: KeysArgs, out: &Output) -> Result<(), CliError> {
    let mut s = Session::open(&args.client).await?;
    match args.command {
        KeysCommand::Create(a) => {
            let api_key = if a.import {
                Some(read_key("the secret to import")?)
            } else {
                None
            };
            let p = &a.policy;
            let request = pb::CreateKeyRequest {
                service_name: a.service_name.clone(),
                api_key: api_key.as_ref().map(|k| k.as_str().to_owned()),
                description: p.description.clone().unwrap_or_default(),
                ttl_seconds: p.ttl().unwrap_or(0),
                scopes: p.scopes.clone(),
                metadata: p.metadata_map(),
                rate_limit: p.rate_limit,
                remaining: p.remaining,
            };
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
    let mut all = pb::ListKeysResponse::default();
    let mut token = page.page_token;
    loop {
        let request = pb::ListKeysRequest {
            page_size: page.page_size,
            page_token: token,
        };
        let answer = s
            .call(async |mut c| c.keys.list_keys(request.clone()).await)
            .await?;
        all.keys.extend(answer.keys);
        token = answer.next_page_token;
        if !page.all || token.is_empty() {
            break;
        }
    }
    all.next_page_token = token;
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
    if !all.next_page_token.is_empty() && !out.json() {
        note(&format!(
            "more keys: --page-token {} (or --all)",
            all.next_page_token
        ));
    }
    Ok(())
}

async fn verify(s: &mut Session, out: &Output, a: VerifyArgs) -> Result<(), CliError> {
    let api_key = read_key("the API key")?;
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
fn read_key(what: &str) -> Result<zeroize::Zeroizing<String>, CliError> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        prompt::ask_secret("API key")
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Probe {
        #[command(subcommand)]
        keys: KeysCommand,
    }

    #[test]
    fn update_masks_exactly_the_flags_given() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["probe", "update", "billing"];
            argv.extend_from_slice(args);
            match Probe::try_parse_from(argv).unwrap().keys {
                KeysCommand::Update(u) => u.request(),
                _ => unreachable!(),
            }
        };
        let r = parse(&["--disable", "--rate-limit", "100/1m", "--scope", "a"]);
        assert_eq!(
            r.update_mask.unwrap().paths,
            ["scopes", "enabled", "rate_limit"]
        );
        assert_eq!(
            r.rate_limit,
            Some(pb::RateLimit {
                requests: 100,
                window_seconds: 60
            })
        );
        assert!(!r.enabled);
        let r = parse(&["--unlimited", "--no-rate-limit", "--ttl", "30d"]);
        assert_eq!(
            r.update_mask.unwrap().paths,
            ["rate_limit", "remaining", "ttl_seconds"]
        );
        assert_eq!(
            (r.rate_limit, r.remaining, r.ttl_seconds),
            (None, None, 2_592_000)
        );
        assert!(parse(&[]).update_mask.unwrap().paths.is_empty());
        assert!(Probe::try_parse_from(["p", "update", "b", "--enable", "--disable"]).is_err());
        assert!(Probe::try_parse_from(["p", "update", "b", "--metadata", "novalue"]).is_err());
    }
}
