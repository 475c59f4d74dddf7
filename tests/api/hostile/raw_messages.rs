//! Every method, its message as raw bytes: random, not UTF-8 where a string belongs,
//! truncated, wrong wire types, unknown fields, and mutated valid encodings.

use std::fmt::Debug;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::{Buf, BufMut};
use kms::proto::kms::v1 as pb;
use proptest::{
    prelude::*,
    sample::{Index, select},
};
use prost::Message;
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::{
    both_backends,
    common::{Backend, authed},
};

use super::{oracle::*, *};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Register,
    Login,
    ValidateToken,
    Refresh,
    Logout,
    GetJwks,
    RotateSigningKey,
    CreateKey,
    GetKey,
    ListKeys,
    RotateKey,
    RevokeKey,
    VerifyKey,
    ListUsers,
    GetUser,
    SetRoles,
    DeleteUser,
    ChangePassword,
    ListAuditEvents,
}

pub(super) const METHODS: &[Method] = &[
    Method::Register,
    Method::Login,
    Method::ValidateToken,
    Method::Refresh,
    Method::Logout,
    Method::GetJwks,
    Method::RotateSigningKey,
    Method::CreateKey,
    Method::GetKey,
    Method::ListKeys,
    Method::RotateKey,
    Method::RevokeKey,
    Method::VerifyKey,
    Method::ListUsers,
    Method::GetUser,
    Method::SetRoles,
    Method::DeleteUser,
    Method::ChangePassword,
    Method::ListAuditEvents,
];

impl Method {
    fn path(self) -> &'static str {
        match self {
            Self::Register => "/kms.v1.Auth/Register",
            Self::Login => "/kms.v1.Auth/Login",
            Self::ValidateToken => "/kms.v1.Auth/ValidateToken",
            Self::Refresh => "/kms.v1.Auth/Refresh",
            Self::Logout => "/kms.v1.Auth/Logout",
            Self::GetJwks => "/kms.v1.Auth/GetJwks",
            Self::RotateSigningKey => "/kms.v1.Auth/RotateSigningKey",
            Self::CreateKey => "/kms.v1.Keys/CreateKey",
            Self::GetKey => "/kms.v1.Keys/GetKey",
            Self::ListKeys => "/kms.v1.Keys/ListKeys",
            Self::RotateKey => "/kms.v1.Keys/RotateKey",
            Self::RevokeKey => "/kms.v1.Keys/RevokeKey",
            Self::VerifyKey => "/kms.v1.Keys/VerifyKey",
            Self::ListUsers => "/kms.v1.Users/ListUsers",
            Self::GetUser => "/kms.v1.Users/GetUser",
            Self::SetRoles => "/kms.v1.Users/SetRoles",
            Self::DeleteUser => "/kms.v1.Users/DeleteUser",
            Self::ChangePassword => "/kms.v1.Users/ChangePassword",
            Self::ListAuditEvents => "/kms.v1.Audit/ListAuditEvents",
        }
    }

    /// Whether prost can decode `bytes` as this method's request.
    fn decodes(self, bytes: &[u8]) -> bool {
        fn ok<M: Message + Default>(bytes: &[u8]) -> bool {
            M::decode(bytes).is_ok()
        }
        match self {
            Self::Register => ok::<pb::RegisterRequest>(bytes),
            Self::Login => ok::<pb::LoginRequest>(bytes),
            Self::ValidateToken => ok::<pb::ValidateTokenRequest>(bytes),
            Self::Refresh => ok::<pb::RefreshRequest>(bytes),
            Self::Logout => ok::<pb::LogoutRequest>(bytes),
            Self::GetJwks => ok::<pb::GetJwksRequest>(bytes),
            Self::RotateSigningKey => ok::<pb::RotateSigningKeyRequest>(bytes),
            Self::CreateKey => ok::<pb::CreateKeyRequest>(bytes),
            Self::GetKey => ok::<pb::GetKeyRequest>(bytes),
            Self::ListKeys => ok::<pb::ListKeysRequest>(bytes),
            Self::RotateKey => ok::<pb::RotateKeyRequest>(bytes),
            Self::RevokeKey => ok::<pb::RevokeKeyRequest>(bytes),
            Self::VerifyKey => ok::<pb::VerifyKeyRequest>(bytes),
            Self::ListUsers => ok::<pb::ListUsersRequest>(bytes),
            Self::GetUser => ok::<pb::GetUserRequest>(bytes),
            Self::SetRoles => ok::<pb::SetRolesRequest>(bytes),
            Self::DeleteUser => ok::<pb::DeleteUserRequest>(bytes),
            Self::ChangePassword => ok::<pb::ChangePasswordRequest>(bytes),
            Self::ListAuditEvents => ok::<pb::ListAuditEventsRequest>(bytes),
        }
    }

    /// A harmless, valid encoding of the request, to mutate.
    fn sample(self) -> Vec<u8> {
        match self {
            Self::Register => pb::RegisterRequest {
                username: "raw-user".into(),
                password: "raw-password-123".into(),
                roles: vec!["user".into()],
            }
            .encode_to_vec(),
            Self::Login => pb::LoginRequest {
                username: "nobody".into(),
                password: "wrong-password".into(),
            }
            .encode_to_vec(),
            Self::ValidateToken => pb::ValidateTokenRequest {
                token: "a.b.c".into(),
            }
            .encode_to_vec(),
            Self::Refresh => pb::RefreshRequest {
                refresh_token: "kmsr_x".into(),
            }
            .encode_to_vec(),
            Self::Logout | Self::GetJwks | Self::RotateSigningKey => Vec::new(),
            Self::CreateKey => pb::CreateKeyRequest {
                service_name: "raw-key".into(),
                api_key: Some("k".repeat(40)),
                description: "raw".into(),
                ttl_seconds: 60,
                ..Default::default()
            }
            .encode_to_vec(),
            Self::GetKey => pb::GetKeyRequest {
                service_name: "svc-a".into(),
            }
            .encode_to_vec(),
            Self::ListKeys => pb::ListKeysRequest {
                page_size: 2,
                page_token: URL_SAFE_NO_PAD.encode("v1:svc-a"),
            }
            .encode_to_vec(),
            Self::RotateKey => pb::RotateKeyRequest {
                service_name: "nope".into(),
                grace_period_seconds: 5,
            }
            .encode_to_vec(),
            Self::RevokeKey => pb::RevokeKeyRequest {
                service_name: "nope".into(),
            }
            .encode_to_vec(),
            Self::VerifyKey => pb::VerifyKeyRequest {
                api_key: "kms_nope".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            Self::ListUsers => pb::ListUsersRequest {
                page_size: 2,
                page_token: String::new(),
            }
            .encode_to_vec(),
            Self::GetUser => pb::GetUserRequest {
                username: "nobody".into(),
            }
            .encode_to_vec(),
            Self::SetRoles => pb::SetRolesRequest {
                username: "nobody".into(),
                roles: vec!["user".into()],
            }
            .encode_to_vec(),
            Self::DeleteUser => pb::DeleteUserRequest {
                username: "nobody".into(),
            }
            .encode_to_vec(),
            Self::ChangePassword => pb::ChangePasswordRequest {
                username: "nobody".into(),
                old_password: String::new(),
                new_password: "new-password-123".into(),
            }
            .encode_to_vec(),
            Self::ListAuditEvents => pb::ListAuditEventsRequest {
                actor: "root".into(),
                since: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                page_size: 3,
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    /// Methods anyone may call (any token sent is ignored).
    pub(super) fn public(self) -> bool {
        matches!(
            self,
            Self::Login | Self::ValidateToken | Self::Refresh | Self::GetJwks
        )
    }
}

/// Sends raw bytes as a request message, and reads the answer as raw bytes: a request
/// tonic's typed clients could never send. Shared with `hardening::ops`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(
    channel: &Channel,
    path: &'static str,
    request: Request<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Raw request bodies: random bytes, and encodings that are wrong in one place.
fn raw_body(method: Method) -> impl Strategy<Value = Vec<u8>> {
    let sample = method.sample();
    let field = 1u64..9;
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        // A string field holding bytes that are not UTF-8.
        2 => (field.clone(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(f, junk)| {
            let mut b = Vec::new();
            varint(f << 3 | 2, &mut b);
            varint(junk.len() as u64 + 2, &mut b);
            b.extend_from_slice(&[0xff, 0xfe]);
            b.extend_from_slice(&junk);
            b
        }),
        // A length that runs past the end.
        1 => (field.clone(), 1u64..100_000).prop_map(|(f, len)| {
            let mut b = Vec::new();
            varint(f << 3 | 2, &mut b);
            varint(len, &mut b);
            b.extend_from_slice(b"abc");
            b
        }),
        // A varint that never ends, or is eleven bytes long.
        1 => field.clone().prop_map(|f| {
            let mut b = Vec::new();
            varint(f << 3, &mut b);
            b.extend_from_slice(&[0xff; 11]);
            b
        }),
        // Each wire type on each field, and fields and wire types that do not exist.
        2 => (0u64..40, 0u64..8, proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(f, wire, rest)| {
            let mut b = Vec::new();
            varint(f << 3 | wire, &mut b);
            b.extend_from_slice(&rest);
            b
        }),
        // Unknown fields around a valid message (they must be skipped).
        1 => Just(sample.clone()).prop_map(|mut b| {
            b.extend_from_slice(&[0xf8, 0x07, 0x01, 0xfa, 0x07, 0x01, b'x']);
            b
        }),
        3 => (Just(sample), proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..4)).prop_map(|(mut b, edits)| {
            for (at, byte, op) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 => b.truncate(i),
                    1 if i < b.len() => b[i] ^= byte | 1,
                    _ => b.insert(i, byte),
                }
            }
            b
        }),
    ]
}

