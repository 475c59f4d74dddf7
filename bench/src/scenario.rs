//! The scenarios: one kind of call each, with the data it needs prepared beforehand.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
    check_response::HttpResponse,
};
use kms::proto::kms::v1::{
    CreateKeyRequest, GetKeyRequest, LoginRequest, RotateKeyRequest, ValidateTokenRequest,
    VerifyKeyRequest, auth_client::AuthClient, keys_client::KeysClient,
};
use prost::Message;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::driver::{CallFn, CallFuture, label_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// The bare tonic server's no-op call (`bare.rs`): the denominator of every ratio.
    Bare,
    /// The same, carrying the `authorization` header the KMS's API calls carry.
    BareAuth,
    /// The same, with a request as large as `check`'s.
    BareCheck,
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
    /// Envoy ext_authz `Check` of an HTTP request carrying a stored API key.
    Check,
}

impl Scenario {
    pub const ALL: [Scenario; 13] = [
        Scenario::Bare,
        Scenario::BareAuth,
        Scenario::BareCheck,
        Scenario::Health,
        Scenario::Validate,
        Scenario::Verify,
        Scenario::VerifyScoped,
        Scenario::VerifyInvalid,
        Scenario::Get,
        Scenario::Create,
        Scenario::Rotate,
        Scenario::Login,
        Scenario::Check,
    ];

    /// The baselines, measured on the bare server.
    pub const BARE: [Scenario; 3] = [Scenario::Bare, Scenario::BareAuth, Scenario::BareCheck];

    /// Served by the bare server rather than the KMS.
    pub fn is_bare(self) -> bool {
        Self::BARE.contains(&self)
    }

    /// The bare call this scenario is compared with: one of the same shape (a call
    /// carrying the access token against the bare call carrying it, ext_authz against a
    /// message of its size).
    pub fn baseline(self) -> Scenario {
        match self {
            Scenario::Bare | Scenario::Health | Scenario::Validate | Scenario::Login => {
                Scenario::Bare
            }
            Scenario::BareAuth
            | Scenario::Verify
            | Scenario::VerifyScoped
            | Scenario::VerifyInvalid
            | Scenario::Get
            | Scenario::Create
            | Scenario::Rotate => Scenario::BareAuth,
            Scenario::BareCheck | Scenario::Check => Scenario::BareCheck,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bare => "bare",
            Scenario::BareAuth => "bare+auth",
            Scenario::BareCheck => "bare+check-size",
            Scenario::Health => "health",
            Scenario::Validate => "validate",
            Scenario::Verify => "verify",
            Scenario::VerifyScoped => "verify-scoped",
            Scenario::VerifyInvalid => "verify-invalid",
            Scenario::Get => "get",
            Scenario::Create => "create",
            Scenario::Rotate => "rotate",
            Scenario::Login => "login",
            Scenario::Check => "check",
        }
    }

    /// What one call is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Bare => "a bare tonic server's no-op unary call (no layers)",
            Scenario::BareAuth => {
                "the bare call carrying the same `authorization: Bearer` header as the API calls"
            }
            Scenario::BareCheck => "the bare call with a request as large as `check`'s",
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
            Scenario::Check => {
                "Envoy ext_authz Authorization/Check of a request with a stored key in x-api-key"
            }
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

/// An HTTP request as Envoy's ext_authz filter describes it (`headers` map, lower-case
/// names), carrying `api_key` in `x-api-key`.
pub fn check_request(api_key: &str) -> CheckRequest {
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/v1/orders/12345?expand=items"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("user-agent", "kms-bench/1.0"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "5f0c6a8e-8d1b-4f7a-9a52-3c2b1e0d9f47"),
        ("x-api-key", api_key),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "14298012716532468811".into(),
                    method: "GET".into(),
                    path: "/v1/orders/12345?expand=items".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A health request as large, encoded, as `target` bytes (a byte less where the
/// length's varint grows; 0 bytes when `target` is too small).
fn padded_health_request(target: usize) -> HealthCheckRequest {
    let mut request = HealthCheckRequest {
        service: String::new(),
    };
    let mut n = target;
    while n > 0 {
        request.service = "x".repeat(n);
        if request.encoded_len() <= target {
            break;
        }
        n -= 1;
    }
    if request.encoded_len() > target {
        request.service.clear();
    }
    request
}

fn health_call(ch: Channel, request: tonic::Request<HealthCheckRequest>) -> CallFuture {
    Box::pin(async move {
        let r = HealthClient::new(ch).check(request).await;
        label_of(r, |a| a.status == ServingStatus::Serving as i32)
    })
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
        Scenario::Health | Scenario::Bare => Arc::new(|ch, _, _| {
            health_call(
                ch,
                tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                }),
            )
        }),
        Scenario::BareAuth => Arc::new(move |ch, _, _| {
            let request = authed(
                HealthCheckRequest {
                    service: String::new(),
                },
                &fx.admin_auth,
            );
            health_call(ch, request)
        }),
        Scenario::BareCheck => {
            need(!fx.valid_keys.is_empty(), "stored keys")?;
            let size = fx
                .valid_keys
                .first()
                .map_or(0, |k| check_request(&k.secret).encoded_len());
            let padded = padded_health_request(size);
            Arc::new(move |ch, _, _| health_call(ch, tonic::Request::new(padded.clone())))
        }
        Scenario::Check => {
            need(!fx.valid_keys.is_empty(), "stored keys")?;
            Arc::new(move |ch, worker, seq| {
                let key = pick(&fx.valid_keys, worker, seq, concurrency)
                    .map(|k| k.secret.as_str())
                    .unwrap_or_default();
                let request = check_request(key);
                Box::pin(async move {
                    let r = AuthorizationClient::new(ch).check(request).await;
                    // Allowed: status OK with an OK HTTP response for the upstream.
                    label_of(r, |a| {
                        a.status.as_ref().is_some_and(|s| s.code == 0)
                            && matches!(a.http_response, Some(HttpResponse::OkResponse(_)))
                    })
                })
            })
        }
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
    fn every_scenario_has_a_bare_baseline_of_its_shape() {
        for s in Scenario::ALL {
            assert!(s.baseline().is_bare(), "{s:?}");
        }
        assert_eq!(Scenario::Verify.baseline(), Scenario::BareAuth);
        assert_eq!(Scenario::Check.baseline(), Scenario::BareCheck);
        assert_eq!(Scenario::Health.baseline(), Scenario::Bare);
    }

    #[test]
    fn the_padded_request_is_as_large_as_asked() {
        let key = "k".repeat(60);
        let target = check_request(&key).encoded_len();
        assert!(target > 200, "{target}");
        // A length's varint grows by a byte at 128, so one size there cannot be hit.
        for size in [target, 127, 128, 129, 130, 300] {
            let got = padded_health_request(size).encoded_len();
            assert!(got <= size && size - got <= 1, "{size}: {got}");
        }
        assert_eq!(padded_health_request(0).encoded_len(), 0);
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
