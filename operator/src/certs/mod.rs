//! Webhook serving certificates: self-managed (a CA and a serving certificate made with
//! rcgen, kept in a Secret shared by the replicas, the CA written into the
//! MutatingWebhookConfiguration's `caBundle`, rotated before expiry) or external files
//! (cert-manager), reloaded when they change. Either way the TLS server asks
//! [`CertResolver`] on every handshake, so a new certificate is served without a restart.

mod files;
mod plan;
mod resolver;
mod secret;

pub use files::*;
pub use plan::*;
pub use resolver::*;
pub use secret::*;

use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reconcile_is_retried_soon_then_less_often() {
        use std::time::Duration;
        let interval = Duration::from_secs(60);
        let mut waits = Vec::new();
        let mut previous = None;
        for _ in 0..8 {
            let wait = secret::next_retry(previous, interval);
            waits.push(wait.as_secs());
            previous = Some(wait);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // Never longer than the interval, even a short one.
        assert_eq!(
            secret::next_retry(None, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
    use std::time::Duration;

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
