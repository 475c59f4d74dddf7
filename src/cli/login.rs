//! `kms login` and `kms logout`.

use std::io::IsTerminal;

use clap::Args;
use tonic::Request;

use super::{
    ClientOptions,
    connect::{connect, server_key},
    credentials::CredentialStore,
    error::{CliError, EXIT_UNAUTHENTICATED},
    output::note,
    prompt,
    session::{Session, UNARY_TIMEOUT, login_from},
};
use crate::proto::kms::v1::{self as pb, auth_client::AuthClient};

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Asked for on the terminal when not given.
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password from the first line of standard input instead of asking.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub client: ClientOptions,
}

pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    let server = server_key(&args.client.server);
    let store = CredentialStore::new(args.client.config_dir.clone())?;
    let username = match args.username {
        Some(name) => name,
        None if std::io::stdin().is_terminal() => prompt::ask("Username", "--username")?,
        None => {
            return Err(CliError::other(
                "standard input is not a terminal: give --username",
            ));
        }
    };
    let password = if args.password_stdin {
        prompt::stdin_lines(1, "the password")?.remove(0)
    } else if std::io::stdin().is_terminal() {
        prompt::ask_secret("Password").await?
    } else {
        return Err(CliError::other(
            "standard input is not a terminal: give the password with --password-stdin",
        ));
    };
    let channel = connect(&args.client).await?;
    let mut request = Request::new(pb::LoginRequest {
        username: username.clone(),
        password: password.as_str().to_owned(),
    });
    request.set_timeout(UNARY_TIMEOUT);
    let answer = AuthClient::new(channel)
        .login(request)
        .await
        .map_err(|status| match status.code() {
            // A wrong password is not "run kms login": this is kms login.
            tonic::Code::Unauthenticated => CliError {
                message: format!("UNAUTHENTICATED: {}", status.message()),
                exit: EXIT_UNAUTHENTICATED,
            },
            _ => CliError::status(&status, &server),
        })?
        .into_inner();
    let expires_in = answer.expires_in;
    store.save(&server, login_from(&username, answer))?;
    note(&format!(
        "logged in to {server} as {username} (access token valid for {expires_in} s, renewed automatically; credentials in {})",
        store.path().display()
    ));
    Ok(())
}

pub async fn logout(args: LogoutArgs) -> Result<(), CliError> {
    let server = server_key(&args.client.server);
    let store = CredentialStore::new(args.client.config_dir.clone())?;
    if store.load(&server)?.is_none() {
        note(&format!("not logged in to {server}"));
        return Ok(());
    }
    match Session::open(&args.client).await {
        Ok(session) => session.logout().await?,
        // The login had ended already: only the local copy is left to forget.
        Err(e) if e.exit == EXIT_UNAUTHENTICATED => {
            store.remove(&server)?;
        }
        Err(e) => return Err(e),
    }
    note(&format!("logged out of {server}"));
    Ok(())
}
