//! EdDSA signing keys: kid, JWKS, validation by another JWT library, rotation.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwt_compact::{Algorithm as _, AlgorithmExt, UntrustedToken, alg::Ed25519, jwk::JsonWebKey};
use kms::{domain::token::SigningAlgorithm, proto::kms::v1 as pb};
use tonic::Code;

use crate::{
    both_backends,
    common::{ADMIN, Backend, TestServer, assert_status, authed, claims, now},
};

async fn eddsa(backend: Backend, ttl: i64) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.jwt_algorithm = SigningAlgorithm::EdDsa;
        c.jwt_secret = None;
        c.access_token_ttl_seconds = ttl;
    })
    .await
}

async fn jwks(server: &TestServer) -> pb::GetJwksResponse {
    server
        .auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Validates a token the way a gateway would: another JWT library, the JWKS only.
fn validate_elsewhere(token: &str, jwks_json: &str) -> Result<serde_json::Value, String> {
    let set: serde_json::Value = serde_json::from_str(jwks_json).map_err(|e| e.to_string())?;
    let untrusted = UntrustedToken::new(token).map_err(|e| e.to_string())?;
    let kid = untrusted.header().key_id.clone().ok_or("no kid")?;
    let key_json = set["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or("kid not in the JWKS")?;
    let jwk: JsonWebKey<'_> =
        serde_json::from_value(key_json.clone()).map_err(|e| e.to_string())?;
    let public = <Ed25519 as jwt_compact::Algorithm>::VerifyingKey::try_from(&jwk)
        .map_err(|e| e.to_string())?;
    let token = Ed25519
        .validator::<serde_json::Value>(&public)
        .validate(&untrusted)
        .map_err(|e| e.to_string())?;
    let _ = Ed25519.name();
    Ok(token.claims().custom.clone())
}

both_backends!(
    eddsa_is_the_default_and_peers_validate_from_the_jwks,
    rotation_keeps_old_tokens_valid_until_they_expire
);

async fn eddsa_is_the_default_and_peers_validate_from_the_jwks(backend: Backend) {
    let server = eddsa(backend, 3600).await;
    let token = server.admin_token().await;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let set = jwks(&server).await;
    assert_eq!(set.keys.len(), 1);
    let key = &set.keys[0];
    assert_eq!(
        (
            key.kty.as_str(),
            key.crv.as_str(),
            key.alg.as_str(),
            key.r#use.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!(Some(key.kid.clone()), header.kid);
    assert_eq!(URL_SAFE_NO_PAD.decode(&key.x).unwrap().len(), 32);

    let seen = validate_elsewhere(&token, &set.jwks_json).expect("a peer validates the token");
    assert_eq!(seen["sub"], ADMIN);
    assert_eq!(seen["iss"], "kms");

    // The KMS itself accepts it everywhere.
    let v = server
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    server
        .keys()
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 0,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .unwrap();

    // Forgeries: HS256 signed with the public key as the secret (algorithm confusion),
    // an unknown kid, alg none, and a tampered payload.
    let public = URL_SAFE_NO_PAD.decode(&key.x).unwrap();
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some(key.kid.clone());
    let forged_claims = claims(ADMIN, &["admin"], now(), 600);
    let confusion = jsonwebtoken::encode(
        &confused,
        &forged_claims,
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let mut unknown = Header::new(Algorithm::HS256);
    unknown.kid = Some("not-a-kms-key".into());
    let unknown_kid =
        jsonwebtoken::encode(&unknown, &forged_claims, &EncodingKey::from_secret(b"x")).unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["roles"] = serde_json::json!(["admin", "superuser"]);
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = parts.join(".");
    for forged in [
        confusion,
        unknown_kid,
        tampered,
        crate::common::alg_none_token(&forged_claims),
    ] {
        let v = server
            .auth()
            .validate_token(pb::ValidateTokenRequest {
                token: forged.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!v.valid, "{forged:.40}");
        assert_status(
            server
                .keys()
                .list_keys(authed(
                    pb::ListKeysRequest {
                        page_size: 0,
                        page_token: String::new(),
                    },
                    &forged,
                ))
                .await,
            Code::Unauthenticated,
            "",
        );
    }
    server.stop().await;
}

async fn rotation_keeps_old_tokens_valid_until_they_expire(backend: Backend) {
    let server = eddsa(backend, 3).await;
    let old_token = server.admin_token().await;
    let old_kid = kid_of(&old_token);

    // Only admins rotate.
    let user = server.user_token("someone").await;
    assert_status(
        server
            .auth()
            .rotate_signing_key(authed(pb::RotateSigningKeyRequest {}, &user))
            .await,
        Code::PermissionDenied,
        "admin",
    );
    assert_status(
        server
            .auth()
            .rotate_signing_key(pb::RotateSigningKeyRequest {})
            .await,
        Code::Unauthenticated,
        "",
    );

    let new_kid = server
        .auth()
        .rotate_signing_key(authed(pb::RotateSigningKeyRequest {}, &old_token))
        .await
        .unwrap()
        .into_inner()
        .kid;
    assert_ne!(new_kid, old_kid);
    let new_token = server.admin_token().await;
    assert_eq!(
        kid_of(&new_token),
        new_kid,
        "new tokens use the new key at once"
    );
    let set = jwks(&server).await;
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone()).collect();
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "{kids:?}"
    );
    // Tokens signed by the old key still work, here and for peers.
    let v = server
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: old_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    validate_elsewhere(&old_token, &set.jwks_json).unwrap();

    // Once every token the old key signed has expired, it leaves the JWKS.
    // (Token lifetime 3 s, plus the 10 s allowed to replicas that signed with it
    // before their next re-read of the keys.)
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(
        jwks(&server).await.keys.len(),
        2,
        "still covering other replicas"
    );
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    let kids: Vec<_> = jwks(&server)
        .await
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, vec![new_kid]);
    server.stop().await;
}

both_backends!(hs256_publishes_nothing_and_cannot_rotate_keys);

async fn hs256_publishes_nothing_and_cannot_rotate_keys(backend: Backend) {
    let server = TestServer::start(backend).await;
    assert!(jwks(&server).await.keys.is_empty());
    let admin = server.admin_token().await;
    assert_status(
        server
            .auth()
            .rotate_signing_key(authed(pb::RotateSigningKeyRequest {}, &admin))
            .await,
        Code::FailedPrecondition,
        "KMS_JWT_SECRET",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_served_over_http_too() {
    let server = eddsa(Backend::Sqlite, 600).await;
    let token = server.admin_token().await;
    let (status, body) = kms::http::http_get(server.http_addr, "/.well-known/jwks.json")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let grpc = jwks(&server).await;
    let http: serde_json::Value = serde_json::from_str(&body).unwrap();
    let grpc_json: serde_json::Value = serde_json::from_str(&grpc.jwks_json).unwrap();
    assert_eq!(http, grpc_json);
    validate_elsewhere(&token, &body).expect("the HTTP JWKS validates tokens");
    server.stop().await;
}

both_backends!(rs256_by_configuration);

async fn rs256_by_configuration(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.jwt_algorithm = SigningAlgorithm::Rs256;
        c.jwt_secret = None;
    })
    .await;
    let token = server.admin_token().await;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let set = jwks(&server).await;
    assert_eq!(set.keys.len(), 1);
    let key = &set.keys[0];
    assert_eq!((key.kty.as_str(), key.alg.as_str()), ("RSA", "RS256"));
    assert_eq!(Some(key.kid.clone()), header.kid);
    assert!(
        URL_SAFE_NO_PAD.decode(&key.n).unwrap().len() >= 256,
        "a 2048-bit modulus"
    );
    assert_eq!(key.e, "AQAB");
    // A validator with nothing but the JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&set.jwks_json).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&key.kid).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.set_audience(&["kms"]);
    validation.set_issuer(&["kms"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], ADMIN);
    assert!(
        server
            .auth()
            .validate_token(pb::ValidateTokenRequest {
                token: token.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    // Rotation works the same way.
    let kid = server
        .auth()
        .rotate_signing_key(authed(pb::RotateSigningKeyRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .kid;
    assert_eq!(kid_of(&server.admin_token().await), kid);
    server.stop().await;
}

/// PostgreSQL only: SQLite serves one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn replicas_share_keys_and_follow_a_rotation_at_once() {
    follow_a_rotation(Backend::postgres()).await;
}

async fn follow_a_rotation(backend: Backend) {
    let a = eddsa(backend, 3600).await;
    let b = a.replica().await;
    let admin = a.admin_token().await;
    // One key set in the database: B accepts A's tokens and publishes the same JWKS.
    assert!(
        b.auth()
            .validate_token(pb::ValidateTokenRequest {
                token: admin.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    assert_eq!(jwks(&a).await.jwks_json, jwks(&b).await.jwks_json);

    let new_kid = a
        .auth()
        .rotate_signing_key(authed(pb::RotateSigningKeyRequest {}, &admin))
        .await
        .unwrap()
        .into_inner()
        .kid;
    let fresh = a.admin_token().await;
    assert_eq!(kid_of(&fresh), new_kid);
    // B has not re-read its keys yet, but a token naming an unknown key makes it.
    let v = b
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: fresh.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        v.valid,
        "B must accept A's token signed with the new key at once"
    );
    b.keys()
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &fresh,
        ))
        .await
        .unwrap();
    // From then on B signs with the new key too and publishes both.
    assert_eq!(kid_of(&b.admin_token().await), new_kid);
    assert_eq!(jwks(&b).await.keys.len(), 2);
    b.stop().await;
    a.stop().await;
}
