//! Bulk seeding straight into the database with the kms library: real keys in the
//! KMS format, their SHA-256 digests and AES-256-GCM sealed secrets under the same
//! master key and associated data (the service name) as the server's CreateKey, so
//! seeded keys verify and GetKey opens them. Users all share one argon2 hash made with
//! the server's parameters (hashing a million passwords would take hours).
//!
//! A thread generates batches while the database inserts the previous one.

use std::time::{Duration, Instant};

use chrono::Utc;
use kms::{
    crypto::{digest, password::PasswordHasherPool, sealing::Sealer},
    domain::api_key,
    store::{NewKey, NewSecret, Store, StoreOptions},
};
use zeroize::Zeroizing;

/// Keys per transaction.
const KEYS_PER_TXN: usize = 20_000;

/// A seeded key whose secret the bench kept, to verify or read it.
#[derive(Clone)]
pub struct KeptKey {
    pub service_name: String,
    pub secret: String,
}

pub struct SeedReport {
    pub inserted: u64,
    pub took: Duration,
    /// Every `keep_every`-th key (by index), with its secret.
    pub kept: Vec<KeptKey>,
}

impl SeedReport {
    pub fn rate(&self) -> f64 {
        self.inserted as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

pub async fn connect(url: &str) -> Result<Store, String> {
    let store = Store::connect(&StoreOptions {
        url: url.to_owned(),
        max_connections: 2,
    })
    .await
    .map_err(|e| format!("cannot open the database: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("cannot migrate the database: {e}"))?;
    Ok(store)
}

/// The sealed, digested form of a secret, exactly as the server's CreateKey stores it
/// (`KeyService::new_secret`). The smoke run's verify and get scenarios check that the
/// two still agree.
pub fn new_secret(sealer: &Sealer, service_name: &str, secret: &str) -> Result<NewSecret, String> {
    Ok(NewSecret {
        digest: digest::sha256(secret.as_bytes()).to_vec(),
        sealed: sealer
            .seal(secret.as_bytes(), service_name.as_bytes())
            .map_err(|e| e.to_string())?,
        // Sealed directly under the master key, as the first release stored secrets:
        // the server opens these as it opens an upgraded database's.
        data_key_id: None,
        key_prefix: api_key::display_prefix(secret),
    })
}

fn generate_batch(
    sealer: &Sealer,
    prefix: &str,
    range: std::ops::Range<u64>,
    keep_every: u64,
) -> Result<(Vec<NewKey>, Vec<KeptKey>), String> {
    let mut keys = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
    let mut kept = Vec::new();
    for i in range {
        let service_name = format!("{prefix}{i:08}");
        let secret = api_key::generate().map_err(|e| e.to_string())?;
        let new = new_secret(sealer, &service_name, &secret)?;
        if i % keep_every == 0 {
            kept.push(KeptKey {
                service_name: service_name.clone(),
                secret,
            });
        }
        keys.push(NewKey {
            service_name,
            description: "seeded by kms-bench".into(),
            ttl_seconds: 0,
            expires_at: None,
            secret: new,
            // Scopes so that `verify-scoped` has something to match against.
            policy: kms::store::StoredPolicy {
                scopes: vec!["bench:*".into(), "read".into()],
                ..kms::store::StoredPolicy::open()
            },
        });
    }
    Ok((keys, kept))
}

/// Seeds keys `prefix` + index for indices `start..start+count`, keeping about `keep`
/// of them (evenly spread) with their secrets.
pub async fn seed_keys(
    store: &Store,
    sealer: &Sealer,
    prefix: &str,
    start: u64,
    count: u64,
    keep: u64,
    progress: bool,
) -> Result<SeedReport, String> {
    let began = Instant::now();
    let keep_every = (count / keep.max(1)).max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Vec<NewKey>, Vec<KeptKey>), String>>(2);
    let generator = {
        let sealer = sealer.clone();
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            let end = start + count;
            let mut from = start;
            while from < end {
                let to = (from + KEYS_PER_TXN as u64).min(end);
                let batch = generate_batch(&sealer, &prefix, from..to, keep_every);
                let failed = batch.is_err();
                if tx.blocking_send(batch).is_err() || failed {
                    return;
                }
                from = to;
            }
        })
    };
    let mut inserted = 0u64;
    let mut kept = Vec::new();
    let mut last_report = Instant::now();
    while let Some(batch) = rx.recv().await {
        let (keys, mut batch_kept) = batch?;
        inserted += store
            .seed_keys(keys, Utc::now())
            .await
            .map_err(|e| format!("seeding keys failed: {e}"))?;
        kept.append(&mut batch_kept);
        if progress && last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  seeded {inserted}/{count} keys ({:.0}/s)",
                inserted as f64 / began.elapsed().as_secs_f64()
            );
        }
    }
    let _ = generator.join();
    if inserted != count {
        return Err(format!("seeded {inserted} keys of {count}"));
    }
    Ok(SeedReport {
        inserted,
        took: began.elapsed(),
        kept,
    })
}

