//! Password hashing with argon2id, off the async workers, on a bounded pool.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use super::{CryptoError, random};

/// Memory cost in KiB. 19 MiB with 2 passes and 1 lane is OWASP's baseline for
/// argon2id (Password Storage Cheat Sheet): about 20-30 ms on one modern core, which
/// keeps a login cheap for people and each guess expensive for an attacker.
pub const M_COST_KIB: u32 = 19 * 1024;
/// Passes over memory.
pub const T_COST: u32 = 2;
/// Lanes. One: parallelism comes from serving several logins at once, not from one.
pub const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;

fn params() -> Result<Params, CryptoError> {
    Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))
        .map_err(|e| CryptoError::PasswordHash(e.to_string()))
}

fn hash_error(e: impl std::fmt::Display) -> CryptoError {
    CryptoError::PasswordHash(e.to_string())
}

/// Argon2's working memory, reused from hash to hash.
///
/// Allocating it afresh for every hash is what the argon2 crate does, and with glibc it
/// makes the process grow without bound under a login flood: once a freed block of
/// this size has raised malloc's mmap threshold, later ones come from per-thread
/// arenas that keep the memory (measured: 200 hashes, two at a time, left 1.2 GB
/// resident). So each hashing slot keeps one buffer, and the buffer's capacity is
/// above glibc's largest mmap threshold (32 MiB), so that it is always mapped on its
/// own and really returned to the system when an idle pool drops it. Pages beyond the
/// 19 MiB in use are never touched, so never resident.
struct Memory(Vec<Block>);

const MEMORY_CAPACITY_BLOCKS: usize = 33 * 1024;

impl Memory {
    fn new() -> Self {
        Self(Vec::new())
    }

    /// At least `blocks` blocks (1 KiB each) to work in.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            let mut fresh = Vec::with_capacity(blocks.max(MEMORY_CAPACITY_BLOCKS));
            fresh.resize(blocks, Block::default());
            self.0 = fresh;
        }
        &mut self.0[..blocks]
    }
}

fn hash_with(memory: &mut Memory, password: &[u8]) -> Result<String, CryptoError> {
    let salt: [u8; 16] = random::bytes()?;
    let params = params()?;
    let mut out = Zeroizing::new([0u8; OUTPUT_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password,
            &salt,
            out.as_mut_slice(),
            memory.blocks(params.block_count()),
        )
        .map_err(hash_error)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(hash_error)?,
        salt: Some(Salt::new(&salt).map_err(hash_error)?),
        hash: Some(Output::new(out.as_slice()).map_err(hash_error)?),
    };
    Ok(phc.to_string())
}
/// The outcome of checking a password against a stored PHC string.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    Mismatch,
    /// `needs_rehash`: the stored hash used other parameters than today's, so the
    /// caller should store a fresh hash now that it knows the password.
    Match {
        needs_rehash: bool,
    },
}

/// The most memory a stored hash may ask for (256 MiB): a corrupt or hostile row must
/// not make the server allocate without bound.
const MAX_STORED_BLOCKS: usize = 256 * 1024;

fn verify_with(
    memory: &mut Memory,
    password: &[u8],
    stored: &str,
) -> Result<Verification, CryptoError> {
    // A stored hash that does not parse, or that this code cannot check, is treated as
    // a mismatch: fail closed.
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Ok(Verification::Mismatch);
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Ok(Verification::Mismatch);
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return Ok(Verification::Mismatch);
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return Ok(Verification::Mismatch),
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return Ok(Verification::Mismatch);
    };
    if params.block_count() > MAX_STORED_BLOCKS {
        tracing::warn!("a stored password hash asks for more memory than allowed");
        return Ok(Verification::Mismatch);
    }
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    let computed = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        out.as_mut_slice(),
        memory.blocks(params.block_count()),
    );
    // `Output` compares in constant time.
    if computed.is_err() || Output::new(&out).ok().as_ref() != Some(expected) {
        return Ok(Verification::Mismatch);
    }
    let current = algorithm == Algorithm::Argon2id
        && version == Version::V0x13
        && params.m_cost() == M_COST_KIB
        && params.t_cost() == T_COST
        && params.p_cost() == P_COST
        && expected.len() == OUTPUT_LEN;
    Ok(Verification::Match {
        needs_rehash: !current,
    })
}

/// How many hashes may wait for a free slot, per slot. Beyond that a request is
/// refused at once (`CryptoError::Busy`): a waiting login holds one of the server's
/// concurrent-call slots, and a flood must leave those to other calls. At about 25 ms
/// a hash, 32 waiting per slot is under a second of queue.
const WAITING_PER_SLOT: usize = 32;

/// Idle working memory is given back after this long without a hash.
pub const IDLE_RELEASE: Duration = Duration::from_secs(5);

/// Working memory not in use, and when it was last used.
struct Spare {
    memory: Vec<Memory>,
    last_used: Instant,
}

