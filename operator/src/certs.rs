//! Webhook serving certificates: self-managed (a CA and a serving certificate made with
//! rcgen, kept in a Secret shared by the replicas, the CA written into the
//! MutatingWebhookConfiguration's `caBundle`, rotated before expiry) or external files
//! (cert-manager), reloaded when they change. Either way the TLS server asks
//! [`CertResolver`] on every handshake, so a new certificate is served without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// Errors of certificate handling; each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not build a certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM that does not hold a usable certificate chain or key.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being read.
        what: String,
        /// Why it is unusable.
        reason: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// The object and the action.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

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

fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
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

// ---------------------------------------------------------------------------------------
// Self-managed certificates: pure generation and rotation planning.

/// Secret data keys (the `kubernetes.io/tls` layout plus the CA material).
pub const KEY_TLS_CRT: &str = "tls.crt";
/// Serving key.
pub const KEY_TLS_KEY: &str = "tls.key";
/// Current CA certificate.
pub const KEY_CA_CRT: &str = "ca.crt";
/// Current CA key.
pub const KEY_CA_KEY: &str = "ca.key";
/// The `caBundle`: the current CA, plus the previous one until it expires.
pub const KEY_CA_BUNDLE: &str = "ca-bundle.crt";
const ANN_CA_NOT_AFTER: &str = "lameduck.dev/ca-not-after";

/// Whether `secret` holds self-managed certificates (written by the operator), as opposed
/// to a Secret provided from outside.
pub fn is_self_managed(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_CA_NOT_AFTER))
}
const ANN_PREVIOUS_CA_NOT_AFTER: &str = "lameduck.dev/previous-ca-not-after";
const ANN_SERVING_NOT_AFTER: &str = "lameduck.dev/serving-not-after";
const ANN_SERVING_NAMES: &str = "lameduck.dev/serving-names";
const ANN_SERVING_CA: &str = "lameduck.dev/serving-ca-not-after";
/// Annotate the Secret with this (any value) to rotate the CA and the serving certificate
/// at the next check: `kubectl annotate secret lameduck-webhook-tls lameduck.dev/rotate=now`.
/// The operator removes it when it writes the new certificates.
pub const ANN_ROTATE: &str = "lameduck.dev/rotate";
/// How long a replica keeps serving its old certificate after a new CA was generated: the
/// new CA must reach the API server's copy of the `caBundle` (an informer, usually well
/// under a second) before any replica presents a certificate signed by it.
pub const CA_PROPAGATION: Duration = Duration::from_secs(5);
const CA_COMMON_NAME: &str = "lameduck-webhook-ca";

/// Lifetimes and renewal margins of the self-managed certificates.
#[derive(Clone, Debug)]
pub struct CertPolicy {
    /// Names (DNS or IP) the serving certificate covers.
    pub names: Vec<String>,
    /// CA lifetime.
    pub ca_validity: Duration,
    /// Serving certificate lifetime.
    pub serving_validity: Duration,
    /// Renew a certificate when less than this fraction of its lifetime is left.
    pub renew_fraction: f64,
}

/// The certificate material as stored in the Secret (PEM) with its expiry times (unix s).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredCerts {
    /// CA certificate.
    pub ca_crt: String,
    /// CA key.
    pub ca_key: String,
    /// CA expiry.
    pub ca_not_after: i64,
    /// The previous CA certificate, kept in the bundle until it expires.
    pub previous_ca: Option<(String, i64)>,
    /// Serving certificate.
    pub tls_crt: String,
    /// Serving key.
    pub tls_key: String,
    /// Serving certificate expiry.
    pub serving_not_after: i64,
    /// The names it covers, comma-joined.
    pub serving_names: String,
    /// Expiry of the CA that signed it (identifies the CA generation).
    pub serving_ca_not_after: i64,
    /// Someone asked for a rotation ([`ANN_ROTATE`] on the Secret).
    pub rotate_requested: bool,
}

impl StoredCerts {
    /// The `caBundle` (PEM): the current CA and, until it expires, the previous one.
    pub fn ca_bundle(&self, now: i64) -> String {
        let mut bundle = self.ca_crt.clone();
        if let Some((pem, not_after)) = &self.previous_ca
            && *not_after > now
        {
            bundle.push_str(pem);
        }
        bundle
    }
}

