//! The part of an Envoy `CheckRequest` that Check reads, decoded straight from the
//! message's bytes: the two credential headers and the route's two
//! `context_extensions`. Decoding the whole message (prost's `CheckRequest`) made two
//! owned strings and a map entry for every header of the HTTP request, and strings for
//! its path, host, method and peers, none of which Check looks at: about twenty
//! allocations a call on the ext_authz hot path (BENCHMARKS.md, "The per-call tax").
//!
//! What is still checked as prost would: the wire format of every field of the
//! messages on the way (a length past the end, a bad varint or wire type, a field
//! number 0) and UTF-8 in every header name and value and every context extension.
//! What is not: the contents of the fields Check skips (peers, metadata, the path):
//! they are never read, so garbage there is not refused.

use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use tonic::Status;

use super::ext_authz_route::{REQUIRED_ROLES, REQUIRED_SCOPES};

/// A header that carries a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Header {
    Authorization,
    ApiKey,
}

impl Header {
    fn named(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("authorization") {
            Some(Self::Authorization)
        } else if name.eq_ignore_ascii_case("x-api-key") {
            Some(Self::ApiKey)
        } else {
            None
        }
    }
}

/// A credential header's value as sent: `None` when its raw bytes are not UTF-8.
type Value = Option<String>;

/// The credential headers of the HTTP request. Envoy sends either the `headers` map
/// (lower-case names, repeats joined with ',') or, with `encode_raw_headers`,
/// `header_map` (one entry per occurrence, the bytes in `raw_value`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HttpHeaders {
    /// Credential entries of `headers`.
    map: Vec<(Header, String)>,
    /// Credential entries of `header_map`.
    list: Vec<(Header, Value)>,
    /// `header_map` holds at least one header (of any name): it is then the one read.
    list_used: bool,
}

/// A credential header sent more than once, or whose raw value is not UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ambiguous;

impl HttpHeaders {
    /// The one value of `header`.
    pub(super) fn one(&self, header: Header) -> Result<Option<&str>, Ambiguous> {
        let mut found = None;
        if self.list_used {
            for (_, value) in self.list.iter().filter(|(h, _)| *h == header) {
                only(&mut found, value.as_deref())?;
            }
        } else {
            for (_, value) in self.map.iter().filter(|(h, _)| *h == header) {
                only(&mut found, Some(value))?;
            }
        }
        Ok(found)
    }
}

/// Keeps the first value; a second one, or one that is not UTF-8, is ambiguous.
fn only<'a>(found: &mut Option<&'a str>, value: Option<&'a str>) -> Result<(), Ambiguous> {
    match (value, found.is_some()) {
        (Some(value), false) => {
            *found = Some(value);
            Ok(())
        }
        _ => Err(Ambiguous),
    }
}

/// What Check reads of a `CheckRequest`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CheckView {
    /// `attributes.request.http`, when sent.
    pub(super) http: Option<HttpHeaders>,
    /// The route's `kms_required_scopes` and `kms_required_roles`, when set.
    pub(super) required_scopes: Option<String>,
    pub(super) required_roles: Option<String>,
}

impl CheckView {
    /// Decodes a serialised `CheckRequest`; a malformed one is INVALID_ARGUMENT.
    pub(super) fn decode(message: &[u8]) -> Result<Self, Status> {
        let mut view = Self::default();
        // CheckRequest { AttributeContext attributes = 1; }
        each_field(message, |tag, field| match tag {
            1 => view.attributes(field.bytes()?),
            _ => Ok(()),
        })
        .map_err(|what| Status::invalid_argument(format!("the message is malformed: {what}")))?;
        Ok(view)
    }

    /// AttributeContext { Request request = 4; map<string, string> context_extensions = 10; }
    fn attributes(&mut self, message: &[u8]) -> Result<(), Malformed> {
        each_field(message, |tag, field| match tag {
            // Request { HttpRequest http = 2; }
            4 => each_field(field.bytes()?, |tag, field| match tag {
                2 => self
                    .http
                    .get_or_insert_with(HttpHeaders::default)
                    .merge(field.bytes()?),
                _ => Ok(()),
            }),
            10 => {
                let (name, value) = map_entry(field.bytes()?)?;
                match name {
                    REQUIRED_SCOPES => self.required_scopes = Some(value.to_owned()),
                    REQUIRED_ROLES => self.required_roles = Some(value.to_owned()),
                    _ => {}
                }
                Ok(())
            }
            _ => Ok(()),
        })
    }
}

impl HttpHeaders {
    /// HttpRequest { map<string, string> headers = 3; HeaderMap header_map = 13; }
    fn merge(&mut self, message: &[u8]) -> Result<(), Malformed> {
        each_field(message, |tag, field| match tag {
            3 => {
                let (name, value) = map_entry(field.bytes()?)?;
                if let Some(header) = Header::named(name) {
                    self.map.push((header, value.to_owned()));
                }
                Ok(())
            }
            // HeaderMap { repeated HeaderValue headers = 1; }
            13 => each_field(field.bytes()?, |tag, field| match tag {
                1 => self.header_value(field.bytes()?),
                _ => Ok(()),
            }),
            _ => Ok(()),
        })
    }

