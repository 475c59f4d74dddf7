//! What a key says its holder may do and how much: scopes, metadata, the enabled
//! flag, a rate limit and credits. Pure rules here; `keys` applies them to a call.

use std::{collections::BTreeMap, sync::Arc};

pub mod fields;
pub mod lease;
pub mod rate;
pub mod scopes;
pub mod usage;

/// At most `requests` VALID verifications in any span of `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: i64,
    pub window_seconds: i64,
}

/// The policy of a key as the verify hot path needs it (cached with the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Sorted, without duplicates.
    pub scopes: Arc<[String]>,
    pub metadata: Arc<BTreeMap<String, String>>,
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
    /// Whether the key has credits (their count lives in the database only).
    pub has_credits: bool,
}

/// Why a verification failed, in the order the checks are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCode {
    Valid,
    NotFound,
    Expired,
    Disabled,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
}

/// What VerifyKey asks besides the secret.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub required_scopes: Vec<String>,
    /// Unset: 1.
    pub cost: Option<i64>,
}

impl VerifyOptions {
    pub fn cost(&self) -> i64 {
        self.cost.unwrap_or(1)
    }
}
