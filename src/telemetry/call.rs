//! The call a log line belongs to, without a span per call.
//!
//! Every gRPC call's lines show the call: `rpc{method=... request_id=... subject=...}`,
//! as if they were written inside a span named `rpc`. A tracing span per call cost a
//! `health` call about 3 us of CPU (a registry entry, its fields formatted, entered and
//! left on every poll; BENCHMARKS.md), a fifth of the whole call. So the call's
//! context is a task-local instead (`scope`), and the log format (`CallLine`) writes
//! it where the span would have been. The span is still made when traces are exported
//! (`traces::enabled`): then it is the current span and the line is the formatter's
//! own, of the same shape.

use std::{
    borrow::Cow,
    fmt::{self, Write},
    future::Future,
    sync::{Arc, OnceLock},
};

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    registry::LookupSpan,
};

/// What the log says of the call being served.
#[derive(Debug)]
pub struct CallLog {
    method: Cow<'static, str>,
    request_id: String,
    /// The verified caller's `sub`, once the auth layer knows it.
    subject: OnceLock<Box<str>>,
}

impl CallLog {
    pub fn new(method: Cow<'static, str>, request_id: String) -> Arc<Self> {
        Arc::new(Self {
            method,
            request_id,
            subject: OnceLock::new(),
        })
    }
}

tokio::task_local! {
    static CALL: Arc<CallLog>;
}

static MAKE_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on every call gets a real `rpc` span too: `RUST_LOG` selects by span or
/// field (`[rpc{method=...}]=debug`), which needs the span to exist.
pub fn make_spans() {
    MAKE_SPANS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether calls get a real `rpc` span for the log's filter (traces aside).
pub fn spans_wanted() -> bool {
    MAKE_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `f` as the call `call`: its log lines show the call. Not an `async fn`, for
/// the reason `audit::scope` gives.
pub fn scope<F: Future>(call: Arc<CallLog>, f: F) -> impl Future<Output = F::Output> {
    CALL.scope(call, f)
}

thread_local! {
    /// The call a line written outside its task is about (`in_call`).
    static FINISHING: std::cell::RefCell<Option<Arc<CallLog>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a line about the call, written outside its task: by the connection that
/// polls the answer, or where the answer is dropped) as the call `call`. Unlike the
/// task-local's `sync_scope`, it cannot panic: where this thread's locals are gone (a
/// thread ending), the line is written without its call.
pub fn in_call<R>(call: Arc<CallLog>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<CallLog>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let _ = FINISHING.try_with(|slot| slot.replace(previous));
        }
    }
    let previous = FINISHING
        .try_with(|slot| slot.replace(Some(call)))
        .ok()
        .flatten();
    let _restore = Restore(previous);
    f()
}

/// The call being finished or served on this thread, if any: the call named by
/// `in_call` first, as the more precise.
fn current() -> Option<Arc<CallLog>> {
    FINISHING
        .try_with(|slot| slot.borrow().clone())
        .ok()
        .flatten()
        .or_else(|| CALL.try_with(Arc::clone).ok())
}

/// Notes who made the current call, for its lines (and on its span, when there is one).
pub fn record_subject(subject: &str) {
    if let Some(call) = current() {
        let _ = call.subject.set(subject.into());
    }
    tracing::Span::current().record("subject", subject);
}

/// Which log format `CallLine` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Text { ansi: bool },
    Json,
}

/// The log's layer: lines of `shape` to `writer`, each showing its call.
pub fn layer<S, W>(shape: Shape, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    let format = tracing_subscriber::fmt::format().with_target(false);
    match shape {
        Shape::Json => layer
            .json()
            .with_current_span(true)
            .event_format(CallLine::new(format.json().with_current_span(true), shape))
            .boxed(),
        Shape::Text { ansi } => layer
            .with_ansi(ansi)
            .event_format(CallLine::new(format.with_ansi(ansi), shape).with_direct_text())
            .boxed(),
    }
}

/// A log format that writes the current call where the `rpc` span would be: `E`'s own
/// line, with the call put in after the level (text) or as `span` and `spans` (JSON),
/// exactly as `E` writes a span's (the tests compare the two).
pub struct CallLine<E> {
    inner: E,
    shape: Shape,
    /// `inner` is `fmt::format().with_target(false)` without ANSI codes, whose lines
    /// `direct` writes itself.
    direct: bool,
}

impl<E> CallLine<E> {
    pub fn new(inner: E, shape: Shape) -> Self {
        Self {
            inner,
            shape,
            direct: false,
        }
    }

