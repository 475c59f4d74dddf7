//! The REST API of the original HTTP key service, through a real HTTP client against the
//! running server: every endpoint and error, the original's typical flow, and tokens
//! shared with gRPC.

use kms::{domain::api_key as key_format, proto::kms::v1 as pb};
use serde_json::json;
use tonic::Code;

use crate::{
    both_backends,
    common::{
        ADMIN, ADMIN_PASSWORD, Backend, JWT_SECRET, TestServer, authed, claims, now, postgres_url,
        sign,
    },
    http_client::{Http, Reply},
};

both_backends!(
    register_and_login_answer_as_the_original,
    register_follows_the_grpc_role_rule,
    closed_registration_needs_an_admin,
    keys_endpoints_and_their_errors,
    bearer_tokens_are_checked,
    bodies_are_checked_and_errors_name_the_field,
    the_original_flow_then_grpc_reads_the_key,
    tokens_work_across_both_apis,
    openapi_document_lists_the_endpoints,
    unknown_paths_and_methods,
);

const NOT_ADMIN: &str = "admin role";

fn http(server: &TestServer) -> Http {
    Http::new(server.http_addr)
}

async fn register(http: &Http, body: serde_json::Value, token: Option<&str>) -> Reply {
    let call = http.post("/register").json(body);
    match token {
        Some(t) => call.bearer(t).send().await,
        None => call.send().await,
    }
}

