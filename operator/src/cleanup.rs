//! `lameduck-operator cleanup`: deletes what the operator created at run time in its
//! namespace, which Helm does not know about: the self-managed certificate Secret and the
//! leader-election Lease. The chart runs it as a `post-delete` hook, once the operator's
//! replicas (which would recreate both) are gone.

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Client};

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleaned {
    /// Deleted.
    Deleted,
    /// Not there (never created, or already deleted).
    Absent,
    /// Left alone, and why.
    Kept(&'static str),
}

impl std::fmt::Display for Cleaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cleaned::Deleted => f.write_str("deleted"),
            Cleaned::Absent => f.write_str("absent"),
            Cleaned::Kept(why) => write!(f, "kept: {why}"),
        }
    }
}

/// Deletes the certificate Secret (only if the operator wrote it: a Secret provided from
/// outside, e.g. by cert-manager, stays) and the Lease in `namespace`.
pub async fn cleanup(
    client: Client,
    namespace: &str,
    secret: &str,
    lease: &str,
) -> anyhow::Result<Vec<(String, Cleaned)>> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let secret_result = match secrets
        .get_opt(secret)
        .await
        .with_context(|| format!("reading Secret {namespace}/{secret}"))?
    {
        None => Cleaned::Absent,
        Some(found) if !crate::certs::is_self_managed(&found) => {
            Cleaned::Kept("not written by the operator (provided from outside)")
        }
        // The uid precondition: never delete a Secret created after the one we looked at.
        Some(found) => delete(&secrets, secret, found.metadata.uid)
            .await
            .with_context(|| format!("deleting Secret {namespace}/{secret}"))?,
    };
    let leases = Api::<Lease>::namespaced(client, namespace);
    let lease_result = delete(&leases, lease, None)
        .await
        .with_context(|| format!("deleting Lease {namespace}/{lease}"))?;
    Ok(vec![
        (format!("Secret {namespace}/{secret}"), secret_result),
        (format!("Lease {namespace}/{lease}"), lease_result),
    ])
}

async fn delete<K>(api: &Api<K>, name: &str, uid: Option<String>) -> kube::Result<Cleaned>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(Cleaned::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Cleaned::Absent),
        Err(error) => Err(error),
    }
}
