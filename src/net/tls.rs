//! The TLS configuration both listeners share: one certificate, and with a client CA
//! the same mutual-TLS rule on every port that carries secrets.

use std::sync::Arc;

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// An acceptor speaking the given ALPN protocols (`h2`, `http/1.1`), with the
/// provider named explicitly so that no process-wide default is needed.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("KMS_TLS_CERT: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("KMS_TLS_CERT holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem)
        .map_err(|e| TlsError(format!("KMS_TLS_KEY: {e}")))?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match &files.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| TlsError(format!("KMS_TLS_CLIENT_CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("KMS_TLS_CLIENT_CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError(format!("KMS_TLS_CLIENT_CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("KMS_TLS_CERT / KMS_TLS_KEY: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}
