//! The certificate the TLS server presents, swapped without a restart.

use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::*;

/// The certificate the TLS server presents; swapped atomically, read on every handshake.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// Installs a new certificate chain and key (PEM); the next handshake uses it.
    pub fn set_pem(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), CertError> {
        let key = certified_key(chain_pem, key_pem)?;
        // The slot only ever holds a whole key: a panic elsewhere while it was locked
        // cannot have left it half-written, so a poisoned lock is used as it is.
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(key));
        Ok(())
    }

    /// Whether the installed certificate is the first one of `chain_pem`.
    pub fn serves(&self, chain_pem: &[u8]) -> bool {
        let Ok(leaf) = CertificateDer::from_pem_slice(chain_pem) else {
            return false;
        };
        self.installed()
            .is_some_and(|k| k.cert.first() == Some(&leaf))
    }

    /// Whether a certificate is installed.
    pub fn is_loaded(&self) -> bool {
        self.installed().is_some()
    }

    fn installed(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The rustls server configuration that resolves through `self` (ALPN h2, http/1.1).
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()))
        // The ring provider supports the default versions; this cannot fail.
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.installed()
    }
}

pub(crate) fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let invalid = |what: &str, reason: String| CertError::Invalid {
        what: what.into(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("certificate PEM", e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid("certificate PEM", "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid("private key PEM", e.to_string()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid("private key", e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing_key))
}