/// A PHC hash of `password` with the server's argon2 parameters.
pub async fn password_hash(password: &str) -> Result<String, String> {
    let pool = PasswordHasherPool::new(1)
        .await
        .map_err(|e| e.to_string())?;
    pool.hash(Zeroizing::new(password.to_owned()))
        .await
        .map_err(|e| e.to_string())
}

pub fn username(i: u64) -> String {
    format!("bench-user-{i:07}")
}

/// Seeds users `bench-user-NNNNNNN` for indices `start..start+count`, role `user`,
/// all with the one `password_hash`.
pub async fn seed_users(
    store: &Store,
    password_hash: &str,
    start: u64,
    count: u64,
) -> Result<SeedReport, String> {
    let began = Instant::now();
    let mut inserted = 0;
    let mut from = start;
    while from < start + count {
        let to = (from + KEYS_PER_TXN as u64).min(start + count);
        let names = (from..to).map(username).collect();
        inserted += store
            .seed_users(names, password_hash, "user", Utc::now())
            .await
            .map_err(|e| format!("seeding users failed: {e}"))?;
        from = to;
    }
    Ok(SeedReport {
        inserted,
        took: began.elapsed(),
        kept: Vec::new(),
    })
}

const TIMING_PASSWORD: &str = "bench-password-for-timing";

/// The server's hashing pool with `parallel` slots, and a hash to verify against.
async fn timing_pool(parallel: usize) -> Result<(PasswordHasherPool, String), String> {
    let pool = PasswordHasherPool::new(parallel)
        .await
        .map_err(|e| e.to_string())?;
    let stored = pool
        .hash(Zeroizing::new(TIMING_PASSWORD.to_owned()))
        .await
        .map_err(|e| e.to_string())?;
    Ok((pool, stored))
}

async fn verify_once(pool: &PasswordHasherPool, stored: String) -> Result<(), String> {
    pool.verify(Zeroizing::new(TIMING_PASSWORD.to_owned()), Some(stored))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The time one argon2 verification takes with the server's parameters: the median
/// of `runs`, each on the server's hashing threads.
pub async fn argon2_time(runs: usize) -> Result<Duration, String> {
    let (pool, stored) = timing_pool(1).await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let began = Instant::now();
        verify_once(&pool, stored.clone()).await?;
        times.push(began.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Hashes per second with `parallel` hashes running at once (the server's pool of
/// that size, kept full): what the cores allow when they share caches and memory
/// bandwidth, as they do under load.
pub async fn argon2_parallel_rate(parallel: usize, per_slot: usize) -> Result<f64, String> {
    let (pool, stored) = timing_pool(parallel).await?;
    let total = parallel.max(1) * per_slot.max(1);
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        let (pool, stored) = (pool.clone(), stored.clone());
        tasks.push(tokio::spawn(
            async move { verify_once(&pool, stored).await },
        ));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(total as f64 / began.elapsed().as_secs_f64())
}
