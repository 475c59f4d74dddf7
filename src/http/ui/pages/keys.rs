//! The keys list (search by name prefix, pages) and creating a key.

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    super::{
        guard::Admin,
        layout::{Notice, Viewer, csrf_field, field, page, render, secret_box, when_or},
    },
    error_page::status_of,
    key_form::{KeyForm, key_facts, policy_fields},
};
use crate::{
    domain::{
        Result,
        keys::{ApiKeyView, CreateKey, KeyPage},
    },
    http::HttpState,
};

const PAGE_SIZE: i32 = 50;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    done: String,
}

/// The key's state as badges: expired, disabled, out of credits, rate limit.
pub fn badges(key: &ApiKeyView) -> Markup {
    let expired = key.expires_at.is_some_and(|t| t <= Utc::now());
    let no_credits = key.remaining == Some(0);
    html! {
        @if expired { span.badge.bad data-testid="badge" { "expired" } " " }
        @if !key.enabled { span.badge.off data-testid="badge" { "disabled" } " " }
        @if no_credits { span.badge.warn data-testid="badge" { "out of credits" } " " }
        @if let Some(l) = key.rate_limit {
            span.badge.info data-testid="badge" title="rate limited" { "rate limit " (l.requests) "/" (l.window_seconds) "s" } " "
        }
        @if !expired && key.enabled && !no_credits { span.badge.good data-testid="badge" { "active" } }
    }
}

pub fn detail_href(service_name: &str) -> String {
    let query = serde_urlencoded::to_string([("service_name", service_name)]).unwrap_or_default();
    format!("/ui/key?{query}")
}

pub async fn list(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Query(query): Query<ListQuery>,
) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    let result = state
        .keys
        .search(
            &who.caller,
            query.prefix.trim(),
            PAGE_SIZE,
            &query.page_token,
        )
        .await;
    let notice = match query.done.as_str() {
        "revoked" => Notice::ok("The key was revoked: none of its secrets verify any more."),
        _ => None,
    };
    let (status, notice, listed) = match result {
        Ok(listed) => (StatusCode::OK, notice, listed),
        Err(e) => {
            let (status, message) = status_of(e);
            let empty = KeyPage {
                keys: Vec::new(),
                next_page_token: String::new(),
            };
            (status, Notice::error(message), empty)
        }
    };
    render(
        status,
        page("Keys", viewer, notice, keys_table(&query, &listed)),
    )
}

fn keys_table(query: &ListQuery, listed: &KeyPage) -> Markup {
    let next = (!listed.next_page_token.is_empty()).then(|| {
        let q = serde_urlencoded::to_string([
            ("prefix", query.prefix.as_str()),
            ("page_token", listed.next_page_token.as_str()),
        ])
        .unwrap_or_default();
        format!("/ui/keys?{q}")
    });
    html! {
        div.toolbar {
            form.search method="get" action="/ui/keys" role="search" {
                label for="f-prefix" { "Service name starts with" }
                input #f-prefix name="prefix" type="search" value=(query.prefix);
                button type="submit" { "Search" }
            }
            a.button.primary href="/ui/keys/new" { "New key" }
        }
        @if listed.keys.is_empty() {
            p.muted { "No keys." }
        } @else {
            table {
                thead { tr {
                    th { "Service name" } th { "Key prefix" } th { "Description" }
                    th { "Status" } th { "Expires" } th { "Last used" }
                } }
                tbody {
                    @for key in &listed.keys {
                        tr data-testid="key-row" {
                            td { a href=(detail_href(&key.service_name)) { (key.service_name) } }
                            td { code { (key.key_prefix) } }
                            td { (key.description) }
                            td { (badges(key)) }
                            td { (when_or(key.expires_at, "never")) }
                            td { (when_or(key.last_used_at, "never")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { p { a href=(next) rel="next" { "Next page →" } } }
    }
}

pub async fn new_form(Admin(who): Admin) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    render(
        StatusCode::OK,
        page(
            "New key",
            viewer,
            None,
            create_form(&who.csrf, &KeyForm::default()),
        ),
    )
}

fn create_form(csrf: &str, form: &KeyForm) -> Markup {
    html! {
        form.card method="post" action="/ui/keys" autocomplete="off" {
            (csrf_field(csrf))
            div.field {
                label for="f-service_name" { "Service name" }
                input #f-service_name name="service_name" type="text" value=(form.service_name)
                    required maxlength="64" pattern="[A-Za-z0-9._\\-]+";
                small { "1 to 64 of A-Z a-z 0-9 . _ -" }
            }
            (policy_fields(form, false))
            (field("Import a secret (optional)", "api_key", "password", "",
                Some("Leave empty and the KMS generates one.")))
            button.primary type="submit" { "Create key" }
        }
    }
}

fn create_request(form: &KeyForm) -> Result<CreateKey> {
    Ok(CreateKey {
        service_name: form.service_name.trim().to_owned(),
        api_key: (!form.api_key.is_empty()).then(|| form.api_key.clone()),
        description: form.description.clone(),
        ttl_seconds: form.ttl_seconds()?.unwrap_or(0),
        scopes: form.scopes(),
        metadata: form.metadata()?,
        rate_limit: form.rate_limit()?,
        remaining: form.remaining()?,
    })
}

/// Creates the key and answers the POST with the page that shows the secret, once:
/// no redirect carries it, and nothing else shows it again but a Reveal.
pub async fn create(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<KeyForm>,
) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    let created = match create_request(&form) {
        Ok(request) => state.keys.create(&who.caller, request).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(key) => render(
            StatusCode::CREATED,
            page(
                "Key created",
                viewer,
                Notice::ok(format!("The key for {} was created.", key.service_name)),
                html! {
                    (secret_box(&key.api_key))
                    (key_facts(&key))
                    p { a href=(detail_href(&key.service_name)) { "Go to the key" } " · " a href="/ui/keys" { "All keys" } }
                },
            ),
        ),
        Err(e) => {
            let (status, message) = status_of(e);
            let kept = KeyForm {
                api_key: String::new(),
                ..form
            };
            render(
                status,
                page(
                    "New key",
                    viewer,
                    Notice::error(message),
                    create_form(&who.csrf, &kept),
                ),
            )
        }
    }
}
