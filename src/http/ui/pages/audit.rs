//! The audit log, for admins: ListAuditEvents' filters (actor, action, target, a time
//! range) and its pages, newest first.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::{
    super::{
        guard::Admin,
        layout::{Notice, Viewer, page, render, when},
    },
    error_page::status_of,
};
use crate::{
    domain::{
        Error, Result,
        audit::{AuditEvent, action},
        validate,
    },
    http::HttpState,
    store::AuditFilter,
};

const PAGE_SIZE: i32 = 50;

/// Offered in the action field's suggestions.
#[derive(Deserialize, Serialize, Default, Clone)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    /// `datetime-local` values, read as UTC.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    page_token: String,
}

fn text(field: &'static str, value: &str) -> Result<Option<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    validate::audit_filter(field, value)?;
    Ok(Some(value.to_owned()))
}

/// `2026-12-02T10:30` or `2026-12-02T10:30:15`, UTC.
fn time(field: &'static str, value: &str) -> Result<Option<DateTime<Utc>>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M"))
        .map(|t| Some(t.and_utc()))
        .map_err(|_| Error::invalid(field, "must be a date and time, YYYY-MM-DDTHH:MM (UTC)"))
}

fn filter(query: &AuditQuery) -> Result<AuditFilter> {
    Ok(AuditFilter {
        actor: text("actor", &query.actor)?,
        action: text("action", &query.action)?,
        target: text("target", &query.target)?,
        since: time("since", &query.since)?,
        until: time("until", &query.until)?,
    })
}

pub async fn list(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Query(query): Query<AuditQuery>,
) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    let result = match filter(&query) {
        Ok(f) => {
            state
                .audit
                .list(&who.caller, f, PAGE_SIZE, &query.page_token)
                .await
        }
        Err(e) => Err(e),
    };
    let (status, notice, events, next) = match result {
        Ok((events, next)) => (StatusCode::OK, None, events, next),
        Err(e) => {
            let (status, message) = status_of(e);
            (status, Notice::error(message), Vec::new(), String::new())
        }
    };
    render(
        status,
        page(
            "Audit log",
            viewer,
            notice,
            audit_body(&query, &events, &next),
        ),
    )
}

fn audit_body(query: &AuditQuery, events: &[AuditEvent], next: &str) -> Markup {
    let next = (!next.is_empty()).then(|| {
        let q = AuditQuery {
            page_token: next.to_owned(),
            ..query.clone()
        };
        format!(
            "/ui/audit?{}",
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    });
    html! {
        form.filters.card method="get" action="/ui/audit" {
            div.field { label for="f-actor" { "Actor" } input #f-actor name="actor" type="text" value=(query.actor); }
            div.field {
                label for="f-action" { "Action" }
                input #f-action name="action" type="text" list="actions" value=(query.action);
                datalist #actions { @for a in action::ALL { option value=(a) {} } }
            }
            div.field { label for="f-target" { "Target" } input #f-target name="target" type="text" value=(query.target); }
            div.field { label for="f-since" { "Since (UTC)" } input #f-since name="since" type="datetime-local" value=(query.since); }
            div.field { label for="f-until" { "Until (UTC)" } input #f-until name="until" type="datetime-local" value=(query.until); }
            button.primary type="submit" { "Filter" }
            a.button href="/ui/audit" { "Clear" }
        }
        p { a href="/ui/audit/live" data-testid="audit-live-link" { "Live view →" } }
        @if events.is_empty() {
            p.muted { "No events." }
        } @else {
            (events_table(events, None))
        }
        @if let Some(next) = next { p { a href=(next) rel="next" { "Older events →" } } }
    }
}

/// The events, newest first. `live`: the address of the event stream that app.js
/// adds new rows from (`audit_live`).
pub fn events_table(events: &[AuditEvent], live: Option<&str>) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Time" } th { "Actor" } th { "Action" } th { "Target" }
                th { "Outcome" } th { "Client" } th { "Request" } th { "Count" }
            } }
            tbody #audit-rows data-live=[live] {
                @for e in events {
                    tr data-testid="audit-row" data-id=(e.id) {
                        td { (when(e.at)) }
                        td { (e.actor) }
                        td { code { (e.action) } }
                        td { (e.target) }
                        td { span class={"badge " (outcome_class(&e.outcome))} { (e.outcome) } }
                        td { (e.client_addr) }
                        td { code { (e.request_id) } }
                        td { (e.count) }
                    }
                }
            }
        }
    }
}

/// The badge colour of an outcome (app.js has the same three).
fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "success" => "good",
        "failure" => "bad",
        _ => "warn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_utc() {
        let t = time("since", "2026-12-02T10:30").unwrap().unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-02T10:30:00+00:00");
        assert!(time("since", "2026-12-02T10:30:15").unwrap().is_some());
        assert!(time("since", "").unwrap().is_none());
        let e = time("until", "yesterday").unwrap_err().to_string();
        assert!(e.starts_with("until:"), "{e}");
    }
}