/// Registers a `user` over HTTP and returns its token.
async fn user_token(http: &Http, username: &str) -> String {
    let password = format!("{username}-password-1");
    let reply = register(
        http,
        json!({"username": username, "password": password, "roles": "user"}),
        None,
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    http.login(username, &password).await
}

async fn register_and_login_answer_as_the_original(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let body = json!({"username": "alice", "password": "alice-password-1", "roles": "user"});
    let reply = register(&http, body.clone(), None).await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.json(),
        json!({"message": "User registered successfully."})
    );
    let again = register(&http, body, None).await;
    assert_eq!(again.status, 400);
    assert_eq!(
        again.json(),
        json!({"detail": "Username already registered."})
    );
    // Roles missing or empty mean `user`.
    for (name, roles) in [("bob", None), ("carol", Some(""))] {
        let mut body = json!({"username": name, "password": "a-password-123"});
        if let Some(roles) = roles {
            body["roles"] = json!(roles);
        }
        assert_eq!(register(&http, body, None).await.status, 201, "{name}");
    }

    let token = http.login("alice", "alice-password-1").await;
    let validated = server
        .auth()
        .validate_token(pb::ValidateTokenRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(validated.valid);
    assert_eq!(validated.roles, vec!["user"]);

    // Every refused login reads the same, with the scheme to use.
    for (username, password) in [
        ("alice", "wrong-password-1"),
        ("nobody", "alice-password-1"),
        ("not a valid name", "alice-password-1"),
        ("alice", ""),
    ] {
        let reply = http
            .post("/login")
            .json(json!({"username": username, "password": password}))
            .send()
            .await;
        assert_eq!(reply.status, 401, "{username}/{password}");
        assert_eq!(
            reply.json(),
            json!({"detail": "Incorrect username or password."})
        );
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
    }
    // Counted as gRPC logins are.
    let metrics = String::from_utf8(http.get("/metrics").send().await.body).unwrap();
    for line in [
        r#"kms_login_attempts_total{outcome="success"} 1"#,
        r#"kms_login_attempts_total{outcome="failure"} 2"#,
        r#"kms_login_attempts_total{outcome="invalid"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    server.stop().await;
}

async fn register_follows_the_grpc_role_rule(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let admin = http.login(ADMIN, ADMIN_PASSWORD).await;
    let user = user_token(&http, "plain").await;
    let new = |name: &str, roles: &str| json!({"username": name, "password": "new-password-12", "roles": roles});

    // Without an admin token only `user` may be asked for.
    for (token, roles) in [
        (None, "admin,user"),
        (None, "admin"),
        (None, "user,ops"),
        (Some(user.as_str()), "admin"),
    ] {
        register(&http, new("climber", roles), token)
            .await
            .expect(403, "roles");
    }
    // An admin may grant any roles; the new admin can manage keys at once.
    let reply = register(&http, new("second", "admin, user"), Some(&admin)).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let second = http.login("second", "new-password-12").await;
    let created = http
        .post("/keys")
        .bearer(&second)
        .json(json!({"service_name": "by-second"}))
        .send()
        .await;
    assert_eq!(created.status, 201);
    // A token that is sent must be valid, even where none is needed.
    register(&http, new("someone", "user"), Some("junk"))
        .await
        .expect(401, "invalid or expired");
    // The domain's rules, as for gRPC, naming the field.
    register(&http, new("shorty", "user").tap_password("short"), None)
        .await
        .expect(422, "password");
    register(&http, new("bad name", "user"), None)
        .await
        .expect(422, "username");
    register(&http, new("caps", "Admin"), Some(&admin))
        .await
        .expect(422, "roles");
    server.stop().await;
}

trait TapPassword {
    fn tap_password(self, password: &str) -> Self;
}

impl TapPassword for serde_json::Value {
    fn tap_password(mut self, password: &str) -> Self {
        self["password"] = json!(password);
        self
    }
}

async fn closed_registration_needs_an_admin(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.allow_registration = false).await;
    let http = http(&server);
    let body = json!({"username": "late", "password": "late-password-1", "roles": "user"});
    register(&http, body.clone(), None)
        .await
        .expect(403, "KMS_ALLOW_REGISTRATION=true");
    let admin = http.login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(register(&http, body, Some(&admin)).await.status, 201);
    server.stop().await;
}

async fn keys_endpoints_and_their_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let admin = http.login(ADMIN, ADMIN_PASSWORD).await;

    // Create: generated, then imported.
    let reply = http
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "billing"}))
        .send()
        .await;
    assert_eq!(reply.status, 201);
    let body = reply.json();
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["service_name"], "billing");
    let generated = body["api_key"].as_str().unwrap().to_owned();
    assert!(key_format::checksum_ok(&generated), "{generated}");
    let imported = "imported-secret-0123456789-abcdefghijk";
    let reply = http
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "legacy", "api_key": imported}))
        .send()
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.json(),
        json!({"service_name": "legacy", "api_key": imported})
    );
    // Duplicates: 400, like the original's duplicate username.
    http.post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "billing"}))
        .send()
        .await
        .expect(400, "service_name");
    http.post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "other", "api_key": imported}))
        .send()
        .await
        .expect(400, "api_key");
    http.post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "short", "api_key": "too-short"}))
        .send()
        .await
        .expect(422, "api_key");

    // Read.
    let reply = http.get("/keys/billing").bearer(&admin).send().await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"service_name": "billing", "api_key": generated})
    );
    http.get("/keys/nope")
        .bearer(&admin)
        .send()
        .await
        .expect(404, "nope");
    http.get("/keys/bad%20name")
        .bearer(&admin)
        .send()
        .await
        .expect(422, "service_name");

    // Rotate: without a body the old key stops at once; a body may give a grace period.
    let reply = http
        .post("/keys/billing/rotate")
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(reply.status, 200);
    let rotated = reply.json();
    assert_eq!(rotated["service_name"], "billing");
    let rotated = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(rotated, generated);
    let reply = http.get("/keys/billing").bearer(&admin).send().await;
    assert_eq!(reply.json()["api_key"], rotated.as_str());
    let valid = |key: String| {
        let mut keys = server.keys();
        let admin = admin.clone();
        async move {
            keys.verify_key(authed(
                pb::VerifyKeyRequest {
                    api_key: key,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .valid
        }
    };
    assert!(
        !valid(generated.clone()).await,
        "grace 0: the old key is gone"
    );
    assert!(valid(rotated.clone()).await);
    let reply = http
        .post("/keys/billing/rotate")
        .bearer(&admin)
        .json(json!({"grace_period_seconds": 600}))
        .send()
        .await;
    assert_eq!(reply.status, 200);
    assert!(valid(rotated).await, "in its grace period");
    http.post("/keys/billing/rotate")
        .bearer(&admin)
        .json(json!({"grace_period_seconds": -1}))
        .send()
        .await
        .expect(422, "grace_period_seconds");
    http.post("/keys/nope/rotate")
        .bearer(&admin)
        .send()
        .await
        .expect(404, "nope");

    // Delete: 204 without a body, then 404 everywhere.
    let reply = http.delete("/keys/billing").bearer(&admin).send().await;
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty());
    http.delete("/keys/billing")
        .bearer(&admin)
        .send()
        .await
        .expect(404, "billing");
    http.get("/keys/billing")
        .bearer(&admin)
        .send()
        .await
        .expect(404, "billing");
    http.post("/keys/billing/rotate")
        .bearer(&admin)
        .send()
        .await
        .expect(404, "billing");
    server.stop().await;
}

async fn bearer_tokens_are_checked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let admin = http.login(ADMIN, ADMIN_PASSWORD).await;
    let created = http
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "guarded"}))
        .send()
        .await;
    assert_eq!(created.status, 201);
    let user = user_token(&http, "mallory").await;
    let expired = sign(&claims(ADMIN, &["admin"], now() - 7200, 60), JWT_SECRET);
    let forged = sign(
        &claims(ADMIN, &["admin"], now(), 60),
        b"another-secret-another-secret-xx",
    );

    let calls = || {
        [
            http.post("/keys").json(json!({"service_name": "new-one"})),
            http.get("/keys/guarded"),
            http.delete("/keys/guarded"),
            http.post("/keys/guarded/rotate"),
        ]
    };
    for call in calls() {
        call.send().await.expect(401, "missing bearer access token");
    }
    for (header, needle) in [
        ("Basic cm9vdDpwdw==".to_owned(), "Bearer <access token>"),
        ("Bearer".to_owned(), "Bearer <access token>"),
        ("Bearer junk".to_owned(), "invalid or expired"),
        (format!("Bearer {expired}"), "invalid or expired"),
        (format!("Bearer {forged}"), "invalid or expired"),
    ] {
        for call in calls() {
            let reply = call.header("authorization", &header).send().await;
            reply.expect(401, needle);
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    for call in calls() {
        call.bearer(&user).send().await.expect(403, NOT_ADMIN);
    }
    // The scheme is case-insensitive, as on gRPC.
    let reply = http
        .get("/keys/guarded")
        .header("authorization", &format!("bearer {admin}"))
        .send()
        .await;
    assert_eq!(reply.status, 200);
    // Nothing changed.
    let reply = http.get("/keys/guarded").bearer(&admin).send().await;
    assert_eq!(reply.json()["api_key"], created.json()["api_key"]);
    server.stop().await;
}

async fn bodies_are_checked_and_errors_name_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let admin = http.login(ADMIN, ADMIN_PASSWORD).await;
    let secret = "do-not-echo-this-password";

    for (path, body, field) in [
        ("/register", json!({"password": secret}), "username"),
        ("/register", json!({"username": "x"}), "password"),
        (
            "/register",
            json!({"username": "x", "password": 12_345_678_901_u64}),
            "password",
        ),
        (
            "/register",
            json!({"username": "x", "password": secret, "roles": ["admin"]}),
            "roles",
        ),
        ("/login", json!({"username": "x"}), "password"),
        ("/login", json!({"password": secret}), "username"),
        (
            "/login",
            json!({"username": null, "password": secret}),
            "username",
        ),
        ("/keys", json!({}), "service_name"),
        ("/keys", json!({"service_name": 5}), "service_name"),
        (
            "/keys",
            json!({"service_name": "x", "api_key": 5}),
            "api_key",
        ),
        ("/keys", json!({"service_name": ""}), "service_name"),
        (
            "/keys/x/rotate",
            json!({"grace_period_seconds": "soon"}),
            "grace_period_seconds",
        ),
    ] {
        let reply = http
            .post(path)
            .bearer(&admin)
            .json(body.clone())
            .send()
            .await;
        reply.expect(422, field);
        let detail = reply.detail();
        assert!(detail.starts_with(field), "{path} {body}: {detail}");
        assert!(
            !detail.contains(secret) && !detail.contains("12345678901"),
            "{detail}"
        );
    }
    for (content_type, body) in [
        ("application/json", "{\"username\": \"x\", "),
        ("application/json", "not json"),
        ("application/json", ""),
        ("application/json", "[\"x\"]"),
        (
            "text/plain",
            "{\"username\": \"x\", \"password\": \"x-password-123\"}",
        ),
        (
            "application/x-www-form-urlencoded",
            "username=x&password=x-password-123",
        ),
    ] {
        http.post("/login")
            .raw(content_type, body)
            .send()
            .await
            .expect(422, "body");
    }
    // No content type at all is read as JSON, as FastAPI does.
    let reply = http
        .post("/login")
        .body(format!(
            r#"{{"username": "{ADMIN}", "password": "{ADMIN_PASSWORD}"}}"#
        ))
        .send()
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    http.post("/login").send().await.expect(422, "body");
    let big = json!({"username": "x", "password": "p".repeat(70 * 1024)});
    let reply = http.post("/login").json(big).send().await;
    reply.expect(413, "too large");
    server.stop().await;
}

