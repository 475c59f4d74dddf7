//! The Keys service: create, read, list, rotate, revoke and verify API keys.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::{
    Caller, Error, Result, api_key,
    audit::{self, action, outcome},
    cluster::{CachedKey, Caches},
    paging, require_admin, seconds, validate,
};
use crate::{
    crypto::{digest, sealing::Sealer},
    store::{Change, CreateConflict, KeyWithSecret, NewKey, NewSecret, Rotation, Store},
};

/// An API key as the transport shows it. `api_key` is empty where no secret is given
/// out (lists).
#[derive(Debug, Clone)]
pub struct ApiKeyView {
    pub service_name: String,
    pub api_key: String,
    pub key_prefix: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct CreateKey {
    pub service_name: String,
    pub api_key: Option<String>,
    pub description: String,
    pub ttl_seconds: i64,
}

#[derive(Debug, Clone)]
pub struct KeyPage {
    pub keys: Vec<ApiKeyView>,
    pub next_page_token: String,
}

/// The answer to VerifyKey: `None` for anything that is not a valid key right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub service_name: String,
    /// When the presented secret stops verifying (for a rotated-out secret, the end
    /// of its grace, not the key's expiry); `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct KeyService {
    store: Store,
    sealer: Sealer,
    caches: Arc<Caches>,
    /// Secret reads, committed before the secret is handed out, written in batches.
    audit: audit::AuditQueue,
}

impl KeyService {
    /// Starts the background audit writer for refused keys: call inside the runtime.
    pub fn new(store: Store, sealer: Sealer, caches: Arc<Caches>) -> Self {
        Self {
            audit: audit::AuditQueue::start(store.clone()),
            store,
            sealer,
            caches,
        }
    }

    fn new_secret(&self, service_name: &str, secret: &str) -> Result<NewSecret> {
        Ok(NewSecret {
            digest: digest::sha256(secret.as_bytes()).to_vec(),
            sealed: self
                .sealer
                .seal(secret.as_bytes(), service_name.as_bytes())?,
            key_prefix: api_key::display_prefix(secret),
        })
    }

    fn view(&self, found: &KeyWithSecret, with_secret: bool) -> Result<ApiKeyView> {
        let api_key = if with_secret {
            let plain = self
                .sealer
                .open(&found.secret.sealed, found.key.service_name.as_bytes())?;
            String::from_utf8(plain.to_vec())
                .map_err(|_| Error::Internal("a sealed secret is not UTF-8".into()))?
        } else {
            String::new()
        };
        Ok(ApiKeyView {
            service_name: found.key.service_name.clone(),
            api_key,
            key_prefix: found.secret.key_prefix.clone(),
            description: found.key.description.clone(),
            created_at: found.key.created_at,
            updated_at: found.key.updated_at,
            expires_at: found.key.expires_at,
        })
    }

    pub async fn create(&self, caller: &Caller, req: CreateKey) -> Result<ApiKeyView> {
        require_admin(caller)?;
        validate::service_name(&req.service_name)?;
        validate::description(&req.description)?;
        validate::ttl_seconds(req.ttl_seconds)?;
        let secret = match req.api_key {
            Some(imported) => {
                validate::imported_api_key(&imported)?;
                if api_key::claims_kms_format(&imported) && !api_key::checksum_ok(&imported) {
                    return Err(Error::invalid(
                        "api_key",
                        "starts with kms_ but is not a well-formed KMS key (bad checksum)",
                    ));
                }
                imported
            }
            None => api_key::generate()?,
        };
        let now = Utc::now();
        let expires_at = match req.ttl_seconds {
            0 => None,
            ttl => Some(now + seconds(ttl)?),
        };
        let new = NewKey {
            secret: self.new_secret(&req.service_name, &secret)?,
            service_name: req.service_name.clone(),
            description: req.description,
            ttl_seconds: req.ttl_seconds,
            expires_at,
        };
        let record = audit::event(
            &caller.subject,
            action::KEY_CREATE,
            &req.service_name,
            outcome::SUCCESS,
        );
        match self.store.create_key(new, now, record).await? {
            Ok(created) => {
                tracing::info!(service_name = %req.service_name, key_prefix = %created.secret.key_prefix, "key created");
                let mut view = self.view(&created, false)?;
                view.api_key = secret;
                Ok(view)
            }
            Err(CreateConflict::ServiceName) => Err(Error::AlreadyExists(format!(
                "service_name: a key for '{}' already exists",
                req.service_name
            ))),
            // Live, in grace, rotated out or revoked alike: a secret that was ever
            // issued is burned once it leaves service, so it is never issued twice.
            Err(CreateConflict::Secret) => Err(Error::AlreadyExists(
                "api_key: this secret was issued before and cannot be reused; import \
                 another or let the KMS generate one"
                    .into(),
            )),
        }
    }

    pub async fn get(&self, caller: &Caller, service_name: &str) -> Result<ApiKeyView> {
        require_admin(caller)?;
        validate::service_name(service_name)?;
        let found = self
            .caches
            .current_key(service_name, async {
                Ok::<_, Error>(self.store.current_key(service_name).await?.map(Arc::new))
            })
            .await?
            .ok_or_else(|| not_found(service_name))?;
        let view = self.view(&found, true)?;
        // Reading a secret is a security event: committed before it is handed out
        // (in one transaction with other reads happening at the same time).
        self.audit
            .record(audit::event(
                &caller.subject,
                action::KEY_GET,
                service_name,
                outcome::SUCCESS,
            ))
            .await?;
        Ok(view)
    }

