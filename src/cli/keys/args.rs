//! The flags of `kms keys`, parsed into the request types; `update` builds its field
//! mask from the flags given.

use std::collections::HashMap;

use clap::{Args, Subcommand};

use crate::cli::{ClientOptions, PageArgs, time::parse_duration};
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

/// Description and policy, shared by create and update.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What the key is for, for people.
    #[arg(long)]
    pub description: Option<String>,
    /// A scope the key grants (repeat for several; a trailing `*` grants every scope
    /// with that start). With `update`, the scopes given replace all the key had.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// A metadata entry KEY=VALUE (repeat for several; stored in clear). With
    /// `update`, the entries given replace all the key had.
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

impl CreateArgs {
    /// The request; `api_key` is the secret to import, if any.
    pub(super) fn request(&self, api_key: Option<String>) -> pb::CreateKeyRequest {
        let p = &self.policy;
        pb::CreateKeyRequest {
            service_name: self.service_name.clone(),
            api_key,
            description: p.description.clone().unwrap_or_default(),
            ttl_seconds: p.ttl().unwrap_or(0),
            scopes: p.scopes.clone(),
            metadata: p.metadata_map(),
            rate_limit: p.rate_limit,
            remaining: p.remaining,
        }
    }
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
    pub(super) fn request(&self) -> pb::UpdateKeyRequest {
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
