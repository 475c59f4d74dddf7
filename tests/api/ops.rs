//! Operability: gRPC health and reflection, HTTP /health and /metrics, limits, TLS.

use std::time::Duration;

use kms::{
    config::TlsFiles,
    http::http_get,
    proto::kms::v1::{self as pb, auth_client::AuthClient},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_stream::StreamExt;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use zeroize::Zeroizing;

use crate::{
    both_backends,
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer, authed, postgres_url},
};

both_backends!(
    health_reports_serving_for_each_service,
    metrics_count_a_flow
);

async fn check(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner()
        .status;
    Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
}

async fn health_reports_serving_for_each_service(backend: Backend) {
    let server = TestServer::start(backend).await;
    for service in ["", "kms.v1.Auth", "kms.v1.Keys"] {
        assert_eq!(
            check(&server.channel, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // An unknown service is NOT_FOUND, as the health protocol says.
    assert_eq!(
        check(&server.channel, "nope").await.unwrap_err().code(),
        Code::NotFound
    );
    let (status, body) = http_get(server.http_addr, "/health").await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"status":"healthy"}"#));
    let (status, _) = http_get(server.http_addr, "/nope").await.unwrap();
    assert_eq!(status, 404);
    server.stop().await;
}

async fn metrics_count_a_flow(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    let created = keys
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "metered".into(),
                api_key: None,
                description: String::new(),
                ttl_seconds: 0,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    for key in [created.api_key.as_str(), "kms_wrong"] {
        keys.verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: key.into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    }
    let _ = keys
        .get_key(pb::GetKeyRequest {
            service_name: "metered".into(),
        })
        .await;
    let _ = server
        .auth()
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: "wrong-password-x".into(),
        })
        .await;

    let (status, text) = http_get(server.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        r#"grpc_server_started_total{grpc_method="CreateKey",grpc_service="kms.v1.Keys",grpc_type="unary"} 1"#,
        r#"grpc_server_handled_total{grpc_code="OK",grpc_method="CreateKey",grpc_service="kms.v1.Keys",grpc_type="unary"} 1"#,
        r#"grpc_server_handled_total{grpc_code="OK",grpc_method="VerifyKey",grpc_service="kms.v1.Keys",grpc_type="unary"} 2"#,
        r#"grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="GetKey",grpc_service="kms.v1.Keys",grpc_type="unary"} 1"#,
        r#"grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="Login",grpc_service="kms.v1.Auth",grpc_type="unary"} 1"#,
        r#"grpc_server_handling_seconds_count{grpc_method="VerifyKey",grpc_service="kms.v1.Keys",grpc_type="unary"} 2"#,
        r#"kms_login_attempts_total{outcome="success"} 1"#,
        r#"kms_login_attempts_total{outcome="failure"} 1"#,
        r#"kms_key_verifications_total{outcome="valid"} 1"#,
        r#"kms_key_verifications_total{outcome="invalid"} 1"#,
        r#"kms_tokens_issued_total{kind="access"} 1"#,
        "kms_keys_active 1",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(!text.contains(&created.api_key));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::start(Backend::Sqlite).await;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["kms.v1.Auth", "kms.v1.Keys", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected.to_owned()), "{names:?}");
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "kms.v1.Keys".into(),
            ),
        ),
    };
    let mut stream =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
    let response = stream.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KMS_TEST_POSTGRES_URL"]
async fn health_follows_the_database_without_restart() {
    use crate::faults::Proxy;
    let base = postgres_url();
    let (proxy, proxied, upstream) = Proxy::in_front_of(&base).await;
    let server = TestServer::start(Backend::Postgres(proxied)).await;
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: "kms.v1.Keys".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let port = proxy.cut().await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    assert_eq!(
        check(&server.channel, "").await.unwrap(),
        ServingStatus::NotServing
    );
    let (status, body) = http_get(server.http_addr, "/health").await.unwrap();
    assert_eq!((status, body.as_str()), (503, r#"{"status":"unhealthy"}"#));

    let _proxy = crate::faults::Proxy::start(port, upstream).await;
    let next = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .unwrap();
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::Serving);
    assert_eq!(http_get(server.http_addr, "/health").await.unwrap().0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_clear_codes() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.max_concurrent_requests = 1;
        c.password_hash_concurrency = 1;
    })
    .await;
    // Too large a message is refused before it is decoded.
    let err = server
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            token: "x".repeat(70_000),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );

    // One call at a time: a burst of logins (each an argon2 hash) overflows at once.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let mut auth = server.auth();
            tokio::spawn(async move {
                auth.login(pb::LoginRequest {
                    username: ADMIN.into(),
                    password: ADMIN_PASSWORD.into(),
                })
                .await
            })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert!(ok >= 1 && exhausted >= 1, "ok {ok}, exhausted {exhausted}");
    // Health is never limited.
    assert_eq!(
        check(&server.channel, "").await.unwrap(),
        ServingStatus::Serving
    );
    server.stop().await;

    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.request_timeout = Duration::from_millis(1);
    })
    .await;
    let err = server
        .auth()
        .login(pb::LoginRequest {
            username: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    server.stop().await;
}

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_identity: Identity,
    client_cert_pem: String,
    client_key_pem: String,
}

