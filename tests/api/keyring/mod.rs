//! The key hierarchy: data key rotation and RewrapSecrets, replicas following a
//! rotation, `kms master-key rewrap`, databases of the first release, kill -9 during a
//! rewrap, and a master key inside SoftHSM.

mod cluster;
mod faults;
mod hsm;
mod master;
mod rotation;
mod upgrade;

use std::collections::BTreeMap;

use kms::{
    crypto::{master::Master, sealing::MasterKey},
    proto::kms::v1::{self as pb, keyring_client::KeyringClient, keys_client::KeysClient},
};
use tonic::transport::Channel;

use crate::common::authed;

/// The master key of the first release's fixtures (bytes 0..31), base64.
pub const FIXTURE_MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const FIXTURE_ADMIN: &str = "admin";
pub const FIXTURE_ADMIN_PASSWORD: &str = "fixture-admin-password";
pub const FIXTURE_BILLING: &str = "fixture_billing_secret_0123456789abcdefghij";
/// Sealed values in each fixture: 4 API key secrets and 1 private signing key.
pub const FIXTURE_SEALED: i64 = 5;

pub fn fixture_master_key() -> MasterKey {
    MasterKey::from_bytes(std::array::from_fn(|i| i as u8))
}

/// The public id of a master key given as bytes.
pub fn master_key_id(key: &MasterKey) -> String {
    Master::software(key).unwrap().id().to_owned()
}

pub fn keyring(channel: &Channel) -> KeyringClient<Channel> {
    KeyringClient::new(channel.clone())
}

pub async fn status(channel: &Channel, token: &str) -> pb::KeyringStatus {
    keyring(channel)
        .get_keyring(authed(pb::GetKeyringRequest {}, token))
        .await
        .unwrap()
        .into_inner()
}

pub async fn rotate(channel: &Channel, token: &str) -> pb::KeyringStatus {
    keyring(channel)
        .rotate_data_key(authed(pb::RotateDataKeyRequest {}, token))
        .await
        .unwrap()
        .into_inner()
}

/// RewrapSecrets until nothing remains: the values rewrapped in all, and the calls.
pub async fn rewrap_all(channel: &Channel, token: &str) -> (i64, usize) {
    let (mut total, mut calls) = (0, 0);
    loop {
        let done = keyring(channel)
            .rewrap_secrets(authed(pb::RewrapSecretsRequest {}, token))
            .await
            .unwrap()
            .into_inner();
        total += done.rewrapped;
        calls += 1;
        if done.remaining == 0 {
            return (total, calls);
        }
        assert!(calls < 1000, "RewrapSecrets does not progress: {done:?}");
    }
}

/// The audit events of one action, newest first.
pub async fn audit_events(channel: &Channel, token: &str, action: &str) -> Vec<pb::AuditEvent> {
    kms::proto::kms::v1::audit_client::AuditClient::new(channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                action: action.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
}

/// The current data key.
pub fn current(status: &pb::KeyringStatus) -> &pb::DataKey {
    let current: Vec<_> = status.data_keys.iter().filter(|k| k.current).collect();
    assert_eq!(current.len(), 1, "exactly one current data key: {status:?}");
    current[0]
}

/// Sealed values of the data key `id`.
pub fn sealed_under(status: &pb::KeyringStatus, id: &str) -> i64 {
    status
        .data_keys
        .iter()
        .find(|k| k.id == id)
        .unwrap_or_else(|| panic!("no data key {id} in {status:?}"))
        .sealed_values
}

pub fn create(name: &str, secret: Option<&str>) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        api_key: secret.map(Into::into),
        ..Default::default()
    }
}

/// Every key of `secrets` reads back its secret (GetKey) and verifies.
pub async fn all_open(channel: &Channel, token: &str, secrets: &BTreeMap<String, String>) {
    let mut keys = KeysClient::new(channel.clone());
    for (name, secret) in secrets {
        let got = keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: name.clone(),
                },
                token,
            ))
            .await
            .unwrap_or_else(|s| panic!("GetKey {name}: {s:?}"))
            .into_inner();
        assert_eq!(&got.api_key, secret, "GetKey {name}");
        let verified = keys
            .verify_key(authed(
                pb::VerifyKeyRequest {
                    api_key: secret.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(verified.valid, "VerifyKey {name}: {verified:?}");
    }
}
