//! Issue 18, point 11: what a client without a token gets for bytes that do not decode
//! at ext_authz, and for methods a service does not have.

use bytes::{Buf, BufMut};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost::Message;
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::{
    both_backends,
    common::{Backend, TestServer},
    ext_authz::check_request,
};

both_backends!(
    ext_authz_answers_undecodable_requests_with_invalid_argument,
    unknown_methods_of_public_services_are_unimplemented,
);

/// Raw bytes out, raw bytes in: a request tonic's typed clients could never send.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

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

async fn raw_call(channel: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_code(result: &Result<Vec<u8>, Status>, code: Code, what: &str) {
    match result {
        Ok(_) => panic!("{what}: expected {code:?}, got OK"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

async fn ext_authz_answers_undecodable_requests_with_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;

    // Not protobuf at all: a field number 0 and a length that runs past the end.
    let garbage = vec![0x02, 0xff, 0xff, 0xff, 0x0f, b'x'];
    assert!(CheckRequest::decode(garbage.as_slice()).is_err());
    let answer = raw_call(&server.channel, CHECK, garbage).await;
    assert_code(&answer, Code::InvalidArgument, "garbage bytes");

    // A well-formed CheckRequest whose header map holds a value that is not UTF-8:
    // encode a placeholder of the same length and swap the bytes in.
    let mut body = check_request(&[("x-api-key", "PLACEHOLDER")]).encode_to_vec();
    let at = body
        .windows(11)
        .position(|w| w == b"PLACEHOLDER")
        .expect("the placeholder is in the encoding");
    body[at..at + 11].copy_from_slice(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5");
    assert!(CheckRequest::decode(body.as_slice()).is_err());
    let answer = raw_call(&server.channel, CHECK, body).await;
    assert_code(&answer, Code::InvalidArgument, "a non-UTF-8 header value");
    let message = answer.unwrap_err().message().to_owned();
    assert!(!message.contains('\u{fffd}'), "{message}");

    // The same request with the placeholder itself still decodes and is answered.
    let fine = check_request(&[("x-api-key", "PLACEHOLDER")]).encode_to_vec();
    raw_call(&server.channel, CHECK, fine)
        .await
        .expect("a well-formed Check is answered");
    server.stop().await;
}

async fn unknown_methods_of_public_services_are_unimplemented(backend: Backend) {
    let server = TestServer::start(backend).await;
    for path in [
        "/grpc.health.v1.Health/Nope",
        "/grpc.reflection.v1.ServerReflection/Nope",
        "/grpc.reflection.v1alpha.ServerReflection/Nope",
        "/envoy.service.auth.v3.Authorization/Nope",
    ] {
        let answer = raw_call(&server.channel, path, Vec::new()).await;
        assert_code(&answer, Code::Unimplemented, path);
    }
    // kms.v1 stays fail-closed: without a token, an unknown method is UNAUTHENTICATED,
    // so that nobody learns which methods exist without one.
    for path in ["/kms.v1.Keys/Nope", "/kms.v1.Nope/Nope"] {
        let answer = raw_call(&server.channel, path, Vec::new()).await;
        assert_code(&answer, Code::Unauthenticated, path);
    }
    server.stop().await;
}
