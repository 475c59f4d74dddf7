//! An admin's day with the command line, on SQLite and PostgreSQL: log in, keys from
//! creation to revocation, users, the audit trail (listed and watched), the keyring.

use super::{Client, url};
use crate::{
    both_backends,
    common::{Backend, TestServer},
};

both_backends!(admin_runs_keys_users_and_audit_from_the_command_line);

async fn admin_runs_keys_users_and_audit_from_the_command_line(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = Client::new(url(&server));

    // Nothing works before login, and the message says what to do.
    admin.run(&["keys", "list"]).await.fails(3, &["kms login"]);
    admin.login_admin().await;
    #[cfg(unix)]
    {
        assert_eq!(super::mode(&admin.credentials_path()), 0o600);
        assert_eq!(super::mode(&admin.config_dir()), 0o700);
    }
    let stored = std::fs::read_to_string(admin.credentials_path()).unwrap();
    assert!(!stored.contains(crate::common::ADMIN_PASSWORD));
    assert!(
        !admin.credentials()["refresh_token"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // The watch starts before anything happens and must see what follows.
    let watch = admin.spawn(&["audit", "watch", "--output", "json"]);
    watch.wait_for("\"login\"").await;

    keys(&admin).await;
    users(&server, &admin).await;

    // audit list with filters, JSON and text.
    let listed = admin
        .run(&[
            "audit",
            "list",
            "--action",
            "key_create",
            "--since",
            "1h",
            "-o",
            "json",
        ])
        .await
        .json();
    let events = listed["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["action"] == "key_create"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["target"] == "billing"),
        "{events:?}"
    );
    let table = admin.run(&["audit", "list", "--actor", "root"]).await;
    assert!(table.ok().starts_with("ID"), "{table:?}");
    assert!(table.ok().contains("key_revoke"), "{table:?}");

    // The watch saw an event made after it started, one JSON object a line.
    let line = watch.wait_for("\"key_rotate\"").await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["target"], "billing");
    assert_eq!(watch.interrupt().await, 0, "Ctrl-C ends the watch cleanly");

    // The keyring of the running server.
    let status = admin.run(&["keyring", "status", "-o", "json"]).await.json();
    assert!(status["master_key_id"].as_str().unwrap().starts_with("mk-"));
    let rotated = admin.run(&["keyring", "rotate", "-o", "json"]).await.json();
    assert_eq!(rotated["data_keys"].as_array().unwrap().len(), 2);
    let rewrap = admin.run(&["keyring", "rewrap", "-o", "json"]).await.json();
    assert_eq!(rewrap["remaining"], "0");
    let signing = admin.run(&["keyring", "rotate-signing-key"]).await;
    // The test server signs with HS256, which has no signing keys to rotate.
    assert_ne!(signing.code, 0);
    assert!(signing.stderr.starts_with("kms: "), "{signing:?}");
    server.stop().await;
}

async fn keys(admin: &Client) {
    let created = admin
        .run(&[
            "keys",
            "create",
            "billing",
            "--description",
            "the billing service",
            "--scope",
            "billing:read",
            "--scope",
            "billing:write",
            "--metadata",
            "team=payments",
            "--rate-limit",
            "100/1m",
            "--remaining",
            "50",
            "--ttl",
            "30d",
            "--output",
            "json",
        ])
        .await
        .json();
    let secret = created["api_key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kms_"), "{created}");
    assert_eq!(created["service_name"], "billing");
    assert_eq!(created["scopes"][1], "billing:write");
    assert_eq!(created["metadata"]["team"], "payments");
    assert_eq!(created["rate_limit"]["requests"], "100");
    assert_eq!(created["rate_limit"]["window_seconds"], "60");
    assert_eq!(created["remaining"], "50");
    assert_eq!(created["enabled"], true);
    assert!(created["expires_at"].is_string());

    // Text output: the secret where asked for (create, get), never in a list.
    let human = admin.run(&["keys", "create", "search"]).await;
    assert!(human.ok().contains("api_key"), "{human:?}");
    assert!(human.ok().contains("kms_"));
    assert!(!human.ok().contains('\x1b'), "no colour when piped");
    let got = admin.run(&["keys", "get", "billing"]).await;
    assert!(got.ok().contains(&secret), "{got:?}");
    assert!(got.ok().contains("in 4 weeks"), "relative expiry: {got:?}");
    let list = admin.run(&["keys", "list"]).await;
    let text = list.ok();
    assert!(text.starts_with("SERVICE"), "{text}");
    assert!(
        text.contains("billing") && text.contains("search"),
        "{text}"
    );
    assert!(!text.contains(&secret), "a list never shows secrets");
    let list = admin.run(&["keys", "list", "-o", "json"]).await.json();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret));
    assert_eq!(list["keys"][0]["api_key"], "");

    // Paging.
    let first = admin.run(&["keys", "list", "--page-size", "1"]).await;
    assert!(first.ok().contains("billing") && !first.ok().contains("search"));
    assert!(first.stderr.contains("--page-token"), "{first:?}");
    let all = admin
        .run(&["keys", "list", "--page-size", "1", "--all", "-o", "json"])
        .await
        .json();
    assert_eq!(all["keys"].as_array().unwrap().len(), 2);

    // update builds its mask from the flags; verify reads the key from stdin.
    let updated = admin
        .run(&[
            "keys",
            "update",
            "billing",
            "--disable",
            "--no-rate-limit",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(updated["enabled"], false);
    assert!(updated.get("rate_limit").is_none(), "{updated}");
    assert_eq!(updated["api_key"], "");
    let disabled = admin
        .run_with(&["keys", "verify"], &format!("{secret}\n"))
        .await;
    assert_eq!(disabled.code, 8, "{disabled:?}");
    assert!(disabled.stdout.contains("DISABLED"), "{disabled:?}");
    admin
        .run(&["keys", "update", "billing", "--enable"])
        .await
        .ok();
    let valid = admin
        .run_with(
            &[
                "keys",
                "verify",
                "--scope",
                "billing:read",
                "--cost",
                "0",
                "-o",
                "json",
            ],
            &format!("{secret}\n"),
        )
        .await
        .json();
    assert_eq!(valid["code"], "VERIFY_CODE_VALID");
    assert_eq!(valid["remaining"], "50", "cost 0 spends nothing");
    let scoped = admin
        .run_with(
            &["keys", "verify", "--required-scope", "admin:all"],
            &format!("{secret}\n"),
        )
        .await;
    assert_eq!(scoped.code, 8);
    assert!(scoped.stdout.contains("INSUFFICIENT_SCOPE"), "{scoped:?}");

    // rotate prints the new secret; the old one keeps its grace.
    let rotated = admin
        .run(&["keys", "rotate", "billing", "--grace", "1h", "-o", "json"])
        .await
        .json();
    let new_secret = rotated["api_key"].as_str().unwrap();
    assert!(new_secret.starts_with("kms_") && new_secret != secret);
    admin
        .run_with(&["keys", "verify"], &format!("{secret}\n"))
        .await
        .ok();

    // Errors name the code and the field; exit statuses tell them apart.
    admin
        .run(&["keys", "create", "bad name!"])
        .await
        .fails(6, &["kms: INVALID_ARGUMENT: ", "service_name"]);
    admin
        .run(&["keys", "create", "billing"])
        .await
        .fails(6, &["ALREADY_EXISTS"]);
    admin
        .run(&["keys", "update", "billing"])
        .await
        .fails(6, &["INVALID_ARGUMENT", "update_mask"]);

    // An imported secret comes from stdin, never from argv.
    let imported_secret = "imported-secret-0123456789-abcdefghij";
    let imported = admin
        .run_with(
            &["keys", "create", "imported", "--import", "-o", "json"],
            &format!("{imported_secret}\n"),
        )
        .await
        .json();
    assert_eq!(imported["api_key"], imported_secret);
    admin.run(&["keys", "revoke", "imported"]).await.ok();

    let revoked = admin.run(&["keys", "revoke", "search"]).await;
    assert!(revoked.stderr.contains("revoked"), "{revoked:?}");
    admin
        .run(&["keys", "get", "search"])
        .await
        .fails(5, &["NOT_FOUND"]);
    admin.run(&["keys", "revoke", "billing"]).await.ok();
}

async fn users(server: &TestServer, admin: &Client) {
    let registered = admin
        .run_with(
            &[
                "users",
                "register",
                "alice",
                "--role",
                "auditor",
                "--password-stdin",
                "-o",
                "json",
            ],
            "alice-password-123\n",
        )
        .await
        .json();
    assert_eq!(registered["roles"], serde_json::json!(["auditor"]));
    admin
        .run_with(
            &["users", "register", "bob", "--password-stdin"],
            "bob-password-1234\n",
        )
        .await
        .ok();
    let list = admin.run(&["users", "list"]).await;
    assert!(list.ok().starts_with("USERNAME"), "{list:?}");
    assert!(list.ok().contains("alice") && list.ok().contains("auditor"));
    let got = admin
        .run(&["users", "get", "bob", "-o", "json"])
        .await
        .json();
    assert_eq!(got["roles"], serde_json::json!(["user"]));

    // A non-admin is refused with PERMISSION_DENIED.
    let bob = Client::new(url(server));
    bob.login("bob", "bob-password-1234").await.ok();
    bob.run(&["keys", "list"])
        .await
        .fails(4, &["PERMISSION_DENIED"]);
    bob.run_with(
        &["users", "change-password", "--password-stdin"],
        "bob-password-1234\nbob-new-password-99\n",
    )
    .await
    .ok();
    assert!(bob.credentials().is_null(), "the server ended bob's login");
    bob.login("bob", "bob-new-password-99").await.ok();
    bob.login("bob", "bob-password-1234")
        .await
        .fails(3, &["UNAUTHENTICATED"]);

    // An admin sets another user's password: the new one only.
    admin
        .run_with(
            &[
                "users",
                "change-password",
                "--username",
                "alice",
                "--password-stdin",
            ],
            "alice-new-password-1\n",
        )
        .await
        .ok();
    Client::new(url(server))
        .login("alice", "alice-new-password-1")
        .await
        .ok();

    let set = admin
        .run(&[
            "users",
            "set-roles",
            "alice",
            "--role",
            "user",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(set["roles"], serde_json::json!(["user"]));
    admin.run(&["users", "delete", "alice"]).await.ok();
    admin
        .run(&["users", "get", "alice"])
        .await
        .fails(5, &["NOT_FOUND"]);
    let names = admin.run(&["users", "list", "-o", "json"]).await.json();
    assert!(!names.to_string().contains("alice"));
}