fn make_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["peer-service".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_identity: Identity::from_pem(client_cert.pem(), client_key.serialize_pem()),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn validate(channel: Channel) -> Result<pb::ValidateTokenResponse, tonic::Status> {
    AuthClient::new(channel)
        .validate_token(pb::ValidateTokenRequest { token: "t".into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn plaintext(addr: std::net::SocketAddr) -> Result<pb::ValidateTokenResponse, String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    validate(channel).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let pki = make_pki();
    let server = TestServer::start_with_tls(Backend::Sqlite, |c| {
        c.tls = Some(TlsFiles {
            cert_pem: pki.server_cert_pem.clone().into_bytes(),
            key_pem: Zeroizing::new(pki.server_key_pem.clone().into_bytes()),
            client_ca_pem: None,
        });
    })
    .await;
    let trust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = tls_channel(server.addr, trust.clone()).await.unwrap();
    assert!(!validate(channel).await.unwrap().valid);
    assert!(
        plaintext(server.addr).await.is_err(),
        "plaintext must not work on a TLS port"
    );
    server.stop().await;

    let server = TestServer::start_with_tls(Backend::Sqlite, |c| {
        c.tls = Some(TlsFiles {
            cert_pem: pki.server_cert_pem.clone().into_bytes(),
            key_pem: Zeroizing::new(pki.server_key_pem.clone().into_bytes()),
            client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        });
    })
    .await;
    // Without a client certificate: refused during the handshake or on the first call.
    let without = match tls_channel(server.addr, trust.clone()).await {
        Ok(channel) => validate(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(without, "mTLS must refuse a client without a certificate");
    // A certificate from another CA is refused too.
    let stranger = make_pki();
    let wrong = match tls_channel(
        server.addr,
        trust.clone().identity(stranger.client_identity),
    )
    .await
    {
        Ok(channel) => validate(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(wrong, "mTLS must refuse a certificate from another CA");
    let channel = tls_channel(server.addr, trust.identity(pki.client_identity))
        .await
        .unwrap();
    assert!(!validate(channel).await.unwrap().valid);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_can_be_switched_off() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.ext_authz = false).await;
    let err = crate::ext_authz::client(server.channel.clone())
        .check(crate::ext_authz::check_request(&[(
            "x-api-key",
            "whatever-key-whatever-key-whatever-key",
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    server.stop().await;
}

/// One HTTPS/1.1 request: (status, body), or why it failed. `client_cert` presents the
/// PKI's client certificate.
async fn https(
    addr: std::net::SocketAddr,
    pki: &Pki,
    client_cert: bool,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Full};
    use tokio_rustls::rustls::{
        ClientConfig, RootCertStore,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(std::sync::Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = if client_cert {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// With TLS and mutual TLS configured, the REST API is served over the same TLS with
/// the same client-certificate rule; probes use the plaintext probe listener, which
/// carries nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_is_served_over_the_same_tls() {
    let pki = make_pki();
    let server = TestServer::start_with_tls(Backend::Sqlite, |c| {
        c.tls = Some(TlsFiles {
            cert_pem: pki.server_cert_pem.clone().into_bytes(),
            key_pem: Zeroizing::new(pki.server_key_pem.clone().into_bytes()),
            client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        });
        c.probe_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let login = format!(r#"{{"username":"{ADMIN}","password":"{ADMIN_PASSWORD}"}}"#);

    // Plaintext: no HTTP answer at all, so no password can travel in the clear.
    assert!(http_get(server.http_addr, "/health").await.is_err());
    let mut plain = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
        login.len()
    );
    let _ = plain.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("access_token"), "{answer}");
    assert!(!answer.starts_with("HTTP/"), "{answer}");

    // TLS without a client certificate: refused.
    assert!(
        https(server.http_addr, &pki, false, "POST", "/login", &login)
            .await
            .is_err()
    );
    // TLS with one: the REST API works.
    let (status, body) = https(server.http_addr, &pki, true, "POST", "/login", &login)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("access_token"));
    let (status, _) = https(server.http_addr, &pki, true, "GET", "/health", "")
        .await
        .unwrap();
    assert_eq!(status, 200);

    // The probe listener: /health and /metrics in plaintext, nothing else.
    let probe = server.probe_addr.unwrap();
    assert_eq!(http_get(probe, "/health").await.unwrap().0, 200);
    let (status, metrics) = http_get(probe, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("kms_keys_active"), "{metrics}");
    for path in ["/keys/anything", "/openapi.json", "/.well-known/jwks.json"] {
        assert_eq!(http_get(probe, path).await.unwrap().0, 404, "{path}");
    }
    server.stop().await;
}