/// The original service's typical flow over HTTP (admin from the bootstrap config), then
/// the same key read over gRPC.
async fn the_original_flow_then_grpc_reads_the_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let token = http.login(ADMIN, ADMIN_PASSWORD).await;
    let created = http
        .post("/keys")
        .bearer(&token)
        .json(json!({"service_name": "payments"}))
        .send()
        .await;
    assert_eq!(created.status, 201);
    let got = http.get("/keys/payments").bearer(&token).send().await;
    assert_eq!(got.json(), created.json());
    let rotated = http
        .post("/keys/payments/rotate")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(rotated.status, 200);
    let rotated_key = rotated.json()["api_key"].as_str().unwrap().to_owned();

    let over_grpc = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "payments".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_grpc.api_key, rotated_key);

    assert_eq!(
        http.delete("/keys/payments")
            .bearer(&token)
            .send()
            .await
            .status,
        204
    );
    let gone = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "payments".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await;
}

async fn tokens_work_across_both_apis(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);

    // From HTTP /login to gRPC.
    let from_http = http.login(ADMIN, ADMIN_PASSWORD).await;
    let key = server
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "crossed".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &from_http,
        ))
        .await
        .unwrap()
        .into_inner();

    // From gRPC Login to HTTP.
    let from_grpc = server.admin_token().await;
    let reply = http.get("/keys/crossed").bearer(&from_grpc).send().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["api_key"], key.api_key.as_str());

    // A user's token means the same on both: valid, not admin.
    let user = user_token(&http, "walker").await;
    let denied = server
        .keys()
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "crossed".into(),
            },
            &user,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let grpc_user = server.user_token("runner").await;
    http.get("/keys/crossed")
        .bearer(&grpc_user)
        .send()
        .await
        .expect(403, NOT_ADMIN);
    server.stop().await;
}

