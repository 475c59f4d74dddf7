//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (or Istio's) ext_authz filter
//! asks whether an HTTP request may pass, and the KMS answers from the request's
//! `authorization: Bearer <access token>` or `x-api-key: <API key>` header.
//!
//! A bad credential is an answer, not an error: Envoy gets an OK gRPC call carrying a
//! denial (HTTP 401 with `www-authenticate`). Only a check that could not be made (the
//! database is down) is a gRPC error, so that Envoy's `failure_mode_allow` decides.
//!
//! Routes may ask for more in their `context_extensions`: `kms_required_scopes` (API
//! keys must hold every one, space-separated) and `kms_required_roles` (access tokens
//! must carry every role). A route naming only one kind refuses the other with 403.
//! A key without a scope is 403; a key rate limited or out of credits is 429, with
//! `retry-after` when rate limited, and `ratelimit-*` headers for keys with a limit.
//!
//! The service is served by `ExtAuthzServer`, not envoy-types' generated
//! `AuthorizationServer`: that one hard-codes tonic-prost's codec, which answers bytes
//! that do not decode (or a header value that is not UTF-8) with INTERNAL. Ours uses
//! the kms.v1 codec, so they are INVALID_ARGUMENT like on every other service.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
    pb::{CheckResponse, HeaderAppendAction, HttpStatusCode},
};
use tonic::{
    Request, Response, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    codegen::{BoxFuture, StdError},
    server::{NamedService, UnaryService},
};
use tonic_prost::ProstEncoder;

use super::{
    ext_authz_request::{CheckView, Header, HttpHeaders},
    ext_authz_route::{Route, rate_limit_headers, seconds_until},
};
use crate::{
    bearer::{self, BearerError, bearer_token},
    domain::{
        Caller, Error,
        keys::{KeyService, RateLimitStatus},
        policy::{VerifyCode, VerifyOptions},
        sessions::Authenticator,
    },
    telemetry::Metrics,
};

/// Headers the upstream may trust because the sidecar sets or strips them on every
/// allowed request; a client's own copies never get through.
pub const SUBJECT_HEADER: &str = "x-kms-subject";
pub const ROLES_HEADER: &str = "x-kms-roles";
pub const SERVICE_HEADER: &str = "x-kms-service";
/// The allowed key's scopes, space-separated.
pub const SCOPES_HEADER: &str = "x-kms-scopes";

const API_KEY_HEADER: &str = "x-api-key";
const WWW_AUTHENTICATE: &str = "www-authenticate";
const OVERWRITE: Option<HeaderAppendAction> = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);

/// Who an allowed request is from.
#[derive(Debug, PartialEq, Eq)]
enum Principal {
    User(Arc<Caller>),
    Service {
        service_name: String,
        scopes: Vec<String>,
        rate_limit: Option<RateLimitStatus>,
    },
}

/// Why a request is refused. The reason goes into the rpc status, which Envoy may log;
/// it never contains the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denial {
    /// Neither header, or not an HTTP request at all.
    Missing,
    /// A credential header sent twice, or not UTF-8: refused, never guessed at.
    Ambiguous,
    /// `authorization` with another scheme than Bearer, or no token.
    Malformed,
    InvalidToken,
    InvalidKey,
    /// The route takes only the other kind of credential (403).
    WrongKind,
    /// A key without a scope the route requires (403).
    MissingScope,
    /// A token without a role the route requires (403).
    MissingRole,
    /// 429, with `retry-after`.
    RateLimited,
    /// 429: the key's credits are used up.
    UsageExceeded,
}

impl Denial {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => {
                "missing credentials: send 'authorization: Bearer <token>' or 'x-api-key'"
            }
            Self::Ambiguous => "a credential header is repeated or not UTF-8",
            Self::Malformed => bearer::NOT_BEARER,
            Self::InvalidToken => bearer::INVALID_TOKEN,
            Self::InvalidKey => "invalid, expired or revoked API key",
            Self::WrongKind => "this route does not take this kind of credential",
            Self::MissingScope => "the API key lacks a scope this route requires",
            Self::MissingRole => "the access token lacks a role this route requires",
            Self::RateLimited => "the API key's rate limit is used up",
            Self::UsageExceeded => "the API key's credits are used up",
        }
    }

    /// The challenge, with RFC 6750 section 3.1 error codes where a bearer token was
    /// sent; none when no credential was (as that section asks).
    fn challenge(self) -> &'static str {
        match self {
            Self::Malformed => r#"Bearer realm="kms", error="invalid_request""#,
            Self::InvalidToken => r#"Bearer realm="kms", error="invalid_token""#,
            Self::Missing
            | Self::Ambiguous
            | Self::InvalidKey
            | Self::WrongKind
            | Self::MissingScope
            | Self::MissingRole
            | Self::RateLimited
            | Self::UsageExceeded => r#"Bearer realm="kms""#,
        }
    }

    fn http_status(self) -> (HttpStatusCode, Status) {
        let reason = self.reason();
        match self {
            Self::Missing
            | Self::Ambiguous
            | Self::Malformed
            | Self::InvalidToken
            | Self::InvalidKey => (
                HttpStatusCode::Unauthorized,
                Status::unauthenticated(reason),
            ),
            Self::WrongKind | Self::MissingScope | Self::MissingRole => {
                (HttpStatusCode::Forbidden, Status::permission_denied(reason))
            }
            Self::RateLimited | Self::UsageExceeded => (
                HttpStatusCode::TooManyRequests,
                Status::resource_exhausted(reason),
            ),
        }
    }
}

