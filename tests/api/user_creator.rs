//! `UserCreator`, the narrow type behind `kms user create` and the bootstrap admin:
//! built from the store and the password hasher alone, with Register's rules for a new
//! user (username, password length, roles, names unique without regard to case).

use kms::{
    crypto::password::PasswordHasherPool,
    domain::{
        Error,
        users::{NewUser, UserCreator},
    },
    store::{Store, StoreOptions},
};
use zeroize::Zeroizing;

use crate::{
    both_backends,
    common::{Backend, TestDb},
};

both_backends!(creates_users_with_the_rules_of_register);

fn new_user(username: &str, password: &str, roles: &[&str]) -> NewUser {
    NewUser {
        username: username.into(),
        password: Zeroizing::new(password.into()),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

async fn creates_users_with_the_rules_of_register(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let store = Store::connect(&StoreOptions {
        url: db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let creator = UserCreator::new(store.clone(), PasswordHasherPool::new(1).await.unwrap(), 12);

    // No roles: `user`.
    let carol = creator
        .create_by_operator(new_user("carol", "carol-password-1", &[]))
        .await
        .unwrap();
    assert_eq!(carol.roles, ["user"]);
    let ops = creator
        .create_by_operator(new_user("ops", "ops-password-12", &["ops", "admin"]))
        .await
        .unwrap();
    assert_eq!(ops.roles, ["admin", "ops"]);

    // Register's rules.
    let refused = creator
        .create_by_operator(new_user("dave", "short", &[]))
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::InvalidArgument {
                field: "password",
                ..
            })
        ),
        "{refused:?}"
    );
    let refused = creator
        .create_by_operator(new_user("dave", "dave-password-1", &["Not A Role"]))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument { .. })),
        "{refused:?}"
    );
    let refused = creator
        .create_by_operator(new_user("CAROL", "carol-password-2", &[]))
        .await;
    match refused {
        Err(Error::AlreadyExists(message)) => {
            assert!(message.contains("without regard to case"), "{message}");
        }
        other => panic!("CAROL beside carol: {other:?}"),
    }

    // The bootstrap admin: only while no admin exists, and never over another user.
    let fresh = TestDb::new(&backend).await;
    let fresh_store = Store::connect(&StoreOptions {
        url: fresh.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    fresh_store.migrate().await.unwrap();
    let fresh_creator = UserCreator::new(
        fresh_store.clone(),
        PasswordHasherPool::new(1).await.unwrap(),
        12,
    );
    fresh_creator
        .create_by_operator(new_user("carol", "carol-password-1", &[]))
        .await
        .unwrap();
    let taken = fresh_creator
        .ensure_admin("Carol", Zeroizing::new("boss-password-12".into()))
        .await;
    assert!(matches!(taken, Err(Error::AlreadyExists(_))), "{taken:?}");
    assert!(
        fresh_creator
            .ensure_admin("boss", Zeroizing::new("boss-password-12".into()))
            .await
            .unwrap()
    );
    assert!(
        !fresh_creator
            .ensure_admin("other", Zeroizing::new("other-password-1".into()))
            .await
            .unwrap(),
        "an admin exists: none is created"
    );
    // `ops` above is an admin: its database gets no bootstrap admin either.
    assert!(
        !creator
            .ensure_admin("boss", Zeroizing::new("boss-password-12".into()))
            .await
            .unwrap()
    );
    store.close().await.unwrap();
    fresh_store.close().await.unwrap();
}