    pub async fn list(&self, caller: &Caller, page_size: i32, page_token: &str) -> Result<KeyPage> {
        require_admin(caller)?;
        let size = validate::page_size(page_size)?;
        let after = paging::decode(page_token, validate::service_name)?;
        let rows = self.store.list_keys(after.as_deref(), size + 1).await?;
        let (rows, next_page_token) = paging::page(rows, size, |r| &r.key.service_name);
        let keys = rows
            .iter()
            .map(|row| self.view(row, false))
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyPage {
            keys,
            next_page_token,
        })
    }

    pub async fn rotate(
        &self,
        caller: &Caller,
        service_name: &str,
        grace_period_seconds: i64,
    ) -> Result<ApiKeyView> {
        require_admin(caller)?;
        validate::service_name(service_name)?;
        validate::grace_period_seconds(grace_period_seconds)?;
        let secret = api_key::generate()?;
        let now = Utc::now();
        let old_retires_at = match grace_period_seconds {
            0 => None,
            grace => Some(now + seconds(grace)?),
        };
        let rotation = Rotation {
            secret: self.new_secret(service_name, &secret)?,
            old_retires_at,
        };
        // Rotation renews the key's lifetime: a key with a TTL gets it again from now.
        // TTLs are bounded at creation, so the sum cannot overflow.
        let renew = |ttl: i64| {
            (ttl > 0)
                .then(|| Duration::try_seconds(ttl).and_then(|d| now.checked_add_signed(d)))
                .flatten()
        };
        let rotated = self
            .store
            .rotate_key(
                service_name,
                rotation,
                now,
                renew,
                audit::event(
                    &caller.subject,
                    action::KEY_ROTATE,
                    service_name,
                    outcome::SUCCESS,
                ),
            )
            .await?
            .ok_or_else(|| not_found(service_name))?;
        self.caches.apply(&Change::Key(service_name.to_owned()));
        tracing::info!(%service_name, key_prefix = %rotated.secret.key_prefix, grace_period_seconds, "key rotated");
        let mut view = self.view(&rotated, false)?;
        view.api_key = secret;
        Ok(view)
    }

    pub async fn revoke(&self, caller: &Caller, service_name: &str) -> Result<()> {
        require_admin(caller)?;
        validate::service_name(service_name)?;
        let record = audit::event(
            &caller.subject,
            action::KEY_REVOKE,
            service_name,
            outcome::SUCCESS,
        );
        if self
            .store
            .revoke_key(service_name, Utc::now(), record)
            .await?
        {
            self.caches.apply(&Change::Key(service_name.to_owned()));
            tracing::info!(%service_name, "key revoked");
            Ok(())
        } else {
            Err(not_found(service_name))
        }
    }

    /// Any authenticated caller may verify. Every kind of bad key is `Ok(None)`.
    pub async fn verify(&self, caller: &Caller, presented: &str) -> Result<Option<VerifiedKey>> {
        let verified = self.check_presented_key(presented).await?;
        if verified.is_none() {
            // Failures only: successes are the hot path and say nothing new. The target
            // is the key's display prefix, never the key. Anyone with a token can send
            // these as fast as valid ones: counted, never waited for (see `append`).
            audit::append(
                &self.store,
                audit::event(
                    &caller.subject,
                    action::KEY_VERIFY,
                    &api_key::display_prefix(presented),
                    outcome::FAILURE,
                ),
            )
            .await;
        }
        Ok(verified)
    }

    /// The check behind `verify`, for a transport that authenticated its peer some
    /// other way (Envoy's ext_authz: mTLS or network policy, no KMS token). Every kind
    /// of bad key is `Ok(None)`; `Err` means the check itself could not be made (the
    /// database is down), which is never an answer about the key.
    pub async fn check_presented_key(&self, presented: &str) -> Result<Option<VerifiedKey>> {
        if presented.is_empty() || presented.len() > validate::IMPORTED_KEY_MAX {
            return Ok(None);
        }
        // A KMS-format key with a bad checksum is a typo or a forgery: no lookup.
        if api_key::claims_kms_format(presented) && !api_key::checksum_ok(presented) {
            return Ok(None);
        }
        let presented_digest = digest::sha256(presented.as_bytes());
        let now = Utc::now();
        let fetch = async {
            let Some(found) = self.store.find_secret(&presented_digest).await? else {
                return Ok::<_, Error>(None);
            };
            let matches = digest::ct_eq(&found.secret.digest, &presented_digest)
                && found.key.revoked_at.is_none();
            Ok(matches.then(|| CachedKey {
                service_name: found.key.service_name.as_str().into(),
                key_expires_at: found.key.expires_at,
                secret_retires_at: found.secret.retires_at,
            }))
        };
        // A cached entry is a verified secret: only its times can have run out since,
        // so they are checked on every answer, and only a valid one is kept.
        let entry = self
            .caches
            .key_by_digest(&presented_digest, fetch, |k| k.valid_at(now))
            .await?;
        Ok(entry.filter(|k| k.valid_at(now)).map(|k| VerifiedKey {
            service_name: k.service_name.to_string(),
            expires_at: k.stops_at(),
        }))
    }
}

fn not_found(service_name: &str) -> Error {
    Error::NotFound(format!("no key for service_name '{service_name}'"))
}
