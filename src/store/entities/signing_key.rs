use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub kid: String,
    /// JOSE name: `EdDSA`.
    pub algorithm: String,
    /// The private key (PKCS#8 DER) sealed with AES-256-GCM under the master key.
    pub private_sealed: Vec<u8>,
    /// The public key as a JWK (RFC 7517) JSON object.
    pub public_jwk: String,
    pub created_at: DateTimeUtc,
    /// NULL for the key that signs new tokens.
    pub retired_at: Option<DateTimeUtc>,
    /// For a retired key: the end of the lifetime of the last token it signed.
    pub verify_until: Option<DateTimeUtc>,
    /// The data key that sealed `private_sealed`; NULL: the master key (the first
    /// release).
    pub data_key_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