async fn openapi_document_lists_the_endpoints(backend: Backend) {
    let server = TestServer::start(backend).await;
    let reply = http(&server).get("/openapi.json").send().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    // Every operation's responses are described, as OpenAPI requires.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    for (path, methods) in [
        ("/register", &["post"][..]),
        ("/login", &["post"]),
        ("/keys", &["post"]),
        ("/keys/{service_name}", &["get", "delete"]),
        ("/keys/{service_name}/rotate", &["post"]),
        ("/health", &["get"]),
        ("/metrics", &["get"]),
        ("/.well-known/jwks.json", &["get"]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let login = &doc["components"]["schemas"]["LoginRequest"];
    let required: Vec<&str> = login["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, vec!["username", "password"]);
    let create = &doc["components"]["schemas"]["CreateKeyRequest"];
    assert_eq!(create["required"], json!(["service_name"]));
    server.stop().await;
}

async fn unknown_paths_and_methods(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = http(&server);
    let reply = http.get("/nope").send().await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json(), json!({"detail": "Not Found"}));
    assert_eq!(http.get("/keys").send().await.status, 405);
    assert_eq!(
        http.call(http::Method::PUT, "/keys/x").send().await.status,
        405
    );
    // The operational endpoints are unchanged.
    let health = http.get("/health").send().await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "healthy"}))
    );
    let metrics = http.get("/metrics").send().await;
    assert_eq!(metrics.status, 200);
    server.stop().await;
}

/// While the database is unreachable the REST API answers 503, and nothing of the
/// driver's error reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn unreachable_database_answers_503() {
    let base = postgres_url();
    let (proxy, proxied, upstream) = crate::faults::Proxy::in_front_of(&base).await;
    let server = TestServer::start(Backend::Postgres(proxied)).await;
    let http = http(&server);
    let admin = http.login(ADMIN, ADMIN_PASSWORD).await;
    let created = http
        .post("/keys")
        .bearer(&admin)
        .json(json!({"service_name": "before"}))
        .send()
        .await;
    assert_eq!(created.status, 201);

    let port = proxy.cut().await;
    let reply = http.get("/keys/before").bearer(&admin).send().await;
    reply.expect(503, "unavailable");
    let reply = http
        .post("/login")
        .json(json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
        .send()
        .await;
    reply.expect(503, "");
    let detail = reply.detail().to_lowercase();
    assert!(
        !detail.contains("select") && !detail.contains("connect"),
        "{detail}"
    );
    // Back on the same address, so that the server stops without waiting on it.
    let _proxy = crate::faults::Proxy::start(port, upstream).await;
    server.stop().await;
}
