//! Size limits: messages at and over KMS_MAX_REQUEST_BYTES for each service, and
//! oversized metadata.

use kms::proto::kms::v1::{self as pb, keys_client::KeysClient};
use prost::Message;
use tonic::{
    Code, Request,
    metadata::{AsciiMetadataValue, MetadataMap},
    transport::Channel,
};

use crate::{
    both_backends,
    common::{Backend, authed},
};

use super::{oracle::*, *};

both_backends!(hostile_sizes);

/// A string that makes a message with it as its only field exactly `total` bytes long
/// (tag, three-byte length, content).
fn filler(total: usize) -> String {
    "a".repeat(total - 4)
}

async fn hostile_sizes(backend: Backend) {
    let (server, ctx) = start(backend).await;
    let admin = ctx.admin.clone();
    for (total, expect) in [
        (MAX_REQUEST, None),
        (MAX_REQUEST + 1, Some(Code::OutOfRange)),
        (MAX_REQUEST * 4, Some(Code::OutOfRange)),
    ] {
        let s = filler(total);
        let token = pb::ValidateTokenRequest { token: s.clone() };
        assert_eq!(token.encoded_len(), total);
        let result = ctx.auth().validate_token(token).await;
        judge(
            "ValidateToken",
            &result,
            &expect.map_or(codes(&[Code::Ok]), |c| codes(&[c])),
        )
        .unwrap();
        let result = ctx
            .keys()
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: s.clone(),
                },
                &admin,
            ))
            .await;
        let at_limit = Expect::Invalid(vec!["service_name"]);
        judge("GetKey", &result, &expect.map_or(at_limit, |c| codes(&[c]))).unwrap();
        let result = ctx
            .users()
            .get_user(authed(
                pb::GetUserRequest {
                    username: s.clone(),
                },
                &admin,
            ))
            .await;
        let at_limit = Expect::Invalid(vec!["username"]);
        judge(
            "GetUser",
            &result,
            &expect.map_or(at_limit, |c| codes(&[c])),
        )
        .unwrap();
        let result = ctx
            .audit()
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    actor: s.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await;
        judge(
            "ListAuditEvents",
            &result,
            &expect.map_or(codes(&[Code::Ok]), |c| codes(&[c])),
        )
        .unwrap();
    }

    // Ten thousand roles, all the same: one role.
    let set = ctx
        .users()
        .set_roles(authed(
            pb::SetRolesRequest {
                username: "bob".into(),
                roles: vec!["user".into(); 10_000],
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.roles, ["user"]);

    // Metadata. The server takes at most 16 KiB of headers per call (hyper's default
    // SETTINGS_MAX_HEADER_LIST_SIZE). Under that, a garbage bearer token is the KMS's to
    // judge: UNAUTHENTICATED. Over it, HTTP/2 refuses the call before any of the KMS
    // sees it. A header block far over the limit (100 KB) makes the server close that
    // connection (GOAWAY ENHANCE_YOUR_CALM "header_list_way_too_large"): the call fails
    // RESOURCE_EXHAUSTED, a call sent on that connection at the same moment may fail
    // CANCELLED ("connection closed"), and the client reconnects. A 20 KB block of 1000
    // headers gets HTTP 431, which gRPC clients report as UNKNOWN ("mapped from HTTP
    // status code 431"). Either way nothing is stored, and other connections and the
    // server go on as before.
    let bearer = |token: &str| -> AsciiMetadataValue { format!("Bearer {token}").parse().unwrap() };
    let before = snapshot(&ctx.db).await;
    let mut meta = MetadataMap::new();
    meta.insert("authorization", bearer(&"a".repeat(15_000)));
    let result = ctx
        .keys()
        .create_key(Request::from_parts(
            meta,
            Default::default(),
            pb::CreateKeyRequest::default(),
        ))
        .await;
    judge(
        "15 KB authorization",
        &result,
        &codes(&[Code::Unauthenticated]),
    )
    .unwrap();
    let huge = |name: &'static str, value: String| {
        let mut m = MetadataMap::new();
        m.insert("authorization", bearer(&admin));
        m.insert(name, value.parse().unwrap());
        m
    };
    let cases: Vec<(&str, MetadataMap)> = vec![
        ("100 KB authorization", {
            let mut m = MetadataMap::new();
            m.insert("authorization", bearer(&"a".repeat(100_000)));
            m
        }),
        ("100 KB other header", huge("x-junk", "j".repeat(100_000))),
        (
            "100 KB request id",
            huge("x-request-id", "r".repeat(100_000)),
        ),
        ("1000 headers", {
            let mut m = MetadataMap::new();
            m.insert("authorization", bearer(&admin));
            for i in 0..1000 {
                m.append("x-many", format!("value-{i}").parse().unwrap());
            }
            m
        }),
    ];
    for (label, meta) in cases {
        // A connection of its own: HTTP/2 may close it (see above).
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let result = KeysClient::new(channel.clone())
            .create_key(Request::from_parts(
                meta,
                Default::default(),
                pb::CreateKeyRequest {
                    service_name: "by-huge-headers".into(),
                    ..Default::default()
                },
            ))
            .await;
        let status = result.expect_err(label);
        let go_away = std::error::Error::source(&status)
            .is_some_and(|e| format!("{e:?}").contains("header_list_way_too_large"));
        assert!(
            (status.code() == Code::ResourceExhausted && go_away)
                || (status.code() == Code::Unknown && status.message().contains("431")),
            "{label}: {status:?}"
        );
        // The client reconnects: a call racing the GOAWAY may fail CANCELLED first.
        let mut attempts = 0;
        while let Err(status) = KeysClient::new(channel.clone())
            .list_keys(authed(pb::ListKeysRequest::default(), &admin))
            .await
        {
            attempts += 1;
            assert!(
                status.code() == Code::Cancelled && attempts < 5,
                "{label}: after it, {status:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Other connections are unaffected.
        ctx.still_serving().await;
    }
    unchanged("oversized metadata", &before, &snapshot(&ctx.db).await).unwrap();

    // Request ids that are not sane are replaced, whatever they were.
    for sent in [
        "x".repeat(10_000),
        "a b".into(),
        "\u{e9}t\u{e9}".into(),
        String::new(),
    ] {
        let mut meta = MetadataMap::new();
        meta.insert("authorization", format!("Bearer {admin}").parse().unwrap());
        if let Ok(value) = AsciiMetadataValue::try_from(sent.as_bytes()) {
            meta.insert("x-request-id", value);
        }
        let response = ctx
            .keys()
            .list_keys(Request::from_parts(
                meta,
                Default::default(),
                pb::ListKeysRequest::default(),
            ))
            .await
            .unwrap();
        let id = response
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        assert!((1..=64).contains(&id.len()) && id != sent, "{id:?}");
    }
    ctx.still_serving().await;
    server.stop().await;
}
