//! VerifyKey's codes in the contract's order, the scope rule, credits, cost 0,
//! NOT_FOUND with nothing else, last_used_at, rotation and revocation.

use std::time::Duration;

use kms::proto::kms::v1::{self as pb, VerifyCode};

use super::{code, create, create_key, limit, strings, update, verify_with};
use crate::{
    both_backends,
    common::{Backend, TestServer, authed},
};

both_backends!(
    codes_come_in_the_contracts_order,
    scopes_follow_the_trailing_star_rule,
    not_found_is_one_answer_with_nothing_else,
    credits_are_spent_by_cost_and_a_failed_check_spends_nothing,
    last_used_at_is_written_in_batches,
    rotation_keeps_the_counts_and_revoke_drops_them,
);

async fn codes_come_in_the_contracts_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            scopes: strings(&["a"]),
            metadata: [("team".into(), "t1".into())].into(),
            rate_limit: limit(2, 3600),
            remaining: Some(1),
            ttl_seconds: 2,
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let k = key.api_key.as_str();
    let first = verify_with(ch, &admin, k, &["a"], None).await;
    assert_eq!(code(&first), VerifyCode::Valid);
    assert!(first.valid);
    assert_eq!(first.service_name, "svc");
    assert_eq!(first.scopes, strings(&["a"]));
    assert_eq!(first.metadata["team"], "t1");
    assert_eq!(first.remaining, Some(0));
    let rl = first.rate_limit.unwrap();
    assert_eq!((rl.limit, rl.remaining), (2, 1));
    assert!(first.expires_at.is_some());

    // Credits are used up; everything else passes.
    let broke = verify_with(ch, &admin, k, &["a"], None).await;
    assert_eq!(code(&broke), VerifyCode::UsageExceeded);
    assert!(!broke.valid);
    assert_eq!(broke.remaining, Some(0));
    assert_eq!(
        broke.rate_limit.unwrap().remaining,
        1,
        "a failed check spends nothing"
    );
    // A cost of 0 checks without spending.
    let free = verify_with(ch, &admin, k, &["a"], Some(0)).await;
    assert_eq!(code(&free), VerifyCode::Valid);
    assert_eq!(free.remaining, Some(0));
    // The rate limit is now used up (the free call took the last request): it comes first.
    let limited = verify_with(ch, &admin, k, &["a"], None).await;
    assert_eq!(code(&limited), VerifyCode::RateLimited);
    let status = limited.rate_limit.unwrap();
    assert_eq!(status.remaining, 0);
    assert!(status.reset_at.unwrap().seconds >= crate::common::now() + 3500);
    // A missing scope comes before the limit...
    let scope = verify_with(ch, &admin, k, &["b"], None).await;
    assert_eq!(code(&scope), VerifyCode::InsufficientScope);
    assert_eq!(scope.service_name, "svc");
    assert_eq!(scope.remaining, Some(0));
    assert!(scope.rate_limit.is_some());
    // ...disabled before a scope...
    update(ch, &admin, "svc", &["enabled"], |r| r.enabled = false)
        .await
        .unwrap();
    let disabled = verify_with(ch, &admin, k, &["b"], None).await;
    assert_eq!(code(&disabled), VerifyCode::Disabled);
    assert_eq!(disabled.metadata["team"], "t1");
    // ...and expiry before everything.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = verify_with(ch, &admin, k, &["b"], None).await;
    assert_eq!(code(&expired), VerifyCode::Expired);
    assert!(!expired.valid);
    assert_eq!(expired.service_name, "svc");
    assert_eq!(expired.scopes, strings(&["a"]));
    assert!(expired.expires_at.is_some());
    server.stop().await;
}

async fn scopes_follow_the_trailing_star_rule(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            scopes: strings(&["billing:*", "read"]),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let k = key.api_key.as_str();
    for (required, expected) in [
        (&[][..], VerifyCode::Valid),
        (&["billing:read"][..], VerifyCode::Valid),
        (&["billing:write", "read"][..], VerifyCode::Valid),
        (&["billing:"][..], VerifyCode::Valid),
        (&["billing"][..], VerifyCode::InsufficientScope),
        (&["read", "write"][..], VerifyCode::InsufficientScope),
        (&["reader"][..], VerifyCode::InsufficientScope),
    ] {
        assert_eq!(
            code(&verify_with(ch, &admin, k, required, None).await),
            expected,
            "{required:?}"
        );
    }
    update(ch, &admin, "svc", &["scopes"], |r| {
        r.scopes = strings(&["*"])
    })
    .await
    .unwrap();
    let all = verify_with(ch, &admin, k, &["anything:at/all", "x"], None).await;
    assert_eq!(
        code(&all),
        VerifyCode::Valid,
        "'*' grants all; the update was honoured"
    );
    server.stop().await;
}

