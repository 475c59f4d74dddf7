//! Error pages: the status and wording come from the REST API's one map of domain
//! errors (`http/error.rs`), so the two transports cannot drift apart.

use axum::{http::StatusCode, response::Response};
use maud::html;

use super::super::{
    guard::SignedIn,
    layout::{Notice, Viewer, page, render},
};
use crate::{domain::Error, http::error::ApiError};

/// The status and message of a domain error.
pub fn status_of(e: Error) -> (StatusCode, String) {
    let api = ApiError::from(e);
    let (status, message) = api.parts();
    (status, message.to_owned())
}

/// A page for an error met before any page could be drawn (the session's login could
/// not be checked).
pub fn from_domain(e: Error) -> Response {
    let (status, message) = status_of(e);
    plain(status, "Something went wrong", &message)
}

/// A refused form: no or a wrong CSRF token (403), or a body too large (413).
pub fn refused(status: StatusCode) -> Response {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "The form is larger than the server accepts."
    } else {
        "This form has expired or did not come from this console. Go back, reload the \
         page and try again."
    };
    plain(status, "Request refused", message)
}

/// An admin page asked for by a user without the admin role.
pub fn forbidden(who: &SignedIn) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    render(
        StatusCode::FORBIDDEN,
        page(
            "Not allowed",
            viewer,
            Notice::error("This page needs the admin role."),
            html! { p { a href="/ui/account" { "Your account" } } },
        ),
    )
}

pub fn not_found(viewer: Viewer<'_>) -> Response {
    render(
        StatusCode::NOT_FOUND,
        page(
            "Not found",
            viewer,
            Notice::error("There is no such page."),
            html! { p { a href="/ui/" { "Start page" } } },
        ),
    )
}

fn plain(status: StatusCode, title: &str, message: &str) -> Response {
    let viewer = Viewer {
        caller: None,
        csrf: "",
    };
    render(
        status,
        page(
            title,
            viewer,
            Notice::error(message),
            html! { p { a href="/ui/" { "Start page" } } },
        ),
    )
}
