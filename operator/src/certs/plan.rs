//! Self-managed certificates: generation and rotation planning (pure).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::*;

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
pub(crate) const ANN_CA_NOT_AFTER: &str = "lameduck.dev/ca-not-after";

/// Whether `secret` holds self-managed certificates (written by the operator), as opposed
/// to a Secret provided from outside.
pub fn is_self_managed(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_CA_NOT_AFTER))
}
pub(crate) const ANN_PREVIOUS_CA_NOT_AFTER: &str = "lameduck.dev/previous-ca-not-after";
pub(crate) const ANN_SERVING_NOT_AFTER: &str = "lameduck.dev/serving-not-after";
pub(crate) const ANN_SERVING_NAMES: &str = "lameduck.dev/serving-names";
pub(crate) const ANN_SERVING_CA: &str = "lameduck.dev/serving-ca-not-after";
/// Annotate the Secret with this (any value) to rotate the CA and the serving certificate
/// at the next check: `kubectl annotate secret lameduck-webhook-tls lameduck.dev/rotate=now`.
/// The operator removes it when it writes the new certificates.
pub const ANN_ROTATE: &str = "lameduck.dev/rotate";
/// How long a replica keeps serving its old certificate after a new CA was generated: the
/// new CA must reach the API server's copy of the `caBundle` (an informer, usually well
/// under a second) before any replica presents a certificate signed by it.
pub const CA_PROPAGATION: Duration = Duration::from_secs(5);
pub(crate) const CA_COMMON_NAME: &str = "lameduck-webhook-ca";

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

pub(crate) fn ca_params(not_before: i64, not_after: i64) -> Result<CertificateParams, CertError> {
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

pub(crate) fn to_offset(unix: i64) -> time::OffsetDateTime {
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