/// What to renew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Everything is fresh.
    Nothing,
    /// A new serving certificate from the current CA.
    Serving,
    /// A new CA (the old one stays in the bundle) and a serving certificate from it.
    CaAndServing,
    /// Nothing stored yet.
    Create,
}

/// Decides what to renew at `now` (unix seconds). Pure.
pub fn plan_renewal(stored: Option<&StoredCerts>, policy: &CertPolicy, now: i64) -> Renewal {
    let Some(stored) = stored else {
        return Renewal::Create;
    };
    if stored.rotate_requested {
        return Renewal::CaAndServing;
    }
    let due = |not_after: i64, validity: Duration| {
        let margin = (validity.as_secs_f64() * policy.renew_fraction) as i64;
        not_after - now <= margin
    };
    if stored.ca_crt.is_empty() || due(stored.ca_not_after, policy.ca_validity) {
        return Renewal::CaAndServing;
    }
    if stored.tls_crt.is_empty()
        || due(stored.serving_not_after, policy.serving_validity)
        || stored.serving_names != policy.names.join(",")
        || stored.serving_ca_not_after != stored.ca_not_after
        // A serving certificate must not outlive its CA.
        || stored.serving_not_after > stored.ca_not_after
    {
        return Renewal::Serving;
    }
    Renewal::Nothing
}

/// How long to keep serving the old certificate before switching to one signed by a CA
/// generated at `ca_not_after - ca_validity`: until [`CA_PROPAGATION`] has passed. Pure.
pub fn ca_propagation_wait(certs: &StoredCerts, policy: &CertPolicy, now: i64) -> Duration {
    let generated = certs.ca_not_after - policy.ca_validity.as_secs() as i64;
    let ready = generated + CA_PROPAGATION.as_secs() as i64;
    Duration::from_secs(u64::try_from(ready - now).unwrap_or(0)).min(CA_PROPAGATION)
}

/// Applies a renewal: generates what `renewal` says. Pure apart from randomness.
pub fn renew(
    stored: Option<&StoredCerts>,
    renewal: Renewal,
    policy: &CertPolicy,
    now: i64,
) -> Result<StoredCerts, CertError> {
    let mut next = stored.cloned().unwrap_or_default();
    if matches!(renewal, Renewal::Create | Renewal::CaAndServing) {
        let (ca_crt, ca_key, not_after) = generate_ca(policy.ca_validity, now)?;
        next.previous_ca = stored
            .filter(|s| !s.ca_crt.is_empty() && s.ca_not_after > now)
            .map(|s| (s.ca_crt.clone(), s.ca_not_after));
        next.ca_crt = ca_crt;
        next.ca_key = ca_key;
        next.ca_not_after = not_after;
    }
    if renewal != Renewal::Nothing {
        let validity = policy.serving_validity.min(Duration::from_secs(
            u64::try_from(next.ca_not_after - now).unwrap_or_default(),
        ));
        let (crt, key, not_after) = issue_serving(&next.ca_key, &policy.names, validity, now)?;
        next.tls_crt = crt;
        next.tls_key = key;
        next.serving_not_after = not_after;
        next.serving_names = policy.names.join(",");
        next.serving_ca_not_after = next.ca_not_after;
    }
    next.rotate_requested = false;
    Ok(next)
}

fn ca_params(not_before: i64, not_after: i64) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    Ok(params)
}