/// A refusal, with the key's rate-limit state when it has a limit.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    denial: Denial,
    rate_limit: Option<RateLimitStatus>,
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Self {
            denial,
            rate_limit: None,
        }
    }
}

/// The credential a request presents.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

/// Picks the credential to check. An `authorization` header, when sent, decides alone:
/// a bad one is refused even beside a good API key (a credential that fails must not
/// silently downgrade the request to another identity, the rule Register follows for
/// its optional token), and a good one makes an API key beside it irrelevant: the key
/// is not looked up, only stripped. So exactly one identity reaches the upstream.
fn credential(http: Option<&HttpHeaders>) -> Result<Credential<'_>, Denial> {
    let Some(http) = http else {
        return Err(Denial::Missing);
    };
    let one = |header| http.one(header).map_err(|_| Denial::Ambiguous);
    if let Some(value) = one(Header::Authorization)? {
        return bearer_token(value)
            .map(Credential::Bearer)
            .ok_or(Denial::Malformed);
    }
    match one(Header::ApiKey)? {
        Some(key) => Ok(Credential::ApiKey(key)),
        None => Err(Denial::Missing),
    }
}

/// OK, with the identity for the upstream. Each `x-kms-*` header is either set
/// (overwriting a client's copy) or removed, never left as the client sent it; and
/// `x-api-key` is always removed, so the secret stops at the sidecar. No header is in
/// both lists, so the result does not depend on the order Envoy applies them in.
fn allow(principal: &Principal) -> CheckResponse {
    let mut ok = OkHttpResponseBuilder::new();
    match principal {
        Principal::User(caller) => {
            ok.add_header(SUBJECT_HEADER, caller.subject.as_str(), OVERWRITE, false);
            // Roles are [a-z0-9_-], so a comma cannot appear inside one.
            let roles = caller.roles.iter().collect::<Vec<_>>().join(",");
            if roles.is_empty() {
                ok.remove_header(ROLES_HEADER);
            } else {
                ok.add_header(ROLES_HEADER, roles, OVERWRITE, false);
            }
            ok.remove_header(SERVICE_HEADER)
                .remove_header(SCOPES_HEADER);
        }
        Principal::Service {
            service_name,
            scopes,
            rate_limit,
        } => {
            ok.add_header(SERVICE_HEADER, service_name.as_str(), OVERWRITE, false);
            ok.remove_header(SUBJECT_HEADER).remove_header(ROLES_HEADER);
            if scopes.is_empty() {
                ok.remove_header(SCOPES_HEADER);
            } else {
                ok.add_header(SCOPES_HEADER, scopes.join(" "), OVERWRITE, false);
            }
            for (name, value) in rate_limit.iter().flat_map(rate_limit_headers) {
                ok.add_response_header(name, value, OVERWRITE, false);
            }
        }
    }
    ok.remove_header(API_KEY_HEADER);
    let mut response = CheckResponse::with_status(Status::ok(""));
    response.set_http_response(ok);
    response
}

/// Denied: HTTP 401 with a challenge for the client, UNAUTHENTICATED for Envoy.
#[cfg(test)]
fn deny(denial: Denial) -> CheckResponse {
    refuse(&denial.into())
}

/// Denied: 401 with a challenge, 403, or 429 with `retry-after` when rate limited;
/// `ratelimit-*` headers whenever the key has a limit.
fn refuse(refusal: &Refusal) -> CheckResponse {
    let (http_status, status) = refusal.denial.http_status();
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(http_status);
    if http_status == HttpStatusCode::Unauthorized {
        denied.add_header(
            WWW_AUTHENTICATE,
            refusal.denial.challenge(),
            OVERWRITE,
            false,
        );
    }
    if let Some(limit) = &refusal.rate_limit {
        if refusal.denial == Denial::RateLimited {
            let retry = seconds_until(limit.reset_at).max(1);
            denied.add_header("retry-after", retry.to_string(), OVERWRITE, false);
        }
        for (name, value) in rate_limit_headers(limit) {
            denied.add_header(name, value, OVERWRITE, false);
        }
    }
    let mut response = CheckResponse::with_status(status);
    response.set_http_response(denied);
    response
}

