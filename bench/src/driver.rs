//! The closed loop: N tasks, each with one call in flight at a time, round-robin over
//! the connections, for a fixed time. Latencies go to one HDR histogram (each task
//! buffers a few hundred and merges them under a lock, so 1,000 tasks cost little
//! memory and the lock is rarely taken); outcomes are counted per label.
//!
//! A task told RESOURCE_EXHAUSTED backs off before its next call, exponentially with
//! jitter as gRPC clients do, so an overloaded server is measured against clients
//! that behave, not against a busy loop of refusals.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// What one call came to: `OK`, a gRPC status name (`UNAVAILABLE`, ...), or
/// `BAD_ANSWER` when the call succeeded but the answer was not the expected one.
pub type Label = &'static str;

pub const OK: Label = "OK";
pub const BAD_ANSWER: Label = "BAD_ANSWER";

pub type CallFuture = Pin<Box<dyn Future<Output = Label> + Send>>;

/// Makes one call: given a connection, the task's number and the task's call count.
pub type CallFn = Arc<dyn Fn(Channel, usize, u64) -> CallFuture + Send + Sync>;

/// The upper-case gRPC name of a status code, as in the gRPC spec.
pub fn code_label(code: tonic::Code) -> Label {
    kms::grpc::code_name(code)
}

/// The label of a call's result: `OK` when it succeeded and `check` likes the answer.
pub fn label_of<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    check: impl FnOnce(&T) -> bool,
) -> Label {
    match result {
        Ok(response) if check(response.get_ref()) => OK,
        Ok(_) => BAD_ANSWER,
        Err(status) => code_label(status.code()),
    }
}

/// Latencies in nanoseconds, 3 significant digits, up to 10 minutes.
pub fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

#[derive(Debug, Clone)]
pub struct Measurement {
    pub calls: u64,
    pub elapsed: Duration,
    pub latency_ns: Histogram<u64>,
    pub outcomes: BTreeMap<Label, u64>,
}

impl Measurement {
    pub fn calls_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.calls as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1e6
    }
}

/// How a run ends at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Calls in flight finish and count; the run lasts until the last one is back.
    Drain,
    /// Calls in flight are dropped (cancelled) at the deadline and not counted: for
    /// floods whose calls queue for seconds.
    Cut,
}

const FLUSH_EVERY: usize = 256;

/// First and largest pause after RESOURCE_EXHAUSTED; the pause doubles in between.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Exponential backoff with "equal jitter": half the pause fixed, half random.
#[derive(Debug, Default)]
struct Backoff {
    refusals: u32,
}

impl Backoff {
    /// The pause after one more refusal; `noise` is any well-mixed number.
    fn next(&mut self, noise: u64) -> Duration {
        let pause = BACKOFF_FIRST
            .saturating_mul(1 << self.refusals.min(16))
            .min(BACKOFF_MAX);
        self.refusals = self.refusals.saturating_add(1);
        let half = pause / 2;
        half + half.mul_f64((noise % 1024) as f64 / 1024.0)
    }

    fn reset(&mut self) {
        self.refusals = 0;
    }
}

/// A cheap, well-mixed number from a task's number and call count (splitmix64).
fn noise(worker: usize, seq: u64) -> u64 {
    let mut z = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Shared {
    histogram: Mutex<Histogram<u64>>,
}

impl Shared {
    fn flush(&self, buffer: &mut Vec<u64>) {
        if let Ok(mut h) = self.histogram.lock() {
            for &ns in buffer.iter() {
                h.saturating_record(ns.max(1));
            }
        }
        buffer.clear();
    }
}

/// Runs `call` from `concurrency` tasks over `channels` (task i uses connection
/// i mod n) for `duration`.
pub async fn drive(
    channels: &[Channel],
    concurrency: usize,
    duration: Duration,
    stop: Stop,
    call: CallFn,
) -> Result<Measurement, String> {
    if channels.is_empty() || concurrency == 0 {
        return Err("need at least one connection and one call in flight".into());
    }
    let shared = Arc::new(Shared {
        histogram: Mutex::new(new_histogram()?),
    });
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + duration);
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let channel = channels[worker % channels.len()].clone();
        let call = call.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes: BTreeMap<Label, u64> = BTreeMap::new();
            let mut buffer = Vec::with_capacity(FLUSH_EVERY);
            let mut seq = 0u64;
            let mut calls = 0u64;
            let mut backoff = Backoff::default();
            while tokio::time::Instant::now() < deadline {
                let began = Instant::now();
                let fut = call(channel.clone(), worker, seq);
                seq += 1;
                let label = match stop {
                    Stop::Drain => fut.await,
                    Stop::Cut => match tokio::time::timeout_at(deadline, fut).await {
                        Ok(label) => label,
                        Err(_) => break,
                    },
                };
                buffer.push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
                *outcomes.entry(label).or_default() += 1;
                calls += 1;
                if buffer.len() >= FLUSH_EVERY {
                    shared.flush(&mut buffer);
                }
                if label == code_label(tonic::Code::ResourceExhausted) {
                    let pause = backoff.next(noise(worker, seq));
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause))
                        .await;
                } else {
                    backoff.reset();
                }
            }
            shared.flush(&mut buffer);
            (calls, outcomes)
        }));
    }
    let mut calls = 0;
    let mut outcomes: BTreeMap<Label, u64> = BTreeMap::new();
    for task in tasks {
        let (n, counted) = task.await.map_err(|e| format!("a load task failed: {e}"))?;
        calls += n;
        for (label, count) in counted {
            *outcomes.entry(label).or_default() += count;
        }
    }
    let elapsed = match stop {
        Stop::Drain => start.elapsed(),
        Stop::Cut => duration,
    };
    let latency_ns = shared
        .histogram
        .lock()
        .map_err(|_| "histogram lock poisoned".to_owned())?
        .clone();
    Ok(Measurement {
        calls,
        elapsed,
        latency_ns,
        outcomes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_grpc_names() {
        assert_eq!(code_label(tonic::Code::Ok), "OK");
        assert_eq!(
            code_label(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_label(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_bound_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<Duration> = (0..10).map(|i| b.next(noise(3, i))).collect();
        for (i, p) in pauses.iter().enumerate() {
            let full = BACKOFF_FIRST.saturating_mul(1 << i).min(BACKOFF_MAX);
            assert!(
                *p >= full / 2 && *p <= full,
                "pause {i}: {p:?} against {full:?}"
            );
        }
        assert!(pauses[9] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next(0) <= BACKOFF_FIRST);
    }

    #[test]
    fn rates_and_quantiles() {
        let mut h = new_histogram().unwrap();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000).unwrap();
        }
        let m = Measurement {
            calls: 100,
            elapsed: Duration::from_secs(2),
            latency_ns: h,
            outcomes: BTreeMap::from([(OK, 98), ("UNAVAILABLE", 2)]),
        };
        assert!((m.calls_per_second() - 50.0).abs() < 1e-9);
        assert!((m.quantile_ms(0.5) - 50.0).abs() < 0.1);
        assert!((m.quantile_ms(0.99) - 99.0).abs() < 0.1);
    }
}