/// A job for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// Nice value of the hashing threads. When the cores are busy, the async workers
/// (every other call: VerifyKey, ValidateToken) get about nine tenths of the CPU and
/// hashing the rest, so logins slow down but are never starved; when the cores are
/// idle, hashing gets them all. Linux's nice is per thread.
const HASHING_NICENESS: i32 = 10;

/// `n` threads of their own, at lower priority, running jobs from one queue. They
/// end when the last sender is dropped (with the pool).
fn start_hashing_threads(n: usize) -> Result<std::sync::mpsc::Sender<Job>, CryptoError> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("kms-argon2-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    // The lock is held only while waiting for the next job.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else { return };
                    // A job that panics drops its answer channel (the caller sees
                    // `PoolClosed`); the thread stays.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(|e| {
                CryptoError::PasswordHash(format!("cannot start a hashing thread: {e}"))
            })?;
    }
    Ok(tx)
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), HASHING_NICENESS) {
        tracing::debug!(error = %e, "hashing threads keep normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs argon2 on threads of its own, at most `max_parallel` at once and at lower
/// priority, so a flood of logins neither starves the async workers nor takes
/// unbounded memory: each hash
/// works in one of at most `max_parallel` buffers of `M_COST_KIB`, which are kept
/// while logins come and given back after `IDLE_RELEASE` without one. Requests wait in
/// a bounded line.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    /// Slots in the line: running and waiting hashes together.
    line: Arc<Semaphore>,
    spare: Arc<Mutex<Spare>>,
    /// The hashing threads' queue; never longer than `max_parallel` (the permits).
    jobs: std::sync::mpsc::Sender<Job>,
    /// A hash of a random password, verified against when a user does not exist so
    /// that "unknown user" costs the same as "wrong password".
    dummy_hash: Arc<str>,
}

impl PasswordHasherPool {
    pub async fn new(max_parallel: usize) -> Result<Self, CryptoError> {
        let max_parallel = max_parallel.max(1);
        let permits = Arc::new(Semaphore::new(max_parallel));
        let line = Arc::new(Semaphore::new(
            max_parallel.saturating_mul(WAITING_PER_SLOT + 1),
        ));
        let dummy_password = random::bytes::<32>()?;
        let dummy_hash =
            tokio::task::spawn_blocking(move || hash_with(&mut Memory::new(), &dummy_password))
                .await
                .map_err(|_| CryptoError::PoolClosed)??;
        let spare = Arc::new(Mutex::new(Spare {
            memory: Vec::new(),
            last_used: Instant::now(),
        }));
        tokio::spawn(release_when_idle(Arc::downgrade(&spare)));
        Ok(Self {
            jobs: start_hashing_threads(max_parallel)?,
            permits,
            line,
            spare,
            dummy_hash: dummy_hash.into(),
        })
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place in the line for one hash, or `Busy` at once. Taken before any other
    /// work for a login, so that a refused login costs next to nothing.
    pub fn reserve(&self) -> Result<Reserved, CryptoError> {
        let place = self
            .line
            .clone()
            .try_acquire_owned()
            .map_err(|_| CryptoError::Busy)?;
        Ok(Reserved {
            pool: self.clone(),
            place,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        place: OwnedSemaphorePermit,
        job: impl FnOnce(&mut Memory) -> Result<T, CryptoError> + Send + 'static,
    ) -> Result<T, CryptoError> {
        // The permit travels with the job: if the caller gives up (the RPC is
        // cancelled), the hash still runs to completion holding its permit, so the
        // bound on concurrent hashes (and their memory) holds.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CryptoError::PoolClosed)?;
        // Holding a permit guarantees a buffer: there are never more buffers than permits.
        let mut memory = self.spare().memory.pop().unwrap_or_else(Memory::new);
        let spare = self.spare.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = job(&mut memory);
            let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
            spare.memory.push(memory);
            spare.last_used = Instant::now();
            // Returned before the permits are released, so the next holder finds it.
            drop(spare);
            drop((place, permit));
            let _ = answer.send(result);
        });
        self.jobs.send(job).map_err(|_| CryptoError::PoolClosed)?;
        answered.await.map_err(|_| CryptoError::PoolClosed)?
    }

    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, CryptoError> {
        self.reserve()?.hash(password).await
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is
    /// no stored hash (unknown user), which always ends in `Mismatch`.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<Verification, CryptoError> {
        self.reserve()?.verify(password, stored).await
    }
}

/// A place in the pool's line, held until its hash is done.
pub struct Reserved {
    pool: PasswordHasherPool,
    place: OwnedSemaphorePermit,
}

impl Reserved {
    pub async fn hash(self, password: Zeroizing<String>) -> Result<String, CryptoError> {
        self.pool
            .run(self.place, move |memory| {
                hash_with(memory, password.as_bytes())
            })
            .await
    }

    /// As `PasswordHasherPool::verify`.
    pub async fn verify(
        self,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<Verification, CryptoError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.pool.dummy_hash.to_string());
        let outcome = self
            .pool
            .run(self.place, move |memory| {
                verify_with(memory, password.as_bytes(), &stored)
            })
            .await?;
        Ok(if known {
            outcome
        } else {
            Verification::Mismatch
        })
    }
}

/// Gives idle working memory back to the system; ends with the pool.
async fn release_when_idle(spare: std::sync::Weak<Mutex<Spare>>) {
    loop {
        // Checked every second, so memory goes back within a second of the deadline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(spare) = spare.upgrade() else {
            return;
        };
        let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.last_used.elapsed() >= IDLE_RELEASE {
            spare.memory.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hash_is_argon2id_phc_with_salt() {
        let h = hash_with(&mut Memory::new(), b"correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_ne!(
            h,
            hash_with(&mut Memory::new(), b"correct horse battery").unwrap()
        );
        assert!(!h.contains("correct"));
    }

    #[test]
    fn verify_matches_and_mismatches() {
        let h = hash_with(&mut Memory::new(), b"correct horse battery").unwrap();
        assert_eq!(
            verify_with(&mut Memory::new(), b"correct horse battery", &h).unwrap(),
            Verification::Match {
                needs_rehash: false
            }
        );
        assert_eq!(
            verify_with(&mut Memory::new(), b"wrong", &h).unwrap(),
            Verification::Mismatch
        );
        assert_eq!(
            verify_with(&mut Memory::new(), b"x", "not a phc string").unwrap(),
            Verification::Mismatch
        );
    }

    #[test]
    fn old_parameters_ask_for_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"pw-pw-pw-pw-pw", b"saltsaltsaltsalt")
        .unwrap()
        .to_string();
        assert_eq!(
            verify_with(&mut Memory::new(), b"pw-pw-pw-pw-pw", &weak).unwrap(),
            Verification::Match { needs_rehash: true }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_beyond_the_line_is_refused_at_once() {
        let pool = PasswordHasherPool::new(1).await.unwrap();
        let line = WAITING_PER_SLOT + 1;
        let calls: Vec<_> = (0..line + 8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.hash(Zeroizing::new("pw".into())).await })
            })
            .collect();
        let mut busy = 0;
        let mut hashed = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => hashed += 1,
                Err(CryptoError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(busy, 8, "exactly the requests beyond the line are refused");
        assert_eq!(hashed, line);
    }

    #[test]
    fn hashes_made_by_the_previous_release_still_verify() {
        // Before the pool kept its own memory, hashes came from the crate's own API.
        let earlier = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap(),
        )
        .hash_password_with_salt(b"pw-pw-pw-pw-pw", b"saltsaltsaltsalt")
        .unwrap()
        .to_string();
        let mut memory = Memory::new();
        assert_eq!(
            verify_with(&mut memory, b"pw-pw-pw-pw-pw", &earlier).unwrap(),
            Verification::Match {
                needs_rehash: false
            }
        );
        assert_eq!(
            verify_with(&mut memory, b"pw-pw-pw-pw-pX", &earlier).unwrap(),
            Verification::Mismatch
        );
        let ours = hash_with(&mut memory, b"pw-pw-pw-pw-pw").unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"pw-pw-pw-pw-pw", &PasswordHash::new(&ours).unwrap())
                .is_ok(),
            "other argon2 implementations read our hashes"
        );
    }

    #[test]
    fn a_hash_asking_for_absurd_memory_is_a_mismatch() {
        let greedy = "$argon2id$v=19$m=4000000,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$\
                      AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            verify_with(&mut Memory::new(), b"x", greedy).unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn working_memory_is_reused_and_bounded_by_the_slots() {
        let pool = PasswordHasherPool::new(2).await.unwrap();
        let calls: Vec<_> = (0..12)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.hash(Zeroizing::new("pw".into())).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert!((1..=2).contains(&pool.spare().memory.len()));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_at_lower_priority_off_the_async_workers() {
        let pool = PasswordHasherPool::new(1).await.unwrap();
        let place = pool.reserve().unwrap().place;
        let (nice, name) = pool
            .run(place, |_| {
                let me = rustix::thread::gettid();
                let nice = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
                Ok((nice, std::thread::current().name().map(str::to_owned)))
            })
            .await
            .unwrap();
        assert_eq!(nice, HASHING_NICENESS);
        assert_eq!(name.as_deref(), Some("kms-argon2-0"));
    }

    #[tokio::test]
    async fn unknown_user_never_matches() {
        let pool = PasswordHasherPool::new(2).await.unwrap();
        let out = pool
            .verify(Zeroizing::new("anything".into()), None)
            .await
            .unwrap();
        assert_eq!(out, Verification::Mismatch);
    }
}
