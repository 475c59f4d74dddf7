//! VerifyKey: which key a secret is, then its policy, checked in the contract's order
//! (expired, disabled, scope, rate limit, credits). A failed check spends nothing.
//!
//! Keys without credits stay on the cached hot path: the policy comes from the cache,
//! the rate limit is counted in memory and last_used_at is written in batches. Keys
//! with credits spend them with one conditional update per VALID answer.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};

use super::KeyService;
use crate::{
    crypto::digest,
    domain::{
        Caller, Result, api_key,
        audit::{self, action, outcome},
        cluster::CachedKey,
        policy::{
            Policy, RateLimit, VerifyCode, VerifyOptions, fields, lease, rate::LimitState, scopes,
        },
        validate,
    },
    store::{Spend, StoredPolicy},
};

/// The key a secret matched (for every code but NOT_FOUND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub service_name: String,
    /// When the presented secret stops verifying (for a rotated-out secret, the end
    /// of its grace, not the key's expiry); `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Arc<[String]>,
    pub metadata: Arc<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub limit: i64,
    pub remaining: i64,
    /// When one more call passes.
    pub reset_at: DateTime<Utc>,
}

/// The answer to VerifyKey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub code: VerifyCode,
    /// `None` exactly for NOT_FOUND.
    pub key: Option<VerifiedKey>,
    /// Credits left after this call, whenever the key has credits.
    pub remaining: Option<i64>,
    /// Whenever the key has a rate limit.
    pub rate_limit: Option<RateLimitStatus>,
}

impl Verification {
    fn not_found() -> Self {
        Self {
            code: VerifyCode::NotFound,
            key: None,
            remaining: None,
            rate_limit: None,
        }
    }

    pub fn valid(&self) -> bool {
        self.code == VerifyCode::Valid
    }
}

fn status(state: LimitState) -> RateLimitStatus {
    RateLimitStatus {
        limit: state.limit,
        remaining: state.remaining,
        reset_at: DateTime::from_timestamp_millis(state.reset_at_ms).unwrap_or_default(),
    }
}

impl KeyService {
    /// Any authenticated caller may verify. Every kind of bad key is an answer (a
    /// code), never an error; bad options are INVALID_ARGUMENT.
    pub async fn verify(
        &self,
        caller: &Caller,
        presented: &str,
        options: &VerifyOptions,
    ) -> Result<Verification> {
        scopes::required(&options.required_scopes)?;
        fields::cost(options.cost)?;
        let verification = self.check_presented_key(presented, options).await?;
        if !verification.valid() {
            // Failures only: successes are the hot path and say nothing new. The target
            // is the key's display prefix, never the key. Anyone with a token can send
            // these as fast as valid ones: counted, never waited for (see `append`).
            // Boxed, like every branch below that may reach the database (see
            // `check_presented_key`).
            Box::pin(audit::append(
                &self.store,
                audit::event(
                    &caller.subject,
                    action::KEY_VERIFY,
                    &api_key::display_prefix(presented),
                    outcome::FAILURE,
                ),
            ))
            .await;
        }
        Ok(verification)
    }

