//! The keyring: the master key wraps data keys kept in the database; the newest data
//! key seals new secrets and private signing keys, older ones keep opening what they
//! sealed. Values the previous release sealed directly under the master key keep
//! opening with it until `rewrap_secrets` moves them.
//!
//! Every replica holds the unwrapped data keys in memory. A rotation on any replica is
//! announced (`Change::Keyring`) and every replica loads the new key at once; a value
//! naming a data key this replica has not loaded yet makes it load the keyring first.
//! A replica keeps every key it loaded, so that it keeps serving after
//! `kms master-key rewrap` (it needs the new master key only at its next start).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{
    Caller, Error, Result,
    audit::{self, action, outcome},
    require_admin, signing,
};
use crate::{
    crypto::{
        CryptoError,
        master::Master,
        sealing::{DataKey, SealedUnder, sealed_under},
    },
    store::{
        DataKeyInsert, MasterRewrap, NewDataKey, Resealed, SealedBy, SealedKind, SealedValue,
        Store, StoreError, StoredDataKey,
    },
};

/// Values re-sealed per transaction: short enough never to hold up calls.
const REWRAP_BATCH: u64 = 200;
/// Tries at storing a data key when other replicas take the next id first.
const INSERT_TRIES: usize = 5;

/// A value sealed under the current data key, with that key's id for its row.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub bytes: Vec<u8>,
    pub data_key_id: i64,
}

#[derive(Debug, Clone)]
pub struct DataKeyStatus {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub current: bool,
    pub sealed_values: i64,
}

