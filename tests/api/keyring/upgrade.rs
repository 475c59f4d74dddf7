//! A database written by the first release (secrets sealed directly under the master
//! key) works after the upgrade with no manual step, and RewrapSecrets moves it under
//! the keyring. The fixtures were made by that release (`tests/fixtures/README.md`).

use std::collections::BTreeMap;

use kms::{
    config::MasterKeySource, crypto::sealing::MasterKey, domain::token::SigningAlgorithm,
    proto::kms::v1 as pb, server::App,
};

use super::{
    FIXTURE_ADMIN, FIXTURE_ADMIN_PASSWORD, FIXTURE_BILLING, FIXTURE_SEALED, all_open, current,
    fixture_master_key, keyring, master_key_id, rewrap_all, sealed_under, status,
};
use crate::{
    both_backends,
    common::{Backend, TestDb, TestServer, authed, test_config},
};

both_backends!(a_first_release_database_upgrades_without_a_manual_step);

async fn a_first_release_database_upgrades_without_a_manual_step(backend: Backend) {
    let db = TestDb::new(&backend).await;
    db.load_release1_fixture().await;
    let mut config = test_config(&db.url);
    config.master_key = MasterKeySource::Key(fixture_master_key());
    // The fixture signs with EdDSA: its private key is one of the sealed values.
    config.jwt_algorithm = SigningAlgorithm::EdDsa;

    // The wrong master key is refused before anything is written, naming both ids.
    let mut wrong = config.clone();
    let other = MasterKey::from_bytes([9; 32]);
    wrong.master_key = MasterKeySource::Key(other.clone());
    let refused = App::build(&wrong).await.err().expect("refused").to_string();
    assert!(
        refused.contains(&master_key_id(&other)) && refused.contains("does not open"),
        "{refused}"
    );

    let server = TestServer::start_on(db, config).await;
    // The fixture's signing key opens: it signs this login.
    let admin = server.login(FIXTURE_ADMIN, FIXTURE_ADMIN_PASSWORD).await;
    let ch = &server.channel;
    let mut keys = server.keys();
    let mut secrets = BTreeMap::new();
    for name in ["billing", "payments", "generated"] {
        let got = keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: name.into(),
                },
                &admin,
            ))
            .await
            .unwrap_or_else(|s| panic!("GetKey {name}: {s:?}"))
            .into_inner();
        secrets.insert(name.to_owned(), got.api_key);
    }
    assert_eq!(secrets["billing"], FIXTURE_BILLING);
    all_open(ch, &admin, &secrets).await;
    let revoked = keys
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "revoked".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), tonic::Code::NotFound);

    // The keyring was made at start; the first release's values are not under it yet.
    let before = status(ch, &admin).await;
    assert_eq!(before.master_key_id, master_key_id(&fixture_master_key()));
    assert_eq!(current(&before).id, "dk-1");
    assert_eq!(sealed_under(&before, "dk-1"), 0);

    let done = keyring(ch)
        .rewrap_secrets(authed(pb::RewrapSecretsRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.rewrapped, done.remaining), (FIXTURE_SEALED, 0));
    assert_eq!(
        sealed_under(&status(ch, &admin).await, "dk-1"),
        FIXTURE_SEALED
    );
    assert_eq!(rewrap_all(ch, &admin).await, (0, 1));

    // Started again, everything opens from the keyring.
    let server = server.restart().await;
    let admin = server.login(FIXTURE_ADMIN, FIXTURE_ADMIN_PASSWORD).await;
    all_open(&server.channel, &admin, &secrets).await;
    server.stop().await;
}
