//! The Keys service: create, read, list, update, rotate, revoke and verify API keys.

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use chrono::{DateTime, Duration, Utc};

use super::{
    Caller, Error, Result, api_key,
    audit::{self, action, outcome},
    cluster::Caches,
    keyring::Keyring,
    paging,
    policy::{
        RateLimit, fields, fields::MaskPath, lease::Leases, rate::Limiter, scopes, usage::LastUsed,
    },
    require_admin, seconds, validate,
};
use crate::{
    crypto::digest,
    store::{
        Change, CreateConflict, KeyUpdate, KeyWithSecret, NewKey, NewSecret, Rotation, Store,
        StoredPolicy,
    },
};

mod verify;

pub use verify::{RateLimitStatus, Verification, VerifiedKey};

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
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
    /// Credits left; `None`: unlimited.
    pub remaining: Option<i64>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct CreateKey {
    pub service_name: String,
    pub api_key: Option<String>,
    pub description: String,
    pub ttl_seconds: i64,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
    pub remaining: Option<i64>,
}

/// UpdateKey: only the fields named in `paths` change.
#[derive(Debug, Clone, Default)]
pub struct UpdateKey {
    pub service_name: String,
    pub paths: Vec<String>,
    pub description: String,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
    pub remaining: Option<i64>,
    pub ttl_seconds: i64,
}

#[derive(Debug, Clone)]
pub struct KeyPage {
    pub keys: Vec<ApiKeyView>,
    pub next_page_token: String,
}

#[derive(Debug, Clone)]
pub struct KeyService {
    store: Store,
    keyring: Keyring,
    caches: Arc<Caches>,
    /// Secret reads, committed before the secret is handed out, written in batches.
    audit: audit::AuditQueue,
    /// This server's rate-limit counts, by key id.
    limiter: Arc<Limiter>,
    /// The share of each limit this replica holds, when replicas share the database.
    leases: Option<Arc<Leases>>,
    /// Last-used times waiting for their batched write.
    last_used: Arc<LastUsed>,
}

impl KeyService {
    /// Starts the background writers (audit, last-used times every
    /// `last_used_resolution`): call inside the runtime.
    pub fn new(
        store: Store,
        keyring: Keyring,
        caches: Arc<Caches>,
        last_used_resolution: StdDuration,
    ) -> Self {
        Self {
            audit: audit::AuditQueue::start(store.clone()),
            last_used: LastUsed::start(store.clone(), caches.clone(), last_used_resolution),
            limiter: Arc::default(),
            leases: store
                .is_shared()
                .then(|| Arc::new(Leases::new(store.clone()))),
            store,
            keyring,
            caches,
        }
    }

    fn new_secret(&self, service_name: &str, secret: &str) -> Result<NewSecret> {
        let sealed = self
            .keyring
            .seal(secret.as_bytes(), service_name.as_bytes())?;
        Ok(NewSecret {
            digest: digest::sha256(secret.as_bytes()).to_vec(),
            sealed: sealed.bytes,
            data_key_id: Some(sealed.data_key_id),
            key_prefix: api_key::display_prefix(secret),
        })
    }

