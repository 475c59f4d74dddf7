//! `https://` servers: the CA from --ca-file, and a client certificate for mutual TLS.

use kms::config::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use zeroize::Zeroizing;

use super::Client;
use crate::common::{Backend, TestServer};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let signed = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: signed(vec!["localhost".into()]),
        client: signed(vec!["admin-laptop".into()]),
        ca: ca.pem(),
    }
}

async fn tls_server(pki: &Pki, mutual: bool) -> TestServer {
    let files = TlsFiles {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: Zeroizing::new(pki.server.1.clone().into_bytes()),
        client_ca_pem: mutual.then(|| pki.ca.clone().into_bytes()),
    };
    TestServer::start_with_tls(Backend::Sqlite, |c| c.tls = Some(files)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_and_mutual_tls_with_a_client_certificate() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = write("ca.pem", &pki.ca);
    let cert = write("client.pem", &pki.client.0);
    let key = write("client.key", &pki.client.1);

    let server = tls_server(&pki, false).await;
    let client = Client::new(format!("https://localhost:{}", server.addr.port()));
    // Without the CA the server's certificate is not trusted.
    client
        .login("root", crate::common::ADMIN_PASSWORD)
        .await
        .fails(7, &["UNAVAILABLE", "https://localhost"]);
    client
        .run_with(
            &[
                "login",
                "--username",
                "root",
                "--password-stdin",
                "--ca-file",
                &ca,
            ],
            &format!("{}\n", crate::common::ADMIN_PASSWORD),
        )
        .await
        .ok();
    client
        .run(&["keys", "create", "over-tls", "--ca-file", &ca])
        .await
        .ok();
    server.stop().await;

    let server = tls_server(&pki, true).await;
    let client = Client::new(format!("https://localhost:{}", server.addr.port()));
    let login = [
        "login",
        "--username",
        "root",
        "--password-stdin",
        "--ca-file",
        &ca,
    ];
    let password = format!("{}\n", crate::common::ADMIN_PASSWORD);
    let refused = client.run_with(&login, &password).await;
    assert_ne!(
        refused.code, 0,
        "mTLS refuses a client without a certificate"
    );
    let mut with_cert = login.to_vec();
    with_cert.extend(["--cert-file", &cert, "--key-file", &key]);
    client.run_with(&with_cert, &password).await.ok();
    let listed = client
        .run(&[
            "keys",
            "list",
            "-o",
            "json",
            "--ca-file",
            &ca,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
        ])
        .await
        .json();
    assert!(listed["keys"].as_array().unwrap().is_empty());
    server.stop().await;
}