pub struct ExtAuthz {
    authenticator: Arc<Authenticator>,
    keys: KeyService,
    metrics: Metrics,
}

impl ExtAuthz {
    pub fn new(authenticator: Arc<Authenticator>, keys: KeyService, metrics: Metrics) -> Self {
        Self {
            authenticator,
            keys,
            metrics,
        }
    }

    /// `Err` only when the check could not be made; every bad credential is a refusal.
    async fn decide(
        &self,
        http: Option<&HttpHeaders>,
        route: &Route,
    ) -> Result<Result<Principal, Refusal>, Status> {
        let credential = match credential(http) {
            Ok(credential) => credential,
            Err(denial) => return Ok(Err(denial.into())),
        };
        Ok(match credential {
            // Refused before any lookup: a key is not spent on a route that takes none.
            Credential::Bearer(_) if !route.takes_tokens() => Err(Denial::WrongKind.into()),
            Credential::ApiKey(_) if !route.takes_keys() => Err(Denial::WrongKind.into()),
            Credential::Bearer(token) => match bearer::verify(&self.authenticator, token).await {
                Ok(caller) => {
                    let required = route.roles.as_deref().unwrap_or_default();
                    if required.iter().all(|role| caller.roles.contains(role)) {
                        Ok(Principal::User(caller))
                    } else {
                        Err(Denial::MissingRole.into())
                    }
                }
                Err(BearerError::Rejected(_)) => Err(Denial::InvalidToken.into()),
                Err(BearerError::Unavailable) => return Err(Error::Unavailable.into()),
            },
            Credential::ApiKey(key) => {
                let options = VerifyOptions {
                    required_scopes: route.scopes.clone().unwrap_or_default(),
                    cost: None,
                };
                let found = self.keys.check_presented_key(key, &options).await?;
                self.metrics.verification(found.valid());
                let denial = match found.code {
                    VerifyCode::Valid => None,
                    VerifyCode::NotFound | VerifyCode::Expired | VerifyCode::Disabled => {
                        Some(Denial::InvalidKey)
                    }
                    VerifyCode::InsufficientScope => Some(Denial::MissingScope),
                    VerifyCode::RateLimited => Some(Denial::RateLimited),
                    VerifyCode::UsageExceeded => Some(Denial::UsageExceeded),
                };
                match (denial, found.key) {
                    (None, Some(key)) => Ok(Principal::Service {
                        service_name: key.service_name,
                        scopes: key.scopes.to_vec(),
                        rate_limit: found.rate_limit,
                    }),
                    (denial, _) => Err(Refusal {
                        denial: denial.unwrap_or(Denial::InvalidKey),
                        // Limit headers go with the key's own refusals, not with 401s.
                        rate_limit: found.rate_limit.filter(|_| {
                            matches!(denial, Some(Denial::RateLimited | Denial::UsageExceeded))
                        }),
                    }),
                }
            }
        })
    }

    async fn check(&self, request: Request<CheckView>) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let route = Route::of(
            check.required_scopes.as_deref(),
            check.required_roles.as_deref(),
        );
        let response = match self.decide(check.http.as_ref(), &route).await? {
            Ok(principal) => {
                tracing::debug!(?principal, "ext_authz: allowed");
                allow(&principal)
            }
            Err(refusal) => {
                tracing::debug!(reason = refusal.denial.reason(), "ext_authz: denied");
                refuse(&refusal)
            }
        };
        Ok(Response::new(response))
    }
}

/// The path of the one method; any other path of the service is UNIMPLEMENTED.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// `envoy.service.auth.v3.Authorization` as a tower service, written the way generated
/// server code is, with the codec of the kms.v1 services (see the module comment).
#[derive(Clone)]
pub struct ExtAuthzServer {
    inner: Arc<ExtAuthz>,
    max_decoding_message_size: Option<usize>,
}

impl ExtAuthzServer {
    pub fn new(inner: ExtAuthz) -> Self {
        Self {
            inner: Arc::new(inner),
            max_decoding_message_size: None,
        }
    }

    /// Limits the size of a decoded CheckRequest (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }
}

impl NamedService for ExtAuthzServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

struct CheckMethod(Arc<ExtAuthz>);

impl UnaryService<CheckView> for CheckMethod {
    type Response = CheckResponse;
    type Future = BoxFuture<Response<CheckResponse>, Status>;

