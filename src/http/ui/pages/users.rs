//! Users, for admins: the list, registering a user (Register with an admin caller, so
//! any roles), one user's roles, and deleting a user (typed confirmation).

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    super::{
        guard::{Admin, SignedIn, see_other},
        layout::{Notice, Viewer, csrf_field, field, page, render, when},
    },
    error_page::status_of,
};
use crate::{
    domain::{
        Error,
        users::{NewUser, UserView},
    },
    http::HttpState,
};

const PAGE_SIZE: i32 = 50;

#[derive(Deserialize, Default)]
pub struct UsersQuery {
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    done: String,
}

#[derive(Deserialize, Default)]
pub struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    roles: String,
    #[serde(default)]
    confirm_username: String,
}

/// `"admin, user"` or `"admin user"` -> `["admin", "user"]`.
fn split_roles(roles: &str) -> Vec<String> {
    roles
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

fn user_href(username: &str) -> String {
    let query = serde_urlencoded::to_string([("username", username)]).unwrap_or_default();
    format!("/ui/user?{query}")
}

fn viewer(who: &SignedIn) -> Viewer<'_> {
    Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    }
}

pub async fn list(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Query(query): Query<UsersQuery>,
) -> Response {
    let notice = match query.done.as_str() {
        "registered" => Notice::ok("The user was registered."),
        "deleted" => Notice::ok("The user was deleted; their tokens no longer work."),
        _ => None,
    };
    list_page(&state, &who, &query.page_token, notice, StatusCode::OK).await
}

async fn list_page(
    state: &HttpState,
    who: &SignedIn,
    page_token: &str,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let (status, notice, users, next) =
        match state.users.list(&who.caller, PAGE_SIZE, page_token).await {
            Ok((users, next)) => (status, notice, users, next),
            Err(e) => {
                let (status, message) = status_of(e);
                (status, Notice::error(message), Vec::new(), String::new())
            }
        };
    render(
        status,
        page(
            "Users",
            viewer(who),
            notice,
            users_body(&who.csrf, &users, &next),
        ),
    )
}

fn users_body(csrf: &str, users: &[UserView], next: &str) -> Markup {
    let next = (!next.is_empty()).then(|| {
        let q = serde_urlencoded::to_string([("page_token", next)]).unwrap_or_default();
        format!("/ui/users?{q}")
    });
    html! {
        table {
            thead { tr { th { "Username" } th { "Roles" } th { "Created" } } }
            tbody {
                @for user in users {
                    tr data-testid="user-row" {
                        td { a href=(user_href(&user.username)) { (user.username) } }
                        td { @for role in &user.roles { span.badge.info { (role) } " " } }
                        td { (when(user.created_at)) }
                    }
                }
            }
        }
        @if let Some(next) = next { p { a href=(next) rel="next" { "Next page →" } } }
        section.card.narrow {
            h2 { "Register a user" }
            form method="post" action="/ui/users" autocomplete="off" {
                (csrf_field(csrf))
                (field("Username", "username", "text", "", None))
                (field("Password", "password", "password", "", Some("At least KMS_PASSWORD_MIN_LENGTH bytes.")))
                (field("Roles", "roles", "text", "user", Some("Separated by spaces or commas.")))
                button.primary type="submit" { "Register" }
            }
        }
    }
}

pub async fn register(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<UserForm>,
) -> Response {
    let new = NewUser {
        username: form.username.trim().to_owned(),
        password: Zeroizing::new(form.password),
        roles: split_roles(&form.roles),
    };
    match state.auth.register(Some(&who.caller), new).await {
        Ok(_) => see_other("/ui/users?done=registered"),
        Err(e) => {
            let (status, message) = status_of(e);
            list_page(&state, &who, "", Notice::error(message), status).await
        }
    }
}

pub async fn detail(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Query(query): Query<UsersQuery>,
) -> Response {
    let notice = match query.done.as_str() {
        "roles" => Notice::ok("Roles saved; the user's tokens issued before no longer work."),
        _ => None,
    };
    user_page(&state, &who, &query.username, notice, StatusCode::OK).await
}

async fn user_page(
    state: &HttpState,
    who: &SignedIn,
    username: &str,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    match state.users.get(&who.caller, username).await {
        Ok(user) => render(
            status,
            page(
                &user.username,
                viewer(who),
                notice,
                user_body(&who.csrf, &user),
            ),
        ),
        Err(e) => {
            let (status, message) = status_of(e);
            render(
                status,
                page(
                    "User",
                    viewer(who),
                    Notice::error(message),
                    html! { p { a href="/ui/users" { "All users" } } },
                ),
            )
        }
    }
}

fn user_body(csrf: &str, user: &UserView) -> Markup {
    let name = user.username.as_str();
    html! {
        p { a href="/ui/users" { "← All users" } }
        dl.facts {
            dt { "Username" } dd { (name) }
            dt { "Roles" } dd { @for role in &user.roles { span.badge.info { (role) } " " } }
            dt { "Created" } dd { (when(user.created_at)) }
            dt { "Updated" } dd { (when(user.updated_at)) }
        }
        section.card.narrow {
            h2 { "Roles" }
            form method="post" action="/ui/user/roles" {
                (csrf_field(csrf))
                input type="hidden" name="username" value=(name);
                (field("Roles", "roles", "text", &user.roles.join(" "), Some("Separated by spaces or commas, e.g. admin user.")))
                button.primary type="submit" { "Save roles" }
            }
        }
        section.card.narrow.danger {
            h2 { "Delete" }
            form method="post" action="/ui/user/delete" {
                (csrf_field(csrf))
                input type="hidden" name="username" value=(name);
                div.field {
                    label for="f-confirm" { "Type " code { (name) } " to confirm" }
                    input #f-confirm name="confirm_username" type="text" autocomplete="off"
                        data-confirm=(name) data-enables="delete-button";
                }
                button #delete-button .danger type="submit" { "Delete user" }
            }
        }
    }
}

pub async fn set_roles(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<UserForm>,
) -> Response {
    let roles = split_roles(&form.roles);
    match state
        .users
        .set_roles(&who.caller, &form.username, &roles)
        .await
    {
        Ok(_) => see_other(&format!("{}&done=roles", user_href(&form.username))),
        Err(e) => {
            let (status, message) = status_of(e);
            user_page(&state, &who, &form.username, Notice::error(message), status).await
        }
    }
}

pub async fn delete(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<UserForm>,
) -> Response {
    let result = if form.confirm_username == form.username {
        state.users.delete(&who.caller, &form.username).await
    } else {
        Err(Error::invalid(
            "confirm_username",
            "type the username exactly to delete the user",
        ))
    };
    match result {
        Ok(()) => see_other("/ui/users?done=deleted"),
        Err(e) => {
            let (status, message) = status_of(e);
            user_page(&state, &who, &form.username, Notice::error(message), status).await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn roles_are_split_on_spaces_and_commas() {
        assert_eq!(super::split_roles("admin, user"), vec!["admin", "user"]);
        assert_eq!(super::split_roles(" user "), vec!["user"]);
        assert!(super::split_roles("").is_empty());
    }
}
