//! One key: its fields, and the actions on it (update, enable/disable, reveal,
//! rotate with a grace period, revoke with a typed confirmation). Secrets are only
//! ever in the answer to a POST, never in a URL.

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    super::{
        guard::{Admin, SignedIn, see_other},
        layout::{Notice, Viewer, csrf_field, page, render, secret_box},
    },
    error_page::status_of,
    key_form::{KeyForm, key_facts, number, policy_fields},
    keys::detail_href,
};
use crate::{
    domain::{
        Caller, Error, Result,
        keys::{ApiKeyView, UpdateKey},
    },
    http::HttpState,
};

/// The grace periods offered when rotating: (seconds, label).
const GRACE_CHOICES: &[(i64, &str)] = &[
    (0, "none: the old secret stops at once"),
    (300, "5 minutes"),
    (3600, "1 hour"),
    (86_400, "1 day"),
    (604_800, "7 days"),
    (2_592_000, "30 days"),
];

#[derive(Deserialize, Default)]
pub struct KeyQuery {
    #[serde(default)]
    service_name: String,
    #[serde(default)]
    done: String,
}

#[derive(Deserialize, Default)]
pub struct ActionForm {
    #[serde(default)]
    service_name: String,
    #[serde(default)]
    grace_period_seconds: String,
    #[serde(default)]
    confirm_service_name: String,
    #[serde(default)]
    enabled: String,
}

/// A key without its secret: found through the list, so that viewing a key is not a
/// secret read (GetKey is audited as one).
async fn find(state: &HttpState, caller: &Caller, service_name: &str) -> Result<ApiKeyView> {
    crate::domain::validate::service_name(service_name)?;
    state
        .keys
        .search(caller, service_name, 1, "")
        .await?
        .keys
        .into_iter()
        .find(|k| k.service_name == service_name)
        .ok_or_else(|| Error::NotFound(format!("no key for service_name '{service_name}'")))
}

pub async fn detail(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Query(query): Query<KeyQuery>,
) -> Response {
    let notice = match query.done.as_str() {
        "updated" => Notice::ok("Saved."),
        "enabled" => Notice::ok("The key is enabled."),
        "disabled" => Notice::ok("The key is disabled: it no longer verifies."),
        "unchanged" => Notice::ok("Nothing was changed."),
        _ => None,
    };
    show(
        &state,
        &who,
        &query.service_name,
        None,
        notice,
        StatusCode::OK,
    )
    .await
}

/// The key's page, with a secret when the POST just produced one.
async fn show(
    state: &HttpState,
    who: &SignedIn,
    service_name: &str,
    secret: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    match find(state, &who.caller, service_name).await {
        Ok(key) => render(
            status,
            page(
                &key.service_name,
                viewer,
                notice,
                detail_body(&who.csrf, &key, secret),
            ),
        ),
        Err(e) => {
            let (status, message) = status_of(e);
            render(
                status,
                page(
                    "Key",
                    viewer,
                    Notice::error(message),
                    html! { p { a href="/ui/keys" { "All keys" } } },
                ),
            )
        }
    }
}

