//! The scenarios: one kind of call each, with the data it needs prepared beforehand.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use kms::proto::kms::v1::{
    CreateKeyRequest, GetKeyRequest, LoginRequest, RotateKeyRequest, ValidateTokenRequest,
    VerifyKeyRequest, auth_client::AuthClient, keys_client::KeysClient,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::driver::{CallFn, label_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    Health,
    Validate,
    Verify,
    /// VerifyKey with `required_scopes`, to measure what the scope check costs.
    VerifyScoped,
    VerifyInvalid,
    Get,
    Create,
    Rotate,
    Login,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Health,
        Scenario::Validate,
        Scenario::Verify,
        Scenario::VerifyScoped,
        Scenario::VerifyInvalid,
        Scenario::Get,
        Scenario::Create,
        Scenario::Rotate,
        Scenario::Login,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Validate => "validate",
            Scenario::Verify => "verify",
            Scenario::VerifyScoped => "verify-scoped",
            Scenario::VerifyInvalid => "verify-invalid",
            Scenario::Get => "get",
            Scenario::Create => "create",
            Scenario::Rotate => "rotate",
            Scenario::Login => "login",
        }
    }

    /// What one call is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Health => "grpc.health.v1 Check",
            Scenario::Validate => "Auth/ValidateToken of a valid access token",
            Scenario::Verify => "Keys/VerifyKey of a stored key",
            Scenario::VerifyScoped => {
                "Keys/VerifyKey of a stored key with required_scopes (bench:verify read)"
            }
            Scenario::VerifyInvalid => "Keys/VerifyKey of a well-formed key not stored",
            Scenario::Get => "Keys/GetKey (opens the sealed secret, audits the read)",
            Scenario::Create => "Keys/CreateKey, a new service name each call",
            Scenario::Rotate => "Keys/RotateKey, grace 0, over a pool of keys",
            Scenario::Login => "Auth/Login with the right password (argon2id)",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario '{s}' (one of: {})", names.join(", "))
            })
    }
}

/// The data the scenarios call with, prepared once per server.
pub struct Fixture {
    /// `Bearer <admin access token>`.
    pub admin_auth: MetadataValue<Ascii>,
    pub admin_token: String,
    /// Stored keys with their secrets (verify), whose names `get` reads.
    pub valid_keys: Vec<crate::seed::KeptKey>,
    /// Well-formed, checksum-valid keys that are not stored.
    pub invalid_keys: Vec<String>,
    /// Keys that `rotate` rotates (never among `valid_keys`).
    pub rotate_names: Vec<String>,
    /// Users `login` logs in as, all with `login_password`.
    pub login_users: Vec<String>,
    pub login_password: String,
    /// Makes `create`'s service names unique across runs on one database.
    pub run_id: String,
    /// Numbers `create`'s service names, across warm-up and measurement.
    pub created: AtomicU64,
}

impl Fixture {
    pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, String> {
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "the access token is not a valid header value".to_owned())
    }
}

/// Picks entry `worker + seq * concurrency` of a pool: each task walks its own stride,
/// so tasks touch different entries at the same time when the pool allows it.
fn pick<T>(pool: &[T], worker: usize, seq: u64, concurrency: usize) -> Option<&T> {
    if pool.is_empty() {
        return None;
    }
    let len = pool.len() as u64;
    let i = (worker as u64).wrapping_add(seq.wrapping_mul(concurrency as u64)) % len;
    pool.get(usize::try_from(i).ok()?)
}

