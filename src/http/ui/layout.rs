//! The page shell (head, header navigation, notices) and small pieces every page uses.
//! maud escapes every interpolated value; nothing here builds HTML from strings.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::csrf;
use crate::domain::Caller;

/// Who is looking, for the navigation: `None` before sign-in.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub caller: Option<&'a Caller>,
    pub csrf: &'a str,
}

/// A message above the page's content.
pub enum Notice {
    Ok(String),
    Error(String),
}

impl Notice {
    pub fn ok(text: impl Into<String>) -> Option<Self> {
        Some(Self::Ok(text.into()))
    }

    pub fn error(text: impl Into<String>) -> Option<Self> {
        Some(Self::Error(text.into()))
    }
}

/// A whole page.
pub fn page(title: &str, viewer: Viewer<'_>, notice: Option<Notice>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · KMS console" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                header.topbar {
                    a.brand href="/ui/" { "KMS" }
                    @if let Some(caller) = viewer.caller {
                        nav aria-label="Main" {
                            @if caller.is_admin() {
                                a href="/ui/keys" { "Keys" }
                                a href="/ui/users" { "Users" }
                                a href="/ui/audit" { "Audit" }
                                a href="/ui/keyring" { "Keyring" }
                            }
                            a href="/ui/account" { "Account" }
                        }
                        div.who {
                            span data-testid="signed-in-as" { (caller.subject) }
                            form method="post" action="/ui/logout" {
                                (csrf_field(viewer.csrf))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @match notice {
                        Some(Notice::Ok(text)) => { p.notice.ok role="status" { (text) } }
                        Some(Notice::Error(text)) => { p.notice.error role="alert" data-testid="error" { (text) } }
                        None => {}
                    }
                    (content)
                }
            }
        }
    }
}

/// The hidden CSRF field every form that changes something carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(csrf::FIELD) value=(token); }
}

/// An HTML answer.
pub fn render(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn when_or(t: Option<DateTime<Utc>>, none: &str) -> String {
    t.map_or_else(|| none.to_owned(), when)
}

/// A secret shown once, with a copy button (app.js).
pub fn secret_box(secret: &str) -> Markup {
    html! {
        div.secret-box {
            p { "Copy it now: it is not shown again on this page." }
            div.secret-row {
                code #secret data-testid="secret" { (secret) }
                button.copy type="button" data-copy="secret" { "Copy" }
            }
        }
    }
}

/// A labelled input. `kind` is the input type.
pub fn field(label: &str, name: &str, kind: &str, value: &str, hint: Option<&str>) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) name=(name) type=(kind) value=(value);
            @if let Some(hint) = hint { small { (hint) } }
        }
    }
}
