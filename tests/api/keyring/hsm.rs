//! A master key inside a PKCS#11 token (SoftHSM), with `kms serve` as a subprocess:
//! from a file key into the token with `kms master-key rewrap`, then from one token
//! key to another; every wrong setting refused at start, naming the setting; the PIN
//! never in a log; no secret in the database.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt};

use kms::proto::kms::v1::keys_client::KeysClient;

use super::{all_open, create, master_key_id, rotate, status};
use crate::{
    both_backends,
    common::{
        Backend, authed,
        softhsm::{KEY, MODULE, PIN, SoftHsm, TOKEN},
    },
    process::Cluster,
};

const SECOND_KEY: &str = "kms-master-2";

both_backends!(a_master_key_in_softhsm);

async fn a_master_key_in_softhsm(backend: Backend) {
    let hsm = SoftHsm::standard();
    hsm.keygen_aes256(TOKEN, PIN, SECOND_KEY);
    let mut cluster = Cluster::new(&backend, &[]).await;
    let conf = hsm.conf().to_str().unwrap().to_owned();
    cluster.set_env("SOFTHSM2_CONF", Some(&conf));
    let pin_file = cluster.dir().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Begin with a master key file, as every existing installation does.
    let a = cluster.start("file").await;
    let admin = a.admin_token().await;
    let file_id = status(&a.channel(), &admin).await.master_key_id;
    let mut secrets = BTreeMap::new();
    for i in 0..5 {
        let made = a
            .keys()
            .create_key(authed(create(&format!("k{i}"), None), &admin))
            .await
            .unwrap()
            .into_inner();
        secrets.insert(format!("k{i}"), made.api_key);
    }
    a.kill9().await;

    // Into the token: the token settings without a key label, beside the file key.
    cluster.set_env("KMS_MASTER_KEY_PKCS11_MODULE", Some(MODULE));
    cluster.set_env("KMS_MASTER_KEY_PKCS11_TOKEN_LABEL", Some(TOKEN));
    cluster.set_env("KMS_MASTER_KEY_PKCS11_PIN_FILE", pin_file.to_str());
    let out = cluster
        .run(&["master-key", "rewrap", "--new-pkcs11-key-label", KEY])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains(&file_id), "{said}");

    // A file key and a token key at once: refused.
    cluster.set_env("KMS_MASTER_KEY_PKCS11_KEY_LABEL", Some(KEY));
    refused(&cluster, "KMS_MASTER_KEY_PKCS11_*").await;
    // The file key alone no longer opens the keyring.
    let file_key = cluster_master_key(&cluster);
    cluster.set_env("KMS_MASTER_KEY", None);

    let b = cluster.start("token").await;
    let admin = b.admin_token().await;
    let token_status = status(&b.channel(), &admin).await;
    let token_id = token_status.master_key_id.clone();
    assert_ne!(token_id, file_id);
    assert!(said.contains(&token_id), "{said}");
    all_open(&b.channel(), &admin, &secrets).await;
    // The keyring grows under the token key, and what it seals opens after a restart.
    rotate(&b.channel(), &admin).await;
    let made = KeysClient::new(b.channel())
        .create_key(authed(create("under-token", None), &admin))
        .await
        .unwrap()
        .into_inner();
    secrets.insert("under-token".into(), made.api_key);
    b.kill9().await;

    // Every wrong setting names itself; the PIN is never shown.
    cluster.set_env("KMS_MASTER_KEY_PKCS11_KEY_LABEL", Some("no-such-key"));
    refused(&cluster, "KMS_MASTER_KEY_PKCS11_KEY_LABEL").await;
    cluster.set_env("KMS_MASTER_KEY_PKCS11_KEY_LABEL", Some(KEY));
    cluster.set_env("KMS_MASTER_KEY_PKCS11_TOKEN_LABEL", Some("no-such-token"));
    refused(&cluster, "KMS_MASTER_KEY_PKCS11_TOKEN_LABEL").await;
    cluster.set_env("KMS_MASTER_KEY_PKCS11_TOKEN_LABEL", Some(TOKEN));
    cluster.set_env(
        "KMS_MASTER_KEY_PKCS11_MODULE",
        Some("/usr/lib/no-such-pkcs11.so"),
    );
    refused(&cluster, "KMS_MASTER_KEY_PKCS11_MODULE").await;
    cluster.set_env("KMS_MASTER_KEY_PKCS11_MODULE", Some(MODULE));
    let wrong_pin = "9999-wrong-pin";
    let wrong_pin_file = cluster.dir().join("wrong-pin");
    std::fs::write(&wrong_pin_file, wrong_pin).unwrap();
    cluster.set_env("KMS_MASTER_KEY_PKCS11_PIN_FILE", wrong_pin_file.to_str());
    let said = refused(&cluster, "KMS_MASTER_KEY_PKCS11_PIN").await;
    assert!(!said.contains(wrong_pin), "the PIN is shown: {said}");
    cluster.set_env("KMS_MASTER_KEY_PKCS11_PIN_FILE", pin_file.to_str());

    // From one token key to another.
    let out = cluster
        .run(&["master-key", "rewrap", "--new-pkcs11-key-label", SECOND_KEY])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = refused(&cluster, "does not open").await;
    assert!(said.contains(&token_id), "{said}");
    cluster.set_env("KMS_MASTER_KEY_PKCS11_KEY_LABEL", Some(SECOND_KEY));
    let c = cluster.start("second").await;
    let admin = c.admin_token().await;
    let now = status(&c.channel(), &admin).await;
    assert_ne!(now.master_key_id, token_id);
    assert_eq!(now.data_keys.len(), 2);
    all_open(&c.channel(), &admin, &secrets).await;

    // Nothing of the PIN or of the old file key in any log or output.
    for entry in std::fs::read_dir(cluster.dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap();
            assert!(!log.contains(PIN), "the PIN is in {}", path.display());
            assert!(
                !log.contains(&file_key),
                "the master key is in {}",
                path.display()
            );
        }
    }
    assert_eq!(file_id, master_key_id(&decode(&file_key)));
    drop(hsm);
}

/// `kms serve` refuses to start and says `needle`; returns what it said.
async fn refused(cluster: &Cluster, needle: &str) -> String {
    let out = cluster.run(&["serve"]).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "started, though it should not: {said}"
    );
    assert!(said.contains(needle), "no {needle:?} in: {said}");
    said
}

fn cluster_master_key(cluster: &Cluster) -> String {
    cluster
        .env_var("KMS_MASTER_KEY")
        .expect("the cluster's master key")
}

fn decode(b64: &str) -> kms::crypto::sealing::MasterKey {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let bytes: [u8; 32] = STANDARD.decode(b64).unwrap().try_into().unwrap();
    kms::crypto::sealing::MasterKey::from_bytes(bytes)
}
