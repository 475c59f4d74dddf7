//! Fuzz-style tests of the parsers that read what clients send: the access token
//! verifier, the API key checksum, the bearer header and the page tokens. Each is fed
//! random bytes and mutated valid inputs (bit flips, truncations, insertions, splices)
//! for a fixed time budget, and must neither panic nor accept what it must refuse.
//!
//! `KMS_FUZZ_MILLIS` sets the budget per target (default 2000 ms), `KMS_FUZZ_SEED`
//! replays a run: a failure prints the seed and the iteration.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

use crate::{
    bearer,
    domain::{
        Error, Roles, api_key, paging,
        token::{SigningAlgorithm, SigningKeyMaterial, TokenAuthority, public_jwk},
        validate,
    },
};

/// SplitMix64: small, fast, and the same everywhere, so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), near enough for fuzzing.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Bytes drawn mostly from `alphabet`, now and then anything.
    fn text(&mut self, alphabet: &[u8], max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| {
                if self.chance(16) {
                    self.next() as u8
                } else {
                    *self.pick(alphabet)
                }
            })
            .collect()
    }

    /// A few edits of `input`: bit flips, byte changes, truncation, insertion,
    /// deletion, duplication of a slice.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(6) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 if at < out.len() => out[at] = *self.pick(TOKEN_ALPHABET),
                2 => out.truncate(at),
                3 => out.insert(at, *self.pick(TOKEN_ALPHABET)),
                4 if at < out.len() => {
                    out.remove(at);
                }
                _ => {
                    let end = at + self.below(out.len() - at + 1);
                    let slice = out[at..end].to_vec();
                    let to = self.below(out.len() + 1);
                    out.splice(to..to, slice);
                }
            }
        }
        out
    }
}

const TOKEN_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \0";

fn budget() -> Duration {
    Duration::from_millis(
        std::env::var("KMS_FUZZ_MILLIS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    )
}

fn seed() -> u64 {
    std::env::var("KMS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            u64::from_le_bytes(crate::crypto::random::bytes::<8>().unwrap_or_default())
        })
}

/// Runs `body` with fresh randomness until the time budget or `max_iterations` is
/// spent. A panic, the library's or an assertion's, fails with the seed to replay.
fn fuzz(name: &str, max_iterations: u64, mut body: impl FnMut(&mut Rng)) {
    let seed = seed();
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut done = 0;
    while done < max_iterations && started.elapsed() < budget() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(&mut rng))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{name}: iteration {done} failed (replay with KMS_FUZZ_SEED={seed}): {message}");
        }
        done += 1;
    }
    assert!(done > 0, "{name}: no iteration ran");
    eprintln!(
        "{name}: {done} inputs in {:?} (seed {seed})",
        started.elapsed()
    );
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn key(algorithm: SigningAlgorithm) -> SigningKeyMaterial {
    let der = match algorithm {
        SigningAlgorithm::Rs256 => crate::crypto::signing::generate_rsa_pkcs1(),
        _ => crate::crypto::signing::generate_ed25519_pkcs8(),
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
    fuzz("token verifier", 200_000, |rng| {
        let which = rng.below(authorities.len());
        let authority = authorities[which];
        let own = &valid[which];
        let input: Vec<u8> = match rng.below(5) {
            0 => rng.bytes(300),
            1 => {
                // Three base64url-ish segments.
                let parts: Vec<String> = (0..3)
                    .map(|_| lossy(&rng.text(&TOKEN_ALPHABET[..64], 80)))
                    .collect();
                parts.join(".").into_bytes()
            }
            2 | 3 => {
                let token = rng_token(rng, &valid);
                rng.mutate(token.as_bytes())
            }
            _ => {
                // Header, claims and signature from different valid tokens.
                let a = rng_token(rng, &valid).to_owned();
                let b = rng_token(rng, &valid).to_owned();
                let c = rng_token(rng, &valid).to_owned();
                let seg = |t: &str, i: usize| t.split('.').nth(i).unwrap_or("").to_owned();
                format!("{}.{}.{}", seg(&a, 0), seg(&b, 1), seg(&c, 2)).into_bytes()
            }
        };
        let text = lossy(&input);
        let verified = authority.verify(&text);
        if !own.contains(&text) {
            assert!(
                verified.is_err(),
                "a forged token verified: {text:?} with authority {which}"
            );
        }
    });
}

fn rng_token<'a>(rng: &mut Rng, valid: &'a [Vec<String>]) -> &'a str {
    let set = rng.pick(valid);
    rng.pick(set).as_str()
}

