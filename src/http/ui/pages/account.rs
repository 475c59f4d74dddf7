//! The signed-in user's own account: who they are, their roles, and a password change
//! (the domain's ChangePassword: the old password is checked under the login
//! throttle, and every token of the user stops working, this session's too).

use axum::{Extension, Form, extract::State, http::StatusCode, response::Response};
use maud::{Markup, html};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    super::{
        guard::{SessionChange, SignedIn, see_other, with_change},
        layout::{Notice, Viewer, csrf_field, page, render},
    },
    error_page::status_of,
};
use crate::{
    domain::{Error, users::PasswordChange},
    http::HttpState,
    net::ClientAddr,
};

#[derive(Deserialize, Default)]
pub struct PasswordForm {
    #[serde(default)]
    old_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm_password: String,
}

pub async fn show(who: SignedIn) -> Response {
    render(StatusCode::OK, account_page(&who, None))
}

fn account_page(who: &SignedIn, notice: Option<Notice>) -> Markup {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    page(
        "Your account",
        viewer,
        notice,
        html! {
            dl.facts {
                dt { "Username" } dd data-testid="username" { (who.caller.subject) }
                dt { "Roles" } dd {
                    @for role in who.caller.roles.iter() { span.badge.info { (role) } " " }
                }
            }
            @if !who.caller.is_admin() {
                p.muted { "Keys, users, the audit log and the keyring are managed by admins." }
            }
            section.card.narrow {
                h2 { "Change password" }
                form method="post" action="/ui/account/password" autocomplete="off" {
                    (csrf_field(&who.csrf))
                    div.field {
                        label for="f-old" { "Current password" }
                        input #f-old name="old_password" type="password" autocomplete="current-password" required;
                    }
                    div.field {
                        label for="f-new" { "New password" }
                        input #f-new name="new_password" type="password" autocomplete="new-password" required;
                    }
                    div.field {
                        label for="f-confirm" { "New password again" }
                        input #f-confirm name="confirm_password" type="password" autocomplete="new-password" required;
                    }
                    button.primary type="submit" { "Change password" }
                }
            }
        },
    )
}

pub async fn change_password(
    State(state): State<HttpState>,
    who: SignedIn,
    client: Option<Extension<ClientAddr>>,
    Form(form): Form<PasswordForm>,
) -> Response {
    if form.new_password != form.confirm_password {
        let e = Error::invalid("confirm_password", "does not match the new password");
        let (status, message) = status_of(e);
        return render(status, account_page(&who, Notice::error(message)));
    }
    let change = PasswordChange {
        username: String::new(),
        old_password: Zeroizing::new(form.old_password),
        new_password: Zeroizing::new(form.new_password),
        client: client.map(|Extension(ClientAddr(ip))| ip),
    };
    match state.users.change_password(&who.caller, change).await {
        // Every token of the user is now refused: this session is over too.
        Ok(()) => with_change(see_other("/ui/login?done=password"), SessionChange::SignOut),
        Err(e) => {
            let (status, message) = status_of(e);
            render(status, account_page(&who, Notice::error(message)))
        }
    }
}
