//! The keyring, for admins: the master key's id and the data keys, and the Keyring
//! service's actions (rotate the data key, re-seal secrets) plus the signing key's
//! rotation from Auth.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    super::{
        guard::{Admin, SignedIn, see_other},
        layout::{Notice, Viewer, csrf_field, page, render, when},
    },
    error_page::status_of,
};
use crate::{
    domain::keyring::{KeyringStatus, data_key_name},
    http::HttpState,
};

#[derive(Deserialize, Default)]
pub struct KeyringQuery {
    #[serde(default)]
    done: String,
}

pub async fn show(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Query(query): Query<KeyringQuery>,
) -> Response {
    let notice = match query.done.as_str() {
        "rotated" => Notice::ok("A new data key is current: new secrets are sealed with it."),
        _ => None,
    };
    keyring_page(&state, &who, notice, StatusCode::OK).await
}

async fn keyring_page(
    state: &HttpState,
    who: &SignedIn,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    match state.keyring.status(&who.caller).await {
        Ok(keyring) => render(
            status,
            page("Keyring", viewer, notice, keyring_body(&who.csrf, &keyring)),
        ),
        Err(e) => {
            let (status, message) = status_of(e);
            render(
                status,
                page("Keyring", viewer, Notice::error(message), html! {}),
            )
        }
    }
}

fn keyring_body(csrf: &str, keyring: &KeyringStatus) -> Markup {
    html! {
        dl.facts {
            dt { "Master key" } dd { code data-testid="master-key-id" { (keyring.master_key_id) } }
        }
        table {
            thead { tr { th { "Data key" } th { "Created" } th { "Sealed values" } th { "" } } }
            tbody {
                @for k in &keyring.data_keys {
                    tr data-testid="data-key-row" {
                        td { code { (data_key_name(k.id)) } }
                        td { (when(k.created_at)) }
                        td { (k.sealed_values) }
                        td { @if k.current { span.badge.good { "current" } } }
                    }
                }
            }
        }
        div.actions {
            (action_form(csrf, "/ui/keyring/rotate", "Rotate data key"))
            (action_form(csrf, "/ui/keyring/rewrap", "Re-seal secrets under the current key"))
            (action_form(csrf, "/ui/keyring/signing-key", "Rotate token signing key"))
        }
    }
}

fn action_form(csrf: &str, action: &str, label: &str) -> Markup {
    html! {
        form method="post" action=(action) {
            (csrf_field(csrf))
            button type="submit" { (label) }
        }
    }
}

pub async fn rotate(State(state): State<HttpState>, Admin(who): Admin) -> Response {
    match state.keyring.rotate(&who.caller).await {
        Ok(_) => see_other("/ui/keyring?done=rotated"),
        Err(e) => failed(&state, &who, e).await,
    }
}

pub async fn rewrap(State(state): State<HttpState>, Admin(who): Admin) -> Response {
    match state.keyring.rewrap_secrets(&who.caller).await {
        Ok(outcome) => {
            let text = if outcome.remaining > 0 {
                format!(
                    "Re-sealed: {}. Still under older keys: {} (re-seal again).",
                    outcome.rewrapped, outcome.remaining
                )
            } else {
                format!(
                    "Re-sealed: {}. Every secret is under the current data key.",
                    outcome.rewrapped
                )
            };
            keyring_page(&state, &who, Notice::ok(text), StatusCode::OK).await
        }
        Err(e) => failed(&state, &who, e).await,
    }
}

pub async fn rotate_signing_key(State(state): State<HttpState>, Admin(who): Admin) -> Response {
    match state.auth.rotate_signing_key(&who.caller).await {
        Ok(kid) => {
            let text = format!("Tokens are now signed with key {kid}.");
            keyring_page(&state, &who, Notice::ok(text), StatusCode::OK).await
        }
        Err(e) => failed(&state, &who, e).await,
    }
}

async fn failed(state: &HttpState, who: &SignedIn, e: crate::domain::Error) -> Response {
    let (status, message) = status_of(e);
    keyring_page(state, who, Notice::error(message), status).await
}