/// API keys: the checksum refuses random text and every mutation of a valid key; the
/// display prefix is a short start of the key.
#[test]
fn api_key_checksum_refuses_typos_and_noise() {
    let keys: Vec<String> = (0..8).map(|_| api_key::generate().unwrap()).collect();
    fuzz("api key parser", 500_000, |rng| {
        let key = rng.pick(&keys).clone();
        let input = match rng.below(3) {
            0 => rng.bytes(80),
            1 => {
                let mut v = b"kms_".to_vec();
                v.extend(rng.text(b"0123456789ABCDEFabcdefXYZxyz", 60));
                v
            }
            _ => {
                let key = key.clone();
                rng.mutate(key.as_bytes())
            }
        };
        let text = lossy(&input);
        let ok = api_key::checksum_ok(&text);
        if keys.contains(&text) {
            assert!(ok);
        } else {
            assert!(!ok, "{text:?} passed the checksum");
        }
        let shown = api_key::display_prefix(&text);
        assert!(shown.chars().count() <= api_key::DISPLAY_PREFIX_LEN);
        assert!(text.starts_with(&shown));
        assert_eq!(api_key::claims_kms_format(&text), text.starts_with("kms_"));
    });
}

/// The `authorization` header: only one header of the form `Bearer <token>` gives a
/// token, which is never empty and never has whitespace around it.
#[test]
fn bearer_header_parser() {
    const PIECES: &[&str] = &[
        "Bearer", "bearer", "BEARER", "Basic", " ", "  ", "\t", "tok", "a.b.c", ",", "=", "",
    ];
    fuzz("bearer header parser", 500_000, |rng| {
        let value: Vec<u8> = if rng.chance(3) {
            rng.bytes(60)
        } else {
            (0..rng.below(5))
                .flat_map(|_| rng.pick(PIECES).as_bytes().to_vec())
                .collect()
        };
        let text = lossy(&value);
        if let Some(token) = bearer::bearer_token(&text) {
            assert!(!token.is_empty() && token == token.trim(), "{text:?}");
            let (scheme, _) = text.split_once(' ').unwrap();
            assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
        }
        let mut headers = HeaderMap::new();
        let count = rng.below(3);
        for _ in 0..count {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.append(AUTHORIZATION, v);
            }
        }
        match (
            headers.get_all(AUTHORIZATION).iter().count(),
            bearer::from_headers(&headers),
        ) {
            (0, result) => assert_eq!(result, Ok(None)),
            (1, Ok(Some(token))) => assert!(!token.is_empty()),
            (1, Ok(None)) => panic!("a header was sent: {text:?}"),
            (_, Ok(_)) => panic!("two headers must be refused: {text:?}"),
            (_, Err(_)) => {}
        }
    });
}

type Validator = fn(&str) -> crate::domain::Result<()>;

/// Page tokens: a token decodes only to a name the validator accepts, and then it is
/// exactly the token the server would have made; anything else is INVALID_ARGUMENT
/// naming page_token.
#[test]
fn page_token_decoder() {
    let names = ["billing", "svc-a", "Z_9", "a", "x@y.z", "12345"];
    fuzz("page token decoder", 500_000, |rng| {
        let input = match rng.below(4) {
            0 => lossy(&rng.text(&TOKEN_ALPHABET[..64], 60)),
            1 => URL_SAFE_NO_PAD.encode(rng.bytes(40)),
            2 => {
                let mut v = b"v1:".to_vec();
                v.extend(rng.bytes(20));
                URL_SAFE_NO_PAD.encode(v)
            }
            _ => {
                let name: &&str = rng.pick(&names);
                let token = paging::encode(name);
                lossy(&rng.mutate(token.as_bytes()))
            }
        };
        let checks: [(&str, Validator); 3] = [
            ("service_name", validate::service_name),
            ("username", validate::username),
            ("audit id", |id| {
                id.parse::<i64>()
                    .map(drop)
                    .map_err(|_| Error::invalid("page_token", "malformed"))
            }),
        ];
        for (what, check) in checks {
            match paging::decode(&input, check) {
                Ok(None) => assert!(input.is_empty()),
                Ok(Some(last)) => {
                    assert!(check(&last).is_ok(), "{what}: {last:?}");
                    assert_eq!(paging::encode(&last), input, "{what}: not canonical");
                }
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "page_token"),
                Err(other) => panic!("{what}: {input:?} gave {other:?}"),
            }
        }
    });
}