    /// The check behind `verify`, for a transport that authenticated its peer some
    /// other way (Envoy's ext_authz: mTLS or network policy, no KMS token). `options`
    /// are taken as checked. `Err` means the check itself could not be made (the
    /// database is down), which is never an answer about the key.
    ///
    /// Every branch that may reach the database (a refusal's credits, the replicas'
    /// rate-limit leases, spending credits) is boxed where it is awaited: an `async fn`
    /// is as large as its largest await, so a query's future inline here made every
    /// call's future about 5 KiB, written and copied on every call that never queries
    /// (BENCHMARKS.md, sixth round). The box is made only where the branch is taken.
    pub async fn check_presented_key(
        &self,
        presented: &str,
        options: &VerifyOptions,
    ) -> Result<Verification> {
        let now = Utc::now();
        let Some(entry) = self.find_key(presented, now).await? else {
            return Ok(Verification::not_found());
        };
        // A rotated-out secret past its grace is no longer this key's: no oracle.
        if entry.secret_retires_at.is_some_and(|t| t <= now) {
            return Ok(Verification::not_found());
        }
        let policy = entry.policy.clone();
        let key = VerifiedKey {
            service_name: entry.service_name.to_string(),
            expires_at: entry.stops_at(),
            scopes: policy.scopes.clone(),
            metadata: policy.metadata.clone(),
        };
        let now_ms = now.timestamp_millis();
        if entry.key_expires_at.is_some_and(|t| t <= now) {
            return Box::pin(self.refused(VerifyCode::Expired, &entry, key, now_ms)).await;
        }
        if !policy.enabled {
            return Box::pin(self.refused(VerifyCode::Disabled, &entry, key, now_ms)).await;
        }
        if !scopes::all_granted(&policy.scopes, &options.required_scopes) {
            return Box::pin(self.refused(VerifyCode::InsufficientScope, &entry, key, now_ms))
                .await;
        }
        let rate_limit = match policy.rate_limit {
            None => None,
            Some(limit) => match self.take_request(entry.key_id, limit, now_ms).await? {
                Ok(state) => Some(status(state)),
                Err(state) => {
                    return Ok(Verification {
                        code: VerifyCode::RateLimited,
                        rate_limit: Some(status(state)),
                        remaining: Box::pin(self.credits_left(entry.key_id, &policy)).await?,
                        key: Some(key),
                    });
                }
            },
        };
        let give_back = || {
            if let Some(limit) = policy.rate_limit {
                self.limiter.give_back(entry.key_id);
                if let Some(leases) = &self.leases {
                    leases.give_back(entry.key_id, limit, now_ms);
                }
            }
        };
        let remaining = if policy.has_credits {
            match Box::pin(self.store.spend_credits(entry.key_id, options.cost())).await {
                Ok(Spend::Spent(left)) => Some(left),
                Ok(Spend::Unlimited) => None,
                Ok(Spend::Short(left)) => {
                    give_back();
                    return Ok(Verification {
                        code: VerifyCode::UsageExceeded,
                        rate_limit: rate_limit.map(|s| RateLimitStatus {
                            remaining: s.remaining + 1,
                            reset_at: now,
                            ..s
                        }),
                        remaining: Some(left),
                        key: Some(key),
                    });
                }
                Err(e) => {
                    give_back();
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        self.last_used
            .record(entry.key_id, &entry.service_name, now);
        Ok(Verification {
            code: VerifyCode::Valid,
            key: Some(key),
            remaining,
            rate_limit,
        })
    }

    /// One request of a key's limit: this server's exact count first, then, when
    /// replicas share the database, this replica's share of the key's limit.
    async fn take_request(
        &self,
        key_id: i64,
        limit: RateLimit,
        now_ms: i64,
    ) -> Result<std::result::Result<LimitState, LimitState>> {
        let state = match self.limiter.take(key_id, limit, now_ms) {
            Ok(state) => state,
            refused => return Ok(refused),
        };
        let Some(leases) = &self.leases else {
            return Ok(Ok(state));
        };
        match Box::pin(leases.take(key_id, limit, now_ms)).await {
            Ok(true) => Ok(Ok(state)),
            Ok(false) => {
                self.limiter.give_back(key_id);
                // The other replicas used the rest: one more may pass in the next bucket.
                let (start, width) = lease::bucket(limit, now_ms);
                Ok(Err(LimitState {
                    limit: limit.requests,
                    remaining: 0,
                    reset_at_ms: start + width,
                }))
            }
            Err(e) => {
                self.limiter.give_back(key_id);
                Err(e)
            }
        }
    }

    /// A refusal made before the rate limit was counted: the limit's state as it is.
    async fn refused(
        &self,
        code: VerifyCode,
        entry: &CachedKey,
        key: VerifiedKey,
        now_ms: i64,
    ) -> Result<Verification> {
        let policy = &entry.policy;
        Ok(Verification {
            code,
            rate_limit: policy
                .rate_limit
                .map(|l| status(self.limiter.peek(entry.key_id, l, now_ms))),
            remaining: self.credits_left(entry.key_id, policy).await?,
            key: Some(key),
        })
    }

    /// The credits a key has left, read without spending; `None`: unlimited.
    async fn credits_left(&self, key_id: i64, policy: &Policy) -> Result<Option<i64>> {
        if !policy.has_credits {
            return Ok(None);
        }
        Ok(match self.store.spend_credits(key_id, 0).await? {
            Spend::Spent(left) | Spend::Short(left) => Some(left),
            Spend::Unlimited => None,
        })
    }

    /// The live key a secret belongs to, from the cache when it can be trusted. Only
    /// entries valid now are kept; their times are checked again on every answer.
    async fn find_key(&self, presented: &str, now: DateTime<Utc>) -> Result<Option<CachedKey>> {
        if presented.is_empty() || presented.len() > validate::IMPORTED_KEY_MAX {
            return Ok(None);
        }
        // A KMS-format key with a bad checksum is a typo or a forgery: no lookup.
        if api_key::claims_kms_format(presented) && !api_key::checksum_ok(presented) {
            return Ok(None);
        }
        let presented_digest = digest::sha256(presented.as_bytes());
        let fetch = || async {
            let Some(found) = self.store.find_secret(&presented_digest).await? else {
                return Ok(None);
            };
            let matches = digest::ct_eq(&found.secret.digest, &presented_digest)
                && found.key.revoked_at.is_none();
            let policy = StoredPolicy::of(&found.key);
            Ok(matches.then(|| CachedKey {
                key_id: found.key.id,
                service_name: found.key.service_name.as_str().into(),
                policy: Arc::new(Policy {
                    scopes: policy.scopes.into(),
                    metadata: Arc::new(policy.metadata),
                    enabled: policy.enabled,
                    rate_limit: policy
                        .rate_limit
                        .map(|(requests, window_seconds)| RateLimit {
                            requests,
                            window_seconds,
                        }),
                    has_credits: policy.remaining.is_some(),
                }),
                key_expires_at: found.key.expires_at,
                secret_retires_at: found.secret.retires_at,
            }))
        };
        self.caches
            .key_by_digest(&presented_digest, fetch, |k| k.valid_at(now))
            .await
    }
}
