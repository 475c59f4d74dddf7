//! `kms.v1.Audit`.

use chrono::DateTime;
use tonic::{Request, Response, Status};

use super::{auth_layer::caller, convert::timestamp};
use crate::{
    domain::{
        Error,
        audit::{AuditEvent, AuditLog},
        validate,
    },
    proto::kms::v1::{self as pb, audit_server::Audit},
    store::AuditFilter,
};

pub struct AuditApi {
    service: AuditLog,
}

impl AuditApi {
    pub fn new(service: AuditLog) -> Self {
        Self { service }
    }
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
        use tonic::codegen::tokio_stream::{StreamExt, wrappers::ReceiverStream};
        let caller = caller(&mut request)?;
        let events = self.service.watch(&caller, request.get_ref().after_id)?;
        let stream = ReceiverStream::new(events).map(|item| item.map(event).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
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