    /// The secret of `found`, opened.
    async fn reveal(&self, found: &KeyWithSecret) -> Result<String> {
        let plain = self
            .keyring
            .open(&found.secret.sealed, found.key.service_name.as_bytes())
            .await?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| Error::Internal("a sealed secret is not UTF-8".into()))
    }

    /// The key without its secret.
    fn view(&self, found: &KeyWithSecret) -> Result<ApiKeyView> {
        Ok(ApiKeyView {
            service_name: found.key.service_name.clone(),
            api_key: String::new(),
            key_prefix: found.secret.key_prefix.clone(),
            description: found.key.description.clone(),
            created_at: found.key.created_at,
            updated_at: found.key.updated_at,
            expires_at: found.key.expires_at,
            ..policy_view(&found.key)
        })
    }

    pub async fn create(&self, caller: &Caller, req: CreateKey) -> Result<ApiKeyView> {
        require_admin(caller)?;
        validate::service_name(&req.service_name)?;
        validate::description(&req.description)?;
        validate::ttl_seconds(req.ttl_seconds)?;
        let scopes = scopes::granted("scopes", req.scopes)?;
        fields::metadata(&req.metadata)?;
        fields::rate_limit(req.rate_limit)?;
        fields::remaining(req.remaining)?;
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
            policy: StoredPolicy {
                scopes,
                metadata: req.metadata,
                enabled: true,
                rate_limit: req.rate_limit.map(|l| (l.requests, l.window_seconds)),
                remaining: req.remaining,
            },
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
                let mut view = self.view(&created)?;
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
            .current_key(service_name, || async {
                Ok::<_, Error>(self.store.current_key(service_name).await?.map(Arc::new))
            })
            .await?
            .ok_or_else(|| not_found(service_name))?;
        let mut view = self.view(&found)?;
        view.api_key = self.reveal(&found).await?;
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
        self.search(caller, "", page_size, page_token).await
    }

    /// `list`, of the keys whose service name starts with `prefix` (the console's
    /// search box); an empty prefix lists all.
    pub async fn search(
        &self,
        caller: &Caller,
        prefix: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<KeyPage> {
        require_admin(caller)?;
        if !prefix.is_empty() {
            validate::service_name(prefix)
                .map_err(|_| Error::invalid("prefix", "must be the start of a service name"))?;
        }
        let size = validate::page_size(page_size)?;
        let after = paging::decode(page_token, validate::service_name)?;
        let rows = self
            .store
            .list_keys(after.as_deref(), prefix, size + 1)
            .await?;
        let (rows, next_page_token) = paging::page(rows, size, |r| &r.key.service_name);
        let keys = rows
            .iter()
            .map(|row| self.view(row))
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyPage {
            keys,
            next_page_token,
        })
    }

    /// Changes the fields the mask names; every field is checked before anything is
    /// written. The answer carries no secret.
    pub async fn update(&self, caller: &Caller, req: UpdateKey) -> Result<ApiKeyView> {
        require_admin(caller)?;
        validate::service_name(&req.service_name)?;
        let now = Utc::now();
        let mut update = KeyUpdate::default();
        for path in fields::mask(&req.paths)? {
            match path {
                MaskPath::Description => {
                    validate::description(&req.description)?;
                    update.description = Some(req.description.clone());
                }
                MaskPath::Scopes => {
                    update.scopes = Some(scopes::granted("scopes", req.scopes.clone())?);
                }
                MaskPath::Metadata => {
                    fields::metadata(&req.metadata)?;
                    update.metadata = Some(req.metadata.clone());
                }
                MaskPath::Enabled => update.enabled = Some(req.enabled),
                MaskPath::RateLimit => {
                    fields::rate_limit(req.rate_limit)?;
                    update.rate_limit =
                        Some(req.rate_limit.map(|l| (l.requests, l.window_seconds)));
                }
                MaskPath::Remaining => {
                    fields::remaining(req.remaining)?;
                    update.remaining = Some(req.remaining);
                }
                MaskPath::TtlSeconds => {
                    validate::ttl_seconds(req.ttl_seconds)?;
                    let expires_at = match req.ttl_seconds {
                        0 => None,
                        ttl => Some(now + seconds(ttl)?),
                    };
                    update.ttl = Some((req.ttl_seconds, expires_at));
                }
            }
        }
        let record = audit::event(
            &caller.subject,
            action::KEY_UPDATE,
            &req.service_name,
            outcome::SUCCESS,
        );
        let updated = self
            .store
            .update_key(&req.service_name, update, now, record)
            .await?
            .ok_or_else(|| not_found(&req.service_name))?;
        self.caches.apply(&Change::Key(req.service_name.clone()));
        tracing::info!(service_name = %req.service_name, paths = ?req.paths, "key updated");
        self.view(&updated)
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
        let mut view = self.view(&rotated)?;
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
}

fn not_found(service_name: &str) -> Error {
    Error::NotFound(format!("no key for service_name '{service_name}'"))
}

/// The policy fields of a stored key as the transport shows them.
fn policy_view(key: &crate::store::entities::api_key::Model) -> ApiKeyView {
    let policy = StoredPolicy::of(key);
    ApiKeyView {
        service_name: String::new(),
        api_key: String::new(),
        key_prefix: String::new(),
        description: String::new(),
        created_at: key.created_at,
        updated_at: key.updated_at,
        expires_at: None,
        scopes: policy.scopes,
        metadata: policy.metadata,
        enabled: policy.enabled,
        rate_limit: policy
            .rate_limit
            .map(|(requests, window_seconds)| RateLimit {
                requests,
                window_seconds,
            }),
        remaining: policy.remaining,
        last_used_at: key.last_used_at,
    }
}
