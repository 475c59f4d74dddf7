//! `kms keyring status|rotate|rewrap|rotate-signing-key`: the Keyring service and
//! Auth.RotateSigningKey, on a running server (the offline `kms signing-key rotate`
//! and `kms master-key rewrap` open the database instead).

use clap::{Args, Subcommand};

use super::{
    ClientOptions,
    error::CliError,
    output::{Output, Style, note},
    session::Session,
};
use crate::proto::kms::v1 as pb;

#[derive(Debug, Args)]
pub struct KeyringArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: KeyringCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// Show the master key's id and the data keys with what each seals.
    Status,
    /// Make a new data key current (every replica seals with it within 1 s).
    Rotate,
    /// Re-seal every value not under the current data key, calling until none is
    /// left (or once with --once).
    Rewrap(RewrapArgs),
    /// Sign new access tokens with a new key at once (the running server's
    /// Auth.RotateSigningKey).
    RotateSigningKey,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// One call only: `remaining` tells what is left.
    #[arg(long)]
    pub once: bool,
}

pub async fn run(args: KeyringArgs, out: &Output) -> Result<(), CliError> {
    let mut s = Session::open(&args.client).await?;
    match args.command {
        KeyringCommand::Status => {
            let status = s
                .call(async |mut c| c.keyring.get_keyring(pb::GetKeyringRequest {}).await)
                .await?;
            out.emit(&status, |o| show(o, &status))
        }
        KeyringCommand::Rotate => {
            let status = s
                .call(async |mut c| c.keyring.rotate_data_key(pb::RotateDataKeyRequest {}).await)
                .await?;
            out.emit(&status, |o| show(o, &status))
        }
        KeyringCommand::Rewrap(a) => {
            let mut total = pb::RewrapSecretsResponse::default();
            loop {
                let step = s
                    .call(async |mut c| c.keyring.rewrap_secrets(pb::RewrapSecretsRequest {}).await)
                    .await?;
                total.rewrapped += step.rewrapped;
                total.remaining = step.remaining;
                // A call that moved nothing would move nothing the next time either.
                if a.once || step.remaining == 0 || step.rewrapped == 0 {
                    break;
                }
                note(&format!(
                    "{} re-sealed so far, {} to go",
                    total.rewrapped, total.remaining
                ));
            }
            out.emit(&total, |o| {
                o.fields(&[
                    ("rewrapped", total.rewrapped.to_string(), Style::Plain),
                    (
                        "remaining",
                        total.remaining.to_string(),
                        if total.remaining == 0 {
                            Style::Good
                        } else {
                            Style::Bad
                        },
                    ),
                ])
            })
        }
        KeyringCommand::RotateSigningKey => {
            let answer = s
                .call(async |mut c| {
                    c.auth
                        .rotate_signing_key(pb::RotateSigningKeyRequest {})
                        .await
                })
                .await?;
            out.emit(&answer, |o| {
                o.fields(&[("kid", answer.kid.clone(), Style::Bold)])
            })
        }
    }
}

fn show(o: &Output, status: &pb::KeyringStatus) -> String {
    let rows: Vec<Vec<(String, Style)>> = status
        .data_keys
        .iter()
        .map(|k| {
            vec![
                (k.id.clone(), Style::Plain),
                if k.current {
                    ("yes".to_owned(), Style::Good)
                } else {
                    ("no".to_owned(), Style::Plain)
                },
                (k.sealed_values.to_string(), Style::Plain),
                (o.ago(k.created_at.as_ref(), "-"), Style::Plain),
            ]
        })
        .collect();
    format!(
        "{}\n{}",
        o.fields(&[("master_key_id", status.master_key_id.clone(), Style::Bold)]),
        o.table(&["DATA KEY", "CURRENT", "SEALED VALUES", "CREATED"], &rows)
    )
}
