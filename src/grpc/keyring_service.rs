//! `kms.v1.Keyring`.

use tonic::{Request, Response, Status};

use super::{auth_layer::caller, convert::timestamp};
use crate::{
    domain::keyring::{self, Keyring, KeyringStatus},
    proto::kms::v1::{self as pb, keyring_server},
};

pub struct KeyringApi {
    service: Keyring,
}

impl KeyringApi {
    pub fn new(service: Keyring) -> Self {
        Self { service }
    }
}

fn status(s: KeyringStatus) -> pb::KeyringStatus {
    pb::KeyringStatus {
        master_key_id: s.master_key_id,
        data_keys: s
            .data_keys
            .into_iter()
            .map(|k| pb::DataKey {
                id: keyring::data_key_name(k.id),
                created_at: Some(timestamp(k.created_at)),
                current: k.current,
                sealed_values: k.sealed_values,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl keyring_server::Keyring for KeyringApi {
    async fn get_keyring(
        &self,
        mut request: Request<pb::GetKeyringRequest>,
    ) -> Result<Response<pb::KeyringStatus>, Status> {
        let caller = caller(&mut request)?;
        Ok(Response::new(status(self.service.status(&caller).await?)))
    }

    async fn rotate_data_key(
        &self,
        mut request: Request<pb::RotateDataKeyRequest>,
    ) -> Result<Response<pb::KeyringStatus>, Status> {
        let caller = caller(&mut request)?;
        Ok(Response::new(status(self.service.rotate(&caller).await?)))
    }

    async fn rewrap_secrets(
        &self,
        mut request: Request<pb::RewrapSecretsRequest>,
    ) -> Result<Response<pb::RewrapSecretsResponse>, Status> {
        let caller = caller(&mut request)?;
        let done = self.service.rewrap_secrets(&caller).await?;
        Ok(Response::new(pb::RewrapSecretsResponse {
            rewrapped: done.rewrapped,
            remaining: done.remaining,
        }))
    }
}