fn to_offset(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new self-signed CA: (certificate PEM, key PEM, not-after unix seconds).
pub fn generate_ca(validity: Duration, now: i64) -> Result<(String, String, i64), CertError> {
    let not_after = now + validity.as_secs() as i64;
    let key = KeyPair::generate()?;
    let cert = ca_params(now - 300, not_after)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// A serving certificate for `names` signed by the CA key: (cert PEM, key PEM, not-after).
pub fn issue_serving(
    ca_key_pem: &str,
    names: &[String],
    validity: Duration,
    now: i64,
) -> Result<(String, String, i64), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The issuer is rebuilt from the fixed CA subject; rcgen derives the authority key
    // identifier from the key, so it matches the stored CA certificate.
    let issuer = Issuer::new(ca_params(0, 0)?, ca_key);
    let not_after = now + validity.as_secs() as i64;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names
            .first()
            .map(String::as_str)
            .unwrap_or("lameduck-webhook"),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = to_offset(now - 300);
    params.not_after = to_offset(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// Current time in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Self-managed certificates: the Secret and the webhook configuration.

/// Keeps the Secret, the `caBundle` and the resolver current.
#[derive(Clone)]
pub struct CertManager {
    /// Client for the Secret and the webhook configuration.
    pub client: kube::Client,
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept current, if any.
    pub webhook_config: Option<String>,
    /// Lifetimes and names.
    pub policy: CertPolicy,
    /// Where the serving certificate goes.
    pub resolver: Arc<CertResolver>,
}

impl CertManager {
    /// One pass: read the Secret, renew what is due (writing it back; a conflict means
    /// another replica was faster and the next pass reads its result), install the serving
    /// certificate, write the `caBundle`. Returns the stored material.
    pub async fn reconcile(&self) -> Result<StoredCerts, CertError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let kube_err = |what: String| move |source| CertError::Kube { what, source };
        let secret_ref = format!("Secret {}/{}", self.namespace, self.secret_name);
        let existing = secrets
            .get_opt(&self.secret_name)
            .await
            .map_err(kube_err(format!("reading {secret_ref}")))?;
        let stored = existing.as_ref().map(from_secret);
        let now = unix_now();
        let renewal = plan_renewal(stored.as_ref(), &self.policy, now);
        let current = if renewal == Renewal::Nothing {
            stored.unwrap_or_default()
        } else {
            let next = renew(stored.as_ref(), renewal, &self.policy, now)?;
            let secret = to_secret(&self.secret_name, &next, existing.as_ref(), now);
            let result = match &existing {
                Some(_) => {
                    secrets
                        .replace(&self.secret_name, &PostParams::default(), &secret)
                        .await
                }
                None => secrets.create(&PostParams::default(), &secret).await,
            };
            match result {
                Ok(_) => {
                    tracing::info!(secret = %secret_ref, ?renewal, "webhook certificates renewed")
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!(secret = %secret_ref, "another replica renewed the certificates first");
                    let theirs = secrets
                        .get(&self.secret_name)
                        .await
                        .map_err(kube_err(format!("reading {secret_ref}")))?;
                    return self.install(from_secret(&theirs), now).await;
                }
                Err(source) => {
                    return Err(CertError::Kube {
                        what: format!("writing {secret_ref}"),
                        source,
                    });
                }
            }
            next
        };
        self.install(current, now).await
    }

    /// Publishes the `caBundle` first, then serves the certificate: the API server must
    /// trust a new CA before any replica presents a certificate signed by it.
    async fn install(&self, certs: StoredCerts, now: i64) -> Result<StoredCerts, CertError> {
        if let Some(name) = &self.webhook_config {
            write_ca_bundle(&self.client, name, certs.ca_bundle(now).as_bytes()).await?;
        }
        if self.resolver.is_loaded() && !self.resolver.serves(certs.tls_crt.as_bytes()) {
            let wait = ca_propagation_wait(&certs, &self.policy, now);
            if !wait.is_zero() {
                tracing::info!(
                    ?wait,
                    "new webhook CA: serving its certificate once the API server trusts it"
                );
                tokio::time::sleep(wait).await;
            }
        }
        self.resolver
            .set_pem(certs.tls_crt.as_bytes(), certs.tls_key.as_bytes())?;
        Ok(certs)
    }

    /// Reconciles every `interval` until cancelled, handing each installed set to
    /// `installed` (the expiry metric); failures are logged and retried.
    pub async fn run(
        self,
        interval: Duration,
        mut installed: impl FnMut(&StoredCerts) + Send,
        token: CancellationToken,
    ) {
        loop {
            match self.reconcile().await {
                Ok(stored) => installed(&stored),
                Err(error) => {
                    tracing::warn!(%error, "webhook certificate reconcile failed; retrying")
                }
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Sets `caBundle` on every webhook of the configuration where it differs.
pub async fn write_ca_bundle(
    client: &kube::Client,
    name: &str,
    bundle: &[u8],
) -> Result<(), CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    let mut config = api.get(name).await.map_err(|source| CertError::Kube {
        what: format!("reading {what}"),
        source,
    })?;
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            != Some(bundle)
        {
            webhook.client_config.ca_bundle = Some(ByteString(bundle.to_vec()));
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config)
            .await
            .map_err(|source| CertError::Kube {
                what: format!("writing caBundle of {what}"),
                source,
            })?;
        tracing::info!(webhook_configuration = %name, "caBundle updated");
    }
    Ok(())
}

fn from_secret(secret: &Secret) -> StoredCerts {
    let data = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let ann = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let num = |key: &str| ann(key).parse::<i64>().unwrap_or_default();
    let previous = data(KEY_CA_BUNDLE)
        .strip_prefix(data(KEY_CA_CRT).as_str())
        .map(str::to_owned);
    StoredCerts {
        ca_crt: data(KEY_CA_CRT),
        ca_key: data(KEY_CA_KEY),
        ca_not_after: num(ANN_CA_NOT_AFTER),
        previous_ca: previous
            .filter(|p| !p.trim().is_empty())
            .map(|p| (p, num(ANN_PREVIOUS_CA_NOT_AFTER))),
        tls_crt: data(KEY_TLS_CRT),
        tls_key: data(KEY_TLS_KEY),
        serving_not_after: num(ANN_SERVING_NOT_AFTER),
        serving_names: ann(ANN_SERVING_NAMES),
        serving_ca_not_after: num(ANN_SERVING_CA),
        rotate_requested: secret
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANN_ROTATE)),
    }
}

fn to_secret(name: &str, certs: &StoredCerts, existing: Option<&Secret>, now: i64) -> Secret {
    let mut annotations: BTreeMap<String, String> = existing
        .and_then(|s| s.metadata.annotations.clone())
        .unwrap_or_default();
    if !certs.rotate_requested {
        annotations.remove(ANN_ROTATE);
    }
    annotations.insert(ANN_CA_NOT_AFTER.into(), certs.ca_not_after.to_string());
    annotations.insert(
        ANN_SERVING_NOT_AFTER.into(),
        certs.serving_not_after.to_string(),
    );
    annotations.insert(ANN_SERVING_NAMES.into(), certs.serving_names.clone());
    annotations.insert(
        ANN_SERVING_CA.into(),
        certs.serving_ca_not_after.to_string(),
    );
    match &certs.previous_ca {
        Some((_, not_after)) => {
            annotations.insert(ANN_PREVIOUS_CA_NOT_AFTER.into(), not_after.to_string())
        }
        None => annotations.remove(ANN_PREVIOUS_CA_NOT_AFTER),
    };
    let data = [
        (KEY_CA_CRT, &certs.ca_crt),
        (KEY_CA_KEY, &certs.ca_key),
        (KEY_TLS_CRT, &certs.tls_crt),
        (KEY_TLS_KEY, &certs.tls_key),
        (KEY_CA_BUNDLE, &certs.ca_bundle(now)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
            labels: existing.and_then(|s| s.metadata.labels.clone()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

// ---------------------------------------------------------------------------------------
// External certificates.

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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn policy() -> CertPolicy {
        CertPolicy {
            names: vec!["lameduck-webhook.lameduck.svc".into(), "127.0.0.1".into()],
            ca_validity: Duration::from_secs(3650 * DAY),
            serving_validity: Duration::from_secs(90 * DAY),
            renew_fraction: 1.0 / 3.0,
        }
    }

    #[test]
    fn create_then_nothing_then_serving_then_ca() {
        let policy = policy();
        let now = 1_700_000_000;
        assert_eq!(plan_renewal(None, &policy, now), Renewal::Create);
        let certs = renew(None, Renewal::Create, &policy, now).expect("create");
        assert!(certs.previous_ca.is_none());
        assert_eq!(plan_renewal(Some(&certs), &policy, now), Renewal::Nothing);
        // Two thirds of the serving lifetime later: renew the serving certificate only.
        let later = now + 61 * DAY as i64;
        assert_eq!(plan_renewal(Some(&certs), &policy, later), Renewal::Serving);
        let renewed = renew(Some(&certs), Renewal::Serving, &policy, later).expect("serving");
        assert_eq!(renewed.ca_crt, certs.ca_crt);
        assert_ne!(renewed.tls_crt, certs.tls_crt);
        // Near the CA's end: new CA, the old one stays in the bundle until it expires.
        let late = certs.ca_not_after - DAY as i64;
        assert_eq!(
            plan_renewal(Some(&renewed), &policy, late),
            Renewal::CaAndServing
        );
        let rotated = renew(Some(&renewed), Renewal::CaAndServing, &policy, late).expect("ca");
        assert_ne!(rotated.ca_crt, certs.ca_crt);
        assert!(rotated.ca_bundle(late).contains(certs.ca_crt.trim()));
        assert!(
            !rotated
                .ca_bundle(certs.ca_not_after + 1)
                .contains(certs.ca_crt.trim())
        );
        // The served pair is usable by rustls.
        CertResolver::default()
            .set_pem(rotated.tls_crt.as_bytes(), rotated.tls_key.as_bytes())
            .expect("usable");
    }

    #[test]
    fn the_rotate_annotation_renews_the_ca_and_is_removed() {
        let policy = policy();
        let now = 1_700_000_000;
        let certs = renew(None, Renewal::Create, &policy, now).expect("create");
        let mut secret = to_secret("tls", &certs, None, now);
        secret
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANN_ROTATE.into(), "now".into());
        let stored = from_secret(&secret);
        assert!(stored.rotate_requested);
        assert_eq!(
            plan_renewal(Some(&stored), &policy, now + 10),
            Renewal::CaAndServing
        );
        let rotated = renew(Some(&stored), Renewal::CaAndServing, &policy, now + 10).expect("ca");
        assert!(rotated.ca_bundle(now + 10).contains(certs.ca_crt.trim()));
        let written = to_secret("tls", &rotated, Some(&secret), now + 10);
        let annotations = written.metadata.annotations.as_ref().expect("annotations");
        assert!(!annotations.contains_key(ANN_ROTATE), "{annotations:?}");
        assert_eq!(
            plan_renewal(Some(&from_secret(&written)), &policy, now + 10),
            Renewal::Nothing
        );
    }

    #[test]
    fn a_new_ca_is_served_only_after_it_propagated() {
        let policy = policy();
        let now = 1_700_000_000;
        let certs = renew(None, Renewal::Create, &policy, now).expect("create");
        assert_eq!(ca_propagation_wait(&certs, &policy, now), CA_PROPAGATION);
        assert_eq!(
            ca_propagation_wait(&certs, &policy, now + 2),
            CA_PROPAGATION - Duration::from_secs(2)
        );
        assert!(ca_propagation_wait(&certs, &policy, now + 60).is_zero());
        let resolver = CertResolver::default();
        assert!(!resolver.serves(certs.tls_crt.as_bytes()));
        resolver
            .set_pem(certs.tls_crt.as_bytes(), certs.tls_key.as_bytes())
            .expect("usable");
        assert!(resolver.serves(certs.tls_crt.as_bytes()));
        let next = renew(Some(&certs), Renewal::Serving, &policy, now).expect("serving");
        assert!(!resolver.serves(next.tls_crt.as_bytes()));
    }

    #[test]
    fn changed_names_reissue_the_serving_certificate() {
        let mut policy = policy();
        let certs = renew(None, Renewal::Create, &policy, 1_700_000_000).expect("create");
        policy.names.push("extra.example".into());
        assert_eq!(
            plan_renewal(Some(&certs), &policy, 1_700_000_000),
            Renewal::Serving
        );
    }

    #[test]
    fn secret_round_trip() {
        let now = 1_700_000_000;
        let certs = renew(None, Renewal::Create, &policy(), now).expect("create");
        let rotated = renew(Some(&certs), Renewal::CaAndServing, &policy(), now).expect("ca");
        let secret = to_secret("tls", &rotated, None, now);
        assert_eq!(from_secret(&secret), rotated);
    }

    #[test]
    fn garbage_pem_is_an_error() {
        let err = CertResolver::default()
            .set_pem(b"nope", b"nope")
            .expect_err("garbage");
        assert!(err.to_string().contains("invalid"), "{err}");
    }
}
