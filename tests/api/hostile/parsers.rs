//! The parsers that read what clients send, called directly: the access token
//! verifier, the API key checksum, the bearer header and the page tokens. Each gets
//! random bytes and mutated valid input (bit flips, truncations, insertions,
//! deletions, repeated slices, splices of valid tokens) and must neither panic nor
//! accept what it must refuse. `PARSER_CASES` inputs each, or `PROPTEST_CASES`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use kms::{
    bearer,
    crypto::signing::{generate_ed25519_pkcs8, generate_rsa_pkcs1},
    domain::{
        Error, Roles, api_key, paging,
        token::{SigningAlgorithm, SigningKeyMaterial, TokenAuthority, public_jwk},
        validate,
    },
};
use proptest::{
    collection::vec,
    prelude::*,
    sample::{Index, select},
};

use super::*;
use crate::common::now;

const TOKEN_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \0";
/// The base64url characters of `TOKEN_ALPHABET`.
const BASE64URL: &[u8] = TOKEN_ALPHABET.split_at(64).0;

fn bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max_len)
}

/// Bytes drawn mostly from `alphabet`, now and then anything.
fn text(alphabet: &'static [u8], max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![15 => select(alphabet), 1 => any::<u8>()],
        0..=max_len,
    )
}

/// One to four edits of `input`: a bit flip, a changed, inserted or deleted byte, a
/// truncation, a slice repeated elsewhere.
fn mutated(input: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        0u8..6,
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
        select(TOKEN_ALPHABET),
    );
    vec(edit, 1..=4).prop_map(move |edits| {
        let mut out = input.clone();
        for (op, at, span, to, byte) in edits {
            let at = at.index(out.len() + 1);
            match op {
                0 if at < out.len() => out[at] ^= 1 << (span.index(8)),
                1 if at < out.len() => out[at] = byte,
                2 => out.truncate(at),
                3 => out.insert(at, byte),
                4 if at < out.len() => {
                    out.remove(at);
                }
                _ => {
                    let end = at + span.index(out.len() - at + 1);
                    let slice = out[at..end].to_vec();
                    let to = to.index(out.len() + 1);
                    out.splice(to..to, slice);
                }
            }
        }
        out
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn key(algorithm: SigningAlgorithm) -> SigningKeyMaterial {
    let der = match algorithm {
        SigningAlgorithm::Rs256 => generate_rsa_pkcs1(),
        _ => generate_ed25519_pkcs8(),
    }
    .unwrap();
    let kid = public_jwk(algorithm, &der).unwrap().common.key_id.unwrap();
    SigningKeyMaterial {
        kid,
        algorithm,
        private_pkcs8: der,
        current: true,
        verify_until: None,
    }
}

/// Tokens from three authorities (HS256, EdDSA, RS256): random text, mutations and
/// splices of valid tokens. Nothing but an unchanged valid token of the same
/// authority verifies, and nothing panics.
#[test]
fn token_verifier_refuses_everything_forged() {
    let hs = TokenAuthority::hs256(b"0123456789abcdef0123456789abcdef", "kms", "kms", 600);
    let ed =
        TokenAuthority::asymmetric(&[key(SigningAlgorithm::EdDsa)], "kms", "kms", 600).unwrap();
    let rs =
        TokenAuthority::asymmetric(&[key(SigningAlgorithm::Rs256)], "kms", "kms", 600).unwrap();
    let authorities = [&hs, &ed, &rs];
    let roles: Roles = ["admin".to_owned()].into_iter().collect();
    let valid: Vec<Vec<String>> = authorities
        .iter()
        .map(|a| {
            (0..3)
                .map(|i| {
                    a.issue("root", &roles, &format!("s{i}"), 0, now())
                        .unwrap()
                        .token
                })
                .collect()
        })
        .collect();
    for (a, tokens) in authorities.iter().zip(&valid) {
        for t in tokens {
            assert!(a.verify(t).is_ok(), "the valid tokens verify");
        }
    }
    let every: Vec<String> = valid.concat();
    let segment = |t: &str, i: usize| t.split('.').nth(i).unwrap_or("").to_owned();
    let input = prop_oneof![
        1 => bytes(300),
        // Three base64url-ish segments.
        1 => vec(text(BASE64URL, 80), 3).prop_map(|parts| {
            parts
                .iter()
                .map(|p| lossy(p))
                .collect::<Vec<_>>()
                .join(".")
                .into_bytes()
        }),
        2 => select(every.clone()).prop_flat_map(|t| mutated(t.into_bytes())),
        // Header, claims and signature from different valid tokens.
        1 => (
            select(every.clone()),
            select(every.clone()),
            select(every)
        )
            .prop_map(move |(a, b, c)| {
                format!("{}.{}.{}", segment(&a, 0), segment(&b, 1), segment(&c, 2)).into_bytes()
            }),
    ];
    run(
        "token verifier",
        PARSER_CASES,
        &(0..authorities.len(), input),
        |(which, input)| {
            let text = lossy(&input);
            let verified = authorities[which].verify(&text);
            if !valid[which].contains(&text) {
                prop_assert!(
                    verified.is_err(),
                    "a forged token verified: {text:?} with authority {which}"
                );
            }
            Ok(())
        },
    );
}

/// API keys: the checksum refuses random text and every mutation of a valid key; the
/// display prefix is a short start of the key.
#[test]
fn api_key_checksum_refuses_typos_and_noise() {
    let keys: Vec<String> = (0..8).map(|_| api_key::generate().unwrap()).collect();
    let input = prop_oneof![
        bytes(80),
        text(b"0123456789ABCDEFabcdefXYZxyz", 60)
            .prop_map(|tail| [b"kms_".to_vec(), tail].concat()),
        select(keys.clone()).prop_flat_map(|k| mutated(k.into_bytes())),
    ];
    run("api key parser", PARSER_CASES, &input, |input| {
        let text = lossy(&input);
        let ok = api_key::checksum_ok(&text);
        if keys.contains(&text) {
            prop_assert!(ok);
        } else {
            prop_assert!(!ok, "{text:?} passed the checksum");
        }
        let shown = api_key::display_prefix(&text);
        prop_assert!(shown.chars().count() <= api_key::DISPLAY_PREFIX_LEN);
        prop_assert!(text.starts_with(&shown));
        prop_assert_eq!(api_key::claims_kms_format(&text), text.starts_with("kms_"));
        Ok(())
    });
}

/// The `authorization` header: only one header of the form `Bearer <token>` gives a
/// token, which is never empty and never has whitespace around it.
#[test]
fn bearer_header_parser() {
    const PIECES: &[&str] = &[
        "Bearer", "bearer", "BEARER", "Basic", " ", "  ", "\t", "tok", "a.b.c", ",", "=", "",
    ];
    let value = prop_oneof![
        1 => bytes(60),
        2 => vec(select(PIECES), 0..5).prop_map(|pieces| pieces.concat().into_bytes()),
    ];
    run(
        "bearer header parser",
        PARSER_CASES,
        &(value, 0..3usize),
        |(value, count)| {
            let text = lossy(&value);
            if let Some(token) = bearer::bearer_token(&text) {
                prop_assert!(!token.is_empty() && token == token.trim(), "{text:?}");
                let (scheme, _) = text.split_once(' ').unwrap();
                prop_assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
            }
            let mut headers = HeaderMap::new();
            for _ in 0..count {
                if let Ok(v) = HeaderValue::from_bytes(&value) {
                    headers.append(AUTHORIZATION, v);
                }
            }
            match (
                headers.get_all(AUTHORIZATION).iter().count(),
                bearer::from_headers(&headers),
            ) {
                (0, result) => prop_assert_eq!(result, Ok(None)),
                (1, Ok(Some(token))) => prop_assert!(!token.is_empty()),
                (1, Ok(None)) => prop_assert!(false, "a header was sent: {text:?}"),
                (_, Ok(_)) => prop_assert!(false, "two headers must be refused: {text:?}"),
                (_, Err(_)) => {}
            }
            Ok(())
        },
    );
}

type Validator = fn(&str) -> kms::domain::Result<()>;

/// Page tokens: a token decodes only to a name the validator accepts, and then it is
/// exactly the token the server would have made; anything else is INVALID_ARGUMENT
/// naming page_token.
#[test]
fn page_token_decoder() {
    const NAMES: &[&str] = &["billing", "svc-a", "Z_9", "a", "x@y.z", "12345"];
    let input = prop_oneof![
        text(BASE64URL, 60).prop_map(|t| lossy(&t)),
        bytes(40).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        bytes(20).prop_map(|b| URL_SAFE_NO_PAD.encode([b"v1:".to_vec(), b].concat())),
        select(NAMES)
            .prop_flat_map(|name| mutated(paging::encode(name).into_bytes()))
            .prop_map(|t| lossy(&t)),
    ];
    let checks: [(&str, Validator); 3] = [
        ("service_name", validate::service_name),
        ("username", validate::username),
        ("audit id", |id| {
            id.parse::<i64>()
                .map(drop)
                .map_err(|_| Error::invalid("page_token", "malformed"))
        }),
    ];
    run("page token decoder", PARSER_CASES, &input, |input| {
        for (what, check) in checks {
            match paging::decode(&input, check) {
                Ok(None) => prop_assert!(input.is_empty()),
                Ok(Some(last)) => {
                    prop_assert!(check(&last).is_ok(), "{what}: {last:?}");
                    prop_assert_eq!(&paging::encode(&last), &input, "{}: not canonical", what);
                }
                Err(Error::InvalidArgument { field, .. }) => prop_assert_eq!(field, "page_token"),
                Err(other) => prop_assert!(false, "{what}: {input:?} gave {other:?}"),
            }
        }
        Ok(())
    });
}
