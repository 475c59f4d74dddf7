//! Signing in and out. Sign-in is Auth.Login's own domain call (`AuthService::login`):
//! the same throttle, audit rows and equal-time refusal; the page never says whether
//! the user exists.

use axum::{
    Extension, Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use maud::html;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::super::{
    guard::{SessionChange, SignedIn, Visitor, end_login, see_other, with_change},
    layout::{Notice, Viewer, csrf_field, page, render},
    session,
};
use super::error_page::status_of;
use crate::{domain::Error, http::HttpState, net::ClientAddr};

const BAD_LOGIN: &str = "Incorrect username or password.";
const TOO_LARGE: &str = "Your account's roles make its session too large for a browser \
     cookie (4 KiB), so the console cannot keep you signed in. Use the API or the kms \
     command line, or ask an admin to give this account fewer or shorter roles.";

#[derive(Deserialize, Default)]
pub struct SignInQuery {
    #[serde(default)]
    ended: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// `/ui/`: the keys for admins, the account page for other users.
pub async fn home(Visitor(session): Visitor) -> Response {
    match session.caller {
        Some(caller) if caller.is_admin() => see_other("/ui/keys"),
        Some(_) => see_other("/ui/account"),
        None => see_other("/ui/login"),
    }
}

pub async fn form(Visitor(session): Visitor, Query(query): Query<SignInQuery>) -> Response {
    if session.caller.is_some() {
        return see_other("/ui/");
    }
    let notice = if query.done.as_deref() == Some("password") {
        Notice::ok("Your password was changed. Sign in with the new one.")
    } else if query.done.as_deref() == Some("signed-out") {
        Notice::ok("You are signed out.")
    } else if query.ended.is_some() || session.ended {
        Notice::error("Your session has ended. Sign in again.")
    } else {
        None
    };
    render(StatusCode::OK, sign_in_page(&session.csrf, "", notice))
}

fn sign_in_page(csrf: &str, username: &str, notice: Option<Notice>) -> maud::Markup {
    let viewer = Viewer { caller: None, csrf };
    page(
        "Sign in",
        viewer,
        notice,
        html! {
            form.card.narrow method="post" action="/ui/login" {
                (csrf_field(csrf))
                div.field {
                    label for="f-username" { "Username" }
                    input #f-username name="username" type="text" value=(username)
                        autocomplete="username" required autofocus;
                }
                div.field {
                    label for="f-password" { "Password" }
                    input #f-password name="password" type="password"
                        autocomplete="current-password" required;
                }
                button.primary type="submit" { "Sign in" }
            }
        },
    )
}

pub async fn submit(
    State(state): State<HttpState>,
    Visitor(session): Visitor,
    client: Option<Extension<ClientAddr>>,
    Form(form): Form<SignInForm>,
) -> Response {
    let client = client.map(|Extension(ClientAddr(ip))| ip);
    let result = state
        .auth
        .login(&form.username, Zeroizing::new(form.password), client)
        .await;
    state.metrics.login_answered(&result, true);
    match result {
        Ok(tokens) => {
            let tokens = session::Tokens {
                access: tokens.access.token,
                refresh: tokens.refresh_token,
            };
            if !session::signed_in_fits(&state.keyring, &tokens, chrono::Utc::now().timestamp()) {
                // Without this the browser drops the cookie and the sign-in page comes
                // back without a word.
                tracing::warn!(
                    user = %form.username,
                    "console sign-in refused: the session would not fit in a cookie (many or long roles)"
                );
                end_login(&state, &tokens.access).await;
                return render(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    sign_in_page(&session.csrf, &form.username, Notice::error(TOO_LARGE)),
                );
            }
            with_change(see_other("/ui/"), SessionChange::SignIn(tokens))
        }
        Err(e) => {
            // As the REST API and gRPC (`retry-after` metadata) say it.
            let retry_after = match &e {
                Error::Throttled { retry_after_secs } => Some(*retry_after_secs),
                _ => None,
            };
            let (status, message) = match e {
                // A username that could never exist is just another wrong login.
                Error::Unauthenticated(_) | Error::InvalidArgument { .. } => {
                    (StatusCode::UNAUTHORIZED, BAD_LOGIN.to_owned())
                }
                Error::Throttled { retry_after_secs } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Too many failed sign-ins. Try again in {retry_after_secs} s."),
                ),
                other => status_of(other),
            };
            let mut response = render(
                status,
                sign_in_page(&session.csrf, &form.username, Notice::error(message)),
            );
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, seconds.into());
            }
            response
        }
    }
}

pub async fn sign_out(State(state): State<HttpState>, who: SignedIn) -> Response {
    if let Err(e) = state.auth.logout(&who.caller).await {
        // The cookie goes all the same; the login then ends at its own expiry.
        tracing::warn!(error = %e, "console sign-out could not revoke the login");
    }
    with_change(
        see_other("/ui/login?done=signed-out"),
        SessionChange::SignOut,
    )
}