fn authed<T>(message: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// The call function of `scenario` at `concurrency` in flight.
pub fn call_fn(scenario: Scenario, fx: Arc<Fixture>, concurrency: usize) -> Result<CallFn, String> {
    let need = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("scenario {}: no {what} prepared", scenario.name()))
        }
    };
    Ok(match scenario {
        Scenario::Health => Arc::new(|ch, _, _| {
            Box::pin(async move {
                let r = HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                label_of(r, |a| a.status == ServingStatus::Serving as i32)
            })
        }),
        Scenario::Validate => Arc::new(move |ch, _, _| {
            let token = fx.admin_token.clone();
            Box::pin(async move {
                let r = AuthClient::new(ch)
                    .validate_token(ValidateTokenRequest { token })
                    .await;
                label_of(r, |a| a.valid)
            })
        }),
        Scenario::Verify | Scenario::VerifyScoped | Scenario::VerifyInvalid => {
            let valid = scenario != Scenario::VerifyInvalid;
            // The bench's keys hold `bench:*` and `read` (seed and session).
            let required_scopes: Vec<String> = if scenario == Scenario::VerifyScoped {
                vec!["bench:verify".into(), "read".into()]
            } else {
                Vec::new()
            };
            if valid {
                need(!fx.valid_keys.is_empty(), "stored keys")?;
            } else {
                need(!fx.invalid_keys.is_empty(), "unstored keys")?;
            }
            Arc::new(move |ch, worker, seq| {
                let api_key = if valid {
                    pick(&fx.valid_keys, worker, seq, concurrency).map(|k| k.secret.clone())
                } else {
                    pick(&fx.invalid_keys, worker, seq, concurrency).cloned()
                }
                .unwrap_or_default();
                let request = authed(
                    VerifyKeyRequest {
                        api_key,
                        required_scopes: required_scopes.clone(),
                        cost: None,
                    },
                    &fx.admin_auth,
                );
                Box::pin(async move {
                    let r = KeysClient::new(ch).verify_key(request).await;
                    label_of(r, |a| a.valid == valid)
                })
            })
        }
        Scenario::Get => {
            need(!fx.valid_keys.is_empty(), "stored keys")?;
            Arc::new(move |ch, worker, seq| {
                let (service_name, secret) = pick(&fx.valid_keys, worker, seq, concurrency)
                    .map(|k| (k.service_name.clone(), k.secret.clone()))
                    .unwrap_or_default();
                let request = authed(GetKeyRequest { service_name }, &fx.admin_auth);
                Box::pin(async move {
                    let r = KeysClient::new(ch).get_key(request).await;
                    label_of(r, |a| a.api_key == secret)
                })
            })
        }
        Scenario::Create => Arc::new(move |ch, _, _| {
            let n = fx.created.fetch_add(1, Ordering::Relaxed);
            let request = authed(
                CreateKeyRequest {
                    service_name: format!("c{}-{n}", fx.run_id),
                    api_key: None,
                    description: "kms-bench create".into(),
                    ttl_seconds: 0,
                    ..Default::default()
                },
                &fx.admin_auth,
            );
            Box::pin(async move {
                let r = KeysClient::new(ch).create_key(request).await;
                label_of(r, |a| !a.api_key.is_empty())
            })
        }),
        Scenario::Rotate => {
            need(!fx.rotate_names.is_empty(), "keys to rotate")?;
            Arc::new(move |ch, worker, seq| {
                let service_name = pick(&fx.rotate_names, worker, seq, concurrency)
                    .cloned()
                    .unwrap_or_default();
                let request = authed(
                    RotateKeyRequest {
                        service_name,
                        grace_period_seconds: 0,
                    },
                    &fx.admin_auth,
                );
                Box::pin(async move {
                    let r = KeysClient::new(ch).rotate_key(request).await;
                    label_of(r, |a| !a.api_key.is_empty())
                })
            })
        }
        Scenario::Login => {
            need(!fx.login_users.is_empty(), "users")?;
            Arc::new(move |ch, worker, seq| {
                let username = pick(&fx.login_users, worker, seq, concurrency)
                    .cloned()
                    .unwrap_or_default();
                let password = fx.login_password.clone();
                Box::pin(async move {
                    let r = AuthClient::new(ch)
                        .login(LoginRequest { username, password })
                        .await;
                    label_of(r, |a| !a.access_token.is_empty())
                })
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
        }
        assert!("nope".parse::<Scenario>().is_err());
    }

    #[test]
    fn strides_do_not_collide_when_the_pool_allows() {
        let pool: Vec<usize> = (0..256).collect();
        let mut seen = std::collections::HashSet::new();
        for worker in 0..64 {
            assert!(seen.insert(*pick(&pool, worker, 3, 64).unwrap()));
        }
    }
}
