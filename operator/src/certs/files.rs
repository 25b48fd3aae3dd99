//! External certificates: files provided from outside, reloaded when they change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

/// Certificate and key files provided from outside (e.g. a cert-manager Secret volume).
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    /// Reads both files and installs them in the resolver.
    pub fn load(&self, resolver: &CertResolver) -> Result<(), CertError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| CertError::Read {
                path: path.clone(),
                source,
            })
        };
        resolver.set_pem(&read(&self.cert)?, &read(&self.key)?)
    }

    fn fingerprint(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&self.cert).ok()?,
            std::fs::read(&self.key).ok()?,
        ))
    }

    /// Reloads the files whenever their content changes (checked every `interval`); a
    /// broken pair is logged and the previous certificate kept.
    pub async fn watch(
        self,
        resolver: Arc<CertResolver>,
        interval: Duration,
        token: CancellationToken,
    ) {
        let mut last = self.fingerprint();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let now = self.fingerprint();
            if now.is_some() && now != last {
                match self.load(&resolver) {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "new webhook certificate files unusable; keeping the old one")
                    }
                }
                last = now;
            }
        }
    }
}
