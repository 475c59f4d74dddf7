//! The TLS files of the gRPC and HTTP listeners, read at start so that a bad path
//! fails before anything is served.

use std::{fs, path::Path};

use zeroize::Zeroizing;

use super::{ConfigError, ServeArgs};

/// TLS material, read at start so that a bad path fails before serving.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Zeroizing<Vec<u8>>,
    /// Set: clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    /// None without KMS_TLS_CERT and KMS_TLS_KEY; a client CA needs both.
    pub(super) fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert_pem: read_file("KMS_TLS_CERT", cert)?,
                key_pem: Zeroizing::new(read_file("KMS_TLS_KEY", key)?),
                client_ca_pem: self
                    .tls_client_ca
                    .as_deref()
                    .map(|ca| read_file("KMS_TLS_CLIENT_CA", ca))
                    .transpose()?,
            })),
            (None, None) if self.tls_client_ca.is_some() => Err(ConfigError(
                "KMS_TLS_CLIENT_CA needs KMS_TLS_CERT and KMS_TLS_KEY".into(),
            )),
            (None, None) => Ok(None),
            _ => Err(ConfigError(
                "KMS_TLS_CERT and KMS_TLS_KEY must be set together".into(),
            )),
        }
    }
}

fn read_file(name: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    fs::read(path).map_err(|e| ConfigError(format!("{name}: cannot read {}: {e}", path.display())))
}