#[derive(Debug, Clone)]
pub struct KeyringStatus {
    pub master_key_id: String,
    pub data_keys: Vec<DataKeyStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapOutcome {
    pub rewrapped: i64,
    pub remaining: i64,
}

/// Why the keyring cannot be used with the master key given (start-up, the CLI).
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "the configured master key ({got}, from KMS_MASTER_KEY, KMS_MASTER_KEY_FILE or the KMS_MASTER_KEY_PKCS11_* settings) does not open this database's keyring, which needs master key {needs}. Start with the master key the keyring was last wrapped with (see `kms master-key rewrap`)"
    )]
    WrongMaster { needs: String, got: String },
    #[error(
        "data key {id} of the keyring does not open with the configured master key ({got}), though the keyring names it: the row is damaged or was tampered with"
    )]
    Damaged { id: i64, got: String },
    #[error(transparent)]
    Mismatch(#[from] super::master_key::MasterKeyError),
    #[error("cannot read the keyring: {0}")]
    Store(#[from] StoreError),
    #[error("keyring: {0}")]
    Crypto(#[from] CryptoError),
}

/// Associated data binding a wrapped data key to its id.
fn wrap_aad(id: i64) -> Vec<u8> {
    format!("kms data key {id}").into_bytes()
}

/// Associated data of a sealed value: what the release that sealed it bound it to.
pub fn value_aad(kind: SealedKind, owner: &str) -> Vec<u8> {
    match kind {
        SealedKind::ApiKeySecret => owner.as_bytes().to_vec(),
        SealedKind::SigningKey => signing::aad(owner),
    }
}

pub fn data_key_name(id: i64) -> String {
    format!("dk-{id}")
}

#[derive(Debug, Default)]
struct Loaded {
    keys: HashMap<i64, DataKey>,
    current: Option<i64>,
}

#[derive(Clone)]
pub struct Keyring {
    store: Store,
    master: Master,
    loaded: Arc<RwLock<Arc<Loaded>>>,
    /// One load at a time.
    loading: Arc<tokio::sync::Mutex<()>>,
    rewrap_budget: Duration,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("master_key_id", &self.master.id())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Opens the keyring with `master`, creating the first data key when there is
    /// none. Refuses a master key that did not wrap the keyring, naming both ids.
    /// `rewrap_budget`: how long one RewrapSecrets call may work before it answers.
    pub async fn unlock(
        store: Store,
        master: Master,
        rewrap_budget: Duration,
    ) -> std::result::Result<Self, KeyringError> {
        let keyring = Self {
            store,
            master,
            loaded: Arc::default(),
            loading: Arc::default(),
            rewrap_budget,
        };
        let rows = keyring.store.data_keys().await?;
        if let Some(other) = rows.iter().find(|k| k.master_key_id != keyring.master.id()) {
            return Err(KeyringError::WrongMaster {
                needs: other.master_key_id.clone(),
                got: keyring.master.id().to_owned(),
            });
        }
        for row in &rows {
            if keyring.unwrap_row(row).is_err() {
                return Err(KeyringError::Damaged {
                    id: row.id,
                    got: keyring.master.id().to_owned(),
                });
            }
        }
        if !rows.is_empty() {
            keyring.load().await?;
        }
        // Before a first data key is wrapped: a wrong master key must not make one.
        super::master_key::check(&keyring.store, &keyring).await?;
        if rows.is_empty() {
            match keyring.add_data_key(true, None).await? {
                DataKeyInsert::Inserted => tracing::info!("first data key of the keyring created"),
                DataKeyInsert::OtherMaster(needs) => {
                    return Err(KeyringError::WrongMaster {
                        needs,
                        got: keyring.master.id().to_owned(),
                    });
                }
                DataKeyInsert::NotEmpty | DataKeyInsert::IdTaken => {}
            }
        }
        keyring.load().await?;
        if keyring.current()?.is_none() {
            return Err(KeyringError::Store(StoreError::Unavailable(
                "the keyring has no data key after creating one".into(),
            )));
        }
        Ok(keyring)
    }

    pub fn master_key_id(&self) -> &str {
        self.master.id()
    }

    fn snapshot(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn current(&self) -> std::result::Result<Option<DataKey>, CryptoError> {
        let loaded = self.snapshot();
        Ok(loaded.current.and_then(|id| loaded.keys.get(&id).cloned()))
    }

    fn unwrap_row(&self, row: &StoredDataKey) -> std::result::Result<DataKey, CryptoError> {
        let id = u32::try_from(row.id).map_err(|_| CryptoError::Open)?;
        let bytes = self.master.open(&row.wrapped, &wrap_aad(row.id))?;
        DataKey::new(id, &bytes)
    }

    /// Loads data keys this replica does not hold yet. A key the master key does not
    /// open (the keyring was re-wrapped under another master key since this replica
    /// started) is skipped with a warning: this replica keeps sealing with the newest
    /// key it holds, which every replica can open.
    pub async fn load(&self) -> std::result::Result<(), StoreError> {
        let _one = self.loading.lock().await;
        let rows = self.store.data_keys().await?;
        let held = self.snapshot();
        let mut keys = held.keys.clone();
        let mut current = held.current;
        for row in &rows {
            if keys.contains_key(&row.id) {
                current = current.max(Some(row.id));
                continue;
            }
            match self.unwrap_row(row) {
                Ok(key) => {
                    keys.insert(row.id, key);
                    current = current.max(Some(row.id));
                }
                Err(_) => tracing::warn!(
                    data_key = %data_key_name(row.id),
                    needs = %row.master_key_id,
                    master_key_id = %self.master.id(),
                    "a data key does not open with this server's master key (the keyring was re-wrapped); restart this server with the new master key"
                ),
            }
        }
        let next = Arc::new(Loaded { keys, current });
        match self.loaded.write() {
            Ok(mut l) => *l = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    /// Seals under the current data key.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> std::result::Result<Sealed, CryptoError> {
        let key = self.current()?.ok_or(CryptoError::Seal)?;
        Ok(Sealed {
            bytes: key.seal(plaintext, aad)?,
            data_key_id: i64::from(key.id()),
        })
    }

    /// Opens a value sealed under any data key of the keyring, or directly under the
    /// master key by the previous release. A data key this replica has not loaded yet
    /// (rotated on another replica a moment ago) is loaded first.
    pub async fn open(
        &self,
        sealed: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Zeroizing<Vec<u8>>, CryptoError> {
        match sealed_under(sealed)? {
            SealedUnder::MasterKey => self.master.open(sealed, aad),
            SealedUnder::DataKey(id) => {
                let id = i64::from(id);
                if !self.snapshot().keys.contains_key(&id) {
                    self.load().await.map_err(|e| {
                        tracing::warn!(error = %e, "the keyring could not be loaded");
                        CryptoError::Open
                    })?;
                }
                let loaded = self.snapshot();
                loaded
                    .keys
                    .get(&id)
                    .ok_or(CryptoError::Open)?
                    .open(sealed, aad)
            }
        }
    }

    /// Opens a value sealed under a data key this replica holds in memory, and nothing
    /// else: never the master key (with PKCS#11 a blocking call to the token), never a
    /// load from the database. For values a client hands in unauthenticated (the
    /// console's session cookie), so that forging one costs the server no more than an
    /// AES-GCM check. A value sealed a moment ago under a data key another replica has
    /// just rotated to opens once this replica hears of the rotation.
    pub fn open_loaded(
        &self,
        sealed: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Zeroizing<Vec<u8>>, CryptoError> {
        match sealed_under(sealed)? {
            SealedUnder::MasterKey => Err(CryptoError::Open),
            SealedUnder::DataKey(id) => self
                .snapshot()
                .keys
                .get(&i64::from(id))
                .ok_or(CryptoError::Open)?
                .open(sealed, aad),
        }
    }

    /// Wraps a new data key for the next id and stores it, retrying when another
    /// replica takes that id first.
    async fn add_data_key(
        &self,
        only_if_empty: bool,
        audit: Option<crate::store::AuditRecord>,
    ) -> std::result::Result<DataKeyInsert, KeyringError> {
        for _ in 0..INSERT_TRIES {
            let next = self.store.data_keys().await?.last().map_or(1, |k| k.id + 1);
            let bytes = DataKey::generate_bytes()?;
            let new = NewDataKey {
                id: next,
                wrapped: self.master.seal(bytes.as_slice(), &wrap_aad(next))?,
                master_key_id: self.master.id().to_owned(),
            };
            match self
                .store
                .insert_data_key(new, only_if_empty, Utc::now(), audit.clone())
                .await?
            {
                DataKeyInsert::IdTaken => continue,
                done => return Ok(done),
            }
        }
        Ok(DataKeyInsert::IdTaken)
    }

    pub async fn status(&self, caller: &Caller) -> Result<KeyringStatus> {
        require_admin(caller)?;
        self.status_unchecked().await
    }

    async fn status_unchecked(&self) -> Result<KeyringStatus> {
        let rows = self.store.data_keys().await?;
        let counts = self.store.sealed_counts().await?;
        let current = rows.last().map(|k| k.id);
        Ok(KeyringStatus {
            master_key_id: self.master.id().to_owned(),
            data_keys: rows
                .iter()
                .map(|k| DataKeyStatus {
                    id: k.id,
                    created_at: k.created_at,
                    current: Some(k.id) == current,
                    sealed_values: counts
                        .iter()
                        .filter(|(id, _)| *id == Some(k.id))
                        .map(|(_, n)| *n)
                        .sum(),
                })
                .collect(),
        })
    }

    /// A new data key becomes current, here at once and on other replicas when they
    /// hear of it.
    pub async fn rotate(&self, caller: &Caller) -> Result<KeyringStatus> {
        require_admin(caller)?;
        let record = |o| audit::event(&caller.subject, action::DATA_KEY_ROTATE, "keyring", o);
        let refused = |e: Error| async {
            audit::append(&self.store, record(outcome::FAILURE)).await;
            Err(e)
        };
        match self
            .add_data_key(false, Some(record(outcome::SUCCESS)))
            .await
        {
            Ok(DataKeyInsert::Inserted) => {}
            Ok(DataKeyInsert::OtherMaster(needs)) => {
                return refused(Error::FailedPrecondition(format!(
                    "the keyring is now wrapped by master key {needs}, not this server's ({}): restart this server with the new master key",
                    self.master.id()
                )))
                .await;
            }
            Ok(DataKeyInsert::IdTaken | DataKeyInsert::NotEmpty) => {
                return refused(Error::Unavailable).await;
            }
            Err(KeyringError::Store(e)) => return Err(e.into()),
            Err(e) => return refused(Error::Internal(e.to_string())).await,
        }
        self.load().await?;
        tracing::info!(actor = %caller.subject, "data key rotated");
        self.status_unchecked().await
    }

    /// Re-seals, in short batches, every value not under the current data key, until
    /// none is left or this call's time is up; calls again carry on where it stopped.
    /// Each value is replaced only if it has not changed meanwhile, so a crash or a
    /// concurrent call leaves every value readable under one key or the other.
    pub async fn rewrap_secrets(&self, caller: &Caller) -> Result<RewrapOutcome> {
        require_admin(caller)?;
        self.load().await?;
        let Some(current) = self.current()? else {
            return Err(Error::Unavailable);
        };
        let newest = self.store.data_keys().await?.last().map(|k| k.id);
        let current_id = i64::from(current.id());
        if newest != Some(current_id) {
            return Err(Error::FailedPrecondition(format!(
                "the newest data key does not open with this server's master key ({}): restart this server with the master key the keyring is wrapped with",
                self.master.id()
            )));
        }
        let until = Instant::now() + self.rewrap_budget;
        let by = SealedBy::NotDataKey(current_id);
        let mut rewrapped = 0_i64;
        let mut unreadable = 0_i64;
        'kinds: for kind in [SealedKind::ApiKeySecret, SealedKind::SigningKey] {
            let mut after = 0;
            loop {
                if Instant::now() >= until {
                    break 'kinds;
                }
                let batch = self
                    .store
                    .sealed_values(kind, by, after, REWRAP_BATCH)
                    .await?;
                let Some(last) = batch.last() else {
                    break;
                };
                after = last.row_id;
                let mut resealed = Vec::with_capacity(batch.len());
                for value in batch {
                    match self.reseal(&value, &current).await {
                        Ok(r) => resealed.push(r),
                        Err(_) => {
                            unreadable += 1;
                            tracing::error!(kind = ?value.kind, row = value.row_id, "a sealed value does not open with any key of the keyring; left as it is");
                        }
                    }
                }
                rewrapped += i64::try_from(self.store.reseal(resealed).await?).unwrap_or(0);
                // Let waiting calls run between batches.
                tokio::task::yield_now().await;
            }
        }
        let remaining = self.store.count_sealed(by).await?;
        let target = format!(
            "{}: {rewrapped} rewrapped, {remaining} remaining",
            data_key_name(current_id)
        );
        audit::append(
            &self.store,
            audit::event(
                &caller.subject,
                action::SECRETS_REWRAP,
                &target,
                outcome::SUCCESS,
            ),
        )
        .await;
        if unreadable > 0 {
            tracing::error!(unreadable, "RewrapSecrets left values it could not open");
        }
        tracing::info!(rewrapped, remaining, data_key = %data_key_name(current_id), "secrets rewrapped");
        Ok(RewrapOutcome {
            rewrapped,
            remaining,
        })
    }

    async fn reseal(&self, value: &SealedValue, current: &DataKey) -> Result<Resealed> {
        let aad = value_aad(value.kind, &value.owner);
        let plain = self.open(&value.sealed, &aad).await?;
        Ok(Resealed {
            kind: value.kind,
            row_id: value.row_id,
            old: value.sealed.clone(),
            sealed: current.seal(&plain, &aad)?,
            data_key_id: i64::from(current.id()),
        })
    }

    /// `kms master-key rewrap`: wraps every data key under `new` and moves what the
    /// previous release sealed directly under the current master key, in one
    /// transaction. Returns the number of data keys re-wrapped and values moved.
    pub async fn rewrap_master(&self, new: &Master, actor: &str) -> Result<(usize, usize)> {
        if new.id() == self.master.id() {
            return Err(Error::invalid(
                "new master key",
                format!("is the current master key ({})", new.id()),
            ));
        }
        for _ in 0..INSERT_TRIES {
            self.load().await?;
            let Some(current) = self.current()? else {
                return Err(Error::Unavailable);
            };
            let mut rewrapped = Vec::new();
            for row in self.store.data_keys().await? {
                let bytes = self.master.open(&row.wrapped, &wrap_aad(row.id))?;
                rewrapped.push(NewDataKey {
                    id: row.id,
                    wrapped: new.seal(&bytes, &wrap_aad(row.id))?,
                    master_key_id: new.id().to_owned(),
                });
            }
            let mut legacy = Vec::new();
            for kind in [SealedKind::ApiKeySecret, SealedKind::SigningKey] {
                let mut after = 0;
                loop {
                    let batch = self
                        .store
                        .sealed_values(kind, SealedBy::MasterKey, after, REWRAP_BATCH)
                        .await?;
                    let Some(last) = batch.last() else { break };
                    after = last.row_id;
                    for value in batch {
                        legacy.push(self.reseal(&value, &current).await?);
                    }
                }
            }
            let (keys, values) = (rewrapped.len(), legacy.len());
            let target = format!("{} -> {}", self.master.id(), new.id());
            let record = audit::event(actor, action::MASTER_KEY_REWRAP, &target, outcome::SUCCESS);
            match self
                .store
                .rewrap_master(self.master.id(), rewrapped, legacy, record)
                .await?
            {
                MasterRewrap::Done => return Ok((keys, values)),
                MasterRewrap::Changed => continue,
                MasterRewrap::OtherMaster(needs) => {
                    return Err(Error::FailedPrecondition(format!(
                        "the keyring is wrapped by master key {needs}, not {}",
                        self.master.id()
                    )));
                }
            }
        }
        Err(Error::FailedPrecondition(
            "the keyring kept changing while it was re-wrapped; run the command again".into(),
        ))
    }
}
