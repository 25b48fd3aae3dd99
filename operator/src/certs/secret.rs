//! Self-managed certificates: the Secret shared by the replicas and the webhook
//! configuration's `caBundle` (the I/O around [`super::plan`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

use super::*;

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
        let mut retry = None;
        loop {
            let wait = match self.reconcile().await {
                Ok(stored) => {
                    installed(&stored);
                    retry = None;
                    interval
                }
                Err(error) => {
                    let wait = next_retry(retry, interval);
                    tracing::warn!(%error, retry_in = ?wait, "webhook certificate reconcile failed; retrying");
                    retry = Some(wait);
                    wait
                }
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The first retry after a failed reconcile comes after this long.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// How long to wait after a failed reconcile: 1 s, then twice the previous wait, at most
/// `interval`. A replica without a certificate is not ready; the usual failure is a
/// conflict with the other replica writing the same Secret or `caBundle` at start-up,
/// which the next attempt resolves, so waiting a whole interval would only keep the
/// replica unready (a `helm install --wait` then waited a minute).
pub fn next_retry(previous: Option<Duration>, interval: Duration) -> Duration {
    previous
        .map_or(FIRST_RETRY, |previous| previous.saturating_mul(2))
        .min(interval)
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

pub(crate) fn from_secret(secret: &Secret) -> StoredCerts {
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

pub(crate) fn to_secret(
    name: &str,
    certs: &StoredCerts,
    existing: Option<&Secret>,
    now: i64,
) -> Secret {
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
