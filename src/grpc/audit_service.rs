//! `kms.v1.Audit`.

use std::{sync::Arc, time::Duration};

use chrono::DateTime;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{auth_layer::caller, convert::timestamp};
use crate::{
    bearer,
    domain::{
        Error,
        audit::{AuditEvent, AuditLog},
        sessions::Authenticator,
        validate,
    },
    proto::kms::v1::{self as pb, audit_server::Audit},
    store::AuditFilter,
};

pub struct AuditApi {
    service: AuditLog,
    /// Checks a watch's token again while it streams.
    authenticator: Arc<Authenticator>,
}

impl AuditApi {
    pub fn new(service: AuditLog, authenticator: Arc<Authenticator>) -> Self {
        Self {
            service,
            authenticator,
        }
    }
}

/// How often an open watch checks its caller's token again.
const WATCH_RECHECK: Duration = Duration::from_secs(1);

/// The caller of a watch is checked when it opens and then every `WATCH_RECHECK`
/// while it streams, as every unary call is: once the token expires, its login ends
/// (logout, password or role change, the user deleted) or it stops being an admin's,
/// the stream ends with UNAUTHENTICATED or PERMISSION_DENIED instead of carrying on
/// with the rights it had when it opened. A SIEM shipper then watches again with a
/// fresh token and `after_id`, and loses nothing.
fn while_authorised(
    mut events: mpsc::Receiver<Result<AuditEvent, Error>>,
    authenticator: Arc<Authenticator>,
    token: Zeroizing<String>,
) -> mpsc::Receiver<Result<pb::AuditEvent, Status>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut recheck = tokio::time::interval(WATCH_RECHECK);
        recheck.tick().await;
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                item = events.recv() => match item {
                    Some(item) => item.map(event).map_err(Status::from),
                    None => return,
                },
                _ = recheck.tick() => {
                    match bearer::still_admin(&authenticator, &token).await {
                        Ok(()) => continue,
                        Err(e) => Err(Status::from(e)),
                    }
                }
            };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

fn filter(field: &'static str, text: &str) -> Result<Option<String>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    validate::audit_filter(field, text)?;
    Ok(Some(text.to_owned()))
}

/// The range of `google.protobuf.Timestamp`: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z. Outside it, a time is not a timestamp (and
/// PostgreSQL could not compare with it anyway).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

fn time(
    field: &'static str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<chrono::Utc>>, Error> {
    t.map(|t| {
        // chrono would take nanos up to 2e9 - 1 (a leap second); protobuf does not.
        u32::try_from(t.nanos)
            .ok()
            .filter(|nanos| *nanos < 1_000_000_000 && TIMESTAMP_SECONDS.contains(&t.seconds))
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    "is not a valid timestamp (0001-01-01T00:00:00Z..9999-12-31T23:59:59Z)",
                )
            })
    })
    .transpose()
}

fn event(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        time: Some(timestamp(e.at)),
        actor: e.actor,
        action: e.action,
        target: e.target,
        outcome: e.outcome,
        client_address: e.client_addr,
        request_id: e.request_id,
        count: e.count,
    }
}

/// The events of one WatchAuditEvents call.
pub type AuditStream = std::pin::Pin<
    Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<pb::AuditEvent, Status>> + Send>,
>;

#[tonic::async_trait]
impl Audit for AuditApi {
    type WatchAuditEventsStream = AuditStream;

    async fn watch_audit_events(
        &self,
        mut request: Request<pb::WatchAuditEventsRequest>,
    ) -> Result<Response<AuditStream>, Status> {
        use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
        let caller = caller(&mut request)?;
        // The auth layer let the call in with exactly this token.
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer::bearer_token)
            .map(|t| Zeroizing::new(t.to_owned()))
            .ok_or(Error::Unauthenticated(bearer::MISSING_TOKEN))?;
        let events = self.service.watch(&caller, request.get_ref().after_id)?;
        let events = while_authorised(events, self.authenticator.clone(), token);
        Ok(Response::new(Box::pin(ReceiverStream::new(events))))
    }

    async fn list_audit_events(
        &self,
        mut request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller(&mut request)?;
        let req = request.into_inner();
        let filter = AuditFilter {
            actor: filter("actor", &req.actor)?,
            action: filter("action", &req.action)?,
            target: filter("target", &req.target)?,
            since: time("since", req.since)?,
            until: time("until", req.until)?,
        };
        let (events, next_page_token) = self
            .service
            .list(&caller, filter, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(event).collect(),
            next_page_token,
        }))
    }
}
