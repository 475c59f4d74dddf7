//! The authorization header: garbage, truncated and mutated tokens, other schemes,
//! missing spaces, two headers, bytes outside ASCII, against every method.

use std::fmt::Debug;

use kms::proto::kms::v1 as pb;
use proptest::{prelude::*, sample::select, test_runner::TestCaseError};
use tonic::{
    Code, Request, Status,
    metadata::{AsciiMetadataValue, MetadataMap},
};

use crate::{both_backends, common::Backend};

use super::{
    oracle::*,
    raw_messages::{METHODS, Method},
    values::*,
    *,
};

#[derive(Debug, Clone)]
enum Credentials {
    None,
    One(Vec<u8>),
    Two(Vec<u8>, Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Admin,
    User,
    Refused,
}

/// What the header says, read by RFC 6750 (`Bearer`, case-insensitive, then one or
/// more spaces, then the token).
fn caller_of(credentials: &Credentials, admin: &str, user: &str) -> Caller {
    let value = match credentials {
        Credentials::None => return Caller::Anonymous,
        Credentials::Two(..) => return Caller::Refused,
        Credentials::One(value) => value,
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return Caller::Refused;
    };
    if !text
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Caller::Refused;
    }
    let Some((scheme, token)) = text.split_once(' ') else {
        return Caller::Refused;
    };
    let token = token.trim_matches([' ', '\t']);
    if !scheme.eq_ignore_ascii_case("bearer") {
        Caller::Refused
    } else if token == admin {
        Caller::Admin
    } else if token == user {
        Caller::User
    } else {
        Caller::Refused
    }
}

fn credentials(admin: String, user: String) -> impl Strategy<Value = Credentials> {
    let token = move || {
        prop_oneof![
            3 => Just(admin.clone()),
            1 => Just(user.clone()),
            3 => mutated(admin.clone()),
            1 => "[!-~]{0,200}",
            1 => Just(String::new()),
            1 => Just(format!("{admin} extra")),
            1 => Just(format!("{admin},")),
        ]
    };
    let scheme = select(
        &[
            "Bearer", "bearer", "BEARER", "Basic", "Token", "Bearer:", "", "JWT", "Bearer,",
        ][..],
    );
    let sep = select(&[" ", "  ", "\t", "", " \t", "="][..]);
    let trail = select(&["", " ", "\t"][..]);
    let one = move || {
        (scheme.clone(), sep.clone(), token(), trail.clone()).prop_map(
            |(scheme, sep, token, trail)| format!("{scheme}{sep}{token}{trail}").into_bytes(),
        )
    };
    prop_oneof![
        1 => Just(Credentials::None),
        6 => one().prop_map(Credentials::One),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Credentials::One),
        1 => proptest::collection::vec(128u8..=255, 1..50).prop_map(move |junk| {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(&junk);
            Credentials::One(v)
        }),
        1 => (one(), one()).prop_map(|(a, b)| Credentials::Two(a, b)),
    ]
}