both_backends!(hostile_raw_messages);

async fn hostile_raw_messages(backend: Backend) {
    let (server, ctx) = start(backend).await;
    // Logout ends the login of its token: it gets a login of its own.
    let carol = server.user_token("carol").await;
    let ctx2 = ctx.clone();
    check(
        "raw messages",
        || select(METHODS).prop_flat_map(|m| (Just(m), raw_body(m))),
        move |(method, body)| {
            let ctx = ctx2.clone();
            let token = if method == Method::Logout {
                carol.clone()
            } else {
                ctx.admin.clone()
            };
            let expect = if !method.decodes(&body) {
                if method == Method::Logout {
                    // Once one Logout went through, carol's token is refused first.
                    codes(&[Code::InvalidArgument, Code::Unauthenticated])
                } else {
                    Expect::Malformed
                }
            } else {
                // Any answer the contract allows for some input of this method.
                codes(&[
                    Code::Ok,
                    Code::InvalidArgument,
                    Code::NotFound,
                    Code::AlreadyExists,
                    Code::PermissionDenied,
                    Code::Unauthenticated,
                    Code::FailedPrecondition,
                ])
            };
            let what = format!("{method:?} raw {}", short(&body));
            ctx2.rt.block_on(async {
                let request = authed(body, &token);
                case(
                    &ctx,
                    &what,
                    &expect,
                    raw_call(&ctx.channel, method.path(), request),
                )
                .await
            })
        },
    )
    .await;
    ctx.still_serving().await;
    server.stop().await;
}
