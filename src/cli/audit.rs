//! `kms audit list|watch`: the Audit service.

use clap::{Args, Subcommand};
use tonic::Code;

use super::{
    ClientOptions, PageArgs,
    error::CliError,
    output::{Output, Style, note, printable},
    session::Session,
    time,
};
use crate::proto::kms::v1 as pb;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    List(ListArgs),
    /// Print events after --after-id in id order, then new ones as they happen,
    /// until Ctrl-C. With --output json, one JSON object a line.
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only events of this actor (a username, "anonymous" or "operator").
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events of this action (login, key_create, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// Only events on this target (a service name, a username, ...).
    #[arg(long)]
    pub target: Option<String>,
    /// Events at or after this time: RFC 3339, or a duration ago (2h, 7d).
    #[arg(long, value_parser = time_arg)]
    pub since: Option<prost_types::Timestamp>,
    /// Events before this time: RFC 3339, or a duration ago.
    #[arg(long, value_parser = time_arg)]
    pub until: Option<prost_types::Timestamp>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Start after this event id (0: from the first stored event).
    #[arg(long, default_value_t = 0)]
    pub after_id: i64,
}

pub async fn run(args: AuditArgs, out: &Output) -> Result<(), CliError> {
    let mut s = Session::open(&args.client).await?;
    match args.command {
        AuditCommand::List(a) => list(&mut s, out, a).await,
        AuditCommand::Watch(a) => watch(&mut s, out, a.after_id).await,
    }
}

/// A time flag, read when the command line is (a bad one is a usage error, exit 2).
fn time_arg(text: &str) -> Result<prost_types::Timestamp, String> {
    time::parse_time(chrono::Utc::now(), text).map(time::to_timestamp)
}

async fn list(s: &mut Session, out: &Output, a: ListArgs) -> Result<(), CliError> {
    let (since, until) = (a.since, a.until);
    let (events, next_page_token) = a
        .page
        .fetch(s, async |s, page_size, page_token| {
            let request = pb::ListAuditEventsRequest {
                actor: a.actor.clone().unwrap_or_default(),
                action: a.action.clone().unwrap_or_default(),
                target: a.target.clone().unwrap_or_default(),
                since,
                until,
                page_size,
                page_token,
            };
            let answer = s
                .call(async |mut c| c.audit.list_audit_events(request.clone()).await)
                .await?;
            Ok((answer.events, answer.next_page_token))
        })
        .await?;
    let all = pb::ListAuditEventsResponse {
        events,
        next_page_token,
    };
    out.emit(&all, |o| {
        let rows: Vec<Vec<(String, Style)>> = all
            .events
            .iter()
            .map(|e| {
                vec![
                    (e.id.to_string(), Style::Dim),
                    (o.ago(e.time.as_ref(), "-"), Style::Plain),
                    (e.actor.clone(), Style::Plain),
                    (e.action.clone(), Style::Bold),
                    (e.target.clone(), Style::Plain),
                    (e.outcome.clone(), outcome_style(&e.outcome)),
                    (e.client_address.clone(), Style::Plain),
                    (e.count.to_string(), Style::Plain),
                ]
            })
            .collect();
        o.table(
            &[
                "ID", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "CLIENT", "COUNT",
            ],
            &rows,
        )
    })?;
    super::note_more(out, "events", &all.next_page_token);
    Ok(())
}

/// Streams until Ctrl-C. A watch the server ends for falling behind
/// (RESOURCE_EXHAUSTED), or because its access token expired (UNAUTHENTICATED: the
/// login is renewed first), is started again after the last id printed: nothing is
/// lost. A login that has ended cannot be renewed, and ends the command.
async fn watch(s: &mut Session, out: &Output, after_id: i64) -> Result<(), CliError> {
    let mut last = after_id;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let request = pb::WatchAuditEventsRequest { after_id: last };
        let mut stream = s
            .call_with(None, async |mut c| {
                c.audit.watch_audit_events(request).await
            })
            .await?;
        loop {
            let next = tokio::select! {
                _ = &mut interrupted => return Ok(()),
                next = stream.message() => next,
            };
            match next {
                Ok(Some(event)) => {
                    last = last.max(event.id);
                    out.emit_line(&event, |o| event_line(o, &event))?;
                }
                Ok(None) => return Ok(()),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    note(&format!(
                        "the server ended the watch ({}): watching again after id {last}",
                        status.message()
                    ));
                    break;
                }
                Err(status) if status.code() == Code::Unauthenticated => {
                    s.refresh().await?;
                    note(&format!(
                        "the access token was renewed: watching again after id {last}"
                    ));
                    break;
                }
                Err(status) => return Err(CliError::status(&status, &s.server)),
            }
        }
    }
}

fn event_line(o: &Output, e: &pb::AuditEvent) -> String {
    let time = e
        .time
        .as_ref()
        .and_then(time::from_timestamp)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    let count = if e.count > 1 {
        format!(" x{}", e.count)
    } else {
        String::new()
    };
    let line = format!(
        "{}  {time}  {:<16} {} {:<24} {} {}{count}",
        o.paint(&format!("{:>6}", e.id), Style::Dim),
        printable(&e.actor),
        o.paint(&format!("{:<20}", e.action), Style::Bold),
        printable(&e.target),
        o.paint(&e.outcome, outcome_style(&e.outcome)),
        printable(&e.client_address),
    );
    format!("{}\n", line.trim_end())
}

fn outcome_style(outcome: &str) -> Style {
    match outcome {
        "success" => Style::Good,
        "failure" | "denied" => Style::Bad,
        _ => Style::Plain,
    }
}
