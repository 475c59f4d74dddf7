//! Password hashing with argon2id, off the async workers, on a bounded pool.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;
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

fn argon2() -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| CryptoError::PasswordHash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &[u8]) -> Result<String, CryptoError> {
    let salt: [u8; 16] = random::bytes()?;
    argon2()?
        .hash_password_with_salt(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::PasswordHash(e.to_string()))
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

fn verify_blocking(password: &[u8], stored: &str) -> Result<Verification, CryptoError> {
    // A stored hash that does not parse is treated as a mismatch: fail closed.
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Ok(Verification::Mismatch);
    };
    if argon2()?.verify_password(password, &parsed).is_err() {
        return Ok(Verification::Mismatch);
    }
    let current = parsed.algorithm.as_str() == "argon2id"
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == M_COST_KIB && p.t_cost() == T_COST && p.p_cost() == P_COST
        });
    Ok(Verification::Match {
        needs_rehash: !current,
    })
}

/// How many hashes may wait for a free slot, per slot. Beyond that a request is
/// refused at once (`CryptoError::Busy`): a waiting login holds one of the server's
/// concurrent-call slots, and a flood must leave those to other calls. At about 25 ms
/// a hash, 32 waiting per slot is under a second of queue.
const WAITING_PER_SLOT: usize = 32;

/// Runs argon2 on tokio's blocking threads, at most `max_parallel` at once, so a flood
/// of logins neither starves the async workers nor takes unbounded memory (each hash
/// holds `M_COST_KIB` while it runs), with a bounded line of waiting requests.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    /// Slots in the line: running and waiting hashes together.
    line: Arc<Semaphore>,
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
        let dummy_hash = tokio::task::spawn_blocking(move || hash_blocking(&dummy_password))
            .await
            .map_err(|_| CryptoError::PoolClosed)??;
        Ok(Self {
            permits,
            line,
            dummy_hash: dummy_hash.into(),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, CryptoError> + Send + 'static,
    ) -> Result<T, CryptoError> {
        let place = self
            .line
            .clone()
            .try_acquire_owned()
            .map_err(|_| CryptoError::Busy)?;
        // The permit travels with the job: if the caller gives up (the RPC is
        // cancelled), the hash still runs to completion holding its permit, so the
        // bound on concurrent hashes (and their memory) holds.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CryptoError::PoolClosed)?;
        tokio::task::spawn_blocking(move || {
            let _permits = (place, permit);
            job()
        })
        .await
        .map_err(|_| CryptoError::PoolClosed)?
    }

    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, CryptoError> {
        self.run(move || hash_blocking(password.as_bytes())).await
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is
    /// no stored hash (unknown user), which always ends in `Mismatch`.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<Verification, CryptoError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let outcome = self
            .run(move || verify_blocking(password.as_bytes(), &stored))
            .await?;
        Ok(if known {
            outcome
        } else {
            Verification::Mismatch
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_argon2id_phc_with_salt() {
        let h = hash_blocking(b"correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_ne!(h, hash_blocking(b"correct horse battery").unwrap());
        assert!(!h.contains("correct"));
    }

    #[test]
    fn verify_matches_and_mismatches() {
        let h = hash_blocking(b"correct horse battery").unwrap();
        assert_eq!(
            verify_blocking(b"correct horse battery", &h).unwrap(),
            Verification::Match {
                needs_rehash: false
            }
        );
        assert_eq!(
            verify_blocking(b"wrong", &h).unwrap(),
            Verification::Mismatch
        );
        assert_eq!(
            verify_blocking(b"x", "not a phc string").unwrap(),
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
            verify_blocking(b"pw-pw-pw-pw-pw", &weak).unwrap(),
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
