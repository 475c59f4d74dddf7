//! `kms master-key rewrap` on a database of the first release, with a server running:
//! afterwards the new master key starts a server and the old one is refused, naming
//! both ids; the running server keeps serving meanwhile.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt};

use base64::{Engine, engine::general_purpose::STANDARD};
use kms::{crypto::sealing::MasterKey, proto::kms::v1 as pb};
use tonic::Code;

use super::{
    FIXTURE_ADMIN, FIXTURE_ADMIN_PASSWORD, FIXTURE_BILLING, FIXTURE_MASTER_KEY, FIXTURE_SEALED,
    all_open, audit_events, create, current, fixture_master_key, keyring, master_key_id,
    sealed_under, status,
};
use crate::{
    both_backends,
    common::{Backend, authed},
    process::Cluster,
};

both_backends!(master_key_rewrap_moves_the_keyring_to_the_new_key);

async fn master_key_rewrap_moves_the_keyring_to_the_new_key(backend: Backend) {
    let mut cluster = Cluster::new(&backend, &[("KMS_MASTER_KEY", FIXTURE_MASTER_KEY)]).await;
    cluster.db().load_release1_fixture().await;
    let old_id = master_key_id(&fixture_master_key());
    let new_key = MasterKey::from_bytes([42; 32]);
    let new_id = master_key_id(&new_key);
    let new_file = cluster.dir().join("new-master.key");
    std::fs::write(&new_file, STANDARD.encode(new_key.expose())).unwrap();
    std::fs::set_permissions(&new_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let a = cluster.start("a").await;
    let admin = a.login(FIXTURE_ADMIN, FIXTURE_ADMIN_PASSWORD).await;
    let mut secrets = BTreeMap::new();
    secrets.insert("billing".to_owned(), FIXTURE_BILLING.to_owned());
    let fresh = a
        .keys()
        .create_key(authed(create("fresh", None), &admin))
        .await
        .unwrap()
        .into_inner();
    secrets.insert("fresh".to_owned(), fresh.api_key);

    let rewrap = [
        "master-key",
        "rewrap",
        "--new-master-key-file",
        new_file.to_str().unwrap(),
    ];
    let out = cluster.run(&rewrap).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rewrap failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&old_id)
            && stdout.contains(&new_id)
            && stdout.contains(&format!("{FIXTURE_SEALED} secrets")),
        "{stdout}"
    );
    assert!(
        !stdout.contains(FIXTURE_MASTER_KEY)
            && !stdout.contains(&STANDARD.encode(new_key.expose()))
    );

    // The running server keeps serving: it holds the data keys.
    all_open(&a.channel(), &admin, &secrets).await;
    let later = a
        .keys()
        .create_key(authed(create("later", None), &admin))
        .await
        .unwrap()
        .into_inner();
    secrets.insert("later".to_owned(), later.api_key);
    // It can no longer add to the keyring: the new master key wraps it now.
    let refused = keyring(&a.channel())
        .rotate_data_key(authed(pb::RotateDataKeyRequest {}, &admin))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&new_id), "{refused:?}");
    a.kill9().await;

    // The old master key opens nothing now: refused at start, naming both ids.
    let out = cluster.run(&["serve"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a server started with the old master key"
    );
    assert!(
        stderr.contains(&old_id) && stderr.contains(&new_id),
        "{stderr}"
    );
    // So does a second rewrap with it.
    let again = cluster.run(&rewrap).await;
    assert!(!again.status.success());

    cluster.set_env("KMS_MASTER_KEY", Some(&STANDARD.encode(new_key.expose())));
    let b = cluster.start("b").await;
    let admin = b.login(FIXTURE_ADMIN, FIXTURE_ADMIN_PASSWORD).await;
    all_open(&b.channel(), &admin, &secrets).await;
    let now = status(&b.channel(), &admin).await;
    assert_eq!(now.master_key_id, new_id);
    // The first release's values were moved under the keyring by the rewrap, with
    // "fresh" and "later".
    assert_eq!(sealed_under(&now, &current(&now).id), FIXTURE_SEALED + 2);
    let rotated = keyring(&b.channel())
        .rotate_data_key(authed(pb::RotateDataKeyRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.data_keys.len(), 2);
    // Audited, by the operator.
    let events = audit_events(&b.channel(), &admin, "master_key_rewrap").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "operator");
    assert!(events[0].target.contains(&new_id));
}
