//! Access tokens: JWT claims, issuing and strict verification.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::caller::{Caller, Roles};
use crate::crypto::{CryptoError, random};

/// The token type returned by Login.
pub const TOKEN_TYPE: &str = "Bearer";
/// Tokens longer than this are rejected before any parsing: ours are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The shortest accepted HS256 secret: the hash output size (RFC 7518 section 3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub roles: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: String,
}

impl Claims {
    pub fn caller(&self) -> Caller {
        Caller {
            subject: self.sub.clone(),
            roles: self.roles.iter().cloned().collect(),
        }
    }
}

#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: i64,
}

/// Why a token was refused. Deliberately coarse: callers learn only "invalid".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is invalid or expired")]
    Invalid,
}

/// Issues and verifies access tokens. Built once at start: the algorithm is pinned
/// (a token naming any other `alg`, `none` included, is refused), leeway is zero, and
/// `exp`, `nbf`, `iss`, `aud` and `sub` are required.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_seconds: i64,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("algorithm", &Algorithm::HS256)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_seconds", &self.ttl_seconds)
            .finish_non_exhaustive()
    }
}

impl TokenAuthority {
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str, ttl_seconds: i64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_seconds,
        }
    }

    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    pub fn claims_for(
        &self,
        subject: &str,
        roles: &Roles,
        now: i64,
    ) -> Result<Claims, CryptoError> {
        Ok(Claims {
            sub: subject.to_owned(),
            roles: roles.to_vec(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.ttl_seconds),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: URL_SAFE_NO_PAD.encode(random::bytes::<16>()?),
        })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, CryptoError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| CryptoError::Token(e.to_string()))
    }

    pub fn issue(
        &self,
        subject: &str,
        roles: &Roles,
        now: i64,
    ) -> Result<IssuedToken, CryptoError> {
        let claims = self.claims_for(subject, roles, now)?;
        Ok(IssuedToken {
            token: self.sign(&claims)?,
            expires_in: self.ttl_seconds,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        if data.claims.sub.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn authority() -> TokenAuthority {
        TokenAuthority::hs256(SECRET, "kms", "kms", 3600)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn issued_tokens_verify_with_all_claims() {
        let a = authority();
        let issued = a.issue("alice", &Roles::user(), now()).unwrap();
        assert_eq!(issued.expires_in, 3600);
        let c = a.verify(&issued.token).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.roles, vec!["user"]);
        assert_eq!((c.iss.as_str(), c.aud.as_str()), ("kms", "kms"));
        assert_eq!(c.exp - c.iat, 3600);
        assert_eq!(c.nbf, c.iat);
        assert!(!c.jti.is_empty());
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused() {
        let a = authority();
        let mut c = a.claims_for("alice", &Roles::user(), now() - 7200).unwrap();
        assert_eq!(a.verify(&a.sign(&c).unwrap()), Err(TokenError::Invalid));
        c = a.claims_for("alice", &Roles::user(), now()).unwrap();
        c.exp = now() - 1;
        assert_eq!(a.verify(&a.sign(&c).unwrap()), Err(TokenError::Invalid));
        c = a.claims_for("alice", &Roles::user(), now()).unwrap();
        c.nbf = now() + 60;
        assert_eq!(a.verify(&a.sign(&c).unwrap()), Err(TokenError::Invalid));
    }

    #[test]
    fn other_secret_issuer_or_audience_is_refused() {
        let token = authority()
            .issue("alice", &Roles::user(), now())
            .unwrap()
            .token;
        let other = TokenAuthority::hs256(b"another-secret-another-secret-xx", "kms", "kms", 60);
        assert!(other.verify(&token).is_err());
        let wrong_iss = TokenAuthority::hs256(SECRET, "other", "kms", 60);
        assert!(wrong_iss.verify(&token).is_err());
        let wrong_aud = TokenAuthority::hs256(SECRET, "kms", "other", 60);
        assert!(wrong_aud.verify(&token).is_err());
    }

    #[test]
    fn alg_none_and_garbage_are_refused() {
        let a = authority();
        let c = a
            .claims_for("root", &Roles::from_iter(["admin".to_owned()]), now())
            .unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json_like(&c));
        assert!(a.verify(&format!("{header}.{body}.")).is_err());
        assert!(a.verify(&format!("{header}.{body}")).is_err());
        for junk in ["", ".", "..", "a.b.c", "Bearer x", &"x".repeat(10_000)] {
            assert!(a.verify(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn missing_required_claims_are_refused() {
        #[derive(Serialize)]
        struct NoExp<'a> {
            sub: &'a str,
            roles: Vec<String>,
            iat: i64,
            nbf: i64,
            iss: &'a str,
            aud: &'a str,
            jti: &'a str,
        }
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp {
                sub: "a",
                roles: vec![],
                iat: now(),
                nbf: now(),
                iss: "kms",
                aud: "kms",
                jti: "j",
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(authority().verify(&t).is_err());
    }

    fn serde_json_like(c: &Claims) -> String {
        format!(
            r#"{{"sub":"{}","roles":["admin"],"iat":{},"nbf":{},"exp":{},"iss":"kms","aud":"kms","jti":"x"}}"#,
            c.sub, c.iat, c.nbf, c.exp
        )
    }
}
