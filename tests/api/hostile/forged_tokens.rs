//! Forged access tokens against each signing algorithm: `alg: none`, HMAC keyed with
//! the public key, unknown and misleading `kid`s, a real token with another `alg`,
//! keys embedded in the header (`jwk`, `jku`, `x5u`, `x5c`), and the real key signing
//! claims that are expired, not yet valid, for another issuer or audience, or for no
//! live login.

use std::sync::Arc;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kms::{
    domain::{
        keyring::Keyring,
        signing::SigningKeys,
        token::{SigningAlgorithm, SigningKeyMaterial},
    },
    proto::kms::v1 as pb,
    store::{Store, StoreOptions},
};
use proptest::{prelude::*, sample::select, test_runner::TestCaseResult};
use tonic::{
    Code, Request,
    metadata::{AsciiMetadataValue, MetadataMap},
};

use crate::{
    both_backends,
    common::{ADMIN, Backend, JWT_SECRET, TestServer, authed, now},
};

use super::{oracle::*, values::*, *};

both_backends!(
    forged_tokens_eddsa,
    forged_tokens_rs256,
    forged_tokens_hs256
);

async fn forged_tokens_eddsa(backend: Backend) {
    forged_tokens(backend, SigningAlgorithm::EdDsa).await;
}

async fn forged_tokens_rs256(backend: Backend) {
    forged_tokens(backend, SigningAlgorithm::Rs256).await;
}