    /// HeaderValue { string key = 1; string value = 2; bytes raw_value = 3; }
    fn header_value(&mut self, message: &[u8]) -> Result<(), Malformed> {
        let (mut key, mut value, mut raw): (&str, &str, &[u8]) = ("", "", &[]);
        each_field(message, |tag, field| {
            match tag {
                1 => key = utf8(field.bytes()?)?,
                2 => value = utf8(field.bytes()?)?,
                3 => raw = field.bytes()?,
                _ => {}
            }
            Ok(())
        })?;
        self.list_used = true;
        if let Some(header) = Header::named(key) {
            let value = if raw.is_empty() {
                Some(value.to_owned())
            } else {
                std::str::from_utf8(raw).ok().map(str::to_owned)
            };
            self.list.push((header, value));
        }
        Ok(())
    }
}

/// Why a message does not decode: names the fault, never the content.
type Malformed = &'static str;

/// One field of a message: the bytes of a length-delimited one, or another (already
/// skipped past).
enum Field<'a> {
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Field<'a> {
    /// The bytes of a field that must be length-delimited (a message, string or bytes).
    fn bytes(self) -> Result<&'a [u8], Malformed> {
        match self {
            Self::Bytes(bytes) => Ok(bytes),
            Self::Other => Err("invalid wire type"),
        }
    }
}

/// Calls `visit` with each field of `message` in order, as prost reads them.
fn each_field<'a>(
    mut message: &'a [u8],
    mut visit: impl FnMut(u32, Field<'a>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    while !message.is_empty() {
        let (tag, wire_type) = decode_key(&mut message).map_err(|_| "invalid field key")?;
        let field = if wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut message).map_err(|_| "invalid length")?;
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= message.len())
                .ok_or("a length runs past the end")?;
            let (bytes, rest) = message.split_at(len);
            message = rest;
            Field::Bytes(bytes)
        } else {
            skip_field(wire_type, tag, &mut message, DecodeContext::default())
                .map_err(|_| "invalid field")?;
            Field::Other
        };
        visit(tag, field)?;
    }
    Ok(())
}