    /// Plain-text lines of a call are written by `direct` (only for the format
    /// `layer` makes: the one `direct` copies).
    fn with_direct_text(mut self) -> Self {
        self.direct = self.shape == (Shape::Text { ansi: false });
        self
    }
}

impl<S, N, E> FormatEvent<S, N> for CallLine<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
        let call = if in_span { None } else { current() };
        let Some(call) = call else {
            return self.inner.format_event(ctx, writer, event);
        };
        // A line formatted while another is (re-entered), or while this thread's
        // locals are torn down, gets a buffer of its own.
        let mut writer = Some(writer);
        let reused = LINE.try_with(|line| {
            let mut line = line.try_borrow_mut().ok()?;
            let writer = writer.take()?;
            Some(self.spliced(ctx, writer, event, &call, &mut line))
        });
        match (reused, writer) {
            (Ok(Some(result)), _) => result,
            (_, Some(writer)) => self.spliced(ctx, writer, event, &call, &mut String::new()),
            (_, None) => Err(fmt::Error),
        }
    }
}

thread_local! {
    /// The line as `E` writes it, before the call is put in: kept between lines.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<E> CallLine<E> {
    fn spliced<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
        call: &CallLog,
        line: &mut String,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        E: FormatEvent<S, N>,
    {
        if self.direct && super::direct::write(line, event, call) {
            return writer.write_str(line);
        }
        line.clear();
        self.inner.format_event(ctx, Writer::new(line), event)?;
        let at = match self.shape {
            Shape::Text { .. } => text_splice_point(line, event.metadata().level()),
            Shape::Json => line.trim_end().strip_suffix('}').map(str::len),
        };
        // A line not of the expected shape is written as it is.
        let Some((before, after)) = at.and_then(|at| line.split_at_checked(at)) else {
            return writer.write_str(line);
        };
        writer.write_str(before)?;
        match self.shape {
            Shape::Text { ansi } => write_text(&mut writer, call, ansi)?,
            Shape::Json => {
                writer.write_str(",\"span\":")?;
                write_json(&mut writer, call)?;
                writer.write_str(",\"spans\":[")?;
                write_json(&mut writer, call)?;
                writer.write_str("]")?;
            }
        }
        writer.write_str(after)
    }
}

/// Where the span's text goes: after the level and the space that follows it.
fn text_splice_point(line: &str, level: &tracing::Level) -> Option<usize> {
    // How `tracing-subscriber` writes a level. The timestamp before it holds only
    // digits, `-`, `:`, `.`, `T` and `Z` (and ANSI codes).
    let level = super::direct::level(level);
    let after_level = line.find(level)? + level.len();
    Some(after_level + line.get(after_level..)?.find(' ')? + 1)
}

