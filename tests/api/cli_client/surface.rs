//! What the command line shows without a login or a server: help in two groups,
//! completions, the unreachable server, colour only when asked for.

use super::{Client, url};
use crate::common::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_completions_and_errors_without_a_server() {
    let client = Client::new("http://127.0.0.1:1");
    let help = client.run(&["--help"]).await;
    let text = help.ok();
    assert!(
        text.contains("Client commands: talk to a running server over gRPC"),
        "{text}"
    );
    assert!(
        text.contains(
            "Server and operator commands: run where the server runs and open its database"
        ),
        "{text}"
    );
    let client_part = text.split("Server and operator").next().unwrap();
    for name in ["login", "logout", "keys", "users", "audit", "keyring"] {
        assert!(
            client_part.contains(&format!("\n  {name} ")),
            "{name} in {client_part}"
        );
    }
    let operator_part = text.split("Server and operator").nth(1).unwrap();
    for name in [
        "serve",
        "migrate",
        "backup",
        "user",
        "signing-key",
        "master-key",
        "healthcheck",
    ] {
        assert!(
            operator_part.contains(&format!("\n  {name} ")),
            "{name} in {operator_part}"
        );
    }

    let bash = client.run(&["completions", "bash"]).await;
    assert!(bash.ok().contains("complete -F _kms"), "{bash:?}");
    assert!(bash.ok().contains("rotate-signing-key"));
    client.run(&["completions", "zsh"]).await.ok();
    client.run(&["completions", "fish"]).await.ok();

    // Unreachable: UNAVAILABLE, naming the URL, exit 7.
    client
        .login("root", "whatever-password")
        .await
        .fails(7, &["kms: UNAVAILABLE", "http://127.0.0.1:1"]);
    // Not logged in: says to log in, exit 3, before any connection.
    client
        .run(&["users", "list"])
        .await
        .fails(3, &["not logged in to http://127.0.0.1:1", "kms login"]);
    // A usage error is clap's, exit 2.
    let usage = client
        .run(&["keys", "update", "x", "--enable", "--disable"])
        .await;
    assert_eq!(usage.code, 2, "{usage:?}");
    // Nothing to ask on when stdin is a pipe: refused, not hung.
    client
        .run_with(&["login", "--password-stdin"], "x\n")
        .await
        .fails(1, &["--username"]);
    // No password on a pipe without --password-stdin: refused, not hung.
    client
        .run(&["login", "--username", "root"])
        .await
        .fails(1, &["--password-stdin"]);

    // Plaintext to another machine would carry the password in clear: refused before
    // anything is sent, unless asked for.
    let remote = Client::new("http://192.0.2.1:50051");
    remote
        .run_with(&["login", "--username", "root", "--password-stdin"], "pw\n")
        .await
        .fails(1, &["in clear", "https://", "--allow-plaintext"]);
    for local in ["http://localhost:1", "http://[::1]:1"] {
        Client::new(local)
            .run_with(&["login", "--username", "root", "--password-stdin"], "pw\n")
            .await
            .fails(7, &["UNAVAILABLE"]);
    }

    // A damaged or crafted credentials file is an error message, never a panic.
    std::fs::create_dir_all(client.config_dir()).unwrap();
    std::fs::write(
        client.credentials_path(),
        r#"{"servers":{"http://127.0.0.1:1":{"username":"root","access_token":"x",
            "access_expires_at":-9223372036854775808,"refresh_token":"y",
            "refresh_expires_at":9223372036854775807}}}"#,
    )
    .unwrap();
    let crafted = client.run(&["keys", "list"]).await;
    assert_ne!(crafted.code, 0, "{crafted:?}");
    assert!(!crafted.stderr.contains("panicked"), "{crafted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_only_when_asked_for_and_never_with_no_color() {
    let server = TestServer::start(Backend::Sqlite).await;
    let plain = Client::new(url(&server));
    plain.login_admin().await;
    plain.run(&["keys", "create", "colours"]).await.ok();
    let piped = plain.run(&["keys", "list"]).await;
    assert!(!piped.ok().contains('\x1b'), "{piped:?}");
    let forced = plain.run(&["keys", "list", "--color", "always"]).await;
    assert!(forced.ok().contains("\x1b[1mSERVICE\x1b[0m"), "{forced:?}");
    let never = plain
        .run(&["keys", "get", "colours", "--color", "never"])
        .await;
    assert!(!never.ok().contains('\x1b'));

    // NO_COLOR wins over auto (it is how a user says no on a terminal too).
    let no_color = Client::new(url(&server)).with_env("NO_COLOR", "1");
    no_color.login_admin().await;
    let out = no_color.run(&["keys", "list", "--color", "auto"]).await;
    assert!(!out.ok().contains('\x1b'), "{out:?}");
    server.stop().await;
}