async fn not_found_is_one_answer_with_nothing_else(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let revoked = create_key(&server, &admin, create("revoked"))
        .await
        .unwrap();
    server
        .keys()
        .revoke_key(authed(
            pb::RevokeKeyRequest {
                service_name: "revoked".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let rotated = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            remaining: Some(5),
            ..create("rotated")
        },
    )
    .await
    .unwrap();
    server
        .keys()
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "rotated".into(),
                grace_period_seconds: 0,
            },
            &admin,
        ))
        .await
        .unwrap();
    let mut malformed = revoked.api_key.clone();
    malformed.pop();
    for k in [
        "kms_unknownunknownunknownunknownunknown".to_owned(),
        "no-such-key-no-such-key-no-such-key-0000".to_owned(),
        revoked.api_key,
        rotated.api_key,
        malformed,
        String::new(),
    ] {
        let answer = verify_with(ch, &admin, &k, &["a"], Some(3)).await;
        assert_eq!(
            answer,
            pb::VerifyKeyResponse {
                code: VerifyCode::NotFound.into(),
                ..Default::default()
            },
            "{k:?}"
        );
    }
    server.stop().await;
}

async fn credits_are_spent_by_cost_and_a_failed_check_spends_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            scopes: strings(&["a"]),
            remaining: Some(10),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let k = key.api_key.as_str();
    assert_eq!(
        verify_with(ch, &admin, k, &[], Some(4)).await.remaining,
        Some(6)
    );
    let short = verify_with(ch, &admin, k, &[], Some(7)).await;
    assert_eq!(
        (code(&short), short.remaining),
        (VerifyCode::UsageExceeded, Some(6))
    );
    let scope = verify_with(ch, &admin, k, &["b"], Some(1)).await;
    assert_eq!(
        (code(&scope), scope.remaining),
        (VerifyCode::InsufficientScope, Some(6))
    );
    assert_eq!(
        verify_with(ch, &admin, k, &[], Some(6)).await.remaining,
        Some(0)
    );
    assert_eq!(
        code(&verify_with(ch, &admin, k, &[], None).await),
        VerifyCode::UsageExceeded
    );
    // A refill through UpdateKey; then unlimited.
    update(ch, &admin, "svc", &["remaining"], |r| r.remaining = Some(2))
        .await
        .unwrap();
    assert_eq!(
        verify_with(ch, &admin, k, &[], None).await.remaining,
        Some(1)
    );
    update(ch, &admin, "svc", &["remaining"], |_| {})
        .await
        .unwrap();
    let unlimited = verify_with(ch, &admin, k, &[], Some(1_000_000)).await;
    assert_eq!(
        (code(&unlimited), unlimited.remaining),
        (VerifyCode::Valid, None)
    );
    let got = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "svc".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.remaining, None);
    server.stop().await;
}

async fn last_used_at_is_written_in_batches(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.last_used_resolution = Duration::from_secs(1);
    })
    .await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let key = create_key(&server, &admin, create("svc")).await.unwrap();
    // Several keys in one batch: each gets its own time, an unused one none.
    let other = create_key(&server, &admin, create("svc2")).await.unwrap();
    create_key(&server, &admin, create("svc3")).await.unwrap();
    let listed = |name: &'static str| {
        let keys = server.keys();
        let admin = admin.clone();
        async move {
            keys.clone()
                .list_keys(authed(pb::ListKeysRequest::default(), &admin))
                .await
                .unwrap()
                .into_inner()
                .keys
                .into_iter()
                .find(|k| k.service_name == name)
                .expect("listed")
        }
    };
    // A refused call is not a use.
    verify_with(ch, &admin, &key.api_key, &["nope"], None).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(listed("svc").await.last_used_at.is_none());
    let before = crate::common::now();
    for _ in 0..20 {
        assert!(verify_with(ch, &admin, &key.api_key, &[], None).await.valid);
    }
    assert!(
        verify_with(ch, &admin, &other.api_key, &[], None)
            .await
            .valid
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for name in ["svc", "svc2"] {
        let used = listed(name)
            .await
            .last_used_at
            .expect("written within the resolution");
        assert!((before - 1..=crate::common::now()).contains(&used.seconds));
    }
    assert!(listed("svc3").await.last_used_at.is_none(), "never used");
    let got = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "svc".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.last_used_at.is_some());
    server.stop().await;
}

async fn rotation_keeps_the_counts_and_revoke_drops_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let ch = &server.channel;
    let key = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            rate_limit: limit(3, 3600),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    for _ in 0..2 {
        assert!(verify_with(ch, &admin, &key.api_key, &[], None).await.valid);
    }
    let rotated = server
        .keys()
        .rotate_key(authed(
            pb::RotateKeyRequest {
                service_name: "svc".into(),
                grace_period_seconds: 60,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let third = verify_with(ch, &admin, &rotated.api_key, &[], None).await;
    assert_eq!(
        third.rate_limit.unwrap().remaining,
        0,
        "rotation keeps the counts"
    );
    assert_eq!(
        code(&verify_with(ch, &admin, &key.api_key, &[], None).await),
        VerifyCode::RateLimited
    );
    server
        .keys()
        .revoke_key(authed(
            pb::RevokeKeyRequest {
                service_name: "svc".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let again = create_key(
        &server,
        &admin,
        pb::CreateKeyRequest {
            rate_limit: limit(3, 3600),
            ..create("svc")
        },
    )
    .await
    .unwrap();
    let fresh = verify_with(ch, &admin, &again.api_key, &[], None).await;
    assert_eq!(
        fresh.rate_limit.unwrap().remaining,
        2,
        "revoke drops the counts"
    );
    server.stop().await;
}
