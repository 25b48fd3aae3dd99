//! The pod observer: follows pods labelled `lameduck.dev/injected=true` and turns each
//! finished termination into one observation for its policy. No pod cache is kept (the
//! watch events are handled and dropped): only the UIDs of terminating pods are remembered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, watcher};
use lameduck_proto::names::{ANNOTATION_POLICY, LABEL_INJECTED};

use super::metrics::CauseLabels;
use super::{Context, PolicyKey};
use crate::observe::{self, Observation};

/// What became of a terminating pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Its shutdown was observed (boxed: an observation is large, most events carry none).
    Observed(Box<Observation>),
    /// It disappeared before its containers' final state was seen.
    Unobserved,
}

#[derive(Debug, Clone)]
struct Tracked {
    key: PolicyKey,
    observed: bool,
}

/// Remembers terminating pods until they are observed or gone. Pure: fed watch events.
#[derive(Debug, Default)]
pub struct PodTracker {
    terminating: HashMap<String, Tracked>,
    /// During a re-list: the followed pods it listed again. A pod deleted while the watch
    /// was down gets no delete event; the re-list is how it is forgotten.
    relisted: Option<HashSet<String>>,
}

impl PodTracker {
    /// Number of terminating pods followed.
    pub fn len(&self) -> usize {
        self.terminating.len()
    }

    /// Whether no terminating pod is followed.
    pub fn is_empty(&self) -> bool {
        self.terminating.is_empty()
    }

    /// The watch (re)lists every pod: what it does not list again is gone.
    pub fn relist_started(&mut self) {
        self.relisted = Some(HashSet::new());
    }

    /// The re-list is complete: forgets the followed pods it did not list. Returns the
    /// policies of those that vanished before their shutdown was observed.
    pub fn relist_done(&mut self) -> Vec<PolicyKey> {
        let Some(listed) = self.relisted.take() else {
            return Vec::new();
        };
        let mut vanished = Vec::new();
        self.terminating.retain(|uid, tracked| {
            let keep = listed.contains(uid);
            if !keep && !tracked.observed {
                vanished.push(tracked.key.clone());
            }
            keep
        });
        vanished
    }

    /// A pod was added or changed.
    pub fn apply(&mut self, pod: &Pod) -> Option<(PolicyKey, Seen)> {
        if let (Some(listed), Some(uid)) = (self.relisted.as_mut(), pod.uid())
            && self.terminating.contains_key(&uid)
        {
            listed.insert(uid);
        }
        if !observe::is_terminating(pod) {
            return None;
        }
        let uid = pod.uid()?;
        let key = policy_key(pod)?;
        let tracked = self.terminating.entry(uid).or_insert(Tracked {
            key,
            observed: false,
        });
        if tracked.observed {
            return None;
        }
        let observation = observe::observe(pod)?;
        tracked.observed = true;
        Some((tracked.key.clone(), Seen::Observed(Box::new(observation))))
    }

    /// A pod was deleted from the API.
    pub fn delete(&mut self, pod: &Pod) -> Option<(PolicyKey, Seen)> {
        let uid = pod.uid()?;
        let tracked = self.terminating.remove(&uid);
        // A pod whose containers never started (Pending, gated, image missing) had no
        // shutdown to observe: counting it as unobserved would blame the observer.
        if tracked.as_ref().is_some_and(|t| t.observed) || !ever_ran(pod) {
            return None;
        }
        let key = tracked.map(|t| t.key).or_else(|| policy_key(pod))?;
        Some(match observe::observe_deleted(pod) {
            Some(observation) => (key, Seen::Observed(Box::new(observation))),
            None => (key, Seen::Unobserved),
        })
    }
}

/// Whether any container of the pod ever started.
fn ever_ran(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .any(|c| {
            let state = |s: &Option<k8s_openapi::api::core::v1::ContainerState>| {
                s.as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            };
            state(&c.state) || state(&c.last_state)
        })
}

fn policy_key(pod: &Pod) -> Option<PolicyKey> {
    let policy = pod.annotations().get(ANNOTATION_POLICY)?;
    Some(PolicyKey {
        namespace: pod.namespace()?,
        name: policy.clone(),
    })
}

