//! Signing keys for access tokens, kept in the database so that every replica signs
//! and verifies with the same set; private halves sealed under the keyring's data key.

use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{
    Error, Result,
    audit::{self, action, outcome},
    keyring::Keyring,
    token::{SigningAlgorithm, SigningKeyMaterial, TokenAuthority, public_jwk},
};
use crate::{
    crypto::signing::{generate_ed25519_pkcs8, generate_rsa_pkcs1},
    store::{NewSigningKey, Store, StoredSigningKey},
};

/// How often every replica re-reads the signing keys (a replica that meets an unknown
/// `kid` re-reads at once).
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How much longer than the token lifetime a retired key keeps verifying: other
/// replicas may sign with it until their next refresh.
const RETIRED_KEY_MARGIN_SECONDS: i64 = 2 * REFRESH_INTERVAL.as_secs() as i64;

/// Associated data binding a sealed private key to its `kid`.
pub(super) fn aad(kid: &str) -> Vec<u8> {
    format!("kms signing key {kid}").into_bytes()
}

#[derive(Debug, Clone)]
pub struct SigningKeys {
    store: Store,
    keyring: Keyring,
    algorithm: SigningAlgorithm,
    /// Access token lifetime: how long a retired key must keep verifying.
    token_ttl_seconds: i64,
}

impl SigningKeys {
    pub fn new(
        store: Store,
        keyring: Keyring,
        algorithm: SigningAlgorithm,
        token_ttl_seconds: i64,
    ) -> Self {
        Self {
            store,
            keyring,
            algorithm,
            token_ttl_seconds,
        }
    }

    fn generate(&self) -> Result<NewSigningKey> {
        let private = match self.algorithm {
            SigningAlgorithm::Rs256 => generate_rsa_pkcs1()?,
            SigningAlgorithm::EdDsa | SigningAlgorithm::Hs256 => generate_ed25519_pkcs8()?,
        };
        let jwk = public_jwk(self.algorithm, &private)?;
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| Error::Internal("a generated JWK has no kid".into()))?;
        let public_jwk = serde_json::to_string(&jwk)
            .map_err(|e| Error::Internal(format!("JWK encoding: {e}")))?;
        let sealed = self.keyring.seal(&private, &aad(&kid))?;
        Ok(NewSigningKey {
            private_sealed: sealed.bytes,
            data_key_id: Some(sealed.data_key_id),
            kid,
            algorithm: self.algorithm.name().to_owned(),
            public_jwk,
        })
    }

    async fn open(&self, stored: &StoredSigningKey) -> Result<SigningKeyMaterial> {
        let private = self
            .keyring
            .open(&stored.private_sealed, &aad(&stored.kid))
            .await
            .map_err(|_| {
                Error::Internal(format!(
                    "signing key {} does not open with this server's keyring",
                    stored.kid
                ))
            })?;
        Ok(SigningKeyMaterial {
            kid: stored.kid.clone(),
            algorithm: self.algorithm,
            private_pkcs8: Zeroizing::new(private.to_vec()),
            current: stored.retired_at.is_none(),
            verify_until: stored.verify_until.map(|t| t.timestamp()),
        })
    }

    /// Every key of this algorithm that signs or may still verify a token.
    pub async fn load(&self) -> Result<Vec<SigningKeyMaterial>> {
        let name = self.algorithm.name();
        let mut keys = Vec::new();
        for stored in self.store.signing_keys_in_use(Utc::now()).await? {
            if stored.algorithm == name {
                keys.push(self.open(&stored).await?);
            }
        }
        Ok(keys)
    }

    /// The keys, creating the first one when there is none.
    pub async fn load_or_create(&self) -> Result<Vec<SigningKeyMaterial>> {
        let keys = self.load().await?;
        if keys.iter().any(|k| k.current) {
            return Ok(keys);
        }
        if self
            .store
            .insert_first_signing_key(self.generate()?, Utc::now())
            .await?
        {
            tracing::info!(
                algorithm = self.algorithm.name(),
                "first token signing key created"
            );
        }
        // Ours, or the one another replica stored a moment earlier.
        self.load().await
    }

    /// New tokens are signed with a new key at once; the old key keeps verifying
    /// until every token it signed has expired. Returns the new `kid`.
    pub async fn rotate(&self, actor: &str, tokens: &TokenAuthority) -> Result<String> {
        let kid = self.rotate_stored(actor).await?;
        tokens.replace_keys(&self.load().await?)?;
        Ok(kid)
    }

    /// The rotation in the database alone (`kms signing-key rotate`): running servers
    /// take the new key at their next refresh.
    pub async fn rotate_stored(&self, actor: &str) -> Result<String> {
        let now = Utc::now();
        let verify_until: DateTime<Utc> = now
            + super::seconds(
                self.token_ttl_seconds
                    .saturating_add(RETIRED_KEY_MARGIN_SECONDS),
            )?;
        let new = self.generate()?;
        let kid = new.kid.clone();
        let record = audit::event(actor, action::SIGNING_KEY_ROTATE, &kid, outcome::SUCCESS);
        self.store
            .rotate_signing_key(new, now, verify_until, record)
            .await?;
        tracing::info!(%kid, "token signing key rotated");
        Ok(kid)
    }

    /// Picks up keys rotated by other replicas and drops keys no token needs.
    pub async fn refresh(&self, tokens: &TokenAuthority) -> Result<()> {
        tokens.replace_keys(&self.load().await?)?;
        Ok(())
    }
}
