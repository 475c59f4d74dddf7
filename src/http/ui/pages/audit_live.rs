//! The audit trail live, for admins: the newest events, then new ones as they commit
//! on any replica, through WatchAuditEvents' domain call (`AuditLog::watch`) as a
//! stream of server-sent events that app.js adds to the table. Without script the
//! page is the newest events and a refresh link.
//!
//! Each stream lasts at most `STREAM_LIFETIME`; the browser's EventSource then
//! reconnects by itself (after `RETRY`) with `Last-Event-ID`, resuming after the last
//! event it got. Every reconnect passes the session layer again, so a sign-out, a
//! role change or the idle timeout ends the live view within that time. Reconnects
//! are the page's, not the user's: they do not count as activity for the idle
//! timeout (`SessionChange::Background`), so an open live page does not keep a
//! session alive, as Vault's and Keycloak's consoles treat background polling.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use maud::html;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use zeroize::Zeroizing;

use super::{
    super::{
        guard::{Admin, SessionChange, Visitor, with_change},
        layout::{Notice, Viewer, page, render, when},
    },
    audit::events_table,
    error_page::{from_domain, status_of},
};
use crate::{
    domain::{Result, audit::AuditEvent, sessions::Authenticator},
    http::HttpState,
    store::AuditFilter,
};

/// The events the page starts with.
const NEWEST: i32 = 50;
/// How long one stream lasts before the browser reconnects through the session layer.
const STREAM_LIFETIME: Duration = Duration::from_secs(30);
/// How often a stream checks its session's token again.
const RECHECK: Duration = Duration::from_secs(1);
/// How soon the browser reconnects.
const RETRY: Duration = Duration::from_secs(1);
/// Events queued for one browser.
const BUFFER: usize = 16;

pub const STREAM_PATH: &str = "/ui/audit/live/events";

pub async fn page_view(State(state): State<HttpState>, Admin(who): Admin) -> Response {
    let viewer = Viewer {
        caller: Some(&who.caller),
        csrf: &who.csrf,
    };
    let (status, notice, events, stream) = match state
        .audit
        .list(&who.caller, AuditFilter::default(), NEWEST, "")
        .await
    {
        Ok((events, _)) => {
            // Newest first: the stream starts after the newest shown (all of an
            // empty log).
            let after = events.first().map_or(0, |e| e.id);
            let stream = format!("{STREAM_PATH}?after={after}");
            (StatusCode::OK, None, events, Some(stream))
        }
        // No stream either: from nothing it would replay the whole log.
        Err(e) => {
            let (status, message) = status_of(e);
            (status, Notice::error(message), Vec::new(), None)
        }
    };
    let body = html! {
        p {
            span #live-status data-testid="live-status" role="status" { "Showing the newest events." }
            " "
            a href="/ui/audit/live" { "Refresh" }
            " · "
            a href="/ui/audit" { "Search the audit log" }
        }
        (events_table(&events, stream.as_deref()))
    };
    render(status, page("Audit log, live", viewer, notice, body))
}

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: i64,
}

/// One audit row as the page's script reads it (and puts in with `textContent`).
#[derive(Serialize)]
struct Row<'a> {
    id: i64,
    at: String,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
    client_addr: &'a str,
    request_id: &'a str,
    count: i64,
}

fn sse_event(e: &AuditEvent) -> std::result::Result<Event, axum::Error> {
    Event::default()
        .event("audit")
        .id(e.id.to_string())
        .json_data(Row {
            id: e.id,
            at: when(e.at),
            actor: &e.actor,
            action: &e.action,
            target: &e.target,
            outcome: &e.outcome,
            client_addr: &e.client_addr,
            request_id: &e.request_id,
            count: e.count,
        })
}

/// The id to resume after: the browser's `Last-Event-ID` on a reconnect, else the
/// page's `after`.
fn resume_after(headers: &HeaderMap, query: &After) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(query.after)
}

pub async fn stream(
    State(state): State<HttpState>,
    Admin(who): Admin,
    Visitor(session): Visitor,
    headers: HeaderMap,
    Query(query): Query<After>,
) -> Response {
    let Some(token) = session.access_token else {
        return from_domain(crate::domain::Error::Unauthenticated(
            crate::bearer::MISSING_TOKEN,
        ));
    };
    let events = match state
        .audit
        .watch(&who.caller, resume_after(&headers, &query))
    {
        Ok(events) => events,
        Err(e) => return from_domain(e),
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(forward(events, tx, state.authenticator.clone(), token));
    let sse = Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default());
    with_change(sse.into_response(), SessionChange::Background)
}

/// Hands the watch's events to the browser until `STREAM_LIFETIME` is over, the
/// browser goes, the watch ends (an error: the browser reconnects and resumes) or
/// the session's token stops being an admin's: it is checked again every second, as
/// the gRPC watch's is (`bearer::still_admin`), so sign-out, a role change or the
/// token's expiry stop the events at once; the browser's reconnect then meets the
/// session layer.
async fn forward(
    mut events: mpsc::Receiver<Result<AuditEvent>>,
    tx: mpsc::Sender<std::result::Result<Event, axum::Error>>,
    authenticator: Arc<Authenticator>,
    token: Arc<Zeroizing<String>>,
) {
    if tx.send(Ok(Event::default().retry(RETRY))).await.is_err() {
        return;
    }
    let over = tokio::time::sleep(STREAM_LIFETIME);
    tokio::pin!(over);
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    loop {
        let next = tokio::select! {
            () = &mut over => return,
            () = tx.closed() => return,
            _ = recheck.tick() => {
                if crate::bearer::still_admin(&authenticator, &token).await.is_err() {
                    return;
                }
                continue;
            }
            next = events.recv() => next,
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "a console audit stream ended; the browser resumes");
                return;
            }
            None => return,
        };
        if tx.send(sse_event(&event)).await.is_err() {
            return;
        }
    }
}