/// Watches injected pods until the stream ends, recording observations in the status book.
pub async fn observe_pods(ctx: Arc<Context>) {
    let api = Api::<Pod>::all(ctx.client.clone());
    let config = watcher::Config::default()
        .labels(&format!("{LABEL_INJECTED}=true"))
        .page_size(crate::watches::LIST_PAGE_SIZE);
    let mut tracker = PodTracker::default();
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let seen = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                tracker.apply(&pod).map(|s| (pod, s))
            }
            Ok(watcher::Event::Delete(pod)) => tracker.delete(&pod).map(|s| (pod, s)),
            Ok(watcher::Event::Init) => {
                tracker.relist_started();
                None
            }
            Ok(watcher::Event::InitDone) => {
                for key in tracker.relist_done() {
                    if ctx.namespace_terminating(&key.namespace) {
                        continue;
                    }
                    ctx.metrics.unobserved.get_or_create(&key.labels()).inc();
                    ctx.book().entry(key.namespace, key.name).push_unobserved();
                }
                None
            }
            Err(error) => {
                tracing::warn!(%error, "pod watch failed; retrying");
                None
            }
        };
        // After every event: a delete without an observation also shrinks the set.
        ctx.metrics
            .terminating
            .set(i64::try_from(tracker.len()).unwrap_or(i64::MAX));
        let Some((pod, (key, seen))) = seen else {
            continue;
        };
        // The last shutdowns of a namespace being deleted belong to nothing that lasts.
        if ctx.namespace_terminating(&key.namespace) {
            tracing::debug!(pod = %pod.name_any(), namespace = %key.namespace, "namespace being deleted: not recorded");
            continue;
        }
        let labels = key.labels();
        match seen {
            Seen::Observed(observation) => {
                for warning in &observation.warnings {
                    tracing::warn!(pod = %pod.name_any(), namespace = %key.namespace, "{warning}");
                }
                let by_cause = CauseLabels::new(&key, observation.cause);
                ctx.metrics.observations.get_or_create(&by_cause).inc();
                if observation.cut_short() {
                    ctx.metrics.cut_short.get_or_create(&by_cause).inc();
                }
                if observation.app_killed() {
                    ctx.metrics.kills.get_or_create(&labels).inc();
                }
                if observation.app_timed_out() {
                    ctx.metrics.timeouts.get_or_create(&labels).inc();
                }
                if let Some(refused) = observation.refused {
                    ctx.metrics
                        .refused_connections
                        .get_or_create(&by_cause)
                        .inc_by(refused);
                }
                ctx.metrics.count_container_restarts(&key, &observation);
                if !observation.own_grace_period() {
                    tracing::info!(
                        pod = %pod.name_any(), namespace = %key.namespace, policy = %key.name,
                        cause = observation.cause.as_str(),
                        grace_seconds = observation.grace_seconds, pod_grace_seconds = observation.pod_grace_seconds,
                        "deleted with a shorter grace period than its own: a kill or timeout is not the application's"
                    );
                }
                tracing::info!(
                    pod = %pod.name_any(), namespace = %key.namespace, policy = %key.name,
                    cause = observation.cause.as_str(),
                    duration_ms = observation.duration_ms, sequence_ms = observation.sequence_ms,
                    killed = observation.killed(), outcome = observation.outcome.map(|o| o.as_str()),
                    refused = observation.refused,
                    container_restarts = observation.container_restart_shutdowns(), "observed shutdown"
                );
                ctx.book()
                    .entry(key.namespace, key.name)
                    .push(pod.name_any(), *observation);
            }
            Seen::Unobserved => {
                ctx.metrics.unobserved.get_or_create(&labels).inc();
                ctx.book().entry(key.namespace, key.name).push_unobserved();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Pod {
        let path = format!(
            "{}/tests/fixtures/pods/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn one_observation_per_termination() {
        let mut tracker = PodTracker::default();
        assert_eq!(tracker.apply(&fixture("terminating")), None);
        assert_eq!(tracker.len(), 1);
        let (key, seen) = tracker.apply(&fixture("acked")).unwrap();
        assert_eq!(
            key,
            PolicyKey {
                namespace: "fixture-pods".into(),
                name: "pod-acked".into()
            }
        );
        assert!(matches!(seen, Seen::Observed(_)));
        // The same final state again (a resync, the DELETED event) is not a second observation.
        assert_eq!(tracker.apply(&fixture("acked")), None);
        assert_eq!(tracker.delete(&fixture("acked")), None);
        assert!(tracker.is_empty());
    }

    #[test]
    fn a_pod_gone_mid_shutdown_is_unobserved() {
        let mut tracker = PodTracker::default();
        assert_eq!(tracker.apply(&fixture("terminating")), None);
        let (_, seen) = tracker.delete(&fixture("terminating")).unwrap();
        assert_eq!(seen, Seen::Unobserved);
    }

    #[test]
    fn a_relist_forgets_pods_deleted_while_the_watch_was_down() {
        let mut tracker = PodTracker::default();
        assert_eq!(tracker.apply(&fixture("terminating")), None);
        let mut other = fixture("terminating");
        other.metadata.uid = Some("still-there".into());
        assert_eq!(tracker.apply(&other), None);
        assert_eq!(tracker.len(), 2);
        // The watch restarts; only `other` is listed again.
        tracker.relist_started();
        assert_eq!(tracker.apply(&other), None);
        let vanished = tracker.relist_done();
        assert_eq!(tracker.len(), 1, "nothing outlives the pod it followed");
        assert_eq!(
            vanished,
            [PolicyKey {
                namespace: "fixture-pods".into(),
                name: "pod-acked".into()
            }]
        );
        // Not during a re-list: nothing to forget.
        assert!(tracker.relist_done().is_empty());
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn a_pod_that_never_ran_is_not_an_unobserved_shutdown() {
        let mut tracker = PodTracker::default();
        let mut pending = fixture("terminating");
        if let Some(status) = pending.status.as_mut() {
            status.container_statuses = None;
            status.init_container_statuses = None;
        }
        assert_eq!(tracker.apply(&pending), None);
        assert_eq!(tracker.delete(&pending), None);
        assert!(tracker.is_empty());
    }
}