    fn call(&mut self, request: Request<CheckView>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.check(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for ExtAuthzServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = CheckMethod(self.inner.clone());
        let max_decoding = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(CheckCodec)
                .apply_max_message_size_config(max_decoding, None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// Answers are prost's `CheckResponse`; requests are read as a [`CheckView`].
struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = CheckResponse;
    type Decode = CheckView;
    type Encoder = ProstEncoder<CheckResponse>;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder
    }
}

struct CheckDecoder;

impl Decoder for CheckDecoder {
    type Item = CheckView;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<CheckView>, Status> {
        use bytes::Buf;
        let len = buf.remaining();
        // The message is one contiguous buffer in tonic; copy only if it ever is not.
        let view = if buf.chunk().len() == len {
            CheckView::decode(buf.chunk())
        } else {
            CheckView::decode(&buf.copy_to_bytes(len))
        };
        if buf.remaining() == len {
            buf.advance(len);
        }
        view.map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::ext_authz::v3::pb::HttpResponse;

    use super::*;
    use crate::{
        domain::Roles,
        grpc::ext_authz_request::testing::{http, raw},
    };

    #[test]
    fn the_authorization_header_decides_when_present() {
        let both = http(&[("authorization", "Bearer t"), ("x-api-key", "k")]);
        assert_eq!(credential(Some(&both)), Ok(Credential::Bearer("t")));
        let basic = http(&[("authorization", "Basic dTpw"), ("x-api-key", "k")]);
        assert_eq!(credential(Some(&basic)), Err(Denial::Malformed));
        let key = http(&[("x-api-key", "k")]);
        assert_eq!(credential(Some(&key)), Ok(Credential::ApiKey("k")));
        assert_eq!(credential(Some(&http(&[]))), Err(Denial::Missing));
        assert_eq!(credential(None), Err(Denial::Missing));
        // An ambiguous key is refused even though a token would have decided.
        let twice = raw(&[("x-api-key", b"a"), ("x-api-key", b"b")]);
        assert_eq!(credential(Some(&twice)), Err(Denial::Ambiguous));
    }

    fn ok_parts(response: &CheckResponse) -> (Vec<(String, String, i32)>, Vec<String>) {
        assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => (
                ok.headers
                    .iter()
                    .filter_map(|h| h.header.as_ref().map(|v| (v, h.append_action)))
                    .map(|(v, action)| (v.key.clone(), v.value.clone(), action))
                    .collect(),
                ok.headers_to_remove.clone(),
            ),
            other => panic!("expected an OK response, got {other:?}"),
        }
    }

    #[test]
    fn allow_sets_or_strips_every_identity_header() {
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let user = Principal::User(Arc::new(Caller {
            subject: "alice".into(),
            roles: Roles::from_iter(["user".to_owned(), "admin".to_owned()]),
            session_id: String::new(),
        }));
        let (set, removed) = ok_parts(&allow(&user));
        assert_eq!(
            set,
            vec![
                ("x-kms-subject".into(), "alice".into(), overwrite),
                ("x-kms-roles".into(), "admin,user".into(), overwrite),
            ]
        );
        assert_eq!(removed, vec!["x-kms-service", "x-kms-scopes", "x-api-key"]);

        let no_roles = Principal::User(Arc::new(Caller {
            subject: "bob".into(),
            roles: Roles::default(),
            session_id: String::new(),
        }));
        let (set, removed) = ok_parts(&allow(&no_roles));
        assert_eq!(set.len(), 1);
        assert_eq!(
            removed,
            vec!["x-kms-roles", "x-kms-service", "x-kms-scopes", "x-api-key"]
        );

        let service = Principal::Service {
            service_name: "billing".into(),
            scopes: Vec::new(),
            rate_limit: None,
        };
        let (set, removed) = ok_parts(&allow(&service));
        assert_eq!(
            set,
            vec![("x-kms-service".into(), "billing".into(), overwrite)]
        );
        assert_eq!(
            removed,
            vec!["x-kms-subject", "x-kms-roles", "x-kms-scopes", "x-api-key"]
        );

        let scoped = Principal::Service {
            service_name: "billing".into(),
            scopes: vec!["a:*".into(), "b".into()],
            rate_limit: None,
        };
        let (set, _) = ok_parts(&allow(&scoped));
        assert!(set.contains(&("x-kms-scopes".into(), "a:* b".into(), overwrite)));
    }

    #[test]
    fn deny_is_a_401_with_a_challenge() {
        for denial in [
            Denial::Missing,
            Denial::Ambiguous,
            Denial::Malformed,
            Denial::InvalidToken,
            Denial::InvalidKey,
        ] {
            let response = deny(denial);
            let status = response.status.as_ref().map(|s| s.code);
            assert_eq!(status, Some(tonic::Code::Unauthenticated as i32));
            let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
                panic!("expected a denial: {response:?}");
            };
            assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401));
            let challenge = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "www-authenticate")
                .map(|h| h.value.as_str());
            assert!(
                challenge.is_some_and(|c| c.starts_with(r#"Bearer realm="kms""#)),
                "{challenge:?}"
            );
        }
    }
}