async fn forged_tokens_hs256(backend: Backend) {
    forged_tokens(backend, SigningAlgorithm::Hs256).await;
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token from a header and claims given as JSON, signed by `sign` (or unsigned).
fn token_of(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: Option<(&EncodingKey, Algorithm)>,
) -> String {
    let input = format!(
        "{}.{}",
        b64(serde_json::to_vec(header).unwrap()),
        b64(serde_json::to_vec(claims).unwrap())
    );
    let signature = match sign {
        Some((key, alg)) => jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{input}.{signature}")
}

/// DER: a tag, a length and the content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Every form of the server's public key a confused verifier might use as an HMAC
/// secret: raw bytes, DER (SPKI, PKCS#1), PEM with and without the final newline, the
/// base64url text, the JWK and the whole JWKS.
fn public_key_forms(jwk: &pb::Jwk, jwks_json: &str) -> Vec<(String, Vec<u8>)> {
    let mut forms = Vec::new();
    let key_json = serde_json::from_str::<serde_json::Value>(jwks_json).unwrap()["keys"][0].clone();
    forms.push(("jwk json".into(), serde_json::to_vec(&key_json).unwrap()));
    forms.push(("jwks json".into(), jwks_json.as_bytes().to_vec()));
    let (spki, pkcs1) = if jwk.kty == "OKP" {
        let x = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
        forms.push(("raw x".into(), x.clone()));
        forms.push(("x text".into(), jwk.x.as_bytes().to_vec()));
        let mut spki = hex_bytes("302a300506032b6570032100");
        spki.extend_from_slice(&x);
        (spki, None)
    } else {
        let n = URL_SAFE_NO_PAD.decode(&jwk.n).unwrap();
        let e = URL_SAFE_NO_PAD.decode(&jwk.e).unwrap();
        forms.push(("raw n".into(), n.clone()));
        forms.push(("n text".into(), jwk.n.as_bytes().to_vec()));
        let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
        let algorithm = hex_bytes("300d06092a864886f70d0101010500");
        let mut bits = vec![0u8];
        bits.extend_from_slice(&pkcs1);
        let spki = der(0x30, &[algorithm, der(0x03, &bits)].concat());
        (spki, Some(pkcs1))
    };
    let spki_pem = pem("PUBLIC KEY", &spki);
    forms.push(("spki pem".into(), spki_pem.clone().into_bytes()));
    forms.push((
        "spki pem, no newline".into(),
        spki_pem.trim_end().as_bytes().to_vec(),
    ));
    forms.push(("spki der".into(), spki));
    if let Some(pkcs1) = pkcs1 {
        forms.push((
            "pkcs1 pem".into(),
            pem("RSA PUBLIC KEY", &pkcs1).into_bytes(),
        ));
        forms.push(("pkcs1 der".into(), pkcs1));
    }
    forms
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The server's own signing key, opened from its database with its master key, as a
/// stolen-but-for-the-claims key: what it signs carries the real `kid`.
async fn server_key(
    server: &TestServer,
    algorithm: SigningAlgorithm,
) -> (EncodingKey, Option<String>) {
    if algorithm == SigningAlgorithm::Hs256 {
        return (EncodingKey::from_secret(JWT_SECRET), None);
    }
    let store = Store::connect(&StoreOptions {
        url: server.db_url().to_owned(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let master = server.config().open_master_key().unwrap();
    let keyring = Keyring::unlock(store.clone(), master, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let keys: Vec<SigningKeyMaterial> = SigningKeys::new(store, keyring, algorithm, 3600)
        .load()
        .await
        .unwrap();
    let current = keys.iter().find(|k| k.current).unwrap();
    let key = match algorithm {
        SigningAlgorithm::Rs256 => EncodingKey::from_rsa_der(&current.private_pkcs8),
        _ => EncodingKey::from_ed_der(&current.private_pkcs8),
    };
    (key, Some(current.kid.clone()))
}

/// A key of the forger's own, of the given algorithm, with its public JWK.
fn own_key(algorithm: Algorithm) -> (EncodingKey, jsonwebtoken::jwk::Jwk) {
    let key = match algorithm {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_der(&kms::crypto::signing::generate_rsa_pkcs1().unwrap())
        }
        _ => EncodingKey::from_ed_der(&kms::crypto::signing::generate_ed25519_pkcs8().unwrap()),
    };
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, algorithm).unwrap();
    (key, jwk)
}

/// Whether a presented token is refused everywhere: introspection says invalid, a
/// protected call and an admin-only registration are UNAUTHENTICATED.
async fn refused(ctx: &Ctx, label: &str, token: &str) -> TestCaseResult {
    let what = format!("forged token ({label}) {}", short(&token));
    let answer = ctx
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: token.to_owned(),
        })
        .await;
    judge(&what, &answer, &codes(&[Code::Ok]))?;
    prop_assert_eq!(
        answer.unwrap().into_inner(),
        pb::ValidateTokenResponse::default(),
        "{}",
        what
    );
    let Ok(header) = AsciiMetadataValue::try_from(format!("Bearer {token}")) else {
        return Ok(());
    };
    let mut meta = MetadataMap::new();
    meta.insert("authorization", header);
    let create = ctx
        .keys()
        .create_key(Request::from_parts(
            meta.clone(),
            Default::default(),
            pb::CreateKeyRequest {
                service_name: "forged-key".into(),
                ..Default::default()
            },
        ))
        .await;
    judge(&what, &create, &codes(&[Code::Unauthenticated]))?;
    let register = ctx
        .auth()
        .register(Request::from_parts(
            meta,
            Default::default(),
            pb::RegisterRequest {
                username: "forged-admin".into(),
                password: "forged-password-1".into(),
                roles: vec!["admin".into()],
            },
        ))
        .await;
    judge(&what, &register, &codes(&[Code::Unauthenticated]))
}

async fn forged_tokens(backend: Backend, algorithm: SigningAlgorithm) {
    let server = TestServer::start_with(backend, |c| {
        c.jwt_algorithm = algorithm;
        if algorithm != SigningAlgorithm::Hs256 {
            c.jwt_secret = None;
        }
    })
    .await;
    let ctx = Ctx::start(&server).await;
    let real = ctx.admin.clone();
    let parts: Vec<&str> = real.split('.').collect();
    let real_header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let real_claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let alg = algorithm.jose();
    let (key, kid) = server_key(&server, algorithm).await;
    let sign_real = |claims: &serde_json::Value| {
        let mut header = Header::new(alg);
        header.kid.clone_from(&kid);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    };

    // The forging works: the real key re-signing the real claims makes a valid token.
    let control = sign_real(&real_claims);
    assert!(
        ctx.auth()
            .validate_token(pb::ValidateTokenRequest { token: control })
            .await
            .unwrap()
            .into_inner()
            .valid,
        "the re-signed real claims must verify"
    );

    let mut forged: Vec<(String, String)> = Vec::new();
    let kid_json = serde_json::json!(kid);

    // alg none, in every spelling, with and without the real kid.
    for none in ["none", "None", "NONE", "nOnE"] {
        add(
            &mut forged,
            &real_claims,
            &format!("alg {none}"),
            serde_json::json!({"alg": none, "typ": "JWT"}),
            None,
        );
        add(
            &mut forged,
            &real_claims,
            &format!("alg {none} with kid"),
            serde_json::json!({"alg": none, "kid": kid_json}),
            None,
        );
    }
    forged.push((
        "alg none, real signature".into(),
        format!(
            "{}.{}.{}",
            b64(serde_json::to_vec(&serde_json::json!({"alg": "none"})).unwrap()),
            parts[1],
            parts[2]
        ),
    ));
    // The real token with its header's alg changed (signature kept).
    for other in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "EdDSA", "ED25519",
        "eddsa", "hs256", "",
    ] {
        if other == alg_name(alg) {
            continue;
        }
        let mut header = real_header.clone();
        header["alg"] = serde_json::json!(other);
        forged.push((
            format!("alg changed to {other:?}"),
            format!(
                "{}.{}.{}",
                b64(serde_json::to_vec(&header).unwrap()),
                parts[1],
                parts[2]
            ),
        ));
    }
    // HMAC keyed with the public key, in every form.
    let jwks = ctx
        .auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut secrets: Vec<(String, Vec<u8>)> = match jwks.keys.first() {
        Some(jwk) => public_key_forms(jwk, &jwks.jwks_json),
        None => vec![
            ("secret + newline".into(), [JWT_SECRET, b"\n"].concat()),
            (
                "half the secret".into(),
                JWT_SECRET[..JWT_SECRET.len() / 2].to_vec(),
            ),
            ("empty secret".into(), Vec::new()),
        ],
    };
    secrets.push((
        "jwks json of the server".into(),
        jwks.jwks_json.into_bytes(),
    ));
    for (form, secret) in &secrets {
        let hmac = EncodingKey::from_secret(secret);
        for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            add(
                &mut forged,
                &real_claims,
                &format!("{hs:?} keyed with {form}, real kid"),
                serde_json::json!({"alg": alg_name(hs), "kid": kid_json}),
                Some((&hmac, hs)),
            );
            add(
                &mut forged,
                &real_claims,
                &format!("{hs:?} keyed with {form}, no kid"),
                serde_json::json!({"alg": alg_name(hs)}),
                Some((&hmac, hs)),
            );
        }
    }
    // Keys of the forger's own: unknown and misleading kids, the real kid with another
    // algorithm, and keys embedded in the header.
    let (own_ed, own_ed_jwk) = own_key(Algorithm::EdDSA);
    let (own_rsa, own_rsa_jwk) = own_key(Algorithm::RS256);
    let real_kid = kid.clone().unwrap_or_default();
    for (own, own_alg, own_jwk) in [
        (&own_ed, Algorithm::EdDSA, &own_ed_jwk),
        (&own_rsa, Algorithm::RS256, &own_rsa_jwk),
    ] {
        let name = alg_name(own_alg);
        for bad_kid in [
            serde_json::json!("not-a-kms-key"),
            serde_json::json!(""),
            serde_json::json!("\0"),
            serde_json::json!("../../../../etc/passwd"),
            serde_json::json!("' OR '1'='1"),
            serde_json::json!(real_kid.to_uppercase()),
            serde_json::json!(format!("{real_kid} ")),
            serde_json::json!(real_kid),
            serde_json::json!(["array", "kid"]),
            serde_json::json!(42),
            serde_json::json!(null),
        ] {
            add(
                &mut forged,
                &real_claims,
                &format!("own {name} key, kid {bad_kid}"),
                serde_json::json!({"alg": name, "kid": bad_kid}),
                Some((own, own_alg)),
            );
        }
        add(
            &mut forged,
            &real_claims,
            &format!("own {name} key, no kid"),
            serde_json::json!({"alg": name}),
            Some((own, own_alg)),
        );
        let own_jwk = serde_json::to_value(own_jwk).unwrap();
        for extra in [
            serde_json::json!({"jwk": own_jwk}),
            serde_json::json!({"jwk": own_jwk, "kid": real_kid}),
            serde_json::json!({"jku": "http://127.0.0.1:1/jwks.json", "kid": "own"}),
            serde_json::json!({"jku": "http://127.0.0.1:1/jwks.json", "kid": real_kid}),
            serde_json::json!({"x5u": "http://127.0.0.1:1/cert.pem", "kid": real_kid}),
            serde_json::json!({"x5c": [STANDARD.encode(b"not a certificate")], "kid": real_kid}),
            serde_json::json!({"crit": ["exp"], "kid": real_kid}),
        ] {
            let mut header = extra.clone();
            header["alg"] = serde_json::json!(name);
            add(
                &mut forged,
                &real_claims,
                &format!("own {name} key, header {extra}"),
                header,
                Some((own, own_alg)),
            );
        }
    }
    // The real key, signing claims that must not pass.
    let t = now();
    let mut claim_edits: Vec<(&str, serde_json::Value)> = vec![
        (
            "expired",
            serde_json::json!({"iat": t - 7200, "nbf": t - 7200, "exp": t - 10}),
        ),
        ("not yet valid", serde_json::json!({"nbf": t + 600})),
        ("issued in the future", serde_json::json!({"iat": t + 600})),
        ("other issuer", serde_json::json!({"iss": "other"})),
        ("empty issuer", serde_json::json!({"iss": ""})),
        ("other audience", serde_json::json!({"aud": "other"})),
        ("audience list", serde_json::json!({"aud": ["other"]})),
        ("another user's name", serde_json::json!({"sub": "alice"})),
        ("empty subject", serde_json::json!({"sub": ""})),
        ("NUL subject", serde_json::json!({"sub": "root\0"})),
        ("unknown login", serde_json::json!({"sid": "no-such-login"})),
        ("empty login", serde_json::json!({"sid": ""})),
        ("NUL login", serde_json::json!({"sid": "\0"})),
        ("long login", serde_json::json!({"sid": "s".repeat(3000)})),
        ("old token version", serde_json::json!({"ver": -1})),
        ("newer token version", serde_json::json!({"ver": 1})),
        (
            "exp as text",
            serde_json::json!({"exp": (t + 600).to_string()}),
        ),
        ("exp far too large", serde_json::json!({"exp": 1e30})),
        ("exp negative", serde_json::json!({"exp": -1})),
        ("roles as text", serde_json::json!({"roles": "admin"})),
    ];
    for missing in ["exp", "nbf", "iss", "aud", "sub", "sid", "ver", "roles"] {
        claim_edits.push((missing, serde_json::json!({ missing: null })));
    }
    for (label, edit) in claim_edits {
        let mut claims = real_claims.clone();
        for (field, value) in edit.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value.clone();
            }
        }
        forged.push((format!("real key, {label}"), sign_real(&claims)));
    }
    for (label, claims) in [
        ("claims an array", serde_json::json!([real_claims.clone()])),
        ("claims null", serde_json::Value::Null),
        ("claims a number", serde_json::json!(1)),
    ] {
        forged.push((format!("real key, {label}"), sign_real(&claims)));
    }
    // The real key with a critical header extension (RFC 7515 section 4.1.11).
    for crit in [vec!["exp".to_owned()], vec![]] {
        let mut header = Header::new(alg);
        header.kid.clone_from(&kid);
        header.crit = Some(crit.clone());
        let token = jsonwebtoken::encode(&header, &real_claims, &key).unwrap();
        forged.push((format!("real key, crit {crit:?}"), token));
    }
    // The real token, reshaped.
    forged.push(("two segments".into(), format!("{}.{}", parts[0], parts[1])));
    forged.push(("four segments".into(), format!("{real}.{}", parts[2])));
    forged.push(("padded signature".into(), format!("{real}=")));
    forged.push((
        "standard base64".into(),
        [parts[0], parts[1], parts[2]]
            .map(|p| STANDARD.encode(URL_SAFE_NO_PAD.decode(p).unwrap()))
            .join("."),
    ));
    forged.push(("space inside".into(), real.replacen('.', ". ", 1)));
    forged.push((
        "header and claims swapped".into(),
        format!("{}.{}.{}", parts[1], parts[0], parts[2]),
    ));

    let before = snapshot(&ctx.db).await;
    let ctx2 = ctx.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        for (label, token) in &forged {
            ctx2.rt
                .block_on(refused(&ctx2, label, token))
                .map_err(|e| e.to_string())?;
        }
        Ok::<usize, String>(forged.len())
    })
    .await
    .unwrap();
    match outcome {
        Ok(n) => eprintln!("{}: {n} forged tokens refused", alg_name(alg)),
        Err(e) => panic!("{e}"),
    }
    unchanged("forged tokens", &before, &snapshot(&ctx.db).await).unwrap();

    // Claims at random, signed with the real key: valid exactly when they name the
    // admin's live login, its token version, the issuer and audience, and the current
    // time is within nbf..exp.
    let sid = real_claims["sid"].as_str().unwrap().to_owned();
    let ver = real_claims["ver"].as_i64().unwrap();
    let key = Arc::new(key);
    let ctx2 = ctx.clone();
    let sid2 = sid.clone();
    check(
        "signed random claims",
        move || {
            let t = now();
            (
                prop_oneof![3 => Just(ADMIN.to_owned()), 1 => hostile(valid_username)],
                prop_oneof![3 => Just(sid2), 1 => hostile(|| "[A-Za-z0-9_-]{22}")],
                prop_oneof![3 => Just(ver), 1 => any::<i64>()],
                prop_oneof![3 => Just("kms".to_owned()), 1 => hostile(|| "kms|KMS|kms |")],
                prop_oneof![3 => Just("kms".to_owned()), 1 => hostile(|| "kms|KMS|kms |")],
                select(vec![t + 3600, t - 3600, 0, -1, i64::MAX]),
                select(vec![t - 3600, t + 3600, 0]),
                roles(),
            )
        },
        move |(sub, sid_claim, ver_claim, iss, aud, exp, nbf, roles)| {
            let t = now();
            let claims = serde_json::json!({
                "sub": sub, "roles": roles, "iat": t - 3600, "nbf": nbf, "exp": exp,
                "iss": iss, "aud": aud, "jti": "j", "sid": sid_claim, "ver": ver_claim,
            });
            let valid = sub == ADMIN
                && sid_claim == sid
                && ver_claim == ver
                && iss == "kms"
                && aud == "kms"
                && exp > t
                && nbf <= t;
            let mut header = Header::new(alg);
            header.kid.clone_from(&kid);
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            // Tokens over 8 KiB are refused unread (the KMS issues a few hundred bytes).
            let valid = valid && token.len() <= 8 * 1024;
            let what = format!("signed claims {}", short(&claims));
            let ctx = ctx2.clone();
            ctx2.rt.block_on(async {
                let request = pb::ValidateTokenRequest {
                    token: token.clone(),
                };
                let expect = sized(&request, codes(&[Code::Ok]));
                let answer = ctx.auth().validate_token(request).await;
                judge(&what, &answer, &expect)?;
                let Ok(answer) = answer else {
                    return Ok(());
                };
                prop_assert_eq!(answer.into_inner().valid, valid, "{}", what);
                if token.len() > 15_000 {
                    // Over HTTP/2's 16 KiB of headers (see hostile_sizes): never sent.
                    return Ok(());
                }
                let expect = match (valid, roles.iter().any(|r| r == "admin")) {
                    (false, _) => codes(&[Code::Unauthenticated]),
                    (true, true) => codes(&[Code::Ok]),
                    (true, false) => codes(&[Code::PermissionDenied]),
                };
                case(
                    &ctx,
                    &what,
                    &expect,
                    ctx.keys()
                        .list_keys(authed(pb::ListKeysRequest::default(), &token)),
                )
                .await
            })
        },
    )
    .await;
    ctx.still_serving().await;
    server.stop().await;
}

fn add(
    forged: &mut Vec<(String, String)>,
    claims: &serde_json::Value,
    label: &str,
    header: serde_json::Value,
    sign: Option<(&EncodingKey, Algorithm)>,
) {
    forged.push((label.to_owned(), token_of(&header, claims, sign)));
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}