fn detail_body(csrf: &str, key: &ApiKeyView, secret: Option<&str>) -> Markup {
    let name = key.service_name.as_str();
    let toggle_to = if key.enabled { "false" } else { "true" };
    let shown = KeyForm::of(key);
    html! {
        p { a href="/ui/keys" { "← All keys" } }
        @if let Some(secret) = secret { (secret_box(secret)) }
        (key_facts(key))
        div.actions {
            form method="post" action="/ui/key/reveal" {
                (csrf_field(csrf))
                input type="hidden" name="service_name" value=(name);
                button type="submit" data-testid="reveal" { "Reveal secret" }
                small { " Recorded in the audit log." }
            }
            form method="post" action="/ui/key/enabled" {
                (csrf_field(csrf))
                input type="hidden" name="service_name" value=(name);
                input type="hidden" name="enabled" value=(toggle_to);
                button type="submit" data-testid="toggle-enabled" {
                    @if key.enabled { "Disable" } @else { "Enable" }
                }
            }
        }
        section.card {
            h2 { "Rotate" }
            form method="post" action="/ui/key/rotate" {
                (csrf_field(csrf))
                input type="hidden" name="service_name" value=(name);
                div.field {
                    label for="f-grace" { "Grace period for the old secret" }
                    select #f-grace name="grace_period_seconds" {
                        @for (seconds, label) in GRACE_CHOICES {
                            option value=(seconds) selected[*seconds == 3600] { (label) }
                        }
                    }
                }
                button type="submit" data-testid="rotate" { "Rotate" }
            }
        }
        section.card {
            h2 { "Update" }
            form method="post" action="/ui/key/update" {
                (csrf_field(csrf))
                input type="hidden" name="service_name" value=(name);
                input type="hidden" name="shown" value=(shown.shown_json());
                (policy_fields(&shown, true))
                div.field {
                    label for="f-enabled" { "Enabled" }
                    select #f-enabled name="enabled" {
                        option value="true" selected[key.enabled] { "yes" }
                        option value="false" selected[!key.enabled] { "no" }
                    }
                }
                button.primary type="submit" { "Save" }
            }
        }
        section.card.danger {
            h2 { "Revoke" }
            p { "Every secret of this key stops verifying at once. This cannot be undone." }
            form method="post" action="/ui/key/revoke" {
                (csrf_field(csrf))
                input type="hidden" name="service_name" value=(name);
                div.field {
                    label for="f-confirm" { "Type " code { (name) } " to confirm" }
                    input #f-confirm name="confirm_service_name" type="text" autocomplete="off"
                        data-confirm=(name) data-enables="revoke-button";
                }
                button #revoke-button .danger type="submit" data-testid="revoke" { "Revoke key" }
            }
        }
    }
}