/// `rpc{method=M request_id=R subject="S"}: `, styled as the formatter styles a span.
pub(super) fn write_text(w: &mut impl Write, call: &CallLog, ansi: bool) -> fmt::Result {
    let (bold, dimmed, italic, reset) = if ansi {
        ("\x1b[1m", "\x1b[2m", "\x1b[3m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    // Piece by piece: this runs for every line of every call.
    let pieces =
        |w: &mut dyn Write, pieces: &[&str]| pieces.iter().try_for_each(|p| w.write_str(p));
    pieces(w, &[bold, "rpc", reset, bold, "{", reset])?;
    pieces(
        w,
        &[
            italic,
            "method",
            reset,
            dimmed,
            "=",
            reset,
            &call.method,
            " ",
        ],
    )?;
    pieces(
        w,
        &[
            italic,
            "request_id",
            reset,
            dimmed,
            "=",
            reset,
            &call.request_id,
        ],
    )?;
    if let Some(subject) = call.subject.get() {
        pieces(w, &[" ", italic, "subject", reset, dimmed, "=", reset])?;
        write!(w, "{subject:?}")?;
    }
    pieces(w, &[bold, "}", reset, dimmed, ":", reset, " "])
}

/// `{"method":M,"request_id":R,"subject":S,"name":"rpc"}`, as the formatter writes a span.
fn write_json(w: &mut impl Write, call: &CallLog) -> fmt::Result {
    w.write_str("{\"method\":")?;
    json_string(w, &call.method)?;
    w.write_str(",\"request_id\":")?;
    json_string(w, &call.request_id)?;
    if let Some(subject) = call.subject.get() {
        w.write_str(",\"subject\":")?;
        json_string(w, subject)?;
    }
    w.write_str(",\"name\":\"rpc\"}")
}

/// A JSON string, escaped by `serde_json` as the formatter's own fields are, written
/// straight to `w` (no allocation).
fn json_string(w: &mut impl Write, s: &str) -> fmt::Result {
    struct Utf8<'a, W>(&'a mut W);
    impl<W: Write> std::io::Write for Utf8<'_, W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // serde_json writes a `str` in pieces cut at ASCII bytes: each is UTF-8.
            let piece = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
            self.0.write_str(piece).map_err(std::io::Error::other)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Utf8(w), s).map_err(|_| fmt::Error)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::field::Empty;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Lines written, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Lines {
        /// The lines without their timestamps.
        fn text(&self) -> String {
            let all = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            all.lines()
                .map(|l| match l.find("Z") {
                    Some(z) if l.starts_with('{') => {
                        let start = l.find("\"timestamp\":\"").unwrap();
                        format!("{}{}", &l[..start], &l[z + 2..])
                    }
                    Some(z) => l[z + 1..].to_owned(),
                    None => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    /// The log format as it was with a span per call: the reference.
    fn span_layer<S>(shape: Shape, writer: Lines) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let layer = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(writer);
        match shape {
            Shape::Json => layer.json().with_current_span(true).boxed(),
            Shape::Text { ansi } => layer.with_ansi(ansi).boxed(),
        }
    }

    /// Lines of every kind of field: those `direct` writes, and those it leaves to
    /// the formatter (an error with its source, a message it would escape).
    fn lines_of_every_kind() {
        #[derive(Debug)]
        struct Polygon {
            #[allow(dead_code)]
            sides: u8,
        }
        let failure = std::io::Error::other(std::fmt::Error);
        let source: &(dyn std::error::Error + 'static) = &failure;
        tracing::warn!(error = "disk full", "audit write failed");
        tracing::error!(
            r#type = "x",
            flag = true,
            n = -3i64,
            m = 7u64,
            f = f64::NAN,
            g = 1e21,
            shape = ?Polygon { sides: 3 },
            shown = %"a \"b\"\n",
            "several: {} {:?}",
            1,
            "two"
        );
        tracing::debug!(e = source, "an error with a source");
        tracing::trace!(
            e = &std::fmt::Error as &dyn std::error::Error,
            "an error without"
        );
        tracing::info!("a message with \x1b[31mESC\x07 and \u{85} and é");
        tracing::info!(message = "a message as a field", other = "\u{1b}");
        tracing::info!(note = "no message");
    }

    fn log_a_call(subject: Option<&str>) {
        if let Some(subject) = subject {
            record_subject(subject);
        }
        lines_of_every_kind();
        tracing::info!(code = "OK", latency_ms = 1.25, "call finished");
    }

    fn with_span(shape: Shape, method: &str, subject: Option<&str>) -> String {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(span_layer(shape, lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                method = %method,
                request_id = %"r-1.a_b",
                subject = Empty
            );
            let _in = span.enter();
            log_a_call(subject);
        });
        lines.text()
    }

    fn with_call(shape: Shape, method: &str, subject: Option<&str>) -> String {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(layer(shape, lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let call = CallLog::new(Cow::Owned(method.to_owned()), "r-1.a_b".into());
            // The call's own lines come from its task; the last one may come from
            // the connection's (`in_call`): both show the call.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let subject = subject.map(str::to_owned);
            runtime.block_on(scope(call.clone(), async {
                if let Some(subject) = &subject {
                    record_subject(subject);
                }
                lines_of_every_kind();
            }));
            in_call(call, || {
                tracing::info!(code = "OK", latency_ms = 1.25, "call finished");
            });
            // Outside a call: as it was.
            tracing::info!("server started");
        });
        lines.text()
    }

    #[test]
    fn a_call_s_lines_are_those_its_span_gave() {
        let shapes = [
            Shape::Text { ansi: false },
            Shape::Text { ansi: true },
            Shape::Json,
        ];
        for shape in shapes {
            for subject in [None, Some("admin"), Some("we\"ird \\ name\n\t\u{1}\u{7f}é")] {
                for method in ["/kms.v1.Keys/GetKey", "/evil\"path\\"] {
                    let reference = with_span(shape, method, subject);
                    let ours = with_call(shape, method, subject);
                    let (ours, outside) = ours.rsplit_once('\n').unwrap();
                    assert_eq!(ours, reference, "{shape:?} {subject:?} {method}");
                    assert!(outside.contains("server started"), "{outside}");
                    assert!(!outside.contains("rpc"), "{outside}");
                }
            }
        }
    }
}
