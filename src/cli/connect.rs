//! The gRPC channel to the server named by `--server` / `KMS_SERVER`: plaintext for
//! `http://`, TLS for `https://` (the CA of `--ca-file`, else the system's CA bundle:
//! `SSL_CERT_FILE` or the usual paths), with a client certificate for mutual TLS
//! (`--cert-file`, `--key-file`).

use std::{path::Path, time::Duration};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{
    ClientOptions,
    error::{CliError, chain},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server URL as logins are filed under it.
pub fn server_key(server: &str) -> String {
    server.trim().trim_end_matches('/').to_owned()
}

pub async fn connect(options: &ClientOptions) -> Result<Channel, CliError> {
    let server = server_key(&options.server);
    let https = server.starts_with("https://");
    if !https && !server.starts_with("http://") {
        return Err(CliError::other(format!(
            "--server {server}: expected an http:// or https:// URL"
        )));
    }
    if !https && !options.allow_plaintext && !is_loopback(&server) {
        return Err(CliError::other(format!(
            "--server {server}: http:// to another machine would send passwords and tokens in clear; use https:// (with --ca-file for a private CA), or --allow-plaintext on a network you trust"
        )));
    }
    let mut endpoint = Endpoint::from_shared(server.clone())
        .map_err(|e| CliError::other(format!("--server {server}: {}", chain(&e))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if https {
        let mut tls = ClientTlsConfig::new();
        tls = match &options.ca_file {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read(path, "--ca-file")?)),
            None => tls.ca_certificate(Certificate::from_pem(system_roots()?)),
        };
        if let (Some(cert), Some(key)) = (&options.cert_file, &options.key_file) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--cert-file")?,
                read(key, "--key-file")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CliError::other(format!("TLS settings: {}", chain(&e))))?;
    } else if options.ca_file.is_some() || options.cert_file.is_some() {
        return Err(CliError::other(format!(
            "--ca-file and --cert-file need an https:// server URL, not {server}"
        )));
    }
    endpoint
        .connect()
        .await
        .map_err(|e| CliError::unreachable(&server, &chain(&e)))
}

/// Whether the URL's host is this machine (`localhost`, 127.0.0.0/8, `::1`): the one
/// place plaintext is safe without being asked for. A URL that does not parse is not.
fn is_loopback(url: &str) -> bool {
    let Some(host) = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The system's CA bundle, as OpenSSL finds it.
fn system_roots() -> Result<Vec<u8>, CliError> {
    let given = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let candidates = given.into_iter().chain(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(std::path::PathBuf::from),
    );
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            return Ok(pem);
        }
    }
    Err(CliError::other(
        "no CA bundle found for https:// (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt): give the server's CA with --ca-file",
    ))
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::other(format!("{flag}: cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn plaintext_is_for_this_machine_only() {
        for url in [
            "http://127.0.0.1:50051",
            "http://127.9.9.9:1",
            "http://localhost:50051",
            "http://LOCALHOST",
            "http://[::1]:50051",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:50051",
            "http://kms.prod:50051",
            "http://localhost.evil.example:1",
            "http://127.0.0.1.evil.example",
            "http://[::2]:1",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
