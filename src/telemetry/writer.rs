//! Where log lines go: stderr, written by a thread of its own in batches, so that a
//! call's log line costs an append to a buffer instead of a `write(2)` on the worker
//! thread that served the call (about 4% of a health call's CPU went to that syscall
//! alone; see BENCHMARKS.md).
//!
//! Nothing is dropped and the order is kept: lines are appended to one buffer, and
//! whoever writes takes the whole buffer while holding the output lock. The thread
//! writes a batch at most `BATCH_WAIT` after its first line; a buffer past
//! `HIGH_WATER` is written at once by the thread that filled it (so a burst is slowed
//! down, never held in memory without bound). A worker thread thus no longer waits on
//! the log file: a `write(2)` stalled by the disk stalled every call on that worker. `flush` writes what waits: at exit and
//! before a panic message.

use std::{
    io::Write,
    sync::{Condvar, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the first line of a batch waits for more.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// Bytes waiting past which the line's own thread writes them: about a second of
/// lines at 20,000 calls/s, so that a `write(2)` held up by the disk (tens of ms were
/// measured on a worker thread under a shared disk's writeback) holds up the log
/// thread, not the calls.
const HIGH_WATER: usize = 4 * 1024 * 1024;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when the buffer stops being empty.
    filled: Condvar,
    /// Held while writing to stderr: chunks go out in the order they were taken.
    out: Mutex<()>,
}

impl Shared {
    fn append(&self, line: &[u8]) {
        let (was_empty, full) = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = pending.is_empty();
            pending.extend_from_slice(line);
            (was_empty, pending.len() >= HIGH_WATER)
        };
        if full {
            self.drain();
        } else if was_empty {
            self.filled.notify_one();
        }
    }

    /// Writes everything waiting, under the output lock.
    fn drain(&self) {
        let _out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let chunk =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if !chunk.is_empty() {
            let mut stderr = std::io::stderr().lock();
            // Nowhere to report a failure to write the log.
            let _ = stderr.write_all(&chunk);
            let _ = stderr.flush();
        }
    }

    /// The writer thread: waits for a first line, lets a batch gather, writes it.
    fn run(&self) {
        loop {
            {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                while pending.is_empty() {
                    pending = self
                        .filled
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            std::thread::sleep(BATCH_WAIT);
            self.drain();
        }
    }
}

static SHARED: OnceLock<&'static Shared> = OnceLock::new();

/// The writer for the fmt layer; starts the writing thread on first use. Without a
/// thread (it could not be spawned) lines are written directly.
#[derive(Clone, Copy)]
pub struct BatchedStderr {
    shared: Option<&'static Shared>,
}

impl BatchedStderr {
    pub fn start() -> Self {
        let shared = *SHARED.get_or_init(|| {
            Box::leak(Box::new(Shared {
                pending: Mutex::new(Vec::with_capacity(64 * 1024)),
                filled: Condvar::new(),
                out: Mutex::new(()),
            }))
        });
        let spawned = std::thread::Builder::new()
            .name("kms-log".into())
            .spawn(move || shared.run());
        Self {
            shared: spawned.is_ok().then_some(shared),
        }
    }
}

/// Writes what waits to stderr now.
pub fn flush() {
    if let Some(shared) = SHARED.get() {
        shared.drain();
    }
}

/// One event's output: the fmt layer writes a whole line at once.
pub struct Line {
    shared: Option<&'static Shared>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.shared {
            Some(shared) => {
                shared.append(buf);
                Ok(buf.len())
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            shared: self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_order() {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            pending: Mutex::new(Vec::new()),
            filled: Condvar::new(),
            out: Mutex::new(()),
        }));
        shared.append(b"one\n");
        shared.append(b"two\n");
        assert_eq!(&*shared.pending.lock().unwrap(), b"one\ntwo\n");
    }
}