/// GetKey's own domain call, audited as GetKey is.
pub async fn reveal(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<ActionForm>,
) -> Response {
    match state.keys.get(&who.caller, &form.service_name).await {
        Ok(key) => {
            show(
                &state,
                &who,
                &form.service_name,
                Some(&key.api_key),
                Notice::ok("The secret is shown below. This read was recorded in the audit log."),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => failed(&state, &who, &form.service_name, e).await,
    }
}

pub async fn rotate(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<ActionForm>,
) -> Response {
    let grace = match number("grace_period_seconds", &form.grace_period_seconds) {
        Ok(grace) => grace.unwrap_or(0),
        Err(e) => return failed(&state, &who, &form.service_name, e).await,
    };
    match state
        .keys
        .rotate(&who.caller, &form.service_name, grace)
        .await
    {
        Ok(key) => {
            let old = if grace == 0 {
                "The old secret stopped working.".to_owned()
            } else {
                format!("The old secret keeps working for {grace} s.")
            };
            show(
                &state,
                &who,
                &form.service_name,
                Some(&key.api_key),
                Notice::ok(format!("Rotated: the new secret is below. {old}")),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => failed(&state, &who, &form.service_name, e).await,
    }
}

pub async fn revoke(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<ActionForm>,
) -> Response {
    if form.confirm_service_name != form.service_name {
        let e = Error::invalid(
            "confirm_service_name",
            "type the service name exactly to revoke the key",
        );
        return failed(&state, &who, &form.service_name, e).await;
    }
    match state.keys.revoke(&who.caller, &form.service_name).await {
        Ok(()) => see_other("/ui/keys?done=revoked"),
        Err(e) => failed(&state, &who, &form.service_name, e).await,
    }
}

pub async fn set_enabled(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<ActionForm>,
) -> Response {
    let enabled = form.enabled == "true";
    let update = UpdateKey {
        service_name: form.service_name.clone(),
        paths: vec!["enabled".into()],
        enabled,
        ..UpdateKey::default()
    };
    match state.keys.update(&who.caller, update).await {
        Ok(_) => {
            let done = if enabled { "enabled" } else { "disabled" };
            see_other(&format!("{}&done={done}", detail_href(&form.service_name)))
        }
        Err(e) => failed(&state, &who, &form.service_name, e).await,
    }
}

/// UpdateKey with a mask of the fields the user changed: each field is compared
/// with the value the form showed (its `shown` field), not with the key now, so a
/// credit count spent meanwhile is not written back (a refill), nor a value the
/// form cannot carry unchanged (metadata with line breaks) rewritten.
pub async fn update(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Form(form): Form<KeyForm>,
) -> Response {
    let update = match KeyForm::from_shown(&form.shown).and_then(|shown| changes(&shown, &form)) {
        Ok(update) => update,
        Err(e) => return failed(&state, &who, &form.service_name, e).await,
    };
    if update.paths.is_empty() {
        return see_other(&format!(
            "{}&done=unchanged",
            detail_href(&form.service_name)
        ));
    }
    match state.keys.update(&who.caller, update).await {
        Ok(_) => see_other(&format!("{}&done=updated", detail_href(&form.service_name))),
        Err(e) => failed(&state, &who, &form.service_name, e).await,
    }
}

/// The update of the fields whose submitted value differs from the one `shown`.
fn changes(shown: &KeyForm, form: &KeyForm) -> Result<UpdateKey> {
    let mut update = UpdateKey {
        service_name: form.service_name.clone(),
        ..UpdateKey::default()
    };
    let mut paths = Vec::new();
    // A text input drops line breaks; a textarea sends them as CRLF and drops a
    // leading one: the text as shown counts as unchanged.
    if form.description != one_line(&shown.description) {
        update.description = form.description.clone();
        paths.push("description");
    }
    let scopes = form.scopes();
    if scopes != shown.scopes() {
        update.scopes = scopes;
        paths.push("scopes");
    }
    if lines(&form.metadata) != lines(&shown.metadata) {
        let metadata = form.metadata()?;
        if shown.metadata().ok().as_ref() != Some(&metadata) {
            update.metadata = metadata;
            paths.push("metadata");
        }
    }
    let enabled = form.enabled()?;
    if shown.enabled().ok() != Some(enabled) {
        update.enabled = enabled;
        paths.push("enabled");
    }
    let rate_limit = form.rate_limit()?;
    if shown.rate_limit().ok() != Some(rate_limit) {
        update.rate_limit = rate_limit;
        paths.push("rate_limit");
    }
    let remaining = form.remaining()?;
    if shown.remaining().ok() != Some(remaining) {
        update.remaining = remaining;
        paths.push("remaining");
    }
    if let Some(ttl) = form.ttl_seconds()? {
        update.ttl_seconds = ttl;
        paths.push("ttl_seconds");
    }
    update.paths = paths.into_iter().map(str::to_owned).collect();
    Ok(update)
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], "")
}

fn lines(text: &str) -> String {
    text.replace("\r\n", "\n").trim_matches('\n').to_owned()
}

/// The key's page again, with what went wrong.
async fn failed(state: &HttpState, who: &SignedIn, service_name: &str, e: Error) -> Response {
    let (status, message) = status_of(e);
    show(
        state,
        who,
        service_name,
        None,
        Notice::error(message),
        status,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown() -> KeyForm {
        KeyForm {
            service_name: "svc".into(),
            description: "two\nlines".into(),
            scopes: "a b".into(),
            metadata: "note=x\ny\nteam=core".into(),
            remaining: "10".into(),
            enabled: "true".into(),
            ..KeyForm::default()
        }
    }

    #[test]
    fn only_what_the_user_changed_is_written() {
        let shown = KeyForm::from_shown(&shown().shown_json()).unwrap();
        // As a browser sends the form back untouched.
        let mut form = KeyForm {
            service_name: "svc".into(),
            description: "twolines".into(),
            scopes: "b a".into(),
            metadata: "note=x\r\ny\r\nteam=core".into(),
            remaining: "10".into(),
            enabled: "true".into(),
            ..KeyForm::default()
        };
        assert!(changes(&shown, &form).unwrap().paths.is_empty());
        form.description = "new".into();
        let update = changes(&shown, &form).unwrap();
        assert_eq!(update.paths, vec!["description"]);
        form.remaining = "50".into();
        let update = changes(&shown, &form).unwrap();
        assert_eq!(update.paths, vec!["description", "remaining"]);
        assert_eq!(update.remaining, Some(50));
        assert!(KeyForm::from_shown("").is_err());
    }
}
