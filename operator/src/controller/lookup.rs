//! The webhook's view of the ShutdownPolicies: a reflector store, read on the admission
//! path (memory only), implementing [`PolicyLookup`].

use std::future::Future;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use lameduck_proto::names;

use crate::api::ShutdownPolicy;
use crate::watches::{self, Reflected};
use crate::webhook::policy::{DrainSettings, HttpDrain, PolicyLookup, PolicySettings, WorkloadRef};

/// An in-memory index of every ShutdownPolicy, kept current by the replica's one watch of
/// ShutdownPolicies (see [`crate::watches`]). Cheap to clone.
#[derive(Clone)]
pub struct PolicyIndex {
    reflected: Reflected<ShutdownPolicy>,
}

impl PolicyIndex {
    /// The index and the future that keeps it current (run it on every replica: the webhook
    /// reads it; it ends only when the watch stream ends).
    pub fn start(client: Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api = Api::<ShutdownPolicy>::all(client);
        // Nothing reads them; a policy's managed fields are as large as its spec.
        let (reflected, driver) = watches::reflect(api, "ShutdownPolicy", |policy| {
            policy.metadata.managed_fields = None
        });
        (Self { reflected }, driver)
    }

    /// An index over an existing store (tests, or a store fed by hand).
    pub fn from_store(store: Store<ShutdownPolicy>) -> Self {
        Self {
            reflected: Reflected::from_store(store),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> Store<ShutdownPolicy> {
        self.reflected.store()
    }

    /// The store and its changes (the controllers subscribe to them).
    pub fn reflected(&self) -> &Reflected<ShutdownPolicy> {
        &self.reflected
    }

    /// The policy governing `kind`/`name` in `namespace`: the one named `<kind>-<name>` if
    /// it targets that workload, else any policy whose targetRef names it.
    pub fn find(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Option<std::sync::Arc<ShutdownPolicy>> {
        let targets = |policy: &ShutdownPolicy| {
            policy.spec.target_ref.kind.eq_ignore_ascii_case(kind)
                && policy.spec.target_ref.name == name
        };
        let by_name = names::policy_name(kind, name);
        let store = self.reflected.store();
        if let Some(policy) = store.get(&ObjectRef::new(&by_name).within(namespace))
            && targets(&policy)
        {
            return Some(policy);
        }
        store
            .state()
            .into_iter()
            .filter(|policy| {
                policy.metadata.namespace.as_deref() == Some(namespace) && targets(policy)
            })
            .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
    }
}

/// What a policy prescribes for new pods of the workload `workload_uid` (when known):
/// its spec, and what it learned — the grace period, the deregister delay and the drain
/// budget — only when its history describes that workload (`status.targetUID`), not an
/// earlier one of the same name.
pub fn policy_settings(policy: &ShutdownPolicy, workload_uid: Option<&str>) -> PolicySettings {
    let spec = &policy.spec;
    let recommendation = policy
        .status
        .as_ref()
        .filter(
            |status| match (status.target_uid.as_deref(), workload_uid) {
                (Some(recorded), Some(uid)) => recorded == uid,
                _ => true,
            },
        )
        .and_then(|status| status.recommendation);
    let learned = recommendation.and_then(|r| r.deregister_delay_millis);
    let max_delay_millis = u64::from(spec.drain.max_delay_seconds) * 1000;
    let min_delay_millis = (u64::from(spec.drain.min_delay_seconds) * 1000)
        .max(learned.unwrap_or(0))
        .min(max_delay_millis);
    // An unreadable action is ignored (no action), as a bad annotation is: the pod is
    // never blocked; the status condition and the admission warning say why.
    let drain_actions = spec.drain.drain_actions();
    let drain = DrainSettings {
        mode: spec.drain.mode,
        delay_millis: u64::from(spec.drain.delay_seconds) * 1000,
        min_delay_millis,
        quiet_period_millis: u64::from(spec.drain.quiet_period_millis),
        max_delay_millis,
        http: spec.drain.http.as_ref().map(|http| HttpDrain {
            port: u16::try_from(http.port).unwrap_or(u16::MAX),
            path: http.path.clone(),
        }),
        budget_millis: recommendation.and_then(|r| r.drain_budget_millis),
    };
    PolicySettings {
        policy_name: policy.metadata.name.clone().unwrap_or_default(),
        update_mode: spec.update_mode,
        recommended_grace_seconds: recommendation
            .and_then(|r| r.grace_period_seconds)
            .map(i64::from),
        drain: Some(if learned.is_some() {
            drain
        } else {
            drain.unlearned()
        }),
        drain_actions: drain_actions.as_ref().ok().cloned().flatten(),
        drain_action_error: drain_actions.err().map(|e| e.to_string()),
    }
}

impl PolicyLookup for PolicyIndex {
    fn lookup(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        workload_uid: Option<&str>,
    ) -> Option<PolicySettings> {
        self.find(namespace, &workload.kind, &workload.name)
            .map(|policy| policy_settings(&policy, workload_uid))
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::api::{RecommendationStatus, ShutdownPolicyStatus};

    fn policy(name: &str, kind: &str, target: &str) -> ShutdownPolicy {
        let mut policy = ShutdownPolicy::new(
            name,
            serde_json::from_value(serde_json::json!({
                "targetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                "drain": {"minDelaySeconds": 2, "maxDelaySeconds": 10}
            }))
            .unwrap(),
        );
        policy.metadata.namespace = Some("shop".into());
        policy
    }

    fn index(policies: Vec<ShutdownPolicy>) -> PolicyIndex {
        let mut writer = reflector::store::Writer::default();
        for policy in policies {
            writer.apply_watcher_event(&Event::Apply(policy));
        }
        PolicyIndex::from_store(writer.as_reader())
    }

    #[test]
    fn finds_the_policy_by_name_or_by_target() {
        let mut recommended = policy("deployment-web", "Deployment", "web");
        recommended.status = Some(ShutdownPolicyStatus {
            target_uid: Some("d-1".into()),
            recommendation: Some(RecommendationStatus {
                grace_period_seconds: Some(42),
                deregister_delay_millis: Some(3_500),
                drain_budget_millis: Some(2_400),
                ..Default::default()
            }),
            ..Default::default()
        });
        let index = index(vec![recommended, policy("my-own", "StatefulSet", "db")]);
        let web = WorkloadRef {
            kind: "Deployment".into(),
            name: "web".into(),
        };
        for uid in [Some("d-1"), None] {
            let settings = index.lookup("shop", &web, uid).unwrap();
            assert_eq!(settings.policy_name, "deployment-web");
            assert_eq!(settings.grace_override(), Some(42));
            let drain = settings.drain.unwrap();
            assert_eq!(drain.min_delay_millis, 3_500); // learned, above minDelaySeconds
            assert_eq!(drain.max_delay_millis, 10_000);
            assert_eq!(drain.budget_millis, Some(2_400));
        }
        // A new Deployment web (another uid): nothing the policy learned about the old one.
        let settings = index.lookup("shop", &web, Some("d-2")).unwrap();
        assert_eq!(settings.policy_name, "deployment-web");
        assert_eq!(settings.grace_override(), None);
        let drain = settings.drain.unwrap();
        assert_eq!(
            drain.min_delay_millis, 5_000,
            "nothing learned: the spec's delaySeconds"
        );
        assert_eq!(drain.budget_millis, None);
        let db = WorkloadRef {
            kind: "StatefulSet".into(),
            name: "db".into(),
        };
        assert_eq!(
            index.lookup("shop", &db, None).unwrap().policy_name,
            "my-own"
        );
        assert_eq!(index.lookup("other", &db, None), None);
        assert_eq!(
            index.lookup(
                "shop",
                &WorkloadRef {
                    kind: "DaemonSet".into(),
                    name: "web".into()
                },
                None
            ),
            None
        );
    }

    #[test]
    fn the_drain_action_default_is_read_or_its_error_kept() {
        let mut with_action = policy("deployment-web", "Deployment", "web");
        with_action.spec.drain.action = Some("web=signal:SIGQUIT; api=none".into());
        let settings = policy_settings(&with_action, None);
        let actions = settings.drain_actions.expect("read");
        assert_eq!(
            actions.for_container("web"),
            Some(&lameduck_proto::DrainAction::Signal("SIGQUIT".into()))
        );
        assert_eq!(settings.drain_action_error, None);

        with_action.spec.drain.action = Some("exec:".into());
        let settings = policy_settings(&with_action, None);
        assert_eq!(settings.drain_actions, None, "ignored");
        assert!(
            settings
                .drain_action_error
                .is_some_and(|e| e.contains("exec needs a command"))
        );
        assert_eq!(
            policy_settings(&policy("p", "Deployment", "web"), None).drain_actions,
            None
        );
    }
}