/// A harmless call of each method, with the metadata given.
async fn call_with(ctx: &Ctx, method: Method, meta: MetadataMap) -> Result<(), Status> {
    fn req<T>(meta: MetadataMap, message: T) -> Request<T> {
        Request::from_parts(meta, Default::default(), message)
    }
    let (mut auth, mut keys, mut users, mut audit) =
        (ctx.auth(), ctx.keys(), ctx.users(), ctx.audit());
    match method {
        Method::Register => auth
            .register(req(meta, pb::RegisterRequest::default()))
            .await
            .map(drop),
        Method::Login => auth
            .login(req(
                meta,
                pb::LoginRequest {
                    username: "nobody".into(),
                    password: "wrong".into(),
                },
            ))
            .await
            .map(drop),
        Method::ValidateToken => auth
            .validate_token(req(meta, pb::ValidateTokenRequest::default()))
            .await
            .map(drop),
        Method::Refresh => auth
            .refresh(req(meta, pb::RefreshRequest::default()))
            .await
            .map(drop),
        Method::Logout => auth.logout(req(meta, pb::LogoutRequest {})).await.map(drop),
        Method::GetJwks => auth
            .get_jwks(req(meta, pb::GetJwksRequest {}))
            .await
            .map(drop),
        Method::RotateSigningKey => auth
            .rotate_signing_key(req(meta, pb::RotateSigningKeyRequest {}))
            .await
            .map(drop),
        Method::CreateKey => keys
            .create_key(req(
                meta,
                pb::CreateKeyRequest {
                    service_name: "header-key".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Method::GetKey => keys
            .get_key(req(
                meta,
                pb::GetKeyRequest {
                    service_name: "svc-a".into(),
                },
            ))
            .await
            .map(drop),
        Method::ListKeys => keys
            .list_keys(req(meta, pb::ListKeysRequest::default()))
            .await
            .map(drop),
        Method::RotateKey => keys
            .rotate_key(req(
                meta,
                pb::RotateKeyRequest {
                    service_name: "nope".into(),
                    grace_period_seconds: 0,
                },
            ))
            .await
            .map(drop),
        Method::RevokeKey => keys
            .revoke_key(req(
                meta,
                pb::RevokeKeyRequest {
                    service_name: "nope".into(),
                },
            ))
            .await
            .map(drop),
        Method::VerifyKey => keys
            .verify_key(req(
                meta,
                pb::VerifyKeyRequest {
                    api_key: "kms_nope".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Method::ListUsers => users
            .list_users(req(meta, pb::ListUsersRequest::default()))
            .await
            .map(drop),
        Method::GetUser => users
            .get_user(req(
                meta,
                pb::GetUserRequest {
                    username: "nobody".into(),
                },
            ))
            .await
            .map(drop),
        Method::SetRoles => users
            .set_roles(req(
                meta,
                pb::SetRolesRequest {
                    username: "nobody".into(),
                    roles: vec!["user".into()],
                },
            ))
            .await
            .map(drop),
        Method::DeleteUser => users
            .delete_user(req(
                meta,
                pb::DeleteUserRequest {
                    username: "nobody".into(),
                },
            ))
            .await
            .map(drop),
        Method::ChangePassword => users
            .change_password(req(
                meta,
                pb::ChangePasswordRequest {
                    username: "nobody".into(),
                    old_password: String::new(),
                    new_password: "new-password-123".into(),
                },
            ))
            .await
            .map(drop),
        Method::ListAuditEvents => audit
            .list_audit_events(req(meta, pb::ListAuditEventsRequest::default()))
            .await
            .map(drop),
    }
}

/// The answer of each harmless call for each kind of caller.
fn expected_for(method: Method, caller: Caller) -> Expect {
    use Code::*;
    if method.public() {
        return codes(&[match method {
            Method::Login => Unauthenticated,
            Method::Refresh => InvalidArgument,
            _ => Ok,
        }]);
    }
    match (method, caller) {
        (Method::Register, Caller::Refused) => codes(&[Unauthenticated]),
        (Method::Register, _) => Expect::Invalid(vec!["username"]),
        (_, Caller::Anonymous | Caller::Refused) => codes(&[Unauthenticated]),
        (Method::VerifyKey, _) => codes(&[Ok]),
        (_, Caller::User) => codes(&[PermissionDenied]),
        (Method::RotateSigningKey, _) => codes(&[FailedPrecondition]),
        (Method::CreateKey, _) => codes(&[Ok, AlreadyExists]),
        (Method::GetKey | Method::ListKeys | Method::ListUsers | Method::ListAuditEvents, _) => {
            codes(&[Ok])
        }
        _ => codes(&[NotFound]),
    }
}

both_backends!(hostile_authorization_metadata);

async fn hostile_authorization_metadata(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let ctx2 = ctx.clone();
    let (admin, user) = (ctx.admin.clone(), ctx.user.clone());
    check(
        "authorization metadata",
        move || (select(METHODS), credentials(admin, user)),
        move |(method, creds)| {
            let ctx = ctx2.clone();
            let caller = caller_of(&creds, &ctx.admin, &ctx.user);
            // A valid token would end its own login.
            prop_assume!(
                !(method == Method::Logout && matches!(caller, Caller::Admin | Caller::User))
            );
            let mut meta = MetadataMap::new();
            let values: Vec<&Vec<u8>> = match &creds {
                Credentials::None => vec![],
                Credentials::One(a) => vec![a],
                Credentials::Two(a, b) => vec![a, b],
            };
            for value in values {
                // Bytes no HTTP header may carry (control characters) cannot be sent.
                let Ok(value) = AsciiMetadataValue::try_from(value.as_slice()) else {
                    return Err(TestCaseError::reject("not a header value"));
                };
                meta.append("authorization", value);
            }
            let expect = expected_for(method, caller);
            let what = format!("{method:?} with {caller:?} {}", short(&creds));
            ctx2.rt
                .block_on(async { case(&ctx, &what, &expect, call_with(&ctx, method, meta)).await })
        },
    )
    .await;
    ctx.still_serving().await;
    server.stop().await;
}
