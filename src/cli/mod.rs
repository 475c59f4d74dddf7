//! The client commands of `kms`: an admin command line over gRPC (`kms login`,
//! `kms keys ...`, `kms users ...`, `kms audit ...`, `kms keyring ...`), thin: the
//! server validates, the client parses flags into types, calls, and prints.
//!
//! - `connect`: the channel (TLS, mutual TLS) to `--server` / `KMS_SERVER`;
//! - `credentials`: `credentials.json` (0600, written atomically), one login per server;
//! - `session`: the bearer token on every call, refreshed silently;
//! - `output`: proto3 JSON (`--output json`) or tables and fields for people;
//! - `prompt`: secrets from standard input or the terminal, never from argv;
//! - `error`: `kms: CODE: message` and the exit statuses;
//! - one file per command group, `help` for the grouped `--help` and completions.

mod audit;
mod connect;
mod credentials;
mod error;
pub mod help;
mod keyring;
mod keys;
mod login;
mod output;
mod prompt;
mod session;
mod time;
mod users;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

pub use audit::AuditArgs;
pub use error::CliError;
pub use help::CompletionsArgs;
pub use keyring::KeyringArgs;
pub use keys::KeysArgs;
pub use login::{LoginArgs, LogoutArgs};
pub use output::{ColorChoice, OutputFormat};
pub use users::UsersArgs;

/// Where the server is, how to trust it, where the login is kept, how to print.
/// Accepted before or after the subcommand (`kms keys list --output json`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server, login and output")]
pub struct ClientOptions {
    /// The server's gRPC URL; https:// for TLS.
    #[arg(
        long,
        env = "KMS_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// PEM CA certificate(s) to trust for an https:// server [default: the system's].
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, global = true, value_name = "PATH", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, global = true, value_name = "PATH", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Allow an http:// server on another machine: passwords and tokens then cross the
    /// network in clear (only for a trusted network, e.g. a mesh sidecar's mTLS).
    #[arg(long, env = "KMS_ALLOW_PLAINTEXT", global = true)]
    pub allow_plaintext: bool,
    /// Where credentials.json is kept [default: ~/.config/kms].
    #[arg(long, env = "KMS_CONFIG_DIR", global = true, value_name = "PATH")]
    pub config_dir: Option<PathBuf>,
    /// text for people, json (proto3 JSON, .proto field names) for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "text", global = true)]
    pub output: OutputFormat,
    /// Colour in text output: auto (a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub color: ColorChoice,
}

/// Paging of the list commands.
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

impl PageArgs {
    /// The page asked for, or with `--all` every page from it on: the items and the
    /// next page's token (empty after the last). `fetch` makes one call for a page
    /// size and token.
    pub async fn fetch<T>(
        &self,
        s: &mut session::Session,
        mut fetch: impl AsyncFnMut(
            &mut session::Session,
            i32,
            String,
        ) -> Result<(Vec<T>, String), CliError>,
    ) -> Result<(Vec<T>, String), CliError> {
        let mut items = Vec::new();
        let mut token = self.page_token.clone();
        loop {
            let (page, next) = fetch(s, self.page_size, token).await?;
            items.extend(page);
            token = next;
            if !self.all || token.is_empty() {
                return Ok((items, token));
            }
        }
    }
}

/// After a list in text: how to get the rest, when there is more.
pub fn note_more(out: &output::Output, what: &str, next_page_token: &str) {
    if !next_page_token.is_empty() && !out.json() {
        output::note(&format!(
            "more {what}: --page-token {next_page_token} (or --all)"
        ));
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Log in to a server and keep the tokens in credentials.json.
    Login(LoginArgs),
    /// End the login on the server and forget it here.
    Logout(LogoutArgs),
    /// API keys: create, get, list, update, rotate, revoke, verify.
    Keys(KeysArgs),
    /// Users: list, get, register, set-roles, delete, change-password.
    Users(UsersArgs),
    /// The audit trail: list, watch.
    Audit(AuditArgs),
    /// Data keys and token signing keys of a running server: status, rotate, rewrap,
    /// rotate-signing-key.
    Keyring(KeyringArgs),
    /// Print a shell completion script: `kms completions bash > ~/.local/share/bash-completion/completions/kms`.
    Completions(CompletionsArgs),
}

/// Runs a client command on a runtime of its own and says how it ended.
pub fn main(command: ClientCommand) -> ExitCode {
    for name in crate::config::unknown_env_vars() {
        output::note(&format!(
            "kms: warning: unknown variable {name} ignored (a typo?)"
        ));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::note(&format!("kms: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(command));
    // A prompt interrupted by Ctrl-C leaves its reading thread blocked: do not wait.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                output::note(&format!("kms: {}", output::printable(&e.message)));
            }
            e.exit_code()
        }
    }
}

async fn run(command: ClientCommand) -> Result<(), CliError> {
    let out = |o: &ClientOptions| output::Output::new(o.output, o.color);
    match command {
        ClientCommand::Login(a) => login::login(a).await,
        ClientCommand::Logout(a) => login::logout(a).await,
        ClientCommand::Keys(a) => {
            let o = out(&a.client);
            keys::run(a, &o).await
        }
        ClientCommand::Users(a) => {
            let o = out(&a.client);
            users::run(a, &o).await
        }
        ClientCommand::Audit(a) => {
            let o = out(&a.client);
            audit::run(a, &o).await
        }
        ClientCommand::Keyring(a) => {
            let o = out(&a.client);
            keyring::run(a, &o).await
        }
        ClientCommand::Completions(a) => help::completions(&a),
    }
}
