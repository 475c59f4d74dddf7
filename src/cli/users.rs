//! `kms users list|get|register|set-roles|delete|change-password`: the Users
//! service, and Auth.Register with the admin's token (which may grant any roles).

use std::io::IsTerminal;

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::{
    ClientOptions, PageArgs,
    error::CliError,
    keys::list_or,
    output::{Output, Style, note},
    prompt,
    session::Session,
};
use crate::proto::kms::v1 as pb;

#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: UsersCommand,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users, ordered by username.
    List(PageArgs),
    /// Show a user.
    Get(UsernameArg),
    /// Create a user with the roles given; the password is asked for on the
    /// terminal, or read from standard input with --password-stdin.
    Register(RegisterArgs),
    /// Replace a user's roles (every token the user holds stops working).
    SetRoles(SetRolesArgs),
    /// Delete a user and every login of it.
    Delete(UsernameArg),
    /// Change your own password (current, then new), or with --username set another
    /// user's (admin; new password only). Asked for on the terminal, or one per line
    /// on standard input with --password-stdin.
    ChangePassword(ChangePasswordArgs),
}

#[derive(Debug, Args)]
pub struct UsernameArg {
    /// The user's name.
    pub username: String,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The new user's name: 1..64 characters of A-Z a-z 0-9 . _ @ -
    pub username: String,
    /// A role to grant (repeat for several; none: `user`).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct SetRolesArgs {
    /// The user's name.
    pub username: String,
    /// A role (repeat for several; at least one).
    #[arg(long = "role", value_name = "ROLE", required = true)]
    pub roles: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ChangePasswordArgs {
    /// Set this user's password (admin) instead of your own.
    #[arg(long)]
    pub username: Option<String>,
    /// Read the passwords from standard input, one per line: current then new for
    /// your own, only the new one with --username.
    #[arg(long)]
    pub password_stdin: bool,
}

pub async fn run(args: UsersArgs, out: &Output) -> Result<(), CliError> {
    let mut s = Session::open(&args.client).await?;
    match args.command {
        UsersCommand::List(page) => list(&mut s, out, page).await,
        UsersCommand::Get(a) => {
            let request = pb::GetUserRequest {
                username: a.username,
            };
            let user = s
                .call(async |mut c| c.users.get_user(request.clone()).await)
                .await?;
            out.emit(&user, |o| show_user(o, &user))
        }
        UsersCommand::Register(a) => {
            let password = new_password(a.password_stdin).await?;
            let request = pb::RegisterRequest {
                username: a.username,
                password: password.as_str().to_owned(),
                roles: a.roles,
            };
            let user = s
                .call(async |mut c| c.auth.register(request.clone()).await)
                .await?;
            out.emit(&user, |o| {
                o.fields(&[
                    ("username", user.username.clone(), Style::Bold),
                    ("roles", list_or(&user.roles, "-"), Style::Plain),
                ])
            })
        }
        UsersCommand::SetRoles(a) => {
            let request = pb::SetRolesRequest {
                username: a.username,
                roles: a.roles,
            };
            let user = s
                .call(async |mut c| c.users.set_roles(request.clone()).await)
                .await?;
            out.emit(&user, |o| show_user(o, &user))
        }
        UsersCommand::Delete(a) => {
            let request = pb::DeleteUserRequest {
                username: a.username.clone(),
            };
            let answer = s
                .call(async |mut c| c.users.delete_user(request.clone()).await)
                .await?;
            out.emit(&answer, |_| {
                note(&format!("user {} deleted", a.username));
                String::new()
            })
        }
        UsersCommand::ChangePassword(a) => change_password(&mut s, out, a).await,
    }
}

async fn list(s: &mut Session, out: &Output, page: PageArgs) -> Result<(), CliError> {
    let (users, next_page_token) = page
        .fetch(s, async |s, page_size, page_token| {
            let request = pb::ListUsersRequest {
                page_size,
                page_token,
            };
            let answer = s
                .call(async |mut c| c.users.list_users(request.clone()).await)
                .await?;
            Ok((answer.users, answer.next_page_token))
        })
        .await?;
    let all = pb::ListUsersResponse {
        users,
        next_page_token,
    };
    out.emit(&all, |o| {
        let rows: Vec<Vec<(String, Style)>> = all
            .users
            .iter()
            .map(|u| {
                vec![
                    (u.username.clone(), Style::Plain),
                    (list_or(&u.roles, "-"), Style::Plain),
                    (o.ago(u.created_at.as_ref(), "-"), Style::Plain),
                    (o.ago(u.updated_at.as_ref(), "-"), Style::Plain),
                ]
            })
            .collect();
        o.table(&["USERNAME", "ROLES", "CREATED", "UPDATED"], &rows)
    })?;
    super::note_more(out, "users", &all.next_page_token);
    Ok(())
}

async fn change_password(
    s: &mut Session,
    out: &Output,
    a: ChangePasswordArgs,
) -> Result<(), CliError> {
    let own = a.username.is_none();
    let (old, new) = if a.password_stdin {
        let mut lines = prompt::stdin_lines(if own { 2 } else { 1 }, "the passwords")?;
        let new = lines.pop().unwrap_or_default();
        (lines.pop().unwrap_or_default(), new)
    } else {
        let old = if own {
            prompt::ask_secret("Current password").await?
        } else {
            Zeroizing::new(String::new())
        };
        (old, prompt::ask_new_secret("New password").await?)
    };
    let target = a.username.unwrap_or_default();
    let request = pb::ChangePasswordRequest {
        username: target.clone(),
        old_password: old.as_str().to_owned(),
        new_password: new.as_str().to_owned(),
    };
    let answer = s
        .call(async |mut c| c.users.change_password(request.clone()).await)
        .await?;
    if own {
        // The server ended every login of the account, this one included.
        s.forget()?;
    }
    let who = if own { s.username().to_owned() } else { target };
    out.emit(&answer, |_| {
        note(&format!(
            "password of {who} changed: every login of it has ended{}",
            if own { "; run `kms login` again" } else { "" }
        ));
        String::new()
    })
}

/// A new user's password: the first line of stdin, or asked for twice.
async fn new_password(from_stdin: bool) -> Result<Zeroizing<String>, CliError> {
    if from_stdin {
        let mut lines = prompt::stdin_lines(1, "the password")?;
        Ok(lines.remove(0))
    } else if std::io::stdin().is_terminal() {
        prompt::ask_new_secret("Password").await
    } else {
        Err(CliError::other(
            "standard input is not a terminal: give the password with --password-stdin",
        ))
    }
}

fn show_user(o: &Output, u: &pb::User) -> String {
    o.fields(&[
        ("username", u.username.clone(), Style::Bold),
        ("roles", list_or(&u.roles, "-"), Style::Plain),
        ("created", o.when(u.created_at.as_ref(), "-"), Style::Plain),
        ("updated", o.when(u.updated_at.as_ref(), "-"), Style::Plain),
    ])
}