/// A `map<string, string>` entry: { string key = 1; string value = 2; }.
fn map_entry(message: &[u8]) -> Result<(&str, &str), Malformed> {
    let (mut key, mut value) = ("", "");
    each_field(message, |tag, field| {
        match tag {
            1 => key = utf8(field.bytes()?)?,
            2 => value = utf8(field.bytes()?)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok((key, value))
}

fn utf8(bytes: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(bytes).map_err(|_| "a string is not UTF-8")
}

/// Header sets as Check sees them, made by encoding a `CheckRequest` and reading it.
#[cfg(test)]
pub(super) mod testing {
    use envoy_types::{
        ext_authz::v3::pb::{CheckRequest, HeaderValue},
        pb::envoy::{
            config::core::v3::HeaderMap,
            service::auth::v3::{
                AttributeContext,
                attribute_context::{HttpRequest, Request},
            },
        },
    };
    use prost::Message;

    use super::{CheckView, HttpHeaders};

    pub(crate) fn read(http: HttpRequest) -> HttpHeaders {
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                ..Default::default()
            }),
        };
        let view = CheckView::decode(&request.encode_to_vec()).expect("decodes");
        view.http.expect("http was sent")
    }

    /// Headers in the `headers` map.
    pub(crate) fn http(headers: &[(&str, &str)]) -> HttpHeaders {
        read(HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
    }

    /// Headers in `header_map`, as raw bytes.
    pub(crate) fn raw(headers: &[(&str, &[u8])]) -> HttpHeaders {
        read(HttpRequest {
            header_map: Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        value: String::new(),
                        raw_value: v.to_vec(),
                    })
                    .collect(),
            }),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::{
        ext_authz::v3::pb::{CheckRequest, HeaderValue},
        pb::envoy::{
            config::core::v3::HeaderMap,
            service::auth::v3::{
                AttributeContext,
                attribute_context::{HttpRequest, Peer, Request},
            },
        },
    };
    use proptest::prelude::*;
    use prost::Message;

    use super::{
        testing::{http, raw},
        *,
    };

    fn request(http: Option<HttpRequest>, extensions: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    service: "client".into(),
                    ..Default::default()
                }),
                request: Some(Request { time: None, http }),
                context_extensions: extensions
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn view(request: &CheckRequest) -> CheckView {
        CheckView::decode(&request.encode_to_vec()).expect("decodes")
    }

    /// The answer of the full prost decoding, as Check made it before this module.
    fn reference(http: &HttpRequest, name: &str) -> Result<Option<String>, Ambiguous> {
        let mut found = None;
        match http.header_map.as_ref().filter(|m| !m.headers.is_empty()) {
            Some(map) => {
                for h in map
                    .headers
                    .iter()
                    .filter(|h| h.key.eq_ignore_ascii_case(name))
                {
                    let value = if h.raw_value.is_empty() {
                        h.value.clone()
                    } else {
                        String::from_utf8(h.raw_value.clone()).map_err(|_| Ambiguous)?
                    };
                    if found.replace(value).is_some() {
                        return Err(Ambiguous);
                    }
                }
            }
            None => {
                for (_, value) in http
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                {
                    if found.replace(value.clone()).is_some() {
                        return Err(Ambiguous);
                    }
                }
            }
        }
        Ok(found)
    }

    #[test]
    fn reads_the_credentials_and_the_route() {
        let http = HttpRequest {
            method: "GET".into(),
            path: "/orders".into(),
            headers: [
                ("x-api-key", "k"),
                ("user-agent", "curl"),
                ("Authorization", "Bearer t"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        };
        let got = view(&request(
            Some(http),
            &[(REQUIRED_SCOPES, "a b"), ("other", "x")],
        ));
        let headers = got.http.as_ref().expect("http");
        assert_eq!(headers.one(Header::ApiKey), Ok(Some("k")));
        assert_eq!(headers.one(Header::Authorization), Ok(Some("Bearer t")));
        assert_eq!(got.required_scopes.as_deref(), Some("a b"));
        assert_eq!(got.required_roles, None);

        assert_eq!(view(&request(None, &[])).http, None);
        assert_eq!(view(&CheckRequest::default()), CheckView::default());
    }

    #[test]
    fn headers_come_from_the_map_or_the_raw_list() {
        let map = http(&[
            ("authorization", "Bearer t"),
            ("X-Api-Key", "k"),
            ("cookie", "c"),
        ]);
        assert_eq!(map.one(Header::Authorization), Ok(Some("Bearer t")));
        assert_eq!(map.one(Header::ApiKey), Ok(Some("k")));
        assert_eq!(http(&[("cookie", "c")]).one(Header::ApiKey), Ok(None));
        let list = raw(&[("Authorization", b"Bearer t")]);
        assert_eq!(list.one(Header::Authorization), Ok(Some("Bearer t")));
    }

    #[test]
    fn repeated_or_non_utf8_credentials_are_ambiguous() {
        let twice = raw(&[("x-api-key", b"a"), ("x-api-key", b"b")]);
        assert_eq!(twice.one(Header::ApiKey), Err(Ambiguous));
        let cases = http(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        assert_eq!(cases.one(Header::Authorization), Err(Ambiguous));
        let binary = raw(&[("x-api-key", b"\xff\xfe")]);
        assert_eq!(binary.one(Header::ApiKey), Err(Ambiguous));
    }

    #[test]
    fn malformed_messages_are_invalid_argument() {
        for bytes in [
            &[0x02, 0xff, 0xff, 0xff, 0x0f, b'x'][..],
            &[0x0a, 0x05, 0x01],
            &[0x08],
            &[0x00, 0x00],
            // attributes as a varint.
            &[0x08, 0x01],
        ] {
            let err = CheckView::decode(bytes).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bytes:?}");
            assert!(
                CheckRequest::decode(bytes).is_err(),
                "prost agrees on {bytes:?}"
            );
        }
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("authorization".to_owned()),
            Just("Authorization".to_owned()),
            Just("x-api-key".to_owned()),
            Just("X-API-KEY".to_owned()),
            "[a-z-]{1,12}",
        ]
    }

    fn header_value() -> impl Strategy<Value = (String, Vec<u8>)> {
        (
            "[ -~]{0,12}",
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..6)
            ],
        )
    }

    proptest! {
        /// The view answers as the full decoding did, header for header.
        #[test]
        fn agrees_with_the_full_decoding(
            map in proptest::collection::hash_map(header_name(), "[ -~]{0,12}", 0..6),
            list in proptest::collection::vec((header_name(), header_value()), 0..6),
            scopes in proptest::option::of("[a-z: ]{0,12}"),
        ) {
            let http = HttpRequest {
                headers: map,
                header_map: Some(HeaderMap {
                    headers: list
                        .into_iter()
                        .map(|(key, (value, raw_value))| HeaderValue { key, value, raw_value })
                        .collect(),
                }),
                ..Default::default()
            };
            let extensions: Vec<(&str, &str)> =
                scopes.iter().map(|s| (REQUIRED_SCOPES, s.as_str())).collect();
            let full = request(Some(http.clone()), &extensions);
            let bytes = full.encode_to_vec();
            let got = CheckView::decode(&bytes).expect("decodes");
            let headers = got.http.as_ref().expect("http");
            for (header, name) in [(Header::Authorization, "authorization"), (Header::ApiKey, "x-api-key")] {
                let ours = headers.one(header).map(|v| v.map(str::to_owned));
                prop_assert_eq!(ours, reference(&http, name));
            }
            prop_assert_eq!(got.required_scopes, scopes);
            // And every prefix of the message: refused by both, or read by both.
            for end in 0..bytes.len() {
                prop_assert_eq!(
                    CheckView::decode(&bytes[..end]).is_ok(),
                    CheckRequest::decode(&bytes[..end]).is_ok(),
                    "prefix of {} bytes", end
                );
            }
        }
    }
}
