//! One stored sealed value of each kind, for checking at start that the configured
//! master key is the one they were sealed with.

use sea_orm::{EntityTrait, QueryOrder, QuerySelect};

use super::{
    Store, StoreError,
    entities::{api_key, api_key_secret, signing_key},
};

/// A sealed value with what its associated data is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSample {
    /// The service name of an API key secret, the `kid` of a signing key.
    pub owner: String,
    pub sealed: Vec<u8>,
}

/// The newest sealed value of each kind; `None` for a kind with no row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSamples {
    pub api_key_secret: Option<SealedSample>,
    pub signing_key: Option<SealedSample>,
}

impl Store {
    pub async fn sealed_samples(&self) -> Result<SealedSamples, StoreError> {
        let api_key_secret = api_key_secret::Entity::find()
            .find_also_related(api_key::Entity)
            .order_by_desc(api_key_secret::Column::Id)
            .limit(1)
            .one(&self.db)
            .await?
            .and_then(|(secret, key)| {
                key.map(|key| SealedSample {
                    owner: key.service_name,
                    sealed: secret.sealed,
                })
            });
        let signing_key = signing_key::Entity::find()
            .order_by_desc(signing_key::Column::Id)
            .limit(1)
            .one(&self.db)
            .await?
            .map(|key| SealedSample {
                owner: key.kid,
                sealed: key.private_sealed,
            });
        Ok(SealedSamples {
            api_key_secret,
            signing_key,
        })
    }
}
